//! The controller's tests, on the simulated controller (`testkit::fake_xhci::FakeXhci`).

use usb::request::{CLEAR_FEATURE, GET_DESCRIPTOR, SET_CONFIGURATION, SET_INTERFACE};
use usb::{Direction, IsoPacket, Speed};

use testkit::fake_xhci::{self as t, FakeXhci, USBLEGSUP};
use xhci_driver::controller::*;
use xhci_driver::descriptor;
use xhci_driver::hal::DmaBuffer;
use xhci_driver::port::{CSC, PED, PR};
use xhci_driver::transfer::DmaSegment;
use xhci_driver::*;

/// QEMU's qemu-xhci list: USB 3 on ports 1..4, USB 2 on 5..8 (measured).
fn qemu_protocols() -> Vec<Protocol> {
    let mut regs = [0u32; 64];
    // At 0x20 (dword 8): USB 3.0, next in 8 dwords, ports 1..4.
    regs[8] = 0x0300_0802;
    regs[9] = u32::from_le_bytes(*b"USB ");
    regs[10] = 0x0000_0401;
    // At 0x40 (dword 16): USB 2.0, last, ports 5..8.
    regs[16] = 0x0200_0002;
    regs[17] = u32::from_le_bytes(*b"USB ");
    regs[18] = 0x0000_0405;
    supported_protocols(|at| regs[at / 4], 0x20, 0x100)
}

#[test]
fn supported_protocols_are_found_in_the_extended_capability_list() {
    let p = qemu_protocols();
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].major, p[0].first_port, p[0].count), (3, 1, 4));
    assert_eq!((p[1].major, p[1].first_port, p[1].count), (2, 5, 4));
}

#[test]
fn a_capability_list_running_off_the_registers_is_cut_there() {
    // Every dword a capability with Next = 1: the list never ends by itself.
    let p = supported_protocols(
        |at| {
            assert!(at < 0x100, "read at {at:#x}, outside the registers");
            0x0200_0102
        },
        0x20,
        0x100,
    );
    assert_eq!(p.len(), (0x100 - 0x20 - 16) / 4 + 1);
}

#[test]
fn root_ports_get_linux_bus_ids() {
    let p = qemu_protocols();
    assert_eq!(RootPort::new(&p, 1, 1).to_string(), "2-1");
    assert_eq!(RootPort::new(&p, 4, 1).to_string(), "2-4");
    assert_eq!(RootPort::new(&p, 5, 1).to_string(), "1-1");
    assert_eq!(RootPort::new(&p, 7, 1).to_string(), "1-3");
    assert_eq!(RootPort::new(&p, 9, 1).bus, 0, "a port no protocol lists");
}

#[test]
fn bring_up_programs_the_controller_and_a_noop_completes() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(fake.reg(t::CONFIG) & 0xff, 8, "MaxSlotsEn");
    assert_eq!(fake.reg(t::USBCMD) & 0b101, 0b101, "Run/Stop and INTE");
    assert_eq!(fake.reg(t::USBSTS) & 1, 0, "running");
    assert_eq!(fake.reg(t::IMAN) & 0b10, 0b10, "Interrupter 0 enabled");
    assert_eq!(fake.reg(t::ERSTSZ), 1);
    assert_eq!(fake.reg(t::CRCR) & 1, 1, "Ring Cycle State 1");
    // DCBAA entry 0 is the Scratchpad Buffer Array: two page-aligned pages.
    let dcbaa = u64::from(fake.reg(t::DCBAAP));
    let array = u64::from(fake.arena().read32(dcbaa));
    for i in 0..2 {
        let page = fake.arena().read32(array + i * 8);
        assert!(
            page != 0 && page % 4096 == 0,
            "scratchpad buffer {i}: {page:#x}"
        );
    }
    assert_eq!(xhci.capabilities().context_size, 32);
    xhci.noop().unwrap();
    xhci.noop().unwrap();
    assert_eq!(fake.commands(), [23, 23]);
    // ERDP follows the two events, with Event Handler Busy written 1 to clear it.
    let erdp = fake.reg(t::ERDP);
    assert_eq!(erdp & 0b1000, 0b1000);
    let segment = fake.arena().read32(u64::from(fake.reg(t::ERSTBA)));
    assert_eq!(erdp & !0xf, segment + 2 * 16);
}

