//! Small port devices that need no state machine of their own.

use crate::bus::{BusDevice, VmAction};

fn le_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

/// The POST-code port (0x80): records the last value and how many writes
/// it saw; reads return the last value. A harmless port-I/O target.
#[derive(Debug, Default)]
pub struct DebugPort {
    last: u32,
    writes: u64,
}

impl DebugPort {
    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl BusDevice for DebugPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let bytes = self.last.to_le_bytes();
        for (d, b) in data.iter_mut().zip(bytes.iter().chain(std::iter::repeat(&0))) {
            *d = *b;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<VmAction> {
        self.last = le_value(data);
        self.writes += 1;
        None
    }
}

/// The exit port: a write of 1, 2 or 4 bytes ends the VM with that status.
#[derive(Debug, Default)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<VmAction> {
        Some(VmAction::Exit(le_value(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_port_returns_the_status_of_any_width() {
        let mut p = ExitPort;
        assert_eq!(p.write(0, &[7]), Some(VmAction::Exit(7)));
        assert_eq!(p.write(0, &[0x34, 0x12]), Some(VmAction::Exit(0x1234)));
        assert_eq!(
            p.write(0, &1_000_000u32.to_le_bytes()),
            Some(VmAction::Exit(1_000_000))
        );
    }

    #[test]
    fn debug_port_counts_and_echoes() {
        let mut p = DebugPort::default();
        assert_eq!(p.write(0, &[0xab]), None);
        p.write(0, &[0xcd]);
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!((p.writes(), b), (2, [0xcd, 0]));
    }
}
