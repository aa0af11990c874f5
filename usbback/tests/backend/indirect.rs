//! Indirect segments (`docs/pvusb-features.md`): offered before InitWait, a bulk request
//! listing its pages in an indirect page served as one transfer, every bent form refused
//! alone, and a frontend that keeps megabyte requests coming held to its share of the
//! bounce frames while another frontend is served, its waiting requests still cancellable.

use super::*;
use usbback::bounce::FRONTEND_PAGE_SHARE;
use xen::pvusb::MAX_INDIRECT_SEGMENTS;

/// SET_ADDRESS 7 on port 1, answered.
fn address(w: &mut Machine, host: &mut Model, fe: &Domain, front: &mut RawFrontend) {
    send(fe, front, &[control(100, 1, 0, [0, 5, 7, 0, 0, 0, 0, 0])]);
    settle(&mut w.be, host);
    assert_eq!(responses(front)[0].status, USBIF_STATUS_OK);
}

#[test]
fn an_indirect_request_is_one_transfer_and_bent_ones_are_refused_alone() {
    let ConnectedFrontend {
        mut w,
        mut host,
        mut front,
        be,
        fe,
    } = connected_frontend();
    assert_eq!(
        backend_key(&w.xen, be, fe, "feature-max-indirect-segments"),
        MAX_INDIRECT_SEGMENTS.to_string()
    );
    assign(&w.xen, be, fe, 1, "1-1");
    settle(&mut w.be, &mut host);
    assert_eq!(port_changes(&mut front), [(1, USBIF_SPEED_HIGH)]);
    let fe_dom = w.fe.clone();
    address(&mut w, &mut host, &fe_dom, &mut front);

    // 40 pages and a bit, from an offset: more than a stock request carries.
    let len = 40 * 4096 + 100;
    let b = buffer(&w.fe, be, 512, &vec![0; len], false);
    assert_eq!(b.segs.len(), 41);
    let list = indirect_list(&w.fe, be, &b);
    host.hold = true;
    let read = with_indirect(
        urb(1, 1, 7, 1, Direction::In, TransferType::Bulk),
        &list,
        &b,
    );
    send(&w.fe, &mut front, &[read]);
    settle(&mut w.be, &mut host);
    assert_eq!(host.held.len(), 1, "one transfer for the whole buffer");
    let (_, t) = &host.held[0];
    assert_eq!(t.segments.len(), 41);
    assert_eq!(t.length(), len);
    let token = t.token;
    host.finish_late(token, 0x5a);
    settle(&mut w.be, &mut host);
    let rsp = responses(&mut front);
    assert_eq!(
        (rsp[0].id, rsp[0].status, rsp[0].actual_length),
        (1, USBIF_STATUS_OK, len as i32)
    );
    assert_eq!(b.read(), vec![0x5a; len]);
    assert!(b.released(&w.fe) && list.released(&w.fe));

    // Each bent form: answered -EINVAL, nothing reaches the device, the frontend stays.
    let good = || {
        with_indirect(
            urb(2, 1, 7, 1, Direction::In, TransferType::Bulk),
            &list,
            &b,
        )
    };
    let mut interrupt = good();
    interrupt.pipe = urb(2, 1, 7, 1, Direction::In, TransferType::Interrupt).pipe;
    let mut too_many = good();
    too_many.nr_buffer_segs = MAX_INDIRECT_SEGMENTS + 1;
    let mut page_length = good();
    page_length.seg[0].length += 8;
    let mut union = good();
    union.u[6] = 1;
    let mut short = good();
    short.u[..4].copy_from_slice(&(len as u32 - 1).to_le_bytes());
    short.buffer_length = (len - 1) as u16;
    for (what, req) in [
        ("interrupt", interrupt),
        ("too many", too_many),
        ("page length", page_length),
        ("union", union),
        ("segments' sum", short),
    ] {
        send(&w.fe, &mut front, &[req]);
        settle(&mut w.be, &mut host);
        let rsp = responses(&mut front);
        assert_eq!(rsp.len(), 1, "{what}");
        assert_eq!(rsp[0].status, USBIF_STATUS_INVAL, "{what}");
        assert!(host.held.is_empty(), "{what}: reached the device");
    }
    // A hole in the listed buffer: the 6th page ends early.
    list.pages[0].write(5 * 8 + 6, &100u16.to_le_bytes());
    send(&w.fe, &mut front, &[good()]);
    settle(&mut w.be, &mut host);
    assert_eq!(responses(&mut front)[0].status, USBIF_STATUS_INVAL);
    assert!(host.held.is_empty());
    // Still connected and served.
    list.pages[0].write(5 * 8 + 6, &4096u16.to_le_bytes());
    send(&w.fe, &mut front, &[good()]);
    settle(&mut w.be, &mut host);
    assert_eq!(host.held.len(), 1);
    let token = host.held[0].1.token;
    host.finish_late(token, 1);
    settle(&mut w.be, &mut host);
    assert_eq!(responses(&mut front)[0].status, USBIF_STATUS_OK);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Connected
    );
    assert!(b.released(&w.fe) && list.released(&w.fe));
}

