//! The grant-copy data path's hypercalls: what a stream of requests costs, and what is
//! still caught when a frontend's grants change under it.

use super::*;

#[test]
fn reads_into_grants_written_lately_are_not_checked_again_and_a_revoked_one_is_still_caught() {
    let mut r = connected_frontend();
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    responses(&mut r.front);
    let inb = buffer(&r.w.fe, r.be, 0, &[0; 8192], false);
    let read = |id| with_buffer(urb(id, 1, 0, 1, Direction::In, TransferType::Bulk), &inb);
    let calls = |r: &mut ConnectedFrontend| r.w.be.hypervisor().copy_calls();
    let want: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();

    // The first read into these grants checks them (one batch), then copies out (another).
    let before = calls(&mut r);
    send(&r.w.fe, &mut r.front, &[read(1)]);
    settle(&mut r.w.be, &mut r.host);
    assert_eq!(responses(&mut r.front)[0].status, USBIF_STATUS_OK);
    assert_eq!(calls(&mut r) - before, 2);

    // The next ones into the same grants only copy out.
    for id in 2..5 {
        let before = calls(&mut r);
        send(&r.w.fe, &mut r.front, &[read(id)]);
        settle(&mut r.w.be, &mut r.host);
        let got = responses(&mut r.front);
        assert_eq!((got[0].id, got[0].status), (id, USBIF_STATUS_OK));
        assert_eq!(calls(&mut r) - before, 1, "read {id}");
        assert_eq!(inb.read(), want);
    }

    // A grant revoked since: the device is asked, but nothing reaches the page and the
    // answer is an error; the grant is checked again next time.
    r.w.fe.end_access(inb.segs[1].gref).unwrap();
    send(&r.w.fe, &mut r.front, &[read(5)]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!((got[0].id, got[0].status), (5, USBIF_STATUS_IOERROR));
    let submitted = r.host.submitted;
    send(&r.w.fe, &mut r.front, &[read(6)]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!((got[0].id, got[0].status), (6, USBIF_STATUS_INVAL));
    assert_eq!(
        r.host.submitted, submitted,
        "checked, refused, never sent to the device"
    );
}
