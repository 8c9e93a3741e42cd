//! The 16550 console on COM1, emulated by vm-superio.
//!
//! vm-superio flushes its writer after every byte; [`ConsoleOut`] turns that
//! into one write per line (or per 4 KiB) so a chatty guest does not cost a
//! host syscall per character. [`Serial::finish`] flushes what is left when
//! the VM ends.

use std::io::{self, Write};

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, VmAction};

/// Interrupt trigger backed by an eventfd (an irqfd when the VM has an
/// in-kernel irqchip; otherwise nobody listens and the write is harmless).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Buffered console output.
pub struct ConsoleOut {
    inner: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for ConsoleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOut")
            .field("buffered", &self.buf.len())
            .finish()
    }
}

pub const LINE_MAX: usize = 4096;

impl ConsoleOut {
    /// Console output to `inner`.
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(256),
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush_all(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.inner.flush()
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    /// Called by vm-superio after every byte: only a full line or a full
    /// buffer goes out.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.last() == Some(&b'\n') || self.buf.len() >= LINE_MAX {
            self.flush_all()?;
        }
        Ok(())
    }
}

/// COM1 on the port-I/O bus.
#[derive(Debug)]
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

impl Serial {
    /// A 16550 writing to `out`, raising interrupts through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: vm_superio::Serial::new(EventFdTrigger(irq), ConsoleOut::new(out)),
        }
    }

    /// Flushes buffered output; call when the VM ends.
    pub fn finish(&mut self) -> io::Result<()> {
        self.inner.writer_mut().flush_all()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The 16550 has byte registers; wider accesses read the first.
        let v = u8::try_from(offset).map(|o| self.inner.read(o)).unwrap_or(0xff);
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.inner.write(o, v) {
                accounting::warn_rl!("serial console: {e}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(d.to_vec());
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_goes_out_per_line_and_on_finish() {
        let sink = Sink::default();
        let mut s = Serial::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"hi\nyo" {
            s.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().concat(), b"hi\n");
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        s.finish().unwrap();
        assert_eq!(sink.0.lock().unwrap().concat(), b"hi\nyo");
    }

    #[test]
    fn line_status_says_transmitter_empty() {
        let mut s = Serial::new(EventFd::new(0).unwrap(), Box::new(io::sink()));
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }
}
