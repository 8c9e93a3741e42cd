//! Guest images for Resourceful.
//!
//! The project's own freestanding (bare-metal) guest programs are built from
//! source by this crate's `build.rs` (the Cargo project in `images/guest/`,
//! built for `x86_64-unknown-linux-gnu` with `-nostdlib`, a static
//! relocation model and its own linker scripts) and embedded here:
//!
//! - [`test_guest`]: the bare-metal test guest, marked with the
//!   `Resourceful` ELF note (`accounting::abi::NOTE_NAME`,
//!   `NOTE_TYPE_BAREMETAL`). The VMM boots it at CPL3 per the bare-metal
//!   boot convention; the command line picks a scenario
//!   (`scenario=NAME`, default `demo`). docs/guest-scenarios.md lists the
//!   scenarios and the exact charges each one produces.
//! - [`exit_cpl0`]: a tiny plain 64-bit ELF (no note) for the Linux-protocol
//!   ELF path: entered at CPL0 with paging on, it writes `ok\n` to COM1 and
//!   status 0 to the exit port.
//!
//! - [`exit_loop`]: a plain 64-bit ELF making N port writes, then an i8042
//!   reset: the guest of the comparison with Firecracker.
//!
//! The files also stay on disk ([`TEST_GUEST_PATH`], [`EXIT_CPL0_PATH`]) so
//! they can be passed to `resourceful run --kernel PATH`.

/// Absolute path of the built test guest ELF (inside this crate's `OUT_DIR`).
pub const TEST_GUEST_PATH: &str = env!("RESOURCEFUL_TEST_GUEST_ELF");
/// Absolute path of the built `exit-cpl0` ELF (inside this crate's `OUT_DIR`).
pub const EXIT_CPL0_PATH: &str = env!("RESOURCEFUL_EXIT_CPL0_ELF");

static TEST_GUEST: &[u8] = include_bytes!(env!("RESOURCEFUL_TEST_GUEST_ELF"));
static EXIT_CPL0: &[u8] = include_bytes!(env!("RESOURCEFUL_EXIT_CPL0_ELF"));
static EXIT_LOOP: &[u8] = include_bytes!(env!("RESOURCEFUL_EXIT_LOOP_ELF"));

/// What precedes the exit count in the `exit-loop` image.
const EXIT_LOOP_MARKER: &[u8] = b"RSRCLOOP";

/// The bare-metal test guest: an ELF64 x86-64 executable, `.text` at 1 MiB,
/// entry at `.text`'s start, carrying the `Resourceful` marker note in a
/// `PT_NOTE` segment.
pub fn test_guest() -> &'static [u8] {
    TEST_GUEST
}

/// The `exit-cpl0` program: an ELF64 x86-64 executable, `.text` at 1 MiB,
/// no notes. At CPL0 in 64-bit mode it writes `ok\n` to port 0x3f8 (three
/// `out`s) and status 0 to port 0xf4.
pub fn exit_cpl0() -> &'static [u8] {
    EXIT_CPL0
}

