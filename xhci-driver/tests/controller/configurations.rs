//! Control transfers, configurations and alternate settings, isochronous packets and device
//! reset.

use super::*;

#[test]
fn control_transfers_run_asynchronously_in_both_directions() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let mut buf = xhci.dma_alloc(0x1000, 0x1000).unwrap();
    let seg = [DmaSegment {
        phys: buf.phys(),
        len: 64,
    }];
    let get = xhci
        .queue_control(slot_id, [0x80, 6, 0, 1, 0, 0, 64, 0], Direction::In, &seg)
        .unwrap();
    xhci.poll_events().unwrap();
    assert_eq!(
        xhci.take_completion(get),
        Some(Ok(18)),
        "a short Data Stage"
    );
    let mut got = [0u8; 18];
    buf.read_bytes(0, &mut got);
    assert_eq!(got, t::DEVICE_DESCRIPTOR);
    buf.write32(0, 0x0403_0201);
    let seg = [DmaSegment {
        phys: buf.phys(),
        len: 4,
    }];
    let set = xhci
        .queue_control(slot_id, [0x21, 9, 0, 2, 0, 0, 4, 0], Direction::Out, &seg)
        .unwrap();
    xhci.poll_events().unwrap();
    assert_eq!(xhci.take_completion(set), Some(Ok(4)));
    assert_eq!(*fake.control_out.borrow(), [1, 2, 3, 4]);
    assert_eq!(fake.setups().last(), Some(&(0x21, 9, 0x200, 0)));
}

/// A configuration with interface 0 (bulk IN 1, bulk OUT 2) whose alternate setting 1
/// has an isochronous IN endpoint 3 of 1024 bytes instead.
const ALTERNATES: [u8; 48] = [
    9, 2, 48, 0, 1, 1, 0, 0x80, 50, //
    9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
    7, 5, 0x81, 2, 0x00, 0x02, 0, //
    7, 5, 0x02, 2, 0x00, 0x02, 0, //
    9, 4, 0, 1, 1, 1, 2, 0, 0, //
    7, 5, 0x83, 1, 0x00, 0x04, 1,
];

/// A second configuration for the fake device: value 2, one HID interface with
/// interrupt IN 1.
const HID: [u8; 25] = [
    9, 2, 25, 0, 1, 2, 0, 0x80, 50, //
    9, 4, 0, 0, 1, 3, 1, 1, 0, //
    7, 5, 0x81, 3, 8, 0, 10,
];

/// GET_DESCRIPTOR(CONFIGURATION) requests the device saw, by index.
fn configuration_reads(fake: &FakeXhci) -> Vec<u16> {
    fake.setups()
        .iter()
        .filter(|s| (s.0, s.1, s.2 >> 8) == (0x80, GET_DESCRIPTOR, 2))
        .map(|s| s.2 & 0xff)
        .collect()
}

#[test]
fn every_configuration_offered_is_read_and_only_those_can_be_set() {
    let fake = FakeXhci::new();
    fake.num_configurations.set(2);
    *fake.more_configurations.borrow_mut() = vec![HID.to_vec()];
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    let configs = xhci.configurations(slot_id).unwrap();
    let classes: Vec<(u8, Vec<u8>)> = configs
        .iter()
        .map(|c| (c.value, c.interfaces.iter().map(|i| i.class).collect()))
        .collect();
    assert_eq!(classes, [(1, vec![8]), (2, vec![3])]);
    assert_eq!(
        xhci.find_configuration(slot_id, 2).as_ref(),
        Ok(&configs[1])
    );
    assert_eq!(xhci.active_configuration(slot_id), None);
    xhci.set_configuration(slot_id, 2).unwrap();
    assert_eq!(xhci.active_configuration(slot_id), Some(&configs[1]));
    assert_eq!(fake.configured().0, 1 | 1 << 3, "interrupt IN 1 (DCI 3)");

    // A device claiming 20 configurations is offered the first 8: the ninth is never
    // read, and its value cannot be set.
    let fake = hid_configurations(20);
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    assert_eq!(xhci.configurations(slot_id).unwrap().len(), 8);
    assert_eq!(xhci.set_configuration(slot_id, 9), Err(Error::BadTransfer));
    assert!(configuration_reads(&fake).iter().all(|i| *i < 8));

    // One unreadable configuration (index 1 answers nothing) fails the lot.
    let fake = FakeXhci::new();
    fake.num_configurations.set(2);
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    assert_eq!(xhci.configurations(slot_id), Err(Error::BadDescriptor));
}

