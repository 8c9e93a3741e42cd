//! The Resourceful VMM: a KVM virtual machine monitor that charges every
//! vCPU exit to the principal the guest declared.
//!
//! - [`config`]: what a VM is made of (serde structs shared by the CLI and,
//!   later, the API).
//! - [`arch`] and [`boot`]: x86-64 machine set-up and kernel loading (the
//!   Linux 64-bit boot protocol, and the project's bare-metal guests).
//! - [`vcpu`]: the vCPU threads and the pure exit dispatch.
//! - [`sampler`]: guest run time by principal, and the timer drain.
//! - [`vm`]: assembles and runs a VM and produces the report.
//! - [`limits`]: the VMM's own bounds (threads, descriptors).
//! - [`probes`]: every device's counters, for the report and the API.
//! - [`api`]: the host API (JSON and Prometheus metrics on a Unix socket).
//! - [`otlp`]: OpenTelemetry export of finished requests and counters.

pub mod agent;
pub mod api;
pub mod arch;
pub mod boot;
pub mod charger;
pub mod config;
pub mod cpu_limit;
pub mod fleet;
pub mod fleet_xvm;
pub mod limits;
pub mod limits_file;
pub mod live_limits;
pub mod logging;
pub mod otlp;
pub mod probes;
pub mod sampler;
pub mod sandbox;
pub use devices::sock;
pub mod vcpu;
pub mod vm;
pub mod xvm_net;

pub use config::{Builtin, ConsoleTarget, KernelSource, VmConfig};
pub use vm::{run, RunOutcome, VmError};
