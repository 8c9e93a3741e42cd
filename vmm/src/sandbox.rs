//! The seccomp sandbox: one filter per kind of VMM thread.
//!
//! The allow-lists are data, `vmm/seccomp/x86_64.json` (seccompiler's
//! format), compiled to BPF by `build.rs`. Each VMM thread installs the
//! filter of its kind as the first thing its body does, before any
//! guest-facing work; a vCPU thread before its first `KVM_RUN`. Threads a
//! filtered thread starts inherit its filter and may stack their own on it
//! (the kernel then allows only what both allow). docs/sandbox.md lists
//! what each kind may call and why.
//!
//! A syscall outside the list raises `SIGSYS` (`SECCOMP_RET_TRAP`). The
//! handler installed here writes one line to stderr, naming the thread and
//! the syscall number, and ends the process with [`VIOLATION_STATUS`]:
//! a sandbox violation is a VMM bug or a compromise, and the process does
//! not go on after either.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize};

#[allow(clippy::all)]
mod compiled {
    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// The exit status of a process one of whose threads made a syscall its
/// filter does not allow: 128 + `SIGSYS` (31), as a shell would show a
/// death by that signal.
pub const VIOLATION_STATUS: i32 = 159;

/// How the filters are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// Filters on; a syscall outside a thread's list ends the process.
    #[default]
    Trap,
    /// Filters on, but a syscall outside a list is only logged by the
    /// kernel (`SECCOMP_RET_LOG`, in the audit log / `dmesg`) and allowed:
    /// how the lists are regenerated. Not a sandbox.
    Log,
    /// No filters (`--no-seccomp`; for debugging only).
    Off,
}

impl Seccomp {
    /// How the report names it: `on`, `log` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            Seccomp::Trap => "on",
            Seccomp::Log => "log",
            Seccomp::Off => "off",
        }
    }
}

/// The kinds of VMM thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that builds the VM and waits for it to end (CLI only).
    Main,
    /// A vCPU thread (`rsrc-vcpu<N>`).
    Vcpu,
    /// The virtio device event loop (`rsrc-devices`).
    Devices,
    /// The host API server (`rsrc-api`).
    Api,
    /// The agent hub: its accept loop and connection threads.
    Agent,
    /// The run-time sampler (`rsrc-sampler`).
    Sampler,
    /// The OpenTelemetry exporter (`rsrc-otlp`, only with `--otlp-endpoint`).
    Otlp,
}

