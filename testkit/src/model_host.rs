//! A host controller with devices modelled just enough for usbback's URB path: what a test
//! of the backend's bookkeeping wants from a host is control over when and how each transfer
//! ends (held, late, cancelled, failed), not a device's logic ([`crate::sim_host`] has that).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use usb::{Direction, Speed, TransferType};
use usbback::host::{self, Completion, DeviceInfo, HostEvent, TransferError, UsbHost};
use xen::page::{LocalPage, SharedPage};

/// A device descriptor: USB 2.0 (or 3.0 with a 2^9-byte EP0 for SuperSpeed), 1234:5678.
pub fn device_descriptor(superspeed: bool) -> [u8; 18] {
    let (usb, mps) = if superspeed { (0x03, 9) } else { (0x02, 64) };
    [
        18, 1, 0x00, usb, 0, 0, 0, mps, 0x34, 0x12, 0x78, 0x56, 0, 1, 1, 2, 0, 1,
    ]
}

/// A SuperSpeed mass-storage configuration with its endpoint companions.
pub const SS_CONFIGURATION: [u8; 44] = [
    9, 2, 44, 0, 1, 1, 0, 0x80, 50, //
    9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
    7, 5, 0x81, 2, 0x00, 0x04, 0, //
    6, 0x30, 15, 0, 0, 0, //
    7, 5, 0x02, 2, 0x00, 0x04, 0, //
    6, 0x30, 15, 0, 0, 0,
];

/// A host controller with devices modelled just enough for the URB path: GET_DESCRIPTOR
/// answers, bulk IN 1 sends a byte pattern, bulk OUT 2 keeps what it gets, anything else
/// stalls. With `hold` set, transfers stay in flight until cancelled or the device leaves.
#[derive(Default)]
pub struct Model {
    /// The devices present.
    pub devices: Vec<DeviceInfo>,
    /// Events for the next poll.
    pub events: Vec<HostEvent>,
    /// Transfers in flight, with their device.
    pub held: Vec<(u32, host::Transfer<LocalPage>)>,
    /// Transfers stay in flight (in [`Model::held`]) instead of completing.
    pub hold: bool,
    /// Transfers queued, in all.
    pub submitted: usize,
    /// `cancel` fails as a Stop Endpoint command can: the transfer stays held until
    /// [`Model::finish_late`].
    pub cancel_fails: bool,
    /// What bulk OUT 2 received, per device.
    pub out: BTreeMap<u32, Vec<u8>>,
    /// The configuration operations asked for, in order, as text.
    pub ops: Vec<String>,
    /// Devices that take their time over SET_CONFIGURATION, SET_INTERFACE and
    /// CLEAR_FEATURE: the answer is held as a transfer until [`Model::finish_late`].
    pub slow: Vec<u32>,
}

/// A device of IDs 1234:5678, product "Model", with `interfaces` as its interface classes.
pub fn info(id: u32, busid: &str, speed: Speed, class: u8, interfaces: &[u8]) -> DeviceInfo {
    DeviceInfo {
        id,
        busid: busid.into(),
        speed,
        vendor_id: 0x1234,
        product_id: 0x5678,
        class,
        interface_classes: host::InterfaceClasses::Checked(interfaces.iter().copied().collect()),
        product: Some("Model".into()),
        serial: None,
        is_hub: class == 9,
    }
}

impl Model {
    /// Attaches `d`; the event comes on the next poll.
    pub fn plug(&mut self, d: DeviceInfo) {
        self.events.push(HostEvent::Attached(d.clone()));
        self.devices.push(d);
    }

    /// Detaches device `id`: its held transfers complete with no device, then it leaves.
    pub fn unplug(&mut self, id: u32) {
        let held = core::mem::take(&mut self.held);
        for (device, t) in held {
            if device == id {
                self.done(t.token, Err(TransferError::NoDevice));
            } else {
                self.held.push((device, t));
            }
        }
        let busid = self
            .devices
            .iter()
            .find(|d| d.id == id)
            .unwrap()
            .busid
            .clone();
        self.devices.retain(|d| d.id != id);
        self.events.push(HostEvent::Detached { id, busid });
    }

    /// Asks `vet` with the classes device `device` was described with.
    pub fn vet(&self, device: u32, vet: &mut host::Vet<'_>) -> Result<(), TransferError> {
        let d = self.devices.iter().find(|d| d.id == device);
        let classes = match d.map(|d| d.interface_classes) {
            Some(host::InterfaceClasses::Checked(c)) => c,
            _ => host::ClassSet::default(),
        };
        if vet(&classes) {
            Ok(())
        } else {
            Err(TransferError::Refused)
        }
    }

    /// The device's late DMA: `byte` into every segment of the held transfer `token`, then
    /// its completion.
    pub fn finish_late(&mut self, token: u64, byte: u8) {
        let i = self
            .held
            .iter()
            .position(|(_, t)| t.token == token)
            .unwrap();
        let (_, t) = self.held.remove(i);
        for s in &t.segments {
            s.page
                .write(usize::from(s.offset), &vec![byte; usize::from(s.len)]);
        }
        let n = t.length();
        self.done(token, Ok(n));
    }

