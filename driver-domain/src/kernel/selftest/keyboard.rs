//! `usbtest=keyboard`: a HID boot keyboard's interrupt reports through the driver alone.

use usb::hid;

use super::*;

/// A HID boot keyboard whose interrupt IN endpoint always has transfers queued, each with
/// its own buffer, oldest first.
pub(super) struct Keyboard {
    slot_id: u8,
    endpoint: u8,
    /// The endpoint's max packet size: one report per transfer.
    len: usize,
    queued: Vec<(KernelDma, TransferId)>,
}

// HID 1.11 7.2: class requests to the interface.
pub(super) const REQUEST_TYPE_CLASS_INTERFACE_OUT: u8 =
    request_type::CLASS | request_type::INTERFACE;

/// `usbtest=keyboard`: configures the first HID boot keyboard (interface 03/01/01) in the
/// boot protocol, reporting only on change (SET_IDLE 0), and queues a transfer on its
/// interrupt IN endpoint (`event=usbtest_keyboard_ready`). The main loop logs each report
/// (`event=usbtest_keyboard report=…`) and queues the next transfer.
pub fn self_test_keyboard(usb: &mut Usb) {
    let found = usb.devices().into_iter().find_map(|d| {
        let config = usb.xhci().configuration(d.slot_id).ok()?;
        let (interface, endpoint) = config.interfaces.iter().find_map(|i| {
            let boot_keyboard = i.class == hid::CLASS
                && i.subclass == hid::SUBCLASS_BOOT
                && i.protocol == hid::PROTOCOL_KEYBOARD
                && i.alternate_setting == 0;
            let e = i
                .endpoints
                .iter()
                .find(|e| e.transfer_type == TransferType::Interrupt && e.is_in())?;
            boot_keyboard.then_some((i.number, *e))
        })?;
        Some((d.slot_id, config, interface, endpoint))
    });
    let Some((slot_id, config, interface, endpoint)) = found else {
        warn!("event=usbtest_keyboard step=find error=no_boot_keyboard");
        return;
    };
    let xhci = usb.host.controller();
    let step = |step: &'static str| {
        move |e: xhci_driver::Error| {
            warn!("event=usbtest_keyboard slot={slot_id} step={step} error={e}");
        }
    };
    let Ok(()) = xhci.configure(slot_id, &config).map_err(step("configure")) else {
        return;
    };
    let set_protocol = xhci.control(
        slot_id,
        REQUEST_TYPE_CLASS_INTERFACE_OUT,
        hid::SET_PROTOCOL,
        hid::BOOT_PROTOCOL,
        u16::from(interface),
    );
    let Ok(()) = set_protocol.map_err(step("set_protocol")) else {
        return;
    };
    // Duration 0: a report only when the keys change (HID 7.2.4), which is what is logged.
    let set_idle = xhci.control(
        slot_id,
        REQUEST_TYPE_CLASS_INTERFACE_OUT,
        hid::SET_IDLE,
        0,
        u16::from(interface),
    );
    let Ok(()) = set_idle.map_err(step("set_idle")) else {
        return;
    };
    let len = usize::from(endpoint.max_packet_size).min(4096);
    let number = endpoint.number();
    // Three transfers queued, the middle one cancelled: the other two must go on
    // delivering reports in order.
    let mut queued = Vec::new();
    for _ in 0..3 {
        let Ok(buf) = xhci.dma_alloc(4096, 4096).map_err(step("dma")) else {
            return;
        };
        let segment = [DmaSegment {
            phys: buf.phys(),
            len,
        }];
        let Ok(id) = xhci
            .queue_transfer(slot_id, number, Direction::In, &segment)
            .map_err(step("queue"))
        else {
            return;
        };
        queued.push((buf, id));
    }
    let (buf, cancelled) = queued.remove(1);
    let Ok(true) = xhci.cancel(cancelled).map_err(step("cancel")) else {
        return;
    };
    let result = match xhci.take_completion(cancelled) {
        Some(Err(e)) => format!("{e}"),
        Some(Ok(n)) => format!("completed_{n}"),
        None => String::from("pending"),
    };
    if result == "pending" {
        core::mem::forget(buf);
    }
    info!(
        "event=usbtest_cancel slot={slot_id} endpoint={:#04x} result={result} still_queued={}",
        endpoint.address,
        queued.len()
    );
    info!(
        "event=usbtest_keyboard_ready slot={slot_id} interface={interface} endpoint={:#04x} max_packet_size={len}",
        endpoint.address
    );
    usb.tests.keyboard = Some(Keyboard {
        slot_id,
        endpoint: number,
        len,
        queued,
    });
}

/// Logs the keyboard's reports whose transfers finished, oldest first, and queues each
/// buffer again.
pub(super) fn keyboard_reports(usb: &mut Usb) {
    let Some(k) = usb.tests.keyboard.as_mut() else {
        return;
    };
    while let Some(result) = k
        .queued
        .first()
        .and_then(|(_, id)| usb.host.controller().take_completion(*id))
    {
        let (buf, _) = k.queued.remove(0);
        match result {
            Ok(n) => {
                let mut report = [0u8; 64];
                let n = n.min(k.len).min(report.len());
                buf.read_bytes(0, &mut report[..n]);
                let mut hex = String::new();
                for (i, b) in report[..n].iter().enumerate() {
                    let sep = if i == 0 { "" } else { " " };
                    hex.push_str(&format!("{sep}{b:02x}"));
                }
                info!("event=usbtest_keyboard report={hex}");
            }
            Err(e) => {
                // The keyboard left or its endpoint broke: listening ends, and its other
                // transfers are taken back.
                warn!("event=usbtest_keyboard slot={} error={e}", k.slot_id);
                let rest = core::mem::take(&mut k.queued);
                usb.tests.keyboard = None;
                for (buf, id) in rest {
                    // Finished (or cancelled now): the controller is done with the buffer.
                    let _ = usb.host.controller().cancel(id);
                    if usb.host.controller().take_completion(id).is_none() {
                        core::mem::forget(buf);
                    }
                }
                return;
            }
        }
        let segment = [DmaSegment {
            phys: buf.phys(),
            len: k.len,
        }];
        match usb
            .host
            .controller()
            .queue_transfer(k.slot_id, k.endpoint, Direction::In, &segment)
        {
            Ok(id) => k.queued.push((buf, id)),
            Err(e) => {
                warn!(
                    "event=usbtest_keyboard slot={} step=queue error={e}",
                    k.slot_id
                );
            }
        }
    }
}
