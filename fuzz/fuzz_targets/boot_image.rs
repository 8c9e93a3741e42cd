//! The kernel loader (`vmm::boot`) on hostile images: `detect_kind`,
//! `elf_note::parse_elf` and `bare_metal_marker`, and `load_kernel` into a
//! small guest memory (2, 4 or 8 MiB from 0, and maybe 64 KiB at 4 GiB).
//!
//! The image is raw bytes, an ELF64 built from fuzzed headers (program
//! headers of any type, `PT_LOAD`s near 1 MiB or anywhere, `PT_NOTE`s with
//! the bare-metal marker of the right or a wrong ABI version, then fuzzed
//! byte patches), or a bzImage built from a fuzzed setup header. The input
//! also gives the vCPU count, the command line and an initrd.
//!
//! Nothing may panic, `detect_kind` and `load_kernel` must agree with
//! `parse_elf` and `bare_metal_marker`, and when loading succeeds:
//! - the image (every `PT_LOAD` with its `.bss`, or the bzImage's
//!   protected-mode part), the initrd and the command line lie in guest
//!   memory, at or above 1 MiB for the image;
//! - the entry point lies inside the loaded image: the ELF's `e_entry`
//!   within the span of its `PT_LOAD`s, a bzImage's 64-bit entry within its
//!   loaded bytes;
//! - a bare-metal image lies below its vCPU stacks, which fit in RAM;
//! - the initrd starts page-aligned above the kernel's range and ends below
//!   the MMIO gap.
#![no_main]

use accounting::abi::{ABI_VERSION, NOTE_NAME, NOTE_TYPE_BAREMETAL};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::arch::layout::{BARE_METAL_STACK_SIZE, HIMEM_START, INITRD_ALIGN, MMIO_GAP_END, MMIO_GAP_START};
use vmm::arch::regs::BootMode;
use vmm::boot::elf_note::{bare_metal_marker, is_elf, parse_elf};
use vmm::boot::{detect_kind, load_kernel, BootError, KernelKind, LinuxFormat};

