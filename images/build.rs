//! Builds the freestanding guest programs in `guest/` (a separate Cargo
//! project, excluded from the workspace) with the guest's own flags and
//! target directory, and tells `src/lib.rs` where the ELF files are.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The guest is a static, freestanding x86-64 ELF. This target is the one
/// every x86-64 Linux host has installed; `-nostdlib`, the static relocation
/// model and the linker scripts (per binary, from `guest/build.rs`) make the
/// result bare-metal.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The guest's code-generation flags, passed as `CARGO_ENCODED_RUSTFLAGS`
/// (so they apply to the guest crates only, not to its build script).
const GUEST_RUSTFLAGS: &[&str] = &[
    "-C",
    "relocation-model=static",
    "-C",
    "target-feature=+crt-static",
    "-C",
    "link-arg=-nostdlib",
    "-C",
    "link-arg=-static",
    "-C",
    "link-arg=-Wl,--build-id=none",
    "-C",
    "panic=abort",
];

/// Guest binaries and the `rustc-env` variable carrying each one's path.
const BINARIES: &[(&str, &str)] = &[
    ("resourceful-test-guest", "RESOURCEFUL_TEST_GUEST_ELF"),
    ("exit-cpl0", "RESOURCEFUL_EXIT_CPL0_ELF"),
    ("exit-loop", "RESOURCEFUL_EXIT_LOOP_ELF"),
];

/// Variables of the parent build that must not leak into the guest build
/// (besides every `CARGO_CFG_*`, `CARGO_FEATURE_*`, `CARGO_PKG_*` and
/// `CARGO_PROFILE_*`, removed by prefix).
const LEAKING: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "TARGET",
    "HOST",
    "PROFILE",
    "OUT_DIR",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
];

const LEAKING_PREFIXES: &[&str] = &["CARGO_CFG_", "CARGO_FEATURE_", "CARGO_PKG_", "CARGO_PROFILE_"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let guest_dir = manifest_dir.join("guest");
    let guest_manifest = guest_dir.join("Cargo.toml");
    let target_dir = out_dir.join("guest-target");

    for path in [
        guest_dir.join("src"),
        guest_dir.join("Cargo.toml"),
        guest_dir.join("Cargo.lock"),
        guest_dir.join("build.rs"),
        guest_dir.join("linker.ld"),
        guest_dir.join("exit_cpl0.ld"),
        manifest_dir.join("../accounting/src"),
        manifest_dir.join("../accounting/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--manifest-path")
        .arg(&guest_manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if LEAKING.contains(&k) || LEAKING_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", GUEST_RUSTFLAGS.join("\x1f"));

    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("could not run {cargo:?} to build the guest programs: {e}"),
    };
    if !output.status.success() {
        panic!(
            "building the guest programs ({}) failed with {}:\n--- stderr ---\n{}\n--- stdout ---\n{}",
            guest_manifest.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        );
    }
    // Shown with `cargo build -vv`.
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));

    let bin_dir = target_dir.join(GUEST_TARGET).join("release");
    for (bin, var) in BINARIES {
        let path = bin_dir.join(bin);
        assert!(path.is_file(), "guest build did not produce {}", path.display());
        println!("cargo:rustc-env={var}={}", path.display());
    }
}
