//! The multi-page URB ring (`docs/pvusb-features.md`): offered in the backend directory,
//! taken when the frontend writes `ring-page-order`, refused when it asks for more than was
//! offered or names a page it did not grant.

use super::*;

#[test]
fn a_four_page_ring_keeps_64_requests_in_flight_and_answers_each() {
    let mut w = machine(8);
    let mut host = Model::default();
    host.plug(info(1, "1-1", Speed::High, 0, &[8]));
    settle(&mut w.be, &mut host);
    let (be, fe) = (DomId(1), w.fe.domid());
    assert_eq!(
        backend_key(&w.xen, be, fe, "max-ring-page-order"),
        "4",
        "offered before InitWait"
    );

    let order = UrbRing::Pages {
        order: 2,
        bad_ref: None,
    };
    let mut front = RawFrontend::connect_with(&w.fe, be, order);
    settle(&mut w.be, &mut host);
    assert_eq!(front.urb.size(), 64, "four pages of URB entries");
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Connected
    );
    assign(&w.xen, be, fe, 1, "1-1");
    settle(&mut w.be, &mut host);
    assert_eq!(port_changes(&mut front), [(1, USBIF_SPEED_HIGH)]);
    send(
        &w.fe,
        &mut front,
        &[control(0, 1, 0, [0, 5, 7, 0, 0, 0, 0, 0])],
    );
    settle(&mut w.be, &mut host);
    assert_eq!(responses(&mut front)[0].status, USBIF_STATUS_OK);

    // 64 bulk IN requests at once, four times the stock ring: the device holds them all.
    host.hold = true;
    let buffers: Vec<Buffer> = (0..64)
        .map(|i| buffer(&w.fe, be, i * 8, &[0; 512], false))
        .collect();
    let requests: Vec<UsbifUrbRequest> = (0..)
        .zip(&buffers)
        .map(|(id, b)| with_buffer(urb(id, 1, 7, 1, Direction::In, TransferType::Bulk), b))
        .collect();
    send(&w.fe, &mut front, &requests);
    settle(&mut w.be, &mut host);
    assert_eq!(w.be.in_flight(), 64);
    assert_eq!(host.held.len(), 64);
    assert!(responses(&mut front).is_empty());

    let tokens: Vec<u64> = host.held.iter().map(|(_, t)| t.token).collect();
    for token in tokens {
        host.finish_late(token, 0xa5);
    }
    settle(&mut w.be, &mut host);
    let mut got: Vec<(u16, i32, i32)> = responses(&mut front)
        .iter()
        .map(|r| (r.id, r.status, r.actual_length))
        .collect();
    got.sort();
    let want: Vec<(u16, i32, i32)> = (0..64).map(|id| (id, USBIF_STATUS_OK, 512)).collect();
    assert_eq!(got, want);
    for b in &buffers {
        assert_eq!(b.read(), [0xa5; 512]);
        assert!(b.released(&w.fe));
    }
    let stats =
        w.be.stats(DeviceId {
            frontend: fe,
            devid: 0,
        })
        .unwrap();
    assert_eq!((stats.completed, stats.errors), (65, 0));
}

#[test]
fn a_ring_larger_than_offered_or_a_page_not_granted_is_refused_with_nothing_left_mapped() {
    for (urb_ring, what) in [
        (
            UrbRing::Pages {
                order: 5,
                bad_ref: None,
            },
            "an order above the offer",
        ),
        (
            UrbRing::Pages {
                order: 2,
                bad_ref: Some((3, "4000")),
            },
            "a page the frontend never granted",
        ),
        (
            UrbRing::Pages {
                order: 1,
                bad_ref: Some((1, "not-a-number")),
            },
            "a reference that is no number",
        ),
    ] {
        let mut w = machine(8);
        pump(&mut w);
        let (be, fe) = (DomId(1), w.fe.domid());
        let front = RawFrontend::connect_with(&w.fe, be, urb_ring);
        pump(&mut w);
        assert_eq!(
            state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
            XenbusState::Closing,
            "{what}"
        );
        assert_eq!(w.be.hypervisor().mappings(), 0, "{what}");
        assert!(
            front.grants.iter().all(|g| !w.fe.grant_in_use(*g)),
            "{what}: every page unmapped again"
        );
    }
}

#[test]
fn the_largest_ring_offered_sixteen_pages_connects_with_256_entries() {
    // Its sixteen pages and the conn ring are more than one map hypercall takes.
    let mut w = machine(8);
    pump(&mut w);
    let (be, fe) = (DomId(1), w.fe.domid());
    let order = UrbRing::Pages {
        order: xen::pvusb::MAX_RING_PAGE_ORDER,
        bad_ref: None,
    };
    let front = RawFrontend::connect_with(&w.fe, be, order);
    pump(&mut w);
    assert_eq!(
        state_of(&w.xen, &backend_dir(be, fe)).unwrap(),
        XenbusState::Connected
    );
    assert_eq!(front.urb.size(), 256);
    assert_eq!(
        w.be.hypervisor().mappings(),
        17,
        "sixteen URB ring pages, one conn"
    );
}
