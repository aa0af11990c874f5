//! Device Slots and their contexts (xHCI 4.3, 6.2.2): a device enumerated (Enable Slot,
//! Address Device, Evaluate Context of the Default Control Endpoint's max packet size),
//! described by its device, string and configuration descriptors within a time budget,
//! reset (4.6.11), and its slot disabled (4.6.4).

use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use usb::descriptor::{DEVICE, STRING};
use usb::{request, request_type, Speed, TransferType};
use xhci::ring::trb::command;

use super::configuration::MAX_CONFIGURATIONS;
use super::ports::{RootPort, RESET_RECOVERY_US};
use super::registers::RING_BYTES;
use super::td::PendingTd;
use super::transfers::EndpointRing;
use super::{alloc, Controller, Error, Slot, UsbDevice};
use crate::descriptor::{self, Endpoint};
use crate::hal::{DmaBuffer, Hal};
use crate::hub::{self, HubDescriptor, Tt};
use crate::port::psiv;
use crate::ring::ProducerRing;

/// All a device may take to describe itself once it is addressed: its device, string and
/// configuration descriptors, however long each read alone may take. Devices take a few
/// milliseconds (4 ms under nested Xen in QEMU); one that answers each read just inside
/// [`TRANSFER_TIMEOUT_US`](super::transfers::TRANSFER_TIMEOUT_US) would otherwise hold the
/// driver for two seconds a plug.
pub const ENUMERATION_BUDGET_US: u64 = 500_000;

// USB 2.0 chapter 9.
const DEVICE_DESCRIPTOR_SIZE: u16 = 18;

/// Where a device to be enumerated is, and what the Slot Context says of it.
pub(super) struct Attachment {
    pub(super) root_port: RootPort,
    pub(super) hub_ports: Vec<u8>,
    pub(super) speed: Speed,
    pub(super) tt: Option<Tt>,
}

