//! The USB vocabulary usbdom's crates share, defined once: transfer [`Direction`] and
//! [`TransferType`], device [`Speed`], an isochronous transfer's [`IsoPacket`], the
//! [`SetupPacket`] of a control transfer, and the numbers of USB 2.0 chapter 9
//! ([`request`], [`request_type`], [`descriptor`], [`feature`]) and of the hub class
//! ([`hub`], USB 2.0 chapter 11), the HID class's boot keyboard ([`hid`]), and the Mass Storage class's Bulk-Only Transport with its SCSI
//! commands ([`mass_storage`]).
//!
//! Only what USB itself defines lives here; how a particular wire or controller encodes it
//! (the PVUSB pipe, the xHCI Protocol Speed ID) stays with that wire or controller.
//!
//! `no_std`, no dependencies.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// Direction of a transfer, as USB names it from the host's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Host to device.
    Out,
    /// Device to host.
    In,
}

impl Direction {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// USB transfer types (USB 2.0 5.4 to 5.8), as an endpoint's bmAttributes bits 1..0 encode
/// them (USB 2.0 Table 9-13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferType {
    /// Control (with a SETUP packet).
    Control,
    /// Isochronous.
    Isochronous,
    /// Bulk.
    Bulk,
    /// Interrupt.
    Interrupt,
}

impl TransferType {
    /// The transfer type of an endpoint descriptor's bmAttributes (bits 1..0; the other bits
    /// are ignored).
    pub fn from_attributes(attributes: u8) -> TransferType {
        match attributes & 3 {
            0 => TransferType::Control,
            1 => TransferType::Isochronous,
            2 => TransferType::Bulk,
            _ => TransferType::Interrupt,
        }
    }

    /// bmAttributes bits 1..0 of an endpoint of this type.
    pub fn attributes(self) -> u8 {
        match self {
            TransferType::Control => 0,
            TransferType::Isochronous => 1,
            TransferType::Bulk => 2,
            TransferType::Interrupt => 3,
        }
    }
}

/// The speed a device runs at, slowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Speed {
    /// USB 1 low speed, 1.5 Mb/s.
    Low,
    /// USB 1 full speed, 12 Mb/s.
    Full,
    /// USB 2 high speed, 480 Mb/s.
    High,
    /// USB 3 SuperSpeed, 5 Gb/s.
    Super,
    /// USB 3.1 SuperSpeedPlus, 10 Gb/s and above.
    SuperPlus,
}

impl Speed {
    /// The name logs and xenstore use (Linux's words).
    pub fn name(self) -> &'static str {
        match self {
            Speed::Low => "low",
            Speed::Full => "full",
            Speed::High => "high",
            Speed::Super => "super",
            Speed::SuperPlus => "super-plus",
        }
    }

    /// The Default Control Endpoint's max packet size to start with (USB 2.0 5.5.3, USB 3.2
    /// 9.6.1); a full-speed device may use less, which its device descriptor says.
    pub fn initial_ep0_max_packet_size(self) -> u16 {
        match self {
            Speed::Low => 8,
            Speed::Full | Speed::High => 64,
            Speed::Super | Speed::SuperPlus => 512,
        }
    }
}

/// One packet of an isochronous transfer: `length` bytes at byte `offset` of the transfer's
/// buffer (Linux's `usb_iso_packet_descriptor` without its results).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsoPacket {
    /// Byte offset into the buffer.
    pub offset: u32,
    /// Bytes.
    pub length: u32,
}

/// A SETUP packet, decoded (USB 2.0 9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupPacket {
    /// bmRequestType: direction (bit 7), type (bits 6..5), recipient (bits 4..0); see
    /// [`request_type`].
    pub request_type: u8,
    /// bRequest; see [`request`].
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: the most bytes the data stage may carry.
    pub length: u16,
}

impl SetupPacket {
    /// Decodes the 8 bytes as sent on the wire (little-endian words).
    pub fn decode(raw: &[u8; 8]) -> SetupPacket {
        SetupPacket {
            request_type: raw[0],
            request: raw[1],
            value: u16::from_le_bytes([raw[2], raw[3]]),
            index: u16::from_le_bytes([raw[4], raw[5]]),
            length: u16::from_le_bytes([raw[6], raw[7]]),
        }
    }

