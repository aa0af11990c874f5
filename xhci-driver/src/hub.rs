//! External hubs (USB 2.0 11.23, 11.24): the hub descriptor, hub class requests, the status
//! of a hub's port, and where a device behind hubs is: its Route String (xHCI 8.9), its
//! Linux bus id, and the Transaction Translator a low- or full-speed device uses behind a
//! high-speed hub (xHCI 4.5.2, 6.2.2).

use alloc::string::String;
use core::fmt::Write;

use usb::hub::{
    C_PORT_CONNECTION, C_PORT_ENABLE, C_PORT_OVER_CURRENT, C_PORT_RESET, C_PORT_SUSPEND,
    DESCRIPTOR_TYPE,
};
use usb::Speed;

use crate::controller::RootPort;

/// The longest USB 2.0 hub descriptor: 7 bytes, then DeviceRemovable and PortPwrCtrlMask of
/// up to 32 bytes each for 255 ports.
pub const HUB_DESCRIPTOR_MAX: u16 = 71;
/// Tiers below the root hub a Route String can name (xHCI 8.9: five 4-bit hub port numbers).
pub const MAX_TIERS: usize = 5;
/// A Route String names hub ports 1..=15.
pub const MAX_ROUTABLE_PORT: u8 = 15;

// wPortStatus bits (Table 11-21).
const PORT_CONNECTION: u16 = 1 << 0;
const PORT_ENABLE: u16 = 1 << 1;
const PORT_RESET_BIT: u16 = 1 << 4;
const PORT_LOW_SPEED: u16 = 1 << 9;
const PORT_HIGH_SPEED: u16 = 1 << 10;
// wPortChange bits (Table 11-22).
const C_PORT_CONNECTION_BIT: u16 = 1 << 0;
const C_PORT_RESET_BIT: u16 = 1 << 4;

/// Why a hub descriptor was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubDescriptorError {
    /// Shorter than its fixed part, than bDescLength, or than its port bitmaps need.
    Truncated,
    /// bDescriptorType is not the hub descriptor's.
    NotAHub,
}

/// What the hub descriptor says that matters here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubDescriptor {
    /// bNbrPorts.
    pub ports: u8,
    /// wHubCharacteristics.
    pub characteristics: u16,
    /// bPwrOn2PwrGood, in milliseconds (the descriptor counts 2 ms units).
    pub power_on_to_power_good_ms: u32,
}

impl HubDescriptor {
    /// TT Think Time (wHubCharacteristics bits 6:5): 8, 16, 24 or 32 FS bit times, encoded
    /// 0..=3 as the Slot Context's TTT field wants it.
    pub fn tt_think_time(&self) -> u8 {
        ((self.characteristics >> 5) & 0b11) as u8
    }
}

/// Parses a USB 2.0 hub descriptor (11.23.2.1). The fields used are in its first 7 bytes;
/// the port bitmaps after them are not needed, but bDescLength must cover DeviceRemovable.
/// PortPwrCtrlMask is not required: QEMU's usb-hub sends it one byte short.
pub fn parse_hub_descriptor(bytes: &[u8]) -> Result<HubDescriptor, HubDescriptorError> {
    if bytes.len() < 7 {
        return Err(HubDescriptorError::Truncated);
    }
    let length = usize::from(bytes[0]);
    if bytes[1] != DESCRIPTOR_TYPE {
        return Err(HubDescriptorError::NotAHub);
    }
    let ports = bytes[2];
    // DeviceRemovable: one bit per port and bit 0 reserved, rounded up to whole bytes.
    let device_removable = usize::from(ports) / 8 + 1;
    if length < 7 + device_removable || length > bytes.len() {
        return Err(HubDescriptorError::Truncated);
    }
    Ok(HubDescriptor {
        ports,
        characteristics: u16::from_le_bytes([bytes[3], bytes[4]]),
        power_on_to_power_good_ms: 2 * u32::from(bytes[5]),
    })
}

/// A hub port's status (GET_STATUS, 11.24.2.7): wPortStatus and wPortChange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortStatus {
    /// wPortStatus.
    pub status: u16,
    /// wPortChange.
    pub change: u16,
}

impl PortStatus {
    /// From the 4 bytes GET_STATUS returns; `None` when fewer came.
    pub fn parse(bytes: &[u8]) -> Option<PortStatus> {
        match bytes {
            [a, b, c, d, ..] => Some(PortStatus {
                status: u16::from_le_bytes([*a, *b]),
                change: u16::from_le_bytes([*c, *d]),
            }),
            _ => None,
        }
    }