/// A device with `count` configurations: the fake's own, then HID ones of values 2…
fn hid_configurations(count: u8) -> FakeXhci {
    let fake = FakeXhci::new();
    fake.num_configurations.set(count);
    *fake.more_configurations.borrow_mut() = (2..=count)
        .map(|value| {
            let mut c = HID.to_vec();
            c[5] = value;
            c
        })
        .collect();
    fake
}

#[test]
fn a_device_slow_to_describe_itself_is_given_up_on_within_the_budget() {
    // Each answer just inside the transfer timeout: eight configurations would hold the
    // driver for 18 reads, 1.6 s.
    let fake = hid_configurations(8);
    fake.control_delay_us.set(TRANSFER_TIMEOUT_US - 10_000);
    let mut xhci = Controller::start(&fake).unwrap();
    let start = (&fake).now_micros();
    assert_eq!(xhci.enumerate_root_ports(), []);
    let spent = (&fake).now_micros() - start;
    assert!(
        spent < ENUMERATION_BUDGET_US + 2 * COMMAND_TIMEOUT_US,
        "enumeration took {spent} µs"
    );

    // The same device answering in 10 ms is described whole, every configuration.
    let fake = hid_configurations(8);
    fake.control_delay_us.set(10_000);
    let mut xhci = Controller::start(&fake).unwrap();
    let found = xhci.enumerate_root_ports();
    assert_eq!(found.len(), 1);
    assert_eq!(xhci.configurations(found[0].slot_id).unwrap().len(), 8);
}

#[test]
fn a_configuration_longer_than_the_driver_reads_is_refused_after_its_header() {
    let fake = FakeXhci::new();
    let mut long = t::CONFIGURATION.to_vec();
    let total = descriptor::MAX_TOTAL_LENGTH as u16 + 1;
    long[2..4].copy_from_slice(&total.to_le_bytes());
    long.resize(usize::from(total), 0);
    *fake.configuration.borrow_mut() = long;
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    assert_eq!(xhci.configurations(slot_id), Err(Error::BadDescriptor));
    assert_eq!(configuration_reads(&fake), [0], "the 9-byte header only");
}

#[test]
fn alternate_settings_deconfiguration_and_clear_halt_reconfigure_the_endpoints() {
    let fake = FakeXhci::new();
    *fake.configuration.borrow_mut() = ALTERNATES.to_vec();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    xhci.set_configuration(slot_id, 1).unwrap();
    assert_eq!(fake.configured().0, 1 | 1 << 3 | 1 << 4);
    assert_eq!(
        xhci.set_configuration(slot_id, 7),
        Err(Error::BadTransfer),
        "no such configuration"
    );
    xhci.set_interface(slot_id, 0, 1).unwrap();
    assert_eq!(fake.dropped(), 1 << 3 | 1 << 4);
    assert_eq!(fake.configured().0, 1 | 1 << 7, "isochronous IN 3 (DCI 7)");
    assert_eq!(fake.setups().last(), Some(&(0x01, SET_INTERFACE, 1, 0)));
    let seg = [DmaSegment {
        phys: 0x1000,
        len: 8,
    }];
    assert_eq!(
        xhci.queue_transfer(slot_id, 1, Direction::In, &seg),
        Err(Error::NoEndpoint),
        "bulk IN 1 went with alternate setting 0"
    );
    assert_eq!(xhci.set_interface(slot_id, 0, 5), Err(Error::BadTransfer));
    xhci.set_interface(slot_id, 0, 0).unwrap();
    assert_eq!(fake.dropped(), 1 << 7);
    // CLEAR_FEATURE(ENDPOINT_HALT) goes to the device, and the endpoint is dropped and
    // added again so its data toggle is 0 on both sides.
    xhci.clear_halt(slot_id, 0x81).unwrap();
    assert_eq!(fake.setups().last(), Some(&(0x02, CLEAR_FEATURE, 0, 0x81)));
    assert_eq!(fake.dropped(), 1 << 3);
    assert_eq!(fake.configured().0, 1 | 1 << 3);
    xhci.set_configuration(slot_id, 0).unwrap();
    assert_eq!(fake.dropped(), u32::MAX, "Deconfigure");
    assert_eq!(fake.setups().last(), Some(&(0, SET_CONFIGURATION, 0, 0)));
}

