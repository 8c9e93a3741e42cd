//! vCPU threads.
//!
//! Each vCPU runs on its own thread as a small state machine: `Running`
//! until an exit asks the VM to stop or the VMM tells it to, then
//! `Finished`. Every exit goes through [`exit::handle_exit`]; then, with
//! accounting on, the thread drains pending guest declarations, reads its tag
//! slot (one atomic load) and charges the exit, with the host time spent on
//! it, through its own ledger [`Writer`].

pub mod exit;
pub mod kvmstats;
pub mod recent;
pub mod runclock;
pub mod switches;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use accounting::ledger::Writer;
use devices::acct::TagRegion;
use devices::Bus;
use kvm_ioctls::VcpuFd;

use self::exit::{handle_exit, ExitAction, IoStats, VmEnd};
use self::runclock::RunClock;

/// The signal used to kick a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

/// Installs a no-op handler for [`kick_signal`], so that the signal only
/// interrupts `KVM_RUN` (which then returns `EINTR`).
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// State shared between a vCPU thread and the rest of the VMM.
#[derive(Debug, Default)]
pub struct VcpuShared {
    /// Guest run time, read by the sampler.
    pub clock: RunClock,
    /// Set by the thread when it has left its loop for good.
    pub finished: AtomicBool,
    /// Time this vCPU spent in `KVM_RUN` before it was started (an AP
    /// waiting for INIT/SIPI), ns: not guest run time, so not on `clock`.
    pub unstarted_ns: AtomicU64,
    /// The guest's switch log, as placed on `clock`.
    pub switches: switches::SwitchBook,
    /// A guest CPU limit holds this vCPU out of the guest
    /// ([`crate::cpu_limit`]).
    pub hold: Hold,
}

/// Longest a held vCPU sleeps before it looks at its hold and the VM's
/// stop flag again, were a wake-up lost (the limiter and the VM's stop both
/// wake it at once).
pub const HOLD_RECHECK: Duration = Duration::from_millis(50);

