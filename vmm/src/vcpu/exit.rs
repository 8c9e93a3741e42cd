//! Exit dispatch: one pure function from a KVM exit to what happens next.
//!
//! `handle_exit` routes port I/O and MMIO through the buses, classifies the
//! exit for accounting, and says whether the VM goes on. It touches no vCPU
//! state, so it is unit-tested directly with hand-made exits.

use accounting::report::{UnhandledIoSite, UNHANDLED_IO_SITES};
use accounting::resource::ExitReason;
use accounting::warn_rl;
use devices::{Bus, VmAction};
use kvm_ioctls::VcpuExit;

/// Why a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEnd {
    /// The guest wrote this status to the exit port.
    GuestExit(u32),
    /// The guest asked for a reset: the i8042 reset line or the ACPI reset
    /// register.
    Reset,
    /// The guest powered off through ACPI (S5 written to the sleep control
    /// register).
    PowerOff,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not emulate an instruction.
    InternalError(String),
    /// KVM returned an exit the VMM does not handle.
    UnknownExit(String),
    /// A vCPU ioctl failed.
    VcpuError(String),
    /// The host asked the VMM to stop (SIGINT/SIGTERM).
    Signal,
    /// The run's time limit (`demo --duration`) elapsed.
    TimeLimit,
}

impl VmEnd {
    /// The name used in the report's `vm.end`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GuestExit(_) => "guest_exit",
            Self::Reset => "reset",
            Self::PowerOff => "poweroff",
            Self::TripleFault => "triple_fault",
            Self::InternalError(_) => "internal_error",
            Self::UnknownExit(_) => "unknown_exit",
            Self::VcpuError(_) => "vcpu_error",
            Self::Signal => "signal",
            Self::TimeLimit => "time_limit",
        }
    }

    /// Whether the guest ended the VM on purpose.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            Self::GuestExit(_) | Self::Reset | Self::PowerOff | Self::TimeLimit
        )
    }

    /// A sentence for the user when the end was not clean.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::GuestExit(_) | Self::Reset | Self::PowerOff | Self::TimeLimit => None,
            Self::TripleFault => Some(
                "the guest triple-faulted (an exception with no usable handler); the VM was stopped".into(),
            ),
            Self::InternalError(d) => Some(format!(
                "KVM could not emulate a guest instruction ({d}); on nested KVM this happens for SSE, \
                 cmpxchg16b or xsave at CPL0"
            )),
            Self::UnknownExit(d) => Some(format!("the guest caused an exit the VMM does not handle: {d}")),
            Self::VcpuError(d) => Some(format!("a vCPU failed: {d}")),
            Self::Signal => Some("stopped by a signal from the host".into()),
        }
    }
}

/// What the vCPU loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM.
    Stop(VmEnd),
}

/// Counts of accesses that hit no device (reported, never fatal).
#[derive(Debug, Default)]
pub struct IoStats {
    /// Port or MMIO accesses with no device behind them.
    pub unhandled: std::sync::atomic::AtomicU64,
    /// Per address: `(mmio, addr) -> (reads, writes)`, for the first
    /// [`UNHANDLED_IO_SITES`] addresses seen (bounded whatever the guest does).
    sites: std::sync::Mutex<std::collections::BTreeMap<(bool, u64), (u64, u64)>>,
}

