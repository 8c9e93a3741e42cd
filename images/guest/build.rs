//! Gives each binary its linker script. (The freestanding code-generation
//! flags come from images/build.rs, which drives this build.)
//!
//! Separate scripts because `exit-cpl0` must not carry a PT_NOTE program
//! header at all, and GNU ld keeps a PHDRS entry even when it is empty.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bin=resourceful-test-guest=-T{dir}/linker.ld");
    println!("cargo:rustc-link-arg-bin=exit-cpl0=-T{dir}/exit_cpl0.ld");
    println!("cargo:rustc-link-arg-bin=exit-loop=-T{dir}/exit_cpl0.ld");
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=exit_cpl0.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
