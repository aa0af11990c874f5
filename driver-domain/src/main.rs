//! `usbdom`, the driver domain kernel. It only exists for the bare-metal target; on the host
//! this binary just says how to build it (the platform logic is tested through the library).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod kernel;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("usbdom is a guest kernel: build it with `cargo xtask image` and boot it with `cargo xtask run`");
    std::process::exit(2);
}
