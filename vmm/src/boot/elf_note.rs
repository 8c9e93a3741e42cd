//! A small, defensive ELF64 reader: the bare-metal marker note and the
//! `PT_LOAD` list.
//!
//! The project's own guest programs carry a `PT_NOTE` with owner
//! `accounting::abi::NOTE_NAME` (`"Resourceful\0"`), type
//! `accounting::abi::NOTE_TYPE_BAREMETAL` and a 4-byte little-endian
//! descriptor holding the tag-ABI version they were built for. Finding it
//! selects the bare-metal boot path.
//!
//! linux-loader loads the segments but neither reports them nor zeroes the
//! part of a segment past its file bytes (`.bss`), so this module also lists
//! every `PT_LOAD` as `(p_paddr, p_filesz, p_memsz)`.
//!
//! The input is whatever the user passed with `--kernel`, so everything is
//! bounds-checked with checked arithmetic, nothing is allocated in
//! proportion to a header field that was not first checked against the file
//! size, and no input makes it panic (a test walks every truncation of a
//! valid image).

use accounting::abi::{ABI_VERSION, NOTE_NAME, NOTE_TYPE_BAREMETAL};

/// `\x7fELF`.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NHDR_SIZE: usize = 12;

/// Errors from reading an ELF image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfNoteError {
    /// The file is shorter than its headers say.
    #[error("the ELF image is truncated or corrupt ({0}): rebuild it or pass the right file with --kernel")]
    Malformed(&'static str),
    /// Not a little-endian ELF64 x86_64 file.
    #[error("the ELF image is not a little-endian 64-bit x86_64 executable ({0}); Resourceful boots x86_64 images only")]
    Unsupported(&'static str),
    /// The bare-metal marker names an ABI version this VMM does not speak.
    #[error(
        "the guest program was built for tag-ABI version {found}, this VMM speaks version {supported}: \
         rebuild the guest against this tree's `accounting` crate"
    )]
    UnsupportedAbi {
        /// Version in the note.
        found: u32,
        /// [`ABI_VERSION`].
        supported: u32,
    },
}

/// One `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Physical load address.
    pub paddr: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (`memsz >= filesz`; the rest is zero).
    pub memsz: u64,
}

impl LoadSegment {
    /// End (exclusive) of the segment in memory. Checked at parse time not
    /// to overflow.
    pub fn end(&self) -> u64 {
        self.paddr.saturating_add(self.memsz)
    }
}

/// What the loader needs from an ELF64 image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    /// Entry point (`e_entry`).
    pub entry: u64,
    /// The `PT_LOAD` segments, in file order.
    pub loads: Vec<LoadSegment>,
    /// The tag-ABI version of the bare-metal marker, if the image has one.
    pub bare_metal_abi: Option<u32>,
}

impl ElfInfo {
    /// `[lowest paddr, highest paddr + memsz)` over the non-empty `PT_LOAD`
    /// segments, or `None` if there are none.
    pub fn load_range(&self) -> Option<(u64, u64)> {
        let mut segs = self.loads.iter().filter(|s| s.memsz > 0);
        let first = segs.next()?;
        Some(segs.fold((first.paddr, first.end()), |(lo, hi), s| {
            (lo.min(s.paddr), hi.max(s.end()))
        }))
    }
}

/// Whether `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(&ELF_MAGIC)
}

fn slice(data: &[u8], off: u64, len: u64) -> Result<&[u8], ElfNoteError> {
    let start = usize::try_from(off).map_err(|_| ElfNoteError::Malformed("offset too large"))?;
    let len = usize::try_from(len).map_err(|_| ElfNoteError::Malformed("size too large"))?;
    let end = start
        .checked_add(len)
        .ok_or(ElfNoteError::Malformed("offset overflows"))?;
    data.get(start..end).ok_or(ElfNoteError::Malformed(
        "a header points past the end of the file",
    ))
}

