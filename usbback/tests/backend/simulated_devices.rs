//! The backend over usbback's simulated host with real device models (a Bulk-Only stick and
//! a boot keyboard), through both data paths: what a guest's usb-storage and HID drivers do.

use super::*;

#[test]
fn a_guest_writes_and_reads_a_simulated_stick_and_gets_keys_through_the_backend() {
    stick_and_keys(DataPath::Copy);
}

#[test]
fn the_map_data_path_moves_the_same_bytes_and_holds_a_grant_only_while_its_transfer_runs() {
    stick_and_keys(DataPath::Map);
}

fn stick_and_keys(path: DataPath) {
    use testkit::sim_host::{Keyboard, MassStorage, SimHost};
    let mut w = machine(8);
    w.be.set_data_path(path);
    let mut host: SimHost<LocalPage> = SimHost::new();
    let stick = host.plug(Box::new(MassStorage::new(2048)), "1-1", Speed::High);
    let kbd = host.plug(Box::new(Keyboard::new()), "1-2", Speed::Full);
    settle(&mut w.be, &mut host);
    let (be, fe) = (DomId(1), w.fe.domid());
    let mut front = RawFrontend::connect(&w.fe, be, None);
    assign(&w.xen, be, fe, 1, "1-1");
    assign(&w.xen, be, fe, 2, "1-2");
    settle(&mut w.be, &mut host);
    let mut changes = port_changes(&mut front);
    changes.sort();
    assert_eq!(changes, [(1, USBIF_SPEED_HIGH), (2, USBIF_SPEED_FULL)]);
    let set_config = |id, port| control(id, port, 0, [0, 9, 1, 0, 0, 0, 0, 0]);
    send(&w.fe, &mut front, &[set_config(0, 1), set_config(1, 2)]);
    settle(&mut w.be, &mut host);
    assert!(responses(&mut front).iter().all(|r| r.status == 0));

    // WRITE(10) of 2 blocks at LBA 4, its data across a page boundary, then the CSW.
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 5) as u8).collect();
    let wrapper = buffer(
        &w.fe,
        be,
        0,
        &read_write_10_cbw(1, true, 4, 2, BLOCK_SIZE as u32),
        true,
    );
    let data = buffer(&w.fe, be, 3500, &pattern, true);
    let status = buffer(&w.fe, be, 0, &[0; 13], false);
    let out = |id, b: &Buffer| with_buffer(urb(id, 1, 0, 2, Direction::Out, TransferType::Bulk), b);
    let inn = |id, b: &Buffer| with_buffer(urb(id, 1, 0, 1, Direction::In, TransferType::Bulk), b);
    send(
        &w.fe,
        &mut front,
        &[out(2, &wrapper), out(3, &data), inn(4, &status)],
    );
    settle(&mut w.be, &mut host);
    let got: Vec<(u16, i32, i32)> = responses(&mut front)
        .iter()
        .map(|r| (r.id, r.status, r.actual_length))
        .collect();
    assert_eq!(got, [(2, 0, 31), (3, 0, 1024), (4, 0, 13)]);
    let csw = status.read();
    assert_eq!((&csw[0..4], csw[12]), (&b"USBS"[..], 0), "command passed");
    let disk = host.model::<MassStorage>(stick).unwrap().disk();
    assert_eq!(&disk[4 * 512..6 * 512], &pattern[..], "on the disk");

    // READ(10) back into fresh pages.
    let wrapper = buffer(
        &w.fe,
        be,
        0,
        &read_write_10_cbw(2, false, 4, 2, BLOCK_SIZE as u32),
        true,
    );
    let back = buffer(&w.fe, be, 4000, &[0; 1024], false);
    send(
        &w.fe,
        &mut front,
        &[out(5, &wrapper), inn(6, &back), inn(7, &status)],
    );
    settle(&mut w.be, &mut host);
    let got: Vec<(u16, i32)> = responses(&mut front)
        .iter()
        .map(|r| (r.id, r.status))
        .collect();
    assert_eq!(got, [(5, 0), (6, 0), (7, 0)]);
    assert_eq!(back.read(), pattern, "read back through the backend");

    // The keyboard's interrupt IN waits for a key.
    let report = buffer(&w.fe, be, 0, &[0; 8], false);
    let poll = with_buffer(
        urb(8, 2, 0, 1, Direction::In, TransferType::Interrupt),
        &report,
    );
    send(&w.fe, &mut front, &[poll]);
    settle(&mut w.be, &mut host);
    assert!(responses(&mut front).is_empty(), "no key yet");
    let held = if path == DataPath::Map { 1 } else { 0 };
    assert_eq!(
        w.be.hypervisor().mappings(),
        2 + held,
        "the rings, and the waiting report's page if mapped"
    );
    host.model_mut::<Keyboard>(kbd).unwrap().press(0, &[0x04]);
    settle(&mut w.be, &mut host);
    let got = responses(&mut front);
    assert_eq!((got[0].id, got[0].status, got[0].actual_length), (8, 0, 8));
    assert_eq!(report.read(), [0, 0, 0x04, 0, 0, 0, 0, 0], "key a");
    assert_eq!(
        w.be.hypervisor().mappings(),
        2,
        "only the rings stay mapped"
    );
}
