//! Readers of `/proc`: processes and their threads.
//!
//! The parsers are pure functions over the text of one file, so they are
//! tested against hostile fixtures; the readers take the proc root as a path
//! so they run against a fixture tree or the real `/proc`.
//!
//! Processes vanish while they are read. A process whose files disappear
//! (`ENOENT`, or `ESRCH` from a read after the task exited) is skipped and
//! counted in [`ProcStats::vanished`]; one whose files cannot be parsed is
//! skipped and counted in [`ProcStats::unreadable`]. Neither fails the scan.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use accounting::agent::{ProcessInfo, TaskUsage, ThreadInfo, MAX_PROCESSES, MAX_TEXT, MAX_THREADS};

/// Threads whose switch counts are summed into their process at most; a
/// process with more threads reports the sum over the first this many.
pub const MAX_SUMMED_THREADS: usize = 4096;
/// Largest file read from `/proc` or cgroupfs, in bytes.
pub const MAX_FILE: u64 = 64 * 1024;

/// Why one process or thread could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// It exited while being read.
    #[error("the task vanished")]
    Vanished,
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file did not have the expected form.
    #[error("cannot parse {0}")]
    Parse(&'static str),
}

/// Whether `e` means "the task is gone": `ENOENT` or `ESRCH`.
pub fn is_vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Reads `path` into `buf` (cleared first), at most [`MAX_FILE`] bytes.
pub fn read_file(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    File::open(path)?.take(MAX_FILE).read_to_end(buf)?;
    Ok(())
}

fn task_error(path: &Path, e: io::Error) -> ProcError {
    if is_vanished(&e) {
        ProcError::Vanished
    } else {
        ProcError::Io {
            path: path.to_owned(),
            source: e,
        }
    }
}

fn read_task_file(path: &Path, buf: &mut Vec<u8>) -> Result<(), ProcError> {
    read_file(path, buf).map_err(|e| task_error(path, e))
}

/// Opens a directory to read files relative to it.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a NUL-terminated path valid for the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `name` under the directory `dir` into `buf` (cleared first), at
/// most [`MAX_FILE`] bytes.
fn read_at(dir: &OwnedFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    // SAFETY: `dir` is an open directory and `name` a NUL-terminated
    // relative path, both valid for the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.take(MAX_FILE).read_to_end(buf)?;
    Ok(())
}

fn read_task_at(dir: &OwnedFd, dir_path: &Path, name: &CStr, buf: &mut Vec<u8>) -> Result<(), ProcError> {
    read_at(dir, name, buf).map_err(|e| task_error(&dir_path.join(name.to_string_lossy().as_ref()), e))
}

/// Makes free-form text from the kernel fit the protocol's rules: lossy
/// UTF-8, control characters replaced by `?`, at most `max` bytes.
pub fn sanitize_text(raw: &[u8], max: usize) -> String {
    let mut s: String = String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The fields of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) the agent uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// `comm`, sanitized.
    pub comm: String,
    /// Parent pid.
    pub ppid: u32,
    /// User CPU, clock ticks.
    pub utime: u64,
    /// System CPU, clock ticks.
    pub stime: u64,
    /// Threads in the process.
    pub num_threads: u64,
    /// `rss` (field 24). Not used for the report: on recent kernels it can
    /// differ from `statm`'s resident pages, which are what `top` shows.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. `comm` may hold spaces and parentheses, so the
/// fields after it are found after the **last** `)`.
pub fn parse_stat(text: &[u8]) -> Result<Stat, ProcError> {
    let open = text
        .iter()
        .position(|&b| b == b'(')
        .ok_or(ProcError::Parse("stat"))?;
    let close = text
        .iter()
        .rposition(|&b| b == b')')
        .ok_or(ProcError::Parse("stat"))?;
    if close < open {
        return Err(ProcError::Parse("stat"));
    }
    let comm = sanitize_text(&text[open + 1..close], MAX_TEXT);
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| ProcError::Parse("stat"))?;
    // Field n of proc(5) (1-based) is rest's index n - 3: rest starts at `state`.
    let f: Vec<&str> = rest.split_ascii_whitespace().take(22).collect();
    let num = |i: usize| -> Result<u64, ProcError> {
        f.get(i)
            .and_then(|s| s.parse::<i64>().ok())
            .map(|v| u64::try_from(v).unwrap_or(0))
            .ok_or(ProcError::Parse("stat"))
    };
    Ok(Stat {
        comm,
        ppid: u32::try_from(num(1)?).map_err(|_| ProcError::Parse("stat"))?,
        utime: num(11)?,
        stime: num(12)?,
        num_threads: num(17)?,
        rss_pages: num(21).unwrap_or(0),
    })
}