    /// The 8 bytes as sent on the wire (little-endian words).
    pub fn encode(&self) -> [u8; 8] {
        let [v0, v1] = self.value.to_le_bytes();
        let [i0, i1] = self.index.to_le_bytes();
        let [l0, l1] = self.length.to_le_bytes();
        [self.request_type, self.request, v0, v1, i0, i1, l0, l1]
    }

    /// Whether the data stage goes from the device to the host (bit 7 of bmRequestType).
    pub fn is_in(&self) -> bool {
        self.request_type & request_type::DEVICE_TO_HOST != 0
    }

    /// Whether it is a standard request (type 0, [`request_type::STANDARD`]).
    pub fn is_standard(&self) -> bool {
        self.request_type & request_type::TYPE_MASK == request_type::STANDARD
    }

    /// The descriptor type of a GET_DESCRIPTOR (high byte of wValue).
    pub fn descriptor_type(&self) -> u8 {
        (self.value >> 8) as u8
    }
}

/// Why a USB transfer (or an operation carried out as one) failed, as a host tells its user:
/// the one vocabulary of outcomes from the xHCI driver (`xhci_driver::Error` converts into
/// it) through usbback (each maps to one usbif status, `usbback::status_of`) to the simulated
/// devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// The endpoint answered STALL (the host recovered its side).
    Stall,
    /// The device is gone (or never was).
    NoDevice,
    /// Cancelled with the host's cancel.
    Cancelled,
    /// A transaction error on the bus (CRC, timeout, bit stuffing).
    Protocol,
    /// The device sent more than asked for.
    Babble,
    /// The request is malformed for this device (no such endpoint, wrong type, bad length).
    Invalid,
    /// The host controller failed or was reset.
    Shutdown,
    /// The caller's vetting (usbback's policy) refused what the operation would activate; the device was not
    /// asked.
    Refused,
}

impl core::fmt::Display for TransferError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TransferError::Stall => "stall",
            TransferError::NoDevice => "no_device",
            TransferError::Cancelled => "cancelled",
            TransferError::Protocol => "protocol",
            TransferError::Babble => "babble",
            TransferError::Invalid => "invalid",
            TransferError::Shutdown => "shutdown",
            TransferError::Refused => "refused",
        })
    }
}

/// LANGID of US English (USB Language Identifiers), the language of the strings read and
/// served.
pub const LANGID_EN_US: u16 = 0x0409;

pub mod hid;
pub mod mass_storage;

/// bmRequestType (USB 2.0 Table 9-2): direction, type and recipient of a request.
pub mod request_type {
    /// Bit 7: the data stage goes from the device to the host (clear: host to device).
    pub const DEVICE_TO_HOST: u8 = 0x80;
    /// Bits 6..5: the request's type.
    pub const TYPE_MASK: u8 = 0x60;
    /// Type standard (chapter 9).
    pub const STANDARD: u8 = 0x00;
    /// Type class.
    pub const CLASS: u8 = 0x20;
    /// Bits 4..0: the recipient.
    pub const RECIPIENT_MASK: u8 = 0x1f;
    /// Recipient device.
    pub const DEVICE: u8 = 0x00;
    /// Recipient interface.
    pub const INTERFACE: u8 = 0x01;
    /// Recipient endpoint.
    pub const ENDPOINT: u8 = 0x02;
    /// Recipient other (a hub's port).
    pub const OTHER: u8 = 0x03;
}

/// bRequest codes of the standard requests (USB 2.0 Table 9-4); the hub class uses the same
/// codes for its requests of the same names (Table 11-16).
pub mod request {
    /// GET_STATUS.
    pub const GET_STATUS: u8 = 0;
    /// CLEAR_FEATURE.
    pub const CLEAR_FEATURE: u8 = 1;
    /// SET_FEATURE.
    pub const SET_FEATURE: u8 = 3;
    /// SET_ADDRESS.
    pub const SET_ADDRESS: u8 = 5;
    /// GET_DESCRIPTOR.
    pub const GET_DESCRIPTOR: u8 = 6;
    /// GET_CONFIGURATION.
    pub const GET_CONFIGURATION: u8 = 8;
    /// SET_CONFIGURATION.
    pub const SET_CONFIGURATION: u8 = 9;
    /// GET_INTERFACE.
    pub const GET_INTERFACE: u8 = 10;
    /// SET_INTERFACE.
    pub const SET_INTERFACE: u8 = 11;
}

