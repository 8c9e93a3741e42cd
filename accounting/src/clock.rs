//! The books' clock: nanoseconds since the books were opened, read twice
//! per vCPU exit, so its cost is most of what accounting adds to an exit.
//!
//! Where the CPU has an invariant TSC (CPUID 0x8000_0007 EDX bit 8: it
//! ticks at a constant rate in every power state, the same on every core)
//! the clock is `rdtsc` scaled by a factor calibrated once per process
//! against `CLOCK_MONOTONIC` (about 21–26 ns a read on the development
//! machines, against 70–95 ns for `clock_gettime`). Elsewhere it is
//! `CLOCK_MONOTONIC` through `Instant`. The report's `vm.clock_source`
//! says which (`docs/report.md`); `RESOURCEFUL_CLOCK=monotonic` forces the
//! second (for comparison and debugging).
//!
//! Either way the readings are nanoseconds: everything downstream
//! (`host_ns`, run time, request begin and end) means the same.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the calibration waits between its two readings.
const CALIBRATION: Duration = Duration::from_millis(1);

/// A calibrated TSC rate: `ns = ticks * mult >> 32`.
#[derive(Clone, Copy, Debug)]
struct TscRate {
    mult: u64,
}

/// The process-wide calibration: `None` where the TSC is not usable.
fn tsc_rate() -> Option<TscRate> {
    static RATE: OnceLock<Option<TscRate>> = OnceLock::new();
    *RATE.get_or_init(calibrate)
}

/// The host's time stamp counter now.
#[cfg(target_arch = "x86_64")]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; it is available on every x86-64
    // CPU (user mode may read it unless CR4.TSD is set, which Linux does
    // not do by default; `calibrate` checks the readings).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    // CPUID is always available on x86-64; leaf 0x8000_0007 is asked for
    // only where the highest extended leaf reaches it.
    let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    max_ext >= 0x8000_0007 && core::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0
}

/// A TSC reading next to a monotonic one: the pair read closest together
/// out of a few tries.
#[cfg(target_arch = "x86_64")]
fn paired() -> (u64, Instant) {
    let mut best = (u64::MAX, 0, Instant::now());
    for _ in 0..5 {
        let t0 = rdtsc();
        let now = Instant::now();
        let t1 = rdtsc();
        if t1.wrapping_sub(t0) < best.0 {
            best = (t1.wrapping_sub(t0), t0 + (t1.wrapping_sub(t0)) / 2, now);
        }
    }
    (best.1, best.2)
}

/// The TSC's rate for converting guest TSC stamps (the switch log) where
/// the clock itself is `CLOCK_MONOTONIC`: calibrated whether or not the CPU
/// says its TSC is invariant (an emulated CPU may not say so and still tick
/// at one rate).
fn conversion_rate() -> Option<TscRate> {
    static RATE: OnceLock<Option<TscRate>> = OnceLock::new();
    *RATE.get_or_init(measure_rate)
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<TscRate> {
    if std::env::var_os("RESOURCEFUL_CLOCK").is_some_and(|v| v == "monotonic") || !invariant_tsc() {
        return None;
    }
    measure_rate()
}

#[cfg(target_arch = "x86_64")]
fn measure_rate() -> Option<TscRate> {
    let (t0, i0) = paired();
    std::thread::sleep(CALIBRATION);
    let (t1, i1) = paired();
    let ticks = t1.checked_sub(t0)?;
    let ns = u64::try_from(i1.duration_since(i0).as_nanos()).ok()?;
    // A rate outside 100 MHz..20 GHz is no TSC to trust.
    if ns == 0 || ticks < ns / 10 || ticks > ns.saturating_mul(20) {
        return None;
    }
    let mult = u64::try_from((u128::from(ns) << 32) / u128::from(ticks)).ok()?;
    Some(TscRate { mult })
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Option<TscRate> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_rate() -> Option<TscRate> {
    None
}

/// Nanoseconds since it was created, from the cheapest clock this CPU
/// offers that keeps a constant rate.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tsc {
        start: u64,
        rate: TscRate,
    },
    /// `tsc`: the TSC rate and the TSC reading at `start`, for converting
    /// TSC stamps only.
    Monotonic {
        start: Instant,
        tsc: Option<(TscRate, u64)>,
    },
}

/// A monotonic clock's start, with the TSC reading beside it.
fn monotonic_start() -> Kind {
    #[cfg(target_arch = "x86_64")]
    if let Some(rate) = conversion_rate() {
        let (tsc, start) = paired();
        return Kind::Monotonic {
            start,
            tsc: Some((rate, tsc)),
        };
    }
    Kind::Monotonic {
        start: Instant::now(),
        tsc: None,
    }
}

