//! A vCPU's halted time from KVM's binary statistics (`KVM_GET_STATS_FD`,
//! Linux 5.14+; the `blocking` flag since 5.16).
//!
//! Time inside `KVM_RUN` is not all guest execution: a vCPU that executed
//! `hlt` sits in KVM polling (`halt_poll_success_ns`, `halt_poll_fail_ns`)
//! and then waiting (`halt_wait_ns`) until an interrupt wakes it. KVM keeps
//! those three cumulative nanosecond counters per vCPU and publishes them,
//! with a `blocking` flag that is 1 while the vCPU waits, in a file of
//! self-describing records (`Documentation/virt/kvm/api.rst`, "KVM binary
//! statistics"). The sampler subtracts them from the vCPU's time in
//! `KVM_RUN`; see `crate::sampler`.
//!
//! KVM updates the counters when a halt *ends*, so a halt in progress is
//! visible only through `blocking`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;
/// Header: flags, name_size, num_desc, id_offset, desc_offset, data_offset.
const HEADER_LEN: usize = 24;
/// A descriptor without its name: flags, exponent, size, offset, bucket_size.
const DESC_LEN: usize = 16;
/// Bounds on what the header may announce (KVM has ~60 vCPU statistics with
/// 48-byte names); beyond them the file is not one this code understands.
pub const MAX_DESCS: usize = 4096;
const MAX_NAME: usize = 256;
/// Descriptor flags: type mask and "cumulative"; unit mask, "seconds";
/// base mask, "power of 10".
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;
const UNIT_MASK: u32 = 0xf << 4;
const UNIT_SECONDS: u32 = 0x2 << 4;
const BASE_MASK: u32 = 0xf << 8;
const BASE_POW10: u32 = 0;

/// The halt counters of one vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HaltSample {
    /// Polling and waiting in halts that have ended, ns.
    pub halted_ns: u64,
    /// The vCPU is waiting right now (a halt, or an AP waiting for INIT/SIPI).
    pub blocking: bool,
}

/// Where the counters are in one vCPU's statistics file.
#[derive(Debug)]
pub struct HaltStats {
    file: File,
    /// Byte offsets in the file of the three nanosecond counters.
    ns: [u64; 3],
    /// Byte offset of `blocking`, when this KVM has it.
    blocking: Option<u64>,
    /// The smallest span of the file covering all of them.
    span: (u64, usize),
}

/// One statistic's descriptor, as far as this module needs it.
struct Desc {
    name: String,
    flags: u32,
    exponent: i16,
    size: u16,
    offset: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("KVM statistics: {what}"))
}

/// Parses the descriptors of a statistics file whose header is `header`.
fn descriptors(file: &File, header: &[u8; HEADER_LEN]) -> io::Result<(Vec<Desc>, u64)> {
    let name_size = u32_at(header, 4) as usize;
    let num_desc = u32_at(header, 8) as usize;
    let desc_offset = u64::from(u32_at(header, 16));
    let data_offset = u64::from(u32_at(header, 20));
    if name_size == 0 || name_size > MAX_NAME || num_desc > MAX_DESCS {
        return Err(invalid("a header this VMM does not understand"));
    }
    let stride = DESC_LEN + name_size;
    let mut raw = vec![0u8; stride * num_desc];
    file.read_exact_at(&mut raw, desc_offset)?;
    let descs = raw
        .chunks_exact(stride)
        .map(|d| {
            let name = &d[DESC_LEN..];
            let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            Desc {
                name: String::from_utf8_lossy(&name[..len]).into_owned(),
                flags: u32_at(d, 0),
                exponent: i16::from_ne_bytes([d[4], d[5]]),
                size: u16::from_ne_bytes([d[6], d[7]]),
                offset: u32_at(d, 8),
            }
        })
        .collect();
    Ok((descs, data_offset))
}