/// bDescriptorType values (USB 2.0 Table 9-5, USB 3.2 Table 9-6).
pub mod descriptor {
    /// DEVICE.
    pub const DEVICE: u8 = 1;
    /// CONFIGURATION.
    pub const CONFIGURATION: u8 = 2;
    /// STRING.
    pub const STRING: u8 = 3;
    /// INTERFACE.
    pub const INTERFACE: u8 = 4;
    /// ENDPOINT.
    pub const ENDPOINT: u8 = 5;
    /// SUPERSPEED_USB_ENDPOINT_COMPANION (USB 3.2 9.6.7).
    pub const SUPERSPEED_USB_ENDPOINT_COMPANION: u8 = 0x30;
    /// SUPERSPEEDPLUS_ISOCHRONOUS_ENDPOINT_COMPANION (USB 3.2 9.6.8).
    pub const SUPERSPEEDPLUS_ISOCHRONOUS_ENDPOINT_COMPANION: u8 = 0x31;
}

/// Standard feature selectors (USB 2.0 Table 9-6).
pub mod feature {
    /// ENDPOINT_HALT (recipient endpoint).
    pub const ENDPOINT_HALT: u16 = 0;
}

/// The hub class (USB 2.0 11.23, 11.24): its class code, descriptor type, the
/// bmRequestType of its requests and its port feature selectors.
pub mod hub {
    use super::request_type::{CLASS, DEVICE, DEVICE_TO_HOST, OTHER};

    /// bDeviceClass of a hub, HUB_CLASSCODE (11.23.1).
    pub const HUB_CLASSCODE: u8 = 0x09;
    /// bDescriptorType of the USB 2.0 hub descriptor (11.23.2.1).
    pub const DESCRIPTOR_TYPE: u8 = 0x29;

    // bmRequestType of the hub class requests (Table 11-15).
    /// bmRequestType of GET_DESCRIPTOR and GET_STATUS to the hub.
    pub const REQUEST_TYPE_CLASS_DEVICE_IN: u8 = DEVICE_TO_HOST | CLASS | DEVICE;
    /// bmRequestType of GET_STATUS of a port.
    pub const REQUEST_TYPE_CLASS_OTHER_IN: u8 = DEVICE_TO_HOST | CLASS | OTHER;
    /// bmRequestType of SET_FEATURE and CLEAR_FEATURE of a port.
    pub const REQUEST_TYPE_CLASS_OTHER_OUT: u8 = CLASS | OTHER;

    // Port feature selectors (Table 11-17).
    /// PORT_RESET.
    pub const PORT_RESET: u16 = 4;
    /// PORT_POWER.
    pub const PORT_POWER: u16 = 8;
    /// C_PORT_CONNECTION.
    pub const C_PORT_CONNECTION: u16 = 16;
    /// C_PORT_ENABLE.
    pub const C_PORT_ENABLE: u16 = 17;
    /// C_PORT_SUSPEND.
    pub const C_PORT_SUSPEND: u16 = 18;
    /// C_PORT_OVER_CURRENT.
    pub const C_PORT_OVER_CURRENT: u16 = 19;
    /// C_PORT_RESET.
    pub const C_PORT_RESET: u16 = 20;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_packet_round_trips() {
        let raw = [0x80, 6, 0x00, 0x02, 0x09, 0x04, 0xff, 0x00];
        let s = SetupPacket::decode(&raw);
        assert_eq!(
            s,
            SetupPacket {
                request_type: 0x80,
                request: request::GET_DESCRIPTOR,
                value: 0x0200,
                index: 0x0409,
                length: 255,
            }
        );
        assert!(s.is_in() && s.is_standard());
        assert_eq!(s.descriptor_type(), descriptor::CONFIGURATION);
        assert_eq!(s.encode(), raw);
    }

    #[test]
    fn transfer_type_attributes_round_trip() {
        for bits in 0..4 {
            assert_eq!(
                TransferType::from_attributes(bits | 0x0c).attributes(),
                bits
            );
        }
    }

    #[test]
    fn hub_request_types() {
        assert_eq!(
            (
                hub::REQUEST_TYPE_CLASS_DEVICE_IN,
                hub::REQUEST_TYPE_CLASS_OTHER_IN,
                hub::REQUEST_TYPE_CLASS_OTHER_OUT
            ),
            (0xa0, 0xa3, 0x23)
        );
    }
}
