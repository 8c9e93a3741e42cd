//! Port I/O, MMIO, the console and the exit port.
//!
//! Every helper here is exactly one guest instruction that exits to the VMM
//! (see docs/exit-accounting-rules.md), so a scenario's exit counts are the
//! number of calls it makes. The `asm!` blocks do not say `nomem`, so they are
//! compiler barriers: tag stores before them are never sunk past them.

use accounting::abi;
use core::arch::asm;

/// One `out dx, al`: one `port_out` exit.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: the VMM runs the guest at IOPL 3, so `out` is allowed at CPL3;
    // the ports used (COM1, DEBUG_PORT) have no effect on guest memory.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) };
}

/// One `out dx, eax`: one `port_out` exit.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) };
}

/// One 32-bit store to the accounting device at `offset`: one `mmio_write`.
#[inline(always)]
pub fn mmio_write32(offset: u64, value: u32) {
    mmio_write32_at(abi::ACCT_MMIO_BASE + offset, value);
}

/// One 64-bit store to the accounting device at `offset`: one `mmio_write`.
#[inline(always)]
pub fn mmio_write64(offset: u64, value: u64) {
    let addr = abi::ACCT_MMIO_BASE + offset;
    // SAFETY: the accounting device's window is identity-mapped with user
    // pages and is not RAM; the store only exits to the VMM.
    unsafe {
        asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) value,
             options(nostack, preserves_flags))
    };
}

/// One 64-bit load from the accounting device at `offset`: one `mmio_read`
/// (two, each of its own, when it crosses the window's end: KVM splits it).
#[inline(always)]
pub fn mmio_read64(offset: u64) -> u64 {
    let addr = abi::ACCT_MMIO_BASE + offset;
    let value: u64;
    // SAFETY: as in `mmio_write64`.
    unsafe {
        asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) value,
             options(nostack, preserves_flags))
    };
    value
}

/// One 32-bit load from the accounting device at `offset`: one `mmio_read`.
#[inline(always)]
pub fn mmio_read32(offset: u64) -> u32 {
    mmio_read32_at(abi::ACCT_MMIO_BASE + offset)
}

/// One 32-bit load from the MMIO address `addr` (any device window in the
/// MMIO gap, e.g. a virtio-mmio device): one `mmio_read`.
#[inline(always)]
pub fn mmio_read32_at(addr: u64) -> u32 {
    let value: u32;
    // SAFETY: callers pass a 4-byte-aligned address inside a device window
    // that the VMM announced (identity-mapped with user pages, not RAM); the
    // load only exits to the VMM.
    unsafe {
        asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) value,
             options(nostack, preserves_flags))
    };
    value
}

/// One 8-bit load from the MMIO address `addr` (e.g. a byte of a virtio
/// device's configuration space): one `mmio_read`.
#[inline(always)]
pub fn mmio_read8_at(addr: u64) -> u8 {
    let value: u8;
    // SAFETY: as in `mmio_read32_at` (any alignment is fine for a byte).
    unsafe {
        asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr, v = out(reg_byte) value,
             options(nostack, preserves_flags))
    };
    value
}

/// One 32-bit store to the MMIO address `addr`: one `mmio_write`.
#[inline(always)]
pub fn mmio_write32_at(addr: u64, value: u32) {
    // SAFETY: as in `mmio_read32_at`. Not `nomem`: a compiler barrier, so
    // ring stores made before it (e.g. before a QueueNotify) are emitted
    // before it.
    unsafe {
        asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) value,
             options(nostack, preserves_flags))
    };
}

/// `n` writes of one byte to DEBUG_PORT: `n` `port_out` exits.
#[inline(never)]
pub fn port_work(n: u32) {
    for i in 0..n {
        outb(abi::DEBUG_PORT, i as u8);
    }
}

/// `n` 32-bit stores to REG_SCRATCH: `n` `mmio_write` exits.
#[inline(never)]
pub fn mmio_write_work(n: u32) {
    for i in 0..n {
        mmio_write32(abi::REG_SCRATCH, i);
    }
}

/// `n` 32-bit loads from REG_SCRATCH: `n` `mmio_read` exits.
#[inline(never)]
pub fn mmio_read_work(n: u32) {
    for _ in 0..n {
        core::hint::black_box(mmio_read32(abi::REG_SCRATCH));
    }
}

/// Writes `s` to COM1's THR, one `out` per byte and no LSR polling: exactly
/// `s.len()` `port_out` exits.
#[inline(never)]
pub fn print(s: &str) {
    for &b in s.as_bytes() {
        outb(abi::COM1_PORT, b);
    }
}

/// Prints `n` as exactly 10 decimal digits, zero-padded (the low 10 digits if
/// larger): always 10 `port_out` exits, so printed numbers never change the
/// documented exit counts.
#[inline(never)]
pub fn print_dec10(mut n: u64) {
    let mut buf = [b'0'; 10];
    let mut i = buf.len();
    while i > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &b in &buf {
        outb(abi::COM1_PORT, b);
    }
}

/// Writes `status` to the exit port (one `port_out` exit), which ends the
/// VM. `hlt` is not an option at CPL3, so if the VMM ever resumed the vCPU it
/// would just spin.
pub fn exit(status: u32) -> ! {
    outl(abi::EXIT_PORT, status);
    loop {
        core::hint::spin_loop();
    }
}
