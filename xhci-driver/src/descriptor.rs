//! The configuration descriptor and what follows it (USB 2.0 9.6.3, 9.6.5, 9.6.6; USB 3.2
//! 9.6.7): interfaces and their endpoints. The bytes come from the device and are checked
//! here: a length that runs past the data or cannot hold its descriptor is an error.

use alloc::vec::Vec;

use usb::descriptor::{CONFIGURATION, ENDPOINT, INTERFACE, SUPERSPEED_USB_ENDPOINT_COMPANION};
use usb::TransferType;

/// Size of the configuration descriptor itself.
pub const CONFIGURATION_SIZE: usize = 9;
/// The longest configuration descriptor set (wTotalLength) the driver reads: real ones are
/// a few hundred bytes to a few KiB, and a device may claim up to 64 KiB; a longer one is
/// refused whole rather than read in part (a part would hide interfaces from the policy).
pub const MAX_TOTAL_LENGTH: usize = 4096;

/// Why a descriptor set was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescriptorError {
    /// Shorter than a configuration descriptor, or not one.
    NotAConfiguration,
    /// wTotalLength is larger than the bytes received, or smaller than the header.
    TotalLength,
    /// A descriptor's bLength is below 2, runs past the end, or is too short for its type.
    Length {
        /// Byte offset of the descriptor.
        at: usize,
    },
}

/// An endpoint descriptor, with its SuperSpeed companion's fields when there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// bEndpointAddress: number in bits 3..0, IN when bit 7 is set.
    pub address: u8,
    /// The transfer type.
    pub transfer_type: TransferType,
    /// wMaxPacketSize bits 10..0.
    pub max_packet_size: u16,
    /// wMaxPacketSize bits 12..11: additional transactions per microframe (high-speed
    /// periodic endpoints).
    pub additional_transactions: u8,
    /// bInterval.
    pub interval: u8,
    /// The companion's bMaxBurst (0 without one).
    pub max_burst: u8,
    /// The companion's bmAttributes (Mult for isochronous, MaxStreams for bulk).
    pub companion_attributes: u8,
    /// The companion's wBytesPerInterval (0 without one).
    pub bytes_per_interval: u16,
}

impl Endpoint {
    /// Whether data flows from the device to the host.
    pub fn is_in(&self) -> bool {
        self.address & 0x80 != 0
    }

    /// The endpoint number, 0..=15.
    pub fn number(&self) -> u8 {
        self.address & 0x0f
    }

    /// Its Device Context Index (xHCI 4.5.1): 2 × number, plus 1 for IN.
    pub fn dci(&self) -> u8 {
        2 * self.number() + u8::from(self.is_in())
    }
}

/// An interface descriptor (one alternate setting) and its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// bInterfaceNumber.
    pub number: u8,
    /// bAlternateSetting.
    pub alternate_setting: u8,
    /// bInterfaceClass.
    pub class: u8,
    /// bInterfaceSubClass.
    pub subclass: u8,
    /// bInterfaceProtocol.
    pub protocol: u8,
    /// Its endpoints, in descriptor order.
    pub endpoints: Vec<Endpoint>,
}

/// A configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configuration {
    /// bConfigurationValue, for SET_CONFIGURATION.
    pub value: u8,
    /// Every interface descriptor, alternate settings included.
    pub interfaces: Vec<Interface>,
}

/// wTotalLength of the 9-byte configuration descriptor header in `head`.
pub fn total_length(head: &[u8]) -> Result<u16, DescriptorError> {
    if head.len() < CONFIGURATION_SIZE || head[1] != CONFIGURATION {
        return Err(DescriptorError::NotAConfiguration);
    }
    let total = u16::from_le_bytes([head[2], head[3]]);
    if usize::from(total) < CONFIGURATION_SIZE {
        return Err(DescriptorError::TotalLength);
    }
    Ok(total)
}

