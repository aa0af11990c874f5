//! Root ports (xHCI 4.19): their PORTSC registers, Port Reset and Warm Port Reset (4.3.1,
//! 4.19.5), the changes Port Status Change Events name, and the devices on them attached
//! and detached.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use log::{info, warn};

use super::registers::{Protocol, PORTSC, PORT_REGISTER_SET_SIZE};
use super::td::PendingTd;
use super::{Controller, Error, UsbDevice};
use crate::hal::Hal;
use crate::hub;
use crate::port::{Portsc, CSC, PRC, WRC};

/// Port Reset to Port Reset Change: USB 2.0 7.1.7.5 allows 50 ms for the root port reset.
pub(super) const PORT_RESET_TIMEOUT_US: u64 = 100_000;
/// USB 2.0 TRSTRCY: the device's recovery time after a reset before it is addressed.
pub(super) const RESET_RECOVERY_US: u64 = 10_000;

/// A root port, named as Linux names it: a controller's USB2 ports are on one bus (1 for the
/// first controller) and its USB3 ports on the next (2), each numbered from 1 within its
/// protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootPort {
    /// The xHCI port number (1-based), for PORTSC and the Slot Context.
    pub port: u8,
    /// USB major revision of the port (0 when no protocol capability lists it).
    pub major: u8,
    /// Protocol Slot Type.
    pub slot_type: u8,
    /// Linux bus number.
    pub bus: u8,
    /// Port number on that bus.
    pub number: u8,
}

impl RootPort {
    /// Finds `port` in `protocols`, on a controller whose USB 2 bus is `first_bus`.
    pub fn new(protocols: &[Protocol], port: u8, first_bus: u8) -> RootPort {
        let p = protocols.iter().find(|p| {
            port >= p.first_port && u16::from(port) < u16::from(p.first_port) + u16::from(p.count)
        });
        match p {
            Some(p) => RootPort {
                port,
                major: p.major,
                slot_type: p.slot_type,
                bus: first_bus.saturating_add(u8::from(p.major >= 3)),
                number: port - p.first_port + 1,
            },
            None => RootPort {
                port,
                major: 0,
                slot_type: 0,
                bus: 0,
                number: port,
            },
        }
    }
}

impl fmt::Display for RootPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.bus, self.number)
    }
}

impl<H: Hal> Controller<H> {
    /// Looks at the root ports Port Status Change Events named since the last call:
    /// acknowledges their change bits (the controller sends the next event only when a change
    /// bit goes from 0 to 1), enumerates a device that arrived, disables the slot of one
    /// that left (and of every device behind it). Then the same for the hub ports that hubs'
    /// status change endpoints named. Logs `event=usb_port_change` per port. Returns the
    /// devices attached.
    pub fn handle_port_changes(&mut self) -> Vec<UsbDevice> {
        let ports = core::mem::take(&mut self.port_changes);
        let mut attached = Vec::new();
        for port in ports {
            if port == 0 || port > self.caps.max_ports {
                continue;
            }
            let status = self.portsc(port);
            self.write_portsc(port, status.clear_changes(status.changes()));
            let root_port = self.root_port(port);
            info!(
                "event=usb_port_change busid={root_port} port={port} connected={} enabled={} pls={} portsc={:#010x}",
                status.connected(),
                status.enabled(),
                status.link_state(),
                status.0
            );
            let occupied = self.slots.iter().any(|s| s.port == port);
            // A new connection shows Connect Status Change (this driver acknowledges CSC
            // before it enumerates). Without it a connected port without a slot holds a
            // device that failed enumeration: its own reset events must not retry it for ever.
            let new_connection = status.0 & CSC != 0;
            match (status.connected(), occupied) {
                (true, false) if new_connection => attached.extend(self.attach(root_port)),
                // The device was replaced between two looks.
                (true, true) if new_connection => {
                    self.detach(root_port, &[]);
                    attached.extend(self.attach(root_port));
                }
                (false, true) => self.detach(root_port, &[]),
                _ => {}
            }
        }
        attached.extend(self.handle_hub_changes());
        attached
    }

    /// Whether Port Status Change Events named root ports, or hubs' status change endpoints
    /// named hub ports, [`Controller::handle_port_changes`] has not looked at yet.
    pub fn has_port_changes(&self) -> bool {
        !self.port_changes.is_empty()
            || self
                .hubs
                .iter()
                .any(|w| self.completions.iter().any(|c| c.0 == w.queued))
    }

    /// Which protocol and Linux name a root port has.
    pub(super) fn root_port(&self, port: u8) -> RootPort {
        RootPort::new(&self.protocols, port, self.first_bus)
    }

    /// Names its root ports' buses from `bus` (its USB 2 ports) and `bus + 1` (USB 3), as
    /// Linux numbers the buses of its `k`-th controller `2k - 1` and `2k`. Devices found
    /// from then on carry the bus ids; 1 until this is called.
    pub fn set_first_bus(&mut self, bus: u8) {
        self.first_bus = bus;
    }

    fn portsc_offset(&self, port: u8) -> usize {
        self.op() + PORTSC + (usize::from(port) - 1) * PORT_REGISTER_SET_SIZE
    }

    /// PORTSC of root port `port` (1..=MaxPorts).
    pub(super) fn portsc(&self, port: u8) -> Portsc {
        Portsc(self.hal.read32(self.portsc_offset(port)))
    }

    fn write_portsc(&self, port: u8, value: u32) {
        self.hal.write32(self.portsc_offset(port), value);
    }

