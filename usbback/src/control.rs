//! The standard requests (USB 2.0 9.4) the backend answers itself instead of passing them to
//! the device, and the policy checks made on the way.
//!
//! SET_ADDRESS is emulated per port (the host addressed the device already);
//! SET_CONFIGURATION and SET_INTERFACE go through the host, which sets up its endpoints for
//! them, and are vetted against the policy with what the host is about to activate;
//! CLEAR_FEATURE(ENDPOINT_HALT) goes through the host, which resets its side of the endpoint.
//!
//! They are recognised by bRequest for every standard bmRequestType (type bits 6..5 zero),
//! not by the one bmRequestType USB 2.0 gives each: many devices decode bRequest alone, so a
//! SET_CONFIGURATION with recipient "interface" passed through would configure the device
//! behind the host's back, with no endpoints set up and no policy check. Such a request, or
//! one whose other fields USB 2.0 does not define (wLength not 0, an address above 127, a
//! value above 255), is answered with an error and never reaches the device.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::warn;
use usb::request::{CLEAR_FEATURE, SET_ADDRESS, SET_CONFIGURATION, SET_INTERFACE};
use usb::{feature, request_type, Direction, SetupPacket};
use xen::abi::usbif::{USBIF_STATUS_INVAL, USBIF_STATUS_OK};
use xen::hypervisor::{EventChannels, GrantCopier, GrantMapper, LocalFrames};
use xen::page::SharedPage;
use xen::xenstore::{TxId, XsTransport};

use crate::bounce::{Buffer, Frames, Segments};
use crate::host::{ClassSet, DeviceInfo, InterfaceClasses, TransferError, UsbHost, Vet};
use crate::policy::Verdict;
use crate::{response, status_of, Backend, DeviceId, InFlight};

/// bmRequestType of each, host to device, standard (USB 2.0 9.4): recipient device,
/// interface, endpoint (the other bits are 0).
const TO_DEVICE: u8 = request_type::DEVICE;
const TO_INTERFACE: u8 = request_type::INTERFACE;
const TO_ENDPOINT: u8 = request_type::ENDPOINT;

/// A standard request the backend takes instead of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standard {
    /// SET_ADDRESS: the guest's address for the device.
    SetAddress(u8),
    /// SET_CONFIGURATION: bConfigurationValue, 0 to unconfigure.
    SetConfiguration(u8),
    /// SET_INTERFACE.
    SetInterface {
        /// bInterfaceNumber (wIndex).
        interface: u8,
        /// bAlternateSetting (wValue).
        alternate: u8,
    },
    /// CLEAR_FEATURE(ENDPOINT_HALT) of the endpoint with this bEndpointAddress.
    ClearHalt(u8),
    /// One of those with a bmRequestType or field USB 2.0 does not define for it: refused.
    Malformed,
}

