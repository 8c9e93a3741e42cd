//! Resourceful's accounting core: principals, charges with provenance,
//! per-writer ledgers, and the report.
//!
//! This crate is a leaf: it knows nothing of KVM or devices. The VMM hands it
//! raw facts ("vCPU 1 exited for port output, its tag slot held T, handling
//! took N ns"); this crate decides who is charged and keeps the books.
//!
//! - [`agent`] is the wire format of the guest agent's protocol.
//! - [`abi`] is the byte-level tag ABI shared with guest programs; it is the
//!   only module that builds without `std`.
//! - [`resource`] names what is charged ([`resource::ExitReason`],
//!   [`resource::Provenance`]) and holds the counter blocks.
//! - [`registry`] keeps the principal tree (tenant → containers → requests)
//!   that guest declarations build, bounded and validated.
//! - [`ledger`] is the hot path: a [`ledger::Writer`] per vCPU thread (and one
//!   per auxiliary thread) charges without locks into cache lines no other
//!   writer touches.
//! - [`report`] sums everything into a [`report::Report`] (JSON and a table)
//!   and checks conservation.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod abi;

#[cfg(feature = "std")]
pub mod agent;
#[cfg(feature = "std")]
pub mod clock;
#[cfg(feature = "std")]
pub mod compact;
#[cfg(feature = "std")]
pub mod errors;
#[cfg(feature = "std")]
pub mod ledger;
#[cfg(feature = "std")]
pub mod query;
#[cfg(feature = "std")]
pub mod ratelimit;
#[cfg(feature = "std")]
pub mod region;
#[cfg(feature = "std")]
pub mod registry;
#[cfg(feature = "std")]
pub mod report;
#[cfg(feature = "std")]
pub mod resource;

#[cfg(feature = "std")]
#[doc(hidden)]
pub use log as __log;
