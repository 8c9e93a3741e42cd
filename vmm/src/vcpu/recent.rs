//! The last exits of one vCPU, kept for the log when the VM ends badly.
//!
//! On AMD, KVM resets a vCPU's state when the guest triple-faults (the VMCB
//! is undefined after a shutdown intercept), so the registers read
//! afterwards are the reset state. What the vCPU did last — its last port
//! and MMIO accesses, with the values written — is what remains; it costs a
//! few stores per exit in memory only this thread touches.

use std::fmt::Write as _;

use kvm_ioctls::VcpuExit;

/// How many exits are kept.
pub const RECENT_EXITS: usize = 16;

/// One exit: what kind, where, and (for writes) the first bytes written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentExit {
    /// `in`, `out`, `mmio_r`, `mmio_w`, or another kind's name.
    pub kind: &'static str,
    /// Port or guest-physical address (0 for other kinds).
    pub addr: u64,
    /// Access width in bytes.
    pub len: u8,
    /// Up to 8 bytes written (little-endian), 0 for reads.
    pub value: u64,
}

/// A ring of the last [`RECENT_EXITS`] exits.
#[derive(Debug, Default)]
pub struct RecentExits {
    ring: [RecentExit; RECENT_EXITS],
    /// The slot the next exit goes to.
    next: usize,
    /// Exits recorded so far.
    count: u64,
}

fn value_of(data: &[u8]) -> u64 {
    // Byte by byte: a variable-length copy_from_slice is a call to libc's
    // memcpy on every exit.
    data.iter()
        .take(8)
        .enumerate()
        .fold(0, |v, (i, b)| v | u64::from(*b) << (8 * i))
}

fn len_of(data: &[u8]) -> u8 {
    u8::try_from(data.len()).unwrap_or(u8::MAX)
}

impl RecentExits {
    /// Records `exit` (before it is handled: reads have no value yet).
    #[inline]
    pub fn record(&mut self, exit: &VcpuExit<'_>) {
        let e = match exit {
            VcpuExit::IoIn(port, data) => RecentExit {
                kind: "in",
                addr: u64::from(*port),
                len: len_of(data),
                value: 0,
            },
            VcpuExit::IoOut(port, data) => RecentExit {
                kind: "out",
                addr: u64::from(*port),
                len: len_of(data),
                value: value_of(data),
            },
            VcpuExit::MmioRead(addr, data) => RecentExit {
                kind: "mmio_r",
                addr: *addr,
                len: len_of(data),
                value: 0,
            },
            VcpuExit::MmioWrite(addr, data) => RecentExit {
                kind: "mmio_w",
                addr: *addr,
                len: len_of(data),
                value: value_of(data),
            },
            VcpuExit::Shutdown => RecentExit {
                kind: "shutdown",
                ..RecentExit::default()
            },
            VcpuExit::InternalError => RecentExit {
                kind: "internal_error",
                ..RecentExit::default()
            },
            _ => RecentExit {
                kind: "other",
                ..RecentExit::default()
            },
        };
        self.ring[self.next] = e;
        self.next = (self.next + 1) % RECENT_EXITS;
        self.count += 1;
    }

    /// The kept exits, oldest first.
    pub fn oldest_first(&self) -> Vec<RecentExit> {
        let kept = usize::try_from(self.count).map_or(RECENT_EXITS, |c| c.min(RECENT_EXITS));
        let start = (self.next + RECENT_EXITS - kept) % RECENT_EXITS;
        (0..kept).map(|i| self.ring[(start + i) % RECENT_EXITS]).collect()
    }

    /// One line: the exit count and the kept exits, oldest first.
    pub fn describe(&self) -> String {
        let kept = self.oldest_first();
        let mut s = format!("{} exits; the last {}:", self.count, kept.len());
        for e in kept {
            match e.kind {
                "in" | "mmio_r" => {
                    let _ = write!(s, " {} {:#x}/{}", e.kind, e.addr, e.len);
                }
                "out" | "mmio_w" => {
                    let _ = write!(s, " {} {:#x}/{}={:#x}", e.kind, e.addr, e.len, e.value);
                }
                kind => {
                    let _ = write!(s, " {kind}");
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_exits_oldest_first() {
        let mut r = RecentExits::default();
        assert_eq!(r.describe(), "0 exits; the last 0:");
        for port in 0..20u8 {
            r.record(&VcpuExit::IoOut(u16::from(port), &[port, 1]));
        }
        let mut buf = [0u8; 4];
        r.record(&VcpuExit::MmioRead(0xd000_0000, &mut buf));
        r.record(&VcpuExit::Shutdown);
        let kept = r.oldest_first();
        assert_eq!(kept.len(), RECENT_EXITS);
        assert_eq!(
            kept[0],
            RecentExit {
                kind: "out",
                addr: 6,
                len: 2,
                value: 0x0106
            }
        );
        assert_eq!(kept[RECENT_EXITS - 1].kind, "shutdown");
        let line = r.describe();
        assert!(
            line.starts_with("22 exits; the last 16: out 0x6/2=0x106"),
            "{line}"
        );
        assert!(
            line.ends_with("out 0x13/2=0x113 mmio_r 0xd0000000/4 shutdown"),
            "{line}"
        );
    }
}