#[test]
fn a_frontend_holding_its_share_waits_while_another_is_served_and_can_still_unlink() {
    let ConnectedFrontend {
        mut w,
        mut host,
        front: _,
        be,
        fe: _,
    } = connected_frontend();
    // The greedy frontend: a 16-page ring, so nothing but its share stops it.
    let greedy_dom = w.xen.create_domain();
    toolstack_add(&w.xen, be, greedy_dom.domid(), 8);
    settle(&mut w.be, &mut host);
    let ring = UrbRing::Pages {
        order: 4,
        bad_ref: None,
    };
    let mut greedy = RawFrontend::connect_with(&greedy_dom, be, ring);
    // The other one, stock.
    let other_dom = w.xen.create_domain();
    toolstack_add(&w.xen, be, other_dom.domid(), 8);
    settle(&mut w.be, &mut host);
    let mut other = RawFrontend::connect_with(&other_dom, be, UrbRing::OnePage(None));
    host.plug(info(2, "1-2", Speed::High, 0, &[8]));
    host.plug(info(3, "1-3", Speed::High, 0, &[8]));
    assign(&w.xen, be, greedy_dom.domid(), 1, "1-2");
    assign(&w.xen, be, other_dom.domid(), 1, "1-3");
    settle(&mut w.be, &mut host);
    address(&mut w, &mut host, &greedy_dom, &mut greedy);
    address(&mut w, &mut host, &other_dom, &mut other);

    // Eight megabyte reads at once; the device holds every transfer.
    host.hold = true;
    let pages = usize::from(MAX_INDIRECT_SEGMENTS);
    let reads: Vec<(Buffer, Buffer)> = (0..8)
        .map(|_| {
            let b = buffer(&greedy_dom, be, 0, &vec![0; pages * 4096], false);
            let list = indirect_list(&greedy_dom, be, &b);
            (b, list)
        })
        .collect();
    let requests: Vec<UsbifUrbRequest> = (0..)
        .zip(&reads)
        .map(|(id, (b, list))| {
            with_indirect(urb(id, 1, 7, 1, Direction::In, TransferType::Bulk), list, b)
        })
        .collect();
    send(&greedy_dom, &mut greedy, &requests);
    settle(&mut w.be, &mut host);
    let share = FRONTEND_PAGE_SHARE / pages;
    assert_eq!(
        host.held.len(),
        share,
        "its share's worth taken, the rest left on its ring"
    );

    // The other frontend is served meanwhile.
    let small = buffer(&other_dom, be, 0, &[0; 512], false);
    send(
        &other_dom,
        &mut other,
        &[with_buffer(
            urb(1, 1, 7, 1, Direction::In, TransferType::Bulk),
            &small,
        )],
    );
    settle(&mut w.be, &mut host);
    let theirs = host.held.last().unwrap().1.token;
    host.finish_late(theirs, 0x11);
    settle(&mut w.be, &mut host);
    let rsp = responses(&mut other);
    assert_eq!(
        (rsp[0].status, rsp[0].actual_length),
        (USBIF_STATUS_OK, 512)
    );
    assert_eq!(small.read(), [0x11; 512]);

    // An unlink of a request still waiting is answered at once: that request as
    // cancelled, then the unlink; it never reaches the device.
    let mut unlink = urb(100, 1, 7, 1, Direction::In, TransferType::Bulk);
    unlink.pipe |= USBIF_PIPE_UNLINK;
    unlink.u[..2].copy_from_slice(&7u16.to_le_bytes());
    send(&greedy_dom, &mut greedy, &[unlink]);
    settle(&mut w.be, &mut host);
    let rsp: Vec<(u16, i32)> = responses(&mut greedy)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(rsp, [(7, USBIF_STATUS_SHUTDOWN), (100, USBIF_STATUS_OK)]);
    assert_eq!(host.held.len(), share);

    // As the greedy one's transfers finish, the rest of its requests are taken, each once.
    let mut answered = Vec::new();
    while answered.len() < reads.len() - 1 {
        assert!(
            !host.held.is_empty(),
            "requests left on the ring: {answered:?}"
        );
        assert!(host.held.len() <= share);
        let tokens: Vec<u64> = host.held.iter().map(|(_, t)| t.token).collect();
        for token in tokens {
            host.finish_late(token, 0x22);
        }
        settle(&mut w.be, &mut host);
        for r in responses(&mut greedy) {
            assert_eq!(
                (r.status, r.actual_length),
                (USBIF_STATUS_OK, (pages * 4096) as i32)
            );
            answered.push(r.id);
        }
    }
    answered.sort();
    assert_eq!(answered, (0..7).collect::<Vec<u16>>());
    for (i, (b, list)) in reads.iter().enumerate() {
        let want = if i == 7 { 0 } else { 0x22 };
        assert!(b.read().iter().all(|&x| x == want), "read {i}");
        assert!(b.released(&greedy_dom) && list.released(&greedy_dom));
    }
    let stats =
        w.be.stats(DeviceId {
            frontend: greedy_dom.domid(),
            devid: 0,
        })
        .unwrap();
    assert_eq!(stats.indirect, 7, "the cancelled one was never read");
    assert_eq!(stats.throttled, 4, "four waited");
    assert_eq!(w.be.bounce_frames_held(), 0);
}

