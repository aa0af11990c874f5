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

use usb::descriptor::{CONFIGURATION, DEVICE, ENDPOINT, INTERFACE, STRING};
use usb::feature::ENDPOINT_HALT;
use usb::hub::HUB_CLASSCODE;
use usb::request::{
    CLEAR_FEATURE, GET_CONFIGURATION, GET_DESCRIPTOR, GET_INTERFACE, GET_STATUS, SET_CONFIGURATION,
    SET_INTERFACE,
};
use usb::{Direction, SetupPacket, Speed, TransferType, LANGID_EN_US};
use xen::abi::PAGE_SIZE;
use xen::page::SharedPage;

use usbback::host::{
    ClassSet, Completion, DeviceInfo, HostEvent, InterfaceClasses, PageSegment, Transfer,
    TransferError, TransferSegments, UsbHost, Vet, MAX_CONFIGURATIONS,
};

/// pid.codes' vendor id for open source projects; the models use its test product ids.
const VENDOR_PID_CODES: u16 = 0x1209;

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
                    let transfer_type = TransferType::from_attributes(d[3]);
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
fn gather<P: SharedPage>(segments: &[PageSegment<P>], len: usize) -> Vec<u8> {
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
fn scatter<P: SharedPage>(segments: &[PageSegment<P>], data: &[u8]) {
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
        is_hub: byte(4) == HUB_CLASSCODE,
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

mod descriptors;
mod device;
mod hub;
mod keyboard;
mod mass_storage;

use descriptors::*;
use device::*;
pub use hub::*;
pub use keyboard::*;
pub use mass_storage::*;

#[cfg(test)]
mod tests;
