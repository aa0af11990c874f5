//! A simulated USB host with device models: [`SimHost`] implements [`UsbHost`] over devices
//! that live in memory, so the backend's URB path can be tested (and benchmarked) on the
//! build machine, and demonstrated inside the unikernel without hardware.
//!
//! The host plays the part of the controller and of each device's USB 2.0 chapter 9 logic:
//! it answers the standard requests from the model's descriptors, keeps the configuration,
//! alternate settings and halted endpoints, checks every transfer against the endpoints that
//! exist now, and moves the bytes between the transfer's pages and the model. Like many
//! devices, it decodes SET_CONFIGURATION and SET_INTERFACE by bRequest alone, whatever
//! recipient bmRequestType names: what the backend passes on, the device obeys. A
//! [`DeviceModel`] only supplies descriptors, class and vendor requests, and the data of its
//! own endpoints. Three models come with it: [`MassStorage`] (Bulk-Only SCSI disk),
//! [`Keyboard`] (boot HID keyboard) and [`Hub`].
//!
//! Transfers complete on the next [`UsbHost::poll`] unless a device was given a latency
//! ([`SimHost::set_latency`]), or its endpoint NAKs (a keyboard without a key pressed), in
//! which case they stay in flight, as on real hardware, until cancelled or answered.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;

use xen::abi::PAGE_SIZE;
use xen::page::SharedPage;

use crate::host::{
    ClassSet, Completion, DeviceInfo, Direction, HostEvent, InterfaceClasses, Segment, Speed,
    Transfer, TransferError, TransferSegments, TransferType, UsbHost, Vet, MAX_CONFIGURATIONS,
};

// Standard requests (USB 2.0 table 9-4).
const GET_STATUS: u8 = 0x00;
const CLEAR_FEATURE: u8 = 0x01;
const GET_DESCRIPTOR: u8 = 0x06;
const GET_CONFIGURATION: u8 = 0x08;
const SET_CONFIGURATION: u8 = 0x09;
const GET_INTERFACE: u8 = 0x0a;
const SET_INTERFACE: u8 = 0x0b;
// Descriptor types (USB 2.0 table 9-5).
const DEVICE: u8 = 1;
const CONFIGURATION: u8 = 2;
const STRING: u8 = 3;
const INTERFACE: u8 = 4;
const ENDPOINT: u8 = 5;
/// Feature selector ENDPOINT_HALT (USB 2.0 table 9-6).
const ENDPOINT_HALT: u16 = 0;
/// LANGID of US English, the only language of the models' strings.
const LANGID_EN_US: u16 = 0x0409;
/// bDeviceClass of a hub.
const HUB_CLASS: u8 = 9;
/// pid.codes' vendor id for open source projects; the models use its test product ids.
const VENDOR_PID_CODES: u16 = 0x1209;

/// A SETUP packet, decoded (USB 2.0 §9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupPacket {
    /// bmRequestType: direction (bit 7), type (bits 6..5), recipient (bits 4..0).
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength: the most bytes the data stage may carry.
    pub length: u16,
}

impl SetupPacket {
    /// Decodes the 8 bytes as sent on the wire (little-endian words).
    pub fn parse(raw: &[u8; 8]) -> SetupPacket {
        SetupPacket {
            request_type: raw[0],
            request: raw[1],
            value: u16::from_le_bytes([raw[2], raw[3]]),
            index: u16::from_le_bytes([raw[4], raw[5]]),
            length: u16::from_le_bytes([raw[6], raw[7]]),
        }
    }

    fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }

    /// Whether it is a standard request (type 0), which the host answers itself.
    fn is_standard(&self) -> bool {
        (self.request_type >> 5) & 3 == 0
    }

    /// The descriptor type of a GET_DESCRIPTOR (high byte of wValue).
    fn descriptor_type(&self) -> u8 {
        (self.value >> 8) as u8
    }
}

/// How a device answers a transaction (USB 2.0 §8.4.5): with data (or acceptance), not yet
/// (the host retries, so the transfer stays in flight), or STALL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake<T> {
    /// Done: the IN data, or the OUT data was taken.
    Ack(T),
    /// Not ready; asked again on the next poll.
    Nak,
    /// The request is not supported or the endpoint is halted.
    Stall,
}

impl<T> Handshake<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Handshake<U> {
        match self {
            Handshake::Ack(t) => Handshake::Ack(f(t)),
            Handshake::Nak => Handshake::Nak,
            Handshake::Stall => Handshake::Stall,
        }
    }
}

/// The device side of a simulated device: what differs between devices. The host does the
/// standard requests from these descriptors, so a model does not.
pub trait DeviceModel: Any {
    /// The 18-byte device descriptor.
    fn device_descriptor(&self) -> Vec<u8>;
    /// The configuration descriptor `index` (0-based) with all its interface, class and
    /// endpoint descriptors, as GET_DESCRIPTOR(CONFIGURATION) returns it.
    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>>;
    /// String descriptor `index` (never 0, the language table), in US English.
    fn string(&self, index: u8) -> Option<&str>;
    /// A control request the host does not handle itself (class, vendor, or standard ones
    /// addressed to an interface): `data` is the OUT data stage; the answer is the IN data
    /// (empty for OUT requests), which the host cuts to wLength.
    fn control(&mut self, setup: &SetupPacket, data: &[u8]) -> Handshake<Vec<u8>>;
    /// An IN transfer of at most `max_len` bytes on `endpoint` (an address with bit 7 set
    /// that exists in the current configuration). Fewer bytes end it short; more is babble.
    fn data_in(&mut self, endpoint: u8, max_len: usize) -> Handshake<Vec<u8>>;
    /// An OUT transfer of `data` on `endpoint` (an address that exists in the current
    /// configuration).
    fn data_out(&mut self, endpoint: u8, data: &[u8]) -> Handshake<()>;
    /// A bus reset: back to the power-on state of the function.
    fn reset(&mut self);
    /// For [`SimHost::model`] (the workspace's minimum Rust predates trait upcasting).
    fn as_any(&self) -> &dyn Any;
    /// For [`SimHost::model_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Transfers one device saw, for tests that check every submission completed once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// Accepted by [`UsbHost::submit`].
    pub submitted: u64,
    /// Completions handed out or queued.
    pub completed: u64,
}

/// An endpoint of the active configuration and alternate settings.
#[derive(Clone, Copy, Debug)]
struct EndpointInfo {
    address: u8,
    interface: u8,
    transfer_type: TransferType,
}

/// The descriptors in a configuration descriptor, in order; stops at a malformed one.
fn descriptors(config: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = config;
    core::iter::from_fn(move || {
        let len = usize::from(*rest.first()?);
        if len < 2 || len > rest.len() {
            return None;
        }
        let (d, r) = rest.split_at(len);
        rest = r;
        Some(d)
    })
}

