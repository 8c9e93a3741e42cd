//! Compiles the seccomp allow-lists (`seccomp/<arch>.json`, seccompiler's
//! JSON format, one filter per thread kind) into BPF at build time, and
//! writes them as Rust constants that `src/sandbox.rs` includes.
//!
//! Why at build time: a list that does not parse, names a syscall this
//! architecture lacks, or misses a thread kind fails the build, not a VM
//! start; the binary carries ready BPF and no JSON compiler; and nothing
//! is read from disk at run time that an attacker could swap.
//!
//! Each filter is compiled twice: as written (`mismatch_action` "trap"),
//! and with every `mismatch_action` turned into "log" for the logging mode
//! used to regenerate the lists (docs/sandbox.md).
//!
//! seccompiler's format has one match action per filter, so the few
//! syscalls a thread must see fail with an errno rather than trap are kept
//! apart, in `seccomp/<arch>-errno.json` (`{syscall: {errno, kinds, why}}`),
//! and compiled here into a short prologue in front of each filter of those
//! kinds: `clone3` answers ENOSYS everywhere, so glibc falls back to
//! `clone`, whose flags a filter can check.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use seccompiler::{sock_filter, TargetArch};

/// The thread kinds `src/sandbox.rs` knows; the JSON must have each.
const KINDS: [&str; 7] = ["main", "vcpu", "devices", "api", "agent", "sampler", "otlp"];

// Classic BPF opcodes and seccomp constants (linux/filter.h, linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Syscall numbers of x86-64 by name (from seccompiler's own table, by
/// compiling a one-rule filter).
fn syscall_nr(name: &str) -> u32 {
    let json = format!(
        r#"{{"x": {{"mismatch_action": "allow", "match_action": "trap", "filter": [{{"syscall": "{name}"}}]}}}}"#
    );
    let prog = seccompiler::compile_from_json(json.as_bytes(), TargetArch::x86_64)
        .unwrap_or_else(|e| panic!("errno list: unknown syscall {name:?}: {e}"));
    // The program compares the syscall number with a JEQ against it.
    prog["x"]
        .iter()
        .find(|i| i.code == BPF_JEQ_K && i.k != AUDIT_ARCH_X86_64)
        .map(|i| i.k)
        .unwrap_or_else(|| panic!("no syscall number for {name:?}"))
}

/// The prologue of filter `kind`: each of its errno syscalls answers its
/// errno; anything else (or another arch) falls through to the filter.
fn prologue(kind: &str, errno: &serde_json::Value) -> Vec<sock_filter> {
    let rules: Vec<(u32, u32)> = errno
        .as_object()
        .expect("the errno list is a map")
        .iter()
        .filter(|(_, r)| r["kinds"].as_array().expect("kinds").iter().any(|k| k == kind))
        .map(|(name, r)| {
            let e = r["errno"].as_u64().expect("errno is a number");
            (syscall_nr(name), u32::try_from(e).expect("errno fits"))
        })
        .collect();
    if rules.is_empty() {
        return Vec::new();
    }
    let n = u8::try_from(rules.len()).expect("a few rules");
    let mut p = vec![
        insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        // Skip the rest of the prologue: the nr load and 2 per rule.
        insn(BPF_JEQ_K, 0, 1 + 2 * n, AUDIT_ARCH_X86_64),
        insn(BPF_LD_W_ABS, 0, 0, DATA_NR),
    ];
    for (nr, e) in rules {
        p.push(insn(BPF_JEQ_K, 0, 1, nr));
        p.push(insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | (e & 0xffff)));
    }
    p
}

fn compile(json: &serde_json::Value, errno: &serde_json::Value) -> BTreeMap<String, Vec<sock_filter>> {
    let text = serde_json::to_vec(json).expect("JSON serializes");
    let map = seccompiler::compile_from_json(text.as_slice(), TargetArch::x86_64)
        .unwrap_or_else(|e| panic!("vmm/seccomp/x86_64.json does not compile: {e}"));
    map.into_iter()
        .map(|(kind, prog)| {
            let mut all = prologue(&kind, errno);
            all.extend(prog);
            (kind, all)
        })
        .collect()
}

fn read_json(path: &Path) -> serde_json::Value {
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn emit(out: &mut String, name: &str, progs: &BTreeMap<String, Vec<sock_filter>>) {
    writeln!(out, "/// Compiled filters, by thread kind.").unwrap();
    writeln!(out, "pub static {name}: &[(&str, &[Insn])] = &[").unwrap();
    for (kind, prog) in progs {
        write!(out, "    ({kind:?}, &[").unwrap();
        for i in prog {
            write!(out, "({}, {}, {}, {:#x}), ", i.code, i.jt, i.jf, i.k).unwrap();
        }
        writeln!(out, "]),").unwrap();
    }
    writeln!(out, "];").unwrap();
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let path = manifest.join("seccomp/x86_64.json");
    let json = read_json(&path);
    let errno = read_json(&manifest.join("seccomp/x86_64-errno.json"));
    let filters = json.as_object().expect("the top level is a map of filters");
    for kind in KINDS {
        assert!(
            filters.contains_key(kind),
            "{} has no {kind:?} filter",
            path.display()
        );
    }
    for kind in filters.keys() {
        assert!(
            KINDS.contains(&kind.as_str()),
            "{}: unknown thread kind {kind:?}",
            path.display()
        );
    }
    let mut logging = json.clone();
    for f in logging.as_object_mut().expect("a map").values_mut() {
        f["mismatch_action"] = serde_json::Value::String("log".into());
    }
    let mut out =
        String::from("/// One BPF instruction: code, jt, jf, k.\npub type Insn = (u16, u8, u8, u32);\n");
    emit(&mut out, "TRAP", &compile(&json, &errno));
    emit(&mut out, "LOG", &compile(&logging, &errno));
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("seccomp_filters.rs");
    std::fs::write(&dest, out).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}
