//! usbdom boots on QEMU's q35 and pc machines with an xHCI controller and USB devices, and
//! says so on the serial log. The demo and the `usbtest=` self-tests boot the demo image.

use std::time::Duration;

use usbdom_tests::{field, key_event, qmp, Machine, Run, EXIT_SUCCESS};

fn boot(machine: &str) -> Run {
    Machine::new(machine, &format!("boot-{machine}"))
        .usb_stick("stick")
        .arg("-device")
        .arg("usb-kbd,bus=xhci.0")
        .arg("-device")
        .arg("usb-hub,bus=xhci.0,port=3")
        .append("loglevel=debug")
        .boot()
}

fn check_boot(machine: &str, run: &Run) {
    run.check(|r| {
        assert!(!r.timed_out, "QEMU did not exit in time");
        assert_eq!(
            r.exit,
            Some(EXIT_SUCCESS),
            "QEMU exit status (0 means a triple fault)"
        );
        assert!(r.event("panic").is_none());
        assert!(!r.lines.iter().any(|(_, l)| l.contains("level=error")));

        let (_, boot) = r.event("boot").expect("event=boot");
        assert!(
            boot.contains("cmdline=\"qemu_exit loglevel=debug\""),
            "{boot}"
        );
        assert_eq!(field(boot, "start_info_version"), Some("1"));

        assert!(r.events("memmap").count() >= 3, "the memory map is logged");
        let (_, mem) = r.event("memory").expect("event=memory");
        let ram: u64 = field(mem, "ram_mib").unwrap().parse().unwrap();
        assert!((250..=256).contains(&ram), "{mem}");
        let (_, dma) = r.event("dma_check").expect("event=dma_check");
        assert_eq!(field(dma, "below_4g"), Some("true"));

        let xhci_dev = r
            .events("pci_device")
            .find(|l| field(l, "class") == Some("0c0330"))
            .expect("the xHCI controller is enumerated");
        assert_eq!(
            (field(xhci_dev, "vid"), field(xhci_dev, "did")),
            (Some("1b36"), Some("000d"))
        );
        let (_, found) = r.event("xhci_found").expect("event=xhci_found");
        assert_eq!(field(found, "vid"), Some("1b36"));
        assert_eq!(field(found, "ports"), Some("8"));
        assert!(r.event("msix_routed").is_some(), "MSI-X is programmed");
        let (_, handoff) = r
            .event("xhci_legacy_handoff")
            .expect("event=xhci_legacy_handoff");
        assert_eq!(
            field(handoff, "result"),
            Some("absent"),
            "QEMU's xHCI has no USB Legacy Support Capability"
        );
        let method = field(r.event("pci_access").unwrap().1, "method");
        assert_eq!(
            method,
            Some(if machine == "q35" { "ecam" } else { "ports" })
        );

        check_usb(r);

        let (_, timer) = r.event("timer_ok").expect("event=timer_ok");
        let ticks: u64 = field(timer, "ticks").unwrap().parse().unwrap();
        assert!(
            ticks >= 5,
            "timer interrupts delivered and counted: {timer}"
        );

        let (at, _) = r.event("ready").expect("event=ready");
        println!(
            "boot: {machine}: event=ready {} ms after QEMU started",
            at.as_millis()
        );
        assert!(at.as_secs_f64() < 2.0, "event=ready took {at:?}");
    });
}