/// Which standard request the SETUP packet `setup` is, if the backend takes it; `None`
/// passes it to the device.
pub(crate) fn intercept(setup: &[u8; 8]) -> Option<Standard> {
    let SetupPacket {
        request_type,
        request,
        value,
        index,
        length,
    } = SetupPacket::decode(setup);
    if request_type & request_type::TYPE_MASK != request_type::STANDARD {
        return None;
    }
    let exact = |wanted: u8| request_type == wanted && length == 0;
    let byte = |w: u16| u8::try_from(w).ok();
    match request {
        SET_ADDRESS => Some(
            byte(value)
                .filter(|a| exact(TO_DEVICE) && index == 0 && *a <= 127)
                .map_or(Standard::Malformed, Standard::SetAddress),
        ),
        SET_CONFIGURATION => Some(
            byte(value)
                .filter(|_| exact(TO_DEVICE) && index == 0)
                .map_or(Standard::Malformed, Standard::SetConfiguration),
        ),
        SET_INTERFACE => Some(match (byte(index), byte(value)) {
            (Some(interface), Some(alternate)) if exact(TO_INTERFACE) => Standard::SetInterface {
                interface,
                alternate,
            },
            _ => Standard::Malformed,
        }),
        // Other features (remote wakeup, test mode) the device handles alone.
        CLEAR_FEATURE
            if request_type & request_type::RECIPIENT_MASK == TO_ENDPOINT
                && value == feature::ENDPOINT_HALT =>
        {
            Some(
                byte(index)
                    .filter(|_| exact(TO_ENDPOINT))
                    .map_or(Standard::Malformed, Standard::ClearHalt),
            )
        }
        _ => None,
    }
}

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Answers request `rid` of `id`, a control transfer with SETUP packet `setup` to port
    /// `port` (holding host device `device`), if it is a standard request the backend takes
    /// ([`intercept`]). Returns whether it was.
    pub(crate) fn standard_request<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        rid: u16,
        port: u8,
        device: u32,
        setup: [u8; 8],
        host: &mut U,
    ) -> bool {
        let Some(request) = intercept(&setup) else {
            return false;
        };
        match request {
            Standard::SetAddress(address) => {
                if let Some(p) = self
                    .devices
                    .get_mut(&id)
                    .and_then(|d| d.ports.get_mut(usize::from(port).wrapping_sub(1)))
                {
                    p.address = address;
                }
                self.respond(id, response(rid, USBIF_STATUS_OK, 0));
            }
            Standard::SetConfiguration(value) => {
                self.through_host(id, rid, port, device, |be, token| {
                    be.vetted(
                        id,
                        port,
                        device,
                        format!("set_configuration value={value}"),
                        &mut |vet| host.set_configuration(device, value, token, vet),
                    )
                })
            }
            Standard::SetInterface {
                interface,
                alternate,
            } => self.through_host(id, rid, port, device, |be, token| {
                be.vetted(
                    id,
                    port,
                    device,
                    format!("set_interface value={alternate} interface={interface}"),
                    &mut |vet| host.set_interface(device, interface, alternate, token, vet),
                )
            }),
            Standard::ClearHalt(endpoint) => {
                self.through_host(id, rid, port, device, |_, token| {
                    host.clear_halt(device, endpoint, token)
                })
            }
            Standard::Malformed => {
                if self.may_warn(id) {
                    warn!(
                    "event=urb_invalid domid={} devid={} id={rid} reason=malformed_standard_request request_type={:#04x} request={} value={} index={} length={}",
                    id.frontend,
                    id.devid,
                    setup[0],
                    setup[1],
                    u16::from_le_bytes([setup[2], setup[3]]),
                    u16::from_le_bytes([setup[4], setup[5]]),
                    u16::from_le_bytes([setup[6], setup[7]]),
                );
                }
                self.respond(id, response(rid, USBIF_STATUS_INVAL, 0));
            }
        }
        true
    }

    /// Request `rid` of `id` carried out by the host (`op`, given its token): on its way, it
    /// is answered when the host completes it, as a transfer without data (and cancelled by
    /// an unlink or a disconnect like one); refused, it is answered now.
    fn through_host(
        &mut self,
        id: DeviceId,
        rid: u16,
        port: u8,
        device: u32,
        op: impl FnOnce(&mut Self, u64) -> Result<(), TransferError>,
    ) {
        let token = self.tokens.issue(id, rid, false);
        match op(self, token) {
            Ok(()) => {
                if let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) {
                    c.inflight.insert(
                        rid,
                        InFlight {
                            token,
                            device,
                            buffer: Buffer {
                                dom: id.frontend,
                                frames: Frames::new(),
                                segments: Segments::new(),
                                data: 0,
                            },
                            direction: Direction::Out,
                            iso_packets: Vec::new(),
                            rewrite: None,
                            port,
                            unlinked_by: None,
                        },
                    );
                }
            }
            Err(e) => {
                self.tokens.take(token);
                self.respond(id, response(rid, status_of(e), 0));
            }
        }
    }

    /// Runs a host operation that activates interfaces (`op`, given the vetting), checking
    /// what it would activate against the policy as it stands, for `id`'s domain; a refusal
    /// is logged (`event=policy_refused`, with `request`).
    fn vetted(
        &mut self,
        id: DeviceId,
        port: u8,
        device: u32,
        request: String,
        op: &mut dyn FnMut(&mut Vet<'_>) -> Result<(), TransferError>,
    ) -> Result<(), TransferError> {
        let mut info = self
            .known
            .iter()
            .find(|k| k.id == device)
            .cloned()
            .ok_or(TransferError::NoDevice)?;
        let name = self.frontend_name(id);
        let policy = &self.policy;
        let mut refused = None;
        let result = op(&mut |classes: &ClassSet| {
            info.interface_classes = InterfaceClasses::Checked(*classes);
            match policy.check(&info, id.frontend, name.as_deref()) {
                (Verdict::Allow, _) => true,
                (Verdict::Deny, rule) => {
                    refused = Some(rule.unwrap_or(0));
                    false
                }
            }
        });
        if let Some(rule) = refused.filter(|_| self.may_warn(id)) {
            warn!(
                "event=policy_refused domid={} devid={} port={port} busid={} rule={rule} text={} request={request}",
                id.frontend,
                id.devid,
                info.busid,
                self.rule_text(rule)
            );
        }
        result
    }

    /// The rule (1-based) and its text when the policy keeps `info` from `id`'s domain.
    pub(crate) fn policy_denies(
        &mut self,
        id: DeviceId,
        info: &DeviceInfo,
    ) -> Option<(usize, String)> {
        let name = self.frontend_name(id);
        match self.policy.check(info, id.frontend, name.as_deref()) {
            (Verdict::Deny, rule) => {
                let rule = rule.unwrap_or(0);
                Some((rule, self.rule_text(rule)))
            }
            (Verdict::Allow, _) => None,
        }
    }

    /// The name usbctl wrote, else the domain's own name key where the toolstack lets us
    /// read it; without either, rules naming domains decide against the device.
    fn frontend_name(&mut self, id: DeviceId) -> Option<String> {
        match self.devices.get(&id).and_then(|d| d.frontend_name.clone()) {
            Some(n) => Some(n),
            None => self
                .xs
                .read_string(TxId::NONE, &format!("/local/domain/{}/name", id.frontend))
                .ok(),
        }
    }

    fn rule_text(&self, rule: usize) -> String {
        rule.checked_sub(1)
            .and_then(|r| self.policy.rules.get(r))
            .map(|r| r.text())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> [u8; 8] {
        let [v0, v1] = value.to_le_bytes();
        let [i0, i1] = index.to_le_bytes();
        let [l0, l1] = length.to_le_bytes();
        [request_type, request, v0, v1, i0, i1, l0, l1]
    }

    #[test]
    fn standard_requests_are_taken_by_brequest_whatever_the_recipient() {
        use Standard::*;
        let cases = [
            (setup(0x00, SET_ADDRESS, 7, 0, 0), Some(SetAddress(7))),
            (
                setup(0x00, SET_CONFIGURATION, 2, 0, 0),
                Some(SetConfiguration(2)),
            ),
            (
                setup(0x01, SET_INTERFACE, 1, 3, 0),
                Some(SetInterface {
                    interface: 3,
                    alternate: 1,
                }),
            ),
            (
                setup(0x02, CLEAR_FEATURE, 0, 0x81, 0),
                Some(ClearHalt(0x81)),
            ),
            // Another recipient or direction, which a device decoding bRequest alone obeys.
            (setup(0x01, SET_CONFIGURATION, 2, 0, 0), Some(Malformed)),
            (setup(0x02, SET_CONFIGURATION, 2, 0, 0), Some(Malformed)),
            (setup(0x80, SET_CONFIGURATION, 2, 0, 0), Some(Malformed)),
            (setup(0x03, SET_ADDRESS, 7, 0, 0), Some(Malformed)),
            (setup(0x00, SET_INTERFACE, 1, 0, 0), Some(Malformed)),
            (setup(0x81, SET_INTERFACE, 1, 0, 0), Some(Malformed)),
            (setup(0x82, CLEAR_FEATURE, 0, 0x81, 0), Some(Malformed)),
            // Fields USB 2.0 leaves undefined.
            (setup(0x00, SET_ADDRESS, 128, 0, 0), Some(Malformed)),
            (setup(0x00, SET_CONFIGURATION, 0x102, 0, 0), Some(Malformed)),
            (setup(0x00, SET_CONFIGURATION, 1, 1, 0), Some(Malformed)),
            (setup(0x00, SET_CONFIGURATION, 1, 0, 4), Some(Malformed)),
            (setup(0x01, SET_INTERFACE, 1, 0x100, 0), Some(Malformed)),
            (setup(0x02, CLEAR_FEATURE, 0, 0x181, 0), Some(Malformed)),
            // The device's own: other features, other requests, class and vendor ones
            // (HID's SET_REPORT is bRequest 9 too).
            (setup(0x00, CLEAR_FEATURE, 1, 0, 0), None),
            (setup(0x80, 6, 0x100, 0, 18), None),
            (setup(0x21, SET_CONFIGURATION, 0x200, 0, 1), None),
            (setup(0x40, SET_ADDRESS, 1, 0, 0), None),
        ];
        for (raw, want) in cases {
            assert_eq!(intercept(&raw), want, "{raw:02x?}");
        }
    }
}
