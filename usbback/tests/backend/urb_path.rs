//! The URB path against a model host controller (`testkit::model_host`): devices reported,
//! requests passed through the grants, unlinks, descriptor rewriting, hostile requests, many
//! frontends, departures.

use super::*;

#[test]
fn an_assigned_device_is_reported_and_its_urbs_pass_through_the_grants() {
    let mut r = connected_frontend();
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(1, USBIF_SPEED_HIGH)]);
    assert_eq!(port_status(&r.w.xen, r.be, r.fe, 1), "connected");
    assert_eq!(r.host.ops, ["reset 1"], "a fresh device for the guest");

    // GET_DESCRIPTOR to address 0 into a buffer at offset 100; SET_ADDRESS emulated.
    let desc = buffer(&r.w.fe, r.be, 100, &[0; 18], false);
    let get = with_buffer(control(0, 1, 0, GET_DEVICE), &desc);
    let set_address = control(1, 1, 0, [0, 5, 7, 0, 0, 0, 0, 0]);
    send(&r.w.fe, &mut r.front, &[get, set_address]);
    settle(&mut r.w.be, &mut r.host);
    let mut got = responses(&mut r.front);
    got.sort_by_key(|r| r.id);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].id, got[0].status, got[0].actual_length), (0, 0, 18));
    assert_eq!(
        (got[1].id, got[1].status),
        (1, USBIF_STATUS_OK),
        "answered at once"
    );
    assert_eq!(desc.read(), device_descriptor(false));
    assert!(desc.released(&r.w.fe), "unmapped before the answer");

    // At address 7 now: SET_CONFIGURATION goes through the host; address 6 is nobody.
    let set_config = control(2, 1, 7, [0, 9, 1, 0, 0, 0, 0, 0]);
    let clear_halt = control(3, 1, 7, [2, 1, 0, 0, 0x81, 0, 0, 0]);
    let stray = with_buffer(control(4, 1, 6, GET_DEVICE), &desc);
    send(&r.w.fe, &mut r.front, &[set_config, clear_halt, stray]);
    settle(&mut r.w.be, &mut r.host);
    // The stray is answered at once, the others when the device has answered.
    let got: Vec<(u16, i32)> = responses(&mut r.front)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(got, [(4, USBIF_STATUS_NODEV), (2, 0), (3, 0)]);
    assert_eq!(
        r.host.ops[1..],
        ["set_configuration 1 1", "clear_halt 1 0x81"]
    );

    // Bulk OUT over two pages (read-only grants), bulk IN over three.
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    let out = buffer(&r.w.fe, r.be, 4000, &data, true);
    let inb = buffer(&r.w.fe, r.be, 50, &[0; 9000], false);
    let bulk_out = with_buffer(urb(5, 1, 7, 2, Direction::Out, TransferType::Bulk), &out);
    let bulk_in = with_buffer(urb(6, 1, 7, 1, Direction::In, TransferType::Bulk), &inb);
    send(&r.w.fe, &mut r.front, &[bulk_out, bulk_in]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!(
        (got[0].id, got[0].status, got[0].actual_length),
        (5, 0, 6000)
    );
    assert_eq!(
        (got[1].id, got[1].status, got[1].actual_length),
        (6, 0, 9000)
    );
    assert_eq!(r.host.out[&1], data, "OUT data reached the device");
    let want: Vec<u8> = (0..9000).map(|i| (i % 251) as u8).collect();
    assert_eq!(inb.read(), want, "IN data reached the guest's pages");
    assert!(out.released(&r.w.fe) && inb.released(&r.w.fe));
    let id = DeviceId {
        frontend: r.fe,
        devid: 0,
    };
    let stats = r.w.be.stats(id).unwrap();
    assert_eq!((stats.completed, stats.errors, stats.bytes), (6, 1, 15018));
    // IN: the 18-byte descriptor and the 9000 bytes read; the rest went out.
    assert_eq!(stats.bytes_in, 9018);
    let moved = r.w.be.take_moved();
    assert_eq!(
        (moved.completed, moved.bytes, moved.bytes_in),
        (6, 15018, 9018)
    );
    assert_eq!(r.w.be.take_moved(), Stats::default(), "since the last take");
}

