//! Event-loop wiring of the network device.
//!
//! `NetHandler` is an `event_manager::MutEventSubscriber` over three
//! sources: the RX queue's notify `EventFd` (the guest posted receive
//! buffers), the TX queue's (the guest sent frames), and the backend's
//! descriptor (frames wait to be received). The backend descriptor is
//! level-triggered, so when RX stalls for want of receive buffers the
//! handler stops watching it and waits for the RX notify before watching it
//! again: frames wait in the TAP meanwhile, and the loop does not spin.
//!
//! A device with per-container TX limits ([`NetDevice::set_tx_limits`]) has
//! a fourth source, a non-blocking `timerfd` armed for the moment the first
//! held TX frame's tokens are due (never 0 ns ahead); when it fires the held
//! frames that have tokens are sent and the TX queue is taken up again.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use accounting::warn_rl;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::{NetDevice, ProcessStats, RX_QUEUE, TX_QUEUE};
use crate::virtio::limit_timer::LimitTimer;
use crate::virtio::{Charger, QueueNotifier, VirtioDevice};

/// Event data of the backend descriptor (queues use their index).
const BACKEND: u32 = 2;
/// Event data of the TX limit timer.
const TIMER: u32 = 3;
/// Event data of the TX limits' live-change wake.
const WAKE: u32 = 4;

/// The network device's subscriber on the device event loop.
pub struct NetHandler {
    device: Arc<Mutex<NetDevice>>,
    notifiers: Vec<Arc<QueueNotifier>>,
    backend_fd: Option<RawFd>,
    /// Whether the backend descriptor is in the epoll set.
    watching_backend: bool,
    charger: Box<dyn Charger + Send>,
    spurious: u64,
    /// Fires when a TX frame held by a per-container limit may go; only a
    /// device with limits has one (see [`NetHandler::with_limits`]).
    timer: Option<LimitTimer>,
}

impl std::fmt::Debug for NetHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandler")
            .field("backend_fd", &self.backend_fd)
            .field("watching_backend", &self.watching_backend)
            .field("spurious", &self.spurious)
            .finish()
    }
}

impl NetHandler {
    /// A subscriber for `device` (the one the transport drives) that
    /// charges through `charger`.
    pub fn new(device: Arc<Mutex<NetDevice>>, charger: Box<dyn Charger + Send>) -> Self {
        let (notifiers, backend_fd) = {
            let d = device.lock().unwrap_or_else(|e| e.into_inner());
            (d.queue_notifiers(), d.backend_fd())
        };
        Self {
            device,
            notifiers,
            backend_fd,
            watching_backend: false,
            charger,
            spurious: 0,
            timer: None,
        }
    }

    /// Like [`NetHandler::new`], for a device that has TX limits
    /// ([`NetDevice::set_tx_limits`]): adds a non-blocking timerfd that
    /// sends held frames when their tokens are due.
    pub fn with_limits(
        device: Arc<Mutex<NetDevice>>,
        charger: Box<dyn Charger + Send>,
    ) -> std::io::Result<Self> {
        let mut h = Self::new(device, charger);
        h.timer = Some(LimitTimer::new()?);
        Ok(h)
    }

    /// A handle that wakes this handler after a live change of the TX
    /// limits (`None`: a device without limits).
    pub fn limit_waker(&self) -> Option<std::io::Result<vmm_sys_util::eventfd::EventFd>> {
        self.timer.as_ref().map(LimitTimer::waker)
    }

    /// Arms the timer for the first held frame (TX or RX), or disarms it.
    fn rearm(timer: Option<&mut LimitTimer>, device: &mut NetDevice) {
        if let Some(timer) = timer {
            timer.arm(device.next_release(), "virtio-net");
        }
    }

    /// Sends the held TX frames that are due and takes up the TX queue, and
    /// delivers the held RX frames that are due, as if the timer had fired.
    pub fn handle_timer(&mut self) -> ProcessStats {
        if let Some(t) = self.timer.as_mut() {
            t.acknowledge();
        }
        let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = device.process_tx(self.charger.as_mut());
        let rx = device.release_rx(self.charger.as_mut());
        out.frames += rx.frames;
        Self::rearm(self.timer.as_mut(), &mut device);
        out
    }

