//! Every counter a device keeps, by name: what the report's `devices`
//! section, `/v1/vm` and `/metrics` show (`docs/report.md`).
//!
//! [`named_counters!`] lists every field of a counter struct once; a test
//! per struct checks that the list covers all of it, so a counter added
//! later cannot stay unreadable.

/// Counters by name, in declaration order.
pub trait NamedCounters {
    /// Every counter with its value.
    fn named(&self) -> Vec<(&'static str, u64)>;
}

/// Implements [`NamedCounters`] for a struct of `u64` fields.
macro_rules! named_counters {
    ($t:ty { $($field:ident),* $(,)? }) => {
        impl $crate::counters::NamedCounters for $t {
            fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field)),*]
            }
        }
    };
}
pub(crate) use named_counters;

/// Whether `named` lists every `u64` of `T` (all its fields are `u64`).
#[cfg(test)]
pub(crate) fn covers_all<T: NamedCounters + Default>() -> bool {
    T::default().named().len() * std::mem::size_of::<u64>() == std::mem::size_of::<T>()
}

#[cfg(test)]
mod tests {
    use super::covers_all;
    use crate::virtio::block::BlockStats;
    use crate::virtio::mmio::MmioStats;
    use crate::virtio::net::NetStats;
    use crate::virtio::vsock::VsockStats;

    #[test]
    fn every_counter_struct_is_listed_whole() {
        assert!(covers_all::<BlockStats>());
        assert!(covers_all::<NetStats>());
        assert!(covers_all::<VsockStats>());
        assert!(covers_all::<MmioStats>());
    }
}