#[test]
fn an_unlink_is_answered_after_its_request_and_unassigning_cancels_and_reports_gone() {
    let mut r = connected_frontend();
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    port_changes(&mut r.front);
    r.host.hold = true;
    let b = buffer(&r.w.fe, r.be, 0, &[0; 512], false);
    let read = with_buffer(urb(1, 1, 0, 1, Direction::In, TransferType::Bulk), &b);
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    assert!(responses(&mut r.front).is_empty(), "in flight");
    let mut unlink = urb(2, 1, 0, 1, Direction::In, TransferType::Bulk);
    unlink.pipe |= USBIF_PIPE_UNLINK;
    unlink.u[0] = 1;
    let mut unknown = unlink;
    unknown.id = 3;
    unknown.u[0] = 9;
    send(&r.w.fe, &mut r.front, &[unlink, unknown]);
    settle(&mut r.w.be, &mut r.host);
    let got: Vec<(u16, i32)> = responses(&mut r.front)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(
        got,
        [
            (3, USBIF_STATUS_INVAL),
            (1, USBIF_STATUS_SHUTDOWN),
            (2, USBIF_STATUS_OK)
        ],
        "the unknown unlink at once; the cancelled request, then its unlink"
    );
    assert!(b.released(&r.w.fe));

    // Unassigned while a transfer is in flight: cancelled, answered, port empty.
    let read = with_buffer(urb(4, 1, 0, 1, Direction::In, TransferType::Bulk), &b);
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    assign(&r.w.xen, r.be, r.fe, 1, "");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(1, USBIF_SPEED_NONE)]);
    let got = responses(&mut r.front);
    assert_eq!((got[0].id, got[0].status), (4, USBIF_STATUS_SHUTDOWN));
    assert!(b.released(&r.w.fe));

    // Assigned again, then unplugged mid-transfer: no device, and the port waits for it.
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(1, USBIF_SPEED_HIGH)]);
    let read = with_buffer(urb(5, 1, 0, 1, Direction::In, TransferType::Bulk), &b);
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    r.host.unplug(1);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!((got[0].id, got[0].status), (5, USBIF_STATUS_NODEV));
    assert_eq!(port_changes(&mut r.front), [(1, USBIF_SPEED_NONE)]);
    assert_eq!(
        port_status(&r.w.xen, r.be, r.fe, 1),
        "waiting device_absent"
    );
    // Plugged back: connected again by itself.
    r.host.plug(info(2, "1-1", Speed::High, 0, &[8]));
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(1, USBIF_SPEED_HIGH)]);
    assert_eq!(r.w.be.in_flight(), 0);
}

/// A frontend of a USB 2 controller with a SuperSpeed device on its port 2, shown to it as
/// high speed.
fn superspeed_stick_on_a_usb2_port() -> ConnectedFrontend {
    let mut r = connected_frontend();
    r.host.plug(info(2, "2-1", Speed::Super, 0, &[8]));
    assign(&r.w.xen, r.be, r.fe, 2, "2-1");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(2, USBIF_SPEED_HIGH)]);
    r
}