    /// Events that named no source or carried no input.
    pub fn spurious(&self) -> u64 {
        self.spurious
    }

    /// Whether the backend descriptor is watched (false while RX is stalled).
    pub fn watching_backend(&self) -> bool {
        self.watching_backend
    }

    /// Sends the TX queue's frames, as if its eventfd had fired.
    pub fn handle_tx(&mut self) -> ProcessStats {
        // Non-blocking: EAGAIN when a previous batch already drained it.
        let _ = self.notifiers[TX_QUEUE].eventfd().read();
        let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let out = device.process_tx(self.charger.as_mut());
        Self::rearm(self.timer.as_mut(), &mut device);
        out
    }

    /// Receives into the RX queue, as if the backend or the RX eventfd had fired.
    pub fn handle_rx(&mut self) -> ProcessStats {
        let _ = self.notifiers[RX_QUEUE].eventfd().read();
        let mut device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let out = device.process_rx(self.charger.as_mut());
        Self::rearm(self.timer.as_mut(), &mut device);
        out
    }

    fn backend_events(&self) -> Option<Events> {
        let fd = self.backend_fd?;
        Some(Events::with_data_raw(fd, BACKEND, EventSet::IN))
    }

    fn watch_backend(&mut self, ops: &mut EventOps, on: bool) {
        let Some(ev) = self.backend_events() else {
            return;
        };
        if on == self.watching_backend {
            return;
        }
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        match r {
            Ok(()) => self.watching_backend = on,
            Err(e) => warn_rl!("virtio-net: cannot (un)watch the backend: {e:?}"),
        }
    }
}

