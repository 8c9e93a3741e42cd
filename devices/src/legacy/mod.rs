//! Legacy port-I/O devices: the console, the debug port, the exit port,
//! the i8042 keyboard controller, the CMOS RTC and the hardware-reduced
//! ACPI power-management registers.

mod acpi_pm;
mod i8042;
mod ports;
mod rtc;
mod serial;

pub use acpi_pm::{
    AcpiPm, ACPI_PM_LEN, ACPI_PM_PORT, ACPI_RESET_VALUE, RESET_OFFSET, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET, SLP_TYP_S5,
};
pub use i8042::{I8042, I8042_RESET_CMD, QUEUE_LEN as I8042_QUEUE_LEN};
pub use ports::{DebugPort, ExitPort};
pub use rtc::Rtc;
pub use serial::{ConsoleOut, EventFdTrigger, Serial, LINE_MAX as SERIAL_LINE_MAX};
