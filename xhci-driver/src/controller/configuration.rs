//! Configurations (xHCI 4.3.5): the configuration descriptors read, a configuration or an
//! interface's alternate setting (USB 2.0 9.4.10) set up with one Configure Endpoint (4.6.6)
//! and a Transfer Ring per endpoint, and an endpoint's halt cleared on both sides.

use alloc::vec::Vec;

use log::warn;
use usb::request::{CLEAR_FEATURE, SET_CONFIGURATION, SET_INTERFACE};
use usb::{feature, request_type};
use xhci::ring::trb::command;

use super::enumeration::slot_context;
use super::transfers::EndpointRing;
use super::{alloc, Controller, Error, TransferId};
use crate::descriptor::{self, Configuration, Endpoint};
use crate::hal::{DmaBuffer, Hal};
use crate::ring::ProducerRing;
use crate::transfer::endpoint_context;

/// Configurations of a device the driver offers: the first this many (USB allows 255;
/// devices have one or two). Every one offered is read when the device is attached, so that
/// a policy sees them all before a guest may choose among them; of a device claiming more,
/// only these can be set (logged as `event=usb_configurations_capped`).
pub const MAX_CONFIGURATIONS: u8 = 8;
/// A configured endpoint's Transfer Ring: 1023 TRBs, room for 16 transfers of 64 KiB in
/// 4 KiB pages (17 TRBs each, a guest's URBs) with plenty to spare. Aligned to its size so
/// it cannot cross a 64 KiB boundary (6.5).
const TRANSFER_RING_BYTES: usize = 16 * 1024;

impl<H: Hal> Controller<H> {
    /// Configuration descriptor `n` (GET_DESCRIPTOR(CONFIGURATION) of its header, then of
    /// wTotalLength bytes), parsed.
    fn configuration_at(&mut self, slot_id: u8, n: u8) -> Result<Configuration, Error> {
        let value = u16::from(usb::descriptor::CONFIGURATION) << 8 | u16::from(n);
        let head = self.get_descriptor(slot_id, value, 0, descriptor::CONFIGURATION_SIZE as u16)?;
        let total = descriptor::total_length(&head).map_err(|_| Error::BadDescriptor)?;
        if usize::from(total) > descriptor::MAX_TOTAL_LENGTH {
            warn!(
                "event=usb_descriptor_too_long slot={slot_id} index={n} total={total} limit={}",
                descriptor::MAX_TOTAL_LENGTH
            );
            return Err(Error::BadDescriptor);
        }
        let all = self.get_descriptor(slot_id, value, 0, total)?;
        descriptor::parse_configuration(&all).map_err(|_| Error::BadDescriptor)
    }

    /// The device's first configuration, parsed.
    pub fn configuration(&mut self, slot_id: u8) -> Result<Configuration, Error> {
        self.configuration_at(slot_id, 0)
    }

    /// Indexes of the configurations offered of the device in `slot_id`: its
    /// bNumConfigurations, at least the first (a device saying 0 is still asked for it), at
    /// most [`MAX_CONFIGURATIONS`].
    fn offered_configurations(&self, slot_id: u8) -> Result<core::ops::Range<u8>, Error> {
        let index = self.slot_index(slot_id)?;
        let count = self.slots[index].num_configurations;
        Ok(0..count.clamp(1, MAX_CONFIGURATIONS))
    }

    /// Every configuration offered of the device in `slot_id`, parsed, alternate settings
    /// included, as it described them when it was enumerated: what a policy must see
    /// before a guest may choose among them, and what [`Controller::set_configuration`]
    /// sets up. One that could not be read fails the lot.
    pub fn configurations(&self, slot_id: u8) -> Result<Vec<Configuration>, Error> {
        let index = self.slot_index(slot_id)?;
        self.slots[index].configurations.clone()
    }

    /// Reads every configuration offered from the device.
    pub(super) fn read_configurations(&mut self, slot_id: u8) -> Result<Vec<Configuration>, Error> {
        self.offered_configurations(slot_id)?
            .map(|n| self.configuration_at(slot_id, n))
            .collect()
    }

    /// The offered configuration whose bConfigurationValue is `value`
    /// ([`Error::BadTransfer`] when there is none): what [`Controller::configure`] with it
    /// would set up.
    pub fn find_configuration(&self, slot_id: u8, value: u8) -> Result<Configuration, Error> {
        self.configurations(slot_id)?
            .into_iter()
            .find(|c| c.value == value)
            .ok_or(Error::BadTransfer)
    }

    /// The configuration the device in `slot_id` is in, if it is configured: what
    /// [`Controller::set_interface`] chooses alternate settings from.
    pub fn active_configuration(&self, slot_id: u8) -> Option<&Configuration> {
        let index = self.slot_index(slot_id).ok()?;
        self.slots[index].config.as_ref()
    }