const MIB: u64 = 1 << 20;
const HIGH_LEN: u64 = 64 << 10;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// 1 MiB + n, within a few MiB.
    Himem(u32),
    /// Below 1 MiB.
    Low(u32),
    /// At 4 GiB + n.
    High(u16),
    Any(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Himem(n) => HIMEM_START + u64::from(n % (8 << 20) as u32),
            Addr::Low(n) => u64::from(n) % HIMEM_START,
            Addr::High(n) => MMIO_GAP_END + u64::from(n),
            Addr::Any(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Note {
    /// The marker, with the right ABI version or this one.
    Marker(Option<u32>, bool),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Ph {
    /// 0: PT_LOAD, 1: PT_NOTE, else that value.
    p_type: u32,
    paddr: Addr,
    data: u16,
    /// memsz = filesz + extra (small), or this raw value.
    memsz: Result<u16, u64>,
    align: u64,
    note: Note,
    /// Raw p_offset / p_filesz instead of the right ones.
    offset: Option<u64>,
    filesz: Option<u64>,
}

#[derive(Arbitrary, Debug)]
enum Entry {
    /// In PT_LOAD k at this offset (maybe past its end).
    InLoad(u8, u32),
    At(Addr),
}

#[derive(Arbitrary, Debug)]
struct ElfSpec {
    entry: Entry,
    phs: Vec<Ph>,
    phnum: Option<u16>,
    patches: Vec<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
struct BzSpec {
    setup_sects: u8,
    version: Result<u8, u16>,
    loadflags: u8,
    xloadflags: u16,
    code32_start: Addr,
    initrd_addr_max: u32,
    cmdline_size: Result<u16, u32>,
    init_size: Result<u16, u32>,
    /// Bytes after the setup sectors: n % 64 KiB.
    payload: u32,
    patches: Vec<(u16, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Image {
    Raw(Vec<u8>),
    Elf(ElfSpec),
    Bz(BzSpec),
}

#[derive(Arbitrary, Debug)]
enum Cmdline {
    Text(String),
    Long(u16, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    mem: u8,
    high: bool,
    vcpus: u8,
    cmdline: Cmdline,
    /// Bytes, and pages of zeros after them.
    initrd: Option<(Vec<u8>, u8)>,
    image: Image,
}

fuzz_target!(|input: Input| {
    let image = match &input.image {
        Image::Raw(b) => b.clone(),
        Image::Elf(e) => build_elf(e),
        Image::Bz(b) => build_bzimage(b),
    };
    check_parsers(&image);

    let low = [2, 4, 8][usize::from(input.mem % 3)] * MIB;
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if input.high {
        ranges.push((GuestAddress(MMIO_GAP_END), HIGH_LEN as usize));
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
    let in_mem = |a: u64, len: u64| {
        let Some(end) = a.checked_add(len) else {
            return false;
        };
        end <= low || (input.high && a >= MMIO_GAP_END && end <= MMIO_GAP_END + HIGH_LEN)
    };
    let vcpus = if input.vcpus >= 128 {
        input.vcpus
    } else {
        input.vcpus % 4
    };
    let cmdline = match &input.cmdline {
        Cmdline::Text(s) => s.clone(),
        Cmdline::Long(n, c) => char::from(b' ' + c % 95)
            .to_string()
            .repeat(usize::from(*n) + 2048),
    };
    let initrd = input.initrd.as_ref().map(|(b, pages)| {
        // Zeroed by the allocator, not byte by byte (CI builds at opt-level 0).
        let mut v = vec![0; b.len() + usize::from(*pages) * 4096];
        v[..b.len()].copy_from_slice(b);
        v
    });

    let kind = detect_kind(&image);
    let plan = match load_kernel(&mem, &image, initrd.as_deref(), &cmdline, vcpus) {
        Ok(plan) => plan,
        Err(e) => {
            if let (Ok(k), BootError::UnknownFormat) = (&kind, &e) {
                // The loader refuses a bzImage without a 64-bit entry.
                assert!(
                    matches!(
                        k,
                        KernelKind::Linux {
                            format: LinuxFormat::Bzimage
                        }
                    ),
                    "{k:?}"
                );
            }
            return;
        }
    };
    let kind = kind.expect("loaded an image detect_kind refused");
    assert_eq!(plan.kind, kind);
    assert!((1..=254).contains(&vcpus), "loaded with {vcpus} vCPUs");

    let (start, end) = (plan.kernel_range.0 .0, plan.kernel_range.1 .0);
    assert!(start >= HIMEM_START, "kernel at {start:#x}, below 1 MiB");
    assert!(start < end, "empty kernel range [{start:#x}, {end:#x})");
    let entry = plan.mode.entry().0;
    match kind {
        KernelKind::BareMetal
        | KernelKind::Linux {
            format: LinuxFormat::Elf,
        } => {
            let info = parse_elf(&image).expect("a loaded ELF parses");
            for s in info.loads.iter().filter(|s| s.memsz > 0) {
                assert!(in_mem(s.paddr, s.memsz), "segment {s:?} outside guest memory");
                assert!(
                    start <= s.paddr && s.end() <= end,
                    "segment {s:?} outside the kernel range"
                );
            }
            assert_eq!(entry, info.entry);
            assert!(
                (start..end).contains(&entry),
                "entry {entry:#x} outside the loaded image [{start:#x}, {end:#x})"
            );
        }
        KernelKind::Linux {
            format: LinuxFormat::Bzimage,
        } => {
            let sects = match image[0x1f1] {
                0 => 4,
                n => u64::from(n),
            };
            let loaded = image.len() as u64 - (sects + 1) * 512;
            assert!(
                in_mem(start, loaded),
                "bzImage [{start:#x}, +{loaded:#x}) outside guest memory"
            );
            assert!(start + loaded <= end);
            assert!(
                entry >= start && entry < start + loaded,
                "entry {entry:#x} outside the loaded bzImage [{start:#x}, {:#x})",
                start + loaded
            );
        }
    }
    match plan.mode {
        BootMode::BareMetal {
            cmdline_addr,
            cmdline_len,
            ram_end,
            stack_base,
            ..
        } => {
            assert_eq!(ram_end, low);
            assert!(
                end <= stack_base,
                "image end {end:#x} above the stacks at {stack_base:#x}"
            );
            assert!(stack_base + u64::from(vcpus) * BARE_METAL_STACK_SIZE <= ram_end);
            assert_eq!(cmdline_len, cmdline.len() as u64);
            assert!(in_mem(cmdline_addr.0, cmdline_len + 1));
            assert!(plan.initrd_range.is_none());
        }
        BootMode::Linux64 { boot_params, .. } => {
            assert!(in_mem(boot_params.0, 4096));
            if let Some((a, b)) = plan.initrd_range {
                let (a, b) = (a.0, b.0);
                assert_eq!(b - a, initrd.as_ref().map_or(0, |i| i.len() as u64));
                assert!(in_mem(a, b - a), "initrd [{a:#x}, {b:#x}) outside guest memory");
                assert_eq!(a % INITRD_ALIGN, 0);
                assert!(a >= end, "initrd at {a:#x} inside the kernel (ends {end:#x})");
                assert!(b <= MMIO_GAP_START);
            } else {
                assert!(initrd.is_none(), "the initrd was dropped");
            }
        }
    }
});

/// `detect_kind` agrees with the ELF reader.
fn check_parsers(image: &[u8]) {
    let parsed = parse_elf(image);
    let marker = bare_metal_marker(image);
    let kind = detect_kind(image);
    if let Ok(info) = &parsed {
        assert!(is_elf(image));
        for s in &info.loads {
            assert!(
                s.filesz <= s.memsz && s.paddr.checked_add(s.memsz).is_some(),
                "{s:?}"
            );
        }
        if let Some((lo, hi)) = info.load_range() {
            assert!(lo < hi);
        }
    }
    if is_elf(image) {
        match (&marker, &kind) {
            (Ok(Some(v)), Ok(KernelKind::BareMetal)) => assert_eq!(*v, u32::from(ABI_VERSION)),
            (
                Ok(None),
                Ok(KernelKind::Linux {
                    format: LinuxFormat::Elf,
                }),
            ) => {}
            (Err(_), Err(_)) => assert!(parsed.is_err() || parsed.as_ref().unwrap().bare_metal_abi.is_some()),
            other => panic!("detect_kind and bare_metal_marker disagree: {other:?}"),
        }
    } else {
        assert!(parsed.is_err() && marker.is_err());
    }
}

fn put(out: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    if out.len() < off + bytes.len() {
        out.resize(off + bytes.len(), 0);
    }
    out[off..off + bytes.len()].copy_from_slice(bytes);
}

fn build_elf(e: &ElfSpec) -> Vec<u8> {
    let phs = &e.phs[..e.phs.len().min(8)];
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little-endian
    out[6] = 1;
    put(&mut out, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut out, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut out, 20, &1u32.to_le_bytes());
    put(&mut out, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut out, 52, &64u16.to_le_bytes());
    put(&mut out, 54, &56u16.to_le_bytes());
    let phnum = e.phnum.unwrap_or(phs.len() as u16);
    put(&mut out, 56, &phnum.to_le_bytes());

    let mut data_off = 64 + 56 * phs.len();
    let mut blobs = Vec::new();
    let mut loads = Vec::new();
    let mut table = Vec::new();
    for (i, ph) in phs.iter().enumerate() {
        let (p_type, bytes) = match ph.p_type {
            0 => (
                1u32,
                vec![0x90u8.wrapping_add(i as u8); usize::from(ph.data % 8192)],
            ),
            1 => (4, note(&ph.note)),
            t => (t, vec![0; usize::from(ph.data % 256)]),
        };
        let filesz = bytes.len() as u64;
        let memsz = match ph.memsz {
            Ok(extra) => filesz + u64::from(extra),
            Err(raw) => raw,
        };
        let paddr = ph.paddr.get();
        if p_type == 1 {
            loads.push((paddr, memsz));
        }
        let mut h = [0u8; 56];
        h[0..4].copy_from_slice(&p_type.to_le_bytes());
        h[4..8].copy_from_slice(&7u32.to_le_bytes());
        h[8..16].copy_from_slice(&ph.offset.unwrap_or(data_off as u64).to_le_bytes());
        h[16..24].copy_from_slice(&paddr.to_le_bytes());
        h[24..32].copy_from_slice(&paddr.to_le_bytes());
        h[32..40].copy_from_slice(&ph.filesz.unwrap_or(filesz).to_le_bytes());
        h[40..48].copy_from_slice(&memsz.to_le_bytes());
        h[48..56].copy_from_slice(&(ph.align % 16).to_le_bytes());
        table.extend_from_slice(&h);
        data_off += bytes.len();
        blobs.extend_from_slice(&bytes);
    }
    let entry = match e.entry {
        Entry::InLoad(k, off) if !loads.is_empty() => {
            let (paddr, _) = loads[usize::from(k) % loads.len()];
            paddr.wrapping_add(u64::from(off % 0x4000))
        }
        Entry::InLoad(_, off) => HIMEM_START + u64::from(off),
        Entry::At(a) => a.get(),
    };
    put(&mut out, 24, &entry.to_le_bytes());
    out.extend_from_slice(&table);
    out.extend_from_slice(&blobs);
    for &(off, v) in e.patches.iter().take(16) {
        if let Some(b) = out.get_mut(usize::from(off)) {
            *b = v;
        }
    }
    out
}

fn note(n: &Note) -> Vec<u8> {
    match n {
        Note::Marker(version, pad8) => {
            let mut v = Vec::new();
            v.extend_from_slice(&(NOTE_NAME.len() as u32).to_le_bytes());
            v.extend_from_slice(&4u32.to_le_bytes());
            v.extend_from_slice(&NOTE_TYPE_BAREMETAL.to_le_bytes());
            v.extend_from_slice(NOTE_NAME);
            let align = if *pad8 { 8 } else { 4 };
            while v.len() % align != 0 {
                v.push(0);
            }
            v.extend_from_slice(&version.unwrap_or(u32::from(ABI_VERSION)).to_le_bytes());
            v
        }
        Note::Raw(b) => b.clone(),
    }
}

fn build_bzimage(b: &BzSpec) -> Vec<u8> {
    let s = b.setup_sects % 64;
    let sects = if s == 0 { 4 } else { usize::from(s) };
    let mut out = vec![0u8; (sects + 1) * 512 + (b.payload % (64 << 10)) as usize];
    out[0x1f1] = s;
    put(&mut out, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut out, 0x202, b"HdrS");
    let version = match b.version {
        Ok(minor) => 0x0200 + u16::from(minor % 16),
        Err(raw) => raw,
    };
    put(&mut out, 0x206, &version.to_le_bytes());
    out[0x211] = b.loadflags;
    put(&mut out, 0x214, &(b.code32_start.get() as u32).to_le_bytes());
    put(&mut out, 0x22c, &b.initrd_addr_max.to_le_bytes());
    put(&mut out, 0x236, &b.xloadflags.to_le_bytes());
    let cmdline_size = match b.cmdline_size {
        Ok(n) => u32::from(n),
        Err(raw) => raw,
    };
    put(&mut out, 0x238, &cmdline_size.to_le_bytes());
    let init_size = match b.init_size {
        Ok(n) => u32::from(n) << 6,
        Err(raw) => raw,
    };
    put(&mut out, 0x260, &init_size.to_le_bytes());
    for &(off, v) in b.patches.iter().take(16) {
        if let Some(x) = out.get_mut(usize::from(off)) {
            *x = v;
        }
    }
    out
}