/// A guest CPU limit's hold of one vCPU: set by the limiter (the sampler's
/// thread), obeyed by the vCPU's thread before it enters the guest (one
/// atomic load when no hold is set), which then sleeps on a condition
/// variable until the hold is lifted or the VM stops.
#[derive(Debug, Default)]
pub struct Hold {
    /// The vCPU must not enter the guest.
    set: AtomicBool,
    /// The tag whose principal the hold is charged to.
    tag: AtomicU64,
    /// The vCPU's thread is sleeping in a hold now.
    holding: AtomicBool,
    /// Holds ended so far, and the ns they lasted (the ledger's figures).
    holds: AtomicU64,
    held_ns: AtomicU64,
    /// The thread's pthread id (+1; 0 until it runs), for the kick.
    thread: AtomicU64,
    /// The thread's CPU-time clock (0 until it runs: such clock ids are
    /// negative): guest time counts on it, time the host left the thread
    /// waiting does not.
    cpu_clock: AtomicI32,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Hold {
    /// Holds the vCPU, charged to `tag`, and kicks it out of `KVM_RUN` if
    /// it is not sleeping in a hold already.
    pub fn set(&self, tag: u64) {
        self.tag.store(tag, Ordering::Relaxed);
        self.set.store(true, Ordering::Release);
        if !self.holding.load(Ordering::Acquire) {
            self.kick();
        }
    }

    /// Lifts the hold and wakes the vCPU.
    pub fn lift(&self) {
        if self.set.swap(false, Ordering::AcqRel) {
            self.wake_up();
        }
    }

    /// Wakes a held vCPU so it looks at the stop flag (the VM stops).
    pub fn wake_up(&self) {
        let _g = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.wake.notify_all();
    }

    /// Whether a hold is set.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Whether the vCPU's thread is sleeping in a hold now.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Holds ended so far and the ns they lasted.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.holds.load(Ordering::Acquire),
            self.held_ns.load(Ordering::Acquire),
        )
    }

    /// CPU time the vCPU's thread has had, guest time included, ns; `None`
    /// before it runs or where the clock cannot be read.
    pub fn thread_cpu_ns(&self) -> Option<u64> {
        let c = self.cpu_clock.load(Ordering::Acquire);
        if c == 0 {
            return None;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the clock id is the vCPU thread's CPU clock (from
        // pthread_getcpuclockid); `ts` is a valid timespec to write.
        let r = unsafe { libc::clock_gettime((c - 1) as libc::clockid_t, &mut ts) };
        (r == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    fn kick(&self) {
        let t = self.thread.load(Ordering::Acquire);
        if t != 0 {
            // SAFETY: the id is the vCPU thread's own (stored by it when it
            // started); the thread is only joined after the VM stopped, and
            // the limiter stops before that. The signal has a no-op handler.
            unsafe { libc::pthread_kill((t - 1) as libc::pthread_t, kick_signal()) };
        }
    }
}

/// The state a vCPU thread's machine is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Entering and leaving the guest.
    Running,
    /// Done; the thread returns.
    Finished,
}

/// Everything one vCPU thread owns.
pub struct Vcpu {
    /// vCPU id.
    pub id: usize,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Port-I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// I/O statistics shared by all vCPUs.
    pub io_stats: Arc<IoStats>,
    /// Where the guest's tag region is published.
    pub region: Arc<TagRegion>,
    /// This vCPU's ledger writer, `None` with accounting off.
    pub writer: Option<Writer>,
    /// Shared with the sampler and the VMM.
    pub shared: Arc<VcpuShared>,
    /// Set by the VMM to stop every vCPU.
    pub stop: Arc<AtomicBool>,
    /// Where the VM's end is reported.
    pub events: Sender<VmEnd>,
    /// When the last exit's charge was taken: the next entry's timestamp,
    /// so each exit costs two clock reads, not three.
    pub resume_at: Option<u64>,
    /// The vCPU has not been started yet (KVM's `UNINITIALIZED`: an AP
    /// before the guest's INIT/SIPI). `KVM_RUN` then only waits, and
    /// returns `EAGAIN` once the guest started it; the wait is not run time.
    pub unstarted: bool,
    /// The last exits, for the log of an abnormal end.
    pub recent: recent::RecentExits,
}

impl Vcpu {
    /// Logs the registers of a vCPU that ended the VM abnormally.
    fn log_state(&self, end: &VmEnd) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => log::error!(
                "vCPU {} stopped ({}): rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} ss={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                self.id, end.name(), r.rip, r.rsp, r.rflags, s.cs.selector, s.ss.selector, s.cr0, s.cr3, s.cr4, s.efer
            ),
            _ => log::error!("vCPU {} stopped ({}); its registers could not be read", self.id, end.name()),
        }
        if matches!(end, VmEnd::TripleFault) {
            log::error!(
                "vCPU {}: on AMD these registers are the reset state (KVM reinitializes a vCPU after a shutdown); what it did last: {}",
                self.id,
                self.recent.describe()
            );
        } else {
            log::error!("vCPU {}: {}", self.id, self.recent.describe());
        }
    }

    /// Whether KVM holds this vCPU in wait-for-INIT/SIPI.
    fn not_started(&self) -> bool {
        self.fd
            .get_mp_state()
            .is_ok_and(|s| s.mp_state == kvm_bindings::KVM_MP_STATE_UNINITIALIZED)
    }

    /// Sleeps while a guest CPU limit holds this vCPU (until the hold is
    /// lifted or the VM stops), then charges the hold to its tag.
    fn held(&mut self) {
        let hold = &self.shared.hold;
        let now = || self.writer.as_ref().map_or(0, |w| w.accounting().now_ns());
        let from = now();
        hold.holding.store(true, Ordering::Release);
        {
            let mut g = hold
                .lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while hold.set.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
                g = hold
                    .wake
                    .wait_timeout(g, HOLD_RECHECK)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        }
        hold.holding.store(false, Ordering::Release);
        let ns = now().saturating_sub(from);
        let tag = hold.tag.load(Ordering::Relaxed);
        if let Some(w) = self.writer.as_mut() {
            w.charge_cpu_throttle(Some(tag), ns);
        }
        hold.held_ns.fetch_add(ns, Ordering::AcqRel);
        hold.holds.fetch_add(1, Ordering::AcqRel);
        // The next entry is stamped afresh: the hold was not run time.
        self.resume_at = None;
    }

    /// Runs the state machine until the VM stops.
    pub fn run(mut self) {
        self.unstarted = self.writer.is_some();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as u64;
        self.shared.hold.thread.store(me + 1, Ordering::Release);
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `me` is this thread; `clock` is a valid clockid_t to write.
        if unsafe { libc::pthread_getcpuclockid(me as libc::pthread_t, &mut clock) } == 0 {
            self.shared.hold.cpu_clock.store(clock, Ordering::Release);
        }
        let mut reader = self.region.reader(self.id);
        let mut state = VcpuState::Running;
        while state == VcpuState::Running {
            state = self.step(&mut reader);
        }
        self.shared.finished.store(true, Ordering::Release);
    }

    fn step(&mut self, reader: &mut devices::acct::TagReader) -> VcpuState {
        if self.stop.load(Ordering::Acquire) {
            return VcpuState::Finished;
        }
        if self.shared.hold.set.load(Ordering::Acquire) {
            self.held();
            return VcpuState::Running;
        }
        // With accounting off nothing is timed: that is the baseline the
        // overhead benchmark compares against.
        if self.unstarted {
            self.unstarted = self.not_started();
        }
        let mut entered_at = 0;
        if let Some(w) = &self.writer {
            entered_at = self.resume_at.take().unwrap_or_else(|| w.accounting().now_ns());
            if !self.unstarted {
                self.shared.clock.enter(entered_at);
            }
        }
        let result = self.fd.run();
        let exited_at = self.writer.as_mut().map_or(0, |w| {
            let now = w.accounting().now_ns();
            let ran = self.shared.clock.exit(now);
            if ran > 0 {
                // Switches the guest logged during the interval: placed now,
                // while it cannot be writing (two loads when it logged none).
                let book = &self.shared.switches;
                let run = &self.shared.clock;
                reader.with_line(|line, stamps| {
                    if book.moved(line) {
                        let win = switches::Window {
                            base: run.done() - ran,
                            from: now - ran,
                            to: now,
                        };
                        book.harvest(line, stamps, w, win, || true);
                    }
                });
            }
            now
        });
        if self.unstarted {
            // Whether the guest started it is checked before the next entry.
            self.shared
                .unstarted_ns
                .fetch_add(exited_at.saturating_sub(entered_at), Ordering::Relaxed);
        }
        let exit = match result {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return VcpuState::Running,
            Err(e) => {
                let _ = self
                    .events
                    .send(VmEnd::VcpuError(format!("vCPU {}: KVM_RUN failed: {e}", self.id)));
                return VcpuState::Finished;
            }
        };
        // Declarations first, so that the tag read next, and any device work
        // this exit starts under it, resolve against them.
        let tag = match &self.writer {
            Some(w) => {
                reader.drain(w.accounting());
                reader.tag()
            }
            None => None,
        };
        self.recent.record(&exit);
        if matches!(exit, kvm_ioctls::VcpuExit::MmioWrite(..)) {
            // A queue notification is charged to whoever notified.
            devices::virtio::mmio::set_current_tag(tag);
        }
        let (reason, action) = handle_exit(exit, &self.pio, &self.mmio, &self.io_stats);
        if let Some(w) = self.writer.as_mut() {
            let done = w.accounting().now_ns();
            w.charge_exit(tag, reason, done.saturating_sub(exited_at));
            self.resume_at = Some(done);
        }
        match action {
            ExitAction::Continue => VcpuState::Running,
            ExitAction::Stop(end) => {
                if !end.is_clean() {
                    self.log_state(&end);
                }
                let _ = self.events.send(end);
                VcpuState::Finished
            }
        }
    }
}
