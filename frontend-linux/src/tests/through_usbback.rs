//! Against usbback with simulated devices: eight frontends behaving as Linux does, each
//! using its own stick through Bulk-Only Transport.

use super::*;
use testkit::sim_host::{Keyboard, MassStorage, SimHost, BLOCK_SIZE};
use usb::mass_storage::read_write_10_cbw;
use usb::Speed;

fn pipe(direction: Direction, endpoint: u8) -> Pipe {
    Pipe {
        port: 1,
        unlink: false,
        direction,
        device: 5,
        endpoint,
        transfer_type: TransferType::Bulk,
    }
}

fn round(
    be: &mut usbback::Backend<Domain, SimXsTransport>,
    host: &mut SimHost<LocalPage>,
    fes: &mut [Fe],
) {
    for _ in 0..4 {
        testkit::main_loop::turn(be, host);
        for fe in fes.iter_mut() {
            fe.poll_xenstore().unwrap();
            fe.handle_event();
            fe.kick();
        }
    }
}

/// usbback with a simulated stick at 1-1, assigned to port 1 of one guest's controller.
struct OneStick {
    xen: Xen,
    be_dom: Domain,
    be: usbback::Backend<Domain, SimXsTransport>,
    host: SimHost<LocalPage>,
    stick: u32,
    dom: Domain,
}

/// [`OneStick`] with a stick of `blocks` blocks at `speed`.
fn one_stick(blocks: usize, speed: Speed) -> OneStick {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let be = usbback::Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut host: SimHost<LocalPage> = SimHost::new();
    let stick = host.plug(Box::new(MassStorage::new(blocks)), "1-1", speed);
    let dom = xen.create_domain();
    toolstack_add(&xen, be_dom.domid(), dom.domid(), 4);
    assign(&xen, be_dom.domid(), dom.domid(), 1, "1-1");
    OneStick {
        xen,
        be_dom,
        be,
        host,
        stick,
        dom,
    }
}

/// SET_ADDRESS 5 and SET_CONFIGURATION 1 of the stick on port 1, through `fes[0]`.
fn address_and_configure(r: &mut OneStick, fes: &mut [Fe]) {
    for setup in [[0, 5, 5, 0, 0, 0, 0, 0], [0, 9, 1, 0, 0, 0, 0, 0]] {
        let address = if setup[1] == 5 { 0 } else { 5 };
        fes[0]
            .submit(Urb::control(1, address, setup, Vec::new()))
            .unwrap();
    }
    round(&mut r.be, &mut r.host, fes);
    drain(&mut fes[0]);
}

