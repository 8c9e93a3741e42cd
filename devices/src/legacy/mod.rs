//! Legacy port-I/O devices: the console, the debug port, the exit port and
//! the i8042 reset line.

mod ports;
mod serial;

pub use ports::{DebugPort, ExitPort, I8042};
pub use serial::{ConsoleOut, EventFdTrigger, Serial};