    /// Resets a root port and waits for Port Reset Change (4.3.1, 4.19.5): a Port Reset for
    /// a USB2 port, a Warm Port Reset for a USB3 port whose link did not train. Returns
    /// PORTSC after.
    pub(super) fn reset_port(&mut self, port: u8, warm: bool) -> Result<Portsc, Error> {
        let before = self.portsc(port);
        let start = if warm {
            before.start_warm_reset()
        } else {
            before.start_reset()
        };
        self.write_portsc(port, start);
        let until = self.hal.now_micros() + PORT_RESET_TIMEOUT_US;
        loop {
            let now = self.portsc(port);
            if now.0 & PRC != 0 && !now.resetting() {
                self.write_portsc(port, now.clear_changes(PRC | WRC));
                break;
            }
            if self.hal.now_micros() > until {
                return Err(Error::Timeout("port_reset"));
            }
            core::hint::spin_loop();
        }
        self.delay(RESET_RECOVERY_US);
        Ok(self.portsc(port))
    }

    pub(super) fn delay(&self, us: u64) {
        let until = self.hal.now_micros() + us;
        while self.hal.now_micros() < until {
            core::hint::spin_loop();
        }
    }

    /// Looks at every root port: acknowledges stale change bits, and enumerates what is
    /// connected. Each device is logged (`event=usb_device`), and so is each failure
    /// (`event=usb_device_error`); none stops the others.
    pub fn enumerate_root_ports(&mut self) -> Vec<UsbDevice> {
        let mut found = Vec::new();
        for port in 1..=self.caps.max_ports {
            let root_port = self.root_port(port);
            let status = self.portsc(port);
            if status.changes() != 0 {
                self.write_portsc(port, status.clear_changes(status.changes()));
            }
            if !status.connected() {
                continue;
            }
            found.extend(self.attach(root_port));
        }
        // Port Status Change Events for the ports just handled are old news, unless the
        // port changed since: a device came or went during the scan.
        if let Err(e) = self.poll_events() {
            warn!("event=xhci_error error={e}");
        }
        let noted = core::mem::take(&mut self.port_changes);
        self.port_changes = noted
            .into_iter()
            .filter(|&p| {
                let has_slot = self.slots.iter().any(|s| s.port == p);
                p >= 1 && p <= self.caps.max_ports && self.portsc(p).connected() != has_slot
            })
            .collect();
        found
    }

    /// Enumerates the device on `root_port`, and the devices behind it when it is a hub, and
    /// logs each outcome (`event=usb_device` or `event=usb_device_error`).
    fn attach(&mut self, root_port: RootPort) -> Vec<UsbDevice> {
        let mut found = Vec::new();
        match self.enumerate(root_port) {
            Ok(d) => self.found(d, &mut found),
            Err(e) => {
                let status = self.portsc(root_port.port);
                warn!(
                    "event=usb_device_error busid={root_port} port={} pls={} portsc={:#010x} error={e}",
                    root_port.port,
                    status.link_state(),
                    status.0
                );
            }
        }
        found
    }

    /// Logs a device enumerated, adds it to `found`, and when it is a hub, the devices
    /// behind it after it.
    pub(super) fn found(&mut self, d: UsbDevice, found: &mut Vec<UsbDevice>) {
        info!(
            "event=usb_device busid={} port={} slot={} speed={} usb={:x}.{:02x} vid={:04x} pid={:04x} class={:02x} mps0={} product={:?} serial={:?}",
            d.busid(),
            d.root_port.port,
            d.slot_id,
            d.speed.name(),
            d.usb_version >> 8,
            d.usb_version & 0xff,
            d.vendor_id,
            d.product_id,
            d.class,
            d.max_packet_size0,
            d.product.as_deref().unwrap_or(""),
            d.serial.as_deref().unwrap_or("")
        );
        let is_hub = d.class == usb::hub::HUB_CLASSCODE;
        found.push(d.clone());
        if is_hub {
            self.enumerate_hub(&d, found);
        }
    }

    /// The device at `hub_ports` behind `root_port` has gone, and with it every device
    /// behind it: their slots are disabled and their memory released (once the controller
    /// no longer references it), the devices behind hubs before the hubs.
    pub(super) fn detach(&mut self, root_port: RootPort, hub_ports: &[u8]) {
        let mut gone: Vec<(u8, usize)> = self
            .slots
            .iter()
            .filter(|s| s.port == root_port.port && s.hub_ports.starts_with(hub_ports))
            .map(|s| (s.slot_id, s.hub_ports.len()))
            .collect();
        gone.sort_by_key(|&(_, tiers)| core::cmp::Reverse(tiers));
        for (slot_id, _) in gone {
            let Ok(index) = self.slot_index(slot_id) else {
                continue;
            };
            let busid = hub::busid(&root_port, &self.slots[index].hub_ports);
            // Whatever it had queued will never happen: it completes now, with the error
            // saying why.
            let queued: Vec<PendingTd> = self.slots[index]
                .endpoints
                .iter_mut()
                .flat_map(|e| core::mem::take(&mut e.pending))
                .collect();
            let transfers = queued.len();
            for td in queued {
                self.finish(td, Err(Error::NoDevice));
            }
            match self.disable_slot(slot_id) {
                Ok(()) => {
                    self.slots.retain(|s| s.slot_id != slot_id);
                    self.hubs.retain(|w| w.hub.slot_id != slot_id);
                    self.detached.push((slot_id, busid.clone()));
                    info!(
                        "event=usb_device_gone busid={busid} port={} slot={slot_id} transfers_failed={transfers}",
                        root_port.port
                    );
                }
                Err(e) => warn!("event=xhci_disable_slot_failed slot={slot_id} error={e}"),
            }
        }
    }

    /// The devices gone since the last call, as (slot, bus id): their transfers completed
    /// with [`Error::NoDevice`] before.
    pub fn take_detached(&mut self) -> Vec<(u8, String)> {
        core::mem::take(&mut self.detached)
    }
}
