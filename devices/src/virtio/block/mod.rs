//! virtio-blk on a raw file.
//!
//! - `request.rs` parses and validates one descriptor chain into a typed
//!   [`Request`] (or says why it cannot, and where its status byte is).
//! - `device.rs` owns the file, the queues and the state; it executes the
//!   requests of a queue in a batch and charges each one to its tag.
//! - `../limiter.rs` holds the per-container token buckets that may hold a
//!   request back (docs/limits-per-container.md), shared with virtio-net TX.
//! - `event_handler.rs` wires the queues' notify `EventFd`s into an
//!   `event_manager` loop.

mod device;
mod event_handler;
mod request;

pub use super::limiter::{
    parse_rate, parse_size, BlockLimitConfig, BucketConfig, BucketError, LimitLookup, TokenBucket, MAX_REFILL,
};
pub use device::{BlockDevice, BlockError, BlockStats, DeviceState, ProcessStats, QUEUE_SIZE};
pub use event_handler::BlockHandler;
pub use request::{
    parse, Malformed, Request, RequestError, RequestKind, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
