//! The controller: bring-up of a halted, reset controller (xHCI 4.2), commands on the Command
//! Ring with completions from the Event Ring of Interrupter 0, root ports (4.19), and the
//! first steps of enumeration on them (4.3): Enable Slot, Address Device and the device
//! descriptor over the Default Control Endpoint; devices behind external hubs, at boot and
//! as hubs' status change endpoints report them; then configuration (4.3.5: the configuration
//! descriptor, Configure Endpoint, SET_CONFIGURATION) and bulk and interrupt transfers on the
//! endpoints' Transfer Rings, with Reset Endpoint after a STALL (4.6.8).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use log::{debug, info, warn};
use xhci::ring::trb::command;
use xhci::ring::trb::event::{self, CompletionCode};

use crate::descriptor::{self, Configuration, Endpoint, TransferType};
use crate::hal::{DmaBuffer, Hal};
use crate::hub::{self, HubDescriptor, PortStatus, Tt};
use crate::port::{Portsc, Speed, CSC, PRC, WRC};
use crate::ring::{EventRing, ProducerRing, RingError, ERST_ENTRY_SIZE};
use crate::transfer::{
    control_trbs, endpoint_context, isoch_trbs, max_esit_payload, normal_td, Direction, IsoPacket,
    Segment, TransferTrbs, TrbInfo, TrbRole,
};

// Capability registers (5.3). Read 32 bits wide: some controllers (QEMU's) return 0 for
// narrower reads such as a 16-bit HCIVERSION.
const CAPLENGTH_HCIVERSION: usize = 0x00;
const HCSPARAMS1: usize = 0x04;
const HCSPARAMS2: usize = 0x08;
const HCCPARAMS1: usize = 0x10;
const DBOFF: usize = 0x14;
const RTSOFF: usize = 0x18;
// Operational registers (5.4), at CAPLENGTH.
const USBCMD: usize = 0x00;
const USBSTS: usize = 0x04;
const PAGESIZE: usize = 0x08;
const CRCR: usize = 0x18;
const DCBAAP: usize = 0x30;
const CONFIG: usize = 0x38;
const PORTSC: usize = 0x400;
const PORT_REGISTER_SET_SIZE: usize = 0x10;
// Interrupter Register Set 0 (5.5.2), at RTSOFF + 0x20.
const INTERRUPTER_0: usize = 0x20;
const IMAN: usize = 0x00;
const IMOD: usize = 0x04;
const ERSTSZ: usize = 0x08;
const ERSTBA: usize = 0x10;
const ERDP: usize = 0x18;
// Runtime registers (5.5), at RTSOFF.
const MFINDEX: usize = 0x00;

const USBCMD_RS: u32 = 1 << 0;
const USBCMD_HCRST: u32 = 1 << 1;
const USBCMD_INTE: u32 = 1 << 2;
const USBSTS_HCH: u32 = 1 << 0;
const USBSTS_HSE: u32 = 1 << 2;
const USBSTS_EINT: u32 = 1 << 3;
const USBSTS_CNR: u32 = 1 << 11;
const USBSTS_HCE: u32 = 1 << 12;
const IMAN_IP: u32 = 1 << 0;
const IMAN_IE: u32 = 1 << 1;
/// Event Handler Busy, RW1C in ERDP: written 1 with every dequeue pointer update.
const ERDP_EHB: u64 = 1 << 3;
const CRCR_RCS: u64 = 1 << 0;
/// Interrupt Moderation Interval, 250 ns units: 40 µs, as Linux uses.
const IMODI: u32 = 160;
/// Extended Capability ID of the Supported Protocol Capability (7.2).
const XECP_SUPPORTED_PROTOCOL: u32 = 2;

/// One page holds each ring: 256 TRBs.
const RING_BYTES: usize = 4096;
/// A configured endpoint's Transfer Ring: 1023 TRBs, room for 16 transfers of 64 KiB in
/// 4 KiB pages (17 TRBs each, a guest's URBs) with plenty to spare. Aligned to its size so
/// it cannot cross a 64 KiB boundary (6.5).
const TRANSFER_RING_BYTES: usize = 16 * 1024;
/// Commands complete in microseconds on real controllers; Address Device waits for a
/// SET_ADDRESS on the bus.
const COMMAND_TIMEOUT_US: u64 = 100_000;
/// A control transfer to a device that answers.
const TRANSFER_TIMEOUT_US: u64 = 100_000;
/// Run/Stop to HCHalted clear.
const RUN_TIMEOUT_US: u64 = 20_000;
/// How long Host Controller Reset (and Controller Not Ready after it) may take.
const RESET_TIMEOUT_US: u64 = 1_000_000;
/// Port Reset to Port Reset Change: USB 2.0 7.1.7.5 allows 50 ms for the root port reset.
const PORT_RESET_TIMEOUT_US: u64 = 100_000;
/// Events taken before ERDP is written even though more wait: a quarter of the Event Ring,
/// so the controller always has room to write.
const ERDP_BATCH: u32 = (RING_BYTES / crate::ring::TRB_SIZE / 4) as u32;
/// All a device may take to describe itself once it is addressed: its device, string and
/// configuration descriptors, however long each read alone may take. Devices take a few
/// milliseconds (4 ms under nested Xen in QEMU); one that answers each read just inside
/// [`TRANSFER_TIMEOUT_US`] would otherwise hold the driver for two seconds a plug.
const ENUMERATION_BUDGET_US: u64 = 500_000;
/// USB 2.0 TRSTRCY: the device's recovery time after a reset before it is addressed.
const RESET_RECOVERY_US: u64 = 10_000;
/// Between two GET_STATUS of a hub port being reset.
const HUB_PORT_POLL_US: u64 = 1_000;

// USB 2.0 chapter 9.
const REQUEST_TYPE_DEVICE_TO_HOST: u8 = 0x80;
const GET_DESCRIPTOR: u8 = 6;
const SET_CONFIGURATION: u8 = 9;
const CLEAR_FEATURE: u8 = 1;
const SET_INTERFACE: u8 = 11;
const REQUEST_TYPE_INTERFACE: u8 = 0x01;
const REQUEST_TYPE_ENDPOINT: u8 = 0x02;
const FEATURE_ENDPOINT_HALT: u16 = 0;
const DESCRIPTOR_CONFIGURATION: u16 = descriptor::CONFIGURATION as u16;
const DESCRIPTOR_DEVICE: u16 = 1;
const DESCRIPTOR_STRING: u16 = 3;
const DEVICE_DESCRIPTOR_SIZE: u16 = 18;
const LANGID_EN_US: u16 = 0x0409;
/// Configurations of a device the driver offers: the first this many (USB allows 255;
/// devices have one or two). Every one offered is read when the device is attached, so that
/// a policy sees them all before a guest may choose among them; of a device claiming more,
/// only these can be set (logged as `event=usb_configurations_capped`).
pub const MAX_CONFIGURATIONS: u8 = 8;

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

impl From<RingError> for Error {
    fn from(_: RingError) -> Error {
        Error::RingFull
    }
}

fn code_of(c: Result<CompletionCode, u8>) -> u8 {
    match c {
        Ok(c) => c as u8,
        Err(raw) => raw,
    }
}