    /// PORT_CONNECTION: a device is present.
    pub fn connected(&self) -> bool {
        self.status & PORT_CONNECTION != 0
    }

    /// PORT_ENABLE.
    pub fn enabled(&self) -> bool {
        self.status & PORT_ENABLE != 0
    }

    /// C_PORT_CONNECTION: a device came or went since the bit was last cleared.
    pub fn connection_changed(&self) -> bool {
        self.change & C_PORT_CONNECTION_BIT != 0
    }

    /// The reset is over: PORT_RESET clear and C_PORT_RESET set.
    pub fn reset_done(&self) -> bool {
        self.status & PORT_RESET_BIT == 0 && self.change & C_PORT_RESET_BIT != 0
    }

    /// The attached device's speed: PORT_LOW_SPEED, PORT_HIGH_SPEED, else full speed.
    pub fn speed(&self) -> Speed {
        if self.status & PORT_LOW_SPEED != 0 {
            Speed::Low
        } else if self.status & PORT_HIGH_SPEED != 0 {
            Speed::High
        } else {
            Speed::Full
        }
    }

    /// The C_PORT_* feature selectors of the change bits set, to clear them.
    pub fn change_features(&self) -> impl Iterator<Item = u16> + '_ {
        [
            C_PORT_CONNECTION,
            C_PORT_ENABLE,
            C_PORT_SUSPEND,
            C_PORT_OVER_CURRENT,
            C_PORT_RESET,
        ]
        .into_iter()
        .filter(|f| self.change & (1 << (f - C_PORT_CONNECTION)) != 0)
    }
}

/// The Route String (xHCI 8.9) of a device behind `hub_ports` (the hub port of each tier,
/// nearest the root first): tier n's port in bits 4n+3:4n. `None` past five tiers or for a
/// port a Route String cannot name (0 or above 15).
pub fn route_string(hub_ports: &[u8]) -> Option<u32> {
    if hub_ports.len() > MAX_TIERS {
        return None;
    }
    hub_ports
        .iter()
        .enumerate()
        .try_fold(0u32, |route, (tier, &port)| {
            (1..=MAX_ROUTABLE_PORT)
                .contains(&port)
                .then(|| route | u32::from(port) << (4 * tier))
        })
}

/// The Linux bus id: the root port's (`1-3`), then `.port` per hub tier (`1-3.2.1`).
pub fn busid(root_port: &RootPort, hub_ports: &[u8]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{root_port}");
    for p in hub_ports {
        let _ = write!(s, ".{p}");
    }
    s
}

/// The Transaction Translator of a device: its TT Hub Slot ID and TT Port Number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tt {
    /// The Slot ID of the high-speed hub whose TT serves the device.
    pub hub_slot_id: u8,
    /// The port of that hub the device is behind.
    pub port: u8,
}

