//! Isolation against hostile devices and guests: the policy sees every configuration and
//! alternate setting and is checked again when a guest activates one, standard requests
//! cannot reach a device by another recipient, and what a device makes the backend keep is
//! bounded. Each test has a second frontend whose device keeps working.

use super::*;
use testkit::sim_host::{DeviceModel, Handshake, Keyboard, MassStorage, SimHost};
use usb::SetupPacket;
use usbback::superspeed::CACHE_BYTES;

const INTERRUPT_IN: [u8; 7] = [7, 5, 0x81, 3, 8, 0, 10];
const BULK_IN: [u8; 7] = [7, 5, 0x81, 2, 0x00, 0x02, 0];
const BULK_OUT: [u8; 7] = [7, 5, 0x02, 2, 0x00, 0x02, 0];

/// A configuration descriptor set of bConfigurationValue `value` with one interface whose
/// alternate settings are `settings` (bInterfaceClass, endpoints).
fn config(value: u8, settings: &[(u8, &[[u8; 7]])]) -> Vec<u8> {
    let mut c = vec![9, 2, 0, 0, 1, value, 0, 0x80, 50];
    for (alternate, (class, endpoints)) in settings.iter().enumerate() {
        c.extend([
            9,
            4,
            0,
            alternate as u8,
            endpoints.len() as u8,
            *class,
            0,
            0,
            0,
        ]);
        for e in *endpoints {
            c.extend(e);
        }
    }
    let total = (c.len() as u16).to_le_bytes();
    c[2..4].copy_from_slice(&total);
    c
}

/// Mass storage behind the endpoints; the configuration as a Bulk-Only disk has it.
fn storage_config(value: u8) -> Vec<u8> {
    config(value, &[(8, &[BULK_IN, BULK_OUT])])
}

/// A configuration exactly `len` bytes long: a vendor-specific interface, then
/// class-specific descriptors of 255 bytes.
fn long_config(value: u8, len: usize) -> Vec<u8> {
    let mut c = config(value, &[(0xff, &[])]);
    while c.len() < len {
        let n = (len - c.len()).min(255);
        assert!(n >= 2, "a length that ends in a whole descriptor");
        c.extend([n as u8, 0x24]);
        c.resize(c.len() + n - 2, 0);
    }
    let total = (len as u16).to_le_bytes();
    c[2..4].copy_from_slice(&total);
    c
}

/// A device whose descriptors the test writes, and may change after it was enumerated (a
/// device's firmware answers as it likes), with a Bulk-Only disk behind bulk IN 1 and OUT 2.
struct Shifty {
    disk: MassStorage,
    /// bNumConfigurations.
    count: u8,
    /// The answer to GET_DESCRIPTOR(CONFIGURATION) of each index; `None` stalls.
    configs: Vec<Option<Vec<u8>>>,
    /// The length of what every index past `configs` answers, if any.
    rest: Option<usize>,
    product: String,
}

impl Shifty {
    fn new(configs: Vec<Option<Vec<u8>>>) -> Shifty {
        Shifty {
            disk: MassStorage::new(64),
            count: configs.len() as u8,
            configs,
            rest: None,
            product: "Shifty".into(),
        }
    }
}

impl DeviceModel for Shifty {
    fn device_descriptor(&self) -> Vec<u8> {
        let mut d = self.disk.device_descriptor();
        d[17] = self.count;
        d
    }
    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        match self.configs.get(usize::from(index)) {
            Some(c) => c.clone(),
            None => self.rest.map(|len| long_config(index, len)),
        }
    }
    fn string(&self, index: u8) -> Option<&str> {
        match index {
            2 => Some(&self.product),
            i => self.disk.string(i),
        }
    }
    fn control(&mut self, setup: &SetupPacket, data: &[u8]) -> Handshake<Vec<u8>> {
        self.disk.control(setup, data)
    }
    fn data_in(&mut self, endpoint: u8, max_len: usize) -> Handshake<Vec<u8>> {
        self.disk.data_in(endpoint, max_len)
    }
    fn data_out(&mut self, endpoint: u8, data: &[u8]) -> Handshake<()> {
        self.disk.data_out(endpoint, data)
    }
    fn reset(&mut self) {
        self.disk.reset()
    }
    fn as_any(&self) -> &dyn core::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn core::any::Any {
        self
    }
}