/// The capability registers that matter here.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Where the operational registers begin.
    pub caplength: u8,
    /// Interface version, BCD (0x100 is 1.0).
    pub hciversion: u16,
    /// MaxSlots.
    pub max_slots: u8,
    /// MaxIntrs.
    pub max_interrupters: u16,
    /// MaxPorts.
    pub max_ports: u8,
    /// Max Scratchpad Buffers (Hi and Lo together).
    pub max_scratchpad_buffers: u16,
    /// 64-bit Addressing Capability.
    pub ac64: bool,
    /// Context Size: 64 when CSZ is set, else 32 bytes.
    pub context_size: usize,
    /// xHCI Extended Capabilities Pointer, in bytes from the base (0: none).
    pub xecp: usize,
    /// Doorbell Offset.
    pub dboff: usize,
    /// Runtime Register Space Offset.
    pub rtsoff: usize,
}

impl Capabilities {
    /// Reads them, 32 bits at a time.
    pub fn read<H: Hal>(hal: &H) -> Capabilities {
        let cap = hal.read32(CAPLENGTH_HCIVERSION);
        let hcs1 = hal.read32(HCSPARAMS1);
        let hcs2 = hal.read32(HCSPARAMS2);
        let hcc1 = hal.read32(HCCPARAMS1);
        Capabilities {
            caplength: cap as u8,
            hciversion: (cap >> 16) as u16,
            max_slots: hcs1 as u8,
            max_interrupters: ((hcs1 >> 8) & 0x7ff) as u16,
            max_ports: (hcs1 >> 24) as u8,
            max_scratchpad_buffers: (((hcs2 >> 21) & 0x1f) << 5 | (hcs2 >> 27)) as u16,
            ac64: hcc1 & 1 != 0,
            context_size: if hcc1 & (1 << 2) != 0 { 64 } else { 32 },
            xecp: ((hcc1 >> 16) as usize) * 4,
            dboff: (hal.read32(DBOFF) & !0x3) as usize,
            rtsoff: (hal.read32(RTSOFF) & !0x1f) as usize,
        }
    }
}

/// A Supported Protocol Capability: which root ports speak which USB major revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// Major Revision (2 or 3).
    pub major: u8,
    /// Compatible Port Offset: the first root port (1-based).
    pub first_port: u8,
    /// Compatible Port Count.
    pub count: u8,
    /// Protocol Slot Type, for Enable Slot.
    pub slot_type: u8,
}

/// Walks the extended capability list for Supported Protocol Capabilities. `read32` reads
/// at a byte offset from the base; the walk ends at a zero Next pointer or where a
/// capability would not fit below `limit` (the register space's size).
pub fn supported_protocols(
    read32: impl Fn(usize) -> u32,
    xecp: usize,
    limit: usize,
) -> Vec<Protocol> {
    let mut found = Vec::new();
    let mut at = xecp;
    // A capability is at most 16 bytes here, and Next only moves forward.
    while at != 0 && at + 16 <= limit {
        let header = read32(at);
        if header & 0xff == XECP_SUPPORTED_PROTOCOL {
            let ports = read32(at + 8);
            found.push(Protocol {
                major: (header >> 24) as u8,
                first_port: ports as u8,
                count: (ports >> 8) as u8,
                slot_type: (read32(at + 12) & 0x1f) as u8,
            });
        }
        let next = ((header >> 8) & 0xff) as usize;
        at = if next == 0 { 0 } else { at + next * 4 };
    }
    found
}

