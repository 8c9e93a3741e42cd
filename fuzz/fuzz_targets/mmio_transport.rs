//! The virtio-mmio transport in front of a real `BlockDevice` (on a memfd
//! disk of 64 sectors), driven by a sequence of guest actions decoded from
//! the input: register reads and writes of any offset in the window and any
//! size from 1 to 8 bytes, a scripted legal initialisation (so that the
//! fuzzer reaches DRIVER_OK with queue addresses of its choosing), guest
//! memory writes (raw bytes, or a driver's moves: a request header, a
//! descriptor chain published in the avail ring of the queue the last
//! initialisation set up), QueueNotify with a tag, and the device's
//! `process_queue`. A final QueueNotify and `process_queue`
//! always run. Nothing may panic, and a few register promises are checked.
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use devices::virtio::block::BlockDevice;
use devices::virtio::mmio::{set_current_tag, MmioTransport, MAGIC, MMIO_LEN};
use devices::virtio::{status as st, BlockCharge, Charger, VirtioDevice};
use devices::BusDevice;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: 128 KiB, a hole, 64 KiB.
const REGIONS: [(u64, u64); 2] = [(0, 0x2_0000), (0x3_0000, 0x4_0000)];
const MEM_SPAN: u64 = 0x4_1000;
const DISK_BYTES: u64 = 64 * 512;

/// The registers, so that the fuzzer hits them without guessing offsets.
const REGS: [u16; 24] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050, 0x060, 0x064,
    0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc, 0x100,
];

#[derive(Arbitrary, Debug)]
enum Offset {
    Reg(u8),
    Config(u8),
    Any(u16),
}

impl Offset {
    fn get(&self) -> u64 {
        match *self {
            Offset::Reg(i) => u64::from(REGS[usize::from(i) % REGS.len()]),
            Offset::Config(o) => 0x100 + u64::from(o),
            Offset::Any(o) => u64::from(o) % MMIO_LEN,
        }
    }
}

/// Where a driver would put a request header or data.
const SCRATCH: u64 = 0x8000;
/// The standard queue layout an `Init` may pick.
const STD_LAYOUT: (u64, u64, u64) = (0x1000, 0x4000, 0x6000);

