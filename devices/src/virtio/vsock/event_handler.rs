//! Event-loop wiring of the vsock device.
//!
//! `VsockHandler` is an `event_manager::MutEventSubscriber` over the three
//! queues' notify `EventFd`s (data 0, 1, 2), the listener for
//! host-initiated connections (data 3) and every connection's host stream
//! (data 16 and up, one token per stream). After each event it runs RX (so
//! replies and host data reach the guest) and lets the device bring the
//! watch list up to date: a stream is watched for input only while the
//! guest has credit and no read is already pending, for output only while
//! guest data waits, and not at all otherwise, so the level-triggered loop
//! never spins on a stream it cannot serve. A device with limits
//! ([`VsockHandler::with_limits`]) adds the release timer (data 4) and the
//! wake of a live change (data 5).

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use accounting::warn_rl;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{FdWatcher, ProcessStats, VsockDevice, EVENT_QUEUE, LISTENER_TOKEN, RX_QUEUE, TX_QUEUE};
use crate::virtio::limit_timer::LimitTimer;
use crate::virtio::{Charger, QueueNotifier, VirtioDevice};

/// The event data of the release timer.
const TIMER_DATA: u32 = 4;
/// The event data of the limits' live-change wake.
const WAKE_DATA: u32 = 5;

/// The vsock device's subscriber on the device event loop.
pub struct VsockHandler {
    device: Arc<Mutex<VsockDevice>>,
    notifiers: Vec<Arc<QueueNotifier>>,
    listener_fd: Option<RawFd>,
    charger: Box<dyn Charger + Send>,
    spurious: u64,
    /// Fires when bytes a per-container limit holds may go; only a device
    /// with limits has one.
    timer: Option<LimitTimer>,
}

impl std::fmt::Debug for VsockHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockHandler")
            .field("listener_fd", &self.listener_fd)
            .field("spurious", &self.spurious)
            .finish()
    }
}

/// The event loop's operations as the device's [`FdWatcher`].
struct OpsWatcher<'a, 'b>(&'a mut EventOps<'b>);

fn ev_err(e: event_manager::Error) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

impl FdWatcher for OpsWatcher<'_, '_> {
    fn add(&mut self, fd: RawFd, token: u32, set: EventSet) -> io::Result<()> {
        self.0.add(Events::with_data_raw(fd, token, set)).map_err(ev_err)
    }
    fn modify(&mut self, fd: RawFd, token: u32, set: EventSet) -> io::Result<()> {
        self.0
            .modify(Events::with_data_raw(fd, token, set))
            .map_err(ev_err)
    }
    fn remove(&mut self, fd: RawFd, token: u32) -> io::Result<()> {
        self.0
            .remove(Events::with_data_raw(fd, token, EventSet::empty()))
            .map_err(ev_err)
    }
}

impl VsockHandler {
    /// A subscriber for `device` (the one the transport drives) that
    /// charges through `charger`.
    pub fn new(device: Arc<Mutex<VsockDevice>>, charger: Box<dyn Charger + Send>) -> Self {
        let (notifiers, listener_fd) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            (d.queue_notifiers(), d.listener_fd())
        };
        Self {
            device,
            notifiers,
            listener_fd,
            charger,
            spurious: 0,
            timer: None,
        }
    }

    /// Like [`VsockHandler::new`], for a device that has limits
    /// ([`VsockDevice::set_limits`]): adds a non-blocking timerfd that lets
    /// held bytes go when their tokens are due.
    pub fn with_limits(
        device: Arc<Mutex<VsockDevice>>,
        charger: Box<dyn Charger + Send>,
    ) -> io::Result<Self> {
        let mut h = Self::new(device, charger);
        h.timer = Some(LimitTimer::new()?);
        Ok(h)
    }

    /// A handle that wakes this handler after a live change of the limits
    /// (`None`: a device without limits).
    pub fn limit_waker(&self) -> Option<io::Result<vmm_sys_util::eventfd::EventFd>> {
        self.timer.as_ref().map(LimitTimer::waker)
    }

    /// Events that named no source or carried no input.
    pub fn spurious(&self) -> u64 {
        self.spurious
    }

    /// Runs one event through the device and brings the watch list up to
    /// date through `w`. What RX did is returned.
    pub fn handle(&mut self, data: u32, set: EventSet, w: &mut dyn FdWatcher) -> ProcessStats {
        let q = usize::try_from(data).unwrap_or(usize::MAX);
        if let Some(n) = self.notifiers.get(q) {
            // Non-blocking: EAGAIN when a previous batch already drained it.
            let _ = n.eventfd().read();
        }
        let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let charger = self.charger.as_mut();
        let timer = (data == TIMER_DATA || data == WAKE_DATA)
            .then_some(self.timer.as_mut())
            .flatten();
        if let Some(t) = timer {
            if data == TIMER_DATA {
                t.acknowledge();
            } else {
                t.acknowledge_wake();
            }
            device.release_held(charger);
        }
        match q {
            _ if data == TIMER_DATA || data == WAKE_DATA => {}
            RX_QUEUE => {}
            TX_QUEUE => {
                device.process_tx(charger);
            }
            EVENT_QUEUE => {
                // The device never sends events: the guest's buffers stay posted.
                return ProcessStats::default();
            }
            _ => device.on_host_event(data, set, charger),
        }
        let out = if device.rx_work() || usize::try_from(data).ok() == Some(RX_QUEUE) {
            device.process_rx(charger)
        } else {
            ProcessStats::default()
        };
        device.sync_watch(w);
        if let Some(t) = self.timer.as_mut() {
            t.arm(device.next_release(), "virtio-vsock");
        }
        out
    }
}

