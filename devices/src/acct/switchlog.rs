//! Reading a slot's switch log (`docs/tag-abi.md`, "The switch log").
//!
//! A guest that keeps the log appends `(tsc, tag)` to the three entries in
//! its slot's spare bytes at each principal switch, then publishes the
//! switch by storing `log_seq = n + 1` (release). The VMM reads it from the
//! vCPU's own thread after an exit (the guest is stopped then) and from the
//! sampler while the guest may be writing, so [`read`] is a seqlock read:
//! an entry counts only if the sequence read after it shows it cannot have
//! been overwritten meanwhile. The guest is not trusted: a sequence that goes
//! back or jumps ahead only loses entries (counted by the caller), never
//! makes the reader loop or read outside the slot.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use accounting::abi::SWITCH_LOG_ENTRIES;

/// One slot's 64 bytes as eight words: `tag`, `log_seq`, then the entries.
pub type SlotLine = [AtomicU64; 8];

/// What a slot's logged time stamps are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogClock {
    /// The guest's TSC (slots of a region registered through the device).
    Tsc,
    /// The guest's `CLOCK_MONOTONIC` ns (slots the agent registered: its BPF
    /// program cannot read the TSC), with the agent's last `clock_sync`:
    /// `ns` and `tsc` read together in the guest.
    Monotonic {
        /// `CLOCK_MONOTONIC` at the sync, ns.
        ns: u64,
        /// The guest TSC at the same moment.
        tsc: u64,
        /// TSC ticks per `CLOCK_MONOTONIC` second, from this sync and an
        /// earlier one at least [`MIN_RATE_SPAN_NS`] before it; 0 until
        /// there is one (the TSC's own rate is used then).
        hz: u64,
    },
    /// Monotonic stamps with no sync yet: they cannot be placed.
    Unknown,
}

impl LogClock {
    /// The guest TSC at time stamp `stamp`, for a TSC of `hz` ticks per
    /// second.
    pub fn guest_tsc(self, stamp: u64, hz: u64) -> Option<u64> {
        match self {
            LogClock::Tsc => Some(stamp),
            LogClock::Monotonic { ns, tsc, hz: synced } => {
                // The guest's clock may not tick at the TSC's rate (an
                // emulated or badly calibrated guest): its own rate, where
                // two syncs measured it.
                let hz = if synced > 0 { synced } else { hz };
                let ticks = (i128::from(stamp) - i128::from(ns)) * i128::from(hz) / 1_000_000_000;
                u64::try_from(i128::from(tsc) + ticks).ok()
            }
            LogClock::Unknown => None,
        }
    }
}

/// Where a slot's stamps are explained: read only when a log is placed.
#[derive(Clone, Copy, Debug)]
pub enum Stamps<'a> {
    /// The guest's TSC.
    Tsc,
    /// `CLOCK_MONOTONIC`, through the agent's syncs.
    Synced(&'a ClockCell),
}

impl Stamps<'_> {
    /// What the stamps are now.
    pub fn clock(self) -> LogClock {
        match self {
            Stamps::Tsc => LogClock::Tsc,
            Stamps::Synced(c) => c.get(),
        }
    }
}

/// The agent's latest `clock_sync`, readable without a lock (a seqlock
/// with one writer at a time: the agent hub's thread).
#[derive(Debug, Default)]
pub struct ClockCell {
    seq: AtomicU64,
    ns: AtomicU64,
    tsc: AtomicU64,
    hz: AtomicU64,
    /// The sync the rate is measured from (the writer's own).
    base: std::sync::Mutex<Option<(u64, u64)>>,
}

/// The shortest span between two syncs that measures the guest clock's
/// rate (shorter spans are dominated by the pairs' own error).
pub const MIN_RATE_SPAN_NS: u64 = 200_000_000;

/// A guest clock rate further than this from the TSC's own (parts per
/// thousand) is a lie or a broken guest: the TSC's rate is used instead.
const MAX_RATE_SKEW_PERMILLE: u64 = 500;

