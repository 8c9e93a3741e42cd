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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

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

    /// Runs the state machine until the VM stops.
    pub fn run(mut self) {
        self.unstarted = self.writer.is_some();
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