/// Frontend A (port 1 gets the device under test) and frontend B (port 1 gets a keyboard),
/// each with its own controller, over a simulated host.
struct Two {
    w: Machine,
    host: SimHost<LocalPage>,
    a: RawFrontend,
    b_dom: Domain,
    b: RawFrontend,
    be: DomId,
    kbd: u32,
}

fn two(device: Box<dyn DeviceModel>, speed: Speed, policy: &str) -> (Two, u32) {
    let mut w = machine(8);
    let be = DomId(1);
    let b_dom = w.xen.create_domain();
    toolstack_add(&w.xen, be, b_dom.domid(), 8);
    w.be.set_policy(policy::Policy::parse(policy).unwrap());
    let mut host: SimHost<LocalPage> = SimHost::new();
    let id = host.plug(device, "1-1", speed);
    let kbd = host.plug(Box::new(Keyboard::new()), "1-2", Speed::Full);
    settle(&mut w.be, &mut host);
    let a = RawFrontend::connect(&w.fe, be, None);
    let b = RawFrontend::connect(&b_dom, be, None);
    assign(&w.xen, be, w.fe.domid(), 1, "1-1");
    assign(&w.xen, be, b_dom.domid(), 1, "1-2");
    settle(&mut w.be, &mut host);
    let mut t = Two {
        w,
        host,
        a,
        b_dom,
        b,
        be,
        kbd,
    };
    assert_eq!(port_changes(&mut t.b), [(1, USBIF_SPEED_FULL)]);
    (t, id)
}

impl Two {
    fn settle(&mut self) {
        settle(&mut self.w.be, &mut self.host);
    }

    /// A's requests, answered: (id, status) in order.
    fn a_sends(&mut self, reqs: &[UsbifUrbRequest]) -> Vec<(u16, i32)> {
        send(&self.w.fe, &mut self.a, reqs);
        self.settle();
        responses(&mut self.a)
            .iter()
            .map(|r| (r.id, r.status))
            .collect()
    }

    /// B configures its keyboard and gets a key through it (request ids from `rid`).
    fn b_types(&mut self, rid: u16) {
        let set_config = control(rid, 1, 0, [0, 9, 1, 0, 0, 0, 0, 0]);
        let report = buffer(&self.b_dom, self.be, 0, &[0; 8], false);
        let poll = with_buffer(
            urb(rid + 1, 1, 0, 1, Direction::In, TransferType::Interrupt),
            &report,
        );
        send(&self.b_dom, &mut self.b, &[set_config, poll]);
        self.settle();
        self.host
            .model_mut::<Keyboard>(self.kbd)
            .unwrap()
            .press(0, &[0x04]);
        self.settle();
        let got: Vec<(u16, i32, i32)> = responses(&mut self.b)
            .iter()
            .map(|r| (r.id, r.status, r.actual_length))
            .collect();
        assert_eq!(got, [(rid, 0, 0), (rid + 1, 0, 8)], "B's keyboard works");
        assert_eq!(report.read()[2], 0x04, "key a");
    }

    /// A WRITE(10) of one block of 0x5a at LBA 0 to port 1, as A's Bulk-Only driver sends
    /// it: CBW, data, CSW. Returns the three statuses.
    fn a_writes(&mut self, rid: u16) -> Vec<i32> {
        let (fe, be) = (self.w.fe.clone(), self.be);
        let wrapper = buffer(
            &fe,
            be,
            0,
            &read_write_10_cbw(1, true, 0, 1, BLOCK_SIZE as u32),
            true,
        );
        let data = buffer(&fe, be, 0, &[0x5a; 512], true);
        let status = buffer(&fe, be, 0, &[0; 13], false);
        let out =
            |id, b: &Buffer| with_buffer(urb(id, 1, 0, 2, Direction::Out, TransferType::Bulk), b);
        let csw = with_buffer(
            urb(rid + 2, 1, 0, 1, Direction::In, TransferType::Bulk),
            &status,
        );
        let got = self.a_sends(&[out(rid, &wrapper), out(rid + 1, &data), csw]);
        got.iter().map(|r| r.1).collect()
    }

    fn disk_untouched(&self, id: u32) -> bool {
        let model = self.host.model::<Shifty>(id).unwrap();
        model.disk.disk().iter().all(|b| *b == 0)
    }

