//! `blk-mix`: two containers' block reads in flight at once on one disk,
//! for the resource-container experiments 1 and 4 (docs/experiments.md).
//! vCPU 0 only; every request carries its container's explicit queue tag,
//! so the device charges (and limits) it to that container whatever the
//! slot says; each submission is one notify exit, charged to
//! `unattributed` (the slot holds tag 0).
//!
//! - `mix=prio`: `high` (id 1) reads 512 bytes at sector 0, one at a time,
//!   `hi=N` times (default 200), waiting `think=C` TSC cycles (default 0)
//!   after each completes; `low` (id 2) submits a 4096-byte read at
//!   sector 8 every `gap=C` cycles (0 or absent: never), open loop, with
//!   up to 4 in flight (a due read finds no free chain: it waits, and at
//!   most 4 gaps of arrivals are kept owed). Ends once `high` is done and
//!   `low`'s reads completed.
//! - `mix=shares`: `a` (id 1) and `b` (id 2) keep 2 reads of 4096 bytes in
//!   flight each (closed loop) until `n=N` (default 600) completed in all,
//!   then let the rest complete.
//!
//! Prints `blk-mix: kcycles N` (TSC cycles / 1000 from the first
//! submission to the last completion, 10 digits) and `blk-mix: done`, and
//! exits 0; a failed request exits 11, a device
//! missing or refused 8 or 10, a run past `POLL_LIMIT` polls 12.

use crate::acct::{self, rdtsc};
use crate::blk::{self, Blk, MIX_SLOTS};
use crate::io::{print, print_dec10};
use crate::{arg, finish, parse_u64, virtio, Boot};
use accounting::abi::{tag, NO_REQUEST};

const MIX_HIGH: u32 = 1;
const MIX_LOW: u32 = 2;
/// Polls without any completion before the guest gives up (exit 12).
const POLL_LIMIT: u64 = 1 << 30;

fn fail(b: &Boot, msg: &str, status: u32) -> ! {
    acct::set_tag(b.vcpu, 0);
    print(msg);
    finish(b, status)
}

fn num(b: &Boot, key: &[u8], default: u64) -> u64 {
    arg(b.cmdline, key).and_then(parse_u64).unwrap_or(default)
}

/// The slots in flight, one bit each, and who owns them.
struct Flight {
    busy: u16,
    owner: [u32; MIX_SLOTS as usize],
    idle_polls: u64,
}

impl Flight {
    fn free(&self, among: core::ops::Range<u16>) -> Option<u16> {
        among.into_iter().find(|s| self.busy & (1 << s) == 0)
    }

    fn submit(&mut self, d: &mut Blk, slot: u16, container: u32, sector: u64, len: u32) {
        self.busy |= 1 << slot;
        self.owner[usize::from(slot)] = container;
        d.submit(slot, blk::T_IN, sector, len, tag(container, NO_REQUEST));
    }

    /// The container of one completed request, if one completed.
    fn poll(&mut self, b: &Boot, d: &mut Blk) -> Option<u32> {
        let Some((slot, st)) = d.poll() else {
            self.idle_polls += 1;
            if self.busy != 0 && self.idle_polls > POLL_LIMIT {
                fail(b, "blk-mix: timeout\n", 12);
            }
            return None;
        };
        self.idle_polls = 0;
        if st != blk::S_OK || self.busy & (1 << slot) == 0 {
            fail(b, "blk-mix: request failed\n", 11);
        }
        self.busy &= !(1 << slot);
        Some(self.owner[usize::from(slot)])
    }
}

pub fn scenario(b: &Boot) -> ! {
    print("blk-mix: start\n");
    acct::register();
    let shares = arg(b.cmdline, b"mix=") == Some(&b"shares"[..]);
    if shares {
        acct::declare_container(MIX_HIGH, 0, b"a");
        acct::declare_container(MIX_LOW, 0, b"b");
    } else {
        acct::declare_container(MIX_HIGH, 0, b"high");
        acct::declare_container(MIX_LOW, 0, b"low");
    }
    let Some(mmio) = virtio::find(b.cmdline, virtio::DEVICE_ID_BLOCK) else {
        fail(b, "blk-mix: no device\n", 8)
    };
    let Ok(mut d) = Blk::init(mmio) else {
        fail(b, "blk-mix: init failed\n", 10)
    };
    if d.capacity < 16 {
        fail(b, "blk-mix: disk too small\n", 10);
    }
    let mut f = Flight {
        busy: 0,
        owner: [0; MIX_SLOTS as usize],
        idle_polls: 0,
    };
    let start = rdtsc();
    if shares {
        run_shares(b, &mut d, &mut f, num(b, b"n=", 600));
    } else {
        run_prio(b, &mut d, &mut f);
    }
    print("blk-mix: kcycles ");
    print_dec10(rdtsc().wrapping_sub(start) / 1000);
    print("\n");
    print("blk-mix: done\n");
    finish(b, 0)
}

/// `mix=shares`: slots 0-1 are `a`'s, 2-3 `b`'s.
fn run_shares(b: &Boot, d: &mut Blk, f: &mut Flight, n: u64) {
    for slot in 0..4 {
        let c = if slot < 2 { MIX_HIGH } else { MIX_LOW };
        f.submit(d, slot, c, 8, 4096);
    }
    let mut done = 0;
    while f.busy != 0 {
        let Some(c) = f.poll(b, d) else {
            continue;
        };
        done += 1;
        if done + 4 <= n {
            let among = if c == MIX_HIGH { 0..2 } else { 2..4 };
            if let Some(slot) = f.free(among) {
                f.submit(d, slot, c, 8, 4096);
            }
        }
    }
}

/// `mix=prio`: slot 0 is `high`'s, 1-4 `low`'s.
fn run_prio(b: &Boot, d: &mut Blk, f: &mut Flight) {
    let (hi, think, gap) = (num(b, b"hi=", 200), num(b, b"think=", 0), num(b, b"gap=", 0));
    let (mut hi_done, mut hi_busy) = (0u64, false);
    let mut next_high = rdtsc();
    let mut next_low = rdtsc().saturating_add(gap);
    while hi_done < hi || f.busy != 0 {
        if let Some(c) = f.poll(b, d) {
            if c == MIX_HIGH {
                hi_done += 1;
                hi_busy = false;
                next_high = rdtsc().saturating_add(think);
            }
        }
        let now = rdtsc();
        if !hi_busy && hi_done < hi && now >= next_high {
            f.submit(d, 0, MIX_HIGH, 0, 512);
            hi_busy = true;
        }
        if gap > 0 && hi_done < hi && now >= next_low {
            if let Some(slot) = f.free(1..MIX_SLOTS) {
                f.submit(d, slot, MIX_LOW, 8, 4096);
                // Owed arrivals beyond 4 gaps are not kept.
                next_low = next_low.saturating_add(gap).max(now.saturating_sub(4 * gap));
            }
        }
    }
}