impl IoStats {
    /// Counts one access to `addr` that hit no device.
    pub fn record(&self, mmio: bool, write: bool, addr: u64) {
        self.unhandled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut sites = self
            .sites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let full = sites.len() >= UNHANDLED_IO_SITES;
        let entry = match sites.get_mut(&(mmio, addr)) {
            Some(e) => e,
            None if full => return,
            None => sites.entry((mmio, addr)).or_default(),
        };
        if write {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }

    /// The listed addresses, ports first, each in ascending order.
    pub fn sites(&self) -> Vec<UnhandledIoSite> {
        let sites = self
            .sites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sites
            .iter()
            .map(|(&(mmio, addr), &(reads, writes))| UnhandledIoSite {
                space: if mmio { "mmio" } else { "pio" }.into(),
                addr,
                reads,
                writes,
            })
            .collect()
    }
}

fn unhandled(stats: &IoStats, mmio: bool, write: bool, addr: u64, len: usize) {
    stats.record(mmio, write, addr);
    let what = match (mmio, write) {
        (false, false) => "port read",
        (false, true) => "port write",
        (true, false) => "MMIO read",
        (true, true) => "MMIO write",
    };
    warn_rl!("guest {what} of {len} bytes at {addr:#x}: no device there");
}

fn stop_on(action: Option<VmAction>) -> ExitAction {
    match action {
        Some(VmAction::Exit(status)) => ExitAction::Stop(VmEnd::GuestExit(status)),
        Some(VmAction::Reset) => ExitAction::Stop(VmEnd::Reset),
        Some(VmAction::PowerOff) => ExitAction::Stop(VmEnd::PowerOff),
        None => ExitAction::Continue,
    }
}

/// Handles one exit: routes I/O through the buses, classifies it, decides.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus, stats: &IoStats) -> (ExitReason, ExitAction) {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if pio.read(u64::from(port), data).is_err() {
                unhandled(stats, false, false, u64::from(port), data.len());
            }
            (ExitReason::PortIn, ExitAction::Continue)
        }
        VcpuExit::IoOut(port, data) => match pio.write(u64::from(port), data) {
            Ok(action) => (ExitReason::PortOut, stop_on(action)),
            Err(_) => {
                unhandled(stats, false, true, u64::from(port), data.len());
                (ExitReason::PortOut, ExitAction::Continue)
            }
        },
        VcpuExit::MmioRead(addr, data) => {
            if mmio.read(addr, data).is_err() {
                unhandled(stats, true, false, addr, data.len());
            }
            (ExitReason::MmioRead, ExitAction::Continue)
        }
        VcpuExit::MmioWrite(addr, data) => match mmio.write(addr, data) {
            Ok(action) => (ExitReason::MmioWrite, stop_on(action)),
            Err(_) => {
                unhandled(stats, true, true, addr, data.len());
                (ExitReason::MmioWrite, ExitAction::Continue)
            }
        },
        VcpuExit::Shutdown => (ExitReason::Shutdown, ExitAction::Stop(VmEnd::TripleFault)),
        VcpuExit::InternalError => (
            ExitReason::InternalError,
            ExitAction::Stop(VmEnd::InternalError("KVM_EXIT_INTERNAL_ERROR".into())),
        ),
        VcpuExit::FailEntry(reason, cpu) => (
            ExitReason::Other,
            ExitAction::Stop(VmEnd::UnknownExit(format!(
                "KVM_EXIT_FAIL_ENTRY (hardware entry failure reason {reason:#x} on host CPU {cpu})"
            ))),
        ),
        VcpuExit::Hlt => (
            ExitReason::Other,
            ExitAction::Stop(VmEnd::UnknownExit(
                "hlt with interrupts off (the guest stopped itself)".into(),
            )),
        ),
        other => (
            ExitReason::Other,
            ExitAction::Stop(VmEnd::UnknownExit(format!("{other:?}"))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::legacy::{AcpiPm, DebugPort, ExitPort, ACPI_PM_LEN, ACPI_PM_PORT, ACPI_RESET_VALUE};
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    fn buses() -> (Bus, Bus) {
        let mut pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(DebugPort::default())), 0x80, 1)
            .unwrap();
        pio.insert(Arc::new(Mutex::new(ExitPort)), 0xf4, 4).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(Arc::new(Mutex::new(DebugPort::default())), 0xd000_0000, 0x1000)
            .unwrap();
        (pio, mmio)
    }

    #[test]
    fn port_write_to_a_device_continues() {
        let (pio, mmio) = buses();
        let stats = IoStats::default();
        let r = handle_exit(VcpuExit::IoOut(0x80, &[1]), &pio, &mmio, &stats);
        assert_eq!(r, (ExitReason::PortOut, ExitAction::Continue));
        assert_eq!(stats.unhandled.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn exit_port_stops_with_the_guest_status() {
        let (pio, mmio) = buses();
        let r = handle_exit(
            VcpuExit::IoOut(0xf4, &[7, 0, 0, 0]),
            &pio,
            &mmio,
            &IoStats::default(),
        );
        assert_eq!(r, (ExitReason::PortOut, ExitAction::Stop(VmEnd::GuestExit(7))));
    }

    #[test]
    fn acpi_sleep_and_reset_registers_end_the_vm_cleanly() {
        let (mut pio, mmio) = buses();
        pio.insert(
            Arc::new(Mutex::new(AcpiPm)),
            u64::from(ACPI_PM_PORT),
            u64::from(ACPI_PM_LEN),
        )
        .unwrap();
        let s = IoStats::default();
        let off = handle_exit(VcpuExit::IoOut(ACPI_PM_PORT, &[0x34]), &pio, &mmio, &s);
        assert_eq!(off, (ExitReason::PortOut, ExitAction::Stop(VmEnd::PowerOff)));
        let reset = handle_exit(
            VcpuExit::IoOut(ACPI_PM_PORT + 2, &[ACPI_RESET_VALUE]),
            &pio,
            &mmio,
            &s,
        );
        assert_eq!(reset, (ExitReason::PortOut, ExitAction::Stop(VmEnd::Reset)));
        assert!(VmEnd::PowerOff.is_clean() && VmEnd::PowerOff.detail().is_none());
        assert_eq!(VmEnd::PowerOff.name(), "poweroff");
    }

    #[test]
    fn reads_fill_data_and_misses_read_open_bus_and_count() {
        let (pio, mmio) = buses();
        let stats = IoStats::default();
        let mut data = [0u8; 1];
        handle_exit(VcpuExit::IoOut(0x80, &[0x5a]), &pio, &mmio, &stats);
        let r = handle_exit(VcpuExit::IoIn(0x80, &mut data), &pio, &mmio, &stats);
        assert_eq!((r.0, data), (ExitReason::PortIn, [0x5a]));
        let mut data = [0u8; 4];
        let r = handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut data), &pio, &mmio, &stats);
        assert_eq!(
            (r, data),
            ((ExitReason::MmioRead, ExitAction::Continue), [0xff; 4])
        );
        handle_exit(VcpuExit::IoOut(0x1234, &[0]), &pio, &mmio, &stats);
        handle_exit(VcpuExit::MmioWrite(0x10, &[0]), &pio, &mmio, &stats);
        handle_exit(VcpuExit::IoOut(0x1234, &[0]), &pio, &mmio, &stats);
        assert_eq!(stats.unhandled.load(Ordering::Relaxed), 4);
        let site = |space: &str, addr, reads, writes| UnhandledIoSite {
            space: space.into(),
            addr,
            reads,
            writes,
        };
        assert_eq!(
            stats.sites(),
            [
                site("pio", 0x1234, 0, 2),
                site("mmio", 0x10, 0, 1),
                site("mmio", 0xe000_0000, 1, 0)
            ]
        );
    }

    #[test]
    fn unhandled_sites_are_bounded_and_keep_counting_the_listed_ones() {
        let (pio, mmio) = buses();
        let stats = IoStats::default();
        for port in 0x1000..0x1000 + 1000u16 {
            handle_exit(VcpuExit::IoOut(port, &[0]), &pio, &mmio, &stats);
        }
        let mut data = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x1000, &mut data), &pio, &mmio, &stats);
        assert_eq!(stats.unhandled.load(Ordering::Relaxed), 1001);
        let sites = stats.sites();
        assert_eq!(sites.len(), UNHANDLED_IO_SITES);
        assert_eq!((sites[0].addr, sites[0].reads, sites[0].writes), (0x1000, 1, 1));
        assert_eq!(
            sites.last().map(|s| s.addr),
            Some(0x1000 + UNHANDLED_IO_SITES as u64 - 1)
        );
    }

    #[test]
    fn mmio_write_is_classified() {
        let (pio, mmio) = buses();
        let r = handle_exit(
            VcpuExit::MmioWrite(0xd000_0040, &[1, 2, 3, 4]),
            &pio,
            &mmio,
            &IoStats::default(),
        );
        assert_eq!(r, (ExitReason::MmioWrite, ExitAction::Continue));
    }

    #[test]
    fn fatal_exits_stop_with_their_reason() {
        let (pio, mmio) = buses();
        let s = IoStats::default();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &pio, &mmio, &s),
            (ExitReason::Shutdown, ExitAction::Stop(VmEnd::TripleFault))
        );
        let (r, a) = handle_exit(VcpuExit::InternalError, &pio, &mmio, &s);
        assert_eq!(r, ExitReason::InternalError);
        assert!(matches!(a, ExitAction::Stop(VmEnd::InternalError(_))));
        let (r, a) = handle_exit(VcpuExit::Hlt, &pio, &mmio, &s);
        assert_eq!(r, ExitReason::Other);
        assert!(matches!(a, ExitAction::Stop(VmEnd::UnknownExit(_))));
        let (_, a) = handle_exit(VcpuExit::FailEntry(0x21, 3), &pio, &mmio, &s);
        assert!(matches!(a, ExitAction::Stop(VmEnd::UnknownExit(ref d)) if d.contains("0x21")));
    }

    #[test]
    fn unclean_ends_explain_themselves() {
        assert!(VmEnd::GuestExit(0).is_clean() && VmEnd::GuestExit(0).detail().is_none());
        assert!(!VmEnd::TripleFault.is_clean());
        assert!(VmEnd::TripleFault.detail().unwrap().contains("triple-fault"));
        assert_eq!(VmEnd::InternalError("x".into()).name(), "internal_error");
    }
}
