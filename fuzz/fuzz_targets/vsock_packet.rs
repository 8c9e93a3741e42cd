//! virtio-vsock: random TX packets (header and payload, in chains of any
//! shape) fed through a real `devices::virtio::vsock::VsockDevice` over
//! queues in guest memory, mixed with posted receive buffers, host-side
//! writes, closes and readiness events, host clients of the listener with
//! arbitrary `CONNECT` lines, and device resets.
//!
//! Nothing may panic. After every action: the device keeps at most
//! `MAX_CONNECTIONS` connections and never more than were ever made; every
//! TX chain the guest published is used unless the device said it stopped
//! for want of receive room; the device never uses more RX chains than were
//! posted, never writes a used length past a posted buffer, and every
//! packet it delivers has a well-formed header addressed to the guest's CID
//! with a payload no longer than its length field.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use devices::virtio::vsock::packet::{Header, HDR_LEN, TYPE_STREAM};
use devices::virtio::vsock::{
    FdWatcher, VsockConnector, VsockDevice, AGENT_PORT, HOST_CID, MAX_CONNECTIONS, MAX_PENDING_HOST,
    RX_QUEUE, TX_QUEUE,
};
use devices::virtio::{BlockCharge, Charger, VirtioDevice, VsockCharge};
use event_manager::EventSet;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const CID: u64 = 3;
/// Entries of each queue.
const QSIZE: u16 = 32;
const RX_Q: u64 = 0x0;
const TX_Q: u64 = 0x1_0000;
const EV_Q: u64 = 0x2_0000;
/// TX packet `i` lives at `TX_BUFS + 0x1000 i`.
const TX_BUFS: u64 = 0x4_0000;
/// RX buffer of head `h` lives at `RX_BUFS + 0x1000 h`.
const RX_BUFS: u64 = 0x8_0000;
const MEM_END: u64 = 0x10_0000;
/// The connector refuses this port.
const REFUSED_PORT: u32 = 9999;
/// Host ends kept by the connector (older ones are dropped: a host close).
const MAX_PEERS: usize = 32;
const LISTENER_TOKEN: u32 = 3;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

#[derive(Arbitrary, Debug)]
enum Cid {
    Guest,
    Host,
    Raw(u64),
}