/// Voluntary and involuntary switches from `/proc/PID/status`; a missing line
/// reads as 0.
pub fn parse_status_switches(text: &[u8]) -> (u64, u64) {
    let mut vol = 0;
    let mut invol = 0;
    for line in text.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"voluntary_ctxt_switches:") {
            vol = parse_u64_trim(v).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix(b"nonvoluntary_ctxt_switches:") {
            invol = parse_u64_trim(v).unwrap_or(0);
        }
    }
    (vol, invol)
}

/// `read_bytes` and `write_bytes` from `/proc/PID/io`; missing lines read as 0.
pub fn parse_io(text: &[u8]) -> (u64, u64) {
    let mut r = 0;
    let mut w = 0;
    for line in text.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"read_bytes:") {
            r = parse_u64_trim(v).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix(b"write_bytes:") {
            w = parse_u64_trim(v).unwrap_or(0);
        }
    }
    (r, w)
}

/// Resident pages from `/proc/PID/statm` (its second field).
pub fn parse_statm(text: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(text).ok()?;
    s.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The cgroup v2 path from `/proc/PID/cgroup` (its `0::` line), `/` when it
/// has none (a v1-only system). A path the protocol would refuse (outside
/// the agent's cgroup namespace, `/..`, or not absolute) also reads as `/`;
/// a removed cgroup's ` (deleted)` suffix is dropped.
pub fn parse_cgroup(text: &[u8]) -> String {
    for line in text.split(|&b| b == b'\n') {
        if let Some(p) = line.strip_prefix(b"0::") {
            let p = p.strip_suffix(b" (deleted)").unwrap_or(p);
            let s = sanitize_text(p, accounting::agent::MAX_PATH);
            if s.starts_with('/') && !s.split('/').any(|c| c == "..") {
                return s;
            }
            return "/".to_owned();
        }
    }
    "/".to_owned()
}

fn parse_u64_trim(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Host constants the readers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Units {
    /// `sysconf(_SC_CLK_TCK)`.
    pub clk_tck: u64,
    /// `sysconf(_SC_PAGESIZE)`.
    pub page_size: u64,
}

impl Units {
    /// The running kernel's values (100 Hz and 4 KiB when `sysconf` fails).
    pub fn host() -> Self {
        // SAFETY: sysconf has no memory-safety preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self {
            clk_tck: u64::try_from(tck).ok().filter(|&t| t > 0).unwrap_or(100),
            page_size: u64::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096),
        }
    }

    /// Clock ticks to nanoseconds, saturating.
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(self.clk_tck.max(1));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// What a scan met besides the processes it listed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Processes that exited while being read (skipped).
    pub vanished: u32,
    /// Processes whose files could not be read or parsed (skipped).
    pub unreadable: u32,
    /// Processes beyond [`MAX_PROCESSES`] (not read).
    pub omitted: u32,
}

/// Reads processes under a proc root, reusing its buffers between scans.
#[derive(Debug)]
pub struct ProcReader {
    root: PathBuf,
    units: Units,
    buf: Vec<u8>,
    /// Whether the threads of multi-threaded processes are listed (their
    /// switches are summed regardless).
    pub list_threads: bool,
}

