//! The compact form of a finished request's charges.
//!
//! A live request's ledger is a [`crate::resource::Counters`] block: about
//! 320 bytes of atomics, cache-line aligned. Most of it is zero for any one
//! request (two or three exit reasons, maybe some block work), and once the
//! request has ended and no writer can charge it any more, the atomics are
//! dead weight. [`CompactCharges`] keeps only the non-zero words of
//! [`Charges`], as `(gap, value)` pairs of LEB128 varints in one boxed byte
//! slice: `gap` is the distance in words from the previous non-zero word (the
//! first counts from -1), so the common request (about 12 non-zero words of
//! small values) takes 30 to 60 bytes, and an all-zero one none at all.
//!
//! The encoding walks [`Charges::as_words`], so it is generic over the fields
//! of `Charges`: a field group added there is encoded with no change here.

use crate::resource::Charges;

/// Non-zero words of a [`Charges`], varint-encoded (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactCharges(Box<[u8]>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let low = u8::try_from(v & 0x7f).unwrap_or(0);
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Reads one varint at `*pos`; `None` if the bytes end first or it is longer
/// than a `u64` can be (never, for bytes [`CompactCharges::encode`] wrote).
fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl CompactCharges {
    /// Encodes `c`.
    pub fn encode(c: &Charges) -> Self {
        let words = c.as_words();
        let mut out = Vec::with_capacity(64);
        let mut last: Option<usize> = None;
        for (i, &w) in words.iter().enumerate() {
            if w != 0 {
                let gap = match last {
                    None => i,
                    Some(l) => i - l - 1,
                };
                put_varint(&mut out, gap as u64);
                put_varint(&mut out, w);
                last = Some(i);
            }
        }
        Self(out.into_boxed_slice())
    }

    /// Decodes into plain charges.
    pub fn decode(&self) -> Charges {
        let mut words = [0u64; Charges::WORDS];
        let mut pos = 0;
        let mut next = 0usize;
        while pos < self.0.len() {
            let (Some(gap), Some(v)) = (get_varint(&self.0, &mut pos), get_varint(&self.0, &mut pos)) else {
                break;
            };
            let i = usize::try_from(gap).unwrap_or(usize::MAX).saturating_add(next);
            let Some(slot) = words.get_mut(i) else { break };
            *slot = v;
            next = i + 1;
        }
        Charges::from_words(&words)
    }

    /// Adds the decoded charges into `out`.
    pub fn add_into(&self, out: &mut Charges) {
        out.add(&self.decode());
    }

    /// Bytes on the heap (0 when nothing was charged).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_charges_take_no_bytes() {
        let c = CompactCharges::encode(&Charges::default());
        assert_eq!(c.heap_bytes(), 0);
        assert_eq!(c.decode(), Charges::default());
    }

    #[test]
    fn a_typical_request_is_small() {
        let mut c = Charges::default();
        c.exits[0].count = 12;
        c.exits[0].host_ns = 360_000;
        c.exits[3].count = 3;
        c.exits[3].host_ns = 95_000;
        c.guest_run_ns = 8_000_000;
        c.run_samples = 2;
        c.block.reads = 1;
        c.block.bytes_read = 4096;
        c.block.device_ns = 20_000;
        c.block.latency_ns = 45_000;
        c.interrupts = 1;
        let e = CompactCharges::encode(&c);
        assert!(e.heap_bytes() <= 40, "{}", e.heap_bytes());
        assert_eq!(e.decode(), c);
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [vec![0xff; 20], vec![200, 1], vec![0x80], vec![1]] {
            let _ = CompactCharges(bytes.into_boxed_slice()).decode();
        }
    }

    proptest! {
        /// Any charges, sparse or dense, small or extreme, round-trip.
        #[test]
        fn any_charges_round_trip(
            words in proptest::collection::vec(
                prop_oneof![3 => Just(0u64), 2 => 0u64..1000, 1 => any::<u64>()],
                Charges::WORDS,
            )
        ) {
            let words: [u64; Charges::WORDS] = words.try_into().unwrap();
            let c = Charges::from_words(&words);
            prop_assert_eq!(CompactCharges::encode(&c).decode(), c);
        }
    }
}
