use alloc::vec::Vec;

use testkit::model_host::{info, Model};
use usb::{Direction, Speed, TransferType};
use usbback::host::{self, HostEvent, TransferError, UsbHost};
use xen::page::LocalPage;

use super::{first_bus, HostSet};

/// A transfer without data on endpoint 0 (the model answers it or holds it).
fn control(token: u64) -> host::Transfer<LocalPage> {
    host::Transfer {
        token,
        endpoint: 0,
        direction: Direction::In,
        transfer_type: TransferType::Control,
        setup: Some([0x80, 6, 0, 1, 0, 0, 0, 0]),
        segments: host::TransferSegments::new(),
        iso_packets: Vec::new(),
        start_frame: None,
    }
}

fn poll(set: &mut HostSet<Model>) -> Vec<HostEvent> {
    let mut events = Vec::new();
    UsbHost::<LocalPage>::poll(set, &mut events);
    events
}

/// Two controllers whose devices both have id 1 there: a stick on the first's bus 1 and
/// a keyboard on the second's bus 3.
fn two_controllers() -> HostSet<Model> {
    let mut a = Model::default();
    a.plug(info(1, "1-1", Speed::High, 0, &[8]));
    let mut b = Model::default();
    b.plug(info(1, "3-1", Speed::Full, 0, &[3]));
    let mut set = HostSet::default();
    assert_eq!(set.push::<LocalPage>(a), 0);
    assert_eq!(set.push::<LocalPage>(b), 1);
    set
}

#[test]
fn linux_numbers_the_buses_of_the_kth_controller_2k_minus_1_and_2k() {
    assert_eq!([0, 1, 2, 3].map(first_bus), [1, 3, 5, 7]);
}

#[test]
fn devices_of_every_controller_get_ids_of_their_own() {
    let mut set = two_controllers();
    let listed = UsbHost::<LocalPage>::devices(&set);
    let named: Vec<(u32, &str)> = listed.iter().map(|d| (d.id, d.busid.as_str())).collect();
    assert_eq!(named, [(1, "1-1"), (2, "3-1")]);
    // The attach events the controllers hold name the same ids.
    let attached: Vec<(u32, alloc::string::String)> = poll(&mut set)
        .into_iter()
        .filter_map(|e| match e {
            HostEvent::Attached(d) => Some((d.id, d.busid)),
            _ => None,
        })
        .collect();
    assert_eq!(attached, [(1, "1-1".into()), (2, "3-1".into())]);
}

#[test]
fn each_call_reaches_the_controller_of_its_device_and_completions_come_back() {
    let mut set = two_controllers();
    poll(&mut set);
    set.submit(2, control(20)).unwrap();
    assert_eq!(
        (
            set.member(0).unwrap().submitted,
            set.member(1).unwrap().submitted
        ),
        (0, 1)
    );
    set.submit(1, control(10)).unwrap();
    assert_eq!(set.member(0).unwrap().submitted, 1);
    let tokens: Vec<u64> = poll(&mut set)
        .into_iter()
        .filter_map(|e| match e {
            HostEvent::Completed(c) => Some(c.token),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, [10, 20], "first controller first, tokens untouched");
    // Held, then cancelled through the set on the right controller only.
    set.member(1).unwrap().hold = true;
    set.submit(2, control(21)).unwrap();
    assert!(!set.cancel(1, 21), "device 1 is on the other controller");
    assert!(set.cancel(2, 21));
    let mut vet = |_: &host::ClassSet| true;
    set.set_configuration(1, 1, 11, &mut vet).unwrap();
    set.clear_halt(2, 0x81, 22).unwrap();
    set.reset(2).unwrap();
    assert_eq!(set.member(0).unwrap().ops, ["set_configuration 1 1"]);
    assert_eq!(set.member(1).unwrap().ops, ["clear_halt 1 0x81", "reset 1"]);
    assert_eq!(set.submit(3, control(30)), Err(TransferError::NoDevice));
    assert!(!set.cancel(3, 30));
}

#[test]
fn an_unplugged_device_takes_its_id_along_and_the_next_one_gets_a_new_one() {
    let mut set = two_controllers();
    poll(&mut set);
    set.member(1).unwrap().unplug(1);
    let events = poll(&mut set);
    assert!(
        matches!(&events[..], [HostEvent::Detached { id: 2, busid }] if busid == "3-1"),
        "{events:?}"
    );
    assert_eq!(set.submit(2, control(1)), Err(TransferError::NoDevice));
    assert_eq!(
        set.member(1).unwrap().submitted,
        0,
        "nothing reached the controller"
    );
    // The first controller's device is still served.
    set.submit(1, control(2)).unwrap();
    // Plugged back (the controller's next id for it): never the old id of the set's.
    set.member(1)
        .unwrap()
        .plug(info(2, "3-1", Speed::Full, 0, &[3]));
    let events = poll(&mut set);
    let ids: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            HostEvent::Attached(d) => Some(d.id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [3]);
    let listed: Vec<u32> = UsbHost::<LocalPage>::devices(&set)
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, [1, 3]);
}
