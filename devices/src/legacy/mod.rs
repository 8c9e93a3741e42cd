//! Legacy port-I/O devices: the console, the debug port, the exit port,
//! the i8042 reset line and the hardware-reduced ACPI power-management
//! registers.

mod acpi_pm;
mod ports;
mod serial;

pub use acpi_pm::{
    AcpiPm, ACPI_PM_LEN, ACPI_PM_PORT, ACPI_RESET_VALUE, RESET_OFFSET, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET, SLP_TYP_S5,
};
pub use ports::{DebugPort, ExitPort, I8042};
pub use serial::{ConsoleOut, EventFdTrigger, Serial};
