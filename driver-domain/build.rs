//! Links the kernel with `build/linker.ld` when building for the bare-metal target.
fn main() {
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    println!("cargo:rerun-if-changed=../build/linker.ld");
    if target_os == "none" {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/linker.ld");
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
        // The 32-bit entry stub uses absolute 32-bit addresses: a static, non-PIE image.
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    }
}
