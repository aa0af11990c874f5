//! The controller: bring-up of a halted, reset controller (xHCI 4.2), commands on the Command
//! Ring with completions from the Event Ring of Interrupter 0, root ports (4.19), and the
//! first steps of enumeration on them (4.3): Enable Slot, Address Device and the device
//! descriptor over the Default Control Endpoint; devices behind external hubs, at boot and
//! as hubs' status change endpoints report them; then configuration (4.3.5: the configuration
//! descriptor, Configure Endpoint, SET_CONFIGURATION) and bulk and interrupt transfers on the
//! endpoints' Transfer Rings, with Reset Endpoint after a STALL (4.6.8).
//!
//! One module per concept: `registers` (the register interface; bring-up, halt, reset and
//! restart), `events` (the Event Ring of Interrupter 0, and the Command Ring), `ports` (root
//! ports), `hubs` (external hubs), `enumeration` (Device Slots: addressing, descriptors,
//! reset), `configuration` (configurations and alternate settings) and `transfers`
//! (Transfer Rings: TDs, completions, cancellation, recovery). This file keeps the state
//! they share.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use usb::{Speed, TransferError};

use crate::descriptor::Configuration;
use crate::hal::Hal;
use crate::hub::{self, HubDescriptor, Tt};
use crate::ring::{EventRing, ProducerRing, RingError};

mod configuration;
mod enumeration;
mod events;
mod hubs;
mod legacy;
mod ports;
mod registers;
mod td;
mod transfers;

pub use configuration::MAX_CONFIGURATIONS;
pub use enumeration::ENUMERATION_BUDGET_US;
pub use events::COMMAND_TIMEOUT_US;
pub use legacy::{legacy_handoff, Handoff, HANDOFF_TIMEOUT_US};
pub use ports::RootPort;
pub use registers::{halt_and_reset, supported_protocols, Capabilities, Protocol};
pub use transfers::TRANSFER_TIMEOUT_US;

use hubs::HubWatch;
use transfers::EndpointRing;

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The controller was not halted and ready when bring-up began.
    NotHalted,
    /// DMA memory ran out.
    NoMemory,
    /// Something did not happen in time.
    Timeout(&'static str),
    /// The controller reported Host System Error.
    HostSystemError,
    /// A ring had no room.
    RingFull,
    /// A command completed with this code.
    Command(u8),
    /// A transfer completed with this code.
    Transfer(u8),
    /// A root port with a device stayed disabled after its reset.
    PortNotEnabled,
    /// The port reports no speed this driver knows.
    UnknownSpeed,
    /// The device sent a malformed descriptor.
    BadDescriptor,
    /// Enable Slot returned a slot ID outside 1..=MaxSlots.
    SlotId(u8),
    /// The endpoint answered STALL (it was reset, and its queued transfers dropped).
    Stall,
    /// No device holds that slot.
    NoDevice,
    /// The device has no such configured endpoint.
    NoEndpoint,
    /// The transfer was cancelled.
    Cancelled,
    /// The device sent more than a packet or the transfer could hold.
    Babble,
    /// The controller reported Host Controller Error (an internal failure).
    HostControllerError,
    /// A transfer with no bytes, or for an endpoint with max packet size 0.
    BadTransfer,
    /// Behind more hubs, or a higher hub port, than a Route String can name.
    Unroutable,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotHalted => f.write_str("not_halted"),
            Error::NoMemory => f.write_str("no_dma_memory"),
            Error::Timeout(what) => write!(f, "timeout_{what}"),
            Error::HostSystemError => f.write_str("host_system_error"),
            Error::RingFull => f.write_str("ring_full"),
            Error::Command(c) => write!(f, "command_completion_code_{c}"),
            Error::Transfer(c) => write!(f, "transfer_completion_code_{c}"),
            Error::PortNotEnabled => f.write_str("port_not_enabled"),
            Error::UnknownSpeed => f.write_str("unknown_speed"),
            Error::BadDescriptor => f.write_str("bad_descriptor"),
            Error::SlotId(id) => write!(f, "bad_slot_id_{id}"),
            Error::Stall => f.write_str("stall"),
            Error::NoDevice => f.write_str("no_device"),
            Error::NoEndpoint => f.write_str("no_endpoint"),
            Error::Cancelled => f.write_str("cancelled"),
            Error::Babble => f.write_str("babble"),
            Error::HostControllerError => f.write_str("host_controller_error"),
            Error::BadTransfer => f.write_str("bad_transfer"),
            Error::Unroutable => f.write_str("unroutable"),
        }
    }
}

impl From<Error> for TransferError {
    /// What a transfer's failure means for its user: the device's answers (STALL, babble,
    /// gone) as they are, a bus or timeout failure as a protocol error, a request this
    /// device cannot carry as invalid, and the controller's own failures as shutdown.
    fn from(e: Error) -> TransferError {
        match e {
            Error::Stall => TransferError::Stall,
            Error::NoDevice => TransferError::NoDevice,
            Error::Cancelled => TransferError::Cancelled,
            Error::Babble => TransferError::Babble,
            Error::Transfer(_) | Error::Timeout(_) => TransferError::Protocol,
            Error::NoEndpoint | Error::BadTransfer | Error::BadDescriptor | Error::Unroutable => {
                TransferError::Invalid
            }
            Error::NotHalted
            | Error::NoMemory
            | Error::HostSystemError
            | Error::RingFull
            | Error::Command(_)
            | Error::PortNotEnabled
            | Error::UnknownSpeed
            | Error::SlotId(_)
            | Error::HostControllerError => TransferError::Shutdown,
        }
    }
}