/// Parses a whole configuration (wTotalLength bytes). Descriptors of other types (class
/// specific, interface association, …) are skipped; endpoints before any interface are
/// refused as malformed.
pub fn parse_configuration(bytes: &[u8]) -> Result<Configuration, DescriptorError> {
    let total = usize::from(total_length(bytes)?);
    if total > bytes.len() {
        return Err(DescriptorError::TotalLength);
    }
    let bytes = &bytes[..total];
    let mut config = Configuration {
        value: bytes[5],
        interfaces: Vec::new(),
    };
    let mut at = usize::from(bytes[0]);
    if at < CONFIGURATION_SIZE || at > total {
        return Err(DescriptorError::Length { at: 0 });
    }
    while at < total {
        let rest = &bytes[at..];
        let len = usize::from(rest[0]);
        if len < 2 || len > rest.len() {
            return Err(DescriptorError::Length { at });
        }
        let d = &rest[..len];
        match d[1] {
            INTERFACE => {
                if len < 9 {
                    return Err(DescriptorError::Length { at });
                }
                config.interfaces.push(Interface {
                    number: d[2],
                    alternate_setting: d[3],
                    class: d[5],
                    subclass: d[6],
                    protocol: d[7],
                    endpoints: Vec::new(),
                });
            }
            ENDPOINT => {
                let interface = config
                    .interfaces
                    .last_mut()
                    .ok_or(DescriptorError::Length { at })?;
                if len < 7 {
                    return Err(DescriptorError::Length { at });
                }
                let w = u16::from_le_bytes([d[4], d[5]]);
                interface.endpoints.push(Endpoint {
                    address: d[2],
                    transfer_type: TransferType::from_attributes(d[3]),
                    max_packet_size: w & 0x7ff,
                    additional_transactions: ((w >> 11) & 0b11) as u8,
                    interval: d[6],
                    max_burst: 0,
                    companion_attributes: 0,
                    bytes_per_interval: 0,
                });
            }
            SUPERSPEED_USB_ENDPOINT_COMPANION => {
                // It belongs to the endpoint just before it; elsewhere it means nothing.
                let endpoint = config
                    .interfaces
                    .last_mut()
                    .and_then(|i| i.endpoints.last_mut());
                if let Some(e) = endpoint {
                    if len < 6 {
                        return Err(DescriptorError::Length { at });
                    }
                    e.max_burst = d[2];
                    e.companion_attributes = d[3];
                    e.bytes_per_interval = u16::from_le_bytes([d[4], d[5]]);
                }
            }
            _ => {}
        }
        at += len;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's usb-storage at SuperSpeed: one Bulk-Only interface, bulk IN 1 and OUT 2 with
    /// companions.
    pub const STORAGE: [u8; 44] = [
        9, 2, 44, 0, 1, 1, 0, 0xc0, 50, //
        9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
        7, 5, 0x81, 2, 0x00, 0x04, 0, //
        6, 0x30, 15, 0, 0, 0, //
        7, 5, 0x02, 2, 0x00, 0x04, 0, //
        6, 0x30, 15, 0, 0, 0,
    ];

    #[test]
    fn a_storage_configuration_parses() {
        let c = parse_configuration(&STORAGE).unwrap();
        assert_eq!(c.value, 1);
        assert_eq!(c.interfaces.len(), 1);
        let i = &c.interfaces[0];
        assert_eq!((i.class, i.subclass, i.protocol), (8, 6, 0x50));
        assert_eq!(i.endpoints.len(), 2);
        let bulk_in = i.endpoints[0];
        assert!(bulk_in.is_in());
        assert_eq!(bulk_in.dci(), 3);
        assert_eq!(bulk_in.transfer_type, TransferType::Bulk);
        assert_eq!((bulk_in.max_packet_size, bulk_in.max_burst), (1024, 15));
        assert_eq!(i.endpoints[1].dci(), 4);
    }

    #[test]
    fn high_speed_periodic_packet_sizes_split_off_additional_transactions() {
        let mut d = STORAGE;
        d[21..24].copy_from_slice(&[3, 0x00, 0x14]);
        let e = parse_configuration(&d).unwrap().interfaces[0].endpoints[0];
        assert_eq!(e.transfer_type, TransferType::Interrupt);
        assert_eq!((e.max_packet_size, e.additional_transactions), (1024, 2));
    }

    #[test]
    fn malformed_configurations_are_errors() {
        assert_eq!(
            parse_configuration(&STORAGE[..5]),
            Err(DescriptorError::NotAConfiguration)
        );
        let mut d = STORAGE;
        d[1] = 1;
        assert_eq!(
            parse_configuration(&d),
            Err(DescriptorError::NotAConfiguration)
        );
        // wTotalLength beyond the data, and below the header.
        assert_eq!(
            parse_configuration(&STORAGE[..40]),
            Err(DescriptorError::TotalLength)
        );
        let mut d = STORAGE;
        d[2] = 4;
        assert_eq!(parse_configuration(&d), Err(DescriptorError::TotalLength));
        // A zero bLength would loop for ever; a long one runs past the end.
        let mut d = STORAGE;
        d[18] = 0;
        assert_eq!(
            parse_configuration(&d),
            Err(DescriptorError::Length { at: 18 })
        );
        let mut d = STORAGE;
        d[38] = 200;
        assert_eq!(
            parse_configuration(&d),
            Err(DescriptorError::Length { at: 38 })
        );
        // An endpoint descriptor too short for its fields, and one before any interface.
        let mut d = STORAGE;
        d[18] = 3;
        assert!(parse_configuration(&d).is_err());
        let mut d = STORAGE;
        d[10] = 5;
        assert_eq!(
            parse_configuration(&d),
            Err(DescriptorError::Length { at: 9 })
        );
        // The header's own bLength past wTotalLength.
        let mut d = STORAGE;
        d[0] = 60;
        assert_eq!(
            parse_configuration(&d),
            Err(DescriptorError::Length { at: 0 })
        );
    }

    #[test]
    fn every_truncation_and_every_byte_value_is_an_answer_not_a_panic() {
        for n in 0..STORAGE.len() {
            let _ = parse_configuration(&STORAGE[..n]);
        }
        for at in 0..STORAGE.len() {
            for v in [0u8, 1, 2, 5, 6, 7, 9, 0x30, 0x7f, 0xff] {
                let mut d = STORAGE;
                d[at] = v;
                let _ = parse_configuration(&d);
            }
        }
    }
}
