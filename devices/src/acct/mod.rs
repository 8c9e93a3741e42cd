//! The accounting device and the guest's shared tag region.
//!
//! The guest writes the address and length of a piece of its own memory to
//! the device (`device.rs`) and issues `Register`; the device validates it
//! and publishes a [`Registration`] through [`TagRegion`] (`region.rs`).
//! Each vCPU thread then holds a [`TagReader`] that reads its tag slot with
//! one atomic load through a host pointer, and drains the declaration ring
//! into the books when the guest has posted something.
//!
//! A Linux guest's agent registers its slots another way, as a list of
//! guest-physical pages over the agent protocol (`pages.rs`,
//! [`AgentSlots`]); the device's region wins where both exist.

mod device;
mod pages;
mod region;
pub mod switchlog;

pub use device::AcctDevice;
pub use pages::{AgentSlots, PageSlots, SlotsRefusal};
pub use region::{QueueTagReader, Registration, SlotSource, TagReader, TagRegion, SKIPS_PER_SEC};
