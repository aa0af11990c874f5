//! usbback's [`UsbHost`] over the xHCI driver: devices get host ids that are never reused,
//! transfers carry usbback's tokens, and the driver's errors become usbback's.
//!
//! Generic over the driver's [`Hal`], so it runs in host tests on the driver's simulated
//! controller as well as in the kernel on the real one.

use alloc::vec::Vec;

use log::{info, warn};
use usb::{Speed, TransferType};
use usbback::host::{
    self, ClassSet, Completion, DeviceInfo, HostEvent, InterfaceClasses, IsoResult, Transfer,
    TransferError, UsbHost, Vet,
};
use xhci_driver::{Configuration, Controller, DmaSegment, Error, Hal, TransferId, UsbDevice};

// usbback tells policy the classes of the configurations the host offers, and trusts that
// no other can be set: the driver must offer no more than usbback's bound.
const _: () = assert!(xhci_driver::controller::MAX_CONFIGURATIONS <= host::MAX_CONFIGURATIONS);

/// A device the host knows: usbback's view and the driver's.
struct HostDevice {
    info: DeviceInfo,
    device: UsbDevice,
}

/// A transfer in flight: which device and token it was submitted for.
struct InFlight {
    id: TransferId,
    device: u32,
    token: u64,
    /// A CLEAR_FEATURE(ENDPOINT_HALT) of this endpoint: once the device took it, the
    /// controller's side of the endpoint is reset to match.
    clears_halt: Option<u8>,
}

/// The xHCI controller as usbback sees it.
pub struct XhciHost<H: Hal> {
    xhci: Controller<H>,
    devices: Vec<HostDevice>,
    next_id: u32,
    in_flight: Vec<InFlight>,
    /// Attach events of devices found before the first poll.
    pending: Vec<HostEvent>,
    /// The controller could not be restarted: nothing is submitted any more.
    dead: bool,
    /// Times the controller was restarted after an error.
    restarts: u64,
}

/// The speed usbback is told: a SuperSpeedPlus device as SuperSpeed, as it always was (it
/// shows in the device's description in xenstore, `speed=super`).
fn speed(s: Speed) -> Speed {
    match s {
        Speed::SuperPlus => Speed::Super,
        s => s,
    }
}

/// The classes of every interface and alternate setting of `configs`.
fn classes<'a>(configs: impl IntoIterator<Item = &'a Configuration>) -> ClassSet {
    configs
        .into_iter()
        .flat_map(|c| &c.interfaces)
        .map(|i| i.class)
        .collect()
}

impl<H: Hal> XhciHost<H> {
    /// Takes over a running controller and the devices it enumerated.
    pub fn new(xhci: Controller<H>, found: Vec<UsbDevice>) -> XhciHost<H> {
        let mut host = XhciHost {
            xhci,
            devices: Vec::new(),
            next_id: 1,
            in_flight: Vec::new(),
            pending: Vec::new(),
            dead: false,
            restarts: 0,
        };
        for d in found {
            host.attach(d);
        }
        host
    }

    /// The driver underneath (the self-tests use it beside usbback; each side takes only
    /// the completions of its own transfers).
    pub fn controller(&mut self) -> &mut Controller<H> {
        &mut self.xhci
    }

    /// The devices present, as the driver describes them.
    pub fn usb_devices(&self) -> impl Iterator<Item = &UsbDevice> + '_ {
        self.devices.iter().map(|k| &k.device)
    }

    /// The driver's description of host device `id`.
    pub fn usb_device(&self, id: u32) -> Option<&UsbDevice> {
        self.devices
            .iter()
            .find(|k| k.info.id == id)
            .map(|k| &k.device)
    }

    /// Whether events wait to be handed out without the controller's help (the devices
    /// found before the first poll).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Times the controller was restarted after a controller error.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Whether the controller can no longer be used.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    fn attach(&mut self, d: UsbDevice) {
        // The interfaces' classes are for policy, of every configuration offered: a device
        // one of whose configurations cannot be read is still offered, its classes unknown
        // (class rules then fail closed).
        let interface_classes = match self.xhci.configurations(d.slot_id) {
            Ok(configs) => InterfaceClasses::Checked(classes(&configs)),
            Err(e) => {
                warn!(
                    "event=usb_host_config_unread busid={} slot={} error={e}",
                    d.busid(),
                    d.slot_id
                );
                InterfaceClasses::Unknown
            }
        };
        let info = DeviceInfo {
            id: self.next_id,
            busid: d.busid(),
            speed: speed(d.speed),
            vendor_id: d.vendor_id,
            product_id: d.product_id,
            class: d.class,
            interface_classes,
            product: d.product.clone(),
            serial: d.serial.clone(),
            is_hub: d.is_hub(),
        };
        self.next_id += 1;
        self.pending.push(HostEvent::Attached(info.clone()));
        self.devices.push(HostDevice { info, device: d });
    }

    /// A request the host queued for usbback (`token`), completed in [`UsbHost::poll`].
    fn track(
        &mut self,
        device: u32,
        token: u64,
        queued: Result<TransferId, Error>,
        clears_halt: Option<u8>,
    ) -> Result<(), TransferError> {
        let id = queued.map_err(TransferError::from)?;
        self.in_flight.push(InFlight {
            id,
            device,
            token,
            clears_halt,
        });
        Ok(())
    }

    /// The controller's side of endpoint `address` of `device` reset after the device
    /// cleared its halt.
    fn reset_host_endpoint(&mut self, device: u32, address: u8) -> Result<(), TransferError> {
        let slot_id = self.slot(device)?;
        self.xhci
            .reset_host_endpoint(slot_id, address)
            .map_err(TransferError::from)
    }

    fn slot(&self, device: u32) -> Result<u8, TransferError> {
        if self.dead {
            return Err(TransferError::Shutdown);
        }
        self.devices
            .iter()
            .find(|k| k.info.id == device)
            .map(|k| k.device.slot_id)
            .ok_or(TransferError::NoDevice)
    }
}