/// A root port, named as Linux names it: USB2 ports are on bus 1 and USB3 ports on bus 2,
/// each numbered from 1 within its protocol.
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
    /// Finds `port` in `protocols`.
    pub fn new(protocols: &[Protocol], port: u8) -> RootPort {
        let p = protocols.iter().find(|p| {
            port >= p.first_port && u16::from(port) < u16::from(p.first_port) + u16::from(p.count)
        });
        match p {
            Some(p) => RootPort {
                port,
                major: p.major,
                slot_type: p.slot_type,
                bus: if p.major >= 3 { 2 } else { 1 },
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
        self.class == hub::HUB_CLASS
    }
}

/// Where a device to be enumerated is, and what the Slot Context says of it.
struct Attachment {
    root_port: RootPort,
    hub_ports: Vec<u8>,
    speed: Speed,
    tt: Option<Tt>,
}

/// Why a hub port's device was not enumerated: the hub failed (its other ports are not
/// looked at), or the device did.
enum HubPortError {
    Hub(Error),
    Device(Error),
}

/// A transfer the controller owns: the TRBs of its TDs and what has been reported of them.
struct PendingTd {
    id: TransferId,
    /// Address of each TRB and what it is for.
    trbs: Vec<(u64, TrbInfo)>,
    kind: TdKind,
    /// Control: the bytes of a Data Stage a short packet ended, awaiting the Status Stage.
    short: Option<usize>,
    /// Isochronous: each packet's outcome once reported.
    packets: Vec<Option<IsoOutcome>>,
    /// Isochronous: the frame it was queued in.
    start_frame: u16,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TdKind {
    Normal,
    Control,
    Isochronous,
}

impl PendingTd {
    fn holds(&self, at: u64) -> bool {
        self.trbs.iter().any(|&(a, _)| a == at)
    }

    fn last(&self) -> u64 {
        self.trbs.last().map_or(0, |&(a, _)| a)
    }

    /// Data bytes of the TRBs of `packet` before the one at `at`, plus that one's length
    /// less `residue`.
    fn bytes_to(&self, at: u64, residue: u32, packet: u16) -> usize {
        let mut done = 0usize;
        for &(a, info) in self.trbs.iter().filter(|(_, i)| i.packet == packet) {
            if info.role != TrbRole::Data {
                if a == at {
                    break;
                }
                continue;
            }
            if a == at {
                done += info.len.saturating_sub(residue) as usize;
                break;
            }
            done += info.len as usize;
        }
        done
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

/// An endpoint with its Transfer Ring: the Default Control Endpoint, or one a configuration
/// or alternate setting added.
struct EndpointRing<D> {
    /// Device Context Index.
    dci: u8,
    /// Its descriptor (EP0's is made up from the device descriptor).
    endpoint: Endpoint,
    ring: ProducerRing<D>,
    /// Transfers queued, oldest first.
    pending: Vec<PendingTd>,
    /// A transfer ended in an error that halts the endpoint (4.10.2.1): it must be reset
    /// before the rest run.
    halted: bool,
    /// Where a Stop Endpoint found a transfer in progress (its Stopped event).
    stopped_at: Option<u64>,
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

/// A hub's status change endpoint (USB 2.0 11.12.4) with one transfer always queued: bit n
/// of what it returns names port n with a change (bit 0 the hub itself).
struct HubWatch<D> {
    hub: UsbDevice,
    ports: u8,
    endpoint: u8,
    len: usize,
    buf: D,
    queued: TransferId,
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
    /// While a device describes itself: when its [`ENUMERATION_BUDGET_US`] is up. Every
    /// wait for one of its transfers ends by then.
    deadline: Option<u64>,
    /// Events taken from the Event Ring since ERDP was last written.
    unacknowledged: u32,
}

/// The memory a running controller owns: the Device Context Base Address Array, the
/// Scratchpad Buffer Array and its buffers, the Command Ring and the Event Ring of
/// Interrupter 0.
struct ControllerMemory<D> {
    dcbaa: D,
    scratchpad: Vec<D>,
    command_ring: ProducerRing<D>,
    event_ring: EventRing<D>,
    page_size: usize,
}

impl<D: DmaBuffer> ControllerMemory<D> {
    fn new<H: Hal<Dma = D>>(hal: &mut H, caps: &Capabilities) -> Result<Self, Error> {
        let op = usize::from(caps.caplength);
        // PAGESIZE bit n set means pages of 2^(n+12) bytes; the lowest set bit is the size
        // scratchpad buffers must have.
        let page_bits = (hal.read32(op + PAGESIZE) & 0xffff)
            .trailing_zeros()
            .min(15);
        let page_size = 1usize << (page_bits + 12);
        let mut dcbaa = alloc(hal, (usize::from(caps.max_slots) + 1) * 8, 64)?;
        let mut scratchpad = Vec::new();
        let buffers = usize::from(caps.max_scratchpad_buffers);
        if buffers > 0 {
            let mut array = alloc(hal, buffers * 8, 64)?;
            for i in 0..buffers {
                let buffer = alloc(hal, page_size, page_size)?;
                array.write64(i * 8, buffer.phys());
                scratchpad.push(buffer);
            }
            // DCBAA entry 0 is the Scratchpad Buffer Array when there are buffers.
            dcbaa.write64(0, array.phys());
            scratchpad.push(array);
        }
        let command_ring = ProducerRing::new(alloc(hal, RING_BYTES, 64)?);
        let event_ring = EventRing::new(
            alloc(hal, RING_BYTES, 64)?,
            alloc(hal, ERST_ENTRY_SIZE, 64)?,
        );
        Ok(ControllerMemory {
            dcbaa,
            scratchpad,
            command_ring,
            event_ring,
            page_size,
        })
    }
}

/// Takes a controller from whatever state firmware left it in to halted and reset (xHCI
/// 4.2, 5.4.1): Run/Stop cleared, HCHalted awaited, then Host Controller Reset until it and
/// Controller Not Ready clear. Returns whether it was running. SeaBIOS leaves QEMU's
/// controller running, with DMA into memory that is ours now: only a controller through
/// here may master the bus.
pub fn halt_and_reset<H: Hal>(hal: &H) -> Result<bool, Error> {
    let op = usize::from(Capabilities::read(hal).caplength);
    let cmd = hal.read32(op + USBCMD);
    hal.write32(op + USBCMD, cmd & !(USBCMD_RS | USBCMD_INTE));
    let wait = |what, micros, done: &dyn Fn() -> bool| {
        let until = hal.now_micros() + micros;
        while !done() {
            if hal.now_micros() > until {
                return Err(Error::Timeout(what));
            }
            core::hint::spin_loop();
        }
        Ok(())
    };
    wait("halt", RUN_TIMEOUT_US, &|| {
        hal.read32(op + USBSTS) & USBSTS_HCH != 0
    })?;
    hal.write32(op + USBCMD, USBCMD_HCRST);
    wait("reset", RESET_TIMEOUT_US, &|| {
        hal.read32(op + USBCMD) & USBCMD_HCRST == 0 && hal.read32(op + USBSTS) & USBSTS_CNR == 0
    })?;
    Ok(cmd & USBCMD_RS != 0)
}

impl<H: Hal> Controller<H> {
    /// Brings up a halted, reset controller (xHCI 4.2): MaxSlotsEn, the Device Context Base
    /// Address Array with the scratchpad buffers, the Command Ring, Interrupter 0 with its
    /// Event Ring and interrupts enabled, then Run.
    pub fn start(mut hal: H) -> Result<Controller<H>, Error> {
        let caps = Capabilities::read(&hal);
        let op = usize::from(caps.caplength);
        let status = hal.read32(op + USBSTS);
        if status & USBSTS_HCH == 0 || status & USBSTS_CNR != 0 {
            return Err(Error::NotHalted);
        }
        let memory = ControllerMemory::new(&mut hal, &caps)?;
        let protocols = supported_protocols(|at| hal.read32(at), caps.xecp, hal.mmio_len());
        let mut xhci = Controller {
            hal,
            caps,
            dcbaa: memory.dcbaa,
            _scratchpad: memory.scratchpad,
            command_ring: memory.command_ring,
            event_ring: memory.event_ring,
            protocols,
            slots: Vec::new(),
            port_changes: Vec::new(),
            completions: Vec::new(),
            detached: Vec::new(),
            next_transfer: 0,
            hubs: Vec::new(),
            deadline: None,
            unacknowledged: 0,
        };
        xhci.run()?;
        info!(
            "event=xhci_running hciversion={:#x} slots={} ports={} interrupters={} context_size={} scratchpad_buffers={} page_size={} ac64={} usb2_ports={} usb3_ports={}",
            caps.hciversion,
            caps.max_slots,
            caps.max_ports,
            caps.max_interrupters,
            caps.context_size,
            caps.max_scratchpad_buffers,
            memory.page_size,
            caps.ac64,
            ports_of(&xhci.protocols, 2),
            ports_of(&xhci.protocols, 3),
        );
        Ok(xhci)
    }

    /// Programs a halted, reset controller with this driver's memory: MaxSlotsEn, DCBAAP,
    /// the Command Ring, Interrupter 0 with its Event Ring and interrupts enabled, then Run.
    fn run(&mut self) -> Result<(), Error> {
        let hal = &self.hal;
        let caps = &self.caps;
        let op = usize::from(caps.caplength);
        let config = hal.read32(op + CONFIG);
        hal.write32(op + CONFIG, (config & !0xff) | u32::from(caps.max_slots));
        hal.write64(op + DCBAAP, self.dcbaa.phys());
        let ring = &self.command_ring;
        hal.write64(
            op + CRCR,
            ring.phys() | if ring.cycle_state() { CRCR_RCS } else { 0 },
        );
        let ir = caps.rtsoff + INTERRUPTER_0;
        hal.write32(ir + ERSTSZ, self.event_ring.erst_size());
        hal.write64(ir + ERDP, self.event_ring.dequeue_pointer());
        // ERSTBA last: writing it makes the controller read the table (4.9.4).
        hal.write64(ir + ERSTBA, self.event_ring.erst_phys());
        hal.write32(ir + IMOD, IMODI);
        hal.write32(ir + IMAN, IMAN_IP | IMAN_IE);
        hal.write32(op + USBSTS, USBSTS_EINT);

        let cmd = hal.read32(op + USBCMD);
        hal.write32(op + USBCMD, cmd | USBCMD_RS | USBCMD_INTE);
        let until = hal.now_micros() + RUN_TIMEOUT_US;
        while hal.read32(op + USBSTS) & USBSTS_HCH != 0 {
            if hal.now_micros() > until {
                // Take Run back so a late start cannot DMA into the memory dropped here.
                hal.write32(op + USBCMD, cmd & !USBCMD_RS);
                return Err(Error::Timeout("run"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Recovers from a Host System Error or Host Controller Error (4.24.1): every transfer
    /// fails with `why`, every device is given up (each reported by
    /// [`Controller::take_detached`] and logged), the controller is halted and reset and
    /// brought up again on fresh memory, and the root ports are enumerated anew. Returns
    /// the devices found. When the reset itself fails the controller is dead: its memory is
    /// kept (it may still be written by the controller) and the error returned.
    pub fn restart(&mut self, why: Error) -> Result<Vec<UsbDevice>, Error> {
        let queued: Vec<PendingTd> = self
            .slots
            .iter_mut()
            .flat_map(|s| s.endpoints.iter_mut())
            .flat_map(|e| core::mem::take(&mut e.pending))
            .collect();
        warn!(
            "event=xhci_restart reason={why} transfers_failed={} devices={}",
            queued.len(),
            self.slots.len()
        );
        for td in queued {
            self.finish(td, Err(why));
        }
        halt_and_reset(&self.hal)?;
        // The controller references none of its memory now.
        for slot in core::mem::take(&mut self.slots) {
            let busid = hub::busid(&self.root_port(slot.port), &slot.hub_ports);
            info!(
                "event=usb_device_gone busid={busid} port={} slot={} reason=controller_reset",
                slot.port, slot.slot_id
            );
            self.detached.push((slot.slot_id, busid));
        }
        self.hubs.clear();
        self.port_changes.clear();
        let memory = ControllerMemory::new(&mut self.hal, &self.caps)?;
        self.dcbaa = memory.dcbaa;
        self._scratchpad = memory.scratchpad;
        self.command_ring = memory.command_ring;
        self.event_ring = memory.event_ring;
        self.run()?;
        info!("event=xhci_running after=restart");
        Ok(self.enumerate_root_ports())
    }

    /// Stops the controller (Run/Stop cleared, HCHalted awaited) so its memory can be
    /// dropped. If it does not halt, the caller must not free its memory
    /// (`core::mem::forget` the controller).
    pub fn halt(&mut self) -> Result<(), Error> {
        let op = self.op();
        let cmd = self.hal.read32(op + USBCMD);
        self.hal
            .write32(op + USBCMD, cmd & !(USBCMD_RS | USBCMD_INTE));
        let until = self.hal.now_micros() + RUN_TIMEOUT_US;
        while self.hal.read32(op + USBSTS) & USBSTS_HCH == 0 {
            if self.hal.now_micros() > until {
                return Err(Error::Timeout("halt"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// The capability registers.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn op(&self) -> usize {
        usize::from(self.caps.caplength)
    }

    fn ring_doorbell(&self, slot: u8, target: u32) {
        self.hal
            .write32(self.caps.dboff + usize::from(slot) * 4, target);
    }

    /// Takes the next event, waiting until `until` (microseconds) for `what`, and moves
    /// ERDP past it.
    fn next_event(&mut self, until: u64, what: &'static str) -> Result<event::Allowed, Error> {
        loop {
            if let Some(raw) = self.event_ring.pop() {
                self.unacknowledged += 1;
                if self.unacknowledged >= ERDP_BATCH || !self.event_ring.has_next() {
                    self.acknowledge_events();
                }
                match event::Allowed::try_from(raw) {
                    Ok(e) => return Ok(e),
                    Err(raw) => {
                        debug!(
                            "event=xhci_unknown_event trb_type={} dwords={raw:08x?}",
                            (raw[3] >> 10) & 0x3f
                        );
                        continue;
                    }
                }
            }
            let status = self.hal.read32(self.op() + USBSTS);
            if status & USBSTS_HSE != 0 {
                return Err(Error::HostSystemError);
            }
            if status & USBSTS_HCE != 0 {
                return Err(Error::HostControllerError);
            }
            if self.hal.now_micros() > until {
                return Err(Error::Timeout(what));
            }
            core::hint::spin_loop();
        }
    }

    /// Writes the Event Ring Dequeue Pointer (with Event Handler Busy cleared) past the
    /// events taken since it was last written (4.9.4): when the last event written so far
    /// is taken, or every [`ERDP_BATCH`] events, not once an event (each write is an MMIO
    /// write, a trap to the device model when the controller is emulated).
    fn acknowledge_events(&mut self) {
        if self.unacknowledged == 0 {
            return;
        }
        self.unacknowledged = 0;
        let ir = self.caps.rtsoff + INTERRUPTER_0;
        self.hal
            .write64(ir + ERDP, self.event_ring.dequeue_pointer() | ERDP_EHB);
    }

    /// Keeps what an event not waited for says.
    fn note(&mut self, e: event::Allowed) {
        match e {
            event::Allowed::PortStatusChange(p) => {
                if !self.port_changes.contains(&p.port_id()) {
                    self.port_changes.push(p.port_id());
                }
            }
            event::Allowed::TransferEvent(t) => self.transfer_event(&t),
            other => debug!("event=xhci_event_ignored trb={other:?}"),
        }
    }

    /// A Transfer Event (6.4.2.1) reports on the TRB at its TRB Pointer. With Success or
    /// Short Packet the bytes done are those of the TD's data TRBs before it plus its length
    /// less the residue the event reports; a control transfer whose Data Stage ended short
    /// is done only at its Status Stage; each isochronous packet is a TD of its own with its
    /// own outcome, the transfer done with its last. Other codes end the transfer with an
    /// error, and those that halt the endpoint (4.10.2.1) leave it for
    /// [`Controller::recover_halted`]. Stopped codes come from a Stop Endpoint and end
    /// nothing. An event for a TRB no pending TD holds (the IOC after a short packet already
    /// ended its TD) is dropped.
    fn transfer_event(&mut self, t: &event::TransferEvent) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.slot_id == t.slot_id()) else {
            return;
        };
        let Some(ep) = slot.endpoints.iter_mut().find(|e| e.dci == t.endpoint_id()) else {
            return;
        };
        let at = t.trb_pointer();
        let code = t.completion_code();
        if matches!(
            code,
            Ok(CompletionCode::Stopped
                | CompletionCode::StoppedLengthInvalid
                | CompletionCode::StoppedShortPacket)
        ) {
            ep.stopped_at = Some(at);
            return;
        }
        let Some(i) = ep.pending.iter().position(|td| td.holds(at)) else {
            return;
        };
        let residue = t.trb_transfer_length();
        let ok = matches!(
            code,
            Ok(CompletionCode::Success | CompletionCode::ShortPacket)
        );
        let error = match code {
            Ok(CompletionCode::StallError) => Error::Stall,
            Ok(CompletionCode::BabbleDetectedError) => Error::Babble,
            code => Error::Transfer(code_of(code)),
        };
        let td = &mut ep.pending[i];
        let last = at == td.last();
        let result = match td.kind {
            TdKind::Normal => {
                if ok {
                    Ok(td.bytes_to(at, residue, 0))
                } else {
                    Err(error)
                }
            }
            TdKind::Control => {
                if ok && !last {
                    // The Data Stage ended short; the Status Stage follows.
                    if code == Ok(CompletionCode::ShortPacket) {
                        td.short = Some(td.bytes_to(at, residue, 0));
                    }
                    return;
                }
                let all = td.bytes_to(td.last(), 0, 0);
                if ok {
                    Ok(td.short.unwrap_or(all))
                } else {
                    Err(error)
                }
            }
            TdKind::Isochronous => {
                let packet = td
                    .trbs
                    .iter()
                    .find(|&&(a, _)| a == at)
                    .map_or(0, |&(_, info)| info.packet);
                let outcome = IsoOutcome {
                    actual_length: if ok {
                        td.bytes_to(at, residue, packet)
                    } else {
                        0
                    },
                    status: if ok { Ok(()) } else { Err(error) },
                };
                // A Missed Service Error names the last TD skipped: those before it
                // without an outcome were missed too.
                for p in &mut td.packets[..usize::from(packet)] {
                    if p.is_none() && code == Ok(CompletionCode::MissedServiceError) {
                        *p = Some(outcome);
                    }
                }
                if let Some(p) = td.packets.get_mut(usize::from(packet)) {
                    p.get_or_insert(outcome);
                }
                if !last && td.packets.iter().any(Option::is_none) {
                    return;
                }
                Ok(td
                    .packets
                    .iter()
                    .map(|p| p.map_or(0, |p| p.actual_length))
                    .sum())
            }
        };
        let halts = td.kind != TdKind::Isochronous
            && matches!(
                code,
                Ok(CompletionCode::StallError
                    | CompletionCode::BabbleDetectedError
                    | CompletionCode::UsbTransactionError
                    | CompletionCode::SplitTransactionError)
            );
        let td = ep.pending.remove(i);
        if i == 0 {
            ep.ring.complete(td.last());
        }
        if halts {
            ep.halted = true;
        }
        let packets = td
            .packets
            .iter()
            .map(|p| {
                p.unwrap_or(IsoOutcome {
                    actual_length: 0,
                    status: Err(Error::Transfer(CompletionCode::MissedServiceError as u8)),
                })
            })
            .collect();
        self.completions.push((
            td.id,
            Completed {
                result,
                packets,
                start_frame: td.start_frame,
            },
        ));
    }

    /// Takes every pending event without waiting (for the main loop, when the interrupt
    /// counter moved), then resets the endpoints a transfer error halted. Returns how many
    /// events there were, or the controller error that stops the controller
    /// ([`Controller::restart`] recovers from it).
    pub fn poll_events(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        loop {
            match self.next_event(0, "poll") {
                Ok(e) => {
                    self.note(e);
                    n += 1;
                }
                Err(Error::Timeout(_)) => break,
                Err(e) => return Err(e),
            }
        }
        self.recover_halted()?;
        Ok(n)
    }

    /// The error USBSTS reports, if the controller failed: Host System Error or Host
    /// Controller Error. Neither interrupts, so the main loop looks now and then.
    pub fn error(&self) -> Option<Error> {
        let status = self.hal.read32(self.op() + USBSTS);
        if status & USBSTS_HSE != 0 {
            Some(Error::HostSystemError)
        } else if status & USBSTS_HCE != 0 {
            Some(Error::HostControllerError)
        } else {
            None
        }
    }

    /// The Device Slots of the devices present now.
    pub fn occupied_slots(&self) -> impl Iterator<Item = u8> + '_ {
        self.slots.iter().map(|s| s.slot_id)
    }

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

    /// The hub ports named by the status change transfers that completed: each is looked
    /// at as a root port is, and the next transfer queued.
    fn handle_hub_changes(&mut self) -> Vec<UsbDevice> {
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
        let segment = [Segment {
            phys: watch.buf.phys(),
            len: watch.len,
        }];
        let (slot_id, endpoint) = (watch.hub.slot_id, watch.endpoint);
        let id = self.queue_transfer(slot_id, endpoint, Direction::In, &segment)?;
        self.hubs[w].queued = id;
        Ok(())
    }

    /// Queues a command, rings the Host Controller doorbell and waits for its completion.
    fn command(&mut self, trb: [u32; 4]) -> Result<event::CommandCompletion, Error> {
        let at = self.command_ring.push(trb)?;
        self.ring_doorbell(0, 0);
        let until = self.hal.now_micros() + COMMAND_TIMEOUT_US;
        loop {
            match self.next_event(until, "command")? {
                event::Allowed::CommandCompletion(c) if c.command_trb_pointer() == at => {
                    self.command_ring.complete(at);
                    return match c.completion_code() {
                        Ok(CompletionCode::Success) => Ok(c),
                        code => Err(Error::Command(code_of(code))),
                    };
                }
                other => self.note(other),
            }
        }
    }

    /// A No Op Command: proves the Command Ring, the Event Ring and the doorbell.
    pub fn noop(&mut self) -> Result<(), Error> {
        self.command(command::Noop::new().into_raw()).map(|_| ())
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
    fn root_port(&self, port: u8) -> RootPort {
        RootPort::new(&self.protocols, port)
    }

    fn portsc_offset(&self, port: u8) -> usize {
        self.op() + PORTSC + (usize::from(port) - 1) * PORT_REGISTER_SET_SIZE
    }

    /// PORTSC of root port `port` (1..=MaxPorts).
    fn portsc(&self, port: u8) -> Portsc {
        Portsc(self.hal.read32(self.portsc_offset(port)))
    }

    fn write_portsc(&self, port: u8, value: u32) {
        self.hal.write32(self.portsc_offset(port), value);
    }

    /// Resets a root port and waits for Port Reset Change (4.3.1, 4.19.5): a Port Reset for
    /// a USB2 port, a Warm Port Reset for a USB3 port whose link did not train. Returns
    /// PORTSC after.
    fn reset_port(&mut self, port: u8, warm: bool) -> Result<Portsc, Error> {
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

    fn delay(&self, us: u64) {
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
    fn found(&mut self, d: UsbDevice, found: &mut Vec<UsbDevice>) {
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
        let is_hub = d.class == hub::HUB_CLASS;
        found.push(d.clone());
        if is_hub {
            self.enumerate_hub(&d, found);
        }
    }

    /// Configures a hub, powers its ports, enumerates the device on each connected one
    /// (USB 2.0 11.12, 11.24), and queues a transfer on its status change endpoint so later
    /// changes are seen. Every failure is logged and skips what it concerns only.
    fn enumerate_hub(&mut self, hub: &UsbDevice, found: &mut Vec<UsbDevice>) {
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
            let power = self.hub_port_request(slot_id, hub::SET_FEATURE, hub::PORT_POWER, port);
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
            let segment = [Segment {
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
            hub::REQUEST_TYPE_CLASS_DEVICE_IN,
            hub::GET_DESCRIPTOR,
            u16::from(hub::DESCRIPTOR_HUB) << 8,
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
    fn hub_port_request(
        &mut self,
        slot_id: u8,
        request: u8,
        feature: u16,
        port: u8,
    ) -> Result<(), Error> {
        self.control_no_data(
            slot_id,
            hub::REQUEST_TYPE_CLASS_OTHER_OUT,
            request,
            feature,
            u16::from(port),
        )
    }

    /// GET_STATUS of a hub port.
    fn hub_port_status(&mut self, slot_id: u8, port: u8) -> Result<PortStatus, Error> {
        let bytes = self.control_in(
            slot_id,
            hub::REQUEST_TYPE_CLASS_OTHER_IN,
            hub::GET_STATUS,
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
            self.hub_port_request(slot_id, hub::CLEAR_FEATURE, feature, port)?;
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
        self.hub_port_request(slot_id, hub::SET_FEATURE, hub::PORT_RESET, port)
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
    fn wait_hub_port_reset(&mut self, hub_slot: u8, port: u8) -> Result<PortStatus, Error> {
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
                self.hub_port_request(hub, hub::SET_FEATURE, hub::PORT_RESET, last)?;
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

    /// The device at `hub_ports` behind `root_port` has gone, and with it every device
    /// behind it: their slots are disabled and their memory released (once the controller
    /// no longer references it), the devices behind hubs before the hubs.
    fn detach(&mut self, root_port: RootPort, hub_ports: &[u8]) {
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

    /// Disable Slot (4.6.4): the controller stops the slot's endpoints and forgets its
    /// contexts, so their memory may be reused.
    fn disable_slot(&mut self, slot_id: u8) -> Result<(), Error> {
        let disable = *command::DisableSlot::new().set_slot_id(slot_id);
        self.command(disable.into_raw())?;
        self.dcbaa.write64(usize::from(slot_id) * 8, 0);
        Ok(())
    }

    /// Resets the root port when it needs it, and enumerates the device on it.
    fn enumerate(&mut self, root_port: RootPort) -> Result<UsbDevice, Error> {
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
    fn enumerate_at(&mut self, at: Attachment) -> Result<UsbDevice, Error> {
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
        let head = self.get_descriptor(slot_id, DESCRIPTOR_DEVICE << 8, 0, 8)?;
        if head.len() < 8 || head[1] != DESCRIPTOR_DEVICE as u8 {
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
        let d = self.get_descriptor(slot_id, DESCRIPTOR_DEVICE << 8, 0, DEVICE_DESCRIPTOR_SIZE)?;
        if d.len() < usize::from(DEVICE_DESCRIPTOR_SIZE) || d[1] != DESCRIPTOR_DEVICE as u8 {
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

    /// DMA memory from the platform, for transfer buffers.
    pub fn dma_alloc(&mut self, bytes: usize, align: usize) -> Result<H::Dma, Error> {
        alloc(&mut self.hal, bytes, align)
    }

    fn slot_index(&self, slot_id: u8) -> Result<usize, Error> {
        self.slots
            .iter()
            .position(|s| s.slot_id == slot_id)
            .ok_or(Error::NoDevice)
    }

    /// Configuration descriptor `n` (GET_DESCRIPTOR(CONFIGURATION) of its header, then of
    /// wTotalLength bytes), parsed.
    fn configuration_at(&mut self, slot_id: u8, n: u8) -> Result<Configuration, Error> {
        let value = DESCRIPTOR_CONFIGURATION << 8 | u16::from(n);
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
    fn read_configurations(&mut self, slot_id: u8) -> Result<Vec<Configuration>, Error> {
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
            REQUEST_TYPE_INTERFACE,
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
            REQUEST_TYPE_ENDPOINT,
            CLEAR_FEATURE,
            FEATURE_ENDPOINT_HALT,
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

    /// Completes `td`, taken off its endpoint, with `result` (every isochronous packet too).
    fn finish(&mut self, td: PendingTd, result: Result<usize, Error>) {
        let status = result.map(|_| ());
        let packets = td
            .packets
            .iter()
            .map(|p| {
                p.unwrap_or(IsoOutcome {
                    actual_length: 0,
                    status,
                })
            })
            .collect();
        self.completions.push((
            td.id,
            Completed {
                result,
                packets,
                start_frame: td.start_frame,
            },
        ));
    }

    /// A control request without a Data Stage on the device's Default Control Endpoint:
    /// class requests such as HID SET_PROTOCOL and SET_IDLE.
    pub fn control(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
    ) -> Result<(), Error> {
        self.control_no_data(slot_id, request_type, request, value, w_index)
    }

    /// The slot index and Device Context Index of endpoint `endpoint` (1..=15) in
    /// `direction`.
    fn endpoint_index(
        &self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
    ) -> Result<(usize, usize), Error> {
        if endpoint == 0 || endpoint > 15 {
            return Err(Error::NoEndpoint);
        }
        let dci = 2 * endpoint + u8::from(direction == Direction::In);
        let index = self.slot_index(slot_id)?;
        let e = self.slots[index]
            .endpoints
            .iter()
            .position(|e| e.dci == dci)
            .ok_or(Error::NoEndpoint)?;
        Ok((index, e))
    }

    /// Queues a bulk or interrupt transfer over `segments` on endpoint `endpoint` (1..=15)
    /// in `direction`, and rings its doorbell. Its result is taken with
    /// [`Controller::take_completion`] or [`Controller::take_completed`] once
    /// [`Controller::poll_events`] (or a wait for another event) has seen it. The segments
    /// must stay untouched until then.
    pub fn queue_transfer(
        &mut self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
        segments: &[Segment],
    ) -> Result<TransferId, Error> {
        let (index, e) = self.endpoint_index(slot_id, endpoint, direction)?;
        let ep = &self.slots[index].endpoints[e];
        if !matches!(
            ep.endpoint.transfer_type,
            TransferType::Bulk | TransferType::Interrupt
        ) {
            return Err(Error::BadTransfer);
        }
        let trbs =
            normal_td(segments, ep.endpoint.max_packet_size).map_err(|_| Error::BadTransfer)?;
        self.queue_trbs(index, e, trbs, TdKind::Normal, 0)
    }

    /// Queues a control transfer on the Default Control Endpoint: `setup` is the SETUP
    /// packet, `segments` the Data Stage's buffer (empty for none) in `direction` (bit 7 of
    /// bmRequestType). Completes as [`Controller::queue_transfer`]'s transfers do; a STALL
    /// (a request the device refuses) resets the endpoint for the next one.
    pub fn queue_control(
        &mut self,
        slot_id: u8,
        setup: [u8; 8],
        direction: Direction,
        segments: &[Segment],
    ) -> Result<TransferId, Error> {
        let index = self.slot_index(slot_id)?;
        let mps = self.slots[index].endpoints[0].endpoint.max_packet_size;
        let trbs = control_trbs(setup, direction, segments, mps).map_err(|_| Error::BadTransfer)?;
        self.queue_trbs(index, 0, trbs, TdKind::Control, 0)
    }

    /// Queues an isochronous transfer: `packets` name their bytes in the buffer `segments`,
    /// each its own TD with its own outcome ([`Completed::packets`]); the transfer starts
    /// as soon as the controller can schedule it.
    pub fn queue_isochronous(
        &mut self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
        segments: &[Segment],
        packets: &[IsoPacket],
    ) -> Result<TransferId, Error> {
        let (index, e) = self.endpoint_index(slot_id, endpoint, direction)?;
        let speed = self.slots[index].speed;
        let ep = &self.slots[index].endpoints[e].endpoint;
        if ep.transfer_type != TransferType::Isochronous {
            return Err(Error::BadTransfer);
        }
        let burst = if matches!(speed, Speed::Super | Speed::SuperPlus) {
            ep.max_burst
        } else {
            0
        };
        let trbs = isoch_trbs(
            segments,
            packets,
            direction,
            ep.max_packet_size,
            burst,
            max_esit_payload(ep, speed) as usize,
        )
        .map_err(|_| Error::BadTransfer)?;
        // MFINDEX counts 125 µs microframes; frames are 1 ms, 11 bits.
        let frame = ((self.hal.read32(self.caps.rtsoff + MFINDEX) >> 3) & 0x7ff) as u16;
        self.queue_trbs(index, e, trbs, TdKind::Isochronous, frame)
    }

    /// Puts a transfer's TRBs on endpoint `e` of slot `index` and rings its doorbell (a
    /// halted endpoint's is rung once it is reset).
    fn queue_trbs(
        &mut self,
        index: usize,
        e: usize,
        trbs: TransferTrbs,
        kind: TdKind,
        start_frame: u16,
    ) -> Result<TransferId, Error> {
        let id = TransferId(self.next_transfer);
        let slot = &mut self.slots[index];
        let slot_id = slot.slot_id;
        let ep = &mut slot.endpoints[e];
        let packets = if kind == TdKind::Isochronous {
            trbs.info.last().map_or(0, |i| usize::from(i.packet) + 1)
        } else {
            0
        };
        let at = ep.ring.push_td(&trbs.trbs)?;
        ep.pending.push(PendingTd {
            id,
            trbs: at.into_iter().zip(trbs.info).collect(),
            kind,
            short: None,
            packets: alloc::vec![None; packets],
            start_frame,
        });
        self.next_transfer += 1;
        let (dci, halted) = (ep.dci, ep.halted);
        if !halted {
            self.ring_doorbell(slot_id, u32::from(dci));
        }
        Ok(id)
    }

    /// The result of a finished transfer: the bytes transferred (fewer than queued after a
    /// short packet), or why it failed. `None` while it runs.
    pub fn take_completion(&mut self, id: TransferId) -> Option<Result<usize, Error>> {
        let i = self.completions.iter().position(|c| c.0 == id)?;
        Some(self.completions.remove(i).1.result)
    }

    /// Transfer `id`'s outcome with its isochronous packets, once it finished.
    pub fn take_completed_of(&mut self, id: TransferId) -> Option<Completed> {
        let i = self.completions.iter().position(|c| c.0 == id)?;
        Some(self.completions.remove(i).1)
    }

    /// The oldest finished transfer not taken yet.
    pub fn take_completed(&mut self) -> Option<(TransferId, Completed)> {
        (!self.completions.is_empty()).then(|| self.completions.remove(0))
    }

    /// The devices gone since the last call, as (slot, bus id): their transfers completed
    /// with [`Error::NoDevice`] before.
    pub fn take_detached(&mut self) -> Vec<(u8, String)> {
        core::mem::take(&mut self.detached)
    }

    /// Waits up to `timeout_us` for transfer `id` (handling every other event meanwhile);
    /// one that does not finish in time is cancelled and [`Error::Timeout`] returned.
    pub fn wait(&mut self, id: TransferId, timeout_us: u64) -> Result<usize, Error> {
        let until = (self.hal.now_micros() + timeout_us).min(self.deadline.unwrap_or(u64::MAX));
        loop {
            if let Some(result) = self.take_completion(id) {
                return result;
            }
            match self.next_event(until, "transfer") {
                Ok(e) => {
                    self.note(e);
                    self.recover_halted()?;
                }
                Err(Error::Timeout(what)) => {
                    self.cancel(id)?;
                    return match self.take_completion(id) {
                        // It finished while being cancelled.
                        Some(Ok(n)) => Ok(n),
                        _ => Err(Error::Timeout(what)),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A bulk or interrupt transfer, waited for up to `timeout_us`. After a STALL the
    /// endpoint is recovered on both sides (Reset Endpoint and Set TR Dequeue Pointer on the
    /// controller, CLEAR_FEATURE(ENDPOINT_HALT) on the device) and [`Error::Stall`]
    /// returned; after a timeout the transfer is cancelled so the controller no longer
    /// touches `segments`. When that fails too, its error is returned and the segments must
    /// never be reused.
    pub fn transfer(
        &mut self,
        slot_id: u8,
        endpoint: u8,
        direction: Direction,
        segments: &[Segment],
        timeout_us: u64,
    ) -> Result<usize, Error> {
        let id = self.queue_transfer(slot_id, endpoint, direction, segments)?;
        let result = self.wait(id, timeout_us);
        if result == Err(Error::Stall) {
            let address = endpoint | if direction == Direction::In { 0x80 } else { 0 };
            self.control_no_data(
                slot_id,
                REQUEST_TYPE_ENDPOINT,
                CLEAR_FEATURE,
                FEATURE_ENDPOINT_HALT,
                u16::from(address),
            )?;
            info!(
                "event=usb_endpoint_recovered slot={slot_id} endpoint={address:#04x} after=stall"
            );
        }
        result
    }

    /// Where transfer `id` is queued: slot ID and endpoint index.
    fn find_pending(&self, id: TransferId) -> Option<(u8, usize)> {
        self.slots.iter().find_map(|s| {
            s.endpoints
                .iter()
                .position(|e| e.pending.iter().any(|td| td.id == id))
                .map(|e| (s.slot_id, e))
        })
    }

    /// Cancels transfer `id` (4.6.9): Stop Endpoint, its TRBs turned into No Ops, and when
    /// the endpoint stopped inside it, Set TR Dequeue Pointer past it; then the endpoint
    /// runs on with the other transfers. It completes with [`Error::Cancelled`], or with
    /// its real result if it finished before the endpoint stopped. A transfer the
    /// endpoint had in progress and whose TRBs the controller had already passed when it
    /// stopped (QEMU fetches a whole TD before it runs it) is started again from its first
    /// TRB. Returns false when `id` is neither queued nor finished untaken.
    pub fn cancel(&mut self, id: TransferId) -> Result<bool, Error> {
        let Some((slot_id, e)) = self.find_pending(id) else {
            return Ok(self.completions.iter().any(|c| c.0 == id));
        };
        let index = self.slot_index(slot_id)?;
        let (dci, halted) = {
            let ep = &mut self.slots[index].endpoints[e];
            ep.stopped_at = None;
            (ep.dci, ep.halted)
        };
        if !halted {
            let stop = command::StopEndpoint::new()
                .set_slot_id(slot_id)
                .set_endpoint_id(dci)
                .into_raw();
            match self.command(stop) {
                // Context State Error: it stopped or halted by itself meanwhile.
                Ok(_) | Err(Error::Command(19)) => {}
                Err(e) => return Err(e),
            }
        }
        let ctx = self.caps.context_size;
        let index = self.slot_index(slot_id)?;
        let slot = &mut self.slots[index];
        let at = usize::from(dci) * ctx + 8;
        let dequeue = (u64::from(slot.output_context.read32(at))
            | u64::from(slot.output_context.read32(at + 4)) << 32)
            & !0xf;
        let ep = &mut slot.endpoints[e];
        let halted = ep.halted;
        let Some(i) = ep.pending.iter().position(|td| td.id == id) else {
            // It finished while the endpoint stopped.
            if !ep.pending.is_empty() && !halted {
                self.ring_doorbell(slot_id, u32::from(dci));
            }
            return Ok(true);
        };
        let td = ep.pending.remove(i);
        for &(a, _) in &td.trbs {
            ep.ring.make_noop(a);
        }
        // Where the endpoint goes on from: a transfer it was running whose TRBs the
        // controller had passed is run again; otherwise past the cancelled one if it
        // stopped inside it; otherwise where it stopped.
        let stopped_live = ep
            .stopped_at
            .take()
            .and_then(|at| ep.pending.iter().find(|t| t.holds(at)));
        let target = match stopped_live {
            _ if halted => None,
            Some(live) if !live.holds(dequeue) => {
                let first = live.trbs[0].0;
                ep.ring.cycle_of(first).map(|c| (first, c))
            }
            _ if td.holds(dequeue) => ep.ring.after(td.last()),
            _ => None,
        };
        if i == 0 {
            ep.ring.complete(td.last());
        }
        let restart = !halted && !ep.pending.is_empty();
        self.finish(td, Err(Error::Cancelled));
        if let Some((to, cycle)) = target {
            self.set_dequeue(slot_id, dci, to, cycle)?;
        }
        if restart {
            self.ring_doorbell(slot_id, u32::from(dci));
        }
        Ok(true)
    }

    /// Set TR Dequeue Pointer (4.6.10).
    fn set_dequeue(&mut self, slot_id: u8, dci: u8, to: u64, cycle: bool) -> Result<(), Error> {
        let mut set = command::SetTrDequeuePointer::new();
        set.set_new_tr_dequeue_pointer(to)
            .set_endpoint_id(dci)
            .set_slot_id(slot_id);
        if cycle {
            set.set_dequeue_cycle_state();
        }
        self.command(set.into_raw()).map(|_| ())
    }

    /// Resets every endpoint a transfer error halted (4.6.8): Reset Endpoint, then Set TR
    /// Dequeue Pointer to the next transfer queued (or the enqueue pointer), whose doorbell
    /// is rung. The device's own halt after a STALL stays until CLEAR_FEATURE(ENDPOINT_HALT)
    /// (the class driver's or guest's to send); on EP0 the next SETUP ends it (USB 2.0
    /// 8.5.3.4).
    fn recover_halted(&mut self) -> Result<(), Error> {
        loop {
            let Some((slot_id, e)) = self.slots.iter().find_map(|s| {
                s.endpoints
                    .iter()
                    .position(|e| e.halted)
                    .map(|e| (s.slot_id, e))
            }) else {
                return Ok(());
            };
            let index = self.slot_index(slot_id)?;
            let ep = &mut self.slots[index].endpoints[e];
            // Cleared first: a command that fails must not make this loop for ever.
            ep.halted = false;
            let dci = ep.dci;
            let reset = command::ResetEndpoint::new()
                .set_slot_id(slot_id)
                .set_endpoint_id(dci)
                .into_raw();
            match self.command(reset) {
                Ok(_) | Err(Error::Command(19)) => {}
                Err(e) => return Err(e),
            }
            let index = self.slot_index(slot_id)?;
            let ep = &mut self.slots[index].endpoints[e];
            let (to, cycle) = match ep.pending.first() {
                Some(td) => {
                    let first = td.trbs[0].0;
                    (
                        first,
                        ep.ring.cycle_of(first).unwrap_or(ep.ring.cycle_state()),
                    )
                }
                None => {
                    ep.ring.skip_to_enqueue();
                    (ep.ring.enqueue_pointer(), ep.ring.cycle_state())
                }
            };
            let queued = !ep.pending.is_empty();
            self.set_dequeue(slot_id, dci, to, cycle)?;
            debug!("event=usb_endpoint_reset slot={slot_id} dci={dci} queued={queued}");
            if queued {
                self.ring_doorbell(slot_id, u32::from(dci));
            }
        }
    }

    /// Waits for a control request the driver queued itself (up to [`TRANSFER_TIMEOUT_US`]).
    fn wait_request(&mut self, id: TransferId) -> Result<(), Error> {
        self.wait(id, TRANSFER_TIMEOUT_US).map(|_| ())
    }

    /// A control transfer without a Data Stage the driver makes itself, waited for.
    fn control_no_data(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
    ) -> Result<(), Error> {
        let id = self.queue_no_data(slot_id, request_type, request, value, w_index)?;
        self.wait_request(id)
    }

    /// A control transfer without a Data Stage the driver makes itself, queued.
    fn queue_no_data(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
    ) -> Result<TransferId, Error> {
        let setup = setup_packet(request_type, request, value, w_index, 0);
        self.queue_control(slot_id, setup, Direction::Out, &[])
    }

    /// GET_DESCRIPTOR on the Default Control Endpoint.
    fn get_descriptor(
        &mut self,
        slot_id: u8,
        value: u16,
        language: u16,
        length: u16,
    ) -> Result<Vec<u8>, Error> {
        self.control_in(
            slot_id,
            REQUEST_TYPE_DEVICE_TO_HOST,
            GET_DESCRIPTOR,
            value,
            language,
            length,
        )
    }

    /// The string descriptor `i` in the device's first language, as text.
    fn string(&mut self, slot_id: u8, i: u8) -> Result<String, Error> {
        let languages = self.get_descriptor(slot_id, DESCRIPTOR_STRING << 8, 0, 255)?;
        let language = if languages.len() >= 4 {
            u16::from_le_bytes([languages[2], languages[3]])
        } else {
            LANGID_EN_US
        };
        let s = self.get_descriptor(
            slot_id,
            DESCRIPTOR_STRING << 8 | u16::from(i),
            language,
            255,
        )?;
        if s.len() < 2 || s[1] != DESCRIPTOR_STRING as u8 {
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

    /// A control transfer with an IN Data Stage the driver makes itself, into the slot's
    /// own buffer (a page at most), waited for. Returns the bytes received (fewer than
    /// `length` after a short packet).
    fn control_in(
        &mut self,
        slot_id: u8,
        request_type: u8,
        request: u8,
        value: u16,
        w_index: u16,
        length: u16,
    ) -> Result<Vec<u8>, Error> {
        let index = self.slot_index(slot_id)?;
        let data = &self.slots[index].data;
        let length = usize::from(length).min(data.len());
        let segment = [Segment {
            phys: data.phys(),
            len: length,
        }];
        let setup = setup_packet(request_type, request, value, w_index, length as u16);
        let id = self.queue_control(slot_id, setup, Direction::In, &segment)?;
        let received = self.wait(id, TRANSFER_TIMEOUT_US)?.min(length);
        let index = self.slot_index(slot_id)?;
        let mut bytes = alloc::vec![0; received];
        self.slots[index].data.read_bytes(0, &mut bytes);
        Ok(bytes)
    }
}

/// The 8 bytes of a SETUP packet (USB 2.0 9.3).
fn setup_packet(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> [u8; 8] {
    let [v0, v1] = value.to_le_bytes();
    let [i0, i1] = index.to_le_bytes();
    let [l0, l1] = length.to_le_bytes();
    [request_type, request, v0, v1, i0, i1, l0, l1]
}

/// Dwords 0 to 2 of a slot's Slot Context (6.2.2) with `entries` Context Entries: Route
/// String, Speed, Root Hub Port Number; for a hub the Hub flag, Number of Ports and (high
/// speed) TT Think Time; for a low- or full-speed device behind a high-speed hub its TT Hub
/// Slot ID and TT Port Number. MTT stays 0: hubs run in their default single-TT setting
/// (alternate setting 0 of their interface).
fn slot_context<D>(slot: &Slot<D>, entries: u32) -> [u32; 3] {
    slot_context_of(
        slot.speed,
        slot.port,
        &slot.hub_ports,
        slot.hub.as_ref(),
        slot.tt,
        entries,
    )
}

fn slot_context_of(
    speed: Speed,
    root_port: u8,
    hub_ports: &[u8],
    hub: Option<&HubDescriptor>,
    tt: Option<Tt>,
    entries: u32,
) -> [u32; 3] {
    // Checked when the device was found behind its hub.
    let route = hub::route_string(hub_ports).unwrap_or(0);
    let mut dword0 = (entries << 27) | (u32::from(speed.psiv()) << 20) | route;
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
fn ep0_dword1(max_packet_size: u16) -> u32 {
    (3 << 1) | (4 << 3) | (u32::from(max_packet_size) << 16)
}

fn ports_of(protocols: &[Protocol], major: u8) -> u32 {
    protocols
        .iter()
        .filter(|p| p.major == major)
        .map(|p| u32::from(p.count))
        .sum()
}

fn alloc<H: Hal>(hal: &mut H, bytes: usize, align: usize) -> Result<H::Dma, Error> {
    hal.dma_alloc(bytes, align).ok_or(Error::NoMemory)
}

#[cfg(test)]
mod tests;
