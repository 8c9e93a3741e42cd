//! The i8042 keyboard controller at ports 0x60 (data) and 0x64 (status and
//! command), with a PS/2 keyboard that has no keys pressed.
//!
//! A Linux guest probes the controller (flush, self-test, read and write
//! the command byte, CTR) and gives up with "Can't read CTR" if nothing
//! answers; its reboot path pulses the reset line through it. This is just
//! enough of the chip for that: the controller commands Linux's
//! `drivers/input/serio/i8042.c` uses, a keyboard that answers reset,
//! identify and echo, and a bounded output queue.
//!
//! - Status (0x64 read): OBF (bit 0) while a byte waits, IBF (bit 1) never
//!   (commands complete at once), SYS (bit 2) after a self-test or as the
//!   CTR's bit 2 sets it, CMD/DATA (bit 3) for the last write, keylock off
//!   (bit 4), AUXDATA (bit 5) when the waiting byte came from the aux port.
//! - Interrupt: IRQ 1 through an eventfd (an irqfd with an in-kernel
//!   irqchip; otherwise nobody listens) each time a keyboard byte reaches
//!   the head of the queue while CTR bit 0 enables it.
//! - The aux (mouse) port has no device and cannot be enabled: CTR bit 5
//!   (aux disabled) always reads 1 and bit 1 (aux interrupt) 0, so
//!   Linux's "bit assignment" test in `i8042_check_aux` fails at once and
//!   it registers no aux port, without waiting for timeouts. 0xD3 still
//!   echoes (loopback is inside the controller); bytes for the mouse (0xD4)
//!   are dropped.
//! - Reset: 0xFE (and any 0xF0–0xFF pulse with bit 0 clear), or 0xD1 with
//!   a 0 in bit 0, asks the VM to reset ([`VmAction::Reset`]).
//! - Ports 0x61–0x63 in the range read 0 and ignore writes (0x61 is the
//!   in-kernel PIT's speaker port when there is an irqchip).

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, VmAction};

/// The command written to port 0x64 that pulses the CPU reset line.
pub const I8042_RESET_CMD: u8 = 0xfe;

const OFFSET_DATA: u64 = 0;
const OFFSET_CMD: u64 = 4;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUXDATA: u8 = 0x20;

const CTR_KBDINT: u8 = 0x01;
const CTR_AUXINT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
/// The command byte a BIOS leaves: translation, keyboard interrupt on,
/// aux disabled.
const CTR_DEFAULT: u8 = CTR_XLATE | CTR_AUXDIS | CTR_KBDINT;

/// Bytes the output queue holds; more are dropped and counted.
pub const QUEUE_LEN: usize = 16;

const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;

/// Where the next byte written to port 0x60 goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// To the keyboard.
    Keyboard,
    /// To controller RAM byte `n` (0 is the CTR), after 0x60–0x7F.
    Ram(u8),
    /// To the output port, after 0xD1.
    OutputPort,
    /// Into the output queue as keyboard data, after 0xD2.
    KbdBuffer,
    /// Into the output queue as aux data, after 0xD3.
    AuxBuffer,
    /// To the (absent) mouse, after 0xD4.
    AuxDevice,
}

/// The i8042 controller and its keyboard.
#[derive(Debug)]
pub struct I8042 {
    /// 32 bytes of controller RAM; byte 0 is the CTR.
    ram: [u8; 32],
    sys: bool,
    last_was_cmd: bool,
    output_port: u8,
    pending: Pending,
    /// A keyboard command waiting for its parameter (0xED, 0xF0, 0xF3).
    kbd_param_for: Option<u8>,
    /// Bytes for the guest; `true` marks aux data.
    queue: VecDeque<(u8, bool)>,
    dropped: u64,
    irq: EventFd,
}

