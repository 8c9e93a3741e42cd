//! Readers of cgroup v2: the mount point, a breadth-first walk of the tree,
//! and each cgroup's `cpu.stat`, `io.stat`, `memory.current` and pressure.
//!
//! Like [`crate::procfs`], parsers are pure functions over one file's text
//! and the walker takes the cgroup root as a path. A cgroup removed during
//! the walk is skipped; a missing file reads as zero (`cpu.stat`, `io.stat`)
//! or `None` (`memory.current`, pressure).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use accounting::agent::{CgroupInfo, Pressure, MAX_CGROUPS, MAX_PATH};

use crate::procfs::{read_file, sanitize_text};

/// The cgroup2 mount point named in a `mountinfo` text (the first one).
pub fn find_cgroup2_mount(mountinfo: &[u8]) -> Option<PathBuf> {
    for line in mountinfo.split(|&b| b == b'\n') {
        let line = std::str::from_utf8(line).ok()?;
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_ascii_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mount = left.split_ascii_whitespace().nth(4)?;
        return Some(PathBuf::from(unescape_mount(mount)));
    }
    None
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount of this machine, from `/proc/self/mountinfo`.
pub fn host_cgroup2_mount() -> Option<PathBuf> {
    let mut buf = Vec::new();
    read_file(Path::new("/proc/self/mountinfo"), &mut buf).ok()?;
    find_cgroup2_mount(&buf)
}

/// The `cpu.stat` fields of a [`CgroupInfo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// `usage_usec`.
    pub usage_us: u64,
    /// `user_usec`.
    pub user_us: u64,
    /// `system_usec`.
    pub system_us: u64,
    /// `nr_throttled`.
    pub nr_throttled: u64,
    /// `throttled_usec`.
    pub throttled_us: u64,
}

/// Parses `cpu.stat` (`key value` lines; unknown keys and bad values ignored).
pub fn parse_cpu_stat(text: &[u8]) -> CpuStat {
    let mut s = CpuStat::default();
    for (k, v) in key_values(text) {
        match k {
            "usage_usec" => s.usage_us = v,
            "user_usec" => s.user_us = v,
            "system_usec" => s.system_us = v,
            "nr_throttled" => s.nr_throttled = v,
            "throttled_usec" => s.throttled_us = v,
            _ => {}
        }
    }
    s
}

fn key_values(text: &[u8]) -> impl Iterator<Item = (&str, u64)> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let mut it = line.split_ascii_whitespace();
        let k = it.next()?;
        let v = it.next()?.parse().ok()?;
        Some((k, v))
    })
}

/// `io.stat` summed over devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    /// `rbytes`.
    pub rbytes: u64,
    /// `wbytes`.
    pub wbytes: u64,
    /// `rios`.
    pub rios: u64,
    /// `wios`.
    pub wios: u64,
}

/// Parses `io.stat` (`MAJ:MIN key=value …` lines), summing over devices.
pub fn parse_io_stat(text: &[u8]) -> IoStat {
    let mut s = IoStat::default();
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        for kv in line.split_ascii_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            let slot = match k {
                "rbytes" => &mut s.rbytes,
                "wbytes" => &mut s.wbytes,
                "rios" => &mut s.rios,
                "wios" => &mut s.wios,
                _ => continue,
            };
            *slot = slot.saturating_add(v);
        }
    }
    s
}

/// Parses a `*.pressure` file. `None` when it has no valid `some` line; a
/// missing `full` line (older `cpu.pressure`) reads as zeros.
pub fn parse_pressure(text: &[u8]) -> Option<Pressure> {
    let mut p = Pressure::default();
    let mut some = false;
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut it = line.split_ascii_whitespace();
        let kind = it.next();
        let mut avg10 = None;
        let mut total = None;
        for kv in it {
            match kv.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0),
                Some(("total", v)) => total = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let (Some(a), Some(t)) = (avg10, total) else {
            continue;
        };
        match kind {
            Some("some") => {
                (p.some_avg10, p.some_total_us) = (a, t);
                some = true;
            }
            Some("full") => (p.full_avg10, p.full_total_us) = (a, t),
            _ => {}
        }
    }
    some.then_some(p)
}

/// Parses `memory.current`.
pub fn parse_u64_file(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// What a walk met besides the cgroups it listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Cgroups beyond the bound (found, not read).
    pub omitted: u32,
    /// Cgroups removed during the walk.
    pub vanished: u32,
}