#[test]
fn with_64_byte_contexts_the_input_context_is_laid_out_wider() {
    let fake = FakeXhci::with_64_byte_contexts();
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.capabilities().context_size, 64);
    let devices = xhci.enumerate_root_ports();
    assert_eq!(
        devices.len(),
        1,
        "the fake found EP0's ring at 2 x 64 bytes"
    );
    assert_eq!(devices[0].vendor_id, 0x1234);
}

#[test]
fn halting_clears_run_stop_and_waits_for_hchalted() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.halt(), Ok(()));
    assert_eq!(fake.reg(t::USBCMD) & 0b101, 0);
    assert_eq!(fake.reg(t::USBSTS) & 1, 1);
}

#[test]
fn a_running_controller_is_refused() {
    let fake = FakeXhci::new();
    (&fake).write32(t::USBCMD, 1);
    assert_eq!(Controller::start(&fake).err(), Some(Error::NotHalted));
}

#[test]
fn a_command_that_never_completes_times_out() {
    let fake = FakeXhci::new();
    fake.answer_commands.set(false);
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.noop(), Err(Error::Timeout("command")));
}

#[test]
fn a_usb2_device_is_reset_addressed_and_described() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let devices = xhci.enumerate_root_ports();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let d = &devices[0];
    assert_eq!(d.root_port.to_string(), "1-1");
    assert_eq!(d.root_port.port, 2);
    assert_eq!((d.vendor_id, d.product_id, d.class), (0x1234, 0x5678, 0));
    assert_eq!((d.speed, d.usb_version, d.slot_id), (Speed::High, 0x200, 1));
    assert_eq!(d.max_packet_size0, 8);
    assert_eq!(d.product.as_deref(), Some("Fake"));
    // Enable Slot, Address Device, Evaluate Context (bMaxPacketSize0 8, not 64).
    assert_eq!(fake.commands(), [9, 11, 13]);
    let writes = fake.portsc_writes();
    assert!(writes.iter().all(|&(_, w)| w & PED == 0), "{writes:x?}");
    assert!(
        writes.contains(&(2, crate::port::PP | CSC)),
        "stale change acknowledged"
    );
    assert!(
        writes.iter().any(|&(p, w)| p == 2 && w & PR != 0),
        "port reset"
    );
    assert!(
        writes.iter().all(|&(p, _)| p == 2),
        "the empty USB3 port is left alone"
    );
    // The Port Status Change Event of the reset was consumed, not left for later.
    assert!(xhci.handle_port_changes().is_empty());
}

#[test]
fn a_usb3_port_whose_link_did_not_train_gets_a_warm_reset() {
    let fake = FakeXhci::new();
    fake.set_portsc(1, crate::port::PP | crate::port::CCS | (7 << 5));
    let mut xhci = Controller::start(&fake).unwrap();
    let devices = xhci.enumerate_root_ports();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(devices[0].root_port.to_string(), "2-1");
    assert_eq!(devices[0].speed, Speed::Super);
    let writes = fake.portsc_writes();
    assert!(writes
        .iter()
        .any(|&(p, w)| p == 1 && w & crate::port::WPR != 0));
    assert!(
        !writes.iter().any(|&(p, w)| p == 1 && w & PR != 0),
        "{writes:x?}"
    );
}

#[test]
fn a_device_that_leaves_is_disabled_and_one_that_comes_is_enumerated() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.enumerate_root_ports().len(), 1);
    fake.unplug(2);
    assert_eq!(xhci.poll_events(), Ok(1));
    assert!(xhci.handle_port_changes().is_empty());
    assert_eq!(fake.commands().last(), Some(&10), "Disable Slot");
    fake.plug(2);
    assert_eq!(xhci.poll_events(), Ok(1));
    let again = xhci.handle_port_changes();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].slot_id, again[0].vendor_id), (2, 0x1234));
    // The reset's own Port Status Change is seen and changes nothing.
    xhci.poll_events().unwrap();
    assert!(xhci.handle_port_changes().is_empty());
    assert_eq!(fake.commands().iter().filter(|&&c| c == 9).count(), 2);
}