    /// Configures the device (4.3.5) for `config`: the endpoints of a configuration in use
    /// are dropped (their transfers complete as cancelled), a Transfer Ring is made for
    /// every endpoint of each interface's alternate setting 0, one Configure Endpoint says
    /// both, then SET_CONFIGURATION, waited for.
    pub fn configure(&mut self, slot_id: u8, config: &Configuration) -> Result<(), Error> {
        let id = self.queue_set_configuration(slot_id, Some(config))?;
        self.wait_request(id)
    }

    /// SET_CONFIGURATION `value` as a guest asks it, waited for: 0 deconfigures, any other
    /// value is looked up among the configurations offered
    /// ([`Controller::find_configuration`]) and set up as [`Controller::configure`] does. A
    /// value the device does not have is refused without asking it.
    pub fn set_configuration(&mut self, slot_id: u8, value: u8) -> Result<(), Error> {
        let config = match value {
            0 => None,
            _ => Some(self.find_configuration(slot_id, value)?),
        };
        let id = self.queue_set_configuration(slot_id, config.as_ref())?;
        self.wait_request(id)
    }

    /// The controller's side of SET_CONFIGURATION, done now, and the request queued to the
    /// device: one Configure Endpoint that drops the endpoints of a configuration in use
    /// (their transfers complete as cancelled) and adds those of each interface's
    /// alternate setting 0 of `config`, or deconfigures (`None`). The request completes as
    /// [`Controller::queue_control`]'s transfers do, so no one waits for the device here.
    pub fn queue_set_configuration(
        &mut self,
        slot_id: u8,
        config: Option<&Configuration>,
    ) -> Result<TransferId, Error> {
        let drop = self.configured_dcis(slot_id)?;
        let add: Vec<Endpoint> = config
            .iter()
            .flat_map(|c| &c.interfaces)
            .filter(|i| i.alternate_setting == 0)
            .flat_map(|i| i.endpoints.iter().copied())
            .collect();
        self.reconfigure(slot_id, &drop, &add, config.is_none())?;
        let index = self.slot_index(slot_id)?;
        self.slots[index].config = config.cloned();
        self.slots[index].alternates.clear();
        let value = config.map_or(0, |c| c.value);
        self.queue_no_data(slot_id, 0, SET_CONFIGURATION, u16::from(value), 0)
    }

    /// SET_INTERFACE (USB 2.0 9.4.10), waited for: see
    /// [`Controller::queue_set_interface`].
    pub fn set_interface(
        &mut self,
        slot_id: u8,
        interface: u8,
        alternate: u8,
    ) -> Result<(), Error> {
        let id = self.queue_set_interface(slot_id, interface, alternate)?;
        self.wait_request(id)
    }

    /// The controller's side of SET_INTERFACE (USB 2.0 9.4.10), done now, and the request
    /// queued to the device: the endpoints of the interface's alternate setting in use are
    /// dropped and those of `alternate` added in one Configure Endpoint. The request
    /// completes as [`Controller::queue_control`]'s transfers do.
    pub fn queue_set_interface(
        &mut self,
        slot_id: u8,
        interface: u8,
        alternate: u8,
    ) -> Result<TransferId, Error> {
        let index = self.slot_index(slot_id)?;
        let slot = &self.slots[index];
        let config = slot.config.as_ref().ok_or(Error::NoEndpoint)?;
        let current = slot
            .alternates
            .iter()
            .find(|a| a.0 == interface)
            .map_or(0, |a| a.1);
        let setting = |alt: u8| {
            config
                .interfaces
                .iter()
                .find(|i| i.number == interface && i.alternate_setting == alt)
        };
        let new = setting(alternate).ok_or(Error::BadTransfer)?;
        let add = new.endpoints.clone();
        let drop: Vec<u8> = setting(current)
            .map(|i| i.endpoints.iter().map(Endpoint::dci).collect())
            .unwrap_or_default();
        let drop: Vec<u8> = drop
            .into_iter()
            .filter(|d| slot.endpoints.iter().any(|e| e.dci == *d))
            .collect();
        self.reconfigure(slot_id, &drop, &add, false)?;
        let index = self.slot_index(slot_id)?;
        let alternates = &mut self.slots[index].alternates;
        alternates.retain(|a| a.0 != interface);
        if alternate != 0 {
            alternates.push((interface, alternate));
        }
        self.queue_no_data(
            slot_id,
            request_type::INTERFACE,
            SET_INTERFACE,
            u16::from(alternate),
            u16::from(interface),
        )
    }

    /// CLEAR_FEATURE(ENDPOINT_HALT) of endpoint `address` (bit 7 IN), waited for, then the
    /// controller's side of it ([`Controller::reset_host_endpoint`]).
    pub fn clear_halt(&mut self, slot_id: u8, address: u8) -> Result<(), Error> {
        let id = self.queue_clear_halt(slot_id, address)?;
        self.wait_request(id)?;
        self.reset_host_endpoint(slot_id, address)
    }

    /// CLEAR_FEATURE(ENDPOINT_HALT) of endpoint `address` queued to the device; once it
    /// succeeded, [`Controller::reset_host_endpoint`] resets the controller's side.
    pub fn queue_clear_halt(&mut self, slot_id: u8, address: u8) -> Result<TransferId, Error> {
        self.queue_no_data(
            slot_id,
            request_type::ENDPOINT,
            CLEAR_FEATURE,
            feature::ENDPOINT_HALT,
            u16::from(address),
        )
    }