impl ProcReader {
    /// A reader of `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>, units: Units) -> Self {
        Self {
            root: root.into(),
            units,
            buf: Vec::with_capacity(4096),
            list_threads: true,
        }
    }

    /// The pids under the root, ascending.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        numeric_entries(&self.root)
    }

    /// Every process, at most [`MAX_PROCESSES`] (the lowest pids); the rest
    /// are counted, not read.
    pub fn scan(&mut self) -> io::Result<(Vec<ProcessInfo>, ProcStats)> {
        let pids = self.pids()?;
        let mut stats = ProcStats::default();
        let mut out = Vec::with_capacity(pids.len().min(MAX_PROCESSES));
        for &pid in &pids {
            if out.len() == MAX_PROCESSES {
                stats.omitted = stats.omitted.saturating_add(1);
                continue;
            }
            match self.process(pid) {
                Ok(p) => out.push(p),
                Err(ProcError::Vanished) => stats.vanished += 1,
                Err(e) => {
                    log::debug!("skipping pid {pid}: {e}");
                    stats.unreadable += 1;
                }
            }
        }
        Ok((out, stats))
    }

    /// One process.
    pub fn process(&mut self, pid: u32) -> Result<ProcessInfo, ProcError> {
        let dir = self.root.join(pid.to_string());
        // Files are opened relative to the process's directory: the kernel
        // looks the pid up once, not once per file.
        let dfd = open_dir(&dir).map_err(|e| task_error(&dir, e))?;
        read_task_at(&dfd, &dir, c"stat", &mut self.buf)?;
        let stat = parse_stat(&self.buf)?;
        read_task_at(&dfd, &dir, c"cgroup", &mut self.buf)?;
        let cgroup = parse_cgroup(&self.buf);
        // Unreadable (another user's process without CAP_SYS_PTRACE, or a
        // kernel without task I/O accounting): 0. A process that vanished
        // here is caught by the reads that follow.
        let (read_bytes, write_bytes) = match read_at(&dfd, c"io", &mut self.buf) {
            Ok(()) => parse_io(&self.buf),
            Err(_) => (0, 0),
        };
        read_task_at(&dfd, &dir, c"statm", &mut self.buf)?;
        let rss_pages = parse_statm(&self.buf).unwrap_or(0);
        let mut usage = TaskUsage {
            user_ns: self.units.ticks_to_ns(stat.utime),
            system_ns: self.units.ticks_to_ns(stat.stime),
            ..TaskUsage::default()
        };
        let mut threads = Vec::new();
        let mut threads_omitted = 0u32;
        if stat.num_threads <= 1 {
            // One thread: the process is its thread, and no thread is
            // listed (the process's figures also count exited threads).
            // `status` shows this one thread's switches.
            read_task_at(&dfd, &dir, c"status", &mut self.buf)?;
            (usage.voluntary_switches, usage.involuntary_switches) = parse_status_switches(&self.buf);
        } else {
            // Several: `status` shows the leader's switches only, so the
            // process's are summed over its live threads.
            let tids = numeric_entries(&dir.join("task")).map_err(|e| {
                if is_vanished(&e) {
                    ProcError::Vanished
                } else {
                    ProcError::Io {
                        path: dir.join("task"),
                        source: e,
                    }
                }
            })?;
            for (i, &tid) in tids.iter().enumerate() {
                if i >= MAX_SUMMED_THREADS {
                    threads_omitted = threads_omitted.saturating_add(1);
                    continue;
                }
                let tdir = dir.join("task").join(tid.to_string());
                if self.list_threads && threads.len() < MAX_THREADS {
                    match self.thread(&tdir, tid) {
                        Ok(t) => {
                            usage.voluntary_switches += t.usage.voluntary_switches;
                            usage.involuntary_switches += t.usage.involuntary_switches;
                            threads.push(t);
                        }
                        Err(_) => continue, // the thread exited
                    }
                } else {
                    threads_omitted = threads_omitted.saturating_add(1);
                    if read_file(&tdir.join("status"), &mut self.buf).is_ok() {
                        let (v, n) = parse_status_switches(&self.buf);
                        usage.voluntary_switches += v;
                        usage.involuntary_switches += n;
                    }
                }
            }
        }
        Ok(ProcessInfo {
            pid,
            ppid: stat.ppid,
            comm: stat.comm,
            cgroup,
            usage,
            read_bytes,
            write_bytes,
            rss_bytes: rss_pages.saturating_mul(self.units.page_size),
            threads,
            threads_omitted,
        })
    }

    /// One thread, from its `task/TID` directory.
    pub fn thread(&mut self, tdir: &Path, tid: u32) -> Result<ThreadInfo, ProcError> {
        read_task_file(&tdir.join("stat"), &mut self.buf)?;
        let stat = parse_stat(&self.buf)?;
        read_task_file(&tdir.join("status"), &mut self.buf)?;
        let (vol, invol) = parse_status_switches(&self.buf);
        Ok(ThreadInfo {
            tid,
            comm: stat.comm,
            usage: TaskUsage {
                user_ns: self.units.ticks_to_ns(stat.utime),
                system_ns: self.units.ticks_to_ns(stat.stime),
                voluntary_switches: vol,
                involuntary_switches: invol,
            },
        })
    }
}