#[test]
fn superspeed_descriptors_are_rewritten_for_the_usb2_frontend() {
    let mut r = superspeed_stick_on_a_usb2_port();
    let desc = buffer(&r.w.fe, r.be, 0, &[0; 18], false);
    let config = buffer(&r.w.fe, r.be, 0, &[0; 255], false);
    let get = with_buffer(control(1, 2, 0, GET_DEVICE), &desc);
    let get_config = with_buffer(control(2, 2, 0, [0x80, 6, 0, 2, 0, 0, 255, 0]), &config);
    send(&r.w.fe, &mut r.front, &[get, get_config]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!(got[0].actual_length, 18);
    let d = desc.read();
    assert_eq!(
        (d[2], d[3], d[7]),
        (0x10, 0x02, 64),
        "bcdUSB 2.10, EP0 64 bytes"
    );
    assert_eq!(got[1].actual_length, 32, "the two companions dropped");
    let c = config.read();
    assert_eq!(u16::from_le_bytes([c[2], c[3]]), 32);
    assert_eq!(&c[18..25], &[7, 5, 0x81, 2, 0x00, 0x02, 0]);
    // Read again as Linux checks after a reset, at the length it was told: the same bytes,
    // not a rewrite of the device's first 32 (which would drop one companion less).
    let again = buffer(&r.w.fe, r.be, 0, &[0; 32], false);
    let head = buffer(&r.w.fe, r.be, 0, &[0; 9], false);
    let reread = with_buffer(control(3, 2, 0, [0x80, 6, 0, 2, 0, 0, 32, 0]), &again);
    let header = with_buffer(control(4, 2, 0, [0x80, 6, 0, 2, 0, 0, 9, 0]), &head);
    send(&r.w.fe, &mut r.front, &[reread, header]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!((got[0].actual_length, got[1].actual_length), (32, 9));
    assert_eq!(again.read(), c[..32]);
    assert_eq!(head.read(), c[..9], "wTotalLength 32 from then on");
    assert!(again.released(&r.w.fe) && head.released(&r.w.fe));
}

#[test]
fn a_superspeed_configuration_header_read_first_says_the_rewritten_total_length() {
    // Linux reads a configuration's 9-byte header, then wTotalLength bytes: the header must
    // already give the rewritten length, or Linux logs "config index 0 descriptor too short
    // (expected 44, got 32)".
    let mut r = superspeed_stick_on_a_usb2_port();
    // The guest's buffer sits mid-page, as a kmalloc'd one does.
    let head = buffer(&r.w.fe, r.be, 0x9c0, &[0xee; 9], false);
    let submitted = r.host.submitted;
    let header = with_buffer(control(1, 2, 0, [0x80, 6, 0, 2, 0, 0, 9, 0]), &head);
    send(&r.w.fe, &mut r.front, &[header]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!((got[0].status, got[0].actual_length), (USBIF_STATUS_OK, 9));
    let h = head.read();
    assert_eq!(&h[..2], &[9, 2]);
    assert_eq!(
        u16::from_le_bytes([h[2], h[3]]),
        32,
        "wTotalLength rewritten"
    );
    let whole = buffer(&r.w.fe, r.be, 0, &[0; 32], false);
    let get = with_buffer(control(2, 2, 0, [0x80, 6, 0, 2, 0, 0, 32, 0]), &whole);
    send(&r.w.fe, &mut r.front, &[get]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!(got[0].actual_length, 32, "as long as the header said");
    let c = whole.read();
    assert_eq!(c[..9], h[..]);
    assert_eq!(&c[18..25], &[7, 5, 0x81, 2, 0x00, 0x02, 0]);
    assert_eq!(
        r.host.submitted - submitted,
        1,
        "the second read was answered from the first"
    );
    assert!(head.released(&r.w.fe) && whole.released(&r.w.fe));
}

#[test]
fn on_a_usb3_controller_a_superspeed_device_is_reported_as_such_with_its_own_descriptors() {
    let mut w = machine(8);
    let (be, fe) = (DomId(1), w.fe.domid());
    // The toolstack asked for a USB 3 controller (`usbctl hc-create guest 3 8`).
    w.xen
        .dom0()
        .xenstore()
        .write(
            TxId::NONE,
            &format!("{}/usb-ver", backend_dir(be, fe)),
            b"3",
        )
        .unwrap();
    let mut host = Model::default();
    host.plug(info(2, "2-1", Speed::Super, 0, &[8]));
    settle(&mut w.be, &mut host);
    let mut front = RawFrontend::connect(&w.fe, be, None);
    assign(&w.xen, be, fe, 1, "2-1");
    settle(&mut w.be, &mut host);
    assert_eq!(
        port_changes(&mut front),
        [(1, xen::pvusb::USBIF_SPEED_SUPER)]
    );
    let desc = buffer(&w.fe, be, 0, &[0; 18], false);
    let config = buffer(&w.fe, be, 0, &[0; 255], false);
    let get = with_buffer(control(1, 1, 0, GET_DEVICE), &desc);
    let get_config = with_buffer(control(2, 1, 0, [0x80, 6, 0, 2, 0, 0, 255, 0]), &config);
    send(&w.fe, &mut front, &[get, get_config]);
    settle(&mut w.be, &mut host);
    let got = responses(&mut front);
    assert_eq!((got[0].actual_length, got[1].actual_length), (18, 44));
    assert_eq!(desc.read(), device_descriptor(true), "bcdUSB 3.0, EP0 2^9");
    assert_eq!(config.read()[..44], SS_CONFIGURATION, "the companions kept");
}

#[test]
fn hubs_devices_held_elsewhere_and_policy_refusals_are_not_connected() {
    let mut r = connected_frontend();
    r.host.plug(info(3, "1-3", Speed::Full, 9, &[9]));
    r.host.plug(info(4, "1-4", Speed::Full, 0, &[3]));
    r.w.be
        .set_policy(policy::Policy::parse("deny:class=03").unwrap());
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    assign(&r.w.xen, r.be, r.fe, 2, "1-1");
    assign(&r.w.xen, r.be, r.fe, 3, "1-3");
    assign(&r.w.xen, r.be, r.fe, 4, "1-4");
    assign(&r.w.xen, r.be, r.fe, 5, "9-9");
    assign(&r.w.xen, r.be, r.fe, 6, "nonsense");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(1, USBIF_SPEED_HIGH)]);
    let status = |n| port_status(&r.w.xen, r.be, r.fe, n);
    assert!(
        status(2).starts_with("refused assigned_elsewhere"),
        "{}",
        status(2)
    );
    assert_eq!(status(3), "refused hub");
    assert_eq!(status(4), "refused policy rule=1 text=deny:class=03");
    assert_eq!(status(5), "waiting device_absent");
    assert_eq!(
        r.w.be.port_device(
            DeviceId {
                frontend: r.fe,
                devid: 0
            },
            4
        ),
        None
    );
}

#[test]
fn hostile_requests_get_errors_and_a_reused_id_disconnects_that_frontend_only() {
    let mut r = connected_frontend();
    // A second, well-behaved frontend with its own controller.
    let good = r.w.xen.create_domain();
    toolstack_add(&r.w.xen, r.be, good.domid(), 8);
    settle(&mut r.w.be, &mut r.host);
    let mut good_front = RawFrontend::connect(&good, r.be, None);
    settle(&mut r.w.be, &mut r.host);
    r.host.plug(info(2, "1-2", Speed::High, 0, &[8]));
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    assign(&r.w.xen, r.be, good.domid(), 1, "1-2");
    settle(&mut r.w.be, &mut r.host);

    let b = buffer(&r.w.fe, r.be, 0, &[0; 64], false);
    let base = with_buffer(urb(0, 1, 0, 1, Direction::In, TransferType::Bulk), &b);
    let mut too_many = base;
    too_many.id = 1;
    too_many.nr_buffer_segs = 17;
    let mut past_page = base;
    past_page.id = 2;
    past_page.seg[0].offset = 4090;
    let mut bogus = base;
    bogus.id = 3;
    bogus.seg[0].gref = GrantRef(999);
    let (other_gfn, _) = r.w.fe.alloc_page();
    let elsewhere = r.w.fe.grant_access(DomId(7), other_gfn, false).unwrap();
    let mut not_ours = base;
    not_ours.id = 4;
    not_ours.seg[0].gref = elsewhere;
    let mut bad_port = base;
    bad_port.id = 5;
    bad_port.pipe = (bad_port.pipe & !0x1f) | 9;
    let mut reserved_bits = base;
    reserved_bits.id = 6;
    reserved_bits.pipe |= 1 << 20;
    let mut length_lie = base;
    length_lie.id = 7;
    length_lie.buffer_length = 100;
    send(
        &r.w.fe,
        &mut r.front,
        &[
            too_many,
            past_page,
            bogus,
            not_ours,
            bad_port,
            reserved_bits,
            length_lie,
        ],
    );
    settle(&mut r.w.be, &mut r.host);
    // Refusals of the decoder come at once, those of the grant checks after the pass's
    // copy batch: every id once, each an error.
    let mut got: Vec<(u16, i32)> = responses(&mut r.front)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    got.sort();
    assert_eq!(
        got,
        (1..=7).map(|i| (i, USBIF_STATUS_INVAL)).collect::<Vec<_>>()
    );
    assert_eq!(
        r.host.submitted, 0,
        "no request with a bad grant reached the device"
    );
    assert!(b.released(&r.w.fe), "nothing stays mapped after a refusal");

    // The same id twice in flight: the frontend is disconnected, and only it.
    r.host.hold = true;
    let mut first = base;
    first.id = 8;
    let mut again = base;
    again.id = 8;
    send(&r.w.fe, &mut r.front, &[first, again]);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(
        state_of(&r.w.xen, &backend_dir(r.be, r.fe)).unwrap(),
        XenbusState::Closed
    );
    assert!(b.released(&r.w.fe) && !r.w.fe.grant_in_use(r.front.grants[0]));
    assert!(r.host.held.is_empty(), "its transfer was taken back");
    r.host.hold = false;
    let gb = buffer(&good, r.be, 0, &[0; 64], false);
    let read = with_buffer(urb(0, 1, 0, 1, Direction::In, TransferType::Bulk), &gb);
    send(&good, &mut good_front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut good_front);
    assert_eq!(
        (got[0].status, got[0].actual_length),
        (0, 64),
        "the other one is served"
    );
    assert_eq!(
        state_of(&r.w.xen, &backend_dir(r.be, good.domid())).unwrap(),
        XenbusState::Connected
    );
}

#[test]
fn eight_frontends_at_once_each_get_their_own_data() {
    let mut w = machine(8);
    let mut host = Model::default();
    let be = DomId(1);
    let mut fronts = vec![(w.fe.clone(), None)];
    for _ in 1..8 {
        let d = w.xen.create_domain();
        toolstack_add(&w.xen, be, d.domid(), 8);
        fronts.push((d, None));
    }
    settle(&mut w.be, &mut host);
    for (n, (d, f)) in fronts.iter_mut().enumerate() {
        let busid = format!("1-{}", n + 1);
        host.plug(info(n as u32 + 1, &busid, Speed::High, 0, &[8]));
        *f = Some(RawFrontend::connect(d, be, None));
        assign(&w.xen, be, d.domid(), 3, &busid);
    }
    settle(&mut w.be, &mut host);
    // Every frontend: a control read, a bulk write of its own bytes, a bulk read; three
    // rounds, all frontends' requests in the rings at once.
    let mut buffers = Vec::new();
    for round in 0..3u16 {
        for (n, (d, f)) in fronts.iter_mut().enumerate() {
            let front = f.as_mut().unwrap();
            if round == 0 {
                assert_eq!(port_changes(front), [(3, USBIF_SPEED_HIGH)]);
            }
            let mine: Vec<u8> = (0..3000)
                .map(|i| (i as u8) ^ (n as u8 * 17 + round as u8))
                .collect();
            let desc = buffer(d, be, 8, &[0; 18], false);
            let out = buffer(d, be, 3000, &mine, true);
            let inb = buffer(d, be, 0, &[0; 5000], false);
            let reqs = [
                with_buffer(control(round * 3, 3, 0, GET_DEVICE), &desc),
                with_buffer(
                    urb(round * 3 + 1, 3, 0, 2, Direction::Out, TransferType::Bulk),
                    &out,
                ),
                with_buffer(
                    urb(round * 3 + 2, 3, 0, 1, Direction::In, TransferType::Bulk),
                    &inb,
                ),
            ];
            send(d, front, &reqs);
            buffers.push((n, round, mine, desc, out, inb));
        }
        settle(&mut w.be, &mut host);
        for (n, (d, f)) in fronts.iter_mut().enumerate() {
            let mut got = responses(f.as_mut().unwrap());
            got.sort_by_key(|r| r.id);
            let lengths: Vec<(u16, i32, i32)> = got
                .iter()
                .map(|r| (r.id, r.status, r.actual_length))
                .collect();
            let base = round * 3;
            assert_eq!(
                lengths,
                [(base, 0, 18), (base + 1, 0, 3000), (base + 2, 0, 5000)],
                "frontend {n} round {round}"
            );
            let _ = d;
        }
    }
    let pattern: Vec<u8> = (0..5000).map(|i| (i % 251) as u8).collect();
    for (n, round, mine, desc, out, inb) in &buffers {
        let (d, _) = &fronts[*n];
        assert_eq!(desc.read(), device_descriptor(false));
        assert_eq!(inb.read(), pattern);
        assert!(desc.released(d) && out.released(d) && inb.released(d));
        let written = &host.out[&(*n as u32 + 1)];
        let at = usize::from(*round) * 3000;
        assert_eq!(
            &written[at..at + 3000],
            &mine[..],
            "device {} got frontend {n}'s bytes",
            n + 1
        );
    }
    for (d, _) in &fronts {
        let s =
            w.be.stats(DeviceId {
                frontend: d.domid(),
                devid: 0,
            })
            .unwrap();
        assert_eq!(
            (s.completed, s.errors, s.bytes),
            (9, 0, 3 * (18 + 3000 + 5000))
        );
    }
    // Only the 16 ring pages stay mapped.
    assert_eq!(w.be.hypervisor().mappings(), 16);
}

#[test]
fn a_frontend_domain_destroyed_mid_transfer_is_cleaned_up() {
    let mut r = connected_frontend();
    let ports_before = r.w.be.hypervisor().open_ports();
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    r.host.hold = true;
    let b = buffer(&r.w.fe, r.be, 0, &[0; 8192], false);
    let read = with_buffer(urb(1, 1, 0, 1, Direction::In, TransferType::Bulk), &b);
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(r.w.be.in_flight(), 1);
    assert_eq!(
        r.w.be.hypervisor().mappings(),
        2,
        "the two rings: data moves by copy, never mapped"
    );
    assert_eq!(r.w.be.bounce_frames_held(), 2, "two data pages");
    // The domain dies; the toolstack then removes its devices' directories.
    r.w.xen.destroy_domain(r.fe);
    let mut d0 = r.w.xen.dom0().xenstore();
    d0.rm(TxId::NONE, &backend_dir(r.be, r.fe)).unwrap();
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(r.w.be.in_flight(), 0);
    assert!(
        r.host.held.is_empty(),
        "the transfer was taken back from the host"
    );
    assert_eq!(r.w.be.hypervisor().mappings(), 0, "no grant left mapped");
    assert_eq!(
        r.w.be.bounce_frames_held(),
        0,
        "the cancelled transfer's frames are back once it completed"
    );
    assert_eq!(
        r.w.be.hypervisor().open_ports(),
        ports_before - 1,
        "its channel closed"
    );
    assert_eq!(r.w.be.devices().count(), 0);
}

#[test]
fn a_device_assigned_by_its_ids_and_serial_follows_it_to_another_port() {
    let mut r = connected_frontend();
    // The rig's device (1-1) has the model's IDs and no serial: it is not the one named.
    assign(&r.w.xen, r.be, r.fe, 2, "1234:5678:SN7");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(
        port_status(&r.w.xen, r.be, r.fe, 2),
        "waiting device_absent"
    );
    let with_serial = |id, busid| DeviceInfo {
        serial: Some("SN7".into()),
        ..info(id, busid, Speed::High, 0, &[8])
    };
    r.host.plug(with_serial(2, "1-3"));
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_status(&r.w.xen, r.be, r.fe, 2), "connected");
    assert_eq!(port_changes(&mut r.front), [(2, USBIF_SPEED_HIGH)]);
    // Unplugged, then plugged into another port: still the guest's.
    r.host.unplug(2);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_changes(&mut r.front), [(2, USBIF_SPEED_NONE)]);
    r.host.plug(with_serial(3, "2-4.1"));
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_status(&r.w.xen, r.be, r.fe, 2), "connected");
    assert_eq!(port_changes(&mut r.front), [(2, USBIF_SPEED_HIGH)]);
    // IDs alone take one of the matching devices no other port holds: the rig's 1-1.
    assign(&r.w.xen, r.be, r.fe, 3, "1234:5678");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(port_status(&r.w.xen, r.be, r.fe, 3), "connected");
    assert_eq!(
        r.w.be.port_device(
            DeviceId {
                frontend: r.fe,
                devid: 0
            },
            3
        ),
        Some(1)
    );
    // A value that names nothing is refused, and the port stays empty.
    assign(&r.w.xen, r.be, r.fe, 4, "1234:5678:has space");
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(
        r.w.be.port_device(
            DeviceId {
                frontend: r.fe,
                devid: 0
            },
            4
        ),
        None
    );
}