#[test]
fn isochronous_packets_each_report_their_length() {
    let fake = FakeXhci::new();
    *fake.configuration.borrow_mut() = ALTERNATES.to_vec();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    xhci.set_configuration(slot_id, 1).unwrap();
    xhci.set_interface(slot_id, 0, 1).unwrap();
    let buf = xhci.dma_alloc(0x1000, 0x1000).unwrap();
    let seg = [DmaSegment {
        phys: buf.phys(),
        len: 3 * 1024,
    }];
    let packets = [0, 1024, 2048].map(|offset| IsoPacket {
        offset,
        length: 1024,
    });
    // The first packet gets 100 bytes, the others all they asked for.
    fake.bulk_in_bytes.set(100);
    let id = xhci
        .queue_isochronous(slot_id, 3, Direction::In, &seg, &packets)
        .unwrap();
    xhci.poll_events().unwrap();
    let (done, c) = xhci.take_completed().unwrap();
    assert_eq!(done, id);
    assert_eq!(c.result, Ok(100 + 2048));
    let lengths: Vec<usize> = c.packets.iter().map(|p| p.actual_length).collect();
    assert_eq!(lengths, [100, 1024, 1024]);
    assert!(c.packets.iter().all(|p| p.status.is_ok()));
    // Two queued back to back go out one after the other: the second starts where the
    // first's three packets (one a microframe at high speed, bInterval 1) end, not at the
    // same MFINDEX.
    let a = xhci
        .queue_isochronous(slot_id, 3, Direction::In, &seg, &packets)
        .unwrap();
    let b = xhci
        .queue_isochronous(slot_id, 3, Direction::In, &seg, &packets)
        .unwrap();
    xhci.poll_events().unwrap();
    let first = xhci.take_completed_of(a).unwrap().start_frame;
    let second = xhci.take_completed_of(b).unwrap().start_frame;
    assert_eq!(second, (first + 3) & 0x3fff, "microframes at high speed");
    assert_eq!(
        xhci.queue_transfer(slot_id, 3, Direction::In, &seg),
        Err(Error::BadTransfer),
        "not a bulk or interrupt endpoint"
    );
}

#[test]
fn a_device_reset_resets_its_port_and_slot_and_addresses_it_again() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let [a, _, _] = three_queued(&fake, &mut xhci, slot_id);
    let before = fake.commands().len();
    xhci.reset_device(slot_id).unwrap();
    assert_eq!(
        fake.commands()[before..],
        [17, 11],
        "Reset Device, Address Device"
    );
    assert_eq!(xhci.take_completion(a), Some(Err(Error::NoDevice)));
    let seg = [DmaSegment {
        phys: 0x1000,
        len: 8,
    }];
    assert_eq!(
        xhci.queue_transfer(slot_id, 2, Direction::Out, &seg),
        Err(Error::NoEndpoint),
        "unconfigured"
    );
    // It answers on EP0 at its slot, and can be configured again.
    let config = xhci.configuration(slot_id).unwrap();
    xhci.configure(slot_id, &config).unwrap();
    assert!(fake
        .portsc_writes()
        .iter()
        .filter(|(port, _)| *port == 2)
        .any(|(_, v)| v & PR != 0));
}
