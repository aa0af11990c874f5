//! External hubs (USB 2.0 11.12, 11.24): a hub configured and made known to the controller
//! as one (xHCI 4.6.6, 6.2.2), its ports powered, reset and looked at, the devices behind
//! it enumerated with their Route String and Transaction Translator, and its status change
//! endpoint (USB 2.0 11.12.4) watched for later changes.

use alloc::vec::Vec;

use log::{info, warn};
use usb::{request, Direction, Speed, TransferType};
use xhci::ring::trb::command;

use super::enumeration::{slot_context, Attachment};
use super::ports::{PORT_RESET_TIMEOUT_US, RESET_RECOVERY_US};
use super::{Controller, Error, TransferId, UsbDevice};
use crate::descriptor::Endpoint;
use crate::hal::{DmaBuffer, Hal};
use crate::hub::{self, HubDescriptor, PortStatus};
use crate::transfer::DmaSegment;

/// Between two GET_STATUS of a hub port being reset.
const HUB_PORT_POLL_US: u64 = 1_000;

/// Why a hub port's device was not enumerated: the hub failed (its other ports are not
/// looked at), or the device did.
enum HubPortError {
    Hub(Error),
    Device(Error),
}

/// A hub's status change endpoint (USB 2.0 11.12.4) with one transfer always queued: bit n
/// of what it returns names port n with a change (bit 0 the hub itself).
pub(super) struct HubWatch<D> {
    pub(super) hub: UsbDevice,
    ports: u8,
    endpoint: u8,
    len: usize,
    buf: D,
    pub(super) queued: TransferId,
}

impl<H: Hal> Controller<H> {
    /// The hub ports named by the status change transfers that completed: each is looked
    /// at as a root port is, and the next transfer queued.
    pub(super) fn handle_hub_changes(&mut self) -> Vec<UsbDevice> {
        let mut attached = Vec::new();
        let queued: Vec<(u8, TransferId)> = self
            .hubs
            .iter()
            .map(|w| (w.hub.slot_id, w.queued))
            .collect();
        for (slot_id, id) in queued {
            let Some(result) = self.take_completion(id) else {
                continue;
            };
            // An earlier hub's change may have removed this one.
            let Some(w) = self.hubs.iter().position(|w| w.hub.slot_id == slot_id) else {
                continue;
            };
            let n = match result {
                Ok(n) => n.min(self.hubs[w].len),
                Err(e) => {
                    // The TD is done: the buffer may go. A halted endpoint reports no more.
                    warn!(
                        "event=usb_hub_error busid={} slot={slot_id} step=status_change error={e}",
                        self.hubs[w].hub.busid()
                    );
                    self.hubs.remove(w);
                    continue;
                }
            };
            let mut bitmap = alloc::vec![0u8; n];
            self.hubs[w].buf.read_bytes(0, &mut bitmap);
            let hub = self.hubs[w].hub.clone();
            let ports = self.hubs[w].ports;
            for port in (1..=ports).filter(|&p| {
                bitmap
                    .get(usize::from(p / 8))
                    .is_some_and(|b| b & (1 << (p % 8)) != 0)
            }) {
                self.hub_port_changed(&hub, port, &mut attached);
            }
            if let Some(w) = self.hubs.iter().position(|w| w.hub.slot_id == slot_id) {
                if let Err(e) = self.queue_hub_watch(w) {
                    warn!(
                        "event=usb_hub_error busid={} slot={slot_id} step=status_change error={e}",
                        hub.busid()
                    );
                    self.hubs.remove(w);
                }
            }
        }
        attached
    }

