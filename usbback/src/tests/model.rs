//! The URB path's test kit: a host controller with devices modelled just enough for the
//! backend, frontend buffers granted to it, requests and the rig most tests start from.

use super::*;

/// A device descriptor: USB 2.0 (or 3.0 with a 2^9-byte EP0 for SuperSpeed), 1234:5678.
pub(super) fn device_descriptor(superspeed: bool) -> [u8; 18] {
    let (usb, mps) = if superspeed { (0x03, 9) } else { (0x02, 64) };
    [
        18, 1, 0x00, usb, 0, 0, 0, mps, 0x34, 0x12, 0x78, 0x56, 0, 1, 1, 2, 0, 1,
    ]
}

/// A SuperSpeed mass-storage configuration with its endpoint companions.
pub(super) const SS_CONFIGURATION: [u8; 44] = [
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
pub(super) struct Model {
    pub(super) devices: Vec<DeviceInfo>,
    pub(super) events: Vec<HostEvent>,
    pub(super) held: Vec<(u32, host::Transfer<LocalPage>)>,
    pub(super) hold: bool,
    /// Transfers queued, in all.
    pub(super) submitted: usize,
    /// `cancel` fails as a Stop Endpoint command can: the transfer stays held until
    /// [`Model::finish_late`].
    pub(super) cancel_fails: bool,
    /// What bulk OUT 2 received, per device.
    pub(super) out: BTreeMap<u32, Vec<u8>>,
    pub(super) ops: Vec<String>,
    /// Devices that take their time over SET_CONFIGURATION, SET_INTERFACE and
    /// CLEAR_FEATURE: the answer is held as a transfer until [`Model::finish_late`].
    pub(super) slow: Vec<u32>,
}

pub(super) fn info(id: u32, busid: &str, speed: Speed, class: u8, interfaces: &[u8]) -> DeviceInfo {
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
    pub(super) fn plug(&mut self, d: DeviceInfo) {
        self.events.push(HostEvent::Attached(d.clone()));
        self.devices.push(d);
    }

    pub(super) fn unplug(&mut self, id: u32) {
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

    pub(super) fn vet(&self, device: u32, vet: &mut host::Vet<'_>) -> Result<(), TransferError> {
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
    pub(super) fn finish_late(&mut self, token: u64, byte: u8) {
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

    pub(super) fn done(&mut self, token: u64, result: Result<usize, TransferError>) {
        self.events.push(HostEvent::Completed(Completion {
            token,
            result,
            start_frame: 0,
            iso: Vec::new(),
        }));
    }

    pub(super) fn run(
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

/// Runs the backend until nothing moves: xenstore, event channels, the host's events.
pub(super) fn settle<U: UsbHost<LocalPage>>(
    be: &mut Backend<Domain, SimXsTransport>,
    host: &mut U,
) {
    for _ in 0..4 {
        be.poll_xenstore(host).unwrap();
        let mut ports = Vec::new();
        be.hypervisor().take_pending(&mut |p| ports.push(p));
        for p in ports {
            be.handle_event(p, host);
        }
        let mut events = Vec::new();
        host.poll(&mut events);
        be.host_events(host, &mut events);
        while be.has_work() {
            be.serve_busy(host);
        }
    }
}

pub(super) fn assign(xen: &Xen, be: DomId, fe: DomId, port: u8, busid: &str) {
    let key = format!("{}/{ASSIGN_DIR}/{port}", bdir(be, fe));
    xen.dom0()
        .xenstore()
        .write(TxId::NONE, &key, busid.as_bytes())
        .unwrap();
}

pub(super) fn port_status(xen: &Xen, be: DomId, fe: DomId, port: u8) -> String {
    let key = format!("{}/{PORT_STATUS_DIR}/{port}", bdir(be, fe));
    xen.dom0()
        .xenstore()
        .read_string(TxId::NONE, &key)
        .unwrap_or_default()
}

/// A buffer of `len` bytes at `offset` in fresh frontend pages, granted to the backend
/// (read-only for OUT, as Linux grants).
pub(super) struct Buffer {
    pub(super) pages: Vec<LocalPage>,
    pub(super) segs: Vec<UsbifRequestSegment>,
}

pub(super) fn buffer(fe: &Domain, be: DomId, offset: usize, data: &[u8], readonly: bool) -> Buffer {
    let mut pages = Vec::new();
    let mut segs = Vec::new();
    let (mut at, mut off) = (0, offset);
    while at < data.len() {
        let (gfn, page) = fe.alloc_page();
        let n = (4096 - off).min(data.len() - at);
        page.write(off, &data[at..at + n]);
        let gref = fe.grant_access(be, gfn, readonly).unwrap();
        segs.push(UsbifRequestSegment {
            gref,
            offset: off as u16,
            length: n as u16,
        });
        pages.push(page);
        at += n;
        off = 0;
    }
    Buffer { pages, segs }
}

impl Buffer {
    pub(super) fn read(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, s) in self.pages.iter().zip(&self.segs) {
            let mut b = vec![0u8; usize::from(s.length)];
            p.read(usize::from(s.offset), &mut b);
            out.extend(b);
        }
        out
    }

    pub(super) fn released(&self, fe: &Domain) -> bool {
        self.segs.iter().all(|s| !fe.grant_in_use(s.gref))
    }
}

pub(super) fn urb(
    id: u16,
    port: u8,
    device: u8,
    endpoint: u8,
    dir: Direction,
    kind: TransferType,
) -> UsbifUrbRequest {
    let mut r = UsbifUrbRequest::new_zeroed();
    r.id = id;
    r.pipe = Pipe {
        port,
        unlink: false,
        direction: dir,
        device,
        endpoint,
        transfer_type: kind,
    }
    .encode();
    r
}

pub(super) fn with_buffer(mut r: UsbifUrbRequest, b: &Buffer) -> UsbifUrbRequest {
    r.nr_buffer_segs = b.segs.len() as u16;
    r.buffer_length = b.segs.iter().map(|s| s.length).sum();
    for (i, s) in b.segs.iter().enumerate() {
        r.seg[i] = *s;
    }
    r
}

pub(super) fn control(id: u16, port: u8, device: u8, setup: [u8; 8]) -> UsbifUrbRequest {
    let dir = if setup[0] & 0x80 != 0 {
        Direction::In
    } else {
        Direction::Out
    };
    let mut r = urb(id, port, device, 0, dir, TransferType::Control);
    r.u = setup;
    r
}

pub(super) fn send(fe: &Domain, front: &mut Front, reqs: &[UsbifUrbRequest]) {
    for r in reqs {
        front.urb.push_request(r).unwrap();
    }
    if front.urb.push_requests_and_check_notify() {
        fe.clone().send(front.port).unwrap();
    }
}

pub(super) fn responses(front: &mut Front) -> Vec<UsbifUrbResponse> {
    let mut out = Vec::new();
    while let Some(r) = front.urb.next_response().unwrap() {
        out.push(r);
    }
    out
}

pub(super) fn port_changes(front: &mut Front) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    while let Some(r) = front.conn.next_response().unwrap() {
        out.push((r.portnum, r.speed));
        front
            .conn
            .push_request(&UsbifConnRequest { id: r.id })
            .unwrap();
    }
    front.conn.push_requests_and_check_notify();
    out
}

pub(super) struct Rig {
    pub(super) w: World,
    pub(super) host: Model,
    pub(super) front: Front,
    pub(super) be: DomId,
    pub(super) fe: DomId,
}

/// A connected frontend with 8 ports and a model host holding a high-speed device at 1-1.
pub(super) fn rig() -> Rig {
    let mut w = world(8);
    let mut host = Model::default();
    host.plug(info(1, "1-1", Speed::High, 0, &[8]));
    settle(&mut w.be, &mut host);
    let (be, fe) = (DomId(1), w.fe.domid());
    let front = frontend_connect(&w.fe, be, None);
    settle(&mut w.be, &mut host);
    Rig {
        w,
        host,
        front,
        be,
        fe,
    }
}

pub(super) const GET_DEVICE: [u8; 8] = [0x80, 6, 0, 1, 0, 0, 18, 0];

/// A Bulk-Only Transport CBW for a READ(10) or WRITE(10) of `blocks` 512-byte blocks.
pub(super) fn cbw(tag: u32, write: bool, lba: u32, blocks: u16) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend(0x4342_5355u32.to_le_bytes());
    w.extend(tag.to_le_bytes());
    w.extend((u32::from(blocks) * 512).to_le_bytes());
    w.extend([if write { 0x00 } else { 0x80 }, 0, 10]);
    let mut cdb = [0u8; 16];
    cdb[0] = if write { 0x2a } else { 0x28 };
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    w.extend(cdb);
    w
}
