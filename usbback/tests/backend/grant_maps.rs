//! The map data path ([`DataPath::Map`]): the guest's grants mapped for a transfer, in one
//! batch per pass, the device pointed at them, and every one unmapped before the answer is
//! out; what it refuses before the device is asked.

use super::*;

/// The rig on the map path with its device on port 1, and the grants it maps for the rings.
fn map_rig() -> (ConnectedFrontend, usize) {
    let mut r = connected_frontend();
    r.w.be.set_data_path(DataPath::Map);
    assign(&r.w.xen, r.be, r.fe, 1, "1-1");
    settle(&mut r.w.be, &mut r.host);
    responses(&mut r.front);
    let rings = r.w.be.hypervisor().mappings();
    (r, rings)
}

#[test]
fn mapped_grants_carry_the_data_without_a_copy_and_are_unmapped_before_the_answers() {
    let (mut r, rings) = map_rig();
    let copies = r.w.be.hypervisor().copy_calls();

    // Bulk OUT over two pages (read-only grants), bulk IN over three, in one pass.
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
    let out = buffer(&r.w.fe, r.be, 4000, &data, true);
    let inb = buffer(&r.w.fe, r.be, 50, &[0; 9000], false);
    let bulk_out = with_buffer(urb(5, 1, 0, 2, Direction::Out, TransferType::Bulk), &out);
    let bulk_in = with_buffer(urb(6, 1, 0, 1, Direction::In, TransferType::Bulk), &inb);
    send(&r.w.fe, &mut r.front, &[bulk_out, bulk_in]);
    settle(&mut r.w.be, &mut r.host);
    let got: Vec<(u16, i32, i32)> = responses(&mut r.front)
        .iter()
        .map(|r| (r.id, r.status, r.actual_length))
        .collect();
    assert_eq!(got, [(5, 0, 6000), (6, 0, 9000)]);
    assert_eq!(r.host.out[&1], data, "the device read the guest's pages");
    let want: Vec<u8> = (0..9000).map(|i| (i % 251) as u8).collect();
    assert_eq!(inb.read(), want, "the device wrote the guest's pages");
    assert!(out.released(&r.w.fe) && inb.released(&r.w.fe));
    assert_eq!(r.w.be.hypervisor().mappings(), rings, "all unmapped");
    assert_eq!(r.w.be.hypervisor().copy_calls(), copies, "nothing copied");
}

#[test]
fn a_read_into_a_read_only_grant_is_refused_before_the_device() {
    let (mut r, rings) = map_rig();
    let submitted = r.host.submitted;
    // Two pages: the first writable, the second read-only; the whole request is refused
    // and the page that could be mapped is let go.
    let inb = buffer(&r.w.fe, r.be, 0, &[0; 8192], false);
    let ro = buffer(&r.w.fe, r.be, 0, &[0; 4096], true);
    let mut read = with_buffer(urb(1, 1, 0, 1, Direction::In, TransferType::Bulk), &inb);
    read.seg[1] = ro.segs[0];
    send(&r.w.fe, &mut r.front, &[read]);
    settle(&mut r.w.be, &mut r.host);
    let got = responses(&mut r.front);
    assert_eq!((got[0].id, got[0].status), (1, USBIF_STATUS_INVAL));
    assert_eq!(r.host.submitted, submitted, "never sent to the device");
    assert_eq!(r.w.be.hypervisor().mappings(), rings, "nothing left mapped");
    assert_eq!(ro.read(), [0; 4096]);
}
