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

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<TscRate> {
    if std::env::var_os("RESOURCEFUL_CLOCK").is_some_and(|v| v == "monotonic") || !invariant_tsc() {
        return None;
    }
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

/// Nanoseconds since it was created, from the cheapest clock this CPU
/// offers that keeps a constant rate.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tsc { start: u64, rate: TscRate },
    Monotonic { start: Instant },
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
            kind: Kind::Monotonic {
                start: Instant::now(),
            },
        }
    }

    /// A clock reading 0 now that never uses the TSC.
    pub fn monotonic() -> Self {
        Clock {
            kind: Kind::Monotonic {
                start: Instant::now(),
            },
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
            Kind::Monotonic { start } => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A host TSC reading on this clock (ns since [`Clock::start`]; 0 for a
    /// reading before it), or `None` where the clock is not the TSC. Used
    /// to place a guest's logged switches (guest TSC less its offset).
    pub fn tsc_to_ns(&self, host_tsc: u64) -> Option<u64> {
        match self.kind {
            Kind::Tsc { start, rate } => {
                let ticks = host_tsc.saturating_sub(start);
                Some(u64::try_from((u128::from(ticks) * u128::from(rate.mult)) >> 32).unwrap_or(u64::MAX))
            }
            Kind::Monotonic { .. } => None,
        }
    }

    /// The calibrated TSC rate in ticks per second, where the clock is the
    /// TSC.
    pub fn tsc_hz(&self) -> Option<u64> {
        match self.kind {
            Kind::Tsc { rate, .. } => {
                u64::try_from((1_000_000_000u128 << 32) / u128::from(rate.mult.max(1))).ok()
            }
            Kind::Monotonic { .. } => None,
        }
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
    fn an_invariant_tsc_is_used_where_the_cpu_has_one() {
        #[cfg(target_arch = "x86_64")]
        if invariant_tsc() && std::env::var_os("RESOURCEFUL_CLOCK").is_none() {
            assert_eq!(Clock::start().source(), "tsc");
        }
        assert_eq!(Clock::monotonic().source(), "monotonic");
    }
}