impl MutEventSubscriber for VsockHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, n) in (0u32..).zip(self.notifiers.iter()) {
            if let Err(e) = ops.add(Events::with_data(n.eventfd(), i, EventSet::IN)) {
                log::error!("virtio-vsock: cannot register queue {i} eventfd: {e:?}");
            }
        }
        if let Some(fd) = self.listener_fd {
            if let Err(e) = ops.add(Events::with_data_raw(fd, LISTENER_TOKEN, EventSet::IN)) {
                log::error!("virtio-vsock: cannot register the listener: {e:?}");
            }
        }
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::with_data(t, TIMER_DATA, EventSet::IN)) {
                log::error!("virtio-vsock: cannot register the limit timer: {e:?}");
            }
            if let Err(e) = ops.add(Events::with_data(t.wake_fd(), WAKE_DATA, EventSet::IN)) {
                log::error!("virtio-vsock: cannot register the limits' wake: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        let data = events.data();
        let is_queue = usize::try_from(data).is_ok_and(|d| d <= EVENT_QUEUE);
        let own = is_queue || [LISTENER_TOKEN, TIMER_DATA, WAKE_DATA].contains(&data);
        if own && !set.contains(EventSet::IN) {
            self.spurious += 1;
            warn_rl!("virtio-vsock: unexpected event set {set:?} on source {data}");
            return;
        }
        self.handle(data, set, &mut OpsWatcher(ops));
    }
}