/// The driver runs the controller, its rings answer a No Op, MSI-X delivers its
/// interrupts, and every root-port device of `boot()` is enumerated with QEMU's ids.
fn check_usb(r: &Run) {
    let (_, running) = r.event("xhci_running").expect("event=xhci_running");
    assert_eq!(field(running, "slots"), Some("64"), "{running}");
    assert_eq!(field(running, "ports"), Some("8"), "{running}");
    assert_eq!(field(running, "usb2_ports"), Some("4"), "{running}");
    assert_eq!(field(running, "usb3_ports"), Some("4"), "{running}");
    let (_, noop) = r.event("xhci_noop").expect("event=xhci_noop");
    assert_eq!(field(noop, "ok"), Some("true"), "{noop}");
    // 300 No Ops: more than the Command Ring (255 TRBs) and the Event Ring (256) hold.
    assert_eq!(field(noop, "count"), Some("300"), "{noop}");
    let after: u64 = field(noop, "interrupts_after").unwrap().parse().unwrap();
    assert!(
        after > 0,
        "command completions raise MSI-X interrupts: {noop}"
    );
    assert!(r.event("usb_device_error").is_none());

    let devices: Vec<&str> = r.events("usb_device").collect();
    let find = |vid: &str, pid: &str| {
        devices
            .iter()
            .find(|l| field(l, "vid") == Some(vid) && field(l, "pid") == Some(pid))
            .unwrap_or_else(|| panic!("no usb_device {vid}:{pid} in {devices:#?}"))
    };
    // QEMU's usb-storage on a USB3-capable controller: SuperSpeed, bus 2.
    let stick = find("46f4", "0001");
    assert_eq!(field(stick, "speed"), Some("super"), "{stick}");
    assert!(field(stick, "busid").unwrap().starts_with("2-"), "{stick}");
    assert_eq!(field(stick, "class"), Some("00"), "{stick}");
    // usb-kbd: high speed on a USB2 port.
    let kbd = find("0627", "0001");
    assert_eq!(field(kbd, "speed"), Some("high"), "{kbd}");
    assert!(field(kbd, "busid").unwrap().starts_with("1-"), "{kbd}");
    assert!(kbd.contains("product=\"QEMU USB Keyboard\""), "{kbd}");
    // usb-hub on QEMU port 3: full speed, xHCI port 7, bus 1 port 3, class 09.
    let hub = find("0409", "55aa");
    assert_eq!(field(hub, "busid"), Some("1-3"), "{hub}");
    assert_eq!(field(hub, "speed"), Some("full"), "{hub}");
    assert_eq!(field(hub, "class"), Some("09"), "{hub}");
    assert_eq!(devices.len(), 3, "{devices:#?}");

    let (_, ready) = r.event("ready").unwrap();
    let interrupts: u64 = field(ready, "xhci_interrupts").unwrap().parse().unwrap();
    assert!(
        interrupts > 0,
        "MSI-X delivers the controller's interrupts: {ready}"
    );
}

#[test]
fn boots_on_q35() {
    check_boot("q35", &boot("q35"));
}

#[test]
fn boots_on_pc() {
    check_boot("pc", &boot("pc"));
}

#[test]
fn a_bad_command_line_word_is_reported_not_fatal() {
    let run = Machine::new("q35", "boot-cmdline")
        .append("loglevel=loud usb=yes usbtest=storage")
        .boot();
    run.check(|r| {
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        // The production image has no self-tests: it says which image has.
        assert!(r
            .event("cmdline_needs_demo_image")
            .is_some_and(|(_, l)| field(l, "image") == Some("usbdom-demo.elf")));
        assert!(r.event("usbtest_storage").is_none());
        assert!(r
            .event("cmdline_bad_value")
            .is_some_and(|(_, l)| field(l, "key") == Some("loglevel")));
        assert!(r
            .event("cmdline_unknown")
            .is_some_and(|(_, l)| l.contains("word=\"usb=yes\"")));
        assert!(r.event("ready").is_some());
    });
}

#[test]
fn without_an_xhci_controller_it_says_so_and_still_comes_up() {
    let run = Machine::bare("q35", "boot-no-xhci").boot();
    run.check(|r| {
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        assert!(r.event("no_controller").is_some());
        let (_, ready) = r.event("ready").expect("event=ready");
        assert_eq!(field(ready, "xhci"), Some("none"));
    });
}

/// The storage self-test's pattern as the kernel documents it (`driver_domain::selftest`),
/// written out again here so the check does not share the kernel's code: 128 records of
/// `usbdom-selftest:`, the index in 15 hex digits, a newline.
fn storage_pattern() -> Vec<u8> {
    (0..128)
        .flat_map(|i| format!("usbdom-selftest:{i:015x}\n").into_bytes())
        .collect()
}

