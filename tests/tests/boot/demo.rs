//! Demo mode (two simulated VMs served through usbback and the xHCI driver) and bench mode,
//! on the demo image.

use super::*;

/// `bytes` of xorshift64 output: the demo stick's content.
fn pseudo_random(bytes: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes);
    let mut x = seed;
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(bytes);
    out
}

/// The pattern the demo's VM `vm` writes at 12 MiB, written out again here so the check
/// does not share the kernel's code: lines `usbdom-demo vm=<vm> record=<n>`, cut to 4 KiB.
fn demo_pattern(vm: &str) -> Vec<u8> {
    let mut p: Vec<u8> = (0..)
        .take(200)
        .flat_map(|n| format!("usbdom-demo vm={vm} record={n}\n").into_bytes())
        .collect();
    p.truncate(4096);
    p
}

#[test]
fn demo_mode_serves_two_simulated_vms_through_usbback_and_the_xhci_driver() {
    use sha2::{Digest, Sha256};
    let stick = pseudo_random(16 << 20, 0x2545_f491_4f6c_dd1d);
    let mib = 4;
    let expected: String = Sha256::digest(&stick[..mib << 20])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Two controllers, as laptops pass to the USB VM. The stick is SuperSpeed on the first:
    // bus 2, port 1. The keyboard is on the second controller's first USB 2 port: bus 3
    // (Linux numbers the k-th controller's buses 2k - 1 and 2k), Linux's 3-1.
    let machine = Machine::new("q35", "demo")
        .demo_image()
        .usb_stick_with("stick", &stick)
        .arg("-device")
        .arg("qemu-xhci,id=xhci2")
        .arg("-device")
        .arg("usb-kbd,bus=xhci2.0,port=1")
        .append(&format!("assign=2-1:vm1,3-1:vm2 demo_mib={mib}"));
    let image = machine.scratch().join("stick.img");
    let run = machine.limit(Duration::from_secs(60)).boot();
    run.check(|r| {
        assert!(!r.timed_out, "QEMU did not exit in time");
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        assert!(r.event("panic").is_none());
        assert!(r.event("demo_failed").is_none());
        assert!(r.event("demo_protocol_error").is_none());
        let (_, boot) = r.event("boot").unwrap();
        assert_eq!(field(boot, "platform"), Some("native"), "{boot}");
        // Both controllers driven, each on its own buses and its own interrupt vector.
        let found: Vec<&str> = r.events("xhci_found").collect();
        assert_eq!(
            found
                .iter()
                .map(|l| (field(l, "index").unwrap(), field(l, "buses").unwrap()))
                .collect::<Vec<_>>(),
            [("0", "1,2"), ("1", "3,4")],
            "{found:#?}"
        );
        let vectors: Vec<&str> = r
            .events("msix_routed")
            .map(|l| field(l, "vector").unwrap())
            .collect();
        assert_eq!(vectors.len(), 2, "{vectors:?}");
        assert_ne!(vectors[0], vectors[1]);
        let enumerated: Vec<(&str, &str)> = r
            .events("usb_enumerated")
            .map(|l| (field(l, "index").unwrap(), field(l, "devices").unwrap()))
            .collect();
        assert_eq!(enumerated, [("0", "1"), ("1", "1")]);
        let (_, ready) = r.event("ready").unwrap();
        assert_eq!(field(ready, "xhci_controllers"), Some("2"), "{ready}");
        assert_eq!(field(ready, "usb_controllers"), Some("2"), "{ready}");

        let vms: Vec<&str> = r.events("demo_vm").collect();
        assert_eq!(vms.len(), 2, "{vms:#?}");
        assert_eq!(field(vms[0], "busid"), Some("2-1"), "{}", vms[0]);
        assert_eq!(field(vms[1], "busid"), Some("3-1"), "{}", vms[1]);
        // usbctl attach's way: once the backend offers the device and waits for the VM.
        let attached: Vec<(&str, &str)> = r
            .events("demo_attach")
            .map(|l| (field(l, "vm").unwrap(), field(l, "busid").unwrap()))
            .collect();
        assert_eq!(attached.len(), 2, "{attached:?}");
        assert!(attached.contains(&("vm1", "2-1")) && attached.contains(&("vm2", "3-1")));
        // Each guest enumerates its device through usbback as Linux does.
        for vm in ["vm1", "vm2"] {
            for step in ["connected", "device_descriptor", "address", "configured"] {
                assert!(
                    r.events(&format!("demo_{step}"))
                        .any(|l| field(l, "vm") == Some(vm)),
                    "no demo_{step} of {vm}"
                );
            }
        }
        let desc = r
            .events("demo_device_descriptor")
            .find(|l| field(l, "vm") == Some("vm1"))
            .unwrap();
        assert_eq!(field(desc, "vid"), Some("46f4"), "{desc}");
        // The SuperSpeed stick is shown to the guest as a high-speed device.
        assert_eq!(field(desc, "usb"), Some("0210"), "{desc}");

        let (_, read) = r.event("demo_read").expect("event=demo_read");
        println!("demo: {read}");
        assert_eq!(field(read, "vm"), Some("vm1"));
        assert_eq!(field(read, "bytes"), Some(&*format!("{}", mib << 20)));
        assert_eq!(field(read, "sha256"), Some(expected.as_str()), "{read}");
        let (_, write) = r.event("demo_write").expect("event=demo_write");
        assert_eq!(field(write, "lba"), Some("24576"), "{write}");
        let (_, verify) = r.event("demo_verify").expect("event=demo_verify");
        assert_eq!(field(verify, "match"), Some("true"), "{verify}");
        let after = std::fs::read(&image).unwrap();
        let at = 24576 * 512;
        assert_eq!(
            &after[at..at + 4096],
            &demo_pattern("vm1")[..],
            "the image holds vm1's pattern at 12 MiB"
        );
        assert_eq!(&after[..at], &stick[..at], "nothing else was written");
        assert_eq!(&after[at + 4096..], &stick[at + 4096..]);

        let reports: Vec<&str> = r
            .events("demo_keyboard_report")
            .filter(|l| field(l, "vm") == Some("vm2"))
            .collect();
        assert_eq!(reports.len(), 3, "{reports:#?}");
        assert!(
            reports
                .iter()
                .all(|l| field(l, "report").unwrap().len() == 16),
            "{reports:#?}"
        );
        let done: Vec<&str> = r.events("demo_done").collect();
        assert!(
            done.iter()
                .any(|l| field(l, "vm") == Some("vm1") && field(l, "device") == Some("storage")),
            "{done:#?}"
        );
        assert!(
            done.iter()
                .any(|l| field(l, "vm") == Some("vm2") && field(l, "device") == Some("keyboard")),
            "{done:#?}"
        );

        for stats in r.events("demo_backend_stats") {
            assert_eq!(field(stats, "errors"), Some("0"), "{stats}");
        }
        let (_, finished) = r.event("demo_finished").expect("event=demo_finished");
        println!("demo: {finished}");
        for (k, v) in [
            ("vms", "2"),
            ("failed", "0"),
            ("protocol_errors", "0"),
            ("backend_in_flight", "0"),
            ("frontend_in_flight", "0"),
        ] {
            assert_eq!(field(finished, k), Some(v), "{finished}");
        }
    });
}

