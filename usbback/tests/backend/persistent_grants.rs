//! Persistent grants (`docs/pvusb-features.md`): a frontend that promised them has its
//! grants mapped once and kept, and its data copied by the CPU from then on; one that did
//! not, or a grant that will not map writable, is copied by grant as before.

use super::*;

/// A connected frontend on a model host's device 1-1, at address 5, that promised
/// `feature-persistent` when `promise`.
fn persistent_frontend(promise: bool) -> ConnectedFrontend {
    let mut w = machine(8);
    let (be, fe) = (DomId(1), w.fe.domid());
    let mut host = Model::default();
    host.plug(info(1, "1-1", Speed::High, 0, &[8]));
    settle(&mut w.be, &mut host);
    assert_eq!(
        backend_key(&w.xen, be, fe, "feature-persistent"),
        "1",
        "offered before InitWait"
    );
    if promise {
        w.fe.xenstore()
            .write(
                TxId::NONE,
                &format!("{}/feature-persistent", frontend_dir(fe)),
                b"1",
            )
            .unwrap();
    }
    let mut front = RawFrontend::connect(&w.fe, be, None);
    assign(&w.xen, be, fe, 1, "1-1");
    settle(&mut w.be, &mut host);
    port_changes(&mut front);
    send(
        &w.fe,
        &mut front,
        &[control(0, 1, 0, [0, 5, 5, 0, 0, 0, 0, 0])],
    );
    settle(&mut w.be, &mut host);
    assert_eq!(responses(&mut front)[0].status, USBIF_STATUS_OK);
    ConnectedFrontend {
        w,
        host,
        front,
        be,
        fe,
    }
}

/// Writes `data` through `out` and reads `inb` back full; returns the grant copy calls it
/// took.
fn round(r: &mut ConnectedFrontend, out: &Buffer, inb: &Buffer, data: &[u8], ids: u16) -> u64 {
    for (p, s) in out.pages.iter().zip(&out.segs) {
        let at: usize = out
            .segs
            .iter()
            .take_while(|t| t.gref != s.gref)
            .map(|t| usize::from(t.length))
            .sum();
        p.write(usize::from(s.offset), &data[at..at + usize::from(s.length)]);
    }
    let before = r.w.be.hypervisor().copy_calls();
    let write = with_buffer(urb(ids, 1, 5, 2, Direction::Out, TransferType::Bulk), out);
    let read = with_buffer(
        urb(ids + 1, 1, 5, 1, Direction::In, TransferType::Bulk),
        inb,
    );
    send(&r.w.fe, &mut r.front, &[write, read]);
    settle(&mut r.w.be, &mut r.host);
    let got: Vec<(u16, i32)> = responses(&mut r.front)
        .iter()
        .map(|g| (g.id, g.status))
        .collect();
    assert_eq!(got, [(ids, USBIF_STATUS_OK), (ids + 1, USBIF_STATUS_OK)]);
    r.w.be.hypervisor().copy_calls() - before
}

#[test]
fn a_frontend_that_promised_persistent_grants_is_served_without_grant_copies_once_kept() {
    let mut r = persistent_frontend(true);
    // Writable grants, as the promise says; buffers across pages.
    let out = buffer(&r.w.fe, r.be, 3000, &[0; 6000], false);
    let inb = buffer(&r.w.fe, r.be, 100, &[0; 9000], false);
    let want_in: Vec<u8> = (0..9000).map(|i| (i % 251) as u8).collect();
    let mut sent = Vec::new();
    for n in 0..4u16 {
        let data: Vec<u8> = (0..6000u32).map(|i| (i * 3 + u32::from(n)) as u8).collect();
        let calls = round(&mut r, &out, &inb, &data, 1 + 2 * n);
        sent.extend_from_slice(&data);
        if n == 0 {
            assert!(calls > 0, "the first round copies by grant");
            assert_eq!(
                r.w.be.hypervisor().mappings(),
                2 + out.segs.len() + inb.segs.len(),
                "the rings, and every data page kept"
            );
        } else {
            assert_eq!(calls, 0, "round {n}: the CPU copies, no hypercall");
        }
        assert_eq!(
            inb.read(),
            want_in,
            "round {n}: the device's bytes reached the guest"
        );
        assert_eq!(
            r.host.out[&1], sent,
            "round {n}: the guest's bytes reached the device"
        );
    }

    // The toolstack removes the controller: the kept mappings go with the rings.
    toolstack_remove(&r.w.xen, r.be, r.fe);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(r.w.be.hypervisor().mappings(), 0);
    assert!(out.released(&r.w.fe) && inb.released(&r.w.fe));
}