/// The endpoints `config` has with the alternate settings `alternates` (0 when absent).
fn active_endpoints(config: &[u8], alternates: &BTreeMap<u8, u8>) -> Vec<EndpointInfo> {
    let mut current = None;
    let mut out = Vec::new();
    for d in descriptors(config) {
        match d[1] {
            INTERFACE if d.len() >= 9 => {
                let selected = alternates.get(&d[2]).copied().unwrap_or(0);
                current = (selected == d[3]).then_some(d[2]);
            }
            ENDPOINT if d.len() >= 7 => {
                if let Some(interface) = current {
                    let transfer_type = match d[3] & 3 {
                        0 => TransferType::Control,
                        1 => TransferType::Isochronous,
                        2 => TransferType::Bulk,
                        _ => TransferType::Interrupt,
                    };
                    out.push(EndpointInfo {
                        address: d[2],
                        interface,
                        transfer_type,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The classes of every interface descriptor (alternate settings included) of `config`, or
/// `None` when it is not a whole, well-formed configuration descriptor set (what
/// xhci-driver's parser refuses).
fn classes(config: &[u8]) -> Option<ClassSet> {
    if config.len() < 9 || config[1] != CONFIGURATION {
        return None;
    }
    let total = usize::from(u16::from_le_bytes([config[2], config[3]]));
    let config = config.get(..total)?;
    let mut walked = 0;
    let mut set = ClassSet::default();
    for d in descriptors(config) {
        walked += d.len();
        if d[1] == INTERFACE {
            set.insert(*d.get(5)?);
        }
    }
    (walked == total).then_some(set)
}

/// Configuration indexes a host offers of a device whose device descriptor says it has
/// `count`: at least the first, at most [`MAX_CONFIGURATIONS`] (as the xHCI host does).
fn offered(count: u8) -> core::ops::Range<u8> {
    0..count.clamp(1, MAX_CONFIGURATIONS)
}

/// Whether `config` has alternate setting `alternate` of interface `interface`.
fn has_interface(config: &[u8], interface: u8, alternate: u8) -> bool {
    descriptors(config)
        .any(|d| d[1] == INTERFACE && d.len() >= 9 && d[2] == interface && d[3] == alternate)
}

/// Copies the first `len` bytes of the buffer out of its pages.
fn gather<P: SharedPage>(segments: &[Segment<P>], len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    let mut at = 0;
    for s in segments {
        let n = usize::from(s.len).min(len - at);
        s.page.read(usize::from(s.offset), &mut out[at..at + n]);
        at += n;
    }
    out
}

/// Copies `data` into the buffer's pages, from its start (`data` fits: callers cut it).
fn scatter<P: SharedPage>(segments: &[Segment<P>], data: &[u8]) {
    let mut at = 0;
    for s in segments {
        let n = usize::from(s.len).min(data.len() - at);
        s.page.write(usize::from(s.offset), &data[at..at + n]);
        at += n;
    }
}

/// Puts IN data a device sent into the transfer's buffer and says how it ended.
fn deliver<P: SharedPage>(t: &Transfer<P>, data: &[u8]) -> Result<usize, TransferError> {
    let len = t.length();
    let n = data.len().min(len);
    scatter(&t.segments, &data[..n]);
    if data.len() > len {
        Err(TransferError::Babble)
    } else if t.short_not_ok && n < len {
        // Linux reports this as -EREMOTEIO, which usbif has no status for but an I/O error.
        Err(TransferError::Protocol)
    } else {
        Ok(n)
    }
}

/// The address of the endpoint a transfer goes to; the default control pipe is one queue
/// for both directions.
fn address_of<P>(t: &Transfer<P>) -> u8 {
    match (t.endpoint, t.direction) {
        (0, _) => 0,
        (n, Direction::In) => n | 0x80,
        (n, Direction::Out) => n,
    }
}

struct InFlight<P> {
    transfer: Transfer<P>,
    address: u8,
    /// Polls left before it is started.
    wait: u32,
    /// A standard request the host carried out when it was asked (SET_CONFIGURATION,
    /// SET_INTERFACE, CLEAR_FEATURE): only the device's answer is still to come.
    carried_out: bool,
}

struct SimDevice<P> {
    info: DeviceInfo,
    model: Box<dyn DeviceModel>,
    /// bConfigurationValue, 0 when unconfigured.
    configuration: u8,
    alternates: BTreeMap<u8, u8>,
    endpoints: Vec<EndpointInfo>,
    halted: BTreeSet<u8>,
    stall_next: BTreeSet<u8>,
    latency: u32,
    in_flight: Vec<InFlight<P>>,
}

impl<P: SharedPage> SimDevice<P> {
    fn endpoint(&self, address: u8) -> Option<EndpointInfo> {
        self.endpoints
            .iter()
            .find(|e| e.address == address)
            .copied()
    }

    /// The configuration descriptor whose bConfigurationValue is `value`, among those offered.
    fn find_configuration(&self, value: u8) -> Option<Vec<u8>> {
        let count = self.model.device_descriptor().get(17).copied().unwrap_or(0);
        offered(count)
            .filter_map(|i| self.model.configuration_descriptor(i))
            .find(|c| c.get(5) == Some(&value))
    }

    /// SET_CONFIGURATION, with `vet` shown the classes of the configuration's interfaces.
    fn configure(&mut self, value: u8, vet: &mut Vet<'_>) -> Result<(), TransferError> {
        let endpoints = if value == 0 {
            Vec::new()
        } else {
            let config = self.find_configuration(value).ok_or(TransferError::Stall)?;
            if !vet(&classes(&config).ok_or(TransferError::Invalid)?) {
                return Err(TransferError::Refused);
            }
            active_endpoints(&config, &BTreeMap::new())
        };
        self.configuration = value;
        self.alternates.clear();
        self.endpoints = endpoints;
        self.halted.clear();
        Ok(())
    }

    /// SET_INTERFACE, with `vet` shown the alternate setting's class.
    fn select_alternate(
        &mut self,
        interface: u8,
        alternate: u8,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let config = self
            .find_configuration(self.configuration)
            .filter(|c| self.configuration != 0 && has_interface(c, interface, alternate))
            .ok_or(TransferError::Stall)?;
        let class = descriptors(&config)
            .find(|d| d[1] == INTERFACE && d.len() >= 9 && d[2] == interface && d[3] == alternate)
            .map(|d| d[5])
            .ok_or(TransferError::Stall)?;
        if !vet(&ClassSet::of(class)) {
            return Err(TransferError::Refused);
        }
        self.alternates.insert(interface, alternate);
        self.endpoints = active_endpoints(&config, &self.alternates);
        // SET_INTERFACE resets the interface's endpoints (USB 2.0 §9.4.10).
        let endpoints = &self.endpoints;
        self.halted.retain(|a| {
            endpoints
                .iter()
                .any(|e| e.address == *a && e.interface != interface)
        });
        Ok(())
    }

    fn clear_halt(&mut self, address: u8) -> Result<(), TransferError> {
        if address & 0x7f != 0 && self.endpoint(address).is_none() {
            return Err(TransferError::Invalid);
        }
        self.halted.remove(&address);
        Ok(())
    }

    /// Its answer to standard request `setup`, which the host carried out already: it
    /// completes as transfer `token` behind the transfers queued on the default pipe before
    /// it, after the device's latency, as a real device's would.
    fn queue_answer(&mut self, token: u64, setup: [u8; 8]) {
        self.in_flight.push(InFlight {
            transfer: Transfer {
                token,
                endpoint: 0,
                direction: Direction::Out,
                transfer_type: TransferType::Control,
                setup: Some(setup),
                segments: TransferSegments::new(),
                short_not_ok: false,
                iso_packets: Vec::new(),
                start_frame: None,
            },
            address: 0,
            wait: self.latency,
            carried_out: true,
        });
    }

    fn reset(&mut self) {
        self.configuration = 0;
        self.alternates.clear();
        self.endpoints.clear();
        self.halted.clear();
        self.stall_next.clear();
        self.model.reset();
    }

    /// Checks a transfer before it is queued: everything the guest chose is bounded here.
    fn check(&self, t: &Transfer<P>) -> Result<(), TransferError> {
        let fits = t
            .segments
            .iter()
            .all(|s| usize::from(s.offset) + usize::from(s.len) <= PAGE_SIZE);
        if t.endpoint > 15 || !fits {
            return Err(TransferError::Invalid);
        }
        if t.endpoint == 0 {
            let setup = t.setup.ok_or(TransferError::Invalid)?;
            let is_in = t.direction == Direction::In;
            if t.transfer_type != TransferType::Control
                || SetupPacket::parse(&setup).is_in() != is_in
            {
                return Err(TransferError::Invalid);
            }
            return Ok(());
        }
        // The models have neither isochronous nor extra control endpoints.
        let endpoint = self.endpoint(address_of(t)).ok_or(TransferError::Invalid)?;
        match t.transfer_type {
            TransferType::Bulk | TransferType::Interrupt
                if t.setup.is_none() && endpoint.transfer_type == t.transfer_type =>
            {
                Ok(())
            }
            _ => Err(TransferError::Invalid),
        }
    }

    /// Carries out one transfer; `None` when the device NAKed and it stays in flight.
    fn run(&mut self, t: &Transfer<P>) -> Option<Result<usize, TransferError>> {
        if t.endpoint == 0 {
            return self.run_control(t);
        }
        let address = address_of(t);
        if self.endpoint(address).is_none() {
            // The configuration or alternate setting changed under it.
            return Some(Err(TransferError::Shutdown));
        }
        if self.stall_next.remove(&address) {
            self.halted.insert(address);
        }
        if self.halted.contains(&address) {
            return Some(Err(TransferError::Stall));
        }
        let len = t.length();
        let answer = match t.direction {
            Direction::Out => self
                .model
                .data_out(address, &gather(&t.segments, len))
                .map(|()| Ok(len)),
            Direction::In => self
                .model
                .data_in(address, len)
                .map(|data| deliver(t, &data)),
        };
        match answer {
            Handshake::Ack(result) => Some(result),
            Handshake::Nak => None,
            Handshake::Stall => {
                self.halted.insert(address);
                Some(Err(TransferError::Stall))
            }
        }
    }

    fn run_control(&mut self, t: &Transfer<P>) -> Option<Result<usize, TransferError>> {
        let setup = SetupPacket::parse(&t.setup?);
        // A STALL on the default pipe is a protocol stall: the next SETUP clears it.
        if self.stall_next.remove(&0) {
            return Some(Err(TransferError::Stall));
        }
        let stage = usize::from(setup.length).min(t.length());
        let out = if setup.is_in() {
            Vec::new()
        } else {
            gather(&t.segments, stage)
        };
        let answer = match self.standard(&setup) {
            Some(a) => a,
            None => self.model.control(&setup, &out),
        };
        match answer {
            Handshake::Ack(mut data) if setup.is_in() => {
                data.truncate(usize::from(setup.length));
                Some(deliver(t, &data))
            }
            Handshake::Ack(_) => Some(Ok(stage)),
            Handshake::Nak => None,
            Handshake::Stall => Some(Err(TransferError::Stall)),
        }
    }

    /// The standard requests addressed to the device, or to an interface or endpoint for
    /// the host's own state; `None` passes the request to the model.
    fn standard(&mut self, setup: &SetupPacket) -> Option<Handshake<Vec<u8>>> {
        if !setup.is_standard() {
            return None;
        }
        let low = setup.value as u8;
        let ok = |r: Result<(), TransferError>| match r {
            Ok(()) => Handshake::Ack(Vec::new()),
            Err(_) => Handshake::Stall,
        };
        let answer = match (setup.request_type, setup.request) {
            (0x80, GET_STATUS) => Handshake::Ack(vec![0, 0]),
            (0x81, GET_STATUS) => match self.interface_alternate(setup.index) {
                Some(_) => Handshake::Ack(vec![0, 0]),
                None => Handshake::Stall,
            },
            (0x82, GET_STATUS) => {
                let address = setup.index as u8;
                if setup.index > 0xff || (address & 0x7f != 0 && self.endpoint(address).is_none()) {
                    Handshake::Stall
                } else {
                    Handshake::Ack(vec![u8::from(self.halted.contains(&address)), 0])
                }
            }
            (0x02, CLEAR_FEATURE) if setup.value == ENDPOINT_HALT && setup.index <= 0xff => {
                ok(self.clear_halt(setup.index as u8))
            }
            (0x80, GET_DESCRIPTOR) => match setup.descriptor_type() {
                DEVICE => Handshake::Ack(self.model.device_descriptor()),
                CONFIGURATION => match self.model.configuration_descriptor(low) {
                    Some(c) => Handshake::Ack(c),
                    None => Handshake::Stall,
                },
                STRING => self.string_descriptor(low),
                _ => return None,
            },
            (0x80, GET_CONFIGURATION) => Handshake::Ack(vec![self.configuration]),
            // By bRequest alone, as a lax device decodes it.
            (_, SET_CONFIGURATION) if !setup.is_in() && setup.value <= 0xff => {
                ok(self.configure(low, &mut |_| true))
            }
            (0x81, GET_INTERFACE) => match self.interface_alternate(setup.index) {
                Some(alternate) => Handshake::Ack(vec![alternate]),
                None => Handshake::Stall,
            },
            (_, SET_INTERFACE) if !setup.is_in() && setup.index <= 0xff && setup.value <= 0xff => {
                ok(self.select_alternate(setup.index as u8, low, &mut |_| true))
            }
            _ => return None,
        };
        Some(answer)
    }

    /// The alternate setting of interface `index` of the current configuration.
    fn interface_alternate(&self, index: u16) -> Option<u8> {
        let interface = u8::try_from(index).ok()?;
        let alternate = self.alternates.get(&interface).copied().unwrap_or(0);
        let config = self.find_configuration(self.configuration)?;
        (self.configuration != 0 && has_interface(&config, interface, alternate))
            .then_some(alternate)
    }

    /// String descriptor `index`: 0 is the table of languages, the others UTF-16LE text.
    fn string_descriptor(&self, index: u8) -> Handshake<Vec<u8>> {
        if index == 0 {
            let [lo, hi] = LANGID_EN_US.to_le_bytes();
            return Handshake::Ack(vec![4, STRING, lo, hi]);
        }
        let Some(text) = self.model.string(index) else {
            return Handshake::Stall;
        };
        let mut d = vec![0, STRING];
        // bLength is one byte: at most 126 UTF-16 units.
        for unit in text.encode_utf16().take(126) {
            d.extend_from_slice(&unit.to_le_bytes());
        }
        d[0] = d.len() as u8;
        Handshake::Ack(d)
    }
}

/// What the host found about a device, from its descriptors.
fn describe(id: u32, busid: &str, speed: Speed, model: &dyn DeviceModel) -> DeviceInfo {
    let device = model.device_descriptor();
    let byte = |i: usize| device.get(i).copied().unwrap_or(0);
    let word = |i: usize| u16::from_le_bytes([byte(i), byte(i + 1)]);
    // Every configuration offered, every alternate setting: one unreadable makes them all
    // unknown.
    let interface_classes = offered(byte(17))
        .map(|i| {
            model
                .configuration_descriptor(i)
                .as_deref()
                .and_then(classes)
        })
        .try_fold(ClassSet::default(), |all, c| Some(all.union(c?)))
        .map_or(InterfaceClasses::Unknown, InterfaceClasses::Checked);
    let string = |i: u8| match i {
        0 => None,
        i => model.string(i).map(String::from),
    };
    let (product, serial) = (string(byte(15)), string(byte(16)));
    DeviceInfo {
        id,
        busid: String::from(busid),
        speed,
        vendor_id: word(8),
        product_id: word(10),
        class: byte(4),
        interface_classes,
        product,
        serial,
        is_hub: byte(4) == HUB_CLASS,
    }
}

/// A host controller with simulated devices plugged into it.
pub struct SimHost<P> {
    devices: BTreeMap<u32, SimDevice<P>>,
    /// Kept after a device leaves, so tests can check its transfers all completed.
    counts: BTreeMap<u32, TransferCounts>,
    /// What the next poll hands out, oldest first.
    events: Vec<HostEvent>,
    next_id: u32,
}

impl<P> Default for SimHost<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Queues the completion of `token` of device `id`.
fn complete(
    events: &mut Vec<HostEvent>,
    counts: &mut BTreeMap<u32, TransferCounts>,
    id: u32,
    token: u64,
    result: Result<usize, TransferError>,
) {
    counts.entry(id).or_default().completed += 1;
    events.push(HostEvent::Completed(Completion {
        token,
        result,
        start_frame: 0,
        iso: Vec::new(),
    }));
}

impl<P> SimHost<P> {
    /// A host with nothing plugged in.
    pub fn new() -> SimHost<P> {
        SimHost {
            devices: BTreeMap::new(),
            counts: BTreeMap::new(),
            events: Vec::new(),
            next_id: 1,
        }
    }

    /// Plugs in a device at `busid`: it is enumerated (addressed, unconfigured) and an
    /// [`HostEvent::Attached`] is queued. Returns its id, never one used before.
    pub fn plug(&mut self, model: Box<dyn DeviceModel>, busid: &str, speed: Speed) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let info = describe(id, busid, speed, model.as_ref());
        self.events.push(HostEvent::Attached(info.clone()));
        self.counts.insert(id, TransferCounts::default());
        self.devices.insert(
            id,
            SimDevice {
                info,
                model,
                configuration: 0,
                alternates: BTreeMap::new(),
                endpoints: Vec::new(),
                halted: BTreeSet::new(),
                stall_next: BTreeSet::new(),
                latency: 0,
                in_flight: Vec::new(),
            },
        );
        id
    }

    /// Unplugs device `id`: its transfers complete with [`TransferError::NoDevice`], then
    /// [`HostEvent::Detached`] is queued. False when there is no such device.
    pub fn unplug(&mut self, id: u32) -> bool {
        let Some(dev) = self.devices.remove(&id) else {
            return false;
        };
        for f in dev.in_flight {
            let token = f.transfer.token;
            complete(
                &mut self.events,
                &mut self.counts,
                id,
                token,
                Err(TransferError::NoDevice),
            );
        }
        self.events.push(HostEvent::Detached {
            id,
            busid: dev.info.busid,
        });
        true
    }

    /// Makes device `id`'s transfers start only after `polls` polls (0, the default,
    /// completes them on the next poll), so tests can cancel or unplug with transfers in
    /// flight. False when there is no such device.
    pub fn set_latency(&mut self, id: u32, polls: u32) -> bool {
        self.devices
            .get_mut(&id)
            .map(|d| d.latency = polls)
            .is_some()
    }

    /// Makes the next transfer on endpoint `address` (bit 7 IN; 0 for the default pipe)
    /// of device `id` answer STALL. A non-zero endpoint then stays halted until its halt is
    /// cleared, as a real one does. False when there is no such device.
    pub fn stall_next(&mut self, id: u32, address: u8) -> bool {
        self.devices
            .get_mut(&id)
            .map(|d| d.stall_next.insert(address & 0x8f))
            .is_some()
    }

    /// Transfers in flight on all devices.
    pub fn in_flight(&self) -> usize {
        self.devices.values().map(|d| d.in_flight.len()).sum()
    }

    /// Transfers device `id` saw (also after it was unplugged).
    pub fn counts(&self, id: u32) -> TransferCounts {
        self.counts.get(&id).copied().unwrap_or_default()
    }

    /// The device's bConfigurationValue (0 unconfigured), or `None` if it is not plugged in.
    pub fn configuration(&self, id: u32) -> Option<u8> {
        self.devices.get(&id).map(|d| d.configuration)
    }

    /// The model of device `id`, if it is a `T`: tests read the disk or LEDs through it.
    pub fn model<T: DeviceModel>(&self, id: u32) -> Option<&T> {
        self.devices.get(&id)?.model.as_any().downcast_ref()
    }

    /// The model of device `id`, if it is a `T`: tests press keys through it.
    pub fn model_mut<T: DeviceModel>(&mut self, id: u32) -> Option<&mut T> {
        self.devices.get_mut(&id)?.model.as_any_mut().downcast_mut()
    }
}

impl<P: SharedPage> UsbHost<P> for SimHost<P> {
    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.values().map(|d| d.info.clone()).collect()
    }

    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        for (&id, dev) in self.devices.iter_mut() {
            // Endpoints whose oldest transfer is still waiting: the ones behind it wait too.
            let mut blocked = BTreeSet::new();
            let mut i = 0;
            while i < dev.in_flight.len() {
                let entry = &mut dev.in_flight[i];
                let address = entry.address;
                if entry.wait > 0 {
                    entry.wait -= 1;
                    blocked.insert(address);
                }
                if blocked.contains(&address) {
                    i += 1;
                    continue;
                }
                let entry = dev.in_flight.remove(i);
                // Not a transfer of the guest's: not counted.
                if entry.carried_out {
                    self.events.push(HostEvent::Completed(Completion {
                        token: entry.transfer.token,
                        result: Ok(0),
                        start_frame: 0,
                        iso: Vec::new(),
                    }));
                    continue;
                }
                match dev.run(&entry.transfer) {
                    Some(result) => complete(
                        &mut self.events,
                        &mut self.counts,
                        id,
                        entry.transfer.token,
                        result,
                    ),
                    None => {
                        blocked.insert(address);
                        dev.in_flight.insert(i, entry);
                        i += 1;
                    }
                }
            }
        }
        events.append(&mut self.events);
    }

    fn submit(&mut self, device: u32, transfer: Transfer<P>) -> Result<(), TransferError> {
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(TransferError::NoDevice)?;
        dev.check(&transfer)?;
        self.counts.entry(device).or_default().submitted += 1;
        dev.in_flight.push(InFlight {
            address: address_of(&transfer),
            wait: dev.latency,
            transfer,
            carried_out: false,
        });
        Ok(())
    }

    fn cancel(&mut self, device: u32, token: u64) -> bool {
        let Some(dev) = self.devices.get_mut(&device) else {
            return false;
        };
        let Some(at) = dev.in_flight.iter().position(|f| f.transfer.token == token) else {
            return false;
        };
        dev.in_flight.remove(at);
        complete(
            &mut self.events,
            &mut self.counts,
            device,
            token,
            Err(TransferError::Cancelled),
        );
        true
    }

    /// Transfers in flight on endpoints the new configuration lacks complete with
    /// [`TransferError::Shutdown`] on the next poll, as Linux flushes them.
    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(TransferError::NoDevice)?;
        dev.configure(value, vet)?;
        dev.queue_answer(token, [0, SET_CONFIGURATION, value, 0, 0, 0, 0, 0]);
        Ok(())
    }

    fn set_interface(
        &mut self,
        device: u32,
        interface: u8,
        alternate: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(TransferError::NoDevice)?;
        dev.select_alternate(interface, alternate, vet)?;
        dev.queue_answer(token, [1, SET_INTERFACE, alternate, 0, interface, 0, 0, 0]);
        Ok(())
    }

    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(TransferError::NoDevice)?;
        dev.clear_halt(address)?;
        dev.queue_answer(token, [2, CLEAR_FEATURE, 0, 0, address, 0, 0, 0]);
        Ok(())
    }

    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        let dev = self
            .devices
            .get_mut(&device)
            .ok_or(TransferError::NoDevice)?;
        for f in dev.in_flight.drain(..) {
            complete(
                &mut self.events,
                &mut self.counts,
                device,
                f.transfer.token,
                Err(TransferError::NoDevice),
            );
        }
        dev.reset();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Descriptor building for the models.

/// A device descriptor with strings 1 (manufacturer), 2 (product), 3 (serial number) and
/// one configuration.
fn device_descriptor(bcd_usb: u16, class: [u8; 3], max_packet0: u8, product_id: u16) -> Vec<u8> {
    let [usb_lo, usb_hi] = bcd_usb.to_le_bytes();
    let [vid_lo, vid_hi] = VENDOR_PID_CODES.to_le_bytes();
    let [pid_lo, pid_hi] = product_id.to_le_bytes();
    vec![
        18,
        DEVICE,
        usb_lo,
        usb_hi,
        class[0],
        class[1],
        class[2],
        max_packet0,
        vid_lo,
        vid_hi,
        pid_lo,
        pid_hi,
        0x00,
        0x01,
        1,
        2,
        3,
        1,
    ]
}

/// Configuration 1 with `body` (interface, class and endpoint descriptors) after it.
fn configuration_descriptor(attributes: u8, max_power_2ma: u8, body: &[&[u8]]) -> Vec<u8> {
    let interfaces = body
        .iter()
        .filter(|d| d.get(1) == Some(&INTERFACE) && d.get(3) == Some(&0))
        .count() as u8;
    let mut c = vec![
        9,
        CONFIGURATION,
        0,
        0,
        interfaces,
        1,
        0,
        attributes,
        max_power_2ma,
    ];
    for d in body {
        c.extend_from_slice(d);
    }
    let total = (c.len() as u16).to_le_bytes();
    c[2..4].copy_from_slice(&total);
    c
}

/// Alternate setting 0 of interface `number`.
fn interface_descriptor(number: u8, endpoints: u8, class: [u8; 3]) -> [u8; 9] {
    [
        9, INTERFACE, number, 0, endpoints, class[0], class[1], class[2], 0,
    ]
}

fn endpoint_descriptor(
    address: u8,
    transfer_type: TransferType,
    max_packet: u16,
    interval: u8,
) -> [u8; 7] {
    let attributes = match transfer_type {
        TransferType::Control => 0,
        TransferType::Isochronous => 1,
        TransferType::Bulk => 2,
        TransferType::Interrupt => 3,
    };
    let [lo, hi] = max_packet.to_le_bytes();
    [7, ENDPOINT, address, attributes, lo, hi, interval]
}

/// The strings every model has: 1 manufacturer, 2 product, 3 serial number.
fn model_string(index: u8, product: &'static str, serial: &'static str) -> Option<&'static str> {
    match index {
        1 => Some("usbdom"),
        2 => Some(product),
        3 => Some(serial),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Mass storage: Bulk-Only Transport (USB MSC BOT 1.0) with a SCSI disk (SPC/SBC).

/// Bytes per logical block of [`MassStorage`].
pub const BLOCK_SIZE: usize = 512;
const MSC_BULK_IN: u8 = 0x81;
const MSC_BULK_OUT: u8 = 0x02;
/// dCBWSignature, "USBC".
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
/// dCSWSignature, "USBS".
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
/// Bytes of a Command Block Wrapper.
pub const CBW_LEN: usize = 31;
/// Bytes of a Command Status Wrapper.
pub const CSW_LEN: usize = 13;
/// bCSWStatus: command passed.
pub const CSW_PASSED: u8 = 0;
/// bCSWStatus: command failed (REQUEST SENSE says why).
pub const CSW_FAILED: u8 = 1;
/// bCSWStatus: phase error (the host and device disagree on the data stage).
pub const CSW_PHASE_ERROR: u8 = 2;
/// Bulk-Only Mass Storage Reset (class request).
const BULK_ONLY_RESET: u8 = 0xff;
/// Get Max LUN (class request).
const GET_MAX_LUN: u8 = 0xfe;
// SCSI operation codes.
const TEST_UNIT_READY: u8 = 0x00;
const REQUEST_SENSE: u8 = 0x03;
const INQUIRY: u8 = 0x12;
const MODE_SENSE_6: u8 = 0x1a;
const READ_CAPACITY_10: u8 = 0x25;
const READ_10: u8 = 0x28;
const WRITE_10: u8 = 0x2a;
/// Sense key ILLEGAL REQUEST.
const ILLEGAL_REQUEST: u8 = 0x05;
// Additional sense codes.
const INVALID_COMMAND_OPERATION_CODE: u8 = 0x20;
const LBA_OUT_OF_RANGE: u8 = 0x21;
const INVALID_FIELD_IN_CDB: u8 = 0x24;
/// MODE SENSE page code for all pages.
const ALL_PAGES: u8 = 0x3f;

/// Where the Bulk-Only Transport is (BOT §5, figure 1).
enum BotState {
    /// Waiting for a CBW on bulk OUT.
    Command,
    /// Sending the data stage; `data` is already cut to dCBWDataTransferLength.
    DataIn {
        tag: u32,
        data: Vec<u8>,
        sent: usize,
        expected: usize,
        status: u8,
    },
    /// Receiving the data stage; `write` is the disk range it goes to, if any.
    DataOut {
        tag: u32,
        buf: Vec<u8>,
        received: usize,
        expected: usize,
        write: Option<core::ops::Range<usize>>,
        status: u8,
    },
    /// The CSW is ready on bulk IN.
    Status([u8; CSW_LEN]),
}

/// What a SCSI command did when it was received.
struct Command {
    status: u8,
    /// Data to send (cut to the allocation length).
    data: Vec<u8>,
    /// The disk range a WRITE fills from the data stage.
    write: Option<core::ops::Range<usize>>,
}

/// A USB flash disk: one LUN over an in-memory disk of 512-byte blocks, high speed.
pub struct MassStorage {
    disk: Vec<u8>,
    state: BotState,
    /// Sense key, additional sense code: what REQUEST SENSE reports about the last failure.
    sense: (u8, u8),
}

fn csw(tag: u32, residue: usize, status: u8) -> [u8; CSW_LEN] {
    let mut c = [0; CSW_LEN];
    c[0..4].copy_from_slice(&CSW_SIGNATURE.to_le_bytes());
    c[4..8].copy_from_slice(&tag.to_le_bytes());
    let residue = u32::try_from(residue).unwrap_or(u32::MAX);
    c[8..12].copy_from_slice(&residue.to_le_bytes());
    c[12] = status;
    c
}

impl MassStorage {
    /// A disk of `blocks` zeroed blocks (at least one).
    pub fn new(blocks: usize) -> MassStorage {
        MassStorage {
            disk: vec![0; blocks.max(1) * BLOCK_SIZE],
            state: BotState::Command,
            sense: (0, 0),
        }
    }

    /// The disk image, to check what the guest wrote.
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    /// The disk image, to put data there for the guest to read.
    pub fn disk_mut(&mut self) -> &mut [u8] {
        &mut self.disk
    }

    fn good(&mut self, data: Vec<u8>, allocation: usize) -> Command {
        self.sense = (0, 0);
        let mut data = data;
        data.truncate(allocation);
        Command {
            status: CSW_PASSED,
            data,
            write: None,
        }
    }

    fn fail(&mut self, asc: u8) -> Command {
        self.sense = (ILLEGAL_REQUEST, asc);
        Command {
            status: CSW_FAILED,
            data: Vec::new(),
            write: None,
        }
    }

    /// The disk bytes of READ(10)/WRITE(10) `cb`, when they are on the disk.
    fn blocks(&self, cb: &[u8; 16]) -> Option<core::ops::Range<usize>> {
        let lba = u64::from(u32::from_be_bytes([cb[2], cb[3], cb[4], cb[5]]));
        let count = u64::from(u16::from_be_bytes([cb[7], cb[8]]));
        let start = usize::try_from(lba.checked_mul(BLOCK_SIZE as u64)?).ok()?;
        let len = usize::try_from(count * BLOCK_SIZE as u64).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.disk.len()).then_some(start..end)
    }

    /// Executes a SCSI command block (zero-padded to 16 bytes).
    fn scsi(&mut self, cb: &[u8; 16]) -> Command {
        match cb[0] {
            TEST_UNIT_READY => self.good(Vec::new(), 0),
            REQUEST_SENSE => {
                // Fixed format sense data (SPC-3 §4.5.3).
                let mut s = vec![0; 18];
                s[0] = 0x70;
                s[2] = self.sense.0;
                s[7] = 10;
                s[12] = self.sense.1;
                self.good(s, usize::from(cb[4]))
            }
            INQUIRY if cb[1] & 1 != 0 => self.fail(INVALID_FIELD_IN_CDB),
            INQUIRY => {
                // Direct access block device, SPC-3, response data format 2.
                let mut d = vec![0, 0, 5, 2, 31, 0, 0, 0];
                d.extend_from_slice(b"usbdom  ");
                d.extend_from_slice(b"Sim disk        ");
                d.extend_from_slice(b"0.1 ");
                self.good(d, usize::from(u16::from_be_bytes([cb[3], cb[4]])))
            }
            MODE_SENSE_6 if cb[2] & 0x3f == ALL_PAGES => {
                // Header only: medium type 0, not write protected, no block descriptor.
                self.good(vec![3, 0, 0, 0], usize::from(cb[4]))
            }
            MODE_SENSE_6 => self.fail(INVALID_FIELD_IN_CDB),
            READ_CAPACITY_10 => {
                let last = u32::try_from(self.disk.len() / BLOCK_SIZE - 1).unwrap_or(u32::MAX);
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                self.good(d, 8)
            }
            READ_10 => match self.blocks(cb) {
                Some(r) => {
                    let data = self.disk[r].to_vec();
                    let len = data.len();
                    self.good(data, len)
                }
                None => self.fail(LBA_OUT_OF_RANGE),
            },
            WRITE_10 => match self.blocks(cb) {
                Some(r) => {
                    let mut c = self.good(Vec::new(), 0);
                    c.write = Some(r);
                    c
                }
                None => self.fail(LBA_OUT_OF_RANGE),
            },
            _ => self.fail(INVALID_COMMAND_OPERATION_CODE),
        }
    }

    /// A CBW arrived: runs its command and sets up the data stage the host announced.
    fn command_block(&mut self, cbw: &[u8]) -> Handshake<()> {
        let word = |i: usize| u32::from_le_bytes([cbw[i], cbw[i + 1], cbw[i + 2], cbw[i + 3]]);
        // A CBW that is not valid and meaningful (BOT §6.2) is answered with STALL, as
        // QEMU's usb-storage does; LUN 0 is the only one.
        if cbw.len() != CBW_LEN || word(0) != CBW_SIGNATURE || cbw[13] != 0 {
            return Handshake::Stall;
        }
        let cb_len = usize::from(cbw[14]);
        if !(1..=16).contains(&cb_len) {
            return Handshake::Stall;
        }
        let tag = word(4);
        let expected = usize::try_from(word(8)).unwrap_or(usize::MAX);
        let is_in = cbw[12] & 0x80 != 0;
        let mut cb = [0; 16];
        cb[..cb_len].copy_from_slice(&cbw[15..15 + cb_len]);
        let c = self.scsi(&cb);
        // The host decides the data stage (BOT §6.7, the thirteen cases): a command whose
        // data goes the other way, or a write larger than announced, is a phase error.
        self.state = if expected == 0 {
            let status = if c.write.as_ref().is_some_and(|r| !r.is_empty()) {
                CSW_PHASE_ERROR
            } else {
                c.status
            };
            BotState::Status(csw(tag, 0, status))
        } else if is_in {
            let status = if c.write.is_some() {
                CSW_PHASE_ERROR
            } else {
                c.status
            };
            let mut data = c.data;
            data.truncate(expected);
            BotState::DataIn {
                tag,
                data,
                sent: 0,
                expected,
                status,
            }
        } else {
            let (write, status) = match c.write {
                Some(r) if r.len() <= expected => (Some(r), c.status),
                Some(_) => (None, CSW_PHASE_ERROR),
                None if !c.data.is_empty() => (None, CSW_PHASE_ERROR),
                None => (None, c.status),
            };
            BotState::DataOut {
                tag,
                buf: Vec::new(),
                received: 0,
                expected,
                write,
                status,
            }
        };
        Handshake::Ack(())
    }
}

impl DeviceModel for MassStorage {
    fn device_descriptor(&self) -> Vec<u8> {
        device_descriptor(0x0200, [0, 0, 0], 64, 0x0001)
    }

    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        (index == 0).then(|| {
            configuration_descriptor(
                0x80,
                250,
                &[
                    &interface_descriptor(0, 2, [8, 6, 0x50]),
                    &endpoint_descriptor(MSC_BULK_IN, TransferType::Bulk, 512, 0),
                    &endpoint_descriptor(MSC_BULK_OUT, TransferType::Bulk, 512, 0),
                ],
            )
        })
    }

    fn string(&self, index: u8) -> Option<&str> {
        model_string(index, "Sim flash disk", "000000000001")
    }

    fn control(&mut self, setup: &SetupPacket, _data: &[u8]) -> Handshake<Vec<u8>> {
        match (setup.request_type, setup.request) {
            (0x21, BULK_ONLY_RESET) if setup.value == 0 && setup.index == 0 => {
                self.state = BotState::Command;
                Handshake::Ack(Vec::new())
            }
            (0xa1, GET_MAX_LUN) if setup.value == 0 && setup.index == 0 => Handshake::Ack(vec![0]),
            _ => Handshake::Stall,
        }
    }

    fn data_in(&mut self, endpoint: u8, max_len: usize) -> Handshake<Vec<u8>> {
        if endpoint != MSC_BULK_IN {
            return Handshake::Stall;
        }
        match &mut self.state {
            BotState::DataIn {
                tag,
                data,
                sent,
                expected,
                status,
            } => {
                let n = (data.len() - *sent).min(max_len);
                let chunk = data[*sent..*sent + n].to_vec();
                *sent += n;
                // A short packet ends the data stage early (BOT §6.7.2); the residue says
                // how much of the announced length was not sent.
                if *sent == *expected || n < max_len {
                    self.state = BotState::Status(csw(*tag, *expected - *sent, *status));
                }
                Handshake::Ack(chunk)
            }
            BotState::Status(c) => {
                let c = c.to_vec();
                self.state = BotState::Command;
                Handshake::Ack(c)
            }
            BotState::Command | BotState::DataOut { .. } => Handshake::Stall,
        }
    }

    fn data_out(&mut self, endpoint: u8, data: &[u8]) -> Handshake<()> {
        if endpoint != MSC_BULK_OUT {
            return Handshake::Stall;
        }
        match &mut self.state {
            BotState::Command => self.command_block(data),
            BotState::DataOut {
                tag,
                buf,
                received,
                expected,
                write,
                status,
            } => {
                if data.len() > *expected - *received {
                    return Handshake::Stall;
                }
                *received += data.len();
                let used = write.as_ref().map_or(0, |r| r.len());
                // Only what the write needs is kept: the host chose the announced length.
                let keep = used.saturating_sub(buf.len()).min(data.len());
                buf.extend_from_slice(&data[..keep]);
                if *received == *expected {
                    if let Some(r) = write.take() {
                        self.disk[r].copy_from_slice(buf);
                    }
                    self.state = BotState::Status(csw(*tag, *expected - used, *status));
                }
                Handshake::Ack(())
            }
            BotState::DataIn { .. } | BotState::Status(_) => Handshake::Stall,
        }
    }

    fn reset(&mut self) {
        self.state = BotState::Command;
        self.sense = (0, 0);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

// ---------------------------------------------------------------------------------------
// HID boot keyboard (HID 1.11).

const KBD_INTERRUPT_IN: u8 = 0x81;
const HID_DESCRIPTOR: u8 = 0x21;
const HID_REPORT_DESCRIPTOR: u8 = 0x22;
const GET_REPORT: u8 = 0x01;
const GET_IDLE: u8 = 0x02;
const GET_PROTOCOL: u8 = 0x03;
const SET_REPORT: u8 = 0x09;
const SET_IDLE: u8 = 0x0a;
const SET_PROTOCOL: u8 = 0x0b;
/// GET_REPORT/SET_REPORT report types (high byte of wValue).
const REPORT_INPUT: u8 = 1;
const REPORT_OUTPUT: u8 = 2;
/// Keyboard usage ErrorRollOver: more keys pressed than a boot report holds.
const ERROR_ROLL_OVER: u8 = 0x01;

/// The boot keyboard report descriptor (HID 1.11 appendix E.6).
const KEYBOARD_REPORT_DESCRIPTOR: [u8; 63] = [
    0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, 0x05, 0x07, 0x19, 0xe0, 0x29, 0xe7, 0x15, 0x00, 0x25, 0x01,
    0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0x95, 0x01, 0x75, 0x08, 0x81, 0x01, 0x95, 0x05, 0x75, 0x01,
    0x05, 0x08, 0x19, 0x01, 0x29, 0x05, 0x91, 0x02, 0x95, 0x01, 0x75, 0x03, 0x91, 0x01, 0x95, 0x06,
    0x75, 0x08, 0x15, 0x00, 0x25, 0x65, 0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00, 0xc0,
];

/// A boot protocol keyboard: reports go out on interrupt IN 0x81 only once keys are
/// injected, so a pending transfer waits, as with a real keyboard.
pub struct Keyboard {
    reports: VecDeque<[u8; 8]>,
    /// The last report sent, which GET_REPORT returns.
    last: [u8; 8],
    /// 0 boot, 1 report protocol.
    protocol: u8,
    idle: u8,
    leds: u8,
}

impl Default for Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyboard {
    /// A keyboard with no key down, in report protocol (the HID power-on default).
    pub fn new() -> Keyboard {
        Keyboard {
            reports: VecDeque::new(),
            last: [0; 8],
            protocol: 1,
            idle: 0,
            leds: 0,
        }
    }

    /// Queues a raw 8-byte boot report (modifiers, reserved, six key usages).
    pub fn inject(&mut self, report: [u8; 8]) {
        self.reports.push_back(report);
    }

    /// Queues the report of `keys` (usage ids) held with `modifiers`; more than six keys is
    /// reported as ErrorRollOver, as a keyboard does.
    pub fn press(&mut self, modifiers: u8, keys: &[u8]) {
        let mut report = [0; 8];
        report[0] = modifiers;
        if keys.len() > 6 {
            report[2..].fill(ERROR_ROLL_OVER);
        } else {
            report[2..2 + keys.len()].copy_from_slice(keys);
        }
        self.inject(report);
    }

    /// Queues the report of every key up.
    pub fn release(&mut self) {
        self.inject([0; 8]);
    }

    /// Reports not yet taken by an interrupt IN transfer.
    pub fn pending_reports(&self) -> usize {
        self.reports.len()
    }

    /// The LED state the host last set (bit 0 Num Lock, 1 Caps Lock, 2 Scroll Lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// The protocol the host chose: 0 boot, 1 report.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    fn hid_descriptor() -> [u8; 9] {
        let [lo, hi] = (KEYBOARD_REPORT_DESCRIPTOR.len() as u16).to_le_bytes();
        [
            9,
            HID_DESCRIPTOR,
            0x11,
            0x01,
            0,
            1,
            HID_REPORT_DESCRIPTOR,
            lo,
            hi,
        ]
    }
}

impl DeviceModel for Keyboard {
    fn device_descriptor(&self) -> Vec<u8> {
        device_descriptor(0x0110, [0, 0, 0], 8, 0x0002)
    }

    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        (index == 0).then(|| {
            configuration_descriptor(
                0xa0,
                50,
                &[
                    &interface_descriptor(0, 1, [3, 1, 1]),
                    &Self::hid_descriptor(),
                    &endpoint_descriptor(KBD_INTERRUPT_IN, TransferType::Interrupt, 8, 10),
                ],
            )
        })
    }

    fn string(&self, index: u8) -> Option<&str> {
        model_string(index, "Sim keyboard", "000000000002")
    }

    fn control(&mut self, setup: &SetupPacket, data: &[u8]) -> Handshake<Vec<u8>> {
        if setup.index != 0 {
            return Handshake::Stall;
        }
        let high = setup.descriptor_type();
        match (setup.request_type, setup.request) {
            (0x81, GET_DESCRIPTOR) if high == HID_REPORT_DESCRIPTOR => {
                Handshake::Ack(KEYBOARD_REPORT_DESCRIPTOR.to_vec())
            }
            (0x81, GET_DESCRIPTOR) if high == HID_DESCRIPTOR => {
                Handshake::Ack(Self::hid_descriptor().to_vec())
            }
            (0xa1, GET_REPORT) if high == REPORT_INPUT => Handshake::Ack(self.last.to_vec()),
            (0xa1, GET_IDLE) => Handshake::Ack(vec![self.idle]),
            (0xa1, GET_PROTOCOL) => Handshake::Ack(vec![self.protocol]),
            (0x21, SET_REPORT) if high == REPORT_OUTPUT && !data.is_empty() => {
                self.leds = data[0];
                Handshake::Ack(Vec::new())
            }
            (0x21, SET_IDLE) => {
                self.idle = high;
                Handshake::Ack(Vec::new())
            }
            (0x21, SET_PROTOCOL) if setup.value <= 1 => {
                self.protocol = setup.value as u8;
                Handshake::Ack(Vec::new())
            }
            _ => Handshake::Stall,
        }
    }

    fn data_in(&mut self, endpoint: u8, _max_len: usize) -> Handshake<Vec<u8>> {
        if endpoint != KBD_INTERRUPT_IN {
            return Handshake::Stall;
        }
        match self.reports.pop_front() {
            Some(r) => {
                self.last = r;
                Handshake::Ack(r.to_vec())
            }
            None => Handshake::Nak,
        }
    }

    fn data_out(&mut self, _endpoint: u8, _data: &[u8]) -> Handshake<()> {
        Handshake::Stall
    }

    fn reset(&mut self) {
        // What the host set goes back to its default; keys injected but not yet reported
        // are still held, so a test may press keys before the backend resets the device.
        let reports = core::mem::take(&mut self.reports);
        *self = Keyboard {
            reports,
            ..Keyboard::new()
        };
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

// ---------------------------------------------------------------------------------------
// Hub (USB 2.0 chapter 11): descriptors only, nothing ever changes on its ports.

const HUB_STATUS_IN: u8 = 0x81;
const HUB_DESCRIPTOR: u8 = 0x29;

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
        device_descriptor(0x0110, [HUB_CLASS, 0, 0], 64, 0x0003)
    }

    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        (index == 0).then(|| {
            configuration_descriptor(
                0xe0,
                0,
                &[
                    &interface_descriptor(0, 1, [HUB_CLASS, 0, 0]),
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
            (0xa0, GET_DESCRIPTOR) if setup.descriptor_type() == HUB_DESCRIPTOR => {
                // Individual power switching and over-current protection, 100 ms to power
                // good, no removable-device bits, the USB 1.1 port power mask.
                Handshake::Ack(vec![9, HUB_DESCRIPTOR, self.ports, 0x09, 0, 50, 0, 0, 0xff])
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

#[cfg(test)]
mod tests;