impl HaltStats {
    /// Opens the statistics of the vCPU behind `vcpu` (a KVM vCPU fd) and
    /// finds the halt counters. An error means this KVM cannot tell halted
    /// time apart; the caller says so in the report.
    pub fn open(vcpu: &impl AsRawFd) -> io::Result<Self> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor or -1; nothing else is read or written.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        let (descs, data_offset) = descriptors(&file, &header)?;
        let find = |name: &str| descs.iter().find(|d| d.name == name);
        let ns_counter = |name: &str| -> io::Result<u64> {
            let d = find(name).ok_or_else(|| invalid(&format!("no {name}")))?;
            let nanoseconds = d.flags & TYPE_MASK == TYPE_CUMULATIVE
                && d.flags & UNIT_MASK == UNIT_SECONDS
                && d.flags & BASE_MASK == BASE_POW10
                && d.exponent == -9
                && d.size == 1;
            if !nanoseconds {
                return Err(invalid(&format!(
                    "{name} is not a cumulative count of nanoseconds"
                )));
            }
            Ok(data_offset + u64::from(d.offset))
        };
        let ns = [
            ns_counter("halt_poll_success_ns")?,
            ns_counter("halt_poll_fail_ns")?,
            ns_counter("halt_wait_ns")?,
        ];
        let blocking = find("blocking")
            .filter(|d| d.size == 1)
            .map(|d| data_offset + u64::from(d.offset));
        let offsets = ns.iter().chain(blocking.iter());
        let lo = offsets.clone().copied().min().unwrap_or(data_offset);
        let hi = offsets.copied().max().unwrap_or(data_offset) + 8;
        let span = (
            lo,
            usize::try_from(hi - lo).map_err(|_| invalid("a span too large"))?,
        );
        if span.1 > 64 * 1024 {
            return Err(invalid("counters too far apart"));
        }
        Ok(Self {
            file,
            ns,
            blocking,
            span,
        })
    }

    /// Whether a halt in progress can be seen (`blocking`, Linux 5.16+).
    pub fn sees_blocking(&self) -> bool {
        self.blocking.is_some()
    }

    /// Reads the counters now (one `pread`).
    pub fn read(&self) -> io::Result<HaltSample> {
        let mut buf = [0u8; 512];
        let mut heap;
        let data: &mut [u8] = if self.span.1 <= buf.len() {
            &mut buf[..self.span.1]
        } else {
            heap = vec![0u8; self.span.1];
            &mut heap
        };
        self.file.read_exact_at(data, self.span.0)?;
        // Every offset lies in the span (see `open`), at most 64 KiB long.
        let at = |off: u64| {
            let i = usize::try_from(off - self.span.0).unwrap_or(usize::MAX);
            data.get(i..i.saturating_add(8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_ne_bytes)
        };
        Ok(HaltSample {
            halted_ns: self.ns.iter().map(|&o| at(o)).fold(0u64, u64::saturating_add),
            blocking: self.blocking.is_some_and(|o| at(o) != 0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the real KVM: the counters exist and read as a fresh vCPU's
    /// (nothing halted yet, not blocking).
    #[test]
    fn a_fresh_vcpu_has_halted_for_no_time() {
        let kvm = kvm_ioctls::Kvm::new().expect("this test needs /dev/kvm");
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let stats = HaltStats::open(&vcpu).expect("this KVM has binary statistics (Linux 5.14+)");
        assert_eq!(
            stats.read().unwrap(),
            HaltSample {
                halted_ns: 0,
                blocking: false
            }
        );
    }

    #[test]
    fn a_file_that_is_not_kvm_statistics_is_refused() {
        let f = tempfile_with(&[0xffu8; 64]);
        assert!(HaltStats::open(&f).is_err(), "the ioctl fails on a plain file");
        let mut header = [0u8; HEADER_LEN];
        header[4..8].copy_from_slice(&100_000u32.to_ne_bytes());
        let err = descriptors(&f, &header)
            .err()
            .expect("a huge name size is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!("rsrc-kvmstats-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
