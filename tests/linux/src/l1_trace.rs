//! L1's view of an L2 run: `results/l1-trace.txt`, written by
//! `images/linux/l1/rsrc-l1.sh` (`l1_trace_end`): the L2 command line, what
//! L1's memory manager did, counts of the KVM events in L1's trace ring, the
//! last MMU notifier unmaps and the last KVM events (every L2 exit with its
//! reason and RIP). On AMD a triple fault leaves no register state in the
//! VMM's dump, but L1's `kvm_exit ... reason shutdown rip R` does: `describe`
//! names each exit's RIP from the L2 kernel's `System.map` when L2 ran with
//! `nokaslr` (the harness's command lines have it; the VMM's default, used by
//! the `boot` scenario, does not, and its addresses are then left unnamed).

use std::fs;
use std::path::{Path, PathBuf};

/// A kernel's symbols, sorted by address.
pub struct Symbols(Vec<(u64, String)>);

impl Symbols {
    /// Parses a `System.map` (`ADDRESS TYPE NAME` lines); text symbols only.
    pub fn parse(map: &str) -> Symbols {
        let mut v: Vec<(u64, String)> = map
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                matches!(kind, "t" | "T" | "w" | "W").then(|| (addr, name.to_string()))
            })
            .collect();
        v.sort();
        Symbols(v)
    }

    /// `name+0xOFF` for a kernel address, `None` outside the kernel's text
    /// (user space, modules) or before its first symbol.
    pub fn name(&self, rip: u64) -> Option<String> {
        if rip < 0xffff_ffff_8000_0000 {
            return None;
        }
        let i = self.0.partition_point(|(a, _)| *a <= rip).checked_sub(1)?;
        let (addr, name) = &self.0[i];
        // Past the last symbol by more than a page: a module or garbage.
        if i + 1 == self.0.len() && rip - addr > 4096 {
            return None;
        }
        Some(format!("{name}+{:#x}", rip - addr))
    }
}

/// The L2 kernel's `System.map`, from the Debian package in the image
/// cache (`CACHE/cache/pkgs/linux-image-*/boot/System.map-*`).
pub fn system_map(cache: &Path) -> Option<PathBuf> {
    let pkgs = fs::read_dir(cache.join("cache").join("pkgs")).ok()?;
    pkgs.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-image-"))
        .filter_map(|e| fs::read_dir(e.path().join("boot")).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("System.map-"))
        })
}

/// The `reason` and `rip` of a `kvm_exit` trace line.
fn exit_of(line: &str) -> Option<(&str, u64)> {
    let rest = &line[line.find(" kvm_exit: ")?..];
    let reason = rest.split(" reason ").nth(1)?.split_whitespace().next()?;
    let rip = rest.split(" rip 0x").nth(1)?.split_whitespace().next()?;
    Some((reason, u64::from_str_radix(rip, 16).ok()?))
}

/// The trace's summary (everything before its events) and its last `n`
/// events, each exit's RIP named when `symbols` is given and L2 ran with
/// `nokaslr`.
pub fn describe(trace: &str, n: usize, symbols: Option<&Symbols>) -> String {
    if trace.is_empty() {
        return "(L1 wrote no results/l1-trace.txt)".to_string();
    }
    let kaslr_off = trace
        .lines()
        .any(|l| l.starts_with("l2 cmdline:") && l.split_whitespace().any(|t| t == "nokaslr"));
    let symbols = symbols.filter(|_| kaslr_off);
    let mut out: Vec<String> = trace
        .lines()
        .take_while(|l| *l != "last events:")
        .map(str::to_string)
        .collect();
    let events: Vec<&str> = trace
        .lines()
        .skip_while(|l| *l != "last events:")
        .skip(1)
        .collect();
    out.push(format!("last {} events:", n.min(events.len())));
    for line in &events[events.len().saturating_sub(n)..] {
        let named = exit_of(line).and_then(|(_, rip)| symbols?.name(rip));
        match named {
            Some(name) => out.push(format!("{} [{name}]", line.trim())),
            None => out.push(line.trim().to_string()),
        }
    }
    if let Some((_, rip)) = events
        .iter()
        .rev()
        .filter_map(|l| exit_of(l))
        .find(|(reason, _)| *reason == "shutdown")
    {
        let name = symbols
            .and_then(|s| s.name(rip))
            .unwrap_or_else(|| "not named".to_string());
        out.push(format!("the shutdown exit's RIP: {rip:#x} ({name})"));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "ffffffff81000000 T _text\n\
                       ffffffff81000000 T startup_64\n\
                       ffffffff81001000 t helper\n\
                       ffffffff81002000 D some_data\n\
                       ffffffff81003000 T last_fn\n";

    #[test]
    fn addresses_are_named_by_the_symbol_below_them() {
        let s = Symbols::parse(MAP);
        assert_eq!(s.name(0xffff_ffff_8100_1010).as_deref(), Some("helper+0x10"));
        // Data symbols are skipped: 0x...2000 still belongs to `helper`.
        assert_eq!(s.name(0xffff_ffff_8100_2004).as_deref(), Some("helper+0x1004"));
        assert_eq!(s.name(0xffff_ffff_8100_3fff).as_deref(), Some("last_fn+0xfff"));
        assert_eq!(s.name(0xffff_ffff_8100_5000), None, "past the text");
        assert_eq!(s.name(0xffff_ffff_80ff_ffff), None, "before the text");
        assert_eq!(s.name(0x7f00_0000_1000), None, "user space");
    }

    #[test]
    fn the_shutdown_exit_is_named_only_without_kaslr() {
        let trace = "l2 cmdline: console=ttyS0 nokaslr rsrc.workload=x\n\
            events in the ring: exits 2\n\
            last events:\n\
            \x20 rsrc-vcpu0-1 [000] ..... 1.0: kvm_exit: vcpu 0 reason io rip 0xffffffff81001004 info1 0x0\n\
            \x20 rsrc-vcpu0-1 [000] ..... 2.0: kvm_exit: vcpu 0 reason shutdown rip 0xffffffff81003008 info1 0x0\n";
        let s = Symbols::parse(MAP);
        let d = describe(trace, 10, Some(&s));
        assert!(d.contains("[helper+0x4]"), "{d}");
        assert!(
            d.contains("the shutdown exit's RIP: 0xffffffff81003008 (last_fn+0x8)"),
            "{d}"
        );
        assert!(d.contains("events in the ring: exits 2"), "{d}");
        let with_kaslr = trace.replace(" nokaslr", "");
        let d = describe(&with_kaslr, 10, Some(&s));
        assert!(d.contains("(not named)") && !d.contains("[helper"), "{d}");
        assert_eq!(describe("", 10, Some(&s)), "(L1 wrote no results/l1-trace.txt)");
    }
}
