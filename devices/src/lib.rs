//! Emulated devices of the Resourceful VMM.
//!
//! - [`bus`]: one address-range bus type, used twice (port I/O and MMIO);
//!   the vCPU loop never hard-codes a port.
//! - [`legacy`]: the 16550 console, the POST-code debug port, the exit port
//!   and the i8042 reset line.
//! - [`virtio`]: the virtio-mmio transport (virtio 1.x) and virtio-blk on a
//!   raw file, whose requests are charged to the tag of the vCPU that
//!   notified the queue.
//! - [`counters`]: every device counter by name, for the report and the API.
//! - [`acct`]: the accounting device through which a guest registers its tag
//!   region, and the shared view of that region (tag slots, declaration ring)
//!   that vCPU threads and the sampler read.
//!
//! Anything a guest can trigger here returns an error value or is counted and
//! logged through a rate-limited path; nothing panics on guest input.

pub mod acct;
pub mod bus;
pub mod counters;
pub mod legacy;
pub mod sock;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, VmAction};
