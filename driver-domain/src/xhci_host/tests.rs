//! `XhciHost`'s tests, on the driver's simulated controller.

use super::*;
use testkit::fake_xhci::FakeXhci;
use usb::Direction;
use usbback::host::PageSegment;
use xhci_driver::DmaBuffer;

fn allow(_: &ClassSet) -> bool {
    true
}

fn host(fake: &FakeXhci) -> (XhciHost<&FakeXhci>, Vec<HostEvent>) {
    let mut xhci = Controller::start(fake).unwrap();
    let found = xhci.enumerate_root_ports();
    let mut host = XhciHost::new(xhci, found);
    let mut events = Vec::new();
    UsbHost::<()>::poll(&mut host, &mut events);
    (host, events)
}

fn transfer(
    token: u64,
    transfer_type: TransferType,
    direction: Direction,
    setup: Option<[u8; 8]>,
    phys: u64,
    len: u16,
) -> Transfer<()> {
    Transfer {
        token,
        endpoint: if transfer_type == TransferType::Control {
            0
        } else {
            2
        },
        direction,
        transfer_type,
        setup,
        segments: [PageSegment {
            page: (),
            phys,
            offset: 0,
            len,
        }]
        .into_iter()
        .collect(),
        iso_packets: Vec::new(),
        start_frame: None,
    }
}