/// Which TT a device of `speed` on port `port` of a hub uses: low- and full-speed devices
/// on a high-speed hub use that hub's; behind a full-speed hub they use the TT that hub
/// uses (none when the chain up to the root port is all full speed: the root port
/// translates). High- and SuperSpeed devices use none.
pub fn transaction_translator(
    speed: Speed,
    hub_speed: Speed,
    hub_slot_id: u8,
    hub_tt: Option<Tt>,
    port: u8,
) -> Option<Tt> {
    match (speed, hub_speed) {
        (Speed::Low | Speed::Full, Speed::High) => Some(Tt { hub_slot_id, port }),
        (Speed::Low | Speed::Full, _) => hub_tt,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Protocol;

    /// QEMU's usb-hub: 8 ports, individual power switching and over-current reporting
    /// (wHubCharacteristics 0x000a), bPwrOn2PwrGood 1, DeviceRemovable 2 bytes,
    /// PortPwrCtrlMask 1 byte.
    const QEMU_HUB: [u8; 10] = [10, 0x29, 8, 0x0a, 0x00, 1, 0, 0, 0, 0xff];

    #[test]
    fn a_hub_descriptor_gives_ports_power_time_and_tt_think_time() {
        let d = parse_hub_descriptor(&QEMU_HUB).unwrap();
        assert_eq!((d.ports, d.power_on_to_power_good_ms), (8, 2));
        assert_eq!(d.tt_think_time(), 0);
        let mut slow_tt = QEMU_HUB;
        slow_tt[3] = 0x6a;
        assert_eq!(parse_hub_descriptor(&slow_tt).unwrap().tt_think_time(), 3);
    }

    #[test]
    fn a_malformed_hub_descriptor_is_refused() {
        assert_eq!(
            parse_hub_descriptor(&QEMU_HUB[..6]),
            Err(HubDescriptorError::Truncated)
        );
        let mut wrong = QEMU_HUB;
        wrong[1] = 0x2a;
        assert_eq!(
            parse_hub_descriptor(&wrong),
            Err(HubDescriptorError::NotAHub)
        );
        // bDescLength promising more than arrived.
        let mut long = QEMU_HUB;
        long[0] = 20;
        assert_eq!(
            parse_hub_descriptor(&long),
            Err(HubDescriptorError::Truncated)
        );
        // 200 ports need 26 DeviceRemovable bytes the descriptor does not have.
        let mut many = QEMU_HUB;
        many[2] = 200;
        assert_eq!(
            parse_hub_descriptor(&many),
            Err(HubDescriptorError::Truncated)
        );
        assert_eq!(
            parse_hub_descriptor(&[]),
            Err(HubDescriptorError::Truncated)
        );
    }

    #[test]
    fn port_status_decodes_connection_reset_and_speed() {
        // Connected, enabled, powered, low speed; C_PORT_CONNECTION and C_PORT_RESET.
        let s = PortStatus::parse(&[0x03, 0x03, 0x11, 0x00]).unwrap();
        assert!(s.connected() && s.enabled() && s.reset_done() && s.connection_changed());
        assert_eq!(s.speed(), Speed::Low);
        assert_eq!(
            s.change_features().collect::<alloc::vec::Vec<_>>(),
            [C_PORT_CONNECTION, C_PORT_RESET]
        );
        let s = PortStatus::parse(&[0x13, 0x05, 0x00, 0x00]).unwrap();
        assert!(!s.reset_done(), "still resetting");
        assert_eq!(s.speed(), Speed::High);
        assert_eq!(PortStatus::parse(&[0x01, 0x01, 0]).map(|s| s.speed()), None);
        assert_eq!(
            PortStatus::parse(&[0x01, 0x01, 0, 0]).map(|s| s.speed()),
            Some(Speed::Full)
        );
    }

    #[test]
    fn route_strings_put_each_tier_in_its_nibble() {
        assert_eq!(route_string(&[]), Some(0));
        assert_eq!(route_string(&[1]), Some(0x1));
        assert_eq!(route_string(&[2, 1]), Some(0x12));
        assert_eq!(route_string(&[15, 3, 4, 5, 6]), Some(0x6543f));
        assert_eq!(route_string(&[1, 1, 1, 1, 1, 1]), None, "six tiers");
        assert_eq!(route_string(&[16]), None, "port 16");
        assert_eq!(route_string(&[2, 0]), None, "port 0");
    }

    #[test]
    fn bus_ids_add_a_dot_per_tier() {
        let usb2 = [Protocol {
            major: 2,
            first_port: 5,
            count: 4,
            slot_type: 0,
        }];
        let root = RootPort::new(&usb2, 7, 1);
        assert_eq!(busid(&root, &[]), "1-3");
        assert_eq!(busid(&root, &[1]), "1-3.1");
        assert_eq!(busid(&root, &[2, 1]), "1-3.2.1");
        // The second controller's buses are 3 (USB 2) and 4 (USB 3), as Linux numbers them.
        let both = [
            usb2[0],
            Protocol {
                major: 3,
                first_port: 1,
                count: 4,
                slot_type: 0,
            },
        ];
        assert_eq!(busid(&RootPort::new(&both, 7, 3), &[]), "3-3");
        assert_eq!(busid(&RootPort::new(&both, 2, 3), &[1]), "4-2.1");
    }

    #[test]
    fn low_and_full_speed_devices_use_the_nearest_high_speed_hubs_tt() {
        use Speed::*;
        assert_eq!(
            transaction_translator(Full, High, 4, None, 3),
            Some(Tt {
                hub_slot_id: 4,
                port: 3
            })
        );
        assert_eq!(
            transaction_translator(Low, High, 4, None, 3).map(|t| t.port),
            Some(3)
        );
        assert_eq!(transaction_translator(High, High, 4, None, 3), None);
        // Behind a full-speed hub that itself sits behind port 2 of high-speed hub 4.
        let upstream = Some(Tt {
            hub_slot_id: 4,
            port: 2,
        });
        assert_eq!(transaction_translator(Full, Full, 6, upstream, 1), upstream);
        // A full-speed hub on a root port: the root port translates.
        assert_eq!(transaction_translator(Full, Full, 1, None, 1), None);
    }
}