#[test]
fn a_device_replaced_between_two_looks_is_enumerated_anew() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.enumerate_root_ports().len(), 1);
    assert!(!xhci.has_port_changes());
    fake.unplug(2);
    fake.plug(2);
    xhci.poll_events().unwrap();
    assert!(xhci.has_port_changes());
    let again = xhci.handle_port_changes();
    assert_eq!(again.len(), 1);
    assert_eq!(
        fake.commands()[3..],
        [10, 9, 11, 13],
        "Disable Slot, then a new slot"
    );
}

#[test]
fn a_device_that_failed_is_retried_only_when_plugged_again() {
    let fake = FakeXhci::new();
    fake.answer_transfers.set(false);
    let mut xhci = Controller::start(&fake).unwrap();
    assert!(xhci.enumerate_root_ports().is_empty());
    // The reset's Port Status Change Event is still to be looked at: it changes nothing.
    assert!(xhci.has_port_changes());
    assert!(xhci.handle_port_changes().is_empty());
    assert_eq!(fake.commands(), [9, 11, 15, 10]);
    fake.answer_transfers.set(true);
    fake.unplug(2);
    fake.plug(2);
    xhci.poll_events().unwrap();
    assert_eq!(xhci.handle_port_changes().len(), 1);
}

#[test]
fn a_device_that_does_not_answer_is_reported_not_waited_for() {
    let fake = FakeXhci::new();
    fake.answer_transfers.set(false);
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.enumerate_root_ports(), []);
    // Enable Slot, Address Device, Stop Endpoint to take the transfer that timed out
    // back, then Disable Slot.
    assert_eq!(fake.commands(), [9, 11, 15, 10]);
}

/// Enumerates the fake's device and configures it; returns its slot ID.
/// A page of DMA memory and a 512-byte segment at its start, for bulk transfers.
fn bulk_buffer(xhci: &mut Controller<&FakeXhci>) -> (t::Memory, [DmaSegment; 1]) {
    let buf = xhci.dma_alloc(0x1000, 0x1000).unwrap();
    let seg = [DmaSegment {
        phys: buf.phys(),
        len: 512,
    }];
    (buf, seg)
}

fn configured(xhci: &mut Controller<&FakeXhci>) -> u8 {
    let devices = xhci.enumerate_root_ports();
    let slot_id = devices[0].slot_id;
    let config = xhci.configuration(slot_id).unwrap();
    xhci.configure(slot_id, &config).unwrap();
    slot_id
}

#[test]
fn configuring_adds_the_bulk_endpoints_and_sets_the_configuration() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    assert_eq!(fake.commands().last(), Some(&12), "Configure Endpoint");
    let (add, slot_dword0) = fake.configured();
    assert_eq!(
        add,
        1 | 1 << 3 | 1 << 4,
        "Slot, bulk OUT 2 (DCI 4), bulk IN 1 (DCI 3)"
    );
    assert_eq!(slot_dword0 >> 27, 4, "Context Entries");
    assert_eq!((slot_dword0 >> 20) & 0xf, 3, "high speed kept");
    let setups = fake.setups();
    assert_eq!(setups.last(), Some(&(0, SET_CONFIGURATION, 1, 0)));
    assert_eq!(fake.dropped(), 0);
    // Configuring again drops the endpoints and adds them anew.
    let config = xhci.configuration(slot_id).unwrap();
    xhci.configure(slot_id, &config).unwrap();
    assert_eq!(fake.dropped(), 1 << 3 | 1 << 4);
    assert_eq!(fake.configured().0, 1 | 1 << 3 | 1 << 4);
    assert_eq!(xhci.configuration(9).err(), Some(Error::NoDevice));
}