#[test]
fn bench_mode_measures_both_paths_side_by_side_and_vms_at_once() {
    // What `cargo xtask bench qemu` runs, small: one round of 1 MiB, two sticks.
    let machine = Machine::new("q35", "demo-bench")
        .demo_image()
        .usb_stick("stick1")
        .usb_stick("stick2")
        .append("demo bench=1 demo_mib=1 assign=2-1:vm1,2-2:vm2");
    let run = machine.limit(Duration::from_secs(60)).boot();
    run.check(|r| {
        assert!(!r.timed_out, "QEMU did not exit in time");
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        assert!(r.event("bench_failed").is_none());
        assert!(r.event("demo_failed").is_none());
        for op in ["read", "write"] {
            for path in ["direct", "ring"] {
                let round = r
                    .events("bench_round")
                    .find(|l| field(l, "op") == Some(op) && field(l, "path") == Some(path))
                    .unwrap_or_else(|| panic!("no {path} {op} round"));
                assert_eq!(field(round, "bytes"), Some("1048576"), "{round}");
            }
            let ratio = r
                .events("bench_ratio")
                .find(|l| field(l, "op") == Some(op))
                .unwrap_or_else(|| panic!("no {op} ratio"));
            println!("bench: {ratio}");
            let value: f64 = field(ratio, "ratio").unwrap().parse().unwrap();
            assert!(value > 0.0, "{ratio}");
            assert_eq!(field(ratio, "in_flight"), Some("16"), "{ratio}");
        }
        let vms: Vec<&str> = r.events("bench_vms").collect();
        assert_eq!(
            vms.iter()
                .map(|l| field(l, "vms").unwrap())
                .collect::<Vec<_>>(),
            ["1", "2"],
            "{vms:#?}"
        );
        let (_, done) = r.event("bench_done").expect("event=bench_done");
        assert_eq!(field(done, "vms_with_sticks"), Some("2"), "{done}");
        let (_, finished) = r.event("demo_finished").expect("event=demo_finished");
        assert_eq!(
            field(finished, "backend_in_flight"),
            Some("0"),
            "{finished}"
        );
        assert_eq!(field(finished, "protocol_errors"), Some("0"), "{finished}");
    });
}
