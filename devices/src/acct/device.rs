//! The accounting device's MMIO registers (layout in `accounting::abi`).

use std::sync::Arc;

use accounting::abi::{self, Command, Status};
use accounting::errors::GuestError;
use accounting::ledger::Accounting;
use accounting::warn_rl;
use vm_memory::GuestMemoryMmap;

use super::region::{Registration, TagRegion};
use crate::bus::{BusDevice, VmAction};

/// The accounting device.
#[derive(Debug)]
pub struct AcctDevice {
    mem: GuestMemoryMmap,
    region: Arc<TagRegion>,
    acct: Arc<Accounting>,
    gpa: u64,
    len: u32,
    status: Status,
    scratch: u32,
}

impl AcctDevice {
    /// A device registering regions into `region` and counting mistakes in
    /// `acct`.
    pub fn new(mem: GuestMemoryMmap, region: Arc<TagRegion>, acct: Arc<Accounting>) -> Self {
        Self {
            mem,
            region,
            acct,
            gpa: 0,
            len: 0,
            status: Status::Ok,
            scratch: 0,
        }
    }

    fn fail(&mut self, status: Status) {
        self.status = status;
        if let Some(e) = GuestError::from_status(status) {
            self.acct.count_error(e);
        }
        warn_rl!(
            "accounting device: registration of {:#x}+{:#x} refused: {}",
            self.gpa,
            self.len,
            status.name()
        );
    }

    fn command(&mut self, value: u32) {
        match Command::from_u32(value) {
            Some(Command::Register) => {
                let nr_vcpus = self.region.nr_vcpus();
                match Registration::new(&self.mem, self.gpa, u64::from(self.len), nr_vcpus) {
                    Ok(reg) => {
                        log::debug!(
                            "accounting device: region registered at {:#x}, {:?}",
                            self.gpa,
                            reg.geometry()
                        );
                        self.region.set(Some(reg));
                        self.status = Status::Ok;
                    }
                    Err(status) => self.fail(status),
                }
            }
            Some(Command::Unregister) => {
                self.region.set(None);
                self.status = Status::Ok;
            }
            None => self.fail(Status::BadCommand),
        }
    }

    fn bad_access(&self, what: &str, offset: u64, size: usize) {
        self.acct.count_error(GuestError::DeviceBadAccess);
        warn_rl!("accounting device: bad {what} of {size} bytes at offset {offset:#x}");
    }
}

fn put(data: &mut [u8], v: u64) {
    let bytes = v.to_le_bytes();
    data.copy_from_slice(&bytes[..data.len()]);
}

fn get(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..data.len()].copy_from_slice(data);
    u64::from_le_bytes(b)
}

