//! `exit-loop`: a plain 64-bit ELF (no Resourceful note) that makes N port
//! writes and stops: the guest of the per-exit comparison with Firecracker
//! (`vmm/benches/vs_firecracker.rs`), which boots it the same way (the Linux
//! 64-bit ELF protocol, CPL0, paging on).
//!
//! It writes N times to port 0x80 (POST codes: a harmless device in both
//! VMMs), then 0xfe to port 0x64, the i8042 reset both VMMs end the VM on.
//! N is the 32-bit word after the ASCII marker `RSRCLOOP` in the image
//! (100,000 as built; `images::exit_loop(n)` patches it; at least 1).
//!
//! Exits: N + 1 `port_out`, all `unattributed` (no region is registered).
#![no_std]
#![no_main]

core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    mov ecx, dword ptr [rip + 3f]",
    "    mov dx, 0x80",
    "1:  out dx, al",
    "    dec ecx",
    "    jnz 1b",
    "    mov dx, 0x64",
    "    mov al, 0xfe",
    "    out dx, al",
    "2:  hlt",
    "    jmp 2b",
    "    .balign 8",
    "    .ascii \"RSRCLOOP\"",
    "3:  .long 100000",
    ".size _start, . - _start",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
