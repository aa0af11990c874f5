//! usbdom boots on QEMU's q35 and pc machines with an xHCI controller and USB devices, and
//! says so on the serial log.

use usbdom_tests::{field, Machine, Run, EXIT_SUCCESS};

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
        let method = field(r.event("pci_access").unwrap().1, "method");
        assert_eq!(
            method,
            Some(if machine == "q35" { "ecam" } else { "ports" })
        );

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
        .append("loglevel=loud usb=yes")
        .boot();
    run.check(|r| {
        assert_eq!(r.exit, Some(EXIT_SUCCESS));
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