/// Names under `dir` that are non-zero decimal u32s, ascending.
pub fn numeric_entries(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let Ok(e) = e else { continue };
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            if n != 0 {
                out.push(n);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The calling process's own CPU (user + system, all threads), ns.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call's duration.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    timeval_ns(ru.ru_utime).saturating_add(timeval_ns(ru.ru_stime))
}

fn timeval_ns(t: libc::timeval) -> u64 {
    let s = u64::try_from(t.tv_sec).unwrap_or(0);
    let us = u64::try_from(t.tv_usec).unwrap_or(0);
    s.saturating_mul(1_000_000_000)
        .saturating_add(us.saturating_mul(1000))
}

/// The calling process's current RSS, bytes (0 when `/proc/self` is absent).
pub fn self_rss_bytes(units: Units) -> u64 {
    let mut buf = Vec::new();
    match read_file(Path::new("/proc/self/statm"), &mut buf) {
        Ok(()) => parse_statm(&buf).unwrap_or(0).saturating_mul(units.page_size),
        Err(_) => 0,
    }
}

/// `CLOCK_MONOTONIC` now, ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let s = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ns = u64::try_from(ts.tv_nsec).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"42 (a) (b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 \
                          10000000 512 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";

    #[test]
    fn stat_splits_at_the_last_paren() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.comm, "a) (b");
        assert_eq!(s.ppid, 1);
        assert_eq!((s.utime, s.stime), (250, 50));
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.rss_pages, 512);
    }

    #[test]
    fn stat_rejects_truncated_and_garbage() {
        assert!(parse_stat(b"").is_err());
        assert!(parse_stat(b"42 (sh").is_err());
        assert!(parse_stat(b"42 (sh) S 1 42 42 0 -1 4194560 100 0 0 0 250").is_err());
        assert!(parse_stat(b"42 )sh( S 1").is_err());
        assert!(parse_stat(b"42 (sh) S x 42").is_err());
        assert!(parse_stat(&[0xff; 100]).is_err());
    }

    #[test]
    fn stat_comm_is_sanitized() {
        let s =
            parse_stat(b"7 (a\nb\x01) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 18 19 20 21 22").unwrap();
        assert_eq!(s.comm, "a?b?");
        assert_eq!((s.utime, s.stime, s.num_threads, s.rss_pages), (11, 12, 1, 21));
    }

    #[test]
    fn stat_tolerates_a_missing_rss() {
        let s = parse_stat(b"7 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 1 18 19").unwrap();
        assert_eq!(s.rss_pages, 0);
    }

    #[test]
    fn status_switches_default_to_zero() {
        let t = b"Name:\tx\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t 3\n";
        assert_eq!(parse_status_switches(t), (17, 3));
        assert_eq!(
            parse_status_switches(b"Name:\tx\nvoluntary_ctxt_switches:\t"),
            (0, 0)
        );
        assert_eq!(parse_status_switches(b"voluntary_ctxt_switches: -4"), (0, 0));
    }

    #[test]
    fn io_reads_storage_bytes_only() {
        let t = b"rchar: 9\nwchar: 8\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 1\n";
        assert_eq!(parse_io(t), (4096, 8192));
        assert_eq!(parse_io(b"read_bytes: 1"), (1, 0));
    }

    #[test]
    fn statm_second_field() {
        assert_eq!(parse_statm(b"100 25 3 1 0 20 0\n"), Some(25));
        assert_eq!(parse_statm(b"100"), None);
    }

    #[test]
    fn cgroup_takes_the_v2_line() {
        assert_eq!(
            parse_cgroup(b"4:memory:/x\n0::/system.slice/a.service\n"),
            "/system.slice/a.service"
        );
        assert_eq!(parse_cgroup(b"0::/gone (deleted)\n"), "/gone");
        assert_eq!(parse_cgroup(b"1:cpu:/\n"), "/");
        assert_eq!(parse_cgroup(b"0::/../../outside\n"), "/");
        assert_eq!(parse_cgroup(b"0::relative\n"), "/");
        assert_eq!(parse_cgroup(b""), "/");
    }

    #[test]
    fn ticks_become_nanoseconds() {
        let u = Units {
            clk_tck: 100,
            page_size: 4096,
        };
        assert_eq!(u.ticks_to_ns(3), 30_000_000);
        assert_eq!(u.ticks_to_ns(u64::MAX), u64::MAX);
    }

    #[test]
    fn text_is_truncated_at_a_char_boundary() {
        let s = sanitize_text("é".repeat(200).as_bytes(), 5);
        assert_eq!(s, "éé");
    }
}
