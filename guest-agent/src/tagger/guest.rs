//! What the tagger reads about the guest: its possible CPUs, each CPU's
//! APIC id, the physical frames behind a mapping, a cgroup's id.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

/// Parses a kernel CPU list (`/sys/devices/system/cpu/possible`: `0-3`,
/// `0,2-5`) into the highest CPU number plus one.
pub fn cpu_count(list: &str) -> Option<u32> {
    let mut max = None;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?;
        let n: u32 = last.trim().parse().ok()?;
        max = max.max(Some(n));
    }
    max.and_then(|m: u32| m.checked_add(1))
}

/// The (CPU number, APIC id) pairs of `/proc/cpuinfo`'s text, in order.
pub fn apic_ids(cpuinfo: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut cpu = None;
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => cpu = value.parse().ok(),
            "apicid" => {
                if let (Some(c), Ok(a)) = (cpu.take(), value.parse()) {
                    out.push((c, a));
                }
            }
            _ => {}
        }
    }
    out
}

/// Bits of a `/proc/PID/pagemap` entry: present, and the frame number.
const PM_PRESENT: u64 = 1 << 63;
const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Physical addresses of the `pages` 4 KiB pages mapped from `addr` in this
/// process (which must be resident: touch them first). Needs
/// CAP_SYS_ADMIN: without it the kernel reports frame 0, which is refused.
pub fn physical_pages(addr: usize, pages: usize) -> io::Result<Vec<u64>> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let page = 4096usize;
    (0..pages)
        .map(|i| {
            let vpn = (addr / page + i) as u64;
            let mut e = [0u8; 8];
            pagemap.read_exact_at(&mut e, vpn * 8)?;
            let e = u64::from_ne_bytes(e);
            let pfn = e & PM_PFN_MASK;
            if e & PM_PRESENT == 0 || pfn == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "/proc/self/pagemap shows no frame for the slot page (the agent needs CAP_SYS_ADMIN: run it as root)",
                ));
            }
            Ok(pfn * page as u64)
        })
        .collect()
}

/// A cgroup v2's id, as `bpf_get_current_cgroup_id()` and the kernel's
/// `kernfs_node.id` have it: the inode number of its directory.
pub fn cgroup_id(cgroup_root: &Path, path: &str) -> io::Result<u64> {
    let rel = path.trim_start_matches('/');
    Ok(std::fs::metadata(cgroup_root.join(rel))?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_give_the_highest_cpu_plus_one() {
        assert_eq!(cpu_count("0\n"), Some(1));
        assert_eq!(cpu_count("0-3\n"), Some(4));
        assert_eq!(cpu_count("0,2-5,7"), Some(8));
        assert_eq!(cpu_count(""), None);
        assert_eq!(cpu_count("x"), None);
        assert_eq!(cpu_count("4294967295"), None);
    }

    #[test]
    fn apic_ids_pair_each_processor_with_its_apicid() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\napicid\t\t: 0\ninitial apicid\t: 0\n\n\
                    processor\t: 1\napicid\t\t: 2\n\nprocessor\t: 2\n";
        assert_eq!(apic_ids(text), vec![(0, 0), (1, 2)]);
    }

    #[test]
    fn a_resident_page_has_a_frame_when_run_as_root() {
        let v = vec![1u8; 8192];
        let addr = v.as_ptr() as usize & !4095;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(physical_pages(addr, 1).is_err());
            return;
        }
        let frames = physical_pages(addr, 1).expect("a frame");
        assert_eq!(frames[0] % 4096, 0);
        assert!(frames[0] > 0);
    }
}