impl<H: Hal, P> UsbHost<P> for XhciHost<H> {
    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(|k| k.info.clone()).collect()
    }

    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        if !self.dead {
            let attached = match self.xhci.poll_events() {
                Ok(_) => self.xhci.handle_port_changes(),
                Err(e) => match self.xhci.restart(e) {
                    Ok(found) => {
                        self.restarts += 1;
                        found
                    }
                    Err(e) => {
                        warn!("event=xhci_restart_failed error={e}");
                        self.dead = true;
                        Vec::new()
                    }
                },
            };
            // Completions first: those of a device that left come before its Detached.
            // Only this host's own: the self-tests' stay for them.
            let mut i = 0;
            while i < self.in_flight.len() {
                let Some(done) = self.xhci.take_completed_of(self.in_flight[i].id) else {
                    i += 1;
                    continue;
                };
                let f = self.in_flight.remove(i);
                let mut result = done.result.map_err(TransferError::from);
                if let (Some(address), Ok(_)) = (f.clears_halt, result) {
                    result = self.reset_host_endpoint(f.device, address).map(|()| 0);
                }
                let iso = done
                    .packets
                    .iter()
                    .map(|p| IsoResult {
                        actual_length: p.actual_length as u32,
                        status: p.status.map_err(TransferError::from),
                    })
                    .collect();
                events.push(HostEvent::Completed(Completion {
                    token: f.token,
                    result,
                    start_frame: done.start_frame,
                    iso,
                }));
            }
            for (slot_id, busid) in self.xhci.take_detached() {
                if let Some(i) = self
                    .devices
                    .iter()
                    .position(|k| k.device.slot_id == slot_id)
                {
                    let k = self.devices.remove(i);
                    events.push(HostEvent::Detached {
                        id: k.info.id,
                        busid,
                    });
                }
            }
            for d in attached {
                self.attach(d);
            }
        }
        events.append(&mut self.pending);
    }

    fn submit(&mut self, device: u32, t: Transfer<P>) -> Result<(), TransferError> {
        let slot_id = self.slot(device)?;
        let segments: Vec<DmaSegment> = t
            .segments
            .iter()
            .map(|s| DmaSegment {
                phys: s.phys + u64::from(s.offset),
                len: usize::from(s.len),
            })
            .collect();
        let direction = t.direction;
        let queued = match t.transfer_type {
            TransferType::Control => {
                let setup = t.setup.ok_or(TransferError::Invalid)?;
                self.xhci
                    .queue_control(slot_id, setup, direction, &segments)
            }
            TransferType::Bulk | TransferType::Interrupt => self
                .xhci
                .queue_transfer(slot_id, t.endpoint, direction, &segments),
            TransferType::Isochronous => self.xhci.queue_isochronous(
                slot_id,
                t.endpoint,
                direction,
                &segments,
                &t.iso_packets,
            ),
        };
        self.track(device, t.token, queued, None)
    }

    fn cancel(&mut self, device: u32, token: u64) -> bool {
        let Some(f) = self
            .in_flight
            .iter()
            .find(|f| f.device == device && f.token == token)
        else {
            return false;
        };
        match self.xhci.cancel(f.id) {
            Ok(found) => found,
            Err(e) => {
                // The endpoint could not be stopped: the transfer completes when it does.
                warn!("event=usb_cancel_failed device={device} token={token} error={e}");
                true
            }
        }
    }

    /// Vetted against the configuration as the device described it when it was enumerated
    /// (what policy saw), which is what the endpoints are then set up for; the device's
    /// answer comes as transfer `token`.
    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let slot_id = self.slot(device)?;
        let config = match value {
            0 => None,
            _ => {
                // A value the device does not offer is refused without asking it.
                let config = self
                    .xhci
                    .find_configuration(slot_id, value)
                    .map_err(TransferError::from)?;
                if !vet(&classes([&config])) {
                    return Err(TransferError::Refused);
                }
                Some(config)
            }
        };
        let queued = self.xhci.queue_set_configuration(slot_id, config.as_ref());
        self.track(device, token, queued, None)
    }

    fn set_interface(
        &mut self,
        device: u32,
        interface: u8,
        alternate: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let slot_id = self.slot(device)?;
        let class = self.xhci.active_configuration(slot_id).and_then(|c| {
            c.interfaces
                .iter()
                .find(|i| i.number == interface && i.alternate_setting == alternate)
                .map(|i| i.class)
        });
        // Without such a setting the driver refuses it without asking the device.
        if class.is_some_and(|c| !vet(&ClassSet::of(c))) {
            return Err(TransferError::Refused);
        }
        let queued = self.xhci.queue_set_interface(slot_id, interface, alternate);
        self.track(device, token, queued, None)
    }

    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        let slot_id = self.slot(device)?;
        let queued = self.xhci.queue_clear_halt(slot_id, address);
        self.track(device, token, queued, Some(address))
    }

    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        let slot_id = self.slot(device)?;
        let result = self.xhci.reset_device(slot_id).map_err(TransferError::from);
        info!(
            "event=usb_host_reset device={device} slot={slot_id} ok={}",
            result.is_ok()
        );
        result
    }
}

#[cfg(test)]
mod tests;