    fn a_id(&self) -> DeviceId {
        DeviceId {
            frontend: self.w.fe.domid(),
            devid: 0,
        }
    }
}

const SET_CONFIGURATION_2: [u8; 8] = [0, 9, 2, 0, 0, 0, 0, 0];

#[test]
fn a_class_in_a_second_configuration_is_denied_before_the_guest_can_select_it() {
    // Configuration 1 is a keyboard, configuration 2 a disk; mass storage is denied.
    let hid = config(1, &[(3, &[INTERRUPT_IN])]);
    let device = Shifty::new(vec![Some(hid), Some(storage_config(2))]);
    let (mut t, id) = two(Box::new(device), Speed::High, "deny:class=08");
    assert_eq!(
        port_status(&t.w.xen, t.be, t.w.fe.domid(), 1),
        "refused policy rule=1 text=deny:class=08"
    );
    assert!(port_changes(&mut t.a).is_empty(), "never offered to A");
    // Whatever A sends to the port, it gets errors, and the disk stays as it was.
    let got = t.a_sends(&[control(0, 1, 0, SET_CONFIGURATION_2)]);
    assert_eq!(got, [(0, USBIF_STATUS_NODEV)]);
    assert_eq!(t.a_writes(1), [USBIF_STATUS_NODEV; 3]);
    assert_eq!(t.host.configuration(id), Some(0));
    assert!(t.disk_untouched(id));
    t.b_types(0);
}

#[test]
fn a_device_that_changes_its_descriptors_is_checked_again_when_the_guest_selects_them() {
    // At enumeration every setting shows HID; afterwards configuration 2, then alternate
    // setting 1 of configuration 1, say mass storage, and are that.
    let disguised = vec![
        Some(config(
            1,
            &[(3, &[INTERRUPT_IN]), (3, &[BULK_IN, BULK_OUT])],
        )),
        Some(config(2, &[(3, &[BULK_IN, BULK_OUT])])),
    ];
    let (mut t, id) = two(
        Box::new(Shifty::new(disguised)),
        Speed::High,
        "deny:class=08",
    );
    assert_eq!(port_changes(&mut t.a), [(1, USBIF_SPEED_HIGH)]);
    t.host.model_mut::<Shifty>(id).unwrap().configs[1] = Some(storage_config(2));
    // SET_CONFIGURATION(2) is refused (a STALL, as a device refuses a request), the device
    // stays unconfigured, and a WRITE(10) finds no endpoint.
    let got = t.a_sends(&[control(0, 1, 0, SET_CONFIGURATION_2)]);
    assert_eq!(got, [(0, USBIF_STATUS_STALL)]);
    assert_eq!(t.host.configuration(id), Some(0));
    assert_eq!(t.a_writes(1), [USBIF_STATUS_INVAL; 3]);
    // Configuration 1 is allowed; then its alternate setting 1 changes, and is refused:
    // setting 0 stays.
    let set_config_1 = control(4, 1, 0, [0, 9, 1, 0, 0, 0, 0, 0]);
    assert_eq!(t.a_sends(&[set_config_1]), [(4, USBIF_STATUS_OK)]);
    t.host.model_mut::<Shifty>(id).unwrap().configs[0] = Some(config(
        1,
        &[(3, &[INTERRUPT_IN]), (8, &[BULK_IN, BULK_OUT])],
    ));
    let set_alternate_1 = control(5, 1, 0, [1, 11, 1, 0, 0, 0, 0, 0]);
    assert_eq!(t.a_sends(&[set_alternate_1]), [(5, USBIF_STATUS_STALL)]);
    assert_eq!(t.host.configuration(id), Some(1));
    assert_eq!(t.a_writes(6), [USBIF_STATUS_INVAL; 3], "no bulk OUT 2");
    assert!(t.disk_untouched(id));
    t.b_types(0);
}

#[test]
fn a_device_whose_configuration_cannot_be_read_is_refused_by_a_class_deny_rule() {
    // A keyboard's class is denied; this device's configuration stalls, so it may be one.
    let (mut t, id) = two(
        Box::new(Shifty::new(vec![None])),
        Speed::High,
        "deny:class=03:dom=99;deny:class=08",
    );
    assert_eq!(
        port_status(&t.w.xen, t.be, t.w.fe.domid(), 1),
        "refused policy rule=2 text=deny:class=08"
    );
    assert!(port_changes(&mut t.a).is_empty());
    assert_eq!(t.w.be.port_device(t.a_id(), 1), None);
    assert!(t.disk_untouched(id));
    t.b_types(0);
}