#[test]
fn eight_linux_frontends_each_write_and_read_their_own_stick() {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let mut be = usbback::Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut host: SimHost<LocalPage> = SimHost::new();
    let mut sticks = Vec::new();
    let mut doms = Vec::new();
    let mut fes: Vec<Fe> = (1..=8u8)
        .map(|n| {
            let busid = format!("1-{n}");
            sticks.push(host.plug(Box::new(MassStorage::new(256)), &busid, Speed::High));
            let dom = xen.create_domain();
            toolstack_add(&xen, be_dom.domid(), dom.domid(), 4);
            assign(&xen, be_dom.domid(), dom.domid(), 1, &busid);
            doms.push(dom.clone());
            frontend(&dom)
        })
        .collect();
    round(&mut be, &mut host, &mut fes);
    for fe in &mut fes {
        assert_eq!(fe.state(), XenbusState::Connected);
        assert_eq!(fe.port_speed(1), Some(3), "the stick, at high speed");
    }
    // What Linux's USB core does first: the device descriptor at address 0, the
    // address, the configuration.
    let mut firsts = Vec::new();
    for fe in &mut fes {
        firsts.push(
            fe.submit(Urb::control(1, 0, [0x80, 6, 0, 1, 0, 0, 18, 0], Vec::new()))
                .unwrap(),
        );
        fe.submit(Urb::control(1, 0, [0, 5, 5, 0, 0, 0, 0, 0], Vec::new()))
            .unwrap();
        fe.submit(Urb::control(1, 5, [0, 9, 1, 0, 0, 0, 0, 0], Vec::new()))
            .unwrap();
    }
    round(&mut be, &mut host, &mut fes);
    for (fe, first) in fes.iter_mut().zip(firsts) {
        let done = drain(fe);
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|c| c.status == 0), "{done:?}");
        let desc = done.iter().find(|c| c.handle == first).unwrap();
        assert_eq!(desc.data[..2], [18, 1]);
    }
    // Each writes 8 blocks of its own bytes (the buffer starting mid-page, so it spans
    // pages), then reads them back; all eight at once.
    let patterns: Vec<Vec<u8>> = (0..8u32)
        .map(|n| {
            (0..4096u32)
                .map(|i| (i.wrapping_mul(31) ^ (n * 77)) as u8)
                .collect()
        })
        .collect();
    for (n, fe) in fes.iter_mut().enumerate() {
        fe.submit(Urb::new(
            pipe(Direction::Out, 2),
            read_write_10_cbw(1, true, 16, 8, BLOCK_SIZE as u32).to_vec(),
        ))
        .unwrap();
        let mut data = Urb::new(pipe(Direction::Out, 2), patterns[n].clone());
        data.page_offset = 1000 + n as u16 * 300;
        fe.submit(data).unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 13]))
            .unwrap();
        fe.submit(Urb::new(
            pipe(Direction::Out, 2),
            read_write_10_cbw(2, false, 16, 8, BLOCK_SIZE as u32).to_vec(),
        ))
        .unwrap();
        let mut back = Urb::new(pipe(Direction::In, 1), vec![0; 4096]);
        back.page_offset = 3000;
        fe.submit(back).unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 13]))
            .unwrap();
    }
    round(&mut be, &mut host, &mut fes);
    for (n, fe) in fes.iter_mut().enumerate() {
        let done = drain(fe);
        assert_eq!(done.len(), 6, "frontend {n}");
        assert!(done.iter().all(|c| c.status == 0), "frontend {n}: {done:?}");
        assert_eq!(&done[2].data[..4], b"USBS");
        assert_eq!(done[2].data[12], 0, "the write passed");
        assert_eq!(done[4].data, patterns[n], "frontend {n} read its own bytes");
        assert_eq!(done[5].data[12], 0, "the read passed");
        assert_eq!(fe.error(), None, "usbback passed every xen-hcd check");
        assert_eq!(fe.grants().len(), 2, "only the rings stay granted");
        let disk = host.model::<MassStorage>(sticks[n]).unwrap().disk();
        assert_eq!(
            &disk[16 * 512..24 * 512],
            &patterns[n][..],
            "stick {n}'s disk"
        );
    }
}

/// usbback with a simulated keyboard at 1-1, assigned to port 1 of a frontend domain's
/// 4-port controller.
struct KeyboardBehindUsbback {
    _xen: Xen,
    be: usbback::Backend<Domain, SimXsTransport>,
    host: SimHost<LocalPage>,
    kbd: u32,
    dom: Domain,
}

fn keyboard_behind_usbback() -> KeyboardBehindUsbback {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let be = usbback::Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut host: SimHost<LocalPage> = SimHost::new();
    let kbd = host.plug(Box::new(Keyboard::new()), "1-1", Speed::Full);
    let dom = xen.create_domain();
    toolstack_add(&xen, be_dom.domid(), dom.domid(), 4);
    assign(&xen, be_dom.domid(), dom.domid(), 1, "1-1");
    KeyboardBehindUsbback {
        _xen: xen,
        be,
        host,
        kbd,
        dom,
    }
}

#[test]
fn unlinks_under_load_answer_each_urb_once_and_the_rest_carry_on() {
    let KeyboardBehindUsbback {
        mut be,
        mut host,
        kbd,
        dom,
        ..
    } = keyboard_behind_usbback();
    let mut fes = [frontend(&dom)];
    round(&mut be, &mut host, &mut fes);
    fes[0]
        .submit(Urb::control(1, 0, [0, 9, 1, 0, 0, 0, 0, 0], Vec::new()))
        .unwrap();
    round(&mut be, &mut host, &mut fes);
    drain(&mut fes[0]);
    // Twelve interrupt INs waiting for keys, then every other one unlinked: an unlink
    // takes a ring slot of its own, so the first four go at once and the others as the
    // answers free slots.
    let interrupt = Pipe {
        port: 1,
        unlink: false,
        direction: Direction::In,
        device: 0,
        endpoint: 1,
        transfer_type: TransferType::Interrupt,
    };
    let handles: Vec<UrbHandle> = (0..12)
        .map(|_| fes[0].submit(Urb::new(interrupt, vec![0; 8])).unwrap())
        .collect();
    round(&mut be, &mut host, &mut fes);
    assert_eq!(fes[0].in_flight(), 12);
    for h in handles.iter().step_by(2) {
        fes[0].unlink(*h).unwrap();
    }
    round(&mut be, &mut host, &mut fes);
    let cancelled = drain(&mut fes[0]);
    assert_eq!(cancelled.len(), 6);
    assert!(cancelled.iter().all(|c| c.status == -errno::ECONNRESET));
    // Six keys: the six left get them, in order.
    for k in 0..6u8 {
        host.model_mut::<Keyboard>(kbd).unwrap().press(0, &[4 + k]);
    }
    round(&mut be, &mut host, &mut fes);
    let got = drain(&mut fes[0]);
    let keys: Vec<u8> = got.iter().map(|c| c.data[2]).collect();
    assert_eq!(keys, (4..10).collect::<Vec<u8>>());
    let mut answered: Vec<UrbHandle> = cancelled.iter().chain(&got).map(|c| c.handle).collect();
    answered.sort();
    assert_eq!(answered, handles, "every URB answered exactly once");
    assert_eq!(fes[0].error(), None);
    assert_eq!(fes[0].grants().len(), 2);
}