#[test]
fn in_a_small_pool_a_frontend_with_a_poll_waiting_still_sends_its_other_requests() {
    let ConnectedFrontend {
        mut w,
        mut host,
        mut front,
        be,
        fe,
    } = connected_frontend();
    // usbdom in 8 MiB: 668 frames, a frontend's share one indirect request's most.
    w.be.set_bounce_frames(668);
    assign(&w.xen, be, fe, 1, "1-1");
    settle(&mut w.be, &mut host);
    let fe_dom = w.fe.clone();
    address(&mut w, &mut host, &fe_dom, &mut front);
    // A poll the device holds, as a keyboard's waits for a key: one page held.
    host.hold = true;
    let report = buffer(&fe_dom, be, 0, &[0; 8], false);
    let poll = with_buffer(
        urb(1, 1, 7, 1, Direction::In, TransferType::Interrupt),
        &report,
    );
    send(&fe_dom, &mut front, &[poll]);
    settle(&mut w.be, &mut host);
    assert_eq!(host.held.len(), 1);
    // A read meanwhile reaches the device and is answered; nothing waited for frames.
    host.hold = false;
    let block = buffer(&fe_dom, be, 0, &[0; 512], false);
    let read = with_buffer(urb(2, 1, 7, 1, Direction::In, TransferType::Bulk), &block);
    send(&fe_dom, &mut front, &[read]);
    settle(&mut w.be, &mut host);
    let rsp: Vec<(u16, i32)> = responses(&mut front)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(rsp, [(2, USBIF_STATUS_OK)]);
    let stats =
        w.be.stats(DeviceId {
            frontend: fe,
            devid: 0,
        })
        .unwrap();
    assert_eq!(stats.throttled, 0);
}
