//! Devices behind hubs: route strings and Transaction Translators in the Slot Context,
//! hubs that misbehave, and the Default Control Endpoint's context.

use super::*;

#[test]
fn a_device_behind_a_high_speed_hub_gets_its_route_string_and_tt() {
    let fake = FakeXhci::with_hub();
    // The status change endpoint's transfer stays queued.
    fake.answer_bulk.set(false);
    let mut xhci = Controller::start(&fake).unwrap();
    let devices = xhci.enumerate_root_ports();
    let ids: Vec<(String, u8, Speed)> = devices
        .iter()
        .map(|d| (d.busid(), d.slot_id, d.speed))
        .collect();
    assert_eq!(
        ids,
        [
            ("1-1".into(), 1, Speed::High),
            ("1-1.3".into(), 2, Speed::Full)
        ]
    );
    assert_eq!(devices[0].class, 9);
    let contexts = fake.slot_contexts();
    // The hub: configured (its status change endpoint, DCI 3), then Configure Endpoint
    // with the Slot Context alone: Hub, 4 ports, TT Think Time 1.
    assert_eq!(
        contexts[1..3],
        [
            (1, 12, [(3 << 27) | (3 << 20), 2 << 16, 0]),
            (
                1,
                12,
                [
                    (3 << 27) | (1 << 26) | (3 << 20),
                    (4 << 24) | (2 << 16),
                    1 << 16
                ]
            ),
        ]
    );
    assert_eq!(fake.configured().0, 1, "A0 only");
    // The full-speed device behind port 3: route 3, root port 2, the hub's TT.
    assert_eq!(
        contexts[3],
        (2, 11, [(1 << 27) | (1 << 20) | 3, 2 << 16, 1 | (3 << 8)])
    );
    let hub_requests: Vec<(u8, u8, u16, u16)> = fake
        .setups()
        .into_iter()
        .filter(|s| s.0 & 0x20 != 0)
        .collect();
    let power: Vec<_> = (1..=4).map(|p| (0x23, 3, 8, p)).collect();
    assert_eq!(hub_requests[1..5], power[..], "{hub_requests:x?}");
    assert!(
        hub_requests.contains(&(0x23, 3, 4, 3)),
        "PORT_RESET of port 3"
    );
    assert!(
        hub_requests.contains(&(0x23, 1, 16, 3)),
        "C_PORT_CONNECTION"
    );
    assert!(hub_requests.contains(&(0x23, 1, 20, 3)), "C_PORT_RESET");
    assert!(
        !hub_requests
            .iter()
            .any(|&(_, r, f, p)| r == 3 && f == 4 && p != 3),
        "only the connected port is reset"
    );
    // Unplugging the hub releases the device behind it first.
    fake.unplug(2);
    xhci.poll_events().unwrap();
    assert!(xhci.handle_port_changes().is_empty());
    assert_eq!(xhci.occupied_slots().count(), 0);
    assert_eq!(fake.commands()[fake.commands().len() - 2..], [10, 10]);
}

#[test]
fn a_malformed_hub_descriptor_skips_the_hub_without_harm() {
    let fake = FakeXhci::with_hub();
    fake.answer_bulk.set(false);
    *fake.hub_descriptor.borrow_mut() = Some(vec![9, 0x29, 200, 0, 0]);
    let mut xhci = Controller::start(&fake).unwrap();
    let devices = xhci.enumerate_root_ports();
    assert_eq!(devices.len(), 1, "the hub itself, nothing behind it");
    assert!(
        !fake.setups().iter().any(|s| s.0 == 0x23),
        "no port requests"
    );
}

#[test]
fn a_hub_that_never_ends_a_port_reset_is_given_up() {
    let fake = FakeXhci::with_hub();
    fake.answer_bulk.set(false);
    fake.hub_resets.set(false);
    let mut xhci = Controller::start(&fake).unwrap();
    let devices = xhci.enumerate_root_ports();
    assert_eq!(devices.len(), 1);
    // Ports 1 and 2 looked at, port 3's reset timed out, port 4 never asked about.
    let asked: Vec<u16> = fake
        .setups()
        .iter()
        .filter(|s| s.0 == 0xa3)
        .map(|s| s.3)
        .collect();
    assert_eq!(asked.first(), Some(&1));
    assert!(!asked.contains(&4), "{asked:?}");
}