#[test]
fn events_taken_together_are_acknowledged_with_one_erdp_write() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let (_buf, seg) = bulk_buffer(&mut xhci);
    // Four transfers done by the time the driver looks: four events, one ERDP write.
    let ids: Vec<TransferId> = (0..4)
        .map(|_| {
            xhci.queue_transfer(slot_id, 1, Direction::In, &seg)
                .unwrap()
        })
        .collect();
    let writes = fake.erdp_writes.get();
    assert_eq!(xhci.poll_events(), Ok(4));
    assert_eq!(fake.erdp_writes.get() - writes, 1);
    for id in ids {
        assert_eq!(xhci.take_completion(id), Some(Ok(512)));
    }
    let erdp = fake.reg(t::ERDP);
    assert_eq!(erdp & 0b1000, 0b1000, "Event Handler Busy cleared");
    assert_eq!(
        u64::from(erdp & !0xf),
        fake.event_enqueue_pointer(),
        "past the last event"
    );
}

#[test]
fn a_malformed_configuration_is_an_error() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = xhci.enumerate_root_ports()[0].slot_id;
    // wTotalLength promises more than the device sends.
    fake.configuration.borrow_mut()[2] = 64;
    assert_eq!(xhci.configuration(slot_id), Err(Error::BadDescriptor));
    // An endpoint descriptor of length 0.
    *fake.configuration.borrow_mut() = t::CONFIGURATION.to_vec();
    fake.configuration.borrow_mut()[18] = 0;
    assert_eq!(xhci.configuration(slot_id), Err(Error::BadDescriptor));
    // Not a configuration descriptor at all.
    *fake.configuration.borrow_mut() = vec![2, 2];
    assert_eq!(xhci.configuration(slot_id), Err(Error::BadDescriptor));
}

#[test]
fn bulk_transfers_complete_with_their_length_and_short_packets_with_less() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let buf = xhci.dma_alloc(0x20000, 0x10000).unwrap();
    // Across a 64 KiB boundary: two TRBs.
    let seg = [DmaSegment {
        phys: buf.phys() + 0x8000,
        len: 0x10000,
    }];
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Ok(0x10000)
    );
    assert_eq!(buf.read32(0x8000), 0xa5a5_a5a5);
    assert_eq!(buf.read32(0x17ffc), 0xa5a5_a5a5);
    assert_eq!(buf.read32(0x18000), 0, "nothing past the TD");
    // Short in the first TRB: the residue of that TRB gives the length.
    fake.bulk_in_bytes.set(100);
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Ok(100)
    );
    // Short in the second TRB: the first TRB's bytes count too.
    fake.bulk_in_bytes.set(0x9000);
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Ok(0x9000)
    );
    // The ring goes on: many TDs wrap it.
    for _ in 0..300 {
        assert_eq!(
            xhci.transfer(slot_id, 1, Direction::In, &seg[..], 1000),
            Ok(0x10000)
        );
    }
    let out = [DmaSegment {
        phys: buf.phys(),
        len: 31,
    }];
    assert_eq!(
        xhci.transfer(slot_id, 2, Direction::Out, &out, 1000),
        Ok(31)
    );
    assert_eq!(fake.bulk_out.borrow().len(), 31);
    assert_eq!(
        xhci.transfer(slot_id, 3, Direction::Out, &out, 1000),
        Err(Error::NoEndpoint)
    );
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &[], 1000),
        Err(Error::BadTransfer)
    );
}

#[test]
fn queued_transfers_complete_in_the_background() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let (_buf, seg) = bulk_buffer(&mut xhci);
    let a = xhci
        .queue_transfer(slot_id, 1, Direction::In, &seg)
        .unwrap();
    let b = xhci
        .queue_transfer(slot_id, 2, Direction::Out, &seg)
        .unwrap();
    assert_eq!(xhci.take_completion(a), None, "not seen yet");
    assert_eq!(xhci.poll_events(), Ok(2));
    assert_eq!(xhci.take_completion(b), Some(Ok(512)));
    assert_eq!(xhci.take_completion(a), Some(Ok(512)));
    assert_eq!(xhci.take_completion(a), None, "taken once");
}

