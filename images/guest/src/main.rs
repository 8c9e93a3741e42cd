//! `resourceful-test-guest`: the project's bare-metal guest program.
//!
//! Booted by the VMM directly in 64-bit mode at CPL3 (see the boot
//! convention in `accounting::abi` and docs/guest-scenarios.md). It picks a
//! scenario from the command line (`scenario=NAME`, default `demo`), declares
//! containers and requests through the tag ABI, does an exactly known number
//! of exits of each kind for each principal, and ends the VM by writing a
//! status to the exit port.
#![no_std]
#![no_main]

mod acct;
mod agent;
mod agent_slots;
mod blk;
mod blk_mix;
mod flood_echo;
mod frame;
mod io;
mod mem;
mod net;
mod scenarios;
mod virtio;
mod vsock;
mod xvm;

use accounting::abi;
use core::sync::atomic::{AtomicU32, Ordering};

/// The ELF note that marks this program as a Resourceful bare-metal guest.
#[repr(C, align(4))]
struct Note {
    namesz: u32,
    descsz: u32,
    ntype: u32,
    name: [u8; 12],
    desc: [u8; 4],
}

const fn note_name() -> [u8; 12] {
    assert!(abi::NOTE_NAME.len() == 12);
    let mut out = [0u8; 12];
    let mut i = 0;
    while i < 12 {
        out[i] = abi::NOTE_NAME[i];
        i += 1;
    }
    out
}

#[used]
#[link_section = ".note.resourceful"]
static RESOURCEFUL_NOTE: Note = Note {
    namesz: abi::NOTE_NAME.len() as u32,
    descsz: 4,
    ntype: abi::NOTE_TYPE_BAREMETAL,
    name: note_name(),
    desc: (abi::ABI_VERSION as u32).to_le_bytes(),
};

// Entry: every vCPU starts here with its own stack in rsp and the boot
// registers in rdi, rsi, rdx, rcx, r8, r9, which are exactly the SysV
// argument registers of `rust_main`. Align rsp to 16 before the call (the
// ABI's requirement at a call instruction).
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "    cld",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call {main}",
    "    ud2",
    ".size _start, . - _start",
    main = sym rust_main,
);

/// What the VMM told this vCPU at entry.
#[derive(Clone, Copy)]
pub struct Boot {
    pub vcpu: u32,
    pub nr_vcpus: u32,
    pub ram_end: u64,
    pub stack_base: u64,
    pub cmdline: &'static [u8],
}

/// Set by vCPU 0 before it releases the others: the scenario they run.
static SCENARIO: AtomicU32 = AtomicU32::new(0);
/// 1 once vCPU 0 has set up and releases the other vCPUs.
static GO: AtomicU32 = AtomicU32::new(0);
/// Number of vCPUs other than 0 that finished their part.
static DONE: AtomicU32 = AtomicU32::new(0);

extern "C" fn rust_main(
    vcpu: u64,
    cmdline: u64,
    cmdline_len: u64,
    nr_vcpus: u64,
    ram_end: u64,
    stack_base: u64,
) -> ! {
    let cmdline: &'static [u8] = if cmdline == 0 {
        &[]
    } else {
        // SAFETY: the VMM passes the address and length of the command line
        // in identity-mapped guest memory that nothing writes.
        unsafe { core::slice::from_raw_parts(cmdline as *const u8, cmdline_len.min(4096) as usize) }
    };
    let boot = Boot {
        vcpu: vcpu as u32,
        nr_vcpus: nr_vcpus as u32,
        ram_end,
        stack_base,
        cmdline,
    };
    if boot.vcpu != 0 {
        secondary(&boot);
    }
    if boot.nr_vcpus as u64 > u64::from(acct::NR_SLOTS) || boot.nr_vcpus == 0 {
        io::print("too many vcpus\n");
        io::exit(5);
    }
    let name = arg(cmdline, b"scenario=").unwrap_or(b"demo");
    match scenarios::Scenario::from_name(name) {
        Some(s) => scenarios::run(&boot, s),
        None => {
            io::print("unknown scenario\n");
            io::exit(4);
        }
    }
}

/// vCPUs other than 0: wait (pure memory polling, no exits) until vCPU 0
/// releases them, run their part of the scenario, report done and spin.
fn secondary(boot: &Boot) -> ! {
    if boot.vcpu < acct::NR_SLOTS {
        while GO.load(Ordering::Acquire) == 0 {
            core::hint::spin_loop();
        }
        if let Some(s) = scenarios::Scenario::from_u32(SCENARIO.load(Ordering::Acquire)) {
            scenarios::secondary(boot, s);
            acct::set_tag(boot.vcpu, 0);
        }
        DONE.fetch_add(1, Ordering::AcqRel);
    }
    park()
}

/// Spins forever without exits (`hlt` would triple-fault at CPL3).
pub fn park() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// vCPU 0: let the other vCPUs run their part of `s`.
pub fn release_others(s: scenarios::Scenario) {
    SCENARIO.store(s as u32, Ordering::Release);
    GO.store(1, Ordering::Release);
}

/// vCPU 0: wait until every other vCPU (that has a slot) reported done.
pub fn wait_others(boot: &Boot) {
    let others = boot.nr_vcpus.min(acct::NR_SLOTS) - 1;
    while DONE.load(Ordering::Acquire) < others {
        core::hint::spin_loop();
    }
}

/// vCPU 0: set its tag to 0 and write `status` to the exit port (the write is
/// one `port_out` exit charged to `unattributed`).
///
/// With `hold=1` on the command line a successful scenario (status 0) does
/// not end the VM: vCPU 0 parks (no exits) until the host stops the VM, so
/// the books stay still and a live reader (the API, a Prometheus scrape)
/// sees final numbers: those of the scenario less the exit-port write.
pub fn finish(boot: &Boot, status: u32) -> ! {
    acct::set_tag(boot.vcpu, 0);
    if status == 0 && arg(boot.cmdline, b"hold=") == Some(&b"1"[..]) {
        park()
    }
    io::exit(status)
}

/// The value of the first `key=value` token of the command line with this
/// `key` (given with its `=`).
pub fn arg(cmdline: &'static [u8], key: &[u8]) -> Option<&'static [u8]> {
    cmdline
        .split(|&b| b == b' ' || b == b'\0' || b == b'\n' || b == b'\t')
        .find(|tok| tok.starts_with(key))
        .map(|tok| &tok[key.len()..])
}

/// Parses a decimal number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Charged to whatever tag this vCPU holds; the guest does not panic in
    // any documented scenario.
    io::print("panic\n");
    io::exit(101)
}
