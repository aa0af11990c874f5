//! The end-to-end run on real Xen: QEMU (TCG) runs Xen 4.17 with a Debian dom0; dom0 passes
//! the xHCI controller to usbdom (an HVM domU) and plays the scenario in
//! `tests/e2e/dom0-init.sh`, reporting `E2E: …` lines; every guest's log comes back as
//! `LOG <file>: …` lines. `cargo xtask e2e` prepares the artefacts and runs this.

use std::time::Duration;

use std::process::Command;

use usbdom_tests::{field, key_event, qmp, run_qemu_probed, NestedXen, StallProbe};

#[test]
#[ignore = "needs the e2e artefacts: cargo xtask e2e"]
fn xen_end_to_end() {
    let machine = NestedXen::from_env();
    let stick_image = machine.stick.clone();
    let socket = std::env::temp_dir().join(format!("usbdom-e2e-{}.qmp", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    // USBDOM_E2E_CANARY=<MiB>: dom0 keeps that much memory in a known pattern and reports
    // any change (`E2E-CANARY` lines): evidence of another party's writes into dom0.
    let canary = std::env::var("USBDOM_E2E_CANARY")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(String::new(), |mib| format!(" usbdom.canary={mib}"));
    let mut args = machine.args(&format!("usbdom.mode=test{canary}"), Some(&socket));
    args.extend(["-serial".into(), "stdio".into()]);
    // dom0's scenario asks for what only the host can do: `E2E: want=<what>`.
    let keys = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .flat_map(|k| [true, false].map(|down| (k, down)))
            .map(|(k, down)| key_event(k, down))
            .collect()
    };
    let host_action = |what: &str| match what {
        "keys_abc" | "keys_fg" | "keys_de" | "keys_hi" => {
            let names: &[&str] = match what {
                "keys_abc" => &["a", "b", "c"],
                "keys_fg" => &["f", "g"],
                "keys_de" => &["d", "e"],
                _ => &["h", "i"],
            };
            for k in keys(names) {
                qmp(&socket, &[&k]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        "unplug" => qmp(
            &socket,
            &[r#"{"execute":"device_del","arguments":{"id":"stick"}}"#],
        ),
        "replug" => qmp(
            &socket,
            &[
                &format!(
                    r#"{{"execute":"blockdev-add","arguments":{{"driver":"raw","node-name":"usbdisk2","file":{{"driver":"file","filename":"{stick_image}"}}}}}}"#
                ),
                r#"{"execute":"device_add","arguments":{"driver":"usb-storage","bus":"xhci.0","port":"1","drive":"usbdisk2","id":"stick2"}}"#,
            ],
        ),
        // The keyboard pulled out and put into another port of its controller.
        "move_keyboard" => qmp(
            &socket,
            &[
                r#"{"execute":"device_del","arguments":{"id":"kbd"}}"#,
                r#"{"execute":"device_add","arguments":{"driver":"usb-kbd","bus":"xhci2.0","port":"2","id":"kbd2"}}"#,
            ],
        ),
        // Another model at the tablet's port: what a device that switches modes looks like.
        "swap_tablet" => qmp(
            &socket,
            &[
                r#"{"execute":"device_del","arguments":{"id":"tablet"}}"#,
                r#"{"execute":"device_add","arguments":{"driver":"usb-mouse","bus":"xhci.0","port":"3.1","id":"mouse"}}"#,
            ],
        ),
        // Three moves right of 5: guest-b's mouse adds up 15.
        "mouse_moves" => {
            for _ in 0..3 {
                qmp(
                    &socket,
                    &[
                        r#"{"execute":"input-send-event","arguments":{"events":[{"type":"rel","data":{"axis":"x","value":5}}]}}"#,
                    ],
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        other => panic!("dom0 asked for {other}"),
    };
    // Every step of the scenario fails on its own after a bounded wait; this only catches
    // a machine that stopped altogether.
    // A machine silent for 150 s (no step waits that long without a line; dom0's watchdog
    // speaks after 90) is asked what it is doing before the limit ends it
    // (tests/src/stall.rs).
    let probe = StallProbe {
        qmp: socket.clone(),
        after: Duration::from_secs(150),
    };
    let run = run_qemu_probed(&args, Duration::from_secs(10 * 60), Some(&probe), |l| {
        if let Some(what) = l.strip_prefix("E2E: want=") {
            host_action(what.split_whitespace().next().unwrap_or(""));
        }
        l.starts_with("E2E: done")
    });
    let _ = std::fs::remove_file(&socket);
    let marks: Vec<(Duration, &str)> = run
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("E2E: "))
        .map(|(t, l)| (*t, l.as_str()))
        .collect();
    for (t, l) in &marks {
        println!("e2e: {:>7.1} s  {}", t.as_secs_f64(), &l[5..]);
    }
    // From its last boot: a driver domain the nested machine ended while it booted was made
    // again (dom0-init.sh's `ready`), and the log file holds both.
    let usbdom_all: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("LOG guest-usbdom.log: "))
        .collect();
    let last_boot = usbdom_all
        .iter()
        .rposition(|l| l.contains("event=boot "))
        .unwrap_or(0);
    let usbdom: Vec<&str> = usbdom_all[last_boot..].to_vec();
    // The serial file gets the same lines, paced (`driver-domain/src/kernel/logger.rs`).
    let serial: Vec<&str> = run
        .lines
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("LOG usbdom-serial.log: "))
        .collect();
    for l in &usbdom {
        println!("usbdom| {l}");
    }
    for (_, l) in &run.lines {
        if l.starts_with("usbctl-up: ")
            || l.starts_with("unit: ")
            || l.starts_with("unit-main: ")
            || l.starts_with("monitor: ")
            || l.starts_with("LOG dom0-free: ")
        {
            println!("dom0  | {l}");
        }
        if let Some(l) = l.strip_prefix("LOG guest-usbdom-pvh.log: ") {
            println!("usbdom-pvh| {l}");
        }
    }
    let guest_log = |name: &str| -> Vec<&str> {
        let prefix = format!("LOG guest-{name}.log: ");
        run.lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(prefix.as_str()))
            .collect()
    };
    let (guest_a, guest_b) = (guest_log("guest-a"), guest_log("guest-b"));
    for (name, log) in [("a", &guest_a), ("b", &guest_b)] {
        for l in log
            .iter()
            .filter(|l| l.contains("guest:") || l.contains("xen_hcd") || l.contains("usb"))
            .filter(|l| !l.contains("guest: hc ") && !l.contains("guest: usbdev "))
        {
            println!("guest-{name}| {l}");
        }
    }
    let usbdom_event = |name: &str| first_event(&usbdom, name);
    let canary_lines: Vec<&str> = run
        .lines
        .iter()
        .filter(|(_, l)| l.starts_with("E2E-CANARY "))
        .map(|(_, l)| l.as_str())
        .collect();
    for l in &canary_lines {
        println!("{l}");
    }
    run.check(|r| {
        assert!(!r.timed_out, "the run did not finish in 10 minutes");
        assert!(
            canary_lines.is_empty(),
            "something other than dom0 wrote into dom0's memory"
        );
        assert!(
            marks.iter().any(|(_, l)| l.contains("result=pass")),
            "the dom0 scenario failed: {}",
            marks
                .iter()
                .find(|(_, l)| l.contains("result=fail"))
                .map_or("no result line", |(_, l)| *l)
        );
        // The IOMMU keeps its own tables (see `NestedXen::args`): VT-d cannot walk an AMD
        // nested p2m.
        assert!(
            !r.lines
                .iter()
                .any(|(_, l)| l.contains("Shared EPT tables enabled")),
            "Xen must not share the p2m with the emulated IOMMU"
        );
        // The serial port gets its bytes only when usbdom is idle, some 50 a second under
        // nesting: it carries the boot, but how far past that it gets while guests read
        // all the time depends on the run. The PV console carries everything at once.
        for event in ["event=boot ", "event=ready "] {
            assert!(
                serial.iter().any(|l| l.contains(event)),
                "the serial log has {event}"
            );
        }
        assert!(
            usbdom.iter().any(|l| l.contains("event=frontend_connected ")),
            "the console log has event=frontend_connected"
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
        // Two controllers passed through, as a laptop passes its PCH's and Thunderbolt's: the
        // stick, the hub and the tablet on the first (buses 1 and 2), the keyboard on the
        // second (buses 3 and 4), each with its own MSI-X vector through Xen.
        let found: Vec<&str> = usbdom
            .iter()
            .copied()
            .filter(|l| l.contains("event=xhci_found "))
            .collect();
        assert_eq!(
            found
                .iter()
                .map(|l| (field(l, "vid"), field(l, "buses")))
                .collect::<Vec<_>>(),
            [(Some("1b36"), Some("1,2")), (Some("1b36"), Some("3,4"))],
            "{found:#?}"
        );
        let vectors: Vec<&str> = usbdom
            .iter()
            .filter(|l| l.contains("event=msix_routed "))
            .filter_map(|l| field(l, "vector"))
            .collect();
        assert_eq!(vectors.len(), 2, "{vectors:?}");
        assert_ne!(vectors[0], vectors[1], "a vector per controller");
        // The driver runs the passed-through controller: No Ops complete, their MSI-X
        // interrupts arrive through Xen, and QEMU's devices are enumerated.
        let noop = usbdom_event("xhci_noop").expect("event=xhci_noop");
        assert_eq!(field(noop, "ok"), Some("true"));
        let ready = usbdom_event("ready").expect("event=ready");
        let irqs: u64 = field(ready, "xhci_interrupts").unwrap().parse().unwrap();
        assert!(irqs > 0, "MSI-X delivered through Xen: {ready}");
        assert_eq!(field(ready, "usb_controllers"), Some("2"), "{ready}");
        let enumerated: Vec<(&str, &str)> = usbdom
            .iter()
            .filter(|l| l.contains("event=usb_enumerated "))
            .map(|l| (field(l, "index").unwrap(), field(l, "devices").unwrap()))
            .collect();
        assert_eq!(
            enumerated.iter().map(|e| e.0).collect::<Vec<_>>(),
            ["0", "1"],
            "{enumerated:?}"
        );
        assert_eq!(enumerated[1].1, "1", "the keyboard on the second: {enumerated:?}");
        let found: Vec<(&str, &str)> = usbdom
            .iter()
            .filter(|l| l.contains("event=usb_device "))
            .map(|l| (field(l, "busid").unwrap(), field(l, "vid").unwrap()))
            .collect();
        for want in [
            ("2-1", "46f4"),
            ("3-1", "0627"),
            ("1-3", "0409"),
            ("1-3.1", "056a"),
        ] {
            assert!(found.contains(&want), "{want:?} enumerated: {found:?}");
        }
        // dom0 sees what usbdom offers: the stick and the keyboard, not the hub.
        let offered: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("ASSIGNABLE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            offered,
            ["1-3.1", "2-1", "3-1"],
            "usbctl list-assignable-devices"
        );
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
        // guest-a's frontend is ours (pvusb-hcd) on a USB 3 controller: it takes the 16-page
        // URB ring and the persistent grants usbdom offers. guest-b's stock xen-hcd ignores
        // both: one page, 16 entries, fresh grants.
        let domains = marks
            .iter()
            .find(|(_, l)| field(l, "phase") == Some("domains"))
            .map(|(_, l)| *l)
            .expect("phase=domains");
        let connected = |guest: &str| {
            let domid = field(domains, guest).expect("the guest's domid");
            usbdom
                .iter()
                .copied()
                .find(|l| l.contains("event=frontend_connected ") && field(l, "domid") == Some(domid))
                .unwrap_or_else(|| panic!("usbdom connected {guest}'s frontend"))
        };
        fn negotiated(l: &str) -> [Option<&str>; 5] {
            ["ports", "usb_ver", "urb_ring_pages", "urb_ring_size", "persistent"]
                .map(|k| field(l, k))
        }
        let (a, b) = (connected("guest_a"), connected("guest_b"));
        println!("e2e: usbdom connected guest-a: {a}");
        println!("e2e: usbdom connected guest-b: {b}");
        assert_eq!(
            negotiated(a),
            ["8", "3", "16", "256", "yes"].map(Some),
            "guest-a (pvusb-hcd): {a}"
        );
        assert_eq!(
            negotiated(b),
            ["8", "2", "1", "16", "no"].map(Some),
            "guest-b (xen-hcd): {b}"
        );
        let hcd = guest_a
            .iter()
            .find(|l| l.contains("event=hcd_connected "))
            .expect("pvusb-hcd logged event=hcd_connected in guest-a");
        assert_eq!(
            ["usb_ver", "urb_ring_pages", "urb_ring_size", "persistent", "indirect_segments"]
                .map(|k| field(hcd, k)),
            ["3", "16", "256", "yes", "256"].map(Some),
            "{hcd}"
        );
        for (name, log) in [("guest-a", &guest_a), ("guest-b", &guest_b)] {
            let hc = log
                .iter()
                .find(|l| l.contains("guest: hc "))
                .unwrap_or_else(|| panic!("{name} registered a controller"));
            assert_eq!(field(hc, "ports"), Some("8"), "{name}: {hc}");
        }
        // Each guest's own frontend enumerated its device through usbdom: descriptors,
        // SET_ADDRESS and SET_CONFIGURATION over the rings; the stick is SuperSpeed in
        // guest-a (on its USB 3 root hub).
        for p in ["guest_keyboard", "guest_stick"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let usbdev = |log: &[&'_ str], vid: &str| -> String {
            log.iter()
                .find(|l| l.contains("guest: usbdev ") && field(l, "vid") == Some(vid))
                .unwrap_or_else(|| panic!("no device {vid} in the guest"))
                .to_string()
        };
        let kbd = usbdev(&guest_b, "0627");
        println!("e2e: guest-b {kbd}");
        assert_eq!(field(&kbd, "config"), Some("1"), "{kbd}");
        let stick = usbdev(&guest_a, "46f4");
        println!("e2e: guest-a {stick}");
        assert_eq!(field(&stick, "speed"), Some("5000"), "{stick}");
        assert_eq!(field(&stick, "config"), Some("1"), "{stick}");
        assert!(
            !guest_a
                .iter()
                .any(|l| l.contains("guest: usbdev ") && field(l, "vid") == Some("0627")),
            "guest-a sees only its own device"
        );
        // Once guest-a was gone, the stick went to guest-b's USB 2 controller: high speed
        // there, with descriptors rewritten so that Linux takes them without a word.
        assert!(phases.contains(&"guest_b_disk"), "phases: {phases:?}");
        let stick_b = usbdev(&guest_b, "46f4");
        println!("e2e: guest-b {stick_b}");
        assert_eq!(field(&stick_b, "speed"), Some("480"), "{stick_b}");
        assert_eq!(field(&stick_b, "config"), Some("1"), "{stick_b}");
        for (g, log) in [("guest-a", &guest_a), ("guest-b", &guest_b)] {
            let warned: Vec<&&str> = log
                .iter()
                .filter(|l| l.contains("descriptor too short"))
                .collect();
            assert!(warned.is_empty(), "{g}: {warned:?}");
        }
        let connects = |busid: &str, guest: &str| -> Vec<&str> {
            let domid = field(domains, guest).expect("the guest's domid");
            usbdom
                .iter()
                .copied()
                .filter(|l| {
                    l.contains("event=port_connected")
                        && field(l, "busid") == Some(busid)
                        && field(l, "domid") == Some(domid)
                })
                .collect()
        };
        // The keyboard is high speed (3); the stick SuperSpeed (4) on guest-a's USB 3
        // controller, high speed on guest-b's USB 2 one.
        for (busid, guest, speed) in [
            ("3-1", "guest_b", "3"),
            ("2-1", "guest_a", "4"),
            ("2-1", "guest_b", "3"),
        ] {
            let c = connects(busid, guest);
            assert!(!c.is_empty(), "{busid} was connected to {guest}");
            for c in c {
                assert_eq!(field(c, "reported_speed"), Some(speed), "{c}");
            }
        }
        // The stick's data through usbdom: guest-a's hash of its first 16 MiB is the host
        // image's (the guest writes only further on), before and after the replug.
        assert!(phases.contains(&"guest_disk"), "phases: {phases:?}");
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
        let host_sum = String::from_utf8_lossy(&host_sum.stdout)[..64].to_string();
        let sums: Vec<(&str, &str)> = guest_a
            .iter()
            .filter_map(|l| l.split("guest: sda sha256=").nth(1))
            .map(|l| (&l[..64.min(l.len())], field(l, "round").unwrap_or("?")))
            .collect();
        println!("e2e: guest-a sums {sums:?}, host sha256={host_sum}");
        assert_eq!(
            sums,
            [(host_sum.as_str(), "1"), (host_sum.as_str(), "2")],
            "guest-a read the stick's bytes, before and after the replug"
        );
        let sums_b: Vec<&str> = guest_b
            .iter()
            .filter_map(|l| l.split("guest: sda sha256=").nth(1))
            .map(|l| &l[..64.min(l.len())])
            .collect();
        assert_eq!(
            sums_b,
            [host_sum.as_str()],
            "guest-b read the same bytes through xen-hcd"
        );
        // And what the guest wrote through usbdom is in the host image.
        let wrote = guest_a
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
        assert_eq!(
            assigned.iter().filter(|l| !l.contains("assigned=none")).count(),
            2,
            "{assigned:?}"
        );

        // Keys typed into the outer QEMU reached guest-b's evdev in order, before and after
        // guest-a was destroyed and after the keyboard moved to another port (a=30 b=48
        // c=46 d=32 e=18 h=35 i=23, down 1 then up 0).
        for p in ["keys_typed", "keys_after_destroy", "keyboard_followed"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let keys = guest_b
            .iter()
            .filter_map(|l| l.split("guest: keys ").nth(1))
            .next_back()
            .expect("guest-b read keys")
            .trim();
        assert_eq!(
            keys,
            "30:1 30:0 48:1 48:0 46:1 46:0 33:1 33:0 34:1 34:0 32:1 32:0 18:1 18:0 35:1 35:0 23:1 23:0"
        );
        // Sticky ports: the keyboard, assigned by its IDs, followed them to the port it was
        // moved to; the port assigned by bus id kept what came there in the tablet's place.
        // And the mouse that came there works.
        for p in ["port_kept", "mouse_moved"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }

        // The hostile guest-c (usbattack) while guest-a read and guest-b typed: every attack
        // went as the protocol says (refused, or guest-c disconnected where it broke the
        // protocol), nothing of it stayed mapped, and the others kept their service.
        for p in ["victim_alone", "victim_under_attack", "attack_done", "attacker_gone"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let attack: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("ATTACK "))
            .collect();
        for l in &attack {
            println!("e2e: {l}");
        }
        let done = attack
            .iter()
            .find(|l| l.starts_with("attack: done"))
            .expect("the attacker finished");
        assert_eq!(field(done, "phases"), field(done, "as_expected"), "{done}");
        assert_eq!(field(done, "leaked_grants"), Some("0"), "{done}");
        let c_id = marks
            .iter()
            .find_map(|(_, l)| field(l, "guest_c"))
            .expect("dom0 reported guest_c");
        assert!(
            usbdom.iter().any(|l| l.contains("event=frontend_misbehaving")
                && field(l, "domid") == Some(c_id)),
            "usbdom logged the attacker's protocol violations"
        );
        assert!(
            !usbdom.iter().any(|l| l.contains("event=frontend_misbehaving")
                && field(l, "domid") != Some(c_id)),
            "nobody else was called misbehaving"
        );
        // Once guest-c is gone, what stays mapped is guest-b's two rings, guest-a's 16-page
        // URB ring and conn ring, and the data pages guest-a's persistent grants keep mapped
        // (at most 1,024).
        let c_removed = usbdom
            .iter()
            .find(|l| l.contains("event=vusb_removed") && field(l, "domid") == Some(c_id))
            .expect("usbdom removed guest-c's controller");
        let mapped: u32 = field(c_removed, "grants_mapped").unwrap().parse().unwrap();
        assert!(
            (2 + 17 + 1..=2 + 17 + 1024).contains(&mapped),
            "guest-a's rings and some kept data pages, guest-b's rings: {c_removed}"
        );
        let reads = |phase: &str| -> u32 {
            marks
                .iter()
                .find(|(_, l)| field(l, "phase") == Some(phase))
                .and_then(|(_, l)| field(l, "reads")?.parse().ok())
                .unwrap()
        };
        let (alone, attacked) = (reads("victim_alone"), reads("victim_under_attack"));
        println!(
            "e2e: guest-a's 16 MiB reads in 20 s: {alone} alone, {attacked} under attack ({:.1} vs {:.1} MB/s)",
            f64::from(alone) * 16.0 * 1.048576 / 20.0,
            f64::from(attacked) * 16.0 * 1.048576 / 20.0
        );
        // Issue 13 asks for at least half: 12 to 15 of 16 to 21 (71-75 %) in the runs since
        // COM1 was kept to 5 % of usbdom's time (before, 1 of 11 to 13: usbdom spent the
        // attack writing warnings to COM1, a millisecond a byte nested). A figure, printed;
        // asserted here: guest-a is never stopped.
        assert!(
            alone > 0 && attacked > 0,
            "guest-a kept reading under attack: {attacked} reads (alone: {alone})"
        );
        let latency = |phase: &str| -> String {
            marks
                .iter()
                .find(|(_, l)| field(l, "phase") == Some(phase))
                .and_then(|(_, l)| field(l, "latency_ms"))
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "e2e: guest-b's keys: {} ms alone, {} ms under attack (from the first key sent to the last seen)",
            latency("keys_typed"),
            latency("keys_under_attack")
        );

        // The stick pulled out and put back: usbdom reported it gone, freed its slot,
        // connected it again to the port still assigned to it.
        for p in ["unplugged", "replugged"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        assert!(
            usbdom.iter().any(|l| l.contains("event=port_disconnected")
                && field(l, "busid") == Some("2-1")
                && field(l, "reason") == Some("unplugged")),
            "usbdom logged the unplug"
        );
        assert_eq!(
            connects("2-1", "guest_a").len(),
            2,
            "the stick was connected to guest-a twice (the replug)"
        );
        let slots: Vec<usize> = usbdom
            .iter()
            .filter(|l| l.contains("event=xhci_events "))
            .filter_map(|l| field(l, "slots_in_use")?.parse().ok())
            .collect();
        let most = *slots.iter().max().expect("event=xhci_events");
        assert!(
            slots.contains(&(most - 1)) && slots.last() == Some(&most),
            "the stick's slot was freed and taken again: {slots:?}"
        );

        // guest-a destroyed during a read: usbdom took everything back and removed the
        // controller's directory (dom0 checked it), and Xen let the domain go, which it does
        // only once no other domain maps its pages.
        for p in ["destroying_guest_a", "guest_a_gone"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let domid = |name: &str| {
            marks
                .iter()
                .find_map(|(_, l)| field(l, name))
                .unwrap_or_else(|| panic!("dom0 reported {name}"))
        };
        let (a_id, b_id) = (domid("guest_a"), domid("guest_b"));
        let removed = |id: &str| {
            usbdom
                .iter()
                .copied()
                .find(|l| l.contains("event=vusb_removed") && field(l, "domid") == Some(id))
                .unwrap_or_else(|| panic!("usbdom removed domain {id}'s controller"))
        };
        let a_removed = removed(a_id);
        println!("e2e: {a_removed}");
        // guest-a's usb-storage sent its data stages as indirect requests (one per SCSI
        // command); guest-b's xen-hcd never sends one.
        let disconnected = |id: &str| {
            usbdom
                .iter()
                .copied()
                .find(|l| {
                    l.contains("event=frontend_disconnected ") && field(l, "domid") == Some(id)
                })
                .unwrap_or_else(|| panic!("usbdom disconnected domain {id}'s frontend"))
        };
        let a_gone = disconnected(a_id);
        println!("e2e: {a_gone}");
        let count = |l: &str, k: &str| -> u64 { field(l, k).unwrap().parse().unwrap() };
        assert!(count(a_gone, "indirect") > 0, "{a_gone}");
        // Its kept pages took the device's bulk data directly.
        assert!(count(a_gone, "zero_copy") > 0, "{a_gone}");
        assert_eq!(field(a_removed, "reason"), Some("frontend_gone"));
        // guest-a's rings and kept data pages went with it: guest-b's two rings are left.
        assert_eq!(field(a_removed, "grants_mapped"), Some("2"), "{a_removed}");
        let cancelled = usbdom
            .iter()
            .find(|l| {
                l.contains("event=frontend_transfers_cancelled") && field(l, "domid") == Some(a_id)
            })
            .expect("guest-a's transfers were taken back");
        println!("e2e: {cancelled}");
        // guest-b came up by `usbctl up` with a vusb entry naming the keyboard by its IDs
        // (its port 1 connected before its kernel looked; by `up`, or by the service's main
        // process, which sees the guest appear with the config `up` recorded: one of them
        // finds the controller made, "served by usbdom already"); `usbctl monitor --json` read the
        // owners and controllers out of usbdom's log while both guests had their devices.
        // Matched anywhere in a line: dom0's console once lost the `usbctl-up: ` prefix
        // sed put in front of it (the line itself came whole).
        assert!(
            r.lines
                .iter()
                .any(|(_, l)| l.contains("usbctl: guest-b")
                    && l.contains(":   port 1: 0627:0001 connected")),
            "usbctl up attached the keyboard"
        );
        let monitor: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("MONITOR "))
            .collect();
        let device = |busid: &str| {
            monitor
                .iter()
                .copied()
                .find(|l| {
                    l.contains(r#""type":"device""#) && l.contains(&format!(r#""busid":"{busid}""#))
                })
                .unwrap_or_else(|| panic!("the monitor shows {busid}: {monitor:?}"))
        };
        for (busid, name, id) in [("2-1", "guest-a", a_id), ("3-1", "guest-b", b_id)] {
            let owner = format!(r#""owner":{{"devid":0,"domain":"{name}","domid":{id},"port":1}}"#);
            assert!(device(busid).contains(&owner), "{}", device(busid));
        }
        assert!(device("1-3").contains(r#""hub":true"#));
        for id in [a_id, b_id] {
            assert!(
                monitor.iter().any(|l| l.contains(r#""type":"controller""#)
                    && l.contains(r#""connected":true"#)
                    && l.contains(&format!(r#""domid":{id},"#))),
                "controller of domain {id} connected: {monitor:?}"
            );
        }
        // guest-b's controller went last, by usbctl: nothing is mapped any more.
        let b_removed = removed(b_id);
        assert_eq!(field(b_removed, "grants_mapped"), Some("0"), "{b_removed}");
        let b_gone = disconnected(b_id);
        assert_eq!(
            ["indirect", "zero_copy"].map(|k| field(b_gone, k)),
            [Some("0"); 2],
            "{b_gone}"
        );
        assert!(phases.contains(&"hc_destroyed"), "phases: {phases:?}");

        // The same image as a PVH domU, its log read from xenconsoled's file (PV console).
        let pvh: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("LOG guest-usbdom-pvh.log: "))
            .collect();
        let pvh_event = |name: &str| first_event(&pvh, name);
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

        // The usbdom package, installed in dom0, and its unit's commands (dom0's init runs
        // them: no systemd there). guest-b (`usbctl up`) rebooted, and the service's main
        // process gave it its controller back; stopped, the service took it away and ended
        // usbdom; started from nothing, a new usbdom served guest-b's config again.
        let installed = marks
            .iter()
            .find(|(_, l)| field(l, "phase") == Some("usbdom_installed"))
            .expect("phase=usbdom_installed")
            .1;
        assert_eq!(field(installed, "usbctl"), Some("/usr/sbin/usbctl"), "{installed}");
        for p in ["guest_b_rebooted", "service_stopped", "service_restarted"] {
            assert!(phases.contains(&p), "phase {p} not reached: {phases:?}");
        }
        let rebooted = marks
            .iter()
            .find(|(_, l)| field(l, "phase") == Some("guest_b_rebooted"))
            .and_then(|(_, l)| field(l, "domid"))
            .expect("guest-b's id after its reboot");
        assert_ne!(rebooted, b_id, "xl made guest-b again");
        let followed = usbdom
            .iter()
            .find(|l| l.contains("event=port_connected ") && field(l, "domid") == Some(rebooted))
            .expect("usbdom connected a device to the rebooted guest-b");
        assert_eq!(
            [field(followed, "devid"), field(followed, "port"), field(followed, "vid")],
            [Some("0"), Some("1"), Some("0627")],
            "{followed}"
        );
        let restarted: Vec<&str> = r
            .lines
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("LOG guest-usbdom-restarted.log: "))
            .collect();
        let restarted_event = |name: &str| first_event(&restarted, name);
        let ready = restarted_event("ready").expect("the restarted usbdom is ready");
        assert_eq!(field(ready, "usb_controllers"), Some("2"), "{ready}");
        let connected = restarted_event("port_connected").expect("guest-b's device again");
        assert_eq!(
            [field(connected, "domid"), field(connected, "port"), field(connected, "vid")],
            [Some(rebooted), Some("1"), Some("0627")],
            "{connected}"
        );
    });
}

/// The first of `log`'s lines with the event `name`.
fn first_event<'a>(log: &[&'a str], name: &str) -> Option<&'a str> {
    let word = format!("event={name}");
    log.iter()
        .copied()
        .find(|l| l.split_whitespace().any(|w| w == word))
}