#[test]
fn a_running_controller_is_halted_and_reset_before_bring_up() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    xhci.noop().unwrap();
    drop(xhci);
    assert_eq!(halt_and_reset(&&fake), Ok(true), "it was running");
    // Nothing is read in the first millisecond of the reset (Linux's wait on Intel hosts).
    assert!(fake.reset_to_read_us.get().is_some_and(|us| us >= 1_000));
    assert_eq!(halt_and_reset(&&fake), Ok(false));
    assert!(Controller::start(&fake).is_ok());
}

#[test]
fn a_stall_is_an_error_and_the_endpoint_is_recovered() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let (_buf, seg) = bulk_buffer(&mut xhci);
    fake.stall_next.set(true);
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Err(Error::Stall)
    );
    let commands = fake.commands();
    assert_eq!(
        commands[commands.len() - 2..],
        [14, 16],
        "Reset Endpoint, Set TR Dequeue Pointer"
    );
    assert_eq!(fake.setups().last(), Some(&(0x02, CLEAR_FEATURE, 0, 0x81)));
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Ok(512)
    );
}

#[test]
fn a_transfer_that_never_completes_is_taken_back() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let (_buf, seg) = bulk_buffer(&mut xhci);
    fake.answer_bulk.set(false);
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Err(Error::Timeout("transfer"))
    );
    let commands = fake.commands();
    assert_eq!(
        commands[commands.len() - 2..],
        [15, 16],
        "Stop Endpoint, Set TR Dequeue Pointer"
    );
    fake.answer_bulk.set(true);
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Ok(512),
        "the abandoned TD was skipped"
    );
}

/// Three bulk OUT transfers of 512 bytes queued while the device does not answer: the
/// first of bytes 1, the second 2, the third 3.
fn three_queued(fake: &FakeXhci, xhci: &mut Controller<&FakeXhci>, slot_id: u8) -> [TransferId; 3] {
    fake.answer_bulk.set(false);
    [1u8, 2, 3].map(|b| {
        let mut buf = xhci.dma_alloc(512, 64).unwrap();
        for at in (0..512).step_by(4) {
            buf.write32(at, u32::from_le_bytes([b; 4]));
        }
        let seg = [DmaSegment {
            phys: buf.phys(),
            len: 512,
        }];
        core::mem::forget(buf);
        xhci.queue_transfer(slot_id, 2, Direction::Out, &seg)
            .unwrap()
    })
}

#[test]
fn a_cancelled_transfer_is_skipped_and_the_others_on_its_endpoint_run() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let [a, b, c] = three_queued(&fake, &mut xhci, slot_id);
    fake.answer_bulk.set(true);
    let before = fake.commands().len();
    assert_eq!(xhci.cancel(b), Ok(true));
    // The endpoint stopped at the first transfer: no Set TR Dequeue Pointer, the second
    // transfer's TRBs became No Ops and the doorbell restarted the endpoint.
    assert_eq!(fake.commands()[before..], [15]);
    assert_eq!(xhci.take_completion(b), Some(Err(Error::Cancelled)));
    xhci.poll_events().unwrap();
    assert_eq!(xhci.take_completion(a), Some(Ok(512)));
    assert_eq!(xhci.take_completion(c), Some(Ok(512)));
    let out = fake.bulk_out.borrow();
    assert_eq!(out.len(), 1024);
    assert!(out[..512].iter().all(|&x| x == 1) && out[512..].iter().all(|&x| x == 3));
    assert_eq!(xhci.cancel(b), Ok(false), "taken: unknown now");
}

#[test]
fn cancelling_the_transfer_in_progress_moves_the_dequeue_pointer_past_it() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let [a, b, c] = three_queued(&fake, &mut xhci, slot_id);
    fake.answer_bulk.set(true);
    let before = fake.commands().len();
    assert_eq!(xhci.cancel(a), Ok(true));
    assert_eq!(
        fake.commands()[before..],
        [15, 16],
        "Stop, Set TR Dequeue Pointer"
    );
    assert_eq!(xhci.take_completion(a), Some(Err(Error::Cancelled)));
    xhci.poll_events().unwrap();
    assert_eq!(xhci.take_completion(b), Some(Ok(512)));
    assert_eq!(xhci.take_completion(c), Some(Ok(512)));
    let out = fake.bulk_out.borrow();
    assert!(out[..512].iter().all(|&x| x == 2) && out[512..].iter().all(|&x| x == 3));
}