impl ClockCell {
    /// Records a sync: `ns` of `CLOCK_MONOTONIC` and the guest TSC `tsc`;
    /// `tsc_hz` is the TSC's own rate (bounds the measured one).
    pub fn set(&self, ns: u64, tsc: u64, tsc_hz: u64) {
        let mut base = self
            .base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut hz = self.hz.load(Ordering::Relaxed);
        match *base {
            Some((ns0, tsc0)) if ns > ns0 && tsc > tsc0 => {
                if ns - ns0 >= MIN_RATE_SPAN_NS {
                    let measured =
                        u64::try_from(u128::from(tsc - tsc0) * 1_000_000_000 / u128::from(ns - ns0))
                            .unwrap_or(0);
                    let skew = measured.abs_diff(tsc_hz).saturating_mul(1000) / tsc_hz.max(1);
                    hz = if skew <= MAX_RATE_SKEW_PERMILLE {
                        measured
                    } else {
                        0
                    };
                    *base = Some((ns, tsc));
                }
            }
            // The first sync, or one that went back (a new boot's clock):
            // measure afresh from here.
            _ => {
                *base = Some((ns, tsc));
                hz = 0;
            }
        }
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.ns.store(ns, Ordering::Relaxed);
        self.tsc.store(tsc, Ordering::Relaxed);
        self.hz.store(hz, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
    }

    /// The last sync as a [`LogClock`].
    pub fn get(&self) -> LogClock {
        for _ in 0..4 {
            let s1 = self.seq.load(Ordering::Acquire);
            let (ns, tsc, hz) = (
                self.ns.load(Ordering::Relaxed),
                self.tsc.load(Ordering::Relaxed),
                self.hz.load(Ordering::Relaxed),
            );
            fence(Ordering::Acquire);
            if s1 == self.seq.load(Ordering::Relaxed) && s1.is_multiple_of(2) {
                return if s1 == 0 {
                    LogClock::Unknown
                } else {
                    LogClock::Monotonic { ns, tsc, hz }
                };
            }
        }
        LogClock::Unknown
    }
}

/// What one read of the log found after position `from`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogRead {
    /// Switches completely logged so far, as read (the sequence over 2).
    pub seq: u64,
    /// A switch was being logged (or one began while this read): its
    /// stamp may be before the reader's present, so the present is not
    /// known to belong to the last switch read.
    pub busy: bool,
    /// Switches after `from` that could no longer be read (overwritten, or
    /// a sequence that went back): the read is not exact when this is not 0.
    pub lost: u64,
    /// The readable switches, oldest first: `entries[..len]` as `(tsc, tag)`.
    pub entries: [(u64, u64); SWITCH_LOG_ENTRIES],
    /// How many of `entries` are in use.
    pub len: usize,
}

