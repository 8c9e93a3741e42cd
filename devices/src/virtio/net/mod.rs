//! virtio-net on a TAP interface, every frame charged to a principal.
//!
//! The VMM attaches one per `--net tap=NAME` (docs/virtio.md).
//!
//! - `tap.rs`: the [`NetBackend`] trait and the [`Tap`] that implements it.
//! - `frame.rs`: what accounting needs from a frame (MAC, 5-tuple, TCP sequence).
//! - `flow.rs`: the bounded flow table (RX attribution, retransmissions).
//! - `device.rs`: the device, its TX and RX processing.
//! - `throttle.rs`: per-container TX limits and the frames they hold.
//! - `event_handler.rs`: the event-loop wiring.

mod device;
mod event_handler;
pub mod flow;
pub mod frame;
mod tap;
mod throttle;

pub use device::{
    ChainError, DeviceState, NetDevice, NetError, NetStats, ProcessStats, MAX_FRAME_LEN, QUEUE_SIZE,
    RX_QUEUE, TX_QUEUE, VIRTIO_ID_NET, VIRTIO_NET_F_MAC,
};
pub use event_handler::NetHandler;
pub use tap::{validate_name, NetBackend, Tap, TapError, MAX_IFNAME, VNET_HDR_LEN};
pub use throttle::HELD_BYTES_MAX;