impl Clock {
    /// A clock reading 0 now.
    pub fn start() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(rate) = tsc_rate() {
            return Clock {
                kind: Kind::Tsc { start: rdtsc(), rate },
            };
        }
        Clock {
            kind: monotonic_start(),
        }
    }

    /// A clock reading 0 now that never reads the TSC (it may still
    /// convert TSC stamps, [`Clock::tsc_to_ns`]).
    pub fn monotonic() -> Self {
        Clock {
            kind: monotonic_start(),
        }
    }

    /// Nanoseconds since [`Clock::start`]; never goes back on one thread.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self.kind {
            #[cfg(target_arch = "x86_64")]
            Kind::Tsc { start, rate } => {
                let ticks = rdtsc().saturating_sub(start);
                u64::try_from((u128::from(ticks) * u128::from(rate.mult)) >> 32).unwrap_or(u64::MAX)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kind::Tsc { .. } => unreachable!("no TSC clock is made off x86-64"),
            Kind::Monotonic { start, .. } => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A host TSC reading on this clock (ns since [`Clock::start`]; 0 for a
    /// reading before it), or `None` where no TSC rate could be calibrated.
    /// Used to place a guest's logged switches (guest TSC less its
    /// offset). On a monotonic clock it goes through the rate calibrated at
    /// start, so it drifts from the clock by the rate's error (a few ppm).
    pub fn tsc_to_ns(&self, host_tsc: u64) -> Option<u64> {
        let (start, rate) = match self.kind {
            Kind::Tsc { start, rate } => (start, rate),
            Kind::Monotonic { tsc, .. } => {
                let (rate, start) = tsc?;
                (start, rate)
            }
        };
        let ticks = host_tsc.saturating_sub(start);
        Some(u64::try_from((u128::from(ticks) * u128::from(rate.mult)) >> 32).unwrap_or(u64::MAX))
    }

    /// The calibrated TSC rate in ticks per second, where there is one.
    pub fn tsc_hz(&self) -> Option<u64> {
        let rate = match self.kind {
            Kind::Tsc { rate, .. } => rate,
            Kind::Monotonic { tsc, .. } => tsc?.0,
        };
        u64::try_from((1_000_000_000u128 << 32) / u128::from(rate.mult.max(1))).ok()
    }

    /// `tsc` or `monotonic`: what the report's `vm.clock_source` says.
    pub fn source(&self) -> &'static str {
        match self.kind {
            Kind::Tsc { .. } => "tsc",
            Kind::Monotonic { .. } => "monotonic",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_agree_with_the_monotonic_clock() {
        for clock in [Clock::start(), Clock::monotonic()] {
            let wall = Instant::now();
            let a = clock.now_ns();
            std::thread::sleep(Duration::from_millis(50));
            let b = clock.now_ns();
            let real = u64::try_from(wall.elapsed().as_nanos()).unwrap();
            assert!(b >= a, "{}", clock.source());
            // Within 2 % plus scheduling noise of the real 50+ ms.
            let measured = b - a;
            assert!(
                measured <= real + 1_000_000 && measured * 100 >= (real - 1_000_000) * 98,
                "{}: measured {measured} ns over a real {real} ns",
                clock.source()
            );
        }
    }

    #[test]
    fn tsc_stamps_convert_to_the_clocks_ns_either_way() {
        for clock in [Clock::start(), Clock::monotonic()] {
            let Some(hz) = clock.tsc_hz() else {
                continue; // No TSC to calibrate here.
            };
            assert!((100_000_000..=20_000_000_000).contains(&hz), "{hz}");
            for _ in 0..3 {
                let a = clock.now_ns();
                let t = rdtsc();
                let b = clock.now_ns();
                let at = clock.tsc_to_ns(t).unwrap();
                // Between the two readings, give or take the rate's error
                // since start and a scheduling hiccup.
                assert!(
                    at + 200_000 >= a && at <= b + 200_000,
                    "{}: {a} <= {at} <= {b}",
                    clock.source()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    #[test]
    fn an_invariant_tsc_is_used_where_the_cpu_has_one() {
        #[cfg(target_arch = "x86_64")]
        if invariant_tsc() && std::env::var_os("RESOURCEFUL_CLOCK").is_none() {
            assert_eq!(Clock::start().source(), "tsc");
        }
        assert_eq!(Clock::monotonic().source(), "monotonic");
    }
}