impl I8042 {
    /// A controller signalling IRQ 1 through `irq`.
    pub fn new(irq: EventFd) -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CTR_DEFAULT;
        Self {
            ram,
            sys: false,
            last_was_cmd: false,
            // Reset line high (not in reset), A20 enabled.
            output_port: 0x03,
            pending: Pending::Keyboard,
            kbd_param_for: None,
            queue: VecDeque::with_capacity(QUEUE_LEN),
            dropped: 0,
            irq,
        }
    }

    /// Bytes dropped because the output queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn set_ctr(&mut self, v: u8) {
        // No aux device: its port stays disabled, its interrupt off.
        self.ram[0] = (v | CTR_AUXDIS) & !CTR_AUXINT;
        self.sys = v & CTR_SYS != 0;
        self.maybe_signal();
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if let Some(&(_, aux)) = self.queue.front() {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUXDATA;
            }
        }
        if self.sys {
            s |= STATUS_SYS;
        }
        if self.last_was_cmd {
            s |= STATUS_CMD;
        }
        s
    }

    /// Raises IRQ 1 if a keyboard byte waits and the CTR enables it.
    fn maybe_signal(&self) {
        let kbd_byte = matches!(self.queue.front(), Some(&(_, false)));
        if kbd_byte && self.ctr() & CTR_KBDINT != 0 {
            if let Err(e) = self.irq.write(1) {
                accounting::warn_rl!("i8042: raising IRQ 1 failed: {e}");
            }
        }
    }

    fn push(&mut self, byte: u8, aux: bool) {
        if self.queue.len() >= QUEUE_LEN {
            self.dropped += 1;
            return;
        }
        self.queue.push_back((byte, aux));
        if self.queue.len() == 1 {
            self.maybe_signal();
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.queue.pop_front().map_or(0, |(b, _)| b);
        // The next byte moves into the output buffer: a new interrupt.
        self.maybe_signal();
        byte
    }

    /// The keyboard's translated ID / scan-set byte when the CTR asks the
    /// controller to translate to set 1, as a real controller does.
    fn xlate(&self, raw: u8) -> u8 {
        if self.ctr() & CTR_XLATE == 0 {
            return raw;
        }
        match raw {
            0x83 => 0x41,
            0x01 => 0x43,
            0x02 => 0x41,
            0x03 => 0x3f,
            b => b,
        }
    }

    fn keyboard_write(&mut self, v: u8) {
        // Sending data to the keyboard enables its port again.
        self.ram[0] &= !CTR_KBDDIS;
        if let Some(cmd) = self.kbd_param_for.take() {
            self.push(KBD_ACK, false);
            if cmd == 0xf0 && v == 0 {
                // Get scan set: set 2.
                let set = self.xlate(0x02);
                self.push(set, false);
            }
            return;
        }
        match v {
            0xff => {
                self.push(KBD_ACK, false);
                self.push(KBD_BAT_OK, false);
            }
            0xf2 => {
                self.push(KBD_ACK, false);
                self.push(0xab, false);
                let id = self.xlate(0x83);
                self.push(id, false);
            }
            0xee => self.push(0xee, false),
            0xed | 0xf0 | 0xf3 => {
                self.kbd_param_for = Some(v);
                self.push(KBD_ACK, false);
            }
            _ => self.push(KBD_ACK, false),
        }
    }

    fn write_data(&mut self, v: u8) -> Option<VmAction> {
        self.last_was_cmd = false;
        let pending = std::mem::replace(&mut self.pending, Pending::Keyboard);
        match pending {
            Pending::Keyboard => self.keyboard_write(v),
            Pending::Ram(0) => self.set_ctr(v),
            Pending::Ram(n) => {
                if let Some(r) = self.ram.get_mut(usize::from(n)) {
                    *r = v;
                }
            }
            Pending::OutputPort => {
                self.output_port = v;
                if v & 0x01 == 0 {
                    return Some(VmAction::Reset);
                }
            }
            Pending::KbdBuffer => self.push(v, false),
            Pending::AuxBuffer => self.push(v, true),
            // Nothing is attached to the aux port.
            Pending::AuxDevice => {}
        }
        None
    }

    fn write_command(&mut self, cmd: u8) -> Option<VmAction> {
        self.last_was_cmd = true;
        self.pending = Pending::Keyboard;
        match cmd {
            0x20..=0x3f => {
                let b = self.ram[usize::from(cmd & 0x1f)];
                self.push(b, false);
            }
            0x60..=0x7f => self.pending = Pending::Ram(cmd & 0x1f),
            // Aux disable / enable: the absent port stays disabled.
            0xa7 | 0xa8 => {}
            // Aux and keyboard interface tests: no error.
            0xa9 | 0xab => self.push(0x00, false),
            0xaa => {
                self.sys = true;
                self.push(0x55, false);
            }
            0xad => self.ram[0] |= CTR_KBDDIS,
            0xae => self.ram[0] &= !CTR_KBDDIS,
            // Input port: keyboard not inhibited.
            0xc0 => self.push(0x80, false),
            0xd0 => {
                let p = self.output_port;
                self.push(p, false);
            }
            0xd1 => self.pending = Pending::OutputPort,
            0xd2 => self.pending = Pending::KbdBuffer,
            0xd3 => self.pending = Pending::AuxBuffer,
            0xd4 => self.pending = Pending::AuxDevice,
            // Pulse output-port lines low; bit 0 is the CPU reset line.
            0xf0..=0xff if cmd & 0x01 == 0 => return Some(VmAction::Reset),
            _ => {}
        }
        None
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            OFFSET_DATA => self.read_data(),
            OFFSET_CMD => self.status(),
            _ => 0,
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
        let &v = data.first()?;
        match offset {
            OFFSET_DATA => self.write_data(v),
            OFFSET_CMD => self.write_command(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kbc() -> I8042 {
        I8042::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
    }

    fn rd(k: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        k.read(offset, &mut b);
        b[0]
    }

    /// Linux's `i8042_command`: write, then wait for OBF and read.
    fn command(k: &mut I8042, cmd: u8, params: &[u8], results: usize) -> Vec<u8> {
        k.write(4, &[cmd]);
        for &p in params {
            k.write(0, &[p]);
        }
        (0..results)
            .map(|_| {
                assert_ne!(rd(k, 4) & STATUS_OBF, 0, "no result for {cmd:#x}");
                rd(k, 0)
            })
            .collect()
    }

    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while rd(k, 4) & STATUS_OBF != 0 {
            out.push(rd(k, 0));
        }
        out
    }

    fn signalled(k: &I8042) -> bool {
        k.irq.read().is_ok()
    }

    #[test]
    fn i8042_resets_only_on_the_reset_command() {
        // Each on a fresh controller: after 0xd1 the next data byte is the
        // output port, and 0xfe there (bit 0 clear) does reset.
        assert_eq!(kbc().write(4, &[0xfe]), Some(VmAction::Reset));
        assert_eq!(kbc().write(4, &[0xd1]), None);
        assert_eq!(kbc().write(0, &[0xfe]), None);
    }

    #[test]
    fn output_port_write_with_bit_0_clear_resets() {
        let mut k = kbc();

        assert_eq!(k.write(4, &[0xd1]), None);
        let action = k.write(0, &[0xfe]);

        assert_eq!(action, Some(VmAction::Reset));
        assert_eq!(command(&mut kbc(), 0xd1, &[0x03], 0), Vec::<u8>::new());
    }

    #[test]
    fn linux_probe_sequence_passes() {
        let mut k = kbc();

        // i8042_controller_check: status is not 0xff and the flush ends.
        assert_ne!(rd(&mut k, 4), 0xff);
        assert!(drain(&mut k).is_empty());
        // i8042_controller_selftest.
        assert_eq!(command(&mut k, 0xaa, &[], 1), [0x55]);
        assert_ne!(rd(&mut k, 4) & STATUS_SYS, 0);
        // i8042_controller_init: read the CTR twice, write it, read back.
        let ctr = command(&mut k, 0x20, &[], 1)[0];
        assert_eq!(command(&mut k, 0x20, &[], 1), [ctr]);
        let new = (ctr | CTR_KBDDIS) & !CTR_KBDINT;
        command(&mut k, 0x60, &[new], 0);
        assert_eq!(command(&mut k, 0x20, &[], 1), [new]);
        assert!(drain(&mut k).is_empty());
        // Keylock is not active.
        assert_ne!(rd(&mut k, 4) & STATUS_UNLOCKED, 0);
    }

    #[test]
    fn aux_port_cannot_be_enabled() {
        let mut k = kbc();

        command(&mut k, 0xa8, &[], 0);
        command(&mut k, 0x60, &[0x00], 0);

        assert_ne!(command(&mut k, 0x20, &[], 1)[0] & CTR_AUXDIS, 0);
        // Loopback still echoes, marked as aux data.
        k.write(4, &[0xd3]);
        k.write(0, &[0x5a]);
        assert_ne!(rd(&mut k, 4) & STATUS_AUXDATA, 0);
        assert_eq!(rd(&mut k, 0), 0x5a);
    }

    #[test]
    fn keyboard_reset_acks_then_passes_bat() {
        let mut k = kbc();

        k.write(0, &[0xff]);

        assert_eq!(drain(&mut k), [0xfa, 0xaa]);
    }

    #[test]
    fn keyboard_identifies_as_mf2_raw_and_translated() {
        let mut k = kbc();
        command(&mut k, 0x60, &[CTR_DEFAULT & !CTR_XLATE], 0);
        k.write(0, &[0xf2]);
        assert_eq!(drain(&mut k), [0xfa, 0xab, 0x83]);

        command(&mut k, 0x60, &[CTR_DEFAULT], 0);
        k.write(0, &[0xf2]);
        assert_eq!(drain(&mut k), [0xfa, 0xab, 0x41]);
    }

    #[test]
    fn keyboard_echo_and_parameters() {
        let mut k = kbc();

        k.write(0, &[0xee]);
        k.write(0, &[0xed]); // set LEDs, then its parameter
        k.write(0, &[0xff]); // a parameter, not a reset
        k.write(0, &[0xf4]);

        assert_eq!(drain(&mut k), [0xee, 0xfa, 0xfa, 0xfa]);
    }

    #[test]
    fn interrupt_only_with_ctr_bit_0() {
        let mut k = kbc();
        command(&mut k, 0x60, &[CTR_XLATE], 0);
        let _ = signalled(&k);

        k.write(0, &[0xf4]);
        assert!(!signalled(&k));
        drain(&mut k);

        command(&mut k, 0x60, &[CTR_XLATE | CTR_KBDINT], 0);
        k.write(0, &[0xf4]);
        assert!(signalled(&k));
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let mut k = kbc();

        for _ in 0..QUEUE_LEN + 3 {
            k.write(4, &[0xaa]);
        }

        assert_eq!(drain(&mut k).len(), QUEUE_LEN);
        assert_eq!(k.dropped(), 3);
    }

    proptest! {
        #[test]
        fn hostile_sequences_never_panic(
            ops in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<u8>(), 0usize..4), 0..256)
        ) {
            let mut k = kbc();
            for (write, cmd_port, v, extra) in ops {
                let offset = if cmd_port { 4 } else { 0 };
                if write {
                    let data = vec![v; extra + 1];
                    let _ = k.write(offset, &data);
                } else {
                    let mut data = vec![0u8; extra + 1];
                    k.read(offset, &mut data);
                }
                prop_assert!(k.queue.len() <= QUEUE_LEN);
            }
        }
    }
}