#[test]
fn standard_requests_with_another_recipient_or_direction_never_reach_the_device() {
    let (mut t, id) = two(
        Box::new(Shifty::new(vec![Some(storage_config(1))])),
        Speed::High,
        "",
    );
    assert_eq!(port_changes(&mut t.a), [(1, USBIF_SPEED_HIGH)]);
    let submitted = t.host.counts(id).submitted;
    let odd = [
        [0x01, 9, 1, 0, 0, 0, 0, 0],  // SET_CONFIGURATION to an interface
        [0x02, 9, 1, 0, 0, 0, 0, 0],  // to an endpoint
        [0x80, 9, 1, 0, 0, 0, 0, 0],  // device to host
        [0x00, 11, 0, 0, 0, 0, 0, 0], // SET_INTERFACE to the device
        [0x02, 5, 9, 0, 0, 0, 0, 0],  // SET_ADDRESS to an endpoint
    ];
    let reqs: Vec<UsbifUrbRequest> = odd
        .iter()
        .zip(0..)
        .map(|(setup, rid)| control(rid, 1, 0, *setup))
        .collect();
    let got = t.a_sends(&reqs);
    assert_eq!(
        got,
        (0..5)
            .map(|rid| (rid, USBIF_STATUS_INVAL))
            .collect::<Vec<_>>()
    );
    assert_eq!(t.host.configuration(id), Some(0), "not configured");
    assert_eq!(t.host.counts(id).submitted, submitted, "nothing reached it");
    // The address stays 0: address 9 is nobody.
    let desc = buffer(&t.w.fe, t.be, 0, &[0; 18], false);
    let at_9 = with_buffer(control(5, 1, 9, GET_DEVICE), &desc);
    let at_0 = with_buffer(control(6, 1, 0, GET_DEVICE), &desc);
    let got = t.a_sends(&[at_9, at_0]);
    assert_eq!(got, [(5, USBIF_STATUS_NODEV), (6, USBIF_STATUS_OK)]);
    t.b_types(0);
}

#[test]
fn a_device_answering_every_configuration_index_with_64_kib_holds_a_bounded_cache() {
    // A SuperSpeed device (its configurations are rewritten and cached for the guest)
    // claiming 255 configurations, answering index 0 as a disk and every other index with
    // 65535 bytes, and a product string far longer than USB allows.
    let mut hog = Shifty::new(vec![Some(storage_config(1))]);
    hog.count = 255;
    hog.rest = Some(65535);
    hog.product = "x".repeat(100_000);
    let (mut t, id) = two(Box::new(hog), Speed::Super, "");
    assert_eq!(port_changes(&mut t.a), [(1, USBIF_SPEED_HIGH)]);
    let known = t.w.be.host_devices().iter().find(|k| k.id == id).unwrap();
    assert_eq!(
        known.product.as_ref().map(|p| p.chars().count()),
        Some(host::MAX_STRING_CHARS)
    );
    let buffers: Vec<Buffer> = (0..8)
        .map(|_| buffer(&t.w.fe, t.be, 0, &[0; 65535], false))
        .collect();
    for batch in 0..32u16 {
        let reqs: Vec<UsbifUrbRequest> = buffers
            .iter()
            .zip(0..8u16)
            .map(|(b, i)| {
                let index = (batch * 8 + i) as u8;
                let get = [0x80, 6, index, 2, 0, 0, 0xff, 0xff];
                with_buffer(control(i, 1, 0, get), b)
            })
            .collect();
        send(&t.w.fe, &mut t.a, &reqs);
        t.settle();
        let got: Vec<(i32, i32)> = responses(&mut t.a)
            .iter()
            .map(|r| (r.status, r.actual_length))
            .collect();
        let whole = |i: u16| if batch == 0 && i == 0 { 32 } else { 65535 };
        let want: Vec<(i32, i32)> = (0..8).map(|i| (USBIF_STATUS_OK, whole(i))).collect();
        assert_eq!(got, want, "batch {batch}");
        if batch % 8 == 0 {
            t.b_types(batch);
        }
    }
    let cache = t.w.be.config_cache(t.a_id(), 1).unwrap();
    assert!(cache.len() <= usize::from(host::MAX_CONFIGURATIONS));
    assert!(cache.bytes() <= CACHE_BYTES, "{} bytes held", cache.bytes());
    assert_eq!(cache.get(0).map(<[u8]>::len), Some(32), "the real one kept");
    assert!(buffers.iter().all(|b| b.released(&t.w.fe)));
    assert_eq!(
        t.w.be.hypervisor().mappings(),
        4,
        "only the rings stay mapped"
    );
}

