//! Exact guest run time per principal, from the guest's switch log.
//!
//! A guest that logs its principal switches (`(tsc, tag)` in its slot, see
//! `docs/tag-abi.md`, "The switch log") lets the VMM place each switch on the
//! vCPU's run clock: a switch logged at guest TSC `g` happened at host TSC
//! `g - offset` (the vCPU's TSC offset, read from KVM when the vCPU was
//! made), which the books' clock turns into ns; inside a run interval
//! `[entered, exited]` that the VMM stamped itself, it is the position
//! `done + (t - entered)` on the cumulative run clock. Each vCPU's
//! [`SwitchBook`] adds up, per tag, how much of the run clock each principal
//! held since the last charge; the sampler then charges the run time it
//! measured (unchanged: `KVM_RUN` time minus halts) in those proportions
//! ([`distribute`]).
//!
//! The guest is not trusted, and cannot create or hide time: positions are
//! clipped to the interval the VMM measured and kept in order, so a lying
//! guest only moves its own run time between its own principals; the total
//! charged is the measured run time, whatever the log says. What could not
//! be placed (entries overwritten before they were read, an unknown TSC
//! offset, more than [`MAX_TAGS`] principals between two charges) makes that
//! charge `sampled` instead of `exact`, and is counted.
//!
//! The log is read by the vCPU's own thread after an exit that finds the
//! sequence moved (the guest is stopped then) and by the sampler for the
//! interval in progress; one mutex per vCPU orders the two. A vCPU whose
//! guest keeps no log never takes it on its exit path. While the guest is
//! logging a switch (odd sequence) its stamp may be in the sampler's past,
//! so the sampler does not charge past the last placed switch until it is
//! logged (25 ticks at most: then it charges anyway, not exact).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use accounting::clock::Clock;
use accounting::ledger::Writer;
use accounting::registry::Resolved;
use devices::acct::switchlog::{self, SlotLine, Stamps};

/// Most distinct principals one vCPU's run time is split among between two
/// charges; a further one makes the charge `sampled` (its time joins the
/// last principal's).
pub const MAX_TAGS: usize = 16;

/// A stretch of the run clock: positions `[base, base + (to - from)]` are
/// the VM-clock times `[from, to]`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Run-clock position at `from`.
    pub base: u64,
    /// VM-clock ns the stretch begins.
    pub from: u64,
    /// VM-clock ns it ends.
    pub to: u64,
}

/// Counters of the switch logs, all vCPUs (`vm.run_log` in the report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogTotals {
    /// vCPUs whose guest logged at least one switch.
    pub vcpus_logging: u64,
    /// Switches placed on the run clock.
    pub switches: u64,
    /// Switches logged but not placed (overwritten before they were read,
    /// a sequence that went back, or no TSC offset to place them with).
    pub lost: u64,
    /// Run time charged in proportion to logged switches, ns.
    pub exact_ns: u64,
    /// Run time of logging vCPUs charged otherwise (something was lost), ns.
    pub sampled_ns: u64,
}

/// What one charge of a logging vCPU is split into.
#[derive(Debug, Default)]
pub struct Split {
    /// `(tag, who, ns)` in the order the principals held the vCPU; `who` is
    /// the tag as resolved when the switch was placed (`None`: resolve now).
    pub parts: Vec<(u64, Option<Resolved>, u64)>,
    /// Whether every part is what its principal held (else `sampled`).
    pub exact: bool,
}

/// Run-clock time one principal held since the last charge.
#[derive(Debug)]
struct Held {
    tag: u64,
    who: Option<Resolved>,
    ns: u64,
}

#[derive(Debug, Default)]
struct Book {
    /// Log positions consumed.
    consumed: u64,
    /// The tag in force since `tail`, and who it named when it was placed.
    cur_tag: u64,
    cur: Option<Resolved>,
    /// Run-clock position of the last switch placed (or of the last charge).
    tail: u64,
    /// Run-clock time per principal since the last charge, in order of
    /// first use.
    held: Vec<Held>,
    /// Something was lost since the last charge.
    inexact: bool,
    totals: LogTotals,
}

impl Book {
    /// The current principal held the vCPU up to run-clock position `pos`.
    fn hold_to(&mut self, pos: u64) {
        let ns = pos.saturating_sub(self.tail);
        self.tail = self.tail.max(pos);
        let tag = self.cur_tag;
        if let Some(h) = self.held.iter_mut().find(|h| h.tag == tag) {
            h.ns += ns;
        } else if self.held.len() < MAX_TAGS {
            self.held.push(Held {
                tag,
                who: self.cur.clone(),
                ns,
            });
        } else {
            self.inexact = true;
            if let Some(last) = self.held.last_mut() {
                last.ns += ns;
            }
        }
    }
}