#[test]
fn a_frontend_asking_for_four_ring_pages_keeps_64_urbs_in_flight_through_usbback() {
    let KeyboardBehindUsbback {
        mut be,
        mut host,
        kbd,
        dom,
        ..
    } = keyboard_behind_usbback();
    let mut fes = vec![frontend(&dom).with_ring_page_order(2)];
    round(&mut be, &mut host, &mut fes);
    let fe = &mut fes[0];
    assert_eq!(fe.state(), XenbusState::Connected);
    assert_eq!(fe.urb_ring_size(), Some(64), "four pages");
    fe.submit(Urb::control(1, 0, [0, 5, 5, 0, 0, 0, 0, 0], Vec::new()))
        .unwrap();
    fe.submit(Urb::control(1, 5, [0, 9, 1, 0, 0, 0, 0, 0], Vec::new()))
        .unwrap();
    round(&mut be, &mut host, &mut fes);
    assert!(drain(&mut fes[0]).iter().all(|c| c.status == 0));

    // The keyboard has nothing to say: every interrupt IN stays in flight, 64 at once.
    let reports = Pipe {
        transfer_type: TransferType::Interrupt,
        ..pipe(Direction::In, 1)
    };
    for _ in 0..64 {
        fes[0].submit(Urb::new(reports, vec![0; 8])).unwrap();
    }
    round(&mut be, &mut host, &mut fes);
    assert_eq!((fes[0].in_flight(), fes[0].queued()), (64, 0));
    assert_eq!(be.in_flight(), 64);
    // A 65th waits for a slot, as on the stock ring's 17th.
    fes[0].submit(Urb::new(reports, vec![0; 8])).unwrap();
    round(&mut be, &mut host, &mut fes);
    assert_eq!((fes[0].in_flight(), fes[0].queued()), (64, 1));

    // 65 keys: each URB gets one, in order, the 65th once a slot freed.
    for k in 0..65u8 {
        host.model_mut::<Keyboard>(kbd).unwrap().press(0, &[4 + k]);
        round(&mut be, &mut host, &mut fes);
    }
    let keys: Vec<u8> = drain(&mut fes[0]).iter().map(|c| c.data[2]).collect();
    assert_eq!(keys, (4..69).collect::<Vec<u8>>());
    assert_eq!(be.in_flight(), 0);
    assert_eq!(fes[0].error(), None);
    assert_eq!(
        fes[0].grants().len(),
        5,
        "the four URB ring pages and the conn ring"
    );
}