#[test]
fn without_the_promise_or_with_a_read_only_grant_nothing_is_kept() {
    // No promise: every round copies by grant, only the rings stay mapped.
    let mut r = persistent_frontend(false);
    let out = buffer(&r.w.fe, r.be, 0, &[0; 4096], false);
    let inb = buffer(&r.w.fe, r.be, 0, &[0; 4096], false);
    for n in 0..3u16 {
        let calls = round(&mut r, &out, &inb, &[n as u8; 4096], 1 + 2 * n);
        assert!(calls > 0, "round {n}");
        assert_eq!(r.w.be.hypervisor().mappings(), 2);
    }
    // A promise broken by a read-only grant: that page is copied by grant every time, the
    // writable one is kept.
    let mut r = persistent_frontend(true);
    let out = buffer(&r.w.fe, r.be, 0, &[0; 4096], true);
    let inb = buffer(&r.w.fe, r.be, 0, &[0; 4096], false);
    for n in 0..3u16 {
        let calls = round(&mut r, &out, &inb, &[n as u8 + 1; 4096], 1 + 2 * n);
        assert!(
            calls > 0,
            "round {n}: the read-only page still goes by grant"
        );
        assert_eq!(r.host.out[&1][usize::from(n) * 4096], n as u8 + 1);
    }
    assert_eq!(
        r.w.be.hypervisor().mappings(),
        3,
        "the rings and the writable page"
    );
}

#[test]
fn kept_pages_are_reached_directly_and_stay_mapped_until_a_cancelled_transfer_into_them_ends() {
    let mut r = persistent_frontend(true);
    let out = buffer(&r.w.fe, r.be, 0, &[0; 4096], false);
    let inb = buffer(&r.w.fe, r.be, 0, &[0; 8192], false);
    // The first round keeps the pages; from the second on the device reaches them.
    round(&mut r, &out, &inb, &[1; 4096], 1);
    round(&mut r, &out, &inb, &[2; 4096], 3);
    let id = DeviceId {
        frontend: r.fe,
        devid: 0,
    };
    assert_eq!(
        r.w.be.stats(id).unwrap().zero_copy,
        2,
        "the second round's two"
    );
    assert_eq!(r.w.be.bounce_frames_held(), 0);

    // A read the device holds, and whose cancel fails: the controller goes meanwhile.
    r.host.hold = true;
    r.host.cancel_fails = true;
    let read = with_buffer(urb(9, 1, 5, 1, Direction::In, TransferType::Bulk), &inb);
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(r.host.held.len(), 1);
    let token = r.host.held[0].1.token;
    assert_eq!(
        r.w.be.bounce_frames_held(),
        0,
        "no frame: the guest's own pages"
    );
    toolstack_remove(&r.w.xen, r.be, r.fe);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(
        r.w.be.hypervisor().mappings(),
        out.segs.len() + inb.segs.len(),
        "the kept pages stay mapped while the device may still write them"
    );
    assert!(!inb.released(&r.w.fe));

    // The device's late write lands in the page still mapped; then everything goes.
    r.host.finish_late(token, 0x77);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(inb.read(), vec![0x77; 8192]);
    assert_eq!(r.w.be.hypervisor().mappings(), 0);
    assert!(out.released(&r.w.fe) && inb.released(&r.w.fe));
}
