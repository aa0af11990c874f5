//! Hub (USB 2.0 chapter 11): descriptors only, nothing ever changes on its ports.

use usb::hub::{DESCRIPTOR_TYPE, REQUEST_TYPE_CLASS_DEVICE_IN};

use super::*;

pub(super) const HUB_STATUS_IN: u8 = 0x81;

/// A full-speed hub with nothing on its ports: the backend must see it and refuse to
/// assign it.
pub struct Hub {
    ports: u8,
}

impl Hub {
    /// A hub with `ports` downstream ports (1..=7).
    pub fn new(ports: u8) -> Hub {
        Hub {
            ports: ports.clamp(1, 7),
        }
    }
}

impl DeviceModel for Hub {
    fn device_descriptor(&self) -> Vec<u8> {
        device_descriptor(0x0110, [HUB_CLASSCODE, 0, 0], 64, 0x0003)
    }

    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        (index == 0).then(|| {
            configuration_descriptor(
                0xe0,
                0,
                &[
                    &interface_descriptor(0, 1, [HUB_CLASSCODE, 0, 0]),
                    &endpoint_descriptor(HUB_STATUS_IN, TransferType::Interrupt, 1, 255),
                ],
            )
        })
    }

    fn string(&self, index: u8) -> Option<&str> {
        model_string(index, "Sim hub", "000000000003")
    }

    fn control(&mut self, setup: &SetupPacket, _data: &[u8]) -> Handshake<Vec<u8>> {
        match (setup.request_type, setup.request) {
            (REQUEST_TYPE_CLASS_DEVICE_IN, GET_DESCRIPTOR)
                if setup.descriptor_type() == DESCRIPTOR_TYPE =>
            {
                // Individual power switching and over-current protection, 100 ms to power
                // good, no removable-device bits, the USB 1.1 port power mask.
                Handshake::Ack(vec![
                    9,
                    DESCRIPTOR_TYPE,
                    self.ports,
                    0x09,
                    0,
                    50,
                    0,
                    0,
                    0xff,
                ])
            }
            _ => Handshake::Stall,
        }
    }

    fn data_in(&mut self, _endpoint: u8, _max_len: usize) -> Handshake<Vec<u8>> {
        // No port ever changes.
        Handshake::Nak
    }

    fn data_out(&mut self, _endpoint: u8, _data: &[u8]) -> Handshake<()> {
        Handshake::Stall
    }

    fn reset(&mut self) {}

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
