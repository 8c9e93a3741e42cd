//! `exit-cpl0`: a tiny plain 64-bit ELF (no Resourceful note) for the VMM's
//! Linux-protocol ELF path.
//!
//! It is entered like a Linux vmlinux ELF: CPL0, 64-bit mode, paging on with
//! low memory identity-mapped. It writes `ok\n` to COM1 (one `out` per byte,
//! no LSR polling) and status 0 to the exit port. Integer-only and a handful
//! of instructions: at CPL0 the nested KVM of the development machines
//! emulates every instruction.
//!
//! Exits: 3 `port_out` (the bytes) + 1 `port_out` (the exit port), all
//! `unattributed` (no region is ever registered).
#![no_std]
#![no_main]

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    mov dx, 0x3f8",
    "    mov al, 0x6f", // 'o'
    "    out dx, al",
    "    mov al, 0x6b", // 'k'
    "    out dx, al",
    "    mov al, 0x0a", // '\n'
    "    out dx, al",
    "    mov dx, 0xf4",
    "    xor eax, eax",
    "    out dx, eax",
    "2:  hlt",
    "    jmp 2b",
    ".size _start, . - _start",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
