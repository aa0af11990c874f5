//! Descriptor building for the models (USB 2.0 chapter 9: device, configuration, interface,
//! endpoint and string descriptors).

use super::*;

/// A device descriptor with strings 1 (manufacturer), 2 (product), 3 (serial number) and
/// one configuration.
pub(super) fn device_descriptor(
    bcd_usb: u16,
    class: [u8; 3],
    max_packet0: u8,
    product_id: u16,
) -> Vec<u8> {
    let [usb_lo, usb_hi] = bcd_usb.to_le_bytes();
    let [vid_lo, vid_hi] = VENDOR_PID_CODES.to_le_bytes();
    let [pid_lo, pid_hi] = product_id.to_le_bytes();
    vec![
        18,
        DEVICE,
        usb_lo,
        usb_hi,
        class[0],
        class[1],
        class[2],
        max_packet0,
        vid_lo,
        vid_hi,
        pid_lo,
        pid_hi,
        0x00,
        0x01,
        1,
        2,
        3,
        1,
    ]
}

/// Configuration 1 with `body` (interface, class and endpoint descriptors) after it.
pub(super) fn configuration_descriptor(
    attributes: u8,
    max_power_2ma: u8,
    body: &[&[u8]],
) -> Vec<u8> {
    let interfaces = body
        .iter()
        .filter(|d| d.get(1) == Some(&INTERFACE) && d.get(3) == Some(&0))
        .count() as u8;
    let mut c = vec![
        9,
        CONFIGURATION,
        0,
        0,
        interfaces,
        1,
        0,
        attributes,
        max_power_2ma,
    ];
    for d in body {
        c.extend_from_slice(d);
    }
    let total = (c.len() as u16).to_le_bytes();
    c[2..4].copy_from_slice(&total);
    c
}

/// Alternate setting 0 of interface `number`.
pub(super) fn interface_descriptor(number: u8, endpoints: u8, class: [u8; 3]) -> [u8; 9] {
    [
        9, INTERFACE, number, 0, endpoints, class[0], class[1], class[2], 0,
    ]
}

pub(super) fn endpoint_descriptor(
    address: u8,
    transfer_type: TransferType,
    max_packet: u16,
    interval: u8,
) -> [u8; 7] {
    let attributes = transfer_type.attributes();
    let [lo, hi] = max_packet.to_le_bytes();
    [7, ENDPOINT, address, attributes, lo, hi, interval]
}

/// The strings every model has: 1 manufacturer, 2 product, 3 serial number.
pub(super) fn model_string(
    index: u8,
    product: &'static str,
    serial: &'static str,
) -> Option<&'static str> {
    match index {
        1 => Some("usbdom"),
        2 => Some(product),
        3 => Some(serial),
        _ => None,
    }
}