#[test]
fn devices_are_offered_with_ids_and_their_transfers_complete_with_their_tokens() {
    let fake = FakeXhci::new();
    let (mut host, events) = host(&fake);
    let [HostEvent::Attached(info)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(
        (info.busid.as_str(), info.vendor_id, info.product_id),
        ("1-1", 0x1234, 0x5678)
    );
    assert_eq!(
        info.interface_classes,
        InterfaceClasses::Checked(ClassSet::of(8))
    );
    assert!(!info.is_hub);
    let id = info.id;
    let buf = host.controller().dma_alloc(0x1000, 0x1000).unwrap();
    let get = transfer(
        7,
        TransferType::Control,
        Direction::In,
        Some([0x80, 6, 0, 1, 0, 0, 18, 0]),
        buf.phys(),
        18,
    );
    host.submit(id, get).unwrap();
    let mut events = Vec::new();
    UsbHost::<()>::poll(&mut host, &mut events);
    let [HostEvent::Completed(c)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!((c.token, c.result), (7, Ok(18)));
    let mut bytes = [0u8; 18];
    buf.read_bytes(0, &mut bytes);
    assert_eq!(bytes, testkit::fake_xhci::DEVICE_DESCRIPTOR);
    assert_eq!(
        UsbHost::<()>::set_configuration(&mut host, id, 9, 900, &mut allow),
        Err(TransferError::Invalid)
    );
    configure(&mut host, id, 1);
    assert_eq!(
        host.submit(
            id + 1,
            transfer(8, TransferType::Bulk, Direction::Out, None, buf.phys(), 8)
        ),
        Err(TransferError::NoDevice)
    );
}

/// Polls until the host answers `token`, which must have succeeded.
fn answered(host: &mut XhciHost<&FakeXhci>, token: u64) {
    for _ in 0..4 {
        let mut events = Vec::new();
        UsbHost::<()>::poll(host, &mut events);
        for e in events {
            if let HostEvent::Completed(c) = e {
                assert_eq!((c.token, c.result), (token, Ok(0)));
                return;
            }
        }
    }
    panic!("{token} never answered");
}

/// SET_CONFIGURATION `value` of `id` through usbback's interface, answered.
fn configure(host: &mut XhciHost<&FakeXhci>, id: u32, value: u8) {
    UsbHost::<()>::set_configuration(host, id, value, 900, &mut allow).unwrap();
    answered(host, 900);
}

/// Configuration value 2: a HID interface, interrupt IN 1.
const HID: [u8; 25] = [
    9, 2, 25, 0, 1, 2, 0, 0x80, 50, //
    9, 4, 0, 0, 1, 3, 1, 1, 0, //
    7, 5, 0x81, 3, 8, 0, 10,
];

fn attached(events: &[HostEvent]) -> &DeviceInfo {
    let [HostEvent::Attached(info)] = events else {
        panic!("{events:?}");
    };
    info
}

#[test]
fn policy_sees_every_configuration_and_vets_what_set_configuration_activates() {
    let fake = FakeXhci::new();
    fake.num_configurations.set(2);
    *fake.more_configurations.borrow_mut() = alloc::vec![HID.to_vec()];
    let (mut host, events) = host(&fake);
    let info = attached(&events);
    assert_eq!(
        info.interface_classes,
        InterfaceClasses::Checked([3, 8].into_iter().collect())
    );
    let id = info.id;
    // Configuration 2 is shown as the host read it, and refused: the device is not
    // asked, nothing is set up.
    let mut seen = Vec::new();
    let mut deny = |c: &ClassSet| {
        seen.push(*c);
        false
    };
    assert_eq!(
        UsbHost::<()>::set_configuration(&mut host, id, 2, 900, &mut deny),
        Err(TransferError::Refused)
    );
    assert_eq!(seen, [ClassSet::of(3)]);
    assert!(
        !fake.setups().iter().any(|s| s.1 == 9),
        "no SET_CONFIGURATION"
    );
    assert_eq!(host.controller().active_configuration(1), None);
    configure(&mut host, id, 2);
    assert_eq!(fake.setups().last(), Some(&(0, 9, 2, 0)));
}

#[test]
fn set_interface_is_vetted_with_the_alternate_settings_class() {
    // Interface 0: alternate setting 0 mass storage, 1 vendor specific (ff).
    let fake = FakeXhci::new();
    *fake.configuration.borrow_mut() = alloc::vec![
        9, 2, 34, 0, 1, 1, 0, 0x80, 50, //
        9, 4, 0, 0, 1, 8, 6, 0x50, 0, //
        7, 5, 0x81, 2, 0x00, 0x02, 0, //
        9, 4, 0, 1, 0, 0xff, 0, 0, 0,
    ];
    let (mut host, events) = host(&fake);
    let id = attached(&events).id;
    configure(&mut host, id, 1);
    let mut no_vendor = |c: &ClassSet| !c.contains(0xff);
    assert_eq!(
        UsbHost::<()>::set_interface(&mut host, id, 0, 1, 900, &mut no_vendor),
        Err(TransferError::Refused)
    );
    assert!(!fake.setups().iter().any(|s| s.1 == 11), "no SET_INTERFACE");
    UsbHost::<()>::set_interface(&mut host, id, 0, 0, 901, &mut no_vendor).unwrap();
    answered(&mut host, 901);
    assert_eq!(fake.setups().last(), Some(&(1, 11, 0, 0)));
}

/// Interface 0: alternate setting 0 mass storage with bulk IN 1, 1 vendor specific (ff)
/// without endpoints.
const TWO_SETTINGS: [u8; 34] = [
    9, 2, 34, 0, 1, 1, 0, 0x80, 50, //
    9, 4, 0, 0, 1, 8, 6, 0x50, 0, //
    7, 5, 0x81, 2, 0x00, 0x02, 0, //
    9, 4, 0, 1, 0, 0xff, 0, 0, 0,
];

/// The Completed events of one poll, as (token, result).
fn completions(host: &mut XhciHost<&FakeXhci>) -> Vec<(u64, Result<usize, TransferError>)> {
    let mut events = Vec::new();
    UsbHost::<()>::poll(host, &mut events);
    events
        .into_iter()
        .filter_map(|e| match e {
            HostEvent::Completed(c) => Some((c.token, c.result)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_device_that_does_not_answer_keeps_no_one_waiting() {
    let fake = FakeXhci::new();
    *fake.configuration.borrow_mut() = TWO_SETTINGS.to_vec();
    let (mut host, events) = host(&fake);
    let id = attached(&events).id;
    configure(&mut host, id, 1);
    let buf = host.controller().dma_alloc(0x1000, 0x1000).unwrap();
    let get = |token| {
        let setup = Some([0x80, 6, 0, 1, 0, 0, 18, 0]);
        transfer(
            token,
            TransferType::Control,
            Direction::In,
            setup,
            buf.phys(),
            18,
        )
    };

    // The device stops answering control transfers. The host still takes each request
    // at once: the controller's side is done, the device's answer is left to come.
    fake.answer_transfers.set(false);
    let start = (&fake).now_micros();
    UsbHost::<()>::set_configuration(&mut host, id, 1, 10, &mut allow).unwrap();
    UsbHost::<()>::clear_halt(&mut host, id, 0x81, 11).unwrap();
    assert_eq!(completions(&mut host), []);
    let spent = (&fake).now_micros() - start;
    assert!(spent < 1000, "the host waited {spent} µs for the device");
    assert_eq!(fake.dropped(), 0b1000, "SET_CONFIGURATION's own endpoints");
    let setups = fake.setups().len();
    let configure_endpoints = || fake.commands().iter().filter(|&&t| t == 12).count();
    let before = configure_endpoints();

    // It answers: both complete, in order, and only then is the endpoint whose halt
    // was cleared reset on the controller's side.
    fake.answer_transfers.set(true);
    host.submit(id, get(12)).unwrap();
    assert_eq!(
        completions(&mut host),
        [(10, Ok(0)), (11, Ok(0)), (12, Ok(18))]
    );
    assert_eq!(
        fake.setups()[setups..],
        [(0, 9, 1, 0), (2, 1, 0, 0x81), (0x80, 6, 0x100, 0)]
    );
    assert_eq!(configure_endpoints(), before + 1);
    assert_eq!(
        (fake.dropped(), fake.configured().0),
        (0b1000, 0b1001),
        "endpoint 0x81 dropped and added again"
    );

    // SET_INTERFACE the same way; a request the device never answers is cancelled as
    // a transfer is.
    fake.answer_transfers.set(false);
    UsbHost::<()>::set_interface(&mut host, id, 0, 1, 13, &mut allow).unwrap();
    assert_eq!(completions(&mut host), []);
    assert_eq!(
        fake.dropped(),
        0b1000,
        "alternate setting 0's endpoint dropped at once"
    );
    assert!(UsbHost::<()>::cancel(&mut host, id, 13));
    assert_eq!(
        completions(&mut host),
        [(13, Err(TransferError::Cancelled))]
    );
    fake.answer_transfers.set(true);
    host.submit(id, get(14)).unwrap();
    assert_eq!(completions(&mut host), [(14, Ok(18))]);
}

#[test]
fn a_device_whose_configuration_cannot_be_read_has_unknown_classes() {
    // It claims two configurations and answers only the first.
    let fake = FakeXhci::new();
    fake.num_configurations.set(2);
    let (_, events) = host(&fake);
    assert_eq!(
        attached(&events).interface_classes,
        InterfaceClasses::Unknown
    );
}

#[test]
fn an_unplugged_device_completes_its_transfers_before_it_is_reported_gone() {
    let fake = FakeXhci::new();
    let (mut host, events) = host(&fake);
    let HostEvent::Attached(info) = &events[0] else {
        panic!("{events:?}");
    };
    let id = info.id;
    configure(&mut host, id, 1);
    fake.answer_bulk.set(false);
    let buf = host.controller().dma_alloc(0x1000, 0x1000).unwrap();
    for token in [1, 2] {
        let out = transfer(
            token,
            TransferType::Bulk,
            Direction::Out,
            None,
            buf.phys(),
            512,
        );
        host.submit(id, out).unwrap();
    }
    assert!(UsbHost::<()>::cancel(&mut host, id, 2));
    fake.unplug(2);
    let mut events = Vec::new();
    UsbHost::<()>::poll(&mut host, &mut events);
    let mut results: Vec<(u64, Result<usize, TransferError>)> = events
        .iter()
        .filter_map(|e| match e {
            HostEvent::Completed(c) => Some((c.token, c.result)),
            _ => None,
        })
        .collect();
    results.sort_by_key(|r| r.0);
    assert_eq!(
        results,
        [
            (1, Err(TransferError::NoDevice)),
            (2, Err(TransferError::Cancelled))
        ]
    );
    assert_eq!(
        events.last(),
        Some(&HostEvent::Detached {
            id,
            busid: "1-1".into()
        })
    );
    assert!(UsbHost::<()>::devices(&host).is_empty());
    assert!(!UsbHost::<()>::cancel(&mut host, id, 1), "answered already");
}

#[cfg(feature = "demo")]
#[test]
fn sim_pages_give_the_controller_the_pages_own_addresses() {
    use crate::demo::SimPages;
    use xen::page::LocalPage;
    let fake = FakeXhci::new();
    let (mut host, events) = host(&fake);
    let HostEvent::Attached(info) = &events[0] else {
        panic!("{events:?}");
    };
    let id = info.id;
    let page = LocalPage::new();
    // The fake controller's DMA space is its own buffers: the page's "bus address" is
    // one of them, so the device descriptor lands where the translation says, at the
    // segment's offset.
    let buf = host.controller().dma_alloc(0x1000, 0x1000).unwrap();
    let get = Transfer {
        token: 3,
        endpoint: 0,
        direction: Direction::In,
        transfer_type: TransferType::Control,
        setup: Some([0x80, 6, 0, 1, 0, 0, 18, 0]),
        segments: [PageSegment {
            page: page.clone(),
            phys: xen::sim::GRANT_WINDOW.0,
            offset: 4,
            len: 18,
        }]
        .into_iter()
        .collect(),
        iso_packets: Vec::new(),
        start_frame: None,
    };
    BUS.store(buf.phys(), core::sync::atomic::Ordering::Relaxed);
    let mut sim = SimPages::new(&mut host, |_| {
        BUS.load(core::sync::atomic::Ordering::Relaxed)
    });
    sim.submit(id, get).unwrap();
    let mut events = Vec::new();
    sim.poll(&mut events);
    let [HostEvent::Completed(c)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!((c.token, c.result), (3, Ok(18)));
    let mut bytes = [0u8; 18];
    buf.read_bytes(4, &mut bytes);
    assert_eq!(
        bytes,
        testkit::fake_xhci::DEVICE_DESCRIPTOR,
        "at the page offset"
    );
}

#[cfg(feature = "demo")]
static BUS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