fn u16_at(data: &[u8], off: usize) -> u16 {
    data.get(off..off + 2)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn u32_at(data: &[u8], off: usize) -> u32 {
    data.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(data: &[u8], off: usize) -> u64 {
    data.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn align_up(v: usize, align: usize) -> Option<usize> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// Looks for the bare-metal marker in one `PT_NOTE` segment's bytes.
/// `align` is the note alignment (4, or 8 for 8-aligned note segments).
fn find_marker(notes: &[u8], align: usize) -> Result<Option<u32>, ElfNoteError> {
    let mut off = 0usize;
    while notes.len().saturating_sub(off) >= NHDR_SIZE {
        let namesz = u32_at(notes, off) as usize;
        let descsz = u32_at(notes, off + 4) as usize;
        let ntype = u32_at(notes, off + 8);
        let name_off = off + NHDR_SIZE;
        let desc_off = name_off
            .checked_add(namesz)
            .and_then(|v| align_up(v, align))
            .ok_or(ElfNoteError::Malformed("note name size overflows"))?;
        let next = desc_off
            .checked_add(descsz)
            .and_then(|v| align_up(v, align))
            .ok_or(ElfNoteError::Malformed("note descriptor size overflows"))?;
        let name = notes
            .get(name_off..name_off + namesz)
            .ok_or(ElfNoteError::Malformed("note name past the segment end"))?;
        let desc = notes
            .get(desc_off..desc_off.saturating_add(descsz))
            .ok_or(ElfNoteError::Malformed("note descriptor past the segment end"))?;
        if name == NOTE_NAME && ntype == NOTE_TYPE_BAREMETAL {
            let version: [u8; 4] = desc
                .try_into()
                .map_err(|_| ElfNoteError::Malformed("bare-metal note descriptor is not 4 bytes"))?;
            return Ok(Some(u32::from_le_bytes(version)));
        }
        if next <= off {
            break;
        }
        off = next;
    }
    Ok(None)
}

/// Parses the ELF header, the program headers and the notes of `image`.
pub fn parse_elf(image: &[u8]) -> Result<ElfInfo, ElfNoteError> {
    let ehdr = image
        .get(..EHDR_SIZE)
        .ok_or(ElfNoteError::Malformed("shorter than an ELF64 header"))?;
    if !is_elf(ehdr) {
        return Err(ElfNoteError::Malformed("no ELF magic"));
    }
    if ehdr[4] != ELFCLASS64 {
        return Err(ElfNoteError::Unsupported("not ELFCLASS64"));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(ElfNoteError::Unsupported("not little-endian"));
    }
    if u16_at(ehdr, 18) != EM_X86_64 {
        return Err(ElfNoteError::Unsupported("e_machine is not EM_X86_64"));
    }
    let entry = u64_at(ehdr, 24);
    let phoff = u64_at(ehdr, 32);
    let phentsize = usize::from(u16_at(ehdr, 54));
    let phnum = usize::from(u16_at(ehdr, 56));
    if phnum > 0 && phentsize != PHDR_SIZE {
        return Err(ElfNoteError::Malformed("e_phentsize is not 56"));
    }
    // phnum * 56 cannot overflow (phnum < 2^16); the table must lie in the file.
    let phdrs = slice(image, phoff, (phnum * PHDR_SIZE) as u64)?;

    let mut loads = Vec::new();
    let mut bare_metal_abi = None;
    for ph in phdrs.chunks_exact(PHDR_SIZE) {
        let p_type = u32_at(ph, 0);
        let p_offset = u64_at(ph, 8);
        let p_paddr = u64_at(ph, 24);
        let p_filesz = u64_at(ph, 32);
        let p_memsz = u64_at(ph, 40);
        let p_align = u64_at(ph, 48);
        match p_type {
            PT_LOAD => {
                slice(image, p_offset, p_filesz)?;
                if p_filesz > p_memsz {
                    return Err(ElfNoteError::Malformed("a PT_LOAD has p_filesz > p_memsz"));
                }
                if p_paddr.checked_add(p_memsz).is_none() {
                    return Err(ElfNoteError::Malformed("a PT_LOAD wraps the address space"));
                }
                loads.push(LoadSegment {
                    paddr: p_paddr,
                    filesz: p_filesz,
                    memsz: p_memsz,
                });
            }
            PT_NOTE if bare_metal_abi.is_none() => {
                let notes = slice(image, p_offset, p_filesz)?;
                let align = if p_align == 8 { 8 } else { 4 };
                bare_metal_abi = find_marker(notes, align)?;
            }
            _ => {}
        }
    }
    Ok(ElfInfo {
        entry,
        loads,
        bare_metal_abi,
    })
}

/// The bare-metal marker's ABI version: `Ok(None)` for an ELF without the
/// marker, `Ok(Some(ABI_VERSION))` for a bare-metal guest this VMM can run,
/// an error for a malformed file or a marker with another version.
pub fn bare_metal_marker(image: &[u8]) -> Result<Option<u32>, ElfNoteError> {
    match parse_elf(image)?.bare_metal_abi {
        Some(v) if v != u32::from(ABI_VERSION) => Err(ElfNoteError::UnsupportedAbi {
            found: v,
            supported: u32::from(ABI_VERSION),
        }),
        other => Ok(other),
    }
}

/// Builders for hand-made ELF images, shared with the loader's tests.
#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A program header for [`build_elf`].
    pub struct Ph {
        pub p_type: u32,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
        pub align: u64,
    }

    /// Builds a little-endian ELF64 x86_64 executable with `phs` and their
    /// contents appended after the program header table.
    pub fn build_elf(entry: u64, phs: &[Ph]) -> Vec<u8> {
        let mut out = vec![0u8; EHDR_SIZE];
        out[..4].copy_from_slice(&ELF_MAGIC);
        out[4] = ELFCLASS64;
        out[5] = ELFDATA2LSB;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&u16::try_from(phs.len()).unwrap().to_le_bytes());
        let mut data_off = (EHDR_SIZE + PHDR_SIZE * phs.len()) as u64;
        let mut table = Vec::new();
        let mut blobs = Vec::new();
        for ph in phs {
            let mut h = [0u8; PHDR_SIZE];
            h[0..4].copy_from_slice(&ph.p_type.to_le_bytes());
            h[4..8].copy_from_slice(&7u32.to_le_bytes());
            h[8..16].copy_from_slice(&data_off.to_le_bytes());
            h[16..24].copy_from_slice(&ph.paddr.to_le_bytes());
            h[24..32].copy_from_slice(&ph.paddr.to_le_bytes());
            h[32..40].copy_from_slice(&(ph.data.len() as u64).to_le_bytes());
            h[40..48].copy_from_slice(&ph.memsz.to_le_bytes());
            h[48..56].copy_from_slice(&ph.align.to_le_bytes());
            table.extend_from_slice(&h);
            blobs.extend_from_slice(&ph.data);
            data_off += ph.data.len() as u64;
        }
        out.extend_from_slice(&table);
        out.extend_from_slice(&blobs);
        out
    }

    /// One ELF note with 4-byte alignment.
    pub fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        n.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// A PT_NOTE holding `notes`.
    pub fn note_ph(notes: Vec<u8>) -> Ph {
        Ph {
            p_type: PT_NOTE,
            paddr: 0,
            memsz: notes.len() as u64,
            data: notes,
            align: 4,
        }
    }

    /// A PT_LOAD at `paddr` with `data` and `memsz`.
    pub fn load_ph(paddr: u64, data: Vec<u8>, memsz: u64) -> Ph {
        Ph {
            p_type: PT_LOAD,
            paddr,
            data,
            memsz,
            align: 0x1000,
        }
    }

    /// A bare-metal guest: code at 1 MiB, a `.bss`, and the marker.
    pub fn bare_metal_elf(version: u32) -> Vec<u8> {
        build_elf(
            0x10_0000,
            &[
                note_ph(note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8])),
                note_ph(note(NOTE_NAME, NOTE_TYPE_BAREMETAL, &version.to_le_bytes())),
                load_ph(0x10_0000, vec![0xf4; 0x30], 0x30),
                load_ph(0x10_1000, vec![0x11; 0x10], 0x2000),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn marker_is_found_with_the_abi_version() {
        let image = bare_metal_elf(u32::from(ABI_VERSION));
        assert_eq!(bare_metal_marker(&image), Ok(Some(u32::from(ABI_VERSION))));
    }

    #[test]
    fn load_segments_are_listed() {
        let info = parse_elf(&bare_metal_elf(1)).unwrap();
        assert_eq!(info.entry, 0x10_0000);
        assert_eq!(
            info.loads,
            vec![
                LoadSegment {
                    paddr: 0x10_0000,
                    filesz: 0x30,
                    memsz: 0x30
                },
                LoadSegment {
                    paddr: 0x10_1000,
                    filesz: 0x10,
                    memsz: 0x2000
                },
            ]
        );
        assert_eq!(info.load_range(), Some((0x10_0000, 0x10_3000)));
    }

    #[test]
    fn plain_elf_has_no_marker() {
        let image = build_elf(
            0x100_0000,
            &[
                note_ph(note(b"Xen\0", 18, &[0, 0, 0, 1])),
                load_ph(0x100_0000, vec![0x90; 16], 16),
            ],
        );
        assert_eq!(bare_metal_marker(&image), Ok(None));
    }

    #[test]
    fn other_abi_version_is_refused() {
        let image = bare_metal_elf(99);
        assert!(matches!(
            bare_metal_marker(&image),
            Err(ElfNoteError::UnsupportedAbi { found: 99, .. })
        ));
    }

    #[test]
    fn marker_with_wrong_descriptor_size_is_malformed() {
        let image = build_elf(
            0x10_0000,
            &[note_ph(note(NOTE_NAME, NOTE_TYPE_BAREMETAL, &[1, 0]))],
        );
        assert!(matches!(
            bare_metal_marker(&image),
            Err(ElfNoteError::Malformed(_))
        ));
    }

    #[test]
    fn note_name_must_match_exactly() {
        let image = build_elf(
            0x10_0000,
            &[note_ph(note(b"Resourceful", NOTE_TYPE_BAREMETAL, &[1, 0, 0, 0]))],
        );
        assert_eq!(bare_metal_marker(&image), Ok(None));
    }

    #[test]
    fn wrong_class_and_machine_are_unsupported() {
        let mut image = bare_metal_elf(1);
        image[4] = 1;
        assert!(matches!(parse_elf(&image), Err(ElfNoteError::Unsupported(_))));
        let mut image = bare_metal_elf(1);
        image[18] = 3;
        assert!(matches!(parse_elf(&image), Err(ElfNoteError::Unsupported(_))));
    }

    #[test]
    fn filesz_above_memsz_is_malformed() {
        let image = build_elf(0x10_0000, &[load_ph(0x10_0000, vec![0; 32], 16)]);
        assert!(matches!(parse_elf(&image), Err(ElfNoteError::Malformed(_))));
    }

    #[test]
    fn hostile_sizes_are_rejected_without_panicking() {
        let mut image = bare_metal_elf(1);
        // Huge phnum.
        image[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(parse_elf(&image).is_err());
        // phoff near u64::MAX.
        let mut image = bare_metal_elf(1);
        image[32..40].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        assert!(parse_elf(&image).is_err());
        // A note whose namesz is u32::MAX.
        let mut n = note(NOTE_NAME, NOTE_TYPE_BAREMETAL, &[1, 0, 0, 0]);
        n[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let image = build_elf(0x10_0000, &[note_ph(n)]);
        assert!(parse_elf(&image).is_err());
        // A PT_LOAD whose offset + filesz overflows.
        let mut image = build_elf(0x10_0000, &[load_ph(0x10_0000, vec![0; 8], 8)]);
        image[EHDR_SIZE + 8..EHDR_SIZE + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_elf(&image).is_err());
    }

    #[test]
    fn every_truncation_errors_or_parses_without_panicking() {
        let image = bare_metal_elf(1);
        for len in 0..=image.len() {
            let _ = bare_metal_marker(&image[..len]);
        }
        // And every single-byte corruption of the headers.
        for i in 0..image.len().min(EHDR_SIZE + 4 * PHDR_SIZE + 64) {
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = image.clone();
                bad[i] = v;
                let _ = bare_metal_marker(&bad);
            }
        }
    }

    #[test]
    fn short_or_foreign_input_is_not_elf() {
        assert!(!is_elf(b"\x7fEL"));
        assert!(parse_elf(b"MZ\0\0").is_err());
        assert!(parse_elf(&[]).is_err());
    }
}