impl BusDevice for AcctDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let limits = self.acct.limits();
        let v = match (offset, data.len()) {
            (abi::REG_MAGIC, 4) => u64::from(abi::MAGIC),
            (abi::REG_VERSION, 4) => u64::from(abi::ABI_VERSION),
            (abi::REG_NR_VCPUS, 4) => self.region.nr_vcpus() as u64,
            (abi::REG_STATUS, 4) => self.status as u64,
            (abi::REG_REGION_GPA, 8) => self.gpa,
            (abi::REG_REGION_GPA, 4) => self.gpa & 0xffff_ffff,
            (o, 4) if o == abi::REG_REGION_GPA + 4 => self.gpa >> 32,
            (abi::REG_REGION_LEN, 4) => u64::from(self.len),
            (abi::REG_MAX_CONTAINERS, 4) => u64::from(limits.max_containers),
            (abi::REG_MAX_LIVE_REQUESTS, 4) => u64::from(limits.max_live_requests),
            (abi::REG_SCRATCH, 4) => u64::from(self.scratch),
            (o, n) => {
                self.bad_access("read", o, n);
                data.fill(0xff);
                return;
            }
        };
        put(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
        let v = get(data);
        // Values are at most as wide as the access, so the casts below keep
        // every bit the guest wrote.
        match (offset, data.len()) {
            (abi::REG_REGION_GPA, 8) => self.gpa = v,
            (abi::REG_REGION_GPA, 4) => self.gpa = (self.gpa & !0xffff_ffff) | v,
            (o, 4) if o == abi::REG_REGION_GPA + 4 => self.gpa = (self.gpa & 0xffff_ffff) | (v << 32),
            #[allow(clippy::cast_possible_truncation)]
            (abi::REG_REGION_LEN, 4) => self.len = v as u32,
            #[allow(clippy::cast_possible_truncation)]
            (abi::REG_COMMAND, 4) => self.command(v as u32),
            #[allow(clippy::cast_possible_truncation)]
            (abi::REG_SCRATCH, 4) => self.scratch = v as u32,
            (o, n) => self.bad_access("write", o, n),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounting::registry::Limits;
    use vm_memory::{Bytes, GuestAddress};

    fn device(vcpus: usize) -> (AcctDevice, GuestMemoryMmap, Arc<TagRegion>, Arc<Accounting>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let region = TagRegion::new(vcpus);
        let acct = Accounting::new("t", vcpus, 0, Limits::default());
        (
            AcctDevice::new(mem.clone(), region.clone(), acct.clone()),
            mem,
            region,
            acct,
        )
    }

    fn read32(d: &mut AcctDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn write_good_header(mem: &GuestMemoryMmap, gpa: u64, slots: u32) {
        let mut raw = [0u8; 64];
        raw[0..4].copy_from_slice(&abi::MAGIC.to_le_bytes());
        raw[4..6].copy_from_slice(&abi::ABI_VERSION.to_le_bytes());
        raw[6..8].copy_from_slice(&64u16.to_le_bytes());
        raw[8..12].copy_from_slice(&slots.to_le_bytes());
        raw[12..16].copy_from_slice(&64u32.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(gpa)).unwrap();
    }

    #[test]
    fn identification_registers() {
        let (mut d, ..) = device(3);
        assert_eq!(read32(&mut d, abi::REG_MAGIC), abi::MAGIC);
        assert_eq!(read32(&mut d, abi::REG_VERSION), u32::from(abi::ABI_VERSION));
        assert_eq!(read32(&mut d, abi::REG_NR_VCPUS), 3);
        assert_eq!(
            read32(&mut d, abi::REG_MAX_CONTAINERS),
            Limits::default().max_containers
        );
    }

    #[test]
    fn register_with_64bit_and_split_address_writes() {
        let (mut d, mem, region, _) = device(1);
        write_good_header(&mem, 0x8000, 1);
        d.write(abi::REG_REGION_GPA, &0x8000u64.to_le_bytes());
        d.write(abi::REG_REGION_LEN, &128u32.to_le_bytes());
        d.write(abi::REG_COMMAND, &(Command::Register as u32).to_le_bytes());
        assert_eq!(read32(&mut d, abi::REG_STATUS), Status::Ok as u32);
        assert_eq!(region.current().unwrap().gpa(), 0x8000);

        write_good_header(&mem, 0x9000, 1);
        d.write(abi::REG_REGION_GPA, &0x9000u32.to_le_bytes());
        d.write(abi::REG_REGION_GPA + 4, &0u32.to_le_bytes());
        d.write(abi::REG_COMMAND, &1u32.to_le_bytes());
        assert_eq!(region.current().unwrap().gpa(), 0x9000);
        d.write(abi::REG_COMMAND, &(Command::Unregister as u32).to_le_bytes());
        assert!(region.current().is_none());
    }

    #[test]
    fn refusals_set_status_and_count() {
        let (mut d, _mem, region, acct) = device(1);
        d.write(abi::REG_REGION_GPA, &0x8008u64.to_le_bytes());
        d.write(abi::REG_REGION_LEN, &128u32.to_le_bytes());
        d.write(abi::REG_COMMAND, &1u32.to_le_bytes());
        assert_eq!(read32(&mut d, abi::REG_STATUS), Status::Misaligned as u32);
        d.write(abi::REG_REGION_GPA, &0x8000u64.to_le_bytes());
        d.write(abi::REG_COMMAND, &1u32.to_le_bytes());
        assert_eq!(read32(&mut d, abi::REG_STATUS), Status::BadHeader as u32);
        d.write(abi::REG_COMMAND, &7u32.to_le_bytes());
        assert_eq!(read32(&mut d, abi::REG_STATUS), Status::BadCommand as u32);
        assert!(region.current().is_none());
        assert_eq!(acct.errors().get(GuestError::RegisterMisaligned), 1);
        assert_eq!(acct.errors().get(GuestError::RegisterBadHeader), 1);
        assert_eq!(acct.errors().get(GuestError::RegisterBadCommand), 1);
    }

    #[test]
    fn bad_accesses_are_counted_and_read_all_ones() {
        let (mut d, _m, _r, acct) = device(1);
        let mut b = [0u8; 2];
        d.read(abi::REG_MAGIC, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        d.write(abi::REG_MAGIC, &[1, 2, 3, 4]);
        d.write(0xff8, &[0; 8]);
        assert_eq!(acct.errors().get(GuestError::DeviceBadAccess), 3);
        d.write(abi::REG_SCRATCH, &9u32.to_le_bytes());
        assert_eq!(read32(&mut d, abi::REG_SCRATCH), 9);
    }
}