#[test]
fn a_destroyed_frontend_whose_directory_went_gets_its_backend_directory_removed() {
    // `xl destroy` deletes the guest's /local/domain/<id> only: libxl does not know a
    // controller usbctl created, so the backend directory is ours to remove.
    let mut r = connected_frontend();
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    r.host.hold = true;
    let b = buffer(&r.w.fe, r.be, 0, &[0; 4096], false);
    let read = with_buffer(urb(1, 1, 0, 1, Direction::In, TransferType::Bulk), &b);
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(r.w.be.in_flight(), 1);
    r.w.xen.destroy_domain(r.fe);
    let mut d0 = r.w.xen.dom0().xenstore();
    d0.rm(TxId::NONE, &format!("/local/domain/{}", r.fe))
        .unwrap();
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(r.w.be.in_flight(), 0);
    assert!(r.host.held.is_empty(), "the transfer was taken back");
    assert_eq!(r.w.be.hypervisor().mappings(), 0, "no grant left mapped");
    assert_eq!(r.w.be.devices().count(), 0);
    let frontend_dir = format!("/local/domain/{}/backend/vusb/{}", r.be, r.fe);
    assert_eq!(
        d0.read(TxId::NONE, &frontend_dir).map(|_| ()),
        Err(XsError::Xs(XsdError::Enoent)),
        "the backend removed its directory and the frontend's above it"
    );
}