/// The `exit-loop` program with its count set to `n` (at least 1): a plain
/// ELF64 x86-64 executable (`.text` at 1 MiB, no notes) that at CPL0 makes
/// `n` one-byte `out`s to port 0x80 and then resets through the i8042
/// (0xfe to port 0x64): `n + 1` `port_out` exits. The guest of
/// `vmm/benches/vs_firecracker.rs`, which any VMM booting ELF kernels can run.
pub fn exit_loop(n: u32) -> Vec<u8> {
    let mut image = EXIT_LOOP.to_vec();
    let at = image
        .windows(EXIT_LOOP_MARKER.len())
        .position(|w| w == EXIT_LOOP_MARKER)
        .expect("the exit-loop image carries its marker")
        + EXIT_LOOP_MARKER.len();
    image[at..at + 4].copy_from_slice(&n.max(1).to_le_bytes());
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    use accounting::abi::{ABI_VERSION, NOTE_NAME, NOTE_TYPE_BAREMETAL};

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }
    fn usize_at(b: &[u8], off: usize) -> usize {
        usize::try_from(u64_at(b, off)).unwrap()
    }

    struct Phdr {
        p_type: u32,
        offset: usize,
        vaddr: u64,
        paddr: u64,
        filesz: usize,
    }

    /// Checks the ELF header; returns the entry point.
    fn check_header(elf: &[u8]) -> u64 {
        assert!(elf.len() > 64);
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(elf[5], 1, "little endian");
        assert_eq!(u16_at(elf, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 18), 62, "EM_X86_64");
        u64_at(elf, 24)
    }

    fn phdrs(elf: &[u8]) -> Vec<Phdr> {
        let phoff = usize_at(elf, 32);
        let phentsize = usize::from(u16_at(elf, 54));
        let phnum = usize::from(u16_at(elf, 56));
        (0..phnum)
            .map(|i| {
                let p = phoff + i * phentsize;
                Phdr {
                    p_type: u32_at(elf, p),
                    offset: usize_at(elf, p + 8),
                    vaddr: u64_at(elf, p + 16),
                    paddr: u64_at(elf, p + 24),
                    filesz: usize_at(elf, p + 32),
                }
            })
            .collect()
    }

    /// Address of the section named `name`.
    fn section_addr(elf: &[u8], name: &str) -> Option<u64> {
        let shoff = usize_at(elf, 40);
        let shentsize = usize::from(u16_at(elf, 58));
        let shnum = usize::from(u16_at(elf, 60));
        let shstrndx = usize::from(u16_at(elf, 62));
        let strtab = usize_at(elf, shoff + shstrndx * shentsize + 24);
        (0..shnum).find_map(|i| {
            let s = shoff + i * shentsize;
            let name_off = strtab + u32_at(elf, s) as usize;
            let end = name_off + elf[name_off..].iter().position(|&c| c == 0)?;
            (&elf[name_off..end] == name.as_bytes()).then(|| u64_at(elf, s + 16))
        })
    }

    /// All notes as (name, type, desc).
    fn notes(elf: &[u8]) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
        let mut out = Vec::new();
        for ph in phdrs(elf).iter().filter(|p| p.p_type == PT_NOTE) {
            let seg = &elf[ph.offset..ph.offset + ph.filesz];
            let mut off = 0;
            while off + 12 <= seg.len() {
                let namesz = u32_at(seg, off) as usize;
                let descsz = u32_at(seg, off + 4) as usize;
                let ntype = u32_at(seg, off + 8);
                let name_start = off + 12;
                let desc_start = name_start + namesz.next_multiple_of(4);
                let name = seg[name_start..name_start + namesz].to_vec();
                let desc = seg[desc_start..desc_start + descsz].to_vec();
                out.push((name, ntype, desc));
                off = desc_start + descsz.next_multiple_of(4);
            }
        }
        out
    }

    fn check_layout(elf: &[u8]) {
        let entry = check_header(elf);
        assert_eq!(section_addr(elf, ".text"), Some(0x10_0000), ".text at 1 MiB");
        assert_eq!(entry, 0x10_0000, "entry point at the start of .text");
        let loads: Vec<_> = phdrs(elf).into_iter().filter(|p| p.p_type == PT_LOAD).collect();
        assert!(!loads.is_empty());
        for l in &loads {
            assert_eq!(l.vaddr, l.paddr, "identity-mapped load segment");
        }
        assert!(loads.iter().any(|l| l.vaddr == 0x10_0000 && l.filesz > 0));
    }

    #[test]
    fn test_guest_is_a_marked_elf() {
        let elf = test_guest();
        check_layout(elf);
        let marker: Vec<_> = notes(elf)
            .into_iter()
            .filter(|(n, _, _)| n == NOTE_NAME)
            .collect();
        assert_eq!(marker.len(), 1, "exactly one Resourceful note");
        let (_, ntype, desc) = &marker[0];
        assert_eq!(*ntype, NOTE_TYPE_BAREMETAL);
        assert_eq!(desc.as_slice(), u32::from(ABI_VERSION).to_le_bytes().as_slice());
    }

    #[test]
    fn exit_cpl0_is_a_plain_elf() {
        let elf = exit_cpl0();
        check_layout(elf);
        assert!(phdrs(elf).iter().all(|p| p.p_type != PT_NOTE), "no PT_NOTE");
        assert!(notes(elf).is_empty());
    }

    #[test]
    fn exit_loop_is_a_plain_elf_whose_count_is_patched() {
        let elf = exit_loop(12_345);
        check_layout(&elf);
        assert!(phdrs(&elf).iter().all(|p| p.p_type != PT_NOTE), "no PT_NOTE");
        let at = elf.windows(8).position(|w| w == b"RSRCLOOP").unwrap() + 8;
        assert_eq!(u32_at(&elf, at), 12_345);
        assert_eq!(u32_at(&exit_loop(0), at), 1, "at least one exit");
        assert_eq!(u32_at(EXIT_LOOP, at), 100_000, "as built");
    }

    #[test]
    fn paths_hold_the_embedded_files() {
        assert_eq!(std::fs::read(TEST_GUEST_PATH).unwrap(), test_guest());
        assert_eq!(std::fs::read(EXIT_CPL0_PATH).unwrap(), exit_cpl0());
    }
}
