//! `cargo xtask run --xen`: the nested Xen machine of the end-to-end run, interactive. dom0
//! creates usbdom with the controller, two guests, gives the stick to guest-a and the keyboard
//! to guest-b, lets guest-a read the stick, and then leaves a shell on the console
//! (`usbdom.mode=shell` in `tests/e2e/dom0-init.sh`). Ctrl-C ends QEMU.

fn main() {
    let machine = usbdom_tests::NestedXen::from_env();
    let mut qemu = usbdom_tests::qemu();
    qemu.args(machine.args("usbdom.mode=shell", None))
        .args(["-serial", "stdio"]);
    let status = qemu.status().unwrap_or_else(|e| {
        eprintln!("xen_shell: {qemu:?}: {e}");
        std::process::exit(1)
    });
    // Ctrl-C ends QEMU by SIGINT: the normal way out.
    if !status.success() && status.code().is_some() {
        eprintln!("xen_shell: QEMU exited with {status}");
        std::process::exit(1);
    }
}