/// Reads the switches logged after `from` (the count already consumed).
///
/// The sequence counts two per switch: odd while the guest logs one (it
/// sets it odd before it takes the time stamp, even once the entry is
/// written), so a switch whose stamp may already be past is never missed
/// silently: [`LogRead::busy`] says one is under way. The guest may be
/// writing while it is read (the sampler reads a running vCPU's slot): an
/// entry counts only if the sequence read after it shows no switch began
/// that could have overwritten it. At most a few retries when the guest
/// raced the read; after them whatever could not be read stably is counted
/// as lost.
pub fn read(line: &SlotLine, from: u64) -> LogRead {
    const TRIES: usize = 4;
    let n = SWITCH_LOG_ENTRIES as u64;
    let mut out = LogRead::default();
    for _ in 0..TRIES {
        let s1 = line[1].load(Ordering::Acquire);
        let done1 = s1 / 2;
        out = LogRead {
            seq: done1,
            busy: s1 % 2 == 1,
            ..LogRead::default()
        };
        if done1 == from {
            return out;
        }
        if done1 < from {
            // The guest moved its sequence back: nothing after `from` can be
            // trusted. Start again from what it says now.
            out.lost = 1;
            return out;
        }
        let first = from.max(done1.saturating_sub(n));
        let mut raw = [(0u64, 0u64); SWITCH_LOG_ENTRIES];
        for (k, p) in (first..done1).enumerate() {
            let i = usize::try_from(p % n).unwrap_or(0);
            raw[k] = (
                line[2 + 2 * i].load(Ordering::Relaxed),
                line[3 + 2 * i].load(Ordering::Relaxed),
            );
        }
        fence(Ordering::Acquire);
        let s2 = line[1].load(Ordering::Relaxed);
        if s2 < s1 {
            continue;
        }
        // Switch `k` writes the entry where switch `k - n` was, once it has
        // begun (sequence odd): the switches begun by the second reading
        // spared the positions from `begun - n` on.
        let begun = s2 / 2 + s2 % 2;
        let stable_from = begun.saturating_sub(n).max(first);
        if stable_from >= done1 && s2 != s1 {
            // Everything read was overwritten meanwhile: try again.
            continue;
        }
        let skip = usize::try_from(stable_from - first).unwrap_or(SWITCH_LOG_ENTRIES);
        let kept = &raw[skip.min(SWITCH_LOG_ENTRIES)..usize::try_from(done1 - first).unwrap_or(0)];
        out.entries[..kept.len()].copy_from_slice(kept);
        out.len = kept.len();
        out.lost = stable_from - from;
        out.busy = s2 % 2 == 1 || s2 != s1;
        return out;
    }
    // The guest rewrote its log faster than it could be read: take its
    // sequence and count everything since `from` as lost.
    out.entries = [(0, 0); SWITCH_LOG_ENTRIES];
    out.len = 0;
    out.lost = out.seq.saturating_sub(from).max(1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> SlotLine {
        Default::default()
    }

    /// The guest's protocol: the sequence odd, the entry, the tag, the
    /// sequence even.
    fn switch(l: &SlotLine, tsc: u64, tag: u64) {
        let n = l[1].load(Ordering::Relaxed);
        l[1].store(n + 1, Ordering::Release);
        let i = usize::try_from((n / 2) % SWITCH_LOG_ENTRIES as u64).unwrap();
        l[2 + 2 * i].store(tsc, Ordering::Relaxed);
        l[3 + 2 * i].store(tag, Ordering::Relaxed);
        l[0].store(tag, Ordering::Release);
        l[1].store(n + 2, Ordering::Release);
    }

    #[test]
    fn monotonic_stamps_become_guest_tsc_through_the_last_sync() {
        let c = ClockCell::default();
        assert_eq!(c.get(), LogClock::Unknown);
        assert_eq!(LogClock::Unknown.guest_tsc(5, 1), None);
        assert_eq!(LogClock::Tsc.guest_tsc(5, 1), Some(5));
        c.set(1_000_000, 5_000_000, 2_000_000_000);
        let clock = c.get();
        // 2 GHz: 1 ms after the sync is 2,000,000 ticks later; 0.5 ms
        // before, 1,000,000 earlier.
        assert_eq!(clock.guest_tsc(2_000_000, 2_000_000_000), Some(7_000_000));
        assert_eq!(clock.guest_tsc(500_000, 2_000_000_000), Some(4_000_000));
        // Before the TSC's zero: no TSC at all.
        assert_eq!(clock.guest_tsc(0, 20_000_000_000), None);
        // A guest clock 10 % fast: in 1.1 s of it only 1 s of TSC passes.
        // Too soon to say (under 200 ms since the first sync) is not
        // measured; later it is, from the first sync.
        c.set(101_000_000, 205_000_000, 2_000_000_000);
        assert_eq!(
            c.get(),
            LogClock::Monotonic {
                ns: 101_000_000,
                tsc: 205_000_000,
                hz: 0
            }
        );
        c.set(1_101_000_000, 2_005_000_000, 2_000_000_000);
        let LogClock::Monotonic { hz, .. } = c.get() else {
            panic!("synced")
        };
        assert_eq!(hz, 1_818_181_818);
        assert_eq!(
            c.get().guest_tsc(1_111_000_000, 2_000_000_000),
            Some(2_005_000_000 + 18_181_818)
        );
        // A rate off by more than half is not believed.
        c.set(2_101_000_000, 2_005_000_100, 2_000_000_000);
        assert!(matches!(c.get(), LogClock::Monotonic { hz: 0, .. }));
    }

    #[test]
    fn reads_what_was_logged_after_the_consumed_position() {
        let l = line();
        assert_eq!(read(&l, 0), LogRead::default());
        switch(&l, 100, 7);
        switch(&l, 200, 8);
        let r = read(&l, 0);
        assert_eq!((r.seq, r.lost, r.len, r.busy), (2, 0, 2, false));
        assert_eq!(&r.entries[..2], &[(100, 7), (200, 8)]);
        let r = read(&l, 1);
        assert_eq!((r.seq, r.lost, &r.entries[..r.len]), (2, 0, &[(200, 8)][..]));
        assert_eq!(read(&l, 2).len, 0);
    }

    #[test]
    fn more_switches_than_entries_are_counted_as_lost() {
        let l = line();
        for k in 0..5u64 {
            switch(&l, 10 * k, k);
        }
        let r = read(&l, 0);
        assert_eq!((r.seq, r.lost), (5, 2));
        assert_eq!(&r.entries[..r.len], &[(20, 2), (30, 3), (40, 4)]);
    }

    #[test]
    fn a_switch_under_way_is_reported_and_spares_only_the_entries_it_cannot_touch() {
        let l = line();
        for k in 0..3u64 {
            switch(&l, 10 * k, k);
        }
        // Switch 3 has begun (odd sequence): it may be writing over switch
        // 0's entry, and its stamp may be in the reader's past.
        l[1].store(7, Ordering::Release);
        let r = read(&l, 0);
        assert_eq!((r.seq, r.lost, r.busy), (3, 1, true));
        assert_eq!(&r.entries[..r.len], &[(10, 1), (20, 2)]);
        let r = read(&l, 3);
        assert_eq!((r.seq, r.len, r.busy), (3, 0, true));
    }

    #[test]
    fn a_sequence_that_goes_back_or_jumps_is_bounded() {
        let l = line();
        l[1].store(6, Ordering::Release);
        let r = read(&l, 10);
        assert_eq!((r.seq, r.lost, r.len), (3, 1, 0));
        l[1].store(u64::MAX - 1, Ordering::Release);
        let r = read(&l, 0);
        assert_eq!(r.seq, u64::MAX / 2);
        assert_eq!(r.len, 3);
        assert_eq!(r.lost, u64::MAX / 2 - 3);
    }
}