    /// The controller's side of endpoint `address` reset to match a device whose halt was
    /// cleared (data toggle or sequence number 0): the endpoint is dropped and added again
    /// (4.6.8 allows Reset Endpoint only on a Halted endpoint), its transfers completing as
    /// cancelled. Endpoint 0 and endpoints not configured need nothing.
    pub fn reset_host_endpoint(&mut self, slot_id: u8, address: u8) -> Result<(), Error> {
        let index = self.slot_index(slot_id)?;
        let dci = 2 * (address & 0xf) + u8::from(address & 0x80 != 0);
        if dci < 2 {
            return Ok(());
        }
        let Some(e) = self.slots[index].endpoints.iter().find(|e| e.dci == dci) else {
            return Ok(());
        };
        let endpoint = e.endpoint;
        self.reconfigure(slot_id, &[dci], &[endpoint], false)
    }

    /// Device Context Indexes of the endpoints a configuration added.
    fn configured_dcis(&self, slot_id: u8) -> Result<Vec<u8>, Error> {
        let index = self.slot_index(slot_id)?;
        Ok(self.slots[index]
            .endpoints
            .iter()
            .map(|e| e.dci)
            .filter(|&d| d >= 2)
            .collect())
    }

    /// One Configure Endpoint (4.6.6) that drops the endpoints `drop` (Device Context
    /// Indexes) and adds `add`, each with a new Transfer Ring, or (`deconfigure`) drops
    /// every endpoint. Transfers on dropped endpoints complete as cancelled. Nothing
    /// changes when the controller refuses.
    fn reconfigure(
        &mut self,
        slot_id: u8,
        drop: &[u8],
        add: &[Endpoint],
        deconfigure: bool,
    ) -> Result<(), Error> {
        let index = self.slot_index(slot_id)?;
        let ctx = self.caps.context_size;
        let speed = self.slots[index].speed;
        let mut add_flags = 1u32;
        let mut drop_flags = 0u32;
        for &d in drop {
            drop_flags |= 1 << d;
        }
        let mut kept: u32 = self.slots[index]
            .endpoints
            .iter()
            .map(|e| 1u32 << e.dci)
            .fold(0, |a, b| a | b)
            & !drop_flags;
        let mut rings = Vec::new();
        for e in add {
            // Endpoint 0 is not configured this way, and two descriptors for one endpoint
            // are a device's mistake.
            let dci = e.dci();
            if e.number() == 0 || e.max_packet_size == 0 || (kept | add_flags) & (1 << dci) != 0 {
                return Err(Error::BadDescriptor);
            }
            add_flags |= 1 << dci;
            let ring = ProducerRing::new(alloc(
                &mut self.hal,
                TRANSFER_RING_BYTES,
                TRANSFER_RING_BYTES,
            )?);
            let mut context = endpoint_context(e, speed);
            let dequeue = ring.phys() | u64::from(ring.cycle_state());
            context[2] = dequeue as u32;
            context[3] = (dequeue >> 32) as u32;
            rings.push((
                context,
                EndpointRing {
                    dci,
                    endpoint: *e,
                    ring,
                    pending: Vec::new(),
                    halted: false,
                    stopped_at: None,
                    isoch_next: 0,
                },
            ));
        }
        kept |= add_flags;
        if deconfigure {
            kept = 1 << 1;
        }
        // Context Entries: the highest Device Context Index in use (EP0's is 1).
        let entries = (31 - kept.leading_zeros()).max(1);
        let words = slot_context(&self.slots[index], entries);
        let input = &mut self.slots[index].input_context;
        input.write32(0, drop_flags);
        input.write32(4, add_flags);
        for (i, w) in words.iter().enumerate() {
            input.write32(ctx + 4 * i, *w);
        }
        for (context, ep) in &rings {
            let base = (usize::from(ep.dci) + 1) * ctx;
            for (i, dword) in context.iter().enumerate() {
                input.write32(base + 4 * i, *dword);
            }
        }
        let mut configure = command::ConfigureEndpoint::new();
        configure
            .set_input_context_pointer(input.phys())
            .set_slot_id(slot_id);
        if deconfigure {
            configure.set_deconfigure();
        }
        self.command(configure.into_raw())?;
        let index = self.slot_index(slot_id)?;
        let slot = &mut self.slots[index];
        slot.context_entries = entries;
        let mut cancelled = Vec::new();
        slot.endpoints.retain_mut(|e| {
            let dropped = e.dci >= 2 && (deconfigure || drop_flags & (1 << e.dci) != 0);
            if dropped {
                cancelled.append(&mut e.pending);
            }
            !dropped
        });
        slot.endpoints.extend(rings.into_iter().map(|(_, e)| e));
        for td in cancelled {
            self.finish(td, Err(Error::Cancelled));
        }
        Ok(())
    }
}