#[test]
fn without_msix_the_controller_interrupts_through_msi_and_without_either_it_is_polled() {
    // QEMU's model of NEC's (Renesas) xHCI, whose MSI and MSI-X can be turned off: without
    // MSI-X, then without MSI too, the interrupt routing falls back, says so, and the stick
    // works either way.
    for (props, routed) in [
        ("msix=off", "msi_routed"),
        ("msi=off,msix=off", "interrupt_unrouted"),
    ] {
        let run = Machine::bare(
            "q35",
            &format!("usbtest-{}", props.replace([',', '='], "-")),
        )
        .arg("-device")
        .arg(&format!("nec-usb-xhci,id=xhci,{props}"))
        .demo_image()
        .usb_stick("stick")
        .append("usbtest=storage")
        .boot();
        run.check(|r| {
            assert_eq!(r.exit, Some(EXIT_SUCCESS), "{props}");
            assert!(r.event("msix_routed").is_none(), "{props}");
            let (_, how) = r
                .event(routed)
                .unwrap_or_else(|| panic!("{props}: event={routed}"));
            println!("usbtest {props}: {how}");
            let (_, test) = r.event("usbtest_storage").expect("event=usbtest_storage");
            assert_eq!(field(test, "match"), Some("true"), "{props}: {test}");
        });
    }
}

#[test]
fn the_storage_self_test_writes_its_pattern_through_the_stick_to_the_image() {
    let machine = Machine::new("q35", "usbtest-storage")
        .demo_image()
        .usb_stick("stick")
        .append("usbtest=storage");
    let image = machine.scratch().join("stick.img");
    let run = machine.boot();
    run.check(|r| {
        assert!(!r.timed_out, "QEMU did not exit in time");
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        let (ready, _) = r.event("ready").expect("event=ready");
        assert!(ready.as_secs_f64() < 2.0, "event=ready took {ready:?}");
        let (done, test) = r.event("usbtest_storage").expect("event=usbtest_storage");
        println!(
            "usbtest: {test} ({} ms after QEMU started)",
            done.as_millis()
        );
        assert_eq!(field(test, "inquiry_vendor"), Some("\"QEMU\""));
        assert_eq!(field(test, "write"), Some("ok"));
        assert_eq!(field(test, "read"), Some("ok"));
        assert_eq!(field(test, "match"), Some("true"));
        let block_size: usize = field(test, "block_size").unwrap().parse().unwrap();
        let blocks: usize = field(test, "blocks").unwrap().parse().unwrap();
        assert_eq!(blocks * block_size, 16 << 20, "the stick is 16 MiB");

        let bytes = std::fs::read(&image).unwrap();
        let at = 8 * block_size;
        assert_eq!(
            &bytes[at..at + 4096],
            &storage_pattern()[..],
            "the image holds the pattern at LBA 8"
        );
        assert!(
            bytes[..at].iter().all(|&b| b == 0),
            "nothing written before it"
        );

        let (_, bench) = r.event("bench").expect("event=bench");
        println!("usbtest: {bench}");
        assert_eq!(field(bench, "path"), Some("direct"));
        assert_eq!(field(bench, "in_flight"), Some("1"));
        assert_eq!(field(bench, "bytes"), Some("4194304"));
        assert!(field(bench, "ns").unwrap().parse::<u64>().unwrap() > 0);

        // QEMU fails a READ(10) past the end in the CSW (without a STALL).
        let (_, past) = r
            .event("usbtest_storage_past_end")
            .expect("event=usbtest_storage_past_end");
        assert_eq!(field(past, "result"), Some("command_failed"), "{past}");
        assert_eq!(field(past, "then_read"), Some("ok"), "{past}");

        // The same 4 MiB with 16 transfers of 64 KiB in flight.
        let many = r
            .events("bench")
            .find(|l| field(l, "in_flight") == Some("16"))
            .expect("event=bench in_flight=16");
        println!("usbtest: {many}");
        assert_eq!(field(many, "bytes"), Some("4194304"));

        // STALLs provoked on the real device model and recovered.
        let (_, stall) = r.event("usbtest_stall").expect("event=usbtest_stall");
        assert_eq!(field(stall, "bulk_out"), Some("stall"), "{stall}");
        assert_eq!(field(stall, "then_inquiry_bytes"), Some("36"), "{stall}");
        assert_eq!(field(stall, "ep0"), Some("stall"), "{stall}");
        assert_eq!(
            field(stall, "then_device_descriptor_bytes"),
            Some("18"),
            "{stall}"
        );
    });
}