/// One vCPU's switch log as the VMM has read it.
#[derive(Debug, Default)]
pub struct SwitchBook {
    /// Guest TSC minus host TSC (wrapping), `None` if KVM did not say.
    tsc_offset: Option<u64>,
    /// The guest has logged a switch: its run time is split by the log.
    logging: AtomicBool,
    /// Mirror of the consumed position as the guest's sequence reads when
    /// nothing more is logged (twice the switches), for the exit path's check.
    consumed: AtomicU64,
    book: Mutex<Book>,
}

impl SwitchBook {
    /// A book for a vCPU whose guest TSC is `host TSC + tsc_offset`.
    pub fn new(tsc_offset: Option<u64>) -> Self {
        Self {
            tsc_offset,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the guest keeps a log on this vCPU.
    pub fn logging(&self) -> bool {
        self.logging.load(Ordering::Relaxed)
    }

    /// Whether `line` holds switches not yet read, or one being logged: two
    /// loads, for the exit path.
    #[inline]
    pub fn moved(&self, line: &SlotLine) -> bool {
        line[1].load(Ordering::Relaxed) != self.consumed.load(Ordering::Relaxed)
    }

    /// Reads the switches logged since the last read and places them in
    /// `w`, the stretch of run clock they happened in. `still` is asked,
    /// with the book locked, whether `w` still holds before anything is
    /// kept (the sampler's check that the vCPU did not exit meanwhile).
    /// Each new tag is resolved with `writer` now, before the exit's
    /// declarations are applied, so a request that ends right after its
    /// last switch is still charged its run time.
    pub fn harvest(
        &self,
        line: &SlotLine,
        stamps: Stamps<'_>,
        writer: &mut Writer,
        w: Window,
        still: impl FnOnce() -> bool,
    ) {
        let mut b = self.lock();
        let r = switchlog::read(line, b.consumed);
        if r.seq == b.consumed || !still() {
            return;
        }
        if !self.logging.swap(true, Ordering::Relaxed) {
            b.totals.vcpus_logging = 1;
        }
        if r.lost > 0 {
            b.inexact = true;
            b.totals.lost = b.totals.lost.saturating_add(r.lost);
        }
        let end = w.base + w.to.saturating_sub(w.from);
        let clock = *writer.accounting().clock();
        let (stamps, hz) = (stamps.clock(), clock.tsc_hz().unwrap_or(0));
        for &(stamp, tag) in &r.entries[..r.len] {
            let at = stamps
                .guest_tsc(stamp, hz)
                .zip(self.tsc_offset)
                .and_then(|(tsc, off)| clock.tsc_to_ns(tsc.wrapping_sub(off)));
            let Some(at) = at else {
                // Unplaceable (no TSC offset or rate, an agent's stamp with
                // no clock_sync yet): the switch happened, somewhere in the
                // window; the new principal takes over from the last placed
                // point, as a sample would have it, and the stretch is not
                // exact.
                b.inexact = true;
                b.totals.lost += 1;
                b.cur_tag = tag;
                b.cur = Some(writer.resolved(tag));
                continue;
            };
            let pos = (w.base + at.clamp(w.from, w.to.max(w.from)) - w.from).clamp(b.tail, end.max(b.tail));
            b.hold_to(pos);
            b.cur_tag = tag;
            b.cur = Some(writer.resolved(tag));
            b.totals.switches += 1;
        }
        b.consumed = r.seq;
        self.consumed.store(r.seq.wrapping_mul(2), Ordering::Relaxed);
    }

    /// The run time since the last charge, up to run-clock position `upto`,
    /// split into `ns` (the run time measured for it, halts left out) by
    /// who held the vCPU.
    pub fn take(&self, upto: u64, ns: u64) -> Split {
        let mut b = self.lock();
        b.hold_to(upto);
        let held = std::mem::take(&mut b.held);
        let lens: Vec<(u64, u64)> = held.iter().map(|h| (h.tag, h.ns)).collect();
        let (shares, fits) = distribute(&lens, ns);
        let mut parts: Vec<(u64, Option<Resolved>, u64)> = held
            .into_iter()
            .zip(shares)
            .filter(|(_, n)| *n > 0)
            .map(|(h, n)| (h.tag, h.who, n))
            .collect();
        if parts.is_empty() && ns > 0 {
            parts.push((b.cur_tag, b.cur.clone(), ns));
        }
        let exact = fits && !b.inexact;
        b.inexact = false;
        if exact {
            b.totals.exact_ns += ns;
        } else {
            b.totals.sampled_ns += ns;
        }
        Split { parts, exact }
    }

    /// The next charge is made while a switch is still unplaced: not exact.
    pub fn charge_unplaced(&self) {
        self.lock().inexact = true;
    }

    /// The sampler charged up to run-clock position `upto` without the log
    /// (the guest keeps none yet) to `tag`: a log that starts later starts
    /// there.
    pub fn charged_without_log(&self, upto: u64, tag: u64) {
        let mut b = self.lock();
        b.tail = b.tail.max(upto);
        if b.cur_tag != tag || b.cur.is_none() {
            b.cur_tag = tag;
            b.cur = None;
        }
    }

    /// This vCPU's counters.
    pub fn totals(&self) -> LogTotals {
        self.lock().totals
    }
}

/// The vCPU's TSC offset (guest TSC minus host TSC, wrapping), from
/// `IA32_TSC` read through KVM between two host TSC readings: the closest
/// pair of five tries. `None` where KVM refuses the read or the host clock
/// is not the TSC (switches can then not be placed). Read once, when the
/// vCPU is made: a guest that writes its TSC afterwards only misplaces its
/// own switches (they are clipped like any lie).
pub fn tsc_offset(fd: &kvm_ioctls::VcpuFd, clock: &Clock) -> Option<u64> {
    const MSR_IA32_TSC: u32 = 0x10;
    clock.tsc_hz()?;
    let mut best: Option<(u64, u64)> = None;
    for _ in 0..5 {
        let entry = kvm_bindings::kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        };
        let mut msrs = kvm_bindings::Msrs::from_entries(&[entry]).ok()?;
        let h0 = accounting::clock::rdtsc();
        let read = fd.get_msrs(&mut msrs).ok()?;
        let h1 = accounting::clock::rdtsc();
        if read != 1 {
            return None;
        }
        let guest = msrs.as_slice()[0].data;
        let spread = h1.wrapping_sub(h0);
        let offset = guest.wrapping_sub(h0 + spread / 2);
        if best.is_none_or(|(s, _)| spread < s) {
            best = Some((spread, offset));
        }
    }
    best.map(|(_, offset)| offset)
}

impl LogTotals {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &LogTotals) {
        self.vcpus_logging += o.vcpus_logging;
        self.switches += o.switches;
        self.lost = self.lost.saturating_add(o.lost);
        self.exact_ns += o.exact_ns;
        self.sampled_ns += o.sampled_ns;
    }
}