impl Cid {
    fn get(&self) -> u64 {
        match *self {
            Cid::Guest => CID,
            Cid::Host => HOST_CID,
            Cid::Raw(c) => c,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Port {
    Agent,
    Refused,
    Small(u8),
    Raw(u32),
}

impl Port {
    fn get(&self) -> u32 {
        match *self {
            Port::Agent => AGENT_PORT,
            Port::Refused => REFUSED_PORT,
            Port::Small(p) => u32::from(p % 4),
            Port::Raw(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Len {
    /// The payload's length.
    Exact,
    Small(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum Shape {
    /// Header, then payload (if any): the usual driver layout.
    Split,
    /// Header and payload in one descriptor.
    Joined,
    /// The header cut after `k` bytes, the rest in a second descriptor.
    CutHeader(u8),
    /// One device-writable descriptor (not allowed on TX).
    WriteOnly,
    /// Any descriptor at all.
    Raw {
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Packet {
    /// 0..=8 (8 is unknown), or any value.
    op: u8,
    raw_op: Option<u16>,
    stream: bool,
    src: Cid,
    dst: Cid,
    src_port: Port,
    dst_port: Port,
    len: Len,
    flags: u32,
    /// `None`: a generous 64 KiB.
    buf_alloc: Option<u32>,
    fwd_cnt: u32,
    payload: Vec<u8>,
    shape: Shape,
}

#[derive(Arbitrary, Debug)]
enum Action {
    /// Publishes the packets on TX, notifies with `tag`, processes TX.
    Tx { packets: Vec<Packet>, tag: Option<u64> },
    /// Posts `n` receive buffers of `len` bytes and processes RX.
    Rx { n: u8, len: u16 },
    /// The host end of connection `peer` writes `data`.
    HostWrite { peer: u8, data: Vec<u8> },
    /// The host end of connection `peer` shuts down (`write_only`) or goes.
    HostClose { peer: u8, write_only: bool },
    /// A readiness event for the `which`-th watched descriptor.
    Event { which: u8, bits: u8 },
    /// A host client of the listener writes `line`.
    HostConnect { line: Vec<u8> },
    /// The driver resets the device, and activates it again.
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    listen: bool,
    actions: Vec<Action>,
}

#[derive(Default)]
struct Count;

impl Charger for Count {
    fn charge_block(&mut self, _: &BlockCharge) {}
    fn charge_interrupt(&mut self, _: Option<u64>) {}
    fn charge_vsock(&mut self, c: &VsockCharge) {
        assert!(c.packets <= 1, "one charge per packet: {c:?}");
    }
}

/// Host ends of the connections the device made, and how many it made.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<Vec<UnixStream>>>, Arc<AtomicU64>);

impl VsockConnector for Peers {
    fn connect(&self, port: u32) -> io::Result<UnixStream> {
        if port == REFUSED_PORT {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let (a, b) = UnixStream::pair()?;
        b.set_nonblocking(true)?;
        self.1.fetch_add(1, Relaxed);
        let mut p = self.0.lock().unwrap();
        if p.len() >= MAX_PEERS {
            p.remove(0);
        }
        p.push(b);
        Ok(a)
    }
}

#[derive(Default)]
struct Watches(BTreeMap<u32, EventSet>);

impl FdWatcher for Watches {
    fn add(&mut self, _: RawFd, token: u32, set: EventSet) -> io::Result<()> {
        assert!(self.0.insert(token, set).is_none(), "token {token} added twice");
        Ok(())
    }
    fn modify(&mut self, _: RawFd, token: u32, set: EventSet) -> io::Result<()> {
        assert!(
            self.0.insert(token, set).is_some(),
            "token {token} modified unwatched"
        );
        Ok(())
    }
    fn remove(&mut self, _: RawFd, token: u32) -> io::Result<()> {
        assert!(self.0.remove(&token).is_some(), "token {token} removed unwatched");
        Ok(())
    }
}

/// A split queue's three parts (laid out here: the test-utils mock puts its
/// used ring over the avail ring once a queue has more than 16 entries).
struct Mq {
    base: u64,
}

impl Mq {
    fn desc_addr(&self) -> GuestAddress {
        GuestAddress(self.base)
    }
    fn avail_addr(&self) -> GuestAddress {
        GuestAddress(self.base + 0x1000)
    }
    fn used_addr(&self) -> GuestAddress {
        GuestAddress(self.base + 0x2000)
    }
    fn create_queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc_addr());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail_addr());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used_addr());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }
}

/// The driver's side of the queues: descriptors and avail rings written
/// here (with wrap-around), used rings read back.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    rx: Mq,
    tx: Mq,
    ev: Mq,
    tx_avail: u16,
    rx_avail: u16,
    rx_used_seen: u16,
    /// RX heads posted and not yet used, with their buffer length.
    rx_posted: HashMap<u16, u32>,
}

impl Driver<'_> {
    fn desc(&self, q: &Mq, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        let at = q.desc_addr().0 + 16 * u64::from(i % QSIZE);
        self.mem.write_obj(d, GuestAddress(at)).unwrap();
    }

    fn publish(mem: &GuestMemoryMmap, q: &Mq, avail: &mut u16, head: u16) {
        let ring = q.avail_addr().0 + 4 + 2 * u64::from(*avail % QSIZE);
        mem.write_obj(head, GuestAddress(ring)).unwrap();
        *avail = avail.wrapping_add(1);
        mem.write_obj(*avail, GuestAddress(q.avail_addr().0 + 2)).unwrap();
    }

    fn used_idx(&self, q: &Mq) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(q.used_addr().0 + 2))
            .unwrap()
    }

    /// Writes packet `slot` (of at most 16 per action) and publishes it.
    fn push_tx(&mut self, slot: u16, p: &Packet) {
        let addr = TX_BUFS + 0x1000 * u64::from(slot);
        let payload = &p.payload[..p.payload.len().min(0x1000 - 64)];
        let h = Header {
            src_cid: p.src.get(),
            dst_cid: p.dst.get(),
            src_port: p.src_port.get(),
            dst_port: p.dst_port.get(),
            len: match p.len {
                Len::Exact => payload.len() as u32,
                Len::Small(n) => u32::from(n),
                Len::Raw(n) => n,
            },
            type_: if p.stream { TYPE_STREAM } else { 2 },
            op: p.raw_op.unwrap_or(u16::from(p.op % 9)),
            flags: p.flags,
            buf_alloc: p.buf_alloc.unwrap_or(64 * 1024),
            fwd_cnt: p.fwd_cnt,
        };
        let hdr = h.encode();
        self.mem.write_slice(&hdr, GuestAddress(addr)).unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + HDR_LEN as u64))
            .unwrap();
        let (d0, d1) = (2 * slot, 2 * slot + 1);
        let (hl, pl) = (HDR_LEN as u32, payload.len() as u32);
        let q = &self.tx;
        match p.shape {
            Shape::Split if pl == 0 => self.desc(q, d0, addr, hl, 0, 0),
            Shape::Split => {
                self.desc(q, d0, addr, hl, F_NEXT, d1);
                self.desc(q, d1, addr + HDR_LEN as u64, pl, 0, 0);
            }
            Shape::Joined => self.desc(q, d0, addr, hl + pl, 0, 0),
            Shape::CutHeader(k) => {
                let k = u32::from(k) % hl;
                self.desc(q, d0, addr, k, F_NEXT, d1);
                self.desc(q, d1, addr + u64::from(k), hl - k + pl, 0, 0);
            }
            Shape::WriteOnly => self.desc(q, d0, addr, hl + pl, F_WRITE, 0),
            Shape::Raw {
                addr,
                len,
                flags,
                next,
            } => self.desc(q, d0, addr, len, flags, next % QSIZE),
        }
        Self::publish(self.mem, &self.tx, &mut self.tx_avail, d0);
    }

    /// Takes back the RX buffers the device used, checking each packet.
    fn reap_rx(&mut self) {
        let used = self.used_idx(&self.rx);
        while self.rx_used_seen != used {
            let at = self.rx.used_addr().0 + 4 + 8 * u64::from(self.rx_used_seen % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            let head = u16::try_from(id)
                .unwrap_or_else(|_| panic!("used id {id} (len {len}) at {} of {used}", self.rx_used_seen));
            let cap = self
                .rx_posted
                .remove(&head)
                .expect("RX chain used twice or never posted");
            assert!(len <= cap, "used length {len} past a buffer of {cap}");
            if len > 0 {
                let mut b = vec![0u8; len as usize];
                self.mem
                    .read_slice(&mut b, GuestAddress(RX_BUFS + 0x1000 * u64::from(head)))
                    .unwrap();
                let h = Header::decode(&b).expect("a delivered packet has a header");
                assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, CID), "{h:?}");
                assert_eq!(h.type_, TYPE_STREAM);
                assert_eq!(
                    h.len as usize,
                    b.len() - HDR_LEN,
                    "length field vs used length: {h:?}"
                );
            }
            self.rx_used_seen = self.rx_used_seen.wrapping_add(1);
        }
    }

    fn post_rx(&mut self, n: u8, len: u16) {
        let len = u32::from(len) % 0x1001;
        for _ in 0..n {
            let Some(head) = (0..QSIZE).find(|h| !self.rx_posted.contains_key(h)) else {
                return;
            };
            self.desc(
                &self.rx,
                head,
                RX_BUFS + 0x1000 * u64::from(head),
                len,
                F_WRITE,
                0,
            );
            self.rx_posted.insert(head, len);
            Self::publish(self.mem, &self.rx, &mut self.rx_avail, head);
        }
    }
}

fn activate(d: &mut VsockDevice, drv: &mut Driver<'_>) {
    // Fresh rings: the driver re-initialises its queues after a reset.
    for q in [&drv.rx, &drv.tx, &drv.ev] {
        drv.mem
            .write_obj(0u16, GuestAddress(q.avail_addr().0 + 2))
            .unwrap();
        drv.mem
            .write_obj(0u16, GuestAddress(q.used_addr().0 + 2))
            .unwrap();
    }
    drv.tx_avail = 0;
    drv.rx_avail = 0;
    drv.rx_used_seen = 0;
    drv.rx_posted.clear();
    let qs = vec![
        drv.rx.create_queue(),
        drv.tx.create_queue(),
        drv.ev.create_queue(),
    ];
    d.activate(drv.mem.clone(), qs, 1 << 32).unwrap();
}

fuzz_target!(|input: Input| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap();
    let peers = Peers::default();
    let listen = std::env::temp_dir().join(format!("rsrc-fuzz-vsock-{}.sock", std::process::id()));
    let mut d = VsockDevice::new(
        CID,
        Box::new(peers.clone()),
        input.listen.then_some(listen.as_path()),
    )
    .unwrap();
    let mut drv = Driver {
        mem: &mem,
        rx: Mq { base: RX_Q },
        tx: Mq { base: TX_Q },
        ev: Mq { base: EV_Q },
        tx_avail: 0,
        rx_avail: 0,
        rx_used_seen: 0,
        rx_posted: HashMap::new(),
    };
    activate(&mut d, &mut drv);
    let mut watches = Watches::default();
    let mut charger = Count;
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut tx_stalled = false;
    for action in input.actions.iter().take(64) {
        match action {
            Action::Tx { packets, tag } => {
                // One batch in flight at a time: descriptors are reused.
                let in_flight = drv.tx_avail.wrapping_sub(drv.used_idx(&drv.tx));
                if in_flight == 0 {
                    for (i, p) in packets.iter().take(usize::from(QSIZE / 2)).enumerate() {
                        drv.push_tx(i as u16, p);
                    }
                }
                d.queue_notifiers()[TX_QUEUE].post(*tag);
                let out = d.process_tx(&mut charger);
                tx_stalled = out.more_pending;
            }
            Action::Rx { n, len } => {
                drv.post_rx(*n % (QSIZE as u8 + 1), *len);
                d.queue_notifiers()[RX_QUEUE].post(None);
            }
            Action::HostWrite { peer, data } => {
                let p = peers.0.lock().unwrap();
                if !p.is_empty() {
                    let _ = (&p[usize::from(*peer) % p.len()]).write(data);
                }
            }
            Action::HostClose { peer, write_only } => {
                let mut p = peers.0.lock().unwrap();
                if !p.is_empty() {
                    let i = usize::from(*peer) % p.len();
                    if *write_only {
                        let _ = p[i].shutdown(std::net::Shutdown::Write);
                    } else {
                        p.remove(i);
                    }
                }
            }
            Action::Event { which, bits } => {
                let tokens: Vec<u32> = watches.0.keys().copied().collect();
                let token = if tokens.is_empty() || *which == 0xff {
                    LISTENER_TOKEN
                } else {
                    tokens[usize::from(*which) % tokens.len()]
                };
                let mut set = EventSet::empty();
                for (bit, s) in [EventSet::IN, EventSet::OUT, EventSet::ERROR, EventSet::HANG_UP]
                    .into_iter()
                    .enumerate()
                {
                    if bits & (1 << bit) != 0 {
                        set |= s;
                    }
                }
                d.on_host_event(token, set, &mut charger);
            }
            Action::HostConnect { line } => {
                if input.listen && clients.len() < 8 {
                    if let Ok(mut c) = UnixStream::connect(&listen) {
                        let _ = c.set_nonblocking(true);
                        let _ = c.write(line);
                        clients.push(c);
                        d.on_host_event(LISTENER_TOKEN, EventSet::IN, &mut charger);
                    }
                }
            }
            Action::Reset => {
                d.reset();
                activate(&mut d, &mut drv);
                tx_stalled = false;
            }
        }
        d.process_rx(&mut charger);
        d.sync_watch(&mut watches);
        drv.reap_rx();
        // Bounded: connections, and the descriptors watched for them and
        // for host clients that have not named a port yet.
        assert!(d.connections() <= MAX_CONNECTIONS);
        let made = peers.1.load(Relaxed) + clients.len() as u64;
        assert!(
            d.connections() as u64 <= made,
            "{} live of {made} made",
            d.connections()
        );
        assert!(watches.0.len() <= MAX_CONNECTIONS + MAX_PENDING_HOST);
        if !tx_stalled {
            assert_eq!(
                drv.used_idx(&drv.tx),
                drv.tx_avail,
                "a published TX chain was not used"
            );
        }
    }
});