#[derive(Arbitrary, Debug)]
enum Features {
    /// Everything the device offers.
    Offered,
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Layout {
    Standard,
    Custom { desc: u64, driver: u64, device: u64 },
}

#[derive(Arbitrary, Debug)]
enum Addr {
    Scratch(u16),
    Near(u32),
    Raw(u64),
}

impl Addr {
    fn get(&self) -> u64 {
        match *self {
            Addr::Scratch(o) => SCRATCH + u64::from(o),
            Addr::Near(a) => u64::from(a) % MEM_SPAN,
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Desc {
    addr: Addr,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        off: Offset,
        size: u8,
    },
    Write {
        off: Offset,
        size: u8,
        value: u64,
    },
    /// The legal sequence up to DRIVER_OK, with these values.
    Init {
        features: Features,
        num: u32,
        layout: Layout,
        ready: bool,
        queue_sel: u32,
    },
    /// A request header (type one of IN, OUT, FLUSH, GET_ID or `raw`).
    Header {
        off: u16,
        kind: u8,
        raw: u32,
        sector: u64,
    },
    /// Descriptors written at table index `start` of the last `Init`'s
    /// queue, and `head` published in its avail ring.
    Publish {
        start: u16,
        descs: Vec<Desc>,
        head: u16,
    },
    /// The guest writes its memory.
    Mem {
        addr: u32,
        bytes: Vec<u8>,
    },
    Notify {
        queue: u32,
        tag: Option<u64>,
    },
    Process {
        queue: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    ops: Vec<Op>,
}

struct Nop;

impl Charger for Nop {
    fn charge_block(&mut self, _: &BlockCharge) {}
    fn charge_interrupt(&mut self, _: Option<u64>) {}
}

fn size(s: u8) -> usize {
    usize::from(s % 8) + 1
}

fn w32(t: &mut MmioTransport<BlockDevice>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport<BlockDevice>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn disk() -> File {
    // SAFETY: a valid NUL-terminated name and no flags; the fd is checked.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create failed");
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(DISK_BYTES).unwrap();
    f
}

fuzz_target!(|input: Input| {
    let ranges: Vec<(GuestAddress, usize)> = REGIONS
        .iter()
        .map(|&(s, e)| (GuestAddress(s), usize::try_from(e - s).unwrap()))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    let dev = Arc::new(Mutex::new(
        BlockDevice::new(disk(), input.read_only, "fuzz").unwrap(),
    ));
    let mut t = MmioTransport::new(mem.clone(), dev.clone());
    let mut charger = Nop;
    // (desc, driver, device, QueueNum) of the last `Init`.
    let mut layout = (STD_LAYOUT.0, STD_LAYOUT.1, STD_LAYOUT.2, 0u32);

    for op in input.ops.iter().take(256) {
        match op {
            Op::Read { off, size: s } => {
                let mut b = [0xaau8; 8];
                t.read(off.get(), &mut b[..size(*s)]);
            }
            Op::Write { off, size: s, value } => {
                let b = value.to_le_bytes();
                t.write(off.get(), &b[..size(*s)]);
            }
            Op::Init {
                features,
                num,
                layout: l,
                ready,
                queue_sel,
            } => {
                let features = match features {
                    Features::Offered => dev.lock().unwrap().avail_features(),
                    Features::Raw(f) => *f,
                };
                let (desc, driver, device) = match *l {
                    Layout::Standard => STD_LAYOUT,
                    Layout::Custom { desc, driver, device } => (desc, driver, device),
                };
                layout = (desc, driver, device, *num);
                w32(&mut t, 0x070, 0);
                w32(&mut t, 0x070, st::ACKNOWLEDGE);
                w32(&mut t, 0x070, st::ACKNOWLEDGE | st::DRIVER);
                for (sel, half) in [(0u32, features as u32), (1, (features >> 32) as u32)] {
                    w32(&mut t, 0x024, sel);
                    w32(&mut t, 0x020, half);
                }
                w32(&mut t, 0x070, st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK);
                w32(&mut t, 0x030, *queue_sel);
                w32(&mut t, 0x038, *num);
                for (reg, v) in [(0x080, desc), (0x090, driver), (0x0a0, device)] {
                    w32(&mut t, reg, v as u32);
                    w32(&mut t, reg + 4, (v >> 32) as u32);
                }
                w32(&mut t, 0x044, u32::from(*ready));
                w32(
                    &mut t,
                    0x070,
                    st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
                );
            }
            Op::Header {
                off,
                kind,
                raw,
                sector,
            } => {
                let kind = [0, 1, 4, 8].get(usize::from(*kind % 5)).copied().unwrap_or(*raw);
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&kind.to_le_bytes());
                h[8..].copy_from_slice(&sector.to_le_bytes());
                let _ = mem.write_slice(&h, GuestAddress(SCRATCH + u64::from(*off)));
            }
            Op::Publish { start, descs, head } => {
                let (desc, driver, _, num) = layout;
                let num = u64::from(num.clamp(1, 256));
                for (i, d) in descs.iter().take(16).enumerate() {
                    let index = (u64::from(*start) + i as u64) % num;
                    let raw = RawDescriptor::from(Descriptor::new(d.addr.get(), d.len, d.flags, d.next));
                    let _ = mem.write_obj(raw, GuestAddress(desc.wrapping_add(16 * index)));
                }
                // avail: flags, idx, ring[idx % num].
                let idx_at = GuestAddress(driver.wrapping_add(2));
                let idx = mem.read_obj::<u16>(idx_at).map(u16::from_le).unwrap_or(0);
                let slot = driver.wrapping_add(4 + 2 * (u64::from(idx) % num));
                let _ = mem.write_obj(head.to_le(), GuestAddress(slot));
                let _ = mem.write_obj(idx.wrapping_add(1).to_le(), idx_at);
            }
            Op::Mem { addr, bytes } => {
                // Partial writes across the end or the hole fail: fine.
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(*addr) % MEM_SPAN));
            }
            Op::Notify { queue, tag } => {
                set_current_tag(*tag);
                w32(&mut t, 0x050, *queue);
            }
            Op::Process { queue } => {
                dev.lock()
                    .unwrap()
                    .process_queue(usize::from(*queue % 2), &mut charger);
            }
        }
        assert_eq!(r32(&mut t, 0x000), MAGIC);
        assert_eq!(r32(&mut t, 0x004), 2);
        let status = r32(&mut t, 0x070);
        assert_eq!(status, t.status());
        if t.is_activated() {
            assert_ne!(status & st::DRIVER_OK, 0, "activated without DRIVER_OK");
            let offered = dev.lock().unwrap().avail_features();
            assert_eq!(t.acked_features() & !offered, 0, "accepted a feature not offered");
        }
    }
    set_current_tag(Some(1));
    w32(&mut t, 0x050, 0);
    dev.lock().unwrap().process_queue(0, &mut charger);
});