/// Splits `ns` of measured run time over `held` (`(tag, run-clock ns)`,
/// which may add up to more, by the halts inside, or less, by run time held
/// back from an earlier charge): each entry's share, in order, adding up to
/// `ns` exactly (an empty `held` gets none). Run time the clock held but
/// the guest did not run (halts) is taken from principals whose tag names
/// no container first (a halting guest halts in its idle loop, which is
/// tagged 0), then from the last principals; extra run time goes to the
/// last. Also says whether each principal that names a container got
/// exactly what it held.
pub fn distribute(held: &[(u64, u64)], ns: u64) -> (Vec<u64>, bool) {
    let total: u64 = held.iter().map(|h| h.1).fold(0, u64::saturating_add);
    let mut shares: Vec<u64> = held.iter().map(|h| h.1).collect();
    if ns >= total {
        match shares.last_mut() {
            Some(last) => *last += ns - total,
            None => return (shares, ns == 0),
        }
        return (shares, ns == total);
    }
    let mut excess = total - ns;
    for (s, h) in shares.iter_mut().zip(held) {
        if accounting::abi::untag(h.0).0 == 0 {
            let cut = (*s).min(excess);
            *s -= cut;
            excess -= cut;
        }
    }
    let fits = excess == 0;
    for s in shares.iter_mut().rev() {
        let cut = (*s).min(excess);
        *s -= cut;
        excess -= cut;
    }
    (shares, fits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounting::abi::tag;
    use accounting::ledger::Accounting;
    use accounting::registry::Limits;

    #[test]
    fn run_time_is_split_as_held_and_always_adds_up() {
        let a = tag(1, 0);
        let b = tag(2, 5);
        assert_eq!(distribute(&[(a, 300), (b, 700)], 1000), (vec![300, 700], true));
        // Halts (the clock held 1000, the guest ran 900) come out of tag 0.
        assert_eq!(
            distribute(&[(a, 300), (0, 200), (b, 500)], 900),
            (vec![300, 100, 500], true)
        );
        // More halted than idle: the rest from the last, not exact.
        assert_eq!(
            distribute(&[(a, 300), (0, 100), (b, 600)], 700),
            (vec![300, 0, 400], false)
        );
        // Held-back run time goes to the last.
        assert_eq!(distribute(&[(a, 300), (b, 700)], 1200), (vec![300, 900], false));
        assert_eq!(distribute(&[], 50), (vec![], false));
        assert_eq!(distribute(&[(a, 0)], 0), (vec![0], true));
        for ns in [0u64, 1, 7, 999, 1000, 1001, 5000] {
            for held in [
                vec![(a, 1u64), (0, 998), (b, 1)],
                vec![(0, 0), (b, 3)],
                vec![(a, u64::MAX / 4)],
            ] {
                assert_eq!(distribute(&held, ns).0.iter().sum::<u64>(), ns, "{held:?} {ns}");
            }
        }
    }

    fn line_with(entries: &[(u64, u64)]) -> SlotLine {
        let l: SlotLine = Default::default();
        for (n, &(tsc, t)) in entries.iter().enumerate() {
            let i = n % 3;
            l[2 + 2 * i].store(tsc, Ordering::Relaxed);
            l[3 + 2 * i].store(t, Ordering::Relaxed);
            l[0].store(t, Ordering::Relaxed);
            l[1].store(2 * (n as u64 + 1), Ordering::Relaxed);
        }
        l
    }

    fn ns_of(split: &Split) -> Vec<(u64, u64)> {
        split.parts.iter().map(|p| (p.0, p.2)).collect()
    }

    #[test]
    fn switches_are_placed_on_the_run_clock_and_clipped_to_the_interval() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let mut writer = acct.writer(1);
        let clock = *acct.clock();
        let Some(hz) = clock.tsc_hz() else {
            return; // No TSC clock on this machine: nothing to place with.
        };
        // Guest TSC = host TSC + 1000 ticks.
        let book = SwitchBook::new(Some(1000));
        let t0 = accounting::clock::rdtsc();
        let tick = |ns: u64| t0 + ns * hz / 1_000_000_000;
        let ns_at = |host_tsc: u64| clock.tsc_to_ns(host_tsc).unwrap();
        let (from, to) = (ns_at(t0), ns_at(tick(10_000_000)));
        // The run clock was at 5 ms when this interval began; switches 2 ms
        // and 6 ms into it.
        let (a, b) = (tag(1, 0), tag(2, 0));
        let l = line_with(&[(tick(2_000_000) + 1000, a), (tick(6_000_000) + 1000, b)]);
        assert!(book.moved(&l));
        let w = Window {
            base: 5_000_000,
            from,
            to,
        };
        book.harvest(&l, Stamps::Tsc, &mut writer, w, || true);
        assert!(!book.moved(&l) && book.logging());
        let split = book.take(5_000_000 + (to - from), to - from);
        assert!(split.exact);
        let got = ns_of(&split);
        let near = |got: u64, want: u64| got.abs_diff(want) <= 2_000;
        assert_eq!(
            got.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![0, a, b],
            "{got:?}"
        );
        assert!(
            near(got[0].1, 2_000_000) && near(got[1].1, 4_000_000) && near(got[2].1, 4_000_000),
            "{got:?}"
        );
        assert_eq!(got.iter().map(|p| p.1).sum::<u64>(), to - from);
        // A lying entry (TSC 0: far in the future once the offset is taken
        // off) is clipped to the end of its window; nothing is created: the
        // 10 ns measured are all that is charged.
        let l = line_with(&[(tick(2_000_000) + 1000, a), (tick(6_000_000) + 1000, b), (0, a)]);
        book.harvest(
            &l,
            Stamps::Tsc,
            &mut writer,
            Window {
                base: 20_000_000,
                from,
                to,
            },
            || true,
        );
        let split = book.take(20_000_000 + 10, 10);
        assert_eq!(ns_of(&split).iter().map(|p| p.1).sum::<u64>(), 10);
        assert_eq!(book.totals().switches, 3);
    }

    #[test]
    fn an_unknown_offset_or_lost_entries_make_the_charge_sampled() {
        let acct = Accounting::new("t", 1, 1, Limits::default());
        let mut writer = acct.writer(1);
        let w = Window {
            base: 0,
            from: 0,
            to: 100,
        };
        let book = SwitchBook::new(None);
        let l = line_with(&[(1, tag(1, 0))]);
        book.harvest(&l, Stamps::Tsc, &mut writer, w, || true);
        let split = book.take(100, 100);
        assert!(!split.exact);
        // The switch could not be placed: its principal takes the stretch,
        // as a sample taken now would have it.
        assert_eq!(ns_of(&split), vec![(tag(1, 0), 100)]);
        assert_eq!((book.totals().lost, book.totals().sampled_ns), (1, 100));
        let book = SwitchBook::new(Some(0));
        let l = line_with(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        book.harvest(&l, Stamps::Tsc, &mut writer, w, || true);
        assert_eq!(book.totals().lost, 2);
        assert!(!book.take(100, 100).exact);
        // A harvest the sampler finds stale keeps nothing.
        let book = SwitchBook::new(Some(0));
        book.harvest(&l, Stamps::Tsc, &mut writer, w, || false);
        assert!(book.moved(&l) && !book.logging());
    }
}