#[cfg(test)]
mod tests {
    use super::super::device::tests::{
        activated, hdr, mem, push_rx, push_tx, queues, read_rx, Recorder, CID,
    };
    use super::super::packet::{OP_REQUEST, OP_RESPONSE, OP_RW};
    use super::super::UdsConnector;
    use super::*;
    use crate::virtio::NetDir;
    use event_manager::{EventManager, SubscriberOps};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn event_loop_connects_to_a_real_unix_listener_and_moves_data_both_ways() {
        let dir = std::env::temp_dir().join(format!("rsrc-vsock-el-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(UdsConnector::port_path(&uds, 5000)).unwrap();
        let m = mem();
        let (rxq, txq, evq) = queues(&m);
        push_tx(&m, &txq, 0, &hdr(OP_REQUEST, 40, 5000, 0, 4096, 0), &[]);
        push_tx(&m, &txq, 1, &hdr(OP_RW, 40, 5000, 5, 4096, 0), b"hello");
        for i in 0..4 {
            push_rx(&rxq, i, 4096 + 44);
        }
        let connector = UdsConnector::new(Some(uds.clone()), None);
        let d = activated(&m, &rxq, &txq, &evq, Box::new(connector));
        let device = Arc::new(Mutex::new(d));
        let notifiers = device.lock().unwrap().queue_notifiers();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut em = EventManager::<VsockHandler>::new().unwrap();
        em.add_subscriber(VsockHandler::new(device.clone(), Box::new(recorder.clone())));

        notifiers[TX_QUEUE].post_at(Some(9), Some(2));
        em.run_with_timeout(1000).unwrap();
        let (mut host, _) = listener.accept().unwrap();
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        host.write_all(b"world!").unwrap();
        // The host stream is now readable: the loop delivers its data.
        em.run_with_timeout(1000).unwrap();

        assert_eq!(&got, b"hello");
        let (h0, _) = read_rx(&m, &rxq, 0);
        assert_eq!(
            (h0.op, h0.dst_cid, h0.src_port, h0.dst_port),
            (OP_RESPONSE, CID, 5000, 40)
        );
        let (h1, p1) = read_rx(&m, &rxq, 1);
        assert_eq!((h1.op, p1.as_slice()), (OP_RW, &b"world!"[..]));
        let rec = recorder.lock().unwrap();
        let tx: Vec<_> = rec
            .vsocks
            .iter()
            .filter(|c| c.dir == NetDir::Tx)
            .map(|c| (c.tag, c.bytes))
            .collect();
        assert_eq!(tx, vec![(Some(9), 0), (Some(9), 5)]);
        let rx: Vec<_> = rec
            .vsocks
            .iter()
            .filter(|c| c.dir == NetDir::Rx)
            .map(|c| (c.tag, c.bytes))
            .collect();
        assert_eq!(rx, vec![(Some(9), 0), (Some(9), 6)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_limit_timer_lets_held_guest_data_go_on_the_event_loop() {
        // Arrange: tag 9's connection limited to 4 bytes per 40 ms; the
        // guest sends 4 bytes, then 4 more (held: the bucket is empty).
        let dir = std::env::temp_dir().join(format!("rsrc-vsock-lim-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(UdsConnector::port_path(&uds, 5000)).unwrap();
        let m = mem();
        let (rxq, txq, evq) = queues(&m);
        push_tx(&m, &txq, 0, &hdr(OP_REQUEST, 40, 5000, 0, 4096, 0), &[]);
        push_tx(&m, &txq, 1, &hdr(OP_RW, 40, 5000, 4, 4096, 0), b"abcd");
        push_tx(&m, &txq, 2, &hdr(OP_RW, 40, 5000, 4, 4096, 0), b"efgh");
        for i in 0..4 {
            push_rx(&rxq, i, 4096 + 44);
        }
        let mut d = activated(
            &m,
            &rxq,
            &txq,
            &evq,
            Box::new(UdsConnector::new(Some(uds.clone()), None)),
        );
        struct Nine;
        impl crate::virtio::limiter::LimitLookup for Nine {
            fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
                (tag == Some(9)).then_some(0)
            }
        }
        let limit = crate::virtio::limiter::BlockLimitConfig {
            path: "a".into(),
            bytes: Some(crate::virtio::limiter::BucketConfig {
                size: 4,
                one_time_burst: 0,
                refill_time: std::time::Duration::from_millis(40),
            }),
            ..Default::default()
        };
        d.set_limits(&[limit], Box::new(Nine)).unwrap();
        let device = Arc::new(Mutex::new(d));
        let notifiers = device.lock().unwrap().queue_notifiers();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut em = EventManager::<VsockHandler>::new().unwrap();
        em.add_subscriber(VsockHandler::with_limits(device.clone(), Box::new(recorder.clone())).unwrap());

        // Act: the TX notify; then the loop runs until the host has all 8.
        notifiers[TX_QUEUE].post_at(Some(9), Some(3));
        em.run_with_timeout(1000).unwrap();
        let (mut host, _) = listener.accept().unwrap();
        host.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..100 {
            while let Ok(n) = host.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if got.len() >= 8 {
                break;
            }
            em.run_with_timeout(100).unwrap();
        }

        // Assert: all 8 bytes in order, one hold let go by the timer and
        // charged to the owner, nothing held or armed any more.
        assert_eq!(got, b"abcdefgh");
        let rec = recorder.lock().unwrap();
        let held: Vec<_> = (rec.vsocks.iter())
            .filter(|c| c.throttle_events > 0)
            .map(|c| (c.tag, c.dir, c.throttled_ns > 0))
            .collect();
        assert_eq!(held, vec![(Some(9), NetDir::Tx, true)]);
        let mut d = device.lock().unwrap();
        assert_eq!((d.throttled_now(), d.next_release()), (0, None));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