impl<H: Hal> Controller<H> {
    /// The Device Slots of the devices present now.
    pub fn occupied_slots(&self) -> impl Iterator<Item = u8> + '_ {
        self.slots.iter().map(|s| s.slot_id)
    }

    pub(super) fn slot_index(&self, slot_id: u8) -> Result<usize, Error> {
        self.slots
            .iter()
            .position(|s| s.slot_id == slot_id)
            .ok_or(Error::NoDevice)
    }

    /// Resets the root port when it needs it, and enumerates the device on it.
    pub(super) fn enumerate(&mut self, root_port: RootPort) -> Result<UsbDevice, Error> {
        let port = root_port.port;
        let mut status = self.portsc(port);
        if !status.enabled() {
            // USB2 ports need a reset to be enabled. USB3 ports enable themselves when the
            // link trains; one that did not gets a Warm Port Reset.
            status = self.reset_port(port, root_port.major >= 3)?;
            if !status.enabled() {
                return Err(Error::PortNotEnabled);
            }
        }
        let speed = status.speed().ok_or(Error::UnknownSpeed)?;
        self.enumerate_at(Attachment {
            root_port,
            hub_ports: Vec::new(),
            speed,
            tt: None,
        })
    }

    /// Enables a slot for the device `at`, addresses it and reads its descriptors.
    pub(super) fn enumerate_at(&mut self, at: Attachment) -> Result<UsbDevice, Error> {
        let enable = *command::EnableSlot::new().set_slot_type(at.root_port.slot_type);
        let slot_id = self.command(enable.into_raw())?.slot_id();
        // DCBAA entry 0 is the scratchpad array: a slot ID outside 1..=MaxSlots from a
        // confused controller must not be written there or past the array.
        if slot_id == 0 || slot_id > self.caps.max_slots {
            return Err(Error::SlotId(slot_id));
        }
        let busid = hub::busid(&at.root_port, &at.hub_ports);
        self.deadline = Some(self.hal.now_micros() + ENUMERATION_BUDGET_US);
        let mut described = self.describe(slot_id, at);
        // Out of time: not offered, whatever it managed to say.
        if self.deadline.is_some_and(|d| self.hal.now_micros() >= d) {
            warn!(
                "event=usb_enumeration_too_slow busid={busid} slot={slot_id} budget_ms={}",
                ENUMERATION_BUDGET_US / 1000
            );
            described = Err(Error::Timeout("enumeration"));
        }
        self.deadline = None;
        if described.is_err() {
            // Give the slot back: nothing queued for a silent device stays live, and the
            // slot is free for a later attempt. Its memory is kept if the controller may
            // still use it.
            match self.disable_slot(slot_id) {
                Ok(()) => self.slots.retain(|s| s.slot_id != slot_id),
                Err(e) => warn!("event=xhci_disable_slot_failed slot={slot_id} error={e}"),
            }
        }
        described
    }

    /// Addresses the device in `slot_id` and reads its descriptors.
    fn describe(&mut self, slot_id: u8, at: Attachment) -> Result<UsbDevice, Error> {
        let speed = at.speed;
        let root_port = at.root_port;
        let busid = hub::busid(&root_port, &at.hub_ports);
        let hub_ports = at.hub_ports.clone();
        let index = self.address_device(slot_id, at)?;

        let mut max_packet_size0 = speed.initial_ep0_max_packet_size();
        let head = self.get_descriptor(slot_id, u16::from(DEVICE) << 8, 0, 8)?;
        if head.len() < 8 || head[1] != DEVICE {
            return Err(Error::BadDescriptor);
        }
        let announced = match speed {
            // SuperSpeed devices give an exponent (USB 3.2 9.6.1).
            Speed::Super | Speed::SuperPlus => 1u16 << head[7].min(15),
            _ => u16::from(head[7]),
        };
        if announced != max_packet_size0 && announced >= 8 {
            self.evaluate_ep0_max_packet_size(index, announced)?;
            self.slots[index].endpoints[0].endpoint.max_packet_size = announced;
            max_packet_size0 = announced;
        }
        let d = self.get_descriptor(slot_id, u16::from(DEVICE) << 8, 0, DEVICE_DESCRIPTOR_SIZE)?;
        if d.len() < usize::from(DEVICE_DESCRIPTOR_SIZE) || d[1] != DEVICE {
            return Err(Error::BadDescriptor);
        }
        let word = |at: usize| u16::from_le_bytes([d[at], d[at + 1]]);
        let index = self.slot_index(slot_id)?;
        self.slots[index].num_configurations = d[17];
        if d[17] > MAX_CONFIGURATIONS {
            warn!(
                "event=usb_configurations_capped busid={busid} reported={} offered={MAX_CONFIGURATIONS}",
                d[17]
            );
        }
        let mut string = |index: u8| {
            if index == 0 {
                return None;
            }
            match self.string(slot_id, index) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!("event=usb_string_error busid={busid} index={index} error={e}");
                    None
                }
            }
        };
        // iProduct, iSerialNumber.
        let (product, serial) = (string(d[15]), string(d[16]));
        let configurations = self.read_configurations(slot_id);
        let index = self.slot_index(slot_id)?;
        self.slots[index].configurations = configurations;
        Ok(UsbDevice {
            root_port,
            hub_ports,
            slot_id,
            speed,
            usb_version: word(2),
            vendor_id: word(8),
            product_id: word(10),
            class: d[4],
            max_packet_size0,
            product,
            serial,
        })
    }

    /// Address Device (4.3.3) with an Input Context holding the Slot Context and the Default
    /// Control Endpoint's context. Returns the slot's index in `self.slots`.
    fn address_device(&mut self, slot_id: u8, at: Attachment) -> Result<usize, Error> {
        let ctx = self.caps.context_size;
        let speed = at.speed;
        // Input Context: Input Control Context, then Slot and 31 Endpoint Contexts.
        let mut input = alloc(&mut self.hal, 33 * ctx, 64)?;
        let output = alloc(&mut self.hal, 32 * ctx, 64)?;
        let ep0 = ProducerRing::new(alloc(&mut self.hal, RING_BYTES, 64)?);
        // Room for the longest configuration descriptor set read.
        let data = alloc(&mut self.hal, descriptor::MAX_TOTAL_LENGTH, 64)?;

        // Add Context flags A0 (Slot) and A1 (EP0).
        input.write32(4, 0b11);
        let ep = 2 * ctx;
        input.write32(ep + 4, ep0_dword1(speed.initial_ep0_max_packet_size()));
        input.write64(ep + 8, ep0.phys() | u64::from(ep0.cycle_state()));
        // Average TRB Length: 8 for control endpoints (4.14.1.1).
        input.write32(ep + 16, 8);
        self.dcbaa.write64(usize::from(slot_id) * 8, output.phys());

        let input_phys = input.phys();
        let slot = Slot {
            slot_id,
            port: at.root_port.port,
            hub_ports: at.hub_ports,
            tt: at.tt,
            hub: None,
            // Only EP0.
            context_entries: 1,
            input_context: input,
            output_context: output,
            speed,
            endpoints: alloc::vec![EndpointRing {
                dci: 1,
                endpoint: Endpoint {
                    address: 0,
                    transfer_type: TransferType::Control,
                    max_packet_size: speed.initial_ep0_max_packet_size(),
                    additional_transactions: 0,
                    interval: 0,
                    max_burst: 0,
                    companion_attributes: 0,
                    bytes_per_interval: 0,
                },
                ring: ep0,
                pending: Vec::new(),
                halted: false,
                stopped_at: None,
                isoch_next: 0,
            }],
            config: None,
            alternates: Vec::new(),
            num_configurations: 0,
            configurations: Ok(Vec::new()),
            data,
        };
        let words = slot_context(&slot, 1);
        self.slots.push(slot);
        let slot = self.slots.last_mut().ok_or(Error::NoDevice)?;
        for (i, w) in words.iter().enumerate() {
            slot.input_context.write32(ctx + 4 * i, *w);
        }
        let address = *command::AddressDevice::new()
            .set_input_context_pointer(input_phys)
            .set_slot_id(slot_id);
        self.command(address.into_raw())?;
        Ok(self.slots.len() - 1)
    }

    /// Evaluate Context (4.6.7) with the Default Control Endpoint's new max packet size.
    fn evaluate_ep0_max_packet_size(&mut self, index: usize, mps: u16) -> Result<(), Error> {
        let ctx = self.caps.context_size;
        let slot = &mut self.slots[index];
        slot.input_context.write32(0, 0);
        slot.input_context.write32(4, 1 << 1);
        slot.input_context.write32(2 * ctx + 4, ep0_dword1(mps));
        let evaluate = *command::EvaluateContext::new()
            .set_input_context_pointer(slot.input_context.phys())
            .set_slot_id(slot.slot_id);
        self.command(evaluate.into_raw()).map(|_| ())
    }

    /// GET_DESCRIPTOR on the Default Control Endpoint.
    pub(super) fn get_descriptor(
        &mut self,
        slot_id: u8,
        value: u16,
        language: u16,
        length: u16,
    ) -> Result<Vec<u8>, Error> {
        self.control_in(
            slot_id,
            request_type::DEVICE_TO_HOST,
            request::GET_DESCRIPTOR,
            value,
            language,
            length,
        )
    }

    /// The string descriptor `i` in the device's first language, as text.
    fn string(&mut self, slot_id: u8, i: u8) -> Result<String, Error> {
        let languages = self.get_descriptor(slot_id, u16::from(STRING) << 8, 0, 255)?;
        let language = if languages.len() >= 4 {
            u16::from_le_bytes([languages[2], languages[3]])
        } else {
            usb::LANGID_EN_US
        };
        let s = self.get_descriptor(
            slot_id,
            u16::from(STRING) << 8 | u16::from(i),
            language,
            255,
        )?;
        if s.len() < 2 || s[1] != STRING {
            return Err(Error::BadDescriptor);
        }
        let end = usize::from(s[0]).min(s.len());
        let units = s[2..end]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        Ok(char::decode_utf16(units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect())
    }

    /// Resets the device in `slot_id` as a host does before handing it to a new driver: a
    /// reset of its port (root port, or its hub's port), Reset Device (4.6.11: the slot is
    /// back in the Default state with EP0 only) and Address Device again (4.3.4). It is then
    /// unconfigured at the same slot; its transfers complete with [`Error::NoDevice`].
    pub fn reset_device(&mut self, slot_id: u8) -> Result<(), Error> {
        let index = self.slot_index(slot_id)?;
        let queued: Vec<PendingTd> = self.slots[index]
            .endpoints
            .iter_mut()
            .flat_map(|e| core::mem::take(&mut e.pending))
            .collect();
        let transfers = queued.len();
        for td in queued {
            self.finish(td, Err(Error::NoDevice));
        }
        let (port, hub_ports) = (self.slots[index].port, self.slots[index].hub_ports.clone());
        match hub_ports.split_last() {
            None => {
                self.reset_port(port, false)?;
            }
            Some((&last, parent)) => {
                let hub = self
                    .slots
                    .iter()
                    .find(|s| s.port == port && s.hub_ports == parent)
                    .map(|s| s.slot_id)
                    .ok_or(Error::NoDevice)?;
                self.hub_port_request(hub, request::SET_FEATURE, usb::hub::PORT_RESET, last)?;
                self.wait_hub_port_reset(hub, last)?;
                self.delay(RESET_RECOVERY_US);
            }
        }
        let reset = *command::ResetDevice::new().set_slot_id(slot_id);
        self.command(reset.into_raw())?;
        let ctx = self.caps.context_size;
        let index = self.slot_index(slot_id)?;
        let slot = &mut self.slots[index];
        slot.endpoints.truncate(1);
        slot.config = None;
        slot.alternates.clear();
        slot.context_entries = 1;
        let words = slot_context(slot, 1);
        let ep0 = &mut slot.endpoints[0];
        ep0.ring.skip_to_enqueue();
        ep0.halted = false;
        let dequeue = ep0.ring.enqueue_pointer() | u64::from(ep0.ring.cycle_state());
        let mps = ep0.endpoint.max_packet_size;
        let input = &mut slot.input_context;
        input.write32(0, 0);
        input.write32(4, 0b11);
        for (i, w) in words.iter().enumerate() {
            input.write32(ctx + 4 * i, *w);
        }
        let ep = 2 * ctx;
        input.write32(ep, 0);
        input.write32(ep + 4, ep0_dword1(mps));
        input.write64(ep + 8, dequeue);
        input.write32(ep + 16, 8);
        let address = *command::AddressDevice::new()
            .set_input_context_pointer(input.phys())
            .set_slot_id(slot_id);
        self.command(address.into_raw())?;
        let busid = hub::busid(&self.root_port(port), &hub_ports);
        info!("event=usb_device_reset busid={busid} slot={slot_id} transfers_failed={transfers}");
        Ok(())
    }

    /// Disable Slot (4.6.4): the controller stops the slot's endpoints and forgets its
    /// contexts, so their memory may be reused.
    pub(super) fn disable_slot(&mut self, slot_id: u8) -> Result<(), Error> {
        let disable = *command::DisableSlot::new().set_slot_id(slot_id);
        self.command(disable.into_raw())?;
        self.dcbaa.write64(usize::from(slot_id) * 8, 0);
        Ok(())
    }
}

