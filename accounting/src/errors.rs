//! Counted guest misbehaviour.
//!
//! Everything a guest can get wrong in the tag interface has a name here and
//! a counter. The VMM keeps running, the offending input is dropped (or its
//! work charged to `unattributed`), the counter goes up, and a rate-limited
//! line is logged. The counters are part of every report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One kind of guest mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GuestError {
    /// Registration: unknown command value.
    RegisterBadCommand,
    /// Registration: region not 64-byte aligned.
    RegisterMisaligned,
    /// Registration: region not wholly inside guest RAM.
    RegisterNotInRam,
    /// Registration: region length inconsistent or too large.
    RegisterBadLength,
    /// Registration: wrong magic or version.
    RegisterBadHeader,
    /// Registration: bad slot/ring geometry, including fewer slots than vCPUs.
    RegisterBadGeometry,
    /// Accounting device: access of the wrong size or to a read-only or
    /// unknown register.
    DeviceBadAccess,
    /// Ring: unknown entry kind.
    RingBadKind,
    /// Ring: entry whose sequence number is ahead of the consumer (overrun or
    /// garbage); skipped.
    RingBadSeq,
    /// Ring: container name empty, too long or with bad bytes, or reserved.
    RingBadName,
    /// Ring: id 0 where a non-zero id is required.
    RingZeroId,
    /// Ring: container id already live.
    RingDuplicateContainer,
    /// Ring: a live container of the same parent already has that name.
    RingDuplicateName,
    /// Ring: parent container not declared.
    RingUnknownParent,
    /// Ring: container limit reached; declaration rejected.
    RingContainerLimit,
    /// Ring: retire or begin naming a container that is not live.
    RingUnknownContainer,
    /// Ring: request id already live.
    RingDuplicateRequest,
    /// Ring: live-request limit reached; begin rejected.
    RingRequestLimit,
    /// Ring: end of a request that is not live.
    RingUnknownRequest,
    /// Ring: reserved fields not zero (entry still applied).
    RingReservedNonZero,
    /// Ring: a drain stopped because the guest's entries with bad sequence
    /// numbers used up the skip budget (10,000 per second).
    RingThrottled,
    /// Tag: container not declared (charged to `unattributed`).
    TagUnknownContainer,
    /// Tag: request not live (charged to the container alone).
    TagUnknownRequest,
    /// Tag: request belongs to another container (charged to the tag's
    /// container alone).
    TagRequestMismatch,
    /// Tag: a request without a container (charged to `unattributed`).
    TagRequestWithoutContainer,
    /// Agent `register_slots`: a slot page not wholly inside one guest RAM
    /// range (the previous slots stay in force).
    SlotsNotInRam,
    /// Agent `register_slots`: an APIC id the VM has no vCPU for (the
    /// previous slots stay in force).
    SlotsUnknownApicId,
}

impl GuestError {
    /// Number of kinds.
    pub const COUNT: usize = 27;
    /// All kinds.
    pub const ALL: [GuestError; Self::COUNT] = [
        Self::RegisterBadCommand,
        Self::RegisterMisaligned,
        Self::RegisterNotInRam,
        Self::RegisterBadLength,
        Self::RegisterBadHeader,
        Self::RegisterBadGeometry,
        Self::DeviceBadAccess,
        Self::RingBadKind,
        Self::RingBadSeq,
        Self::RingBadName,
        Self::RingZeroId,
        Self::RingDuplicateContainer,
        Self::RingDuplicateName,
        Self::RingUnknownParent,
        Self::RingContainerLimit,
        Self::RingUnknownContainer,
        Self::RingDuplicateRequest,
        Self::RingRequestLimit,
        Self::RingUnknownRequest,
        Self::RingReservedNonZero,
        Self::RingThrottled,
        Self::TagUnknownContainer,
        Self::TagUnknownRequest,
        Self::TagRequestMismatch,
        Self::TagRequestWithoutContainer,
        Self::SlotsNotInRam,
        Self::SlotsUnknownApicId,
    ];

    /// Name used in reports and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RegisterBadCommand => "register_bad_command",
            Self::RegisterMisaligned => "register_misaligned",
            Self::RegisterNotInRam => "register_not_in_ram",
            Self::RegisterBadLength => "register_bad_length",
            Self::RegisterBadHeader => "register_bad_header",
            Self::RegisterBadGeometry => "register_bad_geometry",
            Self::DeviceBadAccess => "device_bad_access",
            Self::RingBadKind => "ring_bad_kind",
            Self::RingBadSeq => "ring_bad_seq",
            Self::RingBadName => "ring_bad_name",
            Self::RingZeroId => "ring_zero_id",
            Self::RingDuplicateContainer => "ring_duplicate_container",
            Self::RingDuplicateName => "ring_duplicate_name",
            Self::RingUnknownParent => "ring_unknown_parent",
            Self::RingContainerLimit => "ring_container_limit",
            Self::RingUnknownContainer => "ring_unknown_container",
            Self::RingDuplicateRequest => "ring_duplicate_request",
            Self::RingRequestLimit => "ring_request_limit",
            Self::RingUnknownRequest => "ring_unknown_request",
            Self::RingReservedNonZero => "ring_reserved_nonzero",
            Self::RingThrottled => "ring_throttled",
            Self::TagUnknownContainer => "tag_unknown_container",
            Self::TagUnknownRequest => "tag_unknown_request",
            Self::TagRequestMismatch => "tag_request_mismatch",
            Self::TagRequestWithoutContainer => "tag_request_without_container",
            Self::SlotsNotInRam => "slots_not_in_ram",
            Self::SlotsUnknownApicId => "slots_unknown_apic_id",
        }
    }

    /// Maps a failed registration status to its error.
    pub fn from_status(status: crate::abi::Status) -> Option<Self> {
        use crate::abi::Status;
        Some(match status {
            Status::Ok => return None,
            Status::BadCommand => Self::RegisterBadCommand,
            Status::Misaligned => Self::RegisterMisaligned,
            Status::NotInRam => Self::RegisterNotInRam,
            Status::BadLength => Self::RegisterBadLength,
            Status::BadHeader => Self::RegisterBadHeader,
            Status::BadGeometry => Self::RegisterBadGeometry,
        })
    }
}

/// Counters of every [`GuestError`]. Incremented only on misbehaviour, so a
/// shared atomic per kind is fine.
#[derive(Debug, Default)]
pub struct GuestErrors {
    counts: [AtomicU64; GuestError::COUNT],
}

impl GuestErrors {
    /// Counts one occurrence.
    pub fn inc(&self, e: GuestError) {
        self.counts[e as usize].fetch_add(1, Relaxed);
    }

    /// Current count of `e`.
    pub fn get(&self, e: GuestError) -> u64 {
        self.counts[e as usize].load(Relaxed)
    }

    /// Non-zero counters by name.
    pub fn nonzero(&self) -> BTreeMap<String, u64> {
        GuestError::ALL
            .iter()
            .filter_map(|&e| {
                let n = self.get(e);
                (n > 0).then(|| (e.name().to_string(), n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_once_in_discriminant_order() {
        for (i, e) in GuestError::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }

    #[test]
    fn nonzero_reports_only_counted_kinds() {
        let errs = GuestErrors::default();
        errs.inc(GuestError::RingBadKind);
        errs.inc(GuestError::RingBadKind);
        errs.inc(GuestError::TagUnknownRequest);
        let m = errs.nonzero();
        assert_eq!(m.len(), 2);
        assert_eq!(m["ring_bad_kind"], 2);
        assert_eq!(m["tag_unknown_request"], 1);
    }
}