    /// The device's answer to a standard request the host carried out: on the next poll,
    /// or held when the device is slow.
    fn answer(&mut self, device: u32, token: u64, setup: [u8; 8]) {
        if !self.slow.contains(&device) {
            return self.done(token, Ok(0));
        }
        let t = host::Transfer {
            token,
            endpoint: 0,
            direction: Direction::Out,
            transfer_type: TransferType::Control,
            setup: Some(setup),
            segments: host::TransferSegments::new(),
            iso_packets: Vec::new(),
            start_frame: None,
        };
        self.held.push((device, t));
    }

    /// Completes transfer `token` with `result` on the next poll.
    pub fn done(&mut self, token: u64, result: Result<usize, TransferError>) {
        self.events.push(HostEvent::Completed(Completion {
            token,
            result,
            start_frame: 0,
            iso: Vec::new(),
        }));
    }

    /// Carries out `t` on device `device`: the device descriptor, [`SS_CONFIGURATION`],
    /// a byte pattern from bulk IN 1, and bulk OUT 2 kept in [`Model::out`]; anything else
    /// stalls.
    pub fn run(
        &mut self,
        device: u32,
        t: &host::Transfer<LocalPage>,
    ) -> Result<usize, TransferError> {
        let superspeed = self
            .devices
            .iter()
            .any(|d| d.id == device && d.speed == Speed::Super);
        let reply: Vec<u8> = match (t.setup, t.endpoint, t.direction) {
            (Some(s), 0, Direction::In) if s[1] == 6 && s[3] == 1 => {
                device_descriptor(superspeed).to_vec()
            }
            (Some(s), 0, Direction::In) if s[1] == 6 && s[3] == 2 => SS_CONFIGURATION.to_vec(),
            (None, 1, Direction::In) => (0..t.length()).map(|i| (i % 251) as u8).collect(),
            (None, 2, Direction::Out) => {
                for seg in &t.segments {
                    let mut b = vec![0u8; usize::from(seg.len)];
                    seg.page.read(usize::from(seg.offset), &mut b);
                    self.out.entry(device).or_default().extend(b);
                }
                return Ok(t.length());
            }
            _ => return Err(TransferError::Stall),
        };
        // A device answers a control read with at most wLength bytes.
        let asked = t.setup.map_or(reply.len(), |s| {
            usize::from(u16::from_le_bytes([s[6], s[7]]))
        });
        let reply = &reply[..reply.len().min(asked)];
        let mut at = 0;
        for seg in &t.segments {
            let n = usize::from(seg.len).min(reply.len().saturating_sub(at));
            seg.page.write(usize::from(seg.offset), &reply[at..at + n]);
            at += n;
        }
        Ok(at)
    }
}

impl UsbHost<LocalPage> for Model {
    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.clone()
    }
    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        events.append(&mut self.events);
    }
    fn submit(&mut self, device: u32, t: host::Transfer<LocalPage>) -> Result<(), TransferError> {
        if !self.devices.iter().any(|d| d.id == device) {
            return Err(TransferError::NoDevice);
        }
        self.submitted += 1;
        if t.transfer_type == TransferType::Isochronous {
            // Each packet moves its length, but the third fails on the bus.
            let iso: Vec<host::IsoResult> = t
                .iso_packets
                .iter()
                .enumerate()
                .map(|(i, p)| host::IsoResult {
                    actual_length: if i == 2 { 0 } else { p.length },
                    status: if i == 2 {
                        Err(TransferError::Protocol)
                    } else {
                        Ok(())
                    },
                })
                .collect();
            let total = iso.iter().map(|r| r.actual_length as usize).sum();
            self.events.push(HostEvent::Completed(Completion {
                token: t.token,
                result: Ok(total),
                start_frame: 77,
                iso,
            }));
            return Ok(());
        }
        if self.hold {
            self.held.push((device, t));
        } else {
            let r = self.run(device, &t);
            self.done(t.token, r);
        }
        Ok(())
    }
    fn cancel(&mut self, device: u32, token: u64) -> bool {
        if self.cancel_fails {
            return false;
        }
        let Some(i) = self
            .held
            .iter()
            .position(|(d, t)| *d == device && t.token == token)
        else {
            return false;
        };
        self.held.remove(i);
        self.done(token, Err(TransferError::Cancelled));
        true
    }
    /// Vetted with the classes the device was described with; the device answers on the
    /// next poll.
    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut host::Vet<'_>,
    ) -> Result<(), TransferError> {
        self.vet(device, vet)?;
        self.ops.push(format!("set_configuration {device} {value}"));
        self.answer(device, token, [0, 9, value, 0, 0, 0, 0, 0]);
        Ok(())
    }
    fn set_interface(
        &mut self,
        device: u32,
        i: u8,
        alt: u8,
        token: u64,
        vet: &mut host::Vet<'_>,
    ) -> Result<(), TransferError> {
        self.vet(device, vet)?;
        self.ops.push(format!("set_interface {device} {i} {alt}"));
        self.answer(device, token, [1, 11, alt, 0, i, 0, 0, 0]);
        Ok(())
    }
    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        self.ops.push(format!("clear_halt {device} {address:#04x}"));
        self.answer(device, token, [2, 1, 0, 0, address, 0, 0, 0]);
        Ok(())
    }
    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        self.ops.push(format!("reset {device}"));
        Ok(())
    }
}