/// Reads one cgroup directory `dir` whose path from the root is `path`.
/// `None` when the directory is gone.
pub fn read_cgroup(dir: &Path, path: &str, buf: &mut Vec<u8>) -> Option<CgroupInfo> {
    let mut g = CgroupInfo {
        path: path.to_owned(),
        ..CgroupInfo::default()
    };
    match read_file(&dir.join("cpu.stat"), buf) {
        Ok(()) => {
            let c = parse_cpu_stat(buf);
            g.cpu_usage_us = c.usage_us;
            g.cpu_user_us = c.user_us;
            g.cpu_system_us = c.system_us;
            g.cpu_nr_throttled = c.nr_throttled;
            g.cpu_throttled_us = c.throttled_us;
        }
        Err(_) if !dir.exists() => return None,
        Err(_) => {}
    }
    if read_file(&dir.join("io.stat"), buf).is_ok() {
        let io = parse_io_stat(buf);
        g.io_read_bytes = io.rbytes;
        g.io_write_bytes = io.wbytes;
        g.io_read_ops = io.rios;
        g.io_write_ops = io.wios;
    }
    g.memory_current = read_file(&dir.join("memory.current"), buf)
        .ok()
        .and_then(|()| parse_u64_file(buf));
    g.cpu_pressure = read_file(&dir.join("cpu.pressure"), buf)
        .ok()
        .and_then(|()| parse_pressure(buf));
    g.io_pressure = read_file(&dir.join("io.pressure"), buf)
        .ok()
        .and_then(|()| parse_pressure(buf));
    g.memory_pressure = read_file(&dir.join("memory.pressure"), buf)
        .ok()
        .and_then(|()| parse_pressure(buf));
    Some(g)
}

/// Walks the tree under `root` breadth-first (siblings in name order),
/// reading at most `max` cgroups (capped at [`MAX_CGROUPS`]); the ones found
/// beyond are counted (their own descendants are not visited, so the count
/// is a lower bound). Directory names the protocol cannot carry (control
/// characters, non-UTF-8, paths over [`accounting::agent::MAX_PATH`]) are
/// skipped and counted as omitted.
pub fn walk(root: &Path, max: usize) -> io::Result<(Vec<CgroupInfo>, CgroupStats)> {
    let max = max.min(MAX_CGROUPS);
    let mut stats = CgroupStats::default();
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    std::fs::metadata(root)?;
    let mut queue: VecDeque<(PathBuf, String)> = VecDeque::from([(root.to_owned(), "/".to_owned())]);
    let mut found = 1usize;
    while let Some((dir, path)) = queue.pop_front() {
        match read_cgroup(&dir, &path, &mut buf) {
            Some(g) => out.push(g),
            None => {
                stats.vanished += 1;
                continue;
            }
        }
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut children: Vec<String> = Vec::new();
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name();
            match name.to_str() {
                Some(n) if sanitize_text(n.as_bytes(), usize::MAX) == n => children.push(n.to_owned()),
                _ => stats.omitted = stats.omitted.saturating_add(1),
            }
        }
        children.sort_unstable();
        for name in children {
            let child = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            if found >= max || child.len() > MAX_PATH {
                stats.omitted = stats.omitted.saturating_add(1);
                continue;
            }
            found += 1;
            queue.push_back((dir.join(&name), child));
        }
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_cgroup2() {
        let m = b"31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/uni fied"))
        );
        assert_eq!(find_cgroup2_mount(b"1 2 3 / /x - ext4 /dev/sda rw\n"), None);
        assert_eq!(find_cgroup2_mount(b"garbage - cgroup2"), None);
    }

    #[test]
    fn cpu_stat_fields() {
        let t = b"usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 3\nnr_throttled 2\n\
                  throttled_usec 7\nbogus x\n";
        let c = parse_cpu_stat(t);
        assert_eq!(
            (c.usage_us, c.user_us, c.system_us, c.nr_throttled, c.throttled_us),
            (100, 60, 40, 2, 7)
        );
        assert_eq!(parse_cpu_stat(b"usage_usec"), CpuStat::default());
    }

    #[test]
    fn io_stat_sums_devices() {
        let t = b"8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n\
                  253:0 rbytes=10 wbytes=20 rios=3 wios=4\n9:9 rbytes=x wios\n";
        assert_eq!(
            parse_io_stat(t),
            IoStat {
                rbytes: 110,
                wbytes: 220,
                rios: 4,
                wios: 6
            }
        );
    }

    #[test]
    fn pressure_some_and_full() {
        let t =
            b"some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.25 avg60=0 avg300=0 total=99\n";
        let p = parse_pressure(t).unwrap();
        assert_eq!(
            (p.some_avg10, p.some_total_us, p.full_avg10, p.full_total_us),
            (1.5, 1234, 0.25, 99)
        );
        let only_some = parse_pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!(only_some.full_total_us, 0);
        assert_eq!(parse_pressure(b"full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_pressure(b"some avg10=NaN avg60=0 total=5\n"), None);
        assert_eq!(parse_pressure(b"some avg10=inf total=5\n"), None);
        assert_eq!(parse_pressure(b""), None);
    }

    #[test]
    fn memory_current() {
        assert_eq!(parse_u64_file(b"4096\n"), Some(4096));
        assert_eq!(parse_u64_file(b"max\n"), None);
    }
}