impl From<RingError> for Error {
    fn from(_: RingError) -> Error {
        Error::RingFull
    }
}

/// A device found on a root port or behind hubs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbDevice {
    /// The root port it is on or behind.
    pub root_port: RootPort,
    /// The hub port of each tier on the way from the root port, nearest the root first
    /// (empty on a root port).
    pub hub_ports: Vec<u8>,
    /// Its Device Slot.
    pub slot_id: u8,
    /// Its speed.
    pub speed: Speed,
    /// bcdUSB.
    pub usb_version: u16,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bDeviceClass (0: per interface, 9: hub).
    pub class: u8,
    /// The Default Control Endpoint's max packet size.
    pub max_packet_size0: u16,
    /// The product string, when the device has one and sent it.
    pub product: Option<String>,
    /// The serial number string, likewise.
    pub serial: Option<String>,
}

impl UsbDevice {
    /// The Linux bus id: `1-3` on a root port, `1-3.2.1` behind two hubs.
    pub fn busid(&self) -> String {
        hub::busid(&self.root_port, &self.hub_ports)
    }

    /// Whether it is a hub (bDeviceClass 9): never assigned to a guest.
    pub fn is_hub(&self) -> bool {
        self.class == usb::hub::HUB_CLASSCODE
    }
}

/// What one isochronous packet did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsoOutcome {
    /// Bytes transferred.
    pub actual_length: usize,
    /// Its status.
    pub status: Result<(), Error>,
}

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// Bytes transferred (fewer than queued after a short packet), or why it failed.
    pub result: Result<usize, Error>,
    /// Isochronous: one outcome per packet.
    pub packets: Vec<IsoOutcome>,
    /// Isochronous: the frame (1 ms) it was queued in.
    pub start_frame: u16,
}

/// A transfer queued with [`Controller::queue_transfer`] and its kin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TransferId(u64);

/// A Device Slot's memory: the controller references all of it while the slot is enabled.
struct Slot<D> {
    slot_id: u8,
    /// Root port of the device.
    port: u8,
    /// Hub ports on the way from the root port.
    hub_ports: Vec<u8>,
    speed: Speed,
    /// The Transaction Translator it uses.
    tt: Option<Tt>,
    /// What its hub descriptor said, when it is a hub.
    hub: Option<HubDescriptor>,
    /// The Slot Context's Context Entries.
    context_entries: u32,
    /// The Default Control Endpoint first, then those of the configuration in use.
    endpoints: Vec<EndpointRing<D>>,
    /// The configuration in use.
    config: Option<Configuration>,
    /// The alternate setting in use of each interface that is not at 0.
    alternates: Vec<(u8, u8)>,
    /// bNumConfigurations.
    num_configurations: u8,
    /// The configurations offered ([`Controller::configurations`]), read when it was
    /// enumerated.
    configurations: Result<Vec<Configuration>, Error>,
    input_context: D,
    /// The Output Device Context: where the controller saves endpoint state (a stopped
    /// endpoint's TR Dequeue Pointer).
    output_context: D,
    /// Data Stage buffer of the driver's own control transfers.
    data: D,
}

/// A running controller.
pub struct Controller<H: Hal> {
    hal: H,
    caps: Capabilities,
    dcbaa: H::Dma,
    /// Scratchpad Buffer Array and the buffers: owned by the controller while it runs.
    _scratchpad: Vec<H::Dma>,
    command_ring: ProducerRing<H::Dma>,
    event_ring: EventRing<H::Dma>,
    protocols: Vec<Protocol>,
    slots: Vec<Slot<H::Dma>>,
    /// Root ports a Port Status Change Event named, not yet looked at.
    port_changes: Vec<u8>,
    /// Finished transfers not yet taken.
    completions: Vec<(TransferId, Completed)>,
    /// Devices gone (slot, bus id) not yet taken by [`Controller::take_detached`].
    detached: Vec<(u8, String)>,
    next_transfer: u64,
    /// The hubs whose ports are watched.
    hubs: Vec<HubWatch<H::Dma>>,
    /// While a device describes itself: when its
    /// [`ENUMERATION_BUDGET_US`](enumeration::ENUMERATION_BUDGET_US) is up. Every wait for
    /// one of its transfers ends by then.
    deadline: Option<u64>,
    /// Events taken from the Event Ring since ERDP was last written.
    unacknowledged: u32,
    /// The Linux bus number of its USB 2 ports; its USB 3 ports are on the next
    /// ([`Controller::set_first_bus`]).
    first_bus: u8,
}

/// DMA memory from the platform, or [`Error::NoMemory`].
fn alloc<H: Hal>(hal: &mut H, bytes: usize, align: usize) -> Result<H::Dma, Error> {
    hal.dma_alloc(bytes, align).ok_or(Error::NoMemory)
}
