//! The end-to-end run on real Xen: QEMU (TCG) runs Xen 4.17 with a Debian dom0; dom0 passes
//! the xHCI controller to usbdom (an HVM domU) and plays the scenario in
//! `tests/e2e/dom0-init.sh`, reporting `E2E: …` lines; every guest's log comes back as
//! `LOG <file>: …` lines. `cargo xtask e2e` prepares the artefacts and runs this.

use std::time::Duration;

use std::process::Command;

use usbdom_tests::{field, run_qemu};

fn artefact(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run `cargo xtask e2e`"))
}

#[test]
#[ignore = "needs the e2e artefacts: cargo xtask e2e"]
fn xen_end_to_end() {
    let (xen, kernel, initrd, stick_image) = (
        artefact("USBDOM_E2E_XEN"),
        artefact("USBDOM_E2E_KERNEL"),
        artefact("USBDOM_E2E_INITRD"),
        artefact("USBDOM_E2E_STICK"),
    );
    // The outer machine of ../shared/docs/xen-in-qemu.md: q35, an IOMMU for passthrough,
    // `max,-smap` (plain max crashes the PV dom0), the xHCI away from 00:02.0.
    let args: Vec<String> = [
        "-M", "q35", "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max,-smap", "-smp", "2",
        "-m", "2048", "-display", "none", "-nodefaults", "-no-reboot", "-serial", "stdio",
        "-device", "intel-iommu,intremap=on", "-device", "qemu-xhci,id=xhci,addr=0x5",
        "-drive", &format!("if=none,id=usbdisk,file={stick_image},format=raw"),
        "-device", "usb-storage,bus=xhci.0,drive=usbdisk",
        "-device", "usb-kbd,bus=xhci.0", "-device", "usb-hub,bus=xhci.0,port=3",
        "-kernel", &xen,
        "-append", "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1024M,max:1024M dom0_max_vcpus=2 noreboot",
        "-initrd", &format!("{kernel} console=hvc0 loglevel=6 rdinit=/init,{initrd}"),
    ]
    .map(String::from)
    .to_vec();
    let run = run_qemu(&args, Duration::from_secs(20 * 60), |l| {
        l.starts_with("E2E: done")
    });
    let marks: Vec<(Duration, &str)> = run
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("E2E: "))
        .map(|(t, l)| (*t, l.as_str()))
        .collect();
    for (t, l) in &marks {
        println!("e2e: {:>7.1} s  {}", t.as_secs_f64(), &l[5..]);
    }
    let usbdom: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("LOG usbdom-serial.log: "))
        .collect();
    for l in &usbdom {
        println!("usbdom| {l}");
    }
    for (_, l) in &run.lines {
        if let Some(l) = l.strip_prefix("LOG guest-usbdom-pvh.log: ") {
            println!("usbdom-pvh| {l}");
        }
    }
    let guest: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("LOG guest-guest.log: "))
        .collect();
    for l in guest
        .iter()
        .filter(|l| l.contains("guest:") || l.contains("xen_hcd") || l.contains("usb"))
    {
        println!("guest | {l}");
    }
    let usbdom_event = |name: &str| {
        usbdom
            .iter()
            .copied()
            .find(|l| l.split_whitespace().any(|w| w == format!("event={name}")))
    };
    run.check(|r| {
        assert!(!r.timed_out, "the run did not finish in 20 minutes");
        assert!(
            marks.iter().any(|(_, l)| l.contains("result=pass")),
            "the dom0 scenario failed"
        );
        let boot = usbdom_event("boot").expect("usbdom logged event=boot");
        assert_eq!(field(boot, "platform"), Some("xen-hvm"));
        let xen = usbdom_event("xen").expect("usbdom set Xen up");
        assert!(
            field(xen, "version").is_some_and(|v| v.starts_with("4.17")),
            "{xen}"
        );
        assert!(
            usbdom_event("xenstore").is_some(),
            "usbdom reached xenstore"
        );
        let found = usbdom_event("xhci_found").expect("the passed-through controller is found");
        assert_eq!(field(found, "vid"), Some("1b36"));
        assert!(usbdom_event("msix_routed").is_some());
        // The driver runs the passed-through controller: No Ops complete, their MSI-X
        // interrupts arrive through Xen, and QEMU's devices are enumerated.
        let noop = usbdom_event("xhci_noop").expect("event=xhci_noop");
        assert_eq!(field(noop, "ok"), Some("true"));
        let ready = usbdom_event("ready").expect("event=ready");
        let irqs: u64 = field(ready, "xhci_interrupts").unwrap().parse().unwrap();
        assert!(irqs > 0, "MSI-X delivered through Xen: {ready}");
        let found: Vec<(&str, &str)> = usbdom
            .iter()
            .filter(|l| l.contains("event=usb_device "))
            .map(|l| (field(l, "busid").unwrap(), field(l, "vid").unwrap()))
            .collect();
        for want in [("2-1", "46f4"), ("1-2", "0627"), ("1-3", "0409")] {
            assert!(found.contains(&want), "{want:?} enumerated: {found:?}");
        }
        // dom0 sees what usbdom offers: the stick and the keyboard, not the hub.
        let offered: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("ASSIGNABLE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(offered, ["1-2", "2-1"], "usbctl list-assignable-devices");
        assert!(usbdom_event("ready").is_some());
        let phases: Vec<&str> = marks
            .iter()
            .filter_map(|(_, l)| field(l, "phase"))
            .collect();
        for p in [
            "usbdom_ready",
            "guest_ready",
            "hc_created",
            "frontend_connected",
            "guest_hc_registered",
            "hc_destroyed",
        ] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let connected = usbdom_event("frontend_connected").expect("event=frontend_connected");
        assert_eq!(
            (field(connected, "ports"), field(connected, "usb_ver")),
            (Some("8"), Some("2"))
        );
        let hc = guest
            .iter()
            .find(|l| l.contains("guest: hc "))
            .expect("the guest registered a controller");
        assert_eq!(field(hc, "ports"), Some("8"));
        // The guest's own xen-hcd enumerated both devices through usbdom: descriptors,
        // SET_ADDRESS and SET_CONFIGURATION over the rings, the stick's SuperSpeed
        // descriptors rewritten so Linux takes it as a high-speed device.
        for p in ["guest_keyboard", "guest_stick"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let usbdev = |vid: &str| {
            guest
                .iter()
                .copied()
                .find(|l| l.contains("guest: usbdev ") && field(l, "vid") == Some(vid))
                .unwrap_or_else(|| panic!("the guest has no device {vid}"))
        };
        let kbd = usbdev("0627");
        println!("e2e: {kbd}");
        assert_eq!(field(kbd, "config"), Some("1"), "{kbd}");
        let stick = usbdev("46f4");
        println!("e2e: {stick}");
        assert_eq!(field(stick, "speed"), Some("480"), "{stick}");
        assert_eq!(field(stick, "config"), Some("1"), "{stick}");
        for busid in ["1-2", "2-1"] {
            let connected = usbdom
                .iter()
                .find(|l| l.contains("event=port_connected") && field(l, "busid") == Some(busid))
                .unwrap_or_else(|| panic!("usbdom connected {busid}"));
            assert_eq!(field(connected, "reported_speed"), Some("3"), "{connected}");
        }
        // The stick's data through usbdom: the guest's hash of its first 16 MiB is the host
        // image's (the guest writes only further on).
        assert!(phases.contains(&"guest_disk"), "phases: {phases:?}");
        let sum = guest
            .iter()
            .find_map(|l| l.split("guest: sda sha256=").nth(1))
            .expect("the guest hashed the stick")
            .trim();
        let image = std::fs::read(&stick_image).unwrap();
        let host_sum = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(&image[..16 << 20])?;
                c.wait_with_output()
            })
            .unwrap();
        let host_sum = String::from_utf8_lossy(&host_sum.stdout);
        println!("e2e: guest sha256={sum} host sha256={}", &host_sum[..64]);
        assert_eq!(sum, &host_sum[..64], "the guest read the stick's bytes");
        // And what the guest wrote through usbdom is in the host image.
        let wrote = guest
            .iter()
            .find(|l| l.contains("guest: sda wrote="))
            .expect("the guest wrote");
        assert!(wrote.contains("wrote=ok"), "{wrote}");
        let pattern = b"usbdom-e2e-written-by-the-guest";
        let at = 65536 * 512;
        assert_eq!(
            &image[at..at + pattern.len()],
            pattern,
            "the guest's write is on the stick"
        );
        let assigned: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("ASSIGNED "))
            .collect();
        assert_eq!(assigned.len(), 2, "{assigned:?}");
        assert!(
            usbdom_event("vusb_removed").is_some(),
            "usbdom removed the device"
        );

        // The same image as a PVH domU, its log read from xenconsoled's file (PV console).
        let pvh: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("LOG guest-usbdom-pvh.log: "))
            .collect();
        let pvh_event = |name: &str| {
            pvh.iter()
                .copied()
                .find(|l| l.split_whitespace().any(|w| w == format!("event={name}")))
        };
        for p in [
            "usbdom_pvh_ready",
            "pvh_frontend_connected",
            "pvh_hc_destroyed",
        ] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        assert_eq!(
            field(pvh_event("boot").expect("PVH boot"), "platform"),
            Some("xen-pvh")
        );
        assert!(
            pvh_event("no_controller").is_some(),
            "PVH has no controller and says so"
        );
        let connected = pvh_event("frontend_connected").expect("PVH serves PVUSB");
        assert_eq!(
            (field(connected, "ports"), field(connected, "usb_ver")),
            (Some("4"), Some("1"))
        );
    });
}
