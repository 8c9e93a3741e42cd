//! Compiles the eBPF slot tagger (`bpf/slots.bpf.c`) to a BPF object with
//! clang; the agent embeds it (`src/tagger`). `CLANG=PATH` picks the
//! compiler.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/slots.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("slots.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c", src, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {clang} to build the agent's eBPF program ({e}): install clang \
                 (Debian: apt-get install clang) or set CLANG=/path/to/clang"
            )
        });
    assert!(status.success(), "{clang} failed to compile {src}");
}