impl ThreadKind {
    /// The filter's key in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::Api => "api",
            ThreadKind::Agent => "agent",
            ThreadKind::Sampler => "sampler",
            ThreadKind::Otlp => "otlp",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Why a filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The build compiled no filter of this kind (a build bug).
    #[error("no compiled seccomp filter for {0} threads")]
    Missing(ThreadKind),
    /// The kernel refused it.
    #[error("cannot install the seccomp filter of {kind} threads (a kernel without seccomp filters? --no-seccomp runs without them, for debugging only)")]
    Install {
        /// The kind.
        kind: ThreadKind,
        /// The error.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

/// The BPF program of `kind` for `level` (`None` for [`Seccomp::Off`]).
pub fn program(kind: ThreadKind, level: Seccomp) -> Result<Option<seccompiler::BpfProgram>, SandboxError> {
    let table = match level {
        Seccomp::Trap => compiled::TRAP,
        Seccomp::Log => compiled::LOG,
        Seccomp::Off => return Ok(None),
    };
    let (_, insns) = table
        .iter()
        .find(|(k, _)| *k == kind.key())
        .ok_or(SandboxError::Missing(kind))?;
    Ok(Some(
        insns
            .iter()
            .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect(),
    ))
}

thread_local! {
    /// This thread's name and kind, for the SIGSYS handler (which may not
    /// allocate or ask the kernel). Constant-initialized and without a
    /// destructor, so reading them in a signal handler is a plain load.
    static NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
    static KIND: Cell<&'static str> = const { Cell::new("") };
}

/// Installs the filter of `kind` on the calling thread (nothing with
/// [`Seccomp::Off`]). Call it first thing in the thread's body.
pub fn enter(kind: ThreadKind, level: Seccomp) -> Result<(), SandboxError> {
    let Some(prog) = program(kind, level)? else {
        return Ok(());
    };
    let mut name = [0u8; 16];
    let current = std::thread::current();
    let n = current.name().unwrap_or("unnamed").as_bytes();
    let len = n.len().min(name.len() - 1);
    name[..len].copy_from_slice(&n[..len]);
    NAME.with(|c| c.set(name));
    KIND.with(|c| c.set(kind.key()));
    seccompiler::apply_filter(&prog).map_err(|source| SandboxError::Install { kind, source })
}

/// Like [`enter`], for a thread that has no caller to return an error to:
/// a thread that cannot be sandboxed ends the process, with the same line
/// and status as a violation would, rather than run unfiltered.
pub fn enter_or_exit(kind: ThreadKind, level: Seccomp) {
    if let Err(e) = enter(kind, level) {
        let source = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        eprintln!("resourceful: seccomp: {e}{source}; exiting with status {VIOLATION_STATUS}");
        // SAFETY: _exit(2) ends the process without running anything else.
        unsafe { libc::_exit(VIOLATION_STATUS) };
    }
}

/// Installs the process-wide SIGSYS handler that reports a violation
/// (only needed with [`Seccomp::Trap`]; harmless to repeat).
pub fn install_violation_handler() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction is valid; the handler is an
    // `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)`, as SA_SIGINFO
    // requires, and only does async-signal-safe work.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SandboxError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in the x86-64 `siginfo_t` of a SIGSYS
/// (`_sigsys { void *_call_addr; int _syscall; unsigned _arch; }` after
/// three ints and their padding).
const SI_SYSCALL_OFFSET: usize = 24;

/// Appends `s` to `buf` at `*at`, as far as it fits.
fn put(buf: &mut [u8], at: &mut usize, s: &[u8]) {
    for &b in s {
        if *at < buf.len() {
            buf[*at] = b;
            *at += 1;
        }
    }
}

/// Appends `v` in decimal.
fn put_num(buf: &mut [u8], at: &mut usize, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        // A decimal digit fits.
        #[allow(clippy::cast_possible_truncation)]
        {
            digits[i] = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(buf, at, &digits[i..]);
}

/// The line a violation prints, built without allocating.
pub fn violation_line(buf: &mut [u8; 256], name: &[u8], kind: &str, syscall: i64) -> usize {
    let mut at = 0;
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    put(buf, &mut at, b"resourceful: seccomp: thread ");
    put(buf, &mut at, if name.is_empty() { b"?" } else { name });
    put(buf, &mut at, b" (");
    put(buf, &mut at, if kind.is_empty() { b"?" } else { kind.as_bytes() });
    put(buf, &mut at, b" filter) made syscall ");
    if syscall < 0 {
        put(buf, &mut at, b"-");
    }
    put_num(buf, &mut at, syscall.unsigned_abs());
    put(
        buf,
        &mut at,
        b", which its list does not allow; exiting with status ",
    );
    put_num(buf, &mut at, u64::from(VIOLATION_STATUS.unsigned_abs()));
    put(buf, &mut at, b"\n");
    at
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SIGSYS handler
    // installed with SA_SIGINFO; si_syscall is an int at this offset.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut buf = [0u8; 256];
    let n = violation_line(
        &mut buf,
        &NAME.with(Cell::get),
        KIND.with(Cell::get),
        i64::from(nr),
    );
    // SAFETY: write(2) and _exit(2) are async-signal-safe, and every filter
    // allows both; `buf` holds `n` initialized bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), n);
        libc::_exit(VIOLATION_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_both_programs() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Devices,
            ThreadKind::Api,
            ThreadKind::Agent,
            ThreadKind::Sampler,
            ThreadKind::Otlp,
        ] {
            for level in [Seccomp::Trap, Seccomp::Log] {
                let prog = program(kind, level).unwrap().unwrap();
                assert!(prog.len() > 10, "{kind} {level:?}");
            }
            assert!(program(kind, Seccomp::Off).unwrap().is_none());
        }
    }

    #[test]
    fn the_violation_line_names_thread_filter_and_syscall() {
        let mut buf = [0u8; 256];
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"rsrc-vcpu0");
        let n = violation_line(&mut buf, &name, "vcpu", 59);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "resourceful: seccomp: thread rsrc-vcpu0 (vcpu filter) made syscall 59, which its list does not allow; exiting with status 159\n"
        );
    }
}