#[test]
fn a_frontend_keeping_its_grants_is_served_without_grant_copies_once_warm() {
    let mut r = one_stick(256, Speed::High);
    let mut fes = vec![frontend(&r.dom).with_persistent_grants()];
    round(&mut r.be, &mut r.host, &mut fes);
    assert!(fes[0].persistent_grants(), "usbdom offers them");
    address_and_configure(&mut r, &mut fes);
    let OneStick {
        xen,
        be_dom,
        mut be,
        mut host,
        stick,
        dom,
    } = r;

    // Write 8 blocks and read them back, five times over, with fresh bytes each time.
    let mut copies = Vec::new();
    for n in 0..5u32 {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + n * 7) as u8).collect();
        let before = be_dom.copy_calls();
        let fe = &mut fes[0];
        fe.submit(Urb::new(
            pipe(Direction::Out, 2),
            read_write_10_cbw(1, true, 16, 8, BLOCK_SIZE as u32).to_vec(),
        ))
        .unwrap();
        fe.submit(Urb::new(pipe(Direction::Out, 2), data.clone()))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 13]))
            .unwrap();
        fe.submit(Urb::new(
            pipe(Direction::Out, 2),
            read_write_10_cbw(2, false, 16, 8, BLOCK_SIZE as u32).to_vec(),
        ))
        .unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 4096]))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 13]))
            .unwrap();
        round(&mut be, &mut host, &mut fes);
        let done = drain(&mut fes[0]);
        assert_eq!(done.len(), 6, "round {n}");
        assert!(done.iter().all(|c| c.status == 0), "round {n}: {done:?}");
        assert_eq!(done[4].data, data, "round {n}: read back what was written");
        copies.push(be_dom.copy_calls() - before);
    }
    assert!(copies[0] > 0, "the first round copies by grant: {copies:?}");
    assert_eq!(copies[2..], [0, 0, 0], "then the CPU copies: {copies:?}");
    assert_eq!(fes[0].error(), None);
    let disk = host.model::<MassStorage>(stick).unwrap().disk();
    assert_eq!(
        disk[16 * 512],
        4 * 7,
        "the last round's first byte, on the disk"
    );

    // The controller goes: usbdom unmaps the kept grants, and they all end.
    toolstack_remove(&xen, be_dom.domid(), dom.domid());
    fes[0].poll().unwrap();
    assert_eq!(fes[0].state(), XenbusState::Closed);
    for _ in 0..4 {
        round(&mut be, &mut host, &mut fes);
    }
    assert_eq!(be_dom.mappings(), 0);
    assert!(fes[0].grants().is_empty(), "{:?}", fes[0].grants());
}

/// A megabyte each way, one URB each, through a frontend that sends indirect requests
/// (`persistent` also keeps its grants). Returns the backend's grant copies in the last of
/// three rounds.
fn a_megabyte_each_way(persistent: bool) -> u64 {
    let mut r = one_stick(4096, Speed::Super);
    let fe = frontend(&r.dom).with_indirect_segments();
    let mut fes = vec![if persistent {
        fe.with_persistent_grants()
    } else {
        fe
    }];
    round(&mut r.be, &mut r.host, &mut fes);
    assert_eq!(
        fes[0].indirect_segments(),
        xen::pvusb::MAX_INDIRECT_SEGMENTS
    );
    address_and_configure(&mut r, &mut fes);
    let OneStick {
        be_dom,
        mut be,
        mut host,
        stick,
        dom,
        ..
    } = r;

    const MIB: usize = 1 << 20;
    let blocks = (MIB / BLOCK_SIZE) as u16;
    let mut copies = 0;
    for n in 0..3u32 {
        let data: Vec<u8> = (0..MIB as u32).map(|i| (i / 7 + n) as u8).collect();
        let before = be_dom.copy_calls();
        let fe = &mut fes[0];
        let cbw = |tag, write| read_write_10_cbw(tag, write, 8, blocks, BLOCK_SIZE as u32).to_vec();
        fe.submit(Urb::new(pipe(Direction::Out, 2), cbw(1, true)))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::Out, 2), data.clone()))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 13]))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::Out, 2), cbw(2, false)))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; MIB]))
            .unwrap();
        fe.submit(Urb::new(pipe(Direction::In, 1), vec![0; 13]))
            .unwrap();
        round(&mut be, &mut host, &mut fes);
        let done = drain(&mut fes[0]);
        assert_eq!(done.len(), 6, "round {n}");
        assert!(done.iter().all(|c| c.status == 0), "round {n}: {done:?}");
        assert_eq!(done[1].actual_length, MIB as u32);
        assert!(
            done[4].data == data,
            "round {n}: read back what was written"
        );
        copies = be_dom.copy_calls() - before;
    }
    assert_eq!(fes[0].error(), None);
    assert_eq!(fes[0].stats().indirect, 6, "the megabytes, and only they");
    let id = usbback::DeviceId {
        frontend: dom.domid(),
        devid: 0,
    };
    let stats = be.stats(id).unwrap();
    assert_eq!(stats.indirect, 6);
    // With kept grants, the later rounds' megabytes go straight to the guest's pages.
    assert_eq!(stats.zero_copy >= 4, persistent, "{stats:?}");
    let disk = host.model::<MassStorage>(stick).unwrap().disk();
    assert_eq!(disk[8 * 512 + MIB - 1], ((MIB - 1) / 7 + 2) as u8);
    copies
}

#[test]
fn a_megabyte_goes_in_one_indirect_request_each_way() {
    let copies = a_megabyte_each_way(false);
    assert!(copies > 0, "fresh grants are copied by grant");
}

#[test]
fn with_persistent_grants_an_indirect_megabyte_costs_no_grant_copy_once_warm() {
    assert_eq!(a_megabyte_each_way(true), 0);
}
