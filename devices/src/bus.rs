//! An address-range bus.
//!
//! Devices are inserted at non-overlapping `[base, base + len)` ranges; an
//! access is routed to the device whose range contains it, with the offset
//! from the range's base. The bus is built once before the vCPUs start and is
//! then shared read-only; each device has its own mutex, so vCPUs contend
//! only when they touch the same device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Something a device write asks of the VM as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAction {
    /// The guest asked to end the VM with this status.
    Exit(u32),
    /// The guest asked for a reset (i8042 pulse, ACPI reset register); the
    /// VMM ends the VM.
    Reset,
    /// The guest entered ACPI S5 (soft off) through the sleep control
    /// register.
    PowerOff,
}

/// A device on a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`; may ask the VM to stop.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction>;
}

/// Errors of bus set-up and routing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A range overlaps one already on the bus.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the refused range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A range of zero length or wrapping past the end of the address space.
    #[error("device range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Base of the refused range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// No device at this address.
    #[error("no device at {0:#x}")]
    NoDevice(u64),
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address-range bus.
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self
            .devices
            .iter()
            .map(|(b, e)| format!("{b:#x}+{:#x}", e.len))
            .collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let overlaps_before = self
            .devices
            .range(..=base)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        let overlaps_after = self.devices.range(base..end).next().is_some();
        if overlaps_before || overlaps_after {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (base, e) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= e.len).then_some((offset, e))
    }

    /// Routes a read. With no device there, `data` is filled with `0xff` (an
    /// open bus) and the error says so.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        match self.find(addr, data.len()) {
            Some((offset, e)) => {
                lock(&e.device).read(offset, data);
                Ok(())
            }
            None => {
                data.fill(0xff);
                Err(BusError::NoDevice(addr))
            }
        }
    }

    /// Routes a write.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<VmAction>, BusError> {
        let (offset, e) = self.find(addr, data.len()).ok_or(BusError::NoDevice(addr))?;
        Ok(lock(&e.device).write(offset, data))
    }
}

/// Locks a device, recovering from a poisoned mutex (a panic in another
/// vCPU thread must not take the others down).
pub fn lock(d: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(u8::MAX));
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
            self.writes.push((offset, data.to_vec()));
            (offset == 7).then_some(VmAction::Exit(data[0].into()))
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        bus.read(0x3fa, &mut buf).unwrap();
        assert_eq!(buf, [2]);
        assert_eq!(bus.write(0x3ff, &[5]).unwrap(), Some(VmAction::Exit(5)));
        assert_eq!(a.lock().unwrap().writes, vec![(7, vec![5])]);
    }

    #[test]
    fn misses_and_straddling_accesses_are_errors_and_read_open_bus() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(bus.read(0x2000, &mut buf), Err(BusError::NoDevice(0x2000)));
        assert_eq!(buf, [0xff; 4]);
        // Starts inside, ends outside.
        assert_eq!(bus.read(0x100e, &mut buf), Err(BusError::NoDevice(0x100e)));
        assert_eq!(bus.write(0xfff, &[0, 0]), Err(BusError::NoDevice(0xfff)));
    }

    #[test]
    fn overlapping_and_bad_ranges_are_refused() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x108, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x0, 0x0),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(d(), 0x110, 0x10).unwrap();
    }
}