#[test]
fn a_keyboard_report_is_answered_before_another_guests_bulk_data_of_the_same_batch() {
    log_capture::start();
    let (mut t, _) = two(
        Box::new(Shifty::new(vec![Some(storage_config(1))])),
        Speed::High,
        "",
    );
    assert_eq!(port_changes(&mut t.a), [(1, USBIF_SPEED_HIGH)]);
    let set_config_1 = control(0, 1, 0, [0, 9, 1, 0, 0, 0, 0, 0]);
    assert_eq!(t.a_sends(&[set_config_1]), [(0, USBIF_STATUS_OK)]);
    // B's keyboard is configured and polled; the poll waits for a key.
    let report = buffer(&t.b_dom, t.be, 0, &[0; 8], false);
    let poll = with_buffer(
        urb(1, 1, 0, 1, Direction::In, TransferType::Interrupt),
        &report,
    );
    send(&t.b_dom, &mut t.b, &[set_config_1, poll]);
    t.settle();
    assert_eq!(
        responses(&mut t.b).len(),
        1,
        "only SET_CONFIGURATION answered"
    );
    // A reads a block (CBW, data, CSW) while a key is pressed: both complete in one batch
    // of the host's events, A's data first.
    let (fe, be) = (t.w.fe.clone(), t.be);
    let wrapper = buffer(
        &fe,
        be,
        0,
        &read_write_10_cbw(1, false, 0, 1, BLOCK_SIZE as u32),
        true,
    );
    let data = buffer(&fe, be, 0, &[0; BLOCK_SIZE], false);
    let status = buffer(&fe, be, 0, &[0; 13], false);
    let bulk = |id, dir, ep, b: &Buffer| with_buffer(urb(id, 1, 0, ep, dir, TransferType::Bulk), b);
    send(
        &fe,
        &mut t.a,
        &[
            bulk(1, Direction::Out, 2, &wrapper),
            bulk(2, Direction::In, 1, &data),
            bulk(3, Direction::In, 1, &status),
        ],
    );
    t.host
        .model_mut::<Keyboard>(t.kbd)
        .unwrap()
        .press(0, &[0x04]);
    let mut ports = Vec::new();
    t.w.be.hypervisor().take_pending(&mut |p| ports.push(p));
    for p in ports {
        t.w.be.handle_event(p, &mut t.host);
    }
    let mut events = Vec::new();
    t.host.poll(&mut events);
    // The keyboard's report (8 bytes) last in the batch.
    events.sort_by_key(|e| matches!(e, HostEvent::Completed(c) if c.result == Ok(8)));
    let last = events.last();
    assert!(
        matches!(last, Some(HostEvent::Completed(c)) if c.result == Ok(8)),
        "the report is in the batch: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HostEvent::Completed(c) if c.result == Ok(BLOCK_SIZE))),
        "and A's block: {events:?}"
    );
    t.w.be.host_events(&mut t.host, &mut events);
    // Answered first, and both guests got everything.
    let answered: Vec<String> = log_capture::events("urb_answered")
        .iter()
        .filter(|l| l.contains(" bytes=8") || l.contains(&format!(" bytes={BLOCK_SIZE}")))
        .cloned()
        .collect();
    let b = t.b_dom.domid().0;
    assert_eq!(answered.len(), 2, "{answered:?}");
    assert!(
        answered[0].contains(&format!("domid={b} ")) && answered[0].contains(" bytes=8"),
        "B's report first: {answered:?}"
    );
    let got: Vec<(u16, i32)> = responses(&mut t.b)
        .iter()
        .map(|r| (r.id, r.actual_length))
        .collect();
    assert_eq!(got, [(1, 8)]);
    assert_eq!(report.read()[2], 0x04, "key a");
    t.settle();
    let got: Vec<(u16, i32)> = responses(&mut t.a)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(got, [(1, 0), (2, 0), (3, 0)]);
}