    /// Port `port` of `hub` changed: a device that arrived is enumerated, one that left is
    /// released with everything behind it, the change bits are cleared.
    fn hub_port_changed(&mut self, hub: &UsbDevice, port: u8, attached: &mut Vec<UsbDevice>) {
        let mut hub_ports = hub.hub_ports.clone();
        hub_ports.push(port);
        let busid = hub::busid(&hub.root_port, &hub_ports);
        let status = match self.hub_port_status(hub.slot_id, port) {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "event=usb_hub_error busid={} slot={} step=port_status port={port} error={e}",
                    hub.busid(),
                    hub.slot_id
                );
                return;
            }
        };
        info!(
            "event=usb_port_change busid={busid} hub_slot={} port={port} connected={} enabled={} wportstatus={:#06x} wportchange={:#06x}",
            hub.slot_id,
            status.connected(),
            status.enabled(),
            status.status,
            status.change
        );
        let occupied = self
            .slots
            .iter()
            .any(|s| s.port == hub.root_port.port && s.hub_ports == hub_ports);
        // As on root ports: a connection without C_PORT_CONNECTION on a port without a
        // slot is a device that failed enumeration, not retried until plugged again.
        let new_connection = status.connection_changed();
        if occupied && (!status.connected() || new_connection) {
            self.detach(hub.root_port, &hub_ports);
        }
        if status.connected() && new_connection {
            match self.hub_port_device(hub, port) {
                Ok(Some(d)) => self.found(d, attached),
                Ok(None) => {}
                Err(HubPortError::Device(e)) => warn!(
                    "event=usb_device_error busid={busid} hub_slot={} port={port} error={e}",
                    hub.slot_id
                ),
                Err(HubPortError::Hub(e)) => warn!(
                    "event=usb_hub_error busid={} slot={} step=port port={port} error={e}",
                    hub.busid(),
                    hub.slot_id
                ),
            }
        } else if let Err(e) = self.clear_hub_port_changes(hub.slot_id, port, status) {
            warn!(
                "event=usb_hub_error busid={} slot={} step=clear_changes port={port} error={e}",
                hub.busid(),
                hub.slot_id
            );
        }
    }

    /// Queues the next status change transfer of `self.hubs[w]`.
    fn queue_hub_watch(&mut self, w: usize) -> Result<(), Error> {
        let watch = &self.hubs[w];
        let segment = [DmaSegment {
            phys: watch.buf.phys(),
            len: watch.len,
        }];
        let (slot_id, endpoint) = (watch.hub.slot_id, watch.endpoint);
        let id = self.queue_transfer(slot_id, endpoint, Direction::In, &segment)?;
        self.hubs[w].queued = id;
        Ok(())
    }

    /// Configures a hub, powers its ports, enumerates the device on each connected one
    /// (USB 2.0 11.12, 11.24), and queues a transfer on its status change endpoint so later
    /// changes are seen. Every failure is logged and skips what it concerns only.
    pub(super) fn enumerate_hub(&mut self, hub: &UsbDevice, found: &mut Vec<UsbDevice>) {
        let busid = hub.busid();
        let slot_id = hub.slot_id;
        if matches!(hub.speed, Speed::Super | Speed::SuperPlus) {
            // Its USB 2.0 half, on the companion USB2 root port, serves slower devices.
            info!("event=usb_hub_skipped busid={busid} slot={slot_id} reason=superspeed_hub");
            return;
        }
        if hub.hub_ports.len() >= hub::MAX_TIERS {
            warn!("event=usb_hub_skipped busid={busid} slot={slot_id} reason=too_many_tiers");
            return;
        }
        let (descriptor, status_change) = match self.configure_hub(slot_id) {
            Ok(d) => d,
            Err(e) => {
                warn!("event=usb_hub_error busid={busid} slot={slot_id} step=configure error={e}");
                return;
            }
        };
        info!(
            "event=usb_hub busid={busid} slot={slot_id} ports={} tt_think_time={} power_on_to_power_good_ms={}",
            descriptor.ports,
            descriptor.tt_think_time(),
            descriptor.power_on_to_power_good_ms
        );
        // A Route String names hub ports 1..=15 only.
        let ports = descriptor.ports.min(hub::MAX_ROUTABLE_PORT);
        if ports < descriptor.ports {
            warn!(
                "event=usb_hub_ports_unused busid={busid} slot={slot_id} ports={} used={ports}",
                descriptor.ports
            );
        }
        for port in 1..=ports {
            let power =
                self.hub_port_request(slot_id, request::SET_FEATURE, usb::hub::PORT_POWER, port);
            if let Err(e) = power {
                warn!("event=usb_hub_error busid={busid} slot={slot_id} step=port_power port={port} error={e}");
                return;
            }
        }
        self.delay(u64::from(descriptor.power_on_to_power_good_ms) * 1000);
        for port in 1..=ports {
            match self.hub_port_device(hub, port) {
                Ok(Some(d)) => self.found(d, found),
                Ok(None) => {}
                Err(HubPortError::Device(e)) => warn!(
                    "event=usb_device_error busid={busid}.{port} hub_slot={slot_id} port={port} error={e}"
                ),
                Err(HubPortError::Hub(e)) => {
                    warn!("event=usb_hub_error busid={busid} slot={slot_id} step=port port={port} error={e}");
                    return;
                }
            }
        }
        let Some(endpoint) = status_change else {
            warn!("event=usb_hub_error busid={busid} slot={slot_id} step=watch error=no_status_change_endpoint");
            return;
        };
        // The bitmap has a bit per port and one for the hub: one packet holds it.
        let len = usize::from(endpoint.max_packet_size).clamp(1, 64);
        let watched = self.dma_alloc(4096, 64).and_then(|buf| {
            let segment = [DmaSegment {
                phys: buf.phys(),
                len,
            }];
            let queued =
                self.queue_transfer(slot_id, endpoint.number(), Direction::In, &segment)?;
            Ok(HubWatch {
                hub: hub.clone(),
                ports,
                endpoint: endpoint.number(),
                len,
                buf,
                queued,
            })
        });
        match watched {
            Ok(w) => self.hubs.push(w),
            // Nothing was queued into the buffer: it may go.
            Err(e) => {
                warn!("event=usb_hub_error busid={busid} slot={slot_id} step=watch error={e}")
            }
        }
    }

    /// Configures the hub in `slot_id`, reads its hub descriptor and tells the controller it
    /// is a hub: Configure Endpoint with the Slot Context alone, its Hub flag, Number of
    /// Ports and TT Think Time set (xHCI 4.6.6, 6.2.2), as these fields are only evaluated
    /// by Configure Endpoint.
    fn configure_hub(&mut self, slot_id: u8) -> Result<(HubDescriptor, Option<Endpoint>), Error> {
        // Its first configuration, as read when it was enumerated.
        let config = self
            .configurations(slot_id)?
            .into_iter()
            .next()
            .ok_or(Error::BadDescriptor)?;
        self.configure(slot_id, &config)?;
        let status_change = config
            .interfaces
            .iter()
            .filter(|i| i.alternate_setting == 0)
            .flat_map(|i| &i.endpoints)
            .find(|e| e.transfer_type == TransferType::Interrupt && e.is_in())
            .copied();
        let bytes = self.control_in(
            slot_id,
            usb::hub::REQUEST_TYPE_CLASS_DEVICE_IN,
            request::GET_DESCRIPTOR,
            u16::from(usb::hub::DESCRIPTOR_TYPE) << 8,
            0,
            hub::HUB_DESCRIPTOR_MAX,
        )?;
        let descriptor = hub::parse_hub_descriptor(&bytes).map_err(|_| Error::BadDescriptor)?;
        let ctx = self.caps.context_size;
        let index = self.slot_index(slot_id)?;
        let slot = &mut self.slots[index];
        slot.hub = Some(descriptor);
        let words = slot_context(slot, slot.context_entries);
        let input = &mut slot.input_context;
        input.write32(0, 0);
        // Add Context flag A0 only: the endpoints stay as they are.
        input.write32(4, 1);
        for (i, w) in words.iter().enumerate() {
            input.write32(ctx + 4 * i, *w);
        }
        let configure = *command::ConfigureEndpoint::new()
            .set_input_context_pointer(input.phys())
            .set_slot_id(slot_id);
        self.command(configure.into_raw())?;
        Ok((descriptor, status_change))
    }

    /// A hub port request without data: SET_FEATURE or CLEAR_FEATURE of `feature`.
    pub(super) fn hub_port_request(
        &mut self,
        slot_id: u8,
        request: u8,
        feature: u16,
        port: u8,
    ) -> Result<(), Error> {
        self.control_no_data(
            slot_id,
            usb::hub::REQUEST_TYPE_CLASS_OTHER_OUT,
            request,
            feature,
            u16::from(port),
        )
    }

    /// GET_STATUS of a hub port.
    fn hub_port_status(&mut self, slot_id: u8, port: u8) -> Result<PortStatus, Error> {
        let bytes = self.control_in(
            slot_id,
            usb::hub::REQUEST_TYPE_CLASS_OTHER_IN,
            request::GET_STATUS,
            0,
            u16::from(port),
            4,
        )?;
        PortStatus::parse(&bytes).ok_or(Error::BadDescriptor)
    }

    /// Clears the change bits `status` shows.
    fn clear_hub_port_changes(
        &mut self,
        slot_id: u8,
        port: u8,
        status: PortStatus,
    ) -> Result<(), Error> {
        for feature in status.change_features() {
            self.hub_port_request(slot_id, request::CLEAR_FEATURE, feature, port)?;
        }
        Ok(())
    }

    /// Looks at port `port` of `hub`: when a device is connected, resets the port (USB 2.0
    /// 11.24.2.7.1.5: PORT_RESET, then C_PORT_RESET), and enumerates the device at the speed
    /// the port reports, with its Route String and Transaction Translator.
    fn hub_port_device(
        &mut self,
        hub: &UsbDevice,
        port: u8,
    ) -> Result<Option<UsbDevice>, HubPortError> {
        use HubPortError::{Device, Hub};
        let slot_id = hub.slot_id;
        let status = self.hub_port_status(slot_id, port).map_err(Hub)?;
        self.clear_hub_port_changes(slot_id, port, status)
            .map_err(Hub)?;
        if !status.connected() {
            return Ok(None);
        }
        let mut hub_ports = hub.hub_ports.clone();
        hub_ports.push(port);
        if hub::route_string(&hub_ports).is_none() {
            return Err(Device(Error::Unroutable));
        }
        self.hub_port_request(slot_id, request::SET_FEATURE, usb::hub::PORT_RESET, port)
            .map_err(Hub)?;
        // A hub that never ends a reset is not asked about its other ports.
        let status = self.wait_hub_port_reset(slot_id, port).map_err(Hub)?;
        if !status.enabled() {
            return Err(Device(Error::PortNotEnabled));
        }
        self.delay(RESET_RECOVERY_US);
        let speed = status.speed();
        let index = self.slot_index(slot_id).map_err(Hub)?;
        let tt = hub::transaction_translator(speed, hub.speed, slot_id, self.slots[index].tt, port);
        self.enumerate_at(Attachment {
            root_port: hub.root_port,
            hub_ports,
            speed,
            tt,
        })
        .map(Some)
        .map_err(Device)
    }

    /// Waits for a hub port's reset to end (C_PORT_RESET) and clears its change bits.
    pub(super) fn wait_hub_port_reset(
        &mut self,
        hub_slot: u8,
        port: u8,
    ) -> Result<PortStatus, Error> {
        let until = self.hal.now_micros() + PORT_RESET_TIMEOUT_US;
        let status = loop {
            let status = self.hub_port_status(hub_slot, port)?;
            if status.reset_done() {
                break status;
            }
            if self.hal.now_micros() > until {
                return Err(Error::Timeout("hub_port_reset"));
            }
            self.delay(HUB_PORT_POLL_US);
        };
        self.clear_hub_port_changes(hub_slot, port, status)?;
        Ok(status)
    }
}