#[test]
fn a_stick_unplugged_under_a_read_loop_fails_the_loop_cleanly_and_works_when_back() {
    let machine = Machine::new("q35", "usbtest-hotplug")
        .demo_image()
        .append("usbtest=hotplug");
    // Two images: QEMU releases the first one's node only when it finalizes the unplugged
    // device, some time after the guest saw it go.
    let node = |name: &str| {
        let image = machine.scratch().join(format!("{name}.img"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        format!(
            r#"{{"execute":"blockdev-add","arguments":{{"driver":"raw","node-name":"{name}","file":{{"driver":"file","filename":"{}"}}}}}}"#,
            image.display()
        )
    };
    let nodes = [node("hot"), node("again")];
    let socket = machine.scratch().join("qmp.sock");
    let _ = std::fs::remove_file(&socket);
    let plug = r#"{"execute":"device_add","arguments":{"driver":"usb-storage","id":"s1","bus":"xhci.0","drive":"hot"}}"#;
    let replug = r#"{"execute":"device_add","arguments":{"driver":"usb-storage","id":"s2","bus":"xhci.0","drive":"again"}}"#;
    let progress = std::cell::Cell::new(0);
    let replugged = std::cell::Cell::new(false);
    let run = machine
        .arg("-qmp")
        .arg(&format!("unix:{},server=on,wait=off", socket.display()))
        .keep_running()
        .limit(Duration::from_secs(30))
        .boot_until(|line| {
            if line.contains("event=ready") {
                qmp(&socket, &[&nodes[0], &nodes[1], plug]);
            }
            // Unplugged while the loop's transfers are in flight.
            if line.contains("event=usbtest_loop_progress") {
                progress.set(progress.get() + 1);
                if progress.get() == 1 {
                    qmp(
                        &socket,
                        &[r#"{"execute":"device_del","arguments":{"id":"s1"}}"#],
                    );
                }
            }
            if line.contains("event=usbtest_loop_stopped") && !replugged.replace(true) {
                qmp(&socket, &[replug]);
            }
            progress.get() == 2
        });
    run.check(|r| {
        assert!(!r.timed_out, "the loop did not run again after the replug");
        let started: Vec<&str> = r.events("usbtest_loop_started").collect();
        assert_eq!(started.len(), 2, "{started:#?}");
        let (_, stopped) = r
            .event("usbtest_loop_stopped")
            .expect("event=usbtest_loop_stopped");
        println!("usbtest: {stopped}");
        assert_eq!(field(stopped, "error"), Some("no_device"), "{stopped}");
        assert_eq!(field(stopped, "slots_in_use"), Some("0"), "{stopped}");
        let reads: u64 = field(stopped, "reads").unwrap().parse().unwrap();
        assert!(reads >= 50, "{stopped}");
        let (_, gone) = r.event("usb_device_gone").expect("event=usb_device_gone");
        assert_eq!(field(gone, "busid"), field(started[0], "busid"), "{gone}");
        assert_eq!(field(gone, "slot"), field(stopped, "slot"), "{gone}");
        // The second stick may land on another port; the freed slot serves it.
        assert_eq!(field(started[1], "slot"), field(started[0], "slot"));
    });
}

#[test]
fn isochronous_packets_stream_to_qemus_usb_audio_after_set_interface() {
    let run = Machine::new("q35", "usbtest-audio")
        .demo_image()
        .arg("-audiodev")
        .arg("none,id=snd0")
        .arg("-device")
        .arg("usb-audio,audiodev=snd0,bus=xhci.0")
        .append("usbtest=audio")
        .boot();
    run.check(|r| {
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        let (_, iso) = r
            .event("usbtest_isochronous")
            .expect("event=usbtest_isochronous");
        println!("usbtest: {iso}");
        assert_eq!(field(iso, "packets"), Some("8"), "{iso}");
        assert_eq!(field(iso, "ok_packets"), Some("8"), "{iso}");
        assert_eq!(field(iso, "result"), Some("ok"), "{iso}");
        assert_eq!(field(iso, "bytes"), Some("1536"), "{iso}");
        assert_eq!(field(iso, "back_to_alternate_0"), Some("ok"), "{iso}");
        assert_ne!(field(iso, "alternate"), Some("0"), "{iso}");
    });
}

#[test]
fn a_controller_error_is_recovered_by_a_restart_and_the_stick_works_after_it() {
    let run = Machine::new("q35", "usbtest-controller-error")
        .demo_image()
        .usb_stick("stick")
        .append("usbtest=controller-error")
        .keep_running()
        .limit(Duration::from_secs(30))
        .boot_until(|line| line.contains("event=usbtest_stall"));
    run.check(|r| {
        assert!(
            !r.timed_out,
            "the storage test did not run after the restart"
        );
        let (_, provoked) = r
            .event("usbtest_controller_error")
            .expect("event=usbtest_controller_error");
        assert_eq!(
            field(provoked, "error"),
            Some("host_controller_error"),
            "{provoked}"
        );
        let (_, restart) = r.event("xhci_restart").expect("event=xhci_restart");
        println!("usbtest: {restart}");
        assert_eq!(field(restart, "reason"), Some("host_controller_error"));
        assert!(r
            .events("usb_device_gone")
            .any(|l| field(l, "reason") == Some("controller_reset")));
        assert!(r
            .events("usbtest_controller_error")
            .any(|l| field(l, "recovered") == Some("true")));
        let (_, test) = r.event("usbtest_storage").expect("event=usbtest_storage");
        assert_eq!(field(test, "match"), Some("true"), "{test}");
    });
}

#[test]
fn a_hotplugged_keyboard_is_enumerated_and_released_twice_through_the_interrupt() {
    let machine = Machine::new("q35", "boot-hotplug");
    let socket = machine.scratch().join("qmp.sock");
    let _ = std::fs::remove_file(&socket);
    let gone = std::cell::Cell::new(0);
    let run = machine
        .arg("-qmp")
        .arg(&format!("unix:{},server=on,wait=off", socket.display()))
        .keep_running()
        .limit(Duration::from_secs(20))
        .boot_until(|line| {
            let plug = r#"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"k1","bus":"xhci.0","port":"2"}}"#;
            if line.contains("event=ready") {
                // QEMU port 2: a high-speed device lands on xHCI port 6, Linux's 1-2.
                qmp(&socket, &[plug]);
            }
            if line.contains("event=usb_device ") {
                qmp(
                    &socket,
                    &[r#"{"execute":"device_del","arguments":{"id":"k1"}}"#],
                );
            }
            // Twice round: the released slot and memory serve the second plug.
            if line.contains("event=usb_device_gone") {
                gone.set(gone.get() + 1);
                if gone.get() == 1 {
                    qmp(&socket, &[plug]);
                }
            }
            gone.get() == 2
        });
    run.check(|r| {
        assert!(!r.timed_out, "the plug and unplug were not both seen");
        let (_, ready) = r.event("ready").expect("event=ready");
        let at_ready: u64 = field(ready, "xhci_interrupts").unwrap().parse().unwrap();
        // The main loop looks at the event ring only when the MSI-X interrupt moved the
        // counter (the vector is routed, so it does not poll).
        let (_, events) = r.event("xhci_events").expect("event=xhci_events");
        let at_events: u64 = field(events, "xhci_interrupts").unwrap().parse().unwrap();
        assert!(at_events > at_ready, "{ready}\n{events}");
        let (_, change) = r.event("usb_port_change").unwrap();
        assert_eq!(field(change, "busid"), Some("1-2"), "{change}");
        assert_eq!(field(change, "port"), Some("6"), "{change}");
        assert_eq!(field(change, "connected"), Some("true"), "{change}");
        let (_, kbd) = r.event("usb_device").unwrap();
        assert_eq!(field(kbd, "busid"), Some("1-2"), "{kbd}");
        assert_eq!(
            (field(kbd, "vid"), field(kbd, "pid")),
            (Some("0627"), Some("0001"))
        );
        let (_, gone) = r.event("usb_device_gone").unwrap();
        assert_eq!(field(gone, "busid"), Some("1-2"), "{gone}");
        assert_eq!(field(gone, "slot"), field(kbd, "slot"), "{gone}");
        let plugs: Vec<&str> = r.events("usb_device").collect();
        assert_eq!(plugs.len(), 2, "{plugs:#?}");
        assert_eq!(field(plugs[1], "vid"), Some("0627"), "{}", plugs[1]);
        assert_eq!(r.events("usb_device_gone").count(), 2);
    });
}

#[test]
fn on_a_usb2_only_controller_every_device_is_on_bus_1_at_its_usb2_speed() {
    // p3=0: no USB3 ports (the USB3 protocol capability is still listed, with 0 ports), so
    // the stick runs at high speed; usb_version=1 makes the keyboard full speed with an
    // 8-byte EP0 (Evaluate Context after the first 8 bytes of its device descriptor). The
    // storage self-test runs its bulk transfers at high speed.
    let run = Machine::bare("q35", "boot-usb2-only")
        .demo_image()
        .arg("-device")
        .arg("qemu-xhci,id=xhci,p3=0")
        .usb_stick("stick")
        .arg("-device")
        .arg("usb-kbd,bus=xhci.0,port=2,usb_version=1")
        .append("usbtest=storage")
        .boot();
    run.check(|r| {
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        let (_, running) = r.event("xhci_running").expect("event=xhci_running");
        assert_eq!(field(running, "usb3_ports"), Some("0"), "{running}");
        assert_eq!(field(running, "usb2_ports"), Some("4"), "{running}");
        let devices: Vec<&str> = r.events("usb_device").collect();
        assert_eq!(devices.len(), 2, "{devices:#?}");
        let stick = devices
            .iter()
            .find(|l| field(l, "vid") == Some("46f4"))
            .expect("the stick");
        assert_eq!(field(stick, "speed"), Some("high"), "{stick}");
        assert_eq!(field(stick, "busid"), Some("1-1"), "{stick}");
        let kbd = devices
            .iter()
            .find(|l| field(l, "vid") == Some("0627"))
            .expect("the keyboard");
        assert_eq!(field(kbd, "speed"), Some("full"), "{kbd}");
        assert_eq!(field(kbd, "busid"), Some("1-2"), "{kbd}");
        assert_eq!(field(kbd, "mps0"), Some("8"), "{kbd}");
        // Bulk transfers at high speed: 512-byte packets, no bursts.
        let (_, test) = r.event("usbtest_storage").expect("event=usbtest_storage");
        assert_eq!(field(test, "match"), Some("true"), "{test}");
        assert_eq!(field(r.event("bench").unwrap().1, "bytes"), Some("4194304"));
    });
}

#[test]
fn the_keyboard_self_test_logs_the_report_of_a_key_sent_through_qmp() {
    keyboard_report(
        Machine::new("q35", "usbtest-keyboard")
            .demo_image()
            .arg("-device")
            .arg("usb-kbd,bus=xhci.0,port=1"),
    );
}

#[test]
fn a_keyboard_behind_a_hub_delivers_its_reports_too() {
    keyboard_report(
        Machine::new("q35", "usbtest-keyboard-hub")
            .demo_image()
            .arg("-device")
            .arg("usb-hub,bus=xhci.0,port=3")
            .arg("-device")
            .arg("usb-kbd,bus=xhci.0,port=3.2"),
    );
}

/// Boots `machine` (with one keyboard) with `usbtest=keyboard`, presses and releases `a`
/// through QMP, and checks both boot reports arrive.
fn keyboard_report(machine: Machine) {
    let socket = machine.scratch().join("qmp.sock");
    let _ = std::fs::remove_file(&socket);
    let key = |down: bool| key_event("a", down);
    let key_b = |down: bool| key_event("b", down);
    let pressed = std::cell::Cell::new(false);
    let run = machine
        .arg("-qmp")
        .arg(&format!("unix:{},server=on,wait=off", socket.display()))
        .append("usbtest=keyboard")
        .keep_running()
        .limit(Duration::from_secs(20))
        .boot_until(|line| {
            // Four reports: each of the two transfers left after the cancel carries two.
            if line.contains("event=usbtest_keyboard_ready") {
                qmp(
                    &socket,
                    &[&key(true), &key(false), &key_b(true), &key_b(false)],
                );
            }
            // Done at the last release: all keys up after the report with `b`.
            if line.contains("event=usbtest_keyboard report=00 00 05") {
                pressed.set(true);
            }
            pressed.get() && line.contains("event=usbtest_keyboard report=00 00 00 00")
        });
    run.check(|r| {
        assert!(!r.timed_out, "no key release report");
        let (ready_at, _) = r.event("ready").expect("event=ready");
        assert!(ready_at < Duration::from_secs(2), "ready at {ready_at:?}");
        let (_, listening) = r
            .event("usbtest_keyboard_ready")
            .expect("event=usbtest_keyboard_ready");
        assert_eq!(
            field(listening, "max_packet_size"),
            Some("8"),
            "{listening}"
        );
        let reports: Vec<&str> = r.events("usbtest_keyboard").collect();
        // HID usage 0x04 (`a`) in byte 2 of the boot report, then the release.
        let a = reports
            .iter()
            .position(|l| l.contains("report=00 00 04 00 00 00 00 00"))
            .unwrap_or_else(|| panic!("no report with key a: {reports:#?}"));
        assert!(
            reports[a + 1..]
                .iter()
                .any(|l| l.contains("report=00 00 00 00 00 00 00 00")),
            "{reports:#?}"
        );
        let b = reports
            .iter()
            .position(|l| l.contains("report=00 00 05 00 00 00 00 00"))
            .unwrap_or_else(|| panic!("no report with key b: {reports:#?}"));
        assert!(b > a, "in order: {reports:#?}");
        // One of three queued transfers was cancelled and the other two carried them.
        let (_, cancel) = r.event("usbtest_cancel").expect("event=usbtest_cancel");
        assert_eq!(field(cancel, "result"), Some("cancelled"), "{cancel}");
        assert_eq!(field(cancel, "still_queued"), Some("2"), "{cancel}");
    });
}

#[test]
fn devices_behind_two_tiers_of_hubs_are_enumerated_with_linux_bus_ids() {
    // QEMU port 3 is xHCI port 7 (USB2) for the full-speed hub; everything behind it is
    // full speed, so no device needs a Transaction Translator.
    let run = Machine::new("q35", "boot-hubs")
        .arg("-device")
        .arg("usb-hub,bus=xhci.0,port=3")
        .arg("-device")
        .arg("usb-mouse,bus=xhci.0,port=3.1")
        .arg("-device")
        .arg("usb-hub,bus=xhci.0,port=3.2")
        .arg("-device")
        .arg("usb-tablet,bus=xhci.0,port=3.2.1")
        .boot();
    run.check(|r| {
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
        let (ready_at, _) = r.event("ready").expect("event=ready");
        assert!(ready_at < Duration::from_secs(2), "ready at {ready_at:?}");
        assert!(r.event("usb_device_error").is_none());
        assert!(r.event("usb_hub_error").is_none());
        let devices: Vec<&str> = r.events("usb_device").collect();
        let expect = [
            ("1-3", "0409", "55aa", "09", "\"QEMU USB Hub\""),
            ("1-3.1", "0627", "0001", "00", "\"QEMU USB Mouse\""),
            ("1-3.2", "0409", "55aa", "09", "\"QEMU USB Hub\""),
            ("1-3.2.1", "0627", "0001", "00", "\"QEMU USB Tablet\""),
        ];
        assert_eq!(devices.len(), expect.len(), "{devices:#?}");
        for (line, (busid, vid, pid, class, product)) in devices.iter().zip(expect) {
            assert_eq!(field(line, "busid"), Some(busid), "{line}");
            assert_eq!(field(line, "port"), Some("7"), "{line}");
            assert_eq!(field(line, "speed"), Some("full"), "{line}");
            assert_eq!(
                (field(line, "vid"), field(line, "pid"), field(line, "class")),
                (Some(vid), Some(pid), Some(class)),
                "{line}"
            );
            assert!(line.contains(&format!(" product={product} ")), "{line}");
        }
        let hubs: Vec<&str> = r.events("usb_hub").collect();
        assert_eq!(hubs.len(), 2, "{hubs:#?}");
        for (line, busid) in hubs.iter().zip(["1-3", "1-3.2"]) {
            assert_eq!(field(line, "busid"), Some(busid), "{line}");
            assert_eq!(field(line, "ports"), Some("8"), "{line}");
        }
        let (_, enumerated) = r.event("usb_enumerated").unwrap();
        assert_eq!(field(enumerated, "devices"), Some("4"), "{enumerated}");
    });
}

#[test]
fn a_keyboard_hotplugged_behind_a_hub_is_seen_through_the_status_change_endpoint() {
    let machine = Machine::new("q35", "boot-hub-hotplug")
        .arg("-device")
        .arg("usb-hub,bus=xhci.0,port=3,id=hub");
    let socket = machine.scratch().join("qmp.sock");
    let _ = std::fs::remove_file(&socket);
    let plug = r#"{"execute":"device_add","arguments":{"driver":"usb-kbd","id":"k1","bus":"xhci.0","port":"3.4"}}"#;
    let run = machine
        .arg("-qmp")
        .arg(&format!("unix:{},server=on,wait=off", socket.display()))
        .keep_running()
        .limit(Duration::from_secs(20))
        .boot_until(|line| {
            if line.contains("event=ready") {
                qmp(&socket, &[plug]);
            }
            if line.contains("event=usb_device ") && line.contains("busid=1-3.4 ") {
                qmp(
                    &socket,
                    &[r#"{"execute":"device_del","arguments":{"id":"k1"}}"#],
                );
            }
            line.contains("event=usb_device_gone")
        });
    run.check(|r| {
        assert!(!r.timed_out, "the plug and unplug were not both seen");
        let devices: Vec<&str> = r.events("usb_device").collect();
        assert_eq!(devices.len(), 2, "{devices:#?}");
        assert_eq!(field(devices[0], "busid"), Some("1-3"), "{}", devices[0]);
        let kbd = devices[1];
        assert_eq!(field(kbd, "busid"), Some("1-3.4"), "{kbd}");
        assert_eq!(field(kbd, "speed"), Some("full"), "{kbd}");
        assert_eq!(
            (field(kbd, "vid"), field(kbd, "pid")),
            (Some("0627"), Some("0001"))
        );
        let change = r
            .events("usb_port_change")
            .find(|l| field(l, "busid") == Some("1-3.4"))
            .expect("a usb_port_change for 1-3.4");
        assert_eq!(field(change, "connected"), Some("true"), "{change}");
        let (_, gone) = r.event("usb_device_gone").unwrap();
        assert_eq!(field(gone, "busid"), Some("1-3.4"), "{gone}");
        assert_eq!(field(gone, "slot"), field(kbd, "slot"), "{gone}");
        assert_eq!(r.events("usb_device_gone").count(), 1, "the hub stays");
    });
}

mod demo;