/// Dwords 0 to 2 of a slot's Slot Context (6.2.2) with `entries` Context Entries: Route
/// String, Speed, Root Hub Port Number; for a hub the Hub flag, Number of Ports and (high
/// speed) TT Think Time; for a low- or full-speed device behind a high-speed hub its TT Hub
/// Slot ID and TT Port Number. MTT stays 0: hubs run in their default single-TT setting
/// (alternate setting 0 of their interface).
pub(super) fn slot_context<D>(slot: &Slot<D>, entries: u32) -> [u32; 3] {
    slot_context_of(
        slot.speed,
        slot.port,
        &slot.hub_ports,
        slot.hub.as_ref(),
        slot.tt,
        entries,
    )
}

pub(super) fn slot_context_of(
    speed: Speed,
    root_port: u8,
    hub_ports: &[u8],
    hub: Option<&HubDescriptor>,
    tt: Option<Tt>,
    entries: u32,
) -> [u32; 3] {
    // Checked when the device was found behind its hub.
    let route = hub::route_string(hub_ports).unwrap_or(0);
    let mut dword0 = (entries << 27) | (u32::from(psiv(speed)) << 20) | route;
    let mut dword1 = u32::from(root_port) << 16;
    let mut dword2 = 0;
    if let Some(h) = hub {
        dword0 |= 1 << 26;
        dword1 |= u32::from(h.ports) << 24;
        if speed == Speed::High {
            dword2 |= u32::from(h.tt_think_time()) << 16;
        }
    }
    if let Some(tt) = tt {
        dword2 |= u32::from(tt.hub_slot_id) | u32::from(tt.port) << 8;
    }
    [dword0, dword1, dword2]
}