#[test]
fn a_device_unplugged_with_transfers_queued_fails_them_and_frees_its_slot() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let ids = three_queued(&fake, &mut xhci, slot_id);
    fake.unplug(2);
    xhci.poll_events().unwrap();
    assert!(xhci.handle_port_changes().is_empty());
    for id in ids {
        assert_eq!(xhci.take_completion(id), Some(Err(Error::NoDevice)));
    }
    assert_eq!(xhci.take_detached(), [(slot_id, "1-1".into())]);
    assert_eq!(xhci.occupied_slots().count(), 0);
    assert_eq!(fake.commands().last(), Some(&10), "Disable Slot");
    let seg = [DmaSegment {
        phys: 0x1000,
        len: 8,
    }];
    assert_eq!(
        xhci.queue_transfer(slot_id, 2, Direction::Out, &seg),
        Err(Error::NoDevice)
    );
}

#[test]
fn a_controller_error_fails_every_transfer_and_the_controller_comes_back() {
    let fake = FakeXhci::new();
    let mut xhci = Controller::start(&fake).unwrap();
    let slot_id = configured(&mut xhci);
    let ids = three_queued(&fake, &mut xhci, slot_id);
    fake.fail(1 << 12);
    let error = xhci.poll_events().unwrap_err();
    assert_eq!(error, Error::HostControllerError);
    fake.answer_bulk.set(true);
    let found = xhci.restart(error).unwrap();
    for id in ids {
        assert_eq!(
            xhci.take_completion(id),
            Some(Err(Error::HostControllerError))
        );
    }
    assert_eq!(xhci.take_detached(), [(slot_id, "1-1".into())]);
    assert_eq!(found.len(), 1, "the device is enumerated again");
    assert_eq!(
        fake.reg(t::USBSTS) & (1 << 12 | 1),
        0,
        "running, error gone"
    );
    let slot_id = found[0].slot_id;
    let config = xhci.configuration(slot_id).unwrap();
    xhci.configure(slot_id, &config).unwrap();
    let (_buf, seg) = bulk_buffer(&mut xhci);
    assert_eq!(
        xhci.transfer(slot_id, 1, Direction::In, &seg, 1000),
        Ok(512)
    );
}

mod configurations;
mod hubs;

#[test]
fn the_controller_is_taken_from_firmware_that_owns_it_and_its_smis_are_turned_off() {
    // No USB Legacy Support Capability (as on QEMU): nothing to take.
    assert_eq!(legacy_handoff(&&FakeXhci::new()), Handoff::Absent);
    // Firmware that lets go when asked.
    let fake = FakeXhci::with_firmware(true);
    assert_eq!(legacy_handoff(&&fake), Handoff::Released);
    let legsup = (&fake).read32(USBLEGSUP);
    assert_eq!(legsup & (1 << 16 | 1 << 24), 1 << 24, "OS owned, BIOS not");
    let control = (&fake).read32(USBLEGSUP + 4);
    assert_eq!(control & (1 | 1 << 13), 0, "SMIs off");
    assert_eq!(control & (0b111 << 29), 0, "the pending SMI cleared");
    // Firmware that never answers: overruled after the timeout.
    let stubborn = FakeXhci::with_firmware(false);
    assert_eq!(legacy_handoff(&&stubborn), Handoff::Forced);
    assert_eq!((&stubborn).read32(USBLEGSUP) & (1 << 16 | 1 << 24), 1 << 24);
    // Taken, the controller starts and finds its ports as before.
    let mut xhci = Controller::start(&fake).unwrap();
    assert_eq!(xhci.enumerate_root_ports().len(), 1);
    // Asked again, nobody but the OS owns it.
    assert_eq!(legacy_handoff(&&fake), Handoff::NotOwned);
}