impl MutEventSubscriber for NetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, n) in (0u32..).zip(self.notifiers.iter()) {
            if let Err(e) = ops.add(Events::with_data(n.eventfd(), i, EventSet::IN)) {
                log::error!("virtio-net: cannot register queue {i} eventfd: {e:?}");
            }
        }
        // Until the driver posts receive buffers (and notifies), there is
        // nowhere to put frames: the backend is watched from the first RX notify.
        if let Some(t) = &self.timer {
            if let Err(e) = ops.add(Events::with_data(t, TIMER, EventSet::IN)) {
                log::error!("virtio-net: cannot register the limit timer: {e:?}");
            }
            if let Err(e) = ops.add(Events::with_data(t.wake_fd(), WAKE, EventSet::IN)) {
                log::error!("virtio-net: cannot register the limits' wake: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        if !set.contains(EventSet::IN) {
            self.spurious += 1;
            warn_rl!("virtio-net: unexpected event set {set:?}");
            if events.data() == BACKEND && set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                self.watch_backend(ops, false);
            }
            return;
        }
        match events.data() {
            d if usize::try_from(d).ok() == Some(TX_QUEUE) => {
                self.handle_tx();
            }
            d if usize::try_from(d).ok() == Some(RX_QUEUE) => {
                let out = self.handle_rx();
                self.watch_backend(ops, !out.rx_stalled);
            }
            TIMER if self.timer.is_some() => {
                self.handle_timer();
            }
            WAKE if self.timer.is_some() => {
                // A live change: send what it lets go, re-arm.
                if let Some(t) = self.timer.as_mut() {
                    t.acknowledge_wake();
                }
                self.handle_timer();
            }
            BACKEND => {
                let out = self.handle_rx();
                if out.rx_stalled {
                    self.watch_backend(ops, false);
                }
            }
            _ => self.spurious += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::device::tests::{activated, mem, push_tx, queues, used, with_header, Recorder, MAC};
    use super::super::frame::tests::{ipv4_frame, tcp};
    use super::*;
    use crate::virtio::NetDir;
    use event_manager::{EventManager, SubscriberOps};

    #[test]
    fn event_loop_sends_a_notified_tx_frame_and_charges_the_notifier() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame(MAC, &tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 2), 1, &[3; 64]);
        push_tx(&m, &txq, 0, &f);
        let (d, backend) = activated(&m, &rxq, &txq);
        let device = Arc::new(Mutex::new(d));
        let notifiers = device.lock().unwrap().queue_notifiers();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut em = EventManager::<NetHandler>::new().unwrap();
        em.add_subscriber(NetHandler::new(device.clone(), Box::new(recorder.clone())));

        notifiers[TX_QUEUE].post_at(Some(9), Some(1));
        let dispatched = em.run_with_timeout(1000).unwrap();

        assert_eq!(dispatched, 1);
        assert_eq!(backend.0.lock().unwrap().from_guest, vec![with_header(&f)]);
        assert_eq!(used(&txq, 0), (0, 0));
        let rec = recorder.lock().unwrap();
        let got: Vec<_> = rec.nets.iter().map(|c| (c.tag, c.dir, c.bytes)).collect();
        assert_eq!(got, vec![(Some(9), NetDir::Tx, u64::try_from(f.len()).unwrap())]);
        assert_eq!(rec.interrupts, vec![Some(9)]);
    }

    #[test]
    fn the_limit_timer_sends_held_tx_frames_on_the_event_loop() {
        use crate::virtio::limiter::{BlockLimitConfig, BucketConfig, LimitLookup};
        use std::time::Duration;
        struct OneTag;
        impl LimitLookup for OneTag {
            fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
                (tag == Some(7)).then_some(0)
            }
        }
        // Arrange: tag 7 may send one frame per 5 ms; three are queued.
        let m = mem();
        let (rxq, txq) = queues(&m);
        let f = ipv4_frame(MAC, &tcp([10, 0, 0, 2], 1, [10, 0, 0, 1], 2), 1, &[3; 64]);
        for at in [0, 2, 4] {
            push_tx(&m, &txq, at, &f);
        }
        let (mut d, backend) = activated(&m, &rxq, &txq);
        let limits = [BlockLimitConfig {
            path: "limited".into(),
            ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time: Duration::from_millis(5),
            }),
            bytes: None,
            drop: false,
        }];
        d.set_tx_limits(&limits, Box::new(OneTag)).unwrap();
        let device = Arc::new(Mutex::new(d));
        let notifiers = device.lock().unwrap().queue_notifiers();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let mut em = EventManager::<NetHandler>::new().unwrap();
        em.add_subscriber(NetHandler::with_limits(device.clone(), Box::new(recorder.clone())).unwrap());

        // Act: tag 7 notifies once; the loop runs until the timer let all go.
        notifiers[TX_QUEUE].post_at(Some(7), Some(3));
        let mut rounds = 0;
        while txq.used().idx().load() < 3 {
            em.run_with_timeout(1000).unwrap();
            rounds += 1;
            assert!(rounds < 100, "the timer did not send the held frames");
        }

        // Assert: one went at once, two were held and sent by the timer.
        assert_eq!(backend.0.lock().unwrap().from_guest.len(), 3);
        let rec = recorder.lock().unwrap();
        let held: Vec<_> = rec
            .nets
            .iter()
            .map(|c| (c.tag, c.throttled_ns.is_some()))
            .collect();
        assert_eq!(held, vec![(Some(7), false), (Some(7), true), (Some(7), true)]);
        assert_eq!(device.lock().unwrap().stats().tx_throttled, 2);
        assert_eq!(device.lock().unwrap().next_tx_release(), None);
        // Nothing is left armed: the loop now times out with nothing to do.
        assert_eq!(em.run_with_timeout(20).unwrap(), 0);
    }

    #[test]
    fn an_rx_notify_with_no_frames_leaves_nothing_charged() {
        let m = mem();
        let (rxq, txq) = queues(&m);
        let (d, _backend) = activated(&m, &rxq, &txq);
        let device = Arc::new(Mutex::new(d));
        let mut h = NetHandler::new(device, Box::new(Recorder::default()));

        let out = h.handle_rx();

        assert_eq!((out.chains, out.frames), (0, 0));
        assert!(!h.watching_backend());
        assert_eq!(h.spurious(), 0);
    }
}