/// Endpoint Context dword 1 of a Default Control Endpoint: CErr 3, EP Type Control (4),
/// Max Packet Size.
pub(super) fn ep0_dword1(max_packet_size: u16) -> u32 {
    (3 << 1) | (4 << 3) | (u32::from(max_packet_size) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_context_has_the_route_hub_fields_and_tt() {
        // A full-speed mouse on port 3 of a high-speed hub on port 2 of a hub on root
        // port 7: route 0x32, and the TT of the high-speed hub (slot 4).
        let tt = Some(Tt {
            hub_slot_id: 4,
            port: 3,
        });
        assert_eq!(
            slot_context_of(Speed::Full, 7, &[2, 3], None, tt, 1),
            [(1 << 27) | (1 << 20) | 0x32, 7 << 16, 4 | (3 << 8)]
        );
        // That high-speed hub: Hub, Number of Ports 4, TT Think Time 2 (24 FS bit times).
        let hub = HubDescriptor {
            ports: 4,
            characteristics: 2 << 5,
            power_on_to_power_good_ms: 100,
        };
        assert_eq!(
            slot_context_of(Speed::High, 7, &[2], Some(&hub), None, 3),
            [
                (3 << 27) | (1 << 26) | (3 << 20) | 0x2,
                (4 << 24) | (7 << 16),
                2 << 16
            ]
        );
        // A full-speed hub has no TT: TT Think Time stays 0.
        assert_eq!(
            slot_context_of(Speed::Full, 7, &[], Some(&hub), None, 3)[2],
            0
        );
    }

    #[test]
    fn ep0_context_dword1_encodes_cerr_type_and_max_packet_size() {
        assert_eq!(ep0_dword1(64), (64 << 16) | (4 << 3) | (3 << 1));
    }
}