#[test]
fn isochronous_results_land_in_the_frontends_packet_descriptors() {
    super::log_capture::start();
    let mut r = connected_frontend();
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    let data = buffer(&r.w.fe, r.be, 0, &[0x55; 4 * 192], true);
    // Four usb_iso_packet_descriptors {offset, length, actual_length, status}, the array
    // starting 8 bytes before a page boundary so one descriptor straddles two pages.
    let mut desc = Vec::new();
    for i in 0..4u32 {
        for v in [i * 192, 192, 0xdead, 0xbeef] {
            desc.extend(v.to_le_bytes());
        }
    }
    let descriptors = buffer(&r.w.fe, r.be, 4096 - 40, &desc, false);
    let mut req = with_buffer(
        urb(9, 1, 0, 3, Direction::Out, TransferType::Isochronous),
        &data,
    );
    let n = data.segs.len();
    for (i, s) in descriptors.segs.iter().enumerate() {
        req.seg[n + i] = *s;
    }
    // interval, start_frame, number_of_packets, nr_frame_desc_segs
    req.u = [1, 0, 0, 0, 4, 0, descriptors.segs.len() as u8, 0];
    send(&r.w.fe, &mut r.front, &[req]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!(
        (
            got[0].id,
            got[0].status,
            got[0].actual_length,
            got[0].error_count,
            got[0].start_frame
        ),
        (9, 0, 3 * 192, 1, 77)
    );
    // What a user who turned debug on sees of it: queued, then done with its start frame.
    let queued = super::log_capture::events("urb_iso_queued");
    let done = super::log_capture::events("urb_iso_done");
    assert_eq!((queued.len(), done.len()), (1, 1), "{queued:?} {done:?}");
    assert!(
        queued[0].contains(" id=9 port=1 endpoint=3 direction=out packets=4 bytes=768"),
        "{}",
        queued[0]
    );
    assert!(
        done[0].contains(
            " id=9 port=1 direction=out packets=4 start_frame=77 error_count=1 bytes=576 status=0"
        ),
        "{}",
        done[0]
    );
    let d = descriptors.read();
    let field = |i: usize, at: usize| {
        u32::from_le_bytes(d[i * 16 + at..i * 16 + at + 4].try_into().unwrap())
    };
    for i in 0..4 {
        assert_eq!(field(i, 0), i as u32 * 192, "offset kept");
        let (actual, status) = if i == 2 {
            (0, USBIF_STATUS_IOERROR as u32)
        } else {
            (192, 0)
        };
        assert_eq!((field(i, 8), field(i, 12)), (actual, status), "packet {i}");
    }
    assert!(data.released(&r.w.fe) && descriptors.released(&r.w.fe));
}
