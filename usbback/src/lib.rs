//! The PVUSB backend ("usbback"): one virtual host controller per frontend device
//! (`backend/vusb/<frontend>/<devid>`), each a virtualised share of the real controller.
//!
//! The lifecycle: it watches its backend directory, reaches InitWait well inside libxl's
//! 10 s, connects when the frontend has published its rings (maps both rings, binds the event
//! channel, goes Connected), follows either side into Closing/Closed (every transfer
//! cancelled, every grant unmapped), and removes the device directory when the toolstack set
//! `online` to 0.
//!
//! Ports: the toolstack (`usbctl attach`) writes a host device's bus id to
//! `usbdom-port/<N>`; the device is reported on the conn ring with its speed once it is
//! present, not a hub and not assigned elsewhere (SuperSpeed devices as high speed, their
//! descriptors rewritten, see [`superspeed`]), and reported gone (speed 0) when the key is
//! cleared or the device unplugged.
//!
//! URBs: each request is copied out of the ring once and checked
//! ([`xen::pvusb::UrbRequest::decode`]); its buffer lives in our own frames ([`bounce`]),
//! OUT data copied in from the guest's grants (one batch per pass), and is handed to the host
//! controller ([`host::UsbHost`]) as a scatter-gather list; on completion what the device
//! wrote is copied out with the answer (one batch per flush). No data grant is ever mapped.
//! One pass takes at most a ring's worth of a frontend's requests ([`Backend::serve_busy`]).
//! SET_ADDRESS is emulated per port; SET_CONFIGURATION, SET_INTERFACE and
//! CLEAR_FEATURE(ENDPOINT_HALT) go through the host's own operations so the controller's
//! endpoint state follows, the first two checked against the [`policy`] (`control.rs`). An
//! unlink is answered twice: the cancelled request, then the unlink. Every id gets exactly
//! one answer.
//!
//! It knows no hypercall: only the `xen` crate's traits, so it runs against `xen::sim` in
//! tests and against real Xen in the driver domain. Everything a frontend writes (ring refs,
//! event channel, state, ring contents) is checked before use; a misbehaving frontend is
//! disconnected, and only that frontend.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bounce;
mod control;
pub mod host;
mod inflight;
pub mod policy;
#[cfg(any(test, feature = "sim"))]
pub mod sim_host;
pub mod superspeed;
mod tokens;
mod urb;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use xen::abi::grant_table::GntStatus;

use log::{info, warn};
use xen::abi::usbif::*;
use xen::abi::{parse_decimal, DomId, EvtchnPort, GrantRef};

use bounce::{Buffer, FramePool, WrittenGrants};
use inflight::InFlightTable;
use tokens::Tokens;
use urb::Answer;
use xen::hypervisor::{
    CopyOp, EventChannels, GrantCopier, GrantMapper, GrantMapping, LocalFrames, MapRequest,
};
use xen::page::SharedPage;
use xen::pvusb::{self, UsbIsoPacketDescriptor};

use host::{DeviceInfo, HostEvent, IsoPacket, Speed, TransferError, UsbHost};
use policy::Policy;
use xen::ring::BackRing;
use xen::xenbus::{self, BackendAction, XenbusError, XenbusState};
use xen::xenstore::{TxId, XenStore, XsError, XsTransport};

const WATCH_BACKEND: &str = "usbback";
pub use xen::pvusb::{ASSIGN_DIR, PORT_STATUS_DIR};
/// Port changes waiting for conn-ring requests, per frontend: more are dropped (a frontend
/// that stopped reading its conn ring gets no more).
const MAX_PENDING_CHANGES: usize = 64;
/// USB 2.0 9.4: GET_DESCRIPTOR, whose answers a SuperSpeed device's port rewrites.
const GET_DESCRIPTOR: u8 = 6;
/// Requests taken from one frontend's ring in one pass, at most: a ring's worth, then the
/// other frontends and the controller's events get their turn.
const BUDGET: usize = pvusb::URB_RING_SIZE as usize;
/// Warnings about one frontend's requests logged between two [`Backend::log_stats`] calls
/// (a second in the driver domain), at most: a log line costs a millisecond or more of
/// serial port (far more under nested virtualisation), and a guest must not buy the driver
/// domain's time with bad requests. The rest are counted in `event=log_suppressed`.
const WARNINGS_PER_INTERVAL: u32 = 8;
/// Changes of one frontend's state node looked at between two [`Backend::log_stats`] calls
/// (a second), at most: each costs several xenstore round trips the main loop waits for, and
/// a guest flapping its state node must not stall the others. Later ones are looked at,
/// together, once the next second begins.
const RECONCILES_PER_INTERVAL: u32 = 4;
/// `-ENOMEM`: no frame for a request's buffer (xen-hcd hands the status to the URB as is).
const USBIF_STATUS_NOMEM: i32 = -12;
/// Bytes of Linux's `usb_iso_packet_descriptor`.
const ISO_DESCRIPTOR_SIZE: usize = core::mem::size_of::<UsbIsoPacketDescriptor>();

/// One frontend device: `backend/vusb/<frontend>/<devid>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceId {
    /// The frontend domain.
    pub frontend: DomId,
    /// The device number under it.
    pub devid: u32,
}

/// A virtual root-hub port of a frontend's controller.
#[derive(Clone, Debug, Default)]
struct VPort {
    /// The device the toolstack assigned (by bus id or by IDs).
    assigned: Option<pvusb::DeviceSelector>,
    /// The host device connected to it, reported to the frontend.
    device: Option<u32>,
    /// That device runs at SuperSpeed: its descriptors are rewritten.
    superspeed: bool,
    /// The address the guest gave it (SET_ADDRESS), 0 before.
    address: u8,
    /// SuperSpeed: configuration descriptors as rewritten for the guest, bounded.
    configs: superspeed::ConfigCache,
}

/// Per-frontend counters, logged as `event=stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests answered with success.
    pub completed: u64,
    /// Unlink requests that found their request in flight.
    pub unlinked: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Times the frontend had filled the URB ring when it was looked at.
    pub ring_full: u64,
    /// Data bytes moved.
    pub bytes: u64,
    /// Of those, IN data (device to guest: what a guest reads).
    pub bytes_in: u64,
}

/// A request handed to the host, with its buffer in our frames.
struct InFlight {
    token: u64,
    device: u32,
    buffer: Buffer,
    direction: host::Direction,
    /// Its isochronous packets (what is copied back of each).
    iso_packets: Vec<IsoPacket>,
    /// A GET_DESCRIPTOR of a SuperSpeed device whose answer is rewritten: its type and index.
    rewrite: Option<(u8, u8)>,
    /// The virtual port it was sent to.
    port: u8,
    /// The unlink request waiting for this one's answer.
    unlinked_by: Option<u16>,
}

struct Connection<P> {
    rings: Vec<GrantMapping<P>>,
    urb: BackRing<P, UsbifUrbRequest, UsbifUrbResponse>,
    conn: BackRing<P, UsbifConnRequest, UsbifConnResponse>,
    port: EvtchnPort,
    /// By request id. At most the ring's size: a frontend cannot have more requests out
    /// without overrunning its ring.
    inflight: InFlightTable,
    /// Its grants a copy wrote to lately: IN requests into them need no check first.
    written: WrittenGrants,
    /// Port changes (port, speed) not yet reported on the conn ring.
    changes: VecDeque<(u8, u8)>,
    stats: Stats,
    logged: Stats,
}

struct Device<P> {
    dir: String,
    frontend_dir: String,
    watch_token: String,
    num_ports: u8,
    usb_ver: u8,
    /// The frontend's name, from the toolstack ([`pvusb::FRONTEND_NAME_KEY`]).
    frontend_name: Option<String>,
    state: XenbusState,
    ports: Vec<VPort>,
    conn: Option<Connection<P>>,
    /// Warnings about its requests logged in this interval, and those left out.
    warned: u32,
    suppressed: u32,
    /// Its state changes looked at in this interval, and whether one waits for the next.
    reconciles: u32,
    reconcile_due: bool,
    /// State change notifications that came over the budget, in this interval.
    deferred: u32,
}

/// The backend of one driver domain.
pub struct Backend<H: GrantMapper, T: XsTransport> {
    hv: H,
    xs: XenStore<T>,
    root: String,
    devices: BTreeMap<DeviceId, Device<H::Page>>,
    /// The host's devices, as its events told.
    known: Vec<DeviceInfo>,
    /// Requests the host holds: token → (frontend device, request id).
    tokens: Tokens,
    /// Bounce frames: every byte a device moves for a guest passes through them.
    pool: FramePool<H::Page>,
    /// Frames of transfers whose frontend is gone, by token: they go back to the pool when
    /// the host reports the transfer finished, not before (a cancelled transfer may still
    /// be running).
    quarantine: BTreeMap<u64, bounce::Frames>,
    /// Answers waiting for their copies, pushed together before publication
    /// ([`Backend::finish_answers`]), with the copies of all of them: one hypercall.
    answers: Vec<Answer>,
    answer_copies: Vec<CopyOp>,
    /// Frontends that had requests left when their budget ran out, in turn.
    busy: VecDeque<DeviceId>,
    /// What all frontends moved since [`Backend::take_moved`].
    moved: Stats,
    /// [`Backend::host_events`]' frontends to flush, kept for its allocation.
    touched: Vec<DeviceId>,
    /// A pass's staged requests and copies, kept for their allocations.
    stage: urb::Stage,
    /// The statuses of a batch of copies, kept for its allocation.
    statuses: Vec<GntStatus>,
    /// Which device may go to which domain.
    policy: Policy,
    /// The inventory last published: key → description.
    published: BTreeMap<String, String>,
    /// Devices or assignments changed since it was published.
    inventory_changed: bool,
}

/// The usbif status of a host error (a negative Linux errno, as xen-hcd translates).
pub fn status_of(e: TransferError) -> i32 {
    match e {
        TransferError::Stall => USBIF_STATUS_STALL,
        TransferError::NoDevice => USBIF_STATUS_NODEV,
        TransferError::Protocol => USBIF_STATUS_IOERROR,
        TransferError::Babble => USBIF_STATUS_BABBLE,
        TransferError::Invalid => USBIF_STATUS_INVAL,
        TransferError::Cancelled | TransferError::Shutdown => USBIF_STATUS_SHUTDOWN,
        // How a device refuses a request it will not carry out (USB 2.0 9.2.7).
        TransferError::Refused => USBIF_STATUS_STALL,
    }
}

/// The conn-ring speed code of a host device: SuperSpeed is offered as high speed.
fn speed_code(s: Speed) -> u8 {
    match s {
        Speed::Low => USBIF_SPEED_LOW,
        Speed::Full => USBIF_SPEED_FULL,
        Speed::High | Speed::Super => USBIF_SPEED_HIGH,
    }
}

fn response(id: u16, status: i32, actual_length: usize) -> UsbifUrbResponse {
    UsbifUrbResponse {
        id,
        start_frame: 0,
        status,
        actual_length: i32::try_from(actual_length).unwrap_or(i32::MAX),
        error_count: 0,
    }
}

fn bad(key: &str, value: &str) -> XenbusError {
    XenbusError::BadValue {
        key: key.into(),
        value: value.into(),
    }
}

impl<H, T> Backend<H, T>
where
    H: GrantMapper + GrantCopier + LocalFrames + EventChannels,
    H::Page: Clone + SharedPage,
    T: XsTransport,
{
    /// Starts watching `/local/domain/<domid>/backend/vusb`.
    pub fn new(hv: H, mut xs: XenStore<T>, domid: DomId) -> Result<Self, XsError> {
        let root = format!("/local/domain/{domid}/backend/vusb");
        xs.watch(&root, WATCH_BACKEND)?;
        info!("event=usbback_watching path={root}");
        Ok(Backend {
            hv,
            xs,
            root,
            devices: BTreeMap::new(),
            known: Vec::new(),
            tokens: Tokens::default(),
            pool: FramePool::default(),
            quarantine: BTreeMap::new(),
            answers: Vec::new(),
            answer_copies: Vec::new(),
            busy: VecDeque::new(),
            moved: Stats::default(),
            touched: Vec::new(),
            stage: urb::Stage::default(),
            statuses: Vec::new(),
            policy: Policy::default(),
            published: BTreeMap::new(),
            inventory_changed: true,
        })
    }

    /// Publishes the host's devices under our `data/usbdom/devices` for the dom0 tool (what
    /// changed only): one key per device ([`xen::pvusb::busid_key`]), the value
    /// `vid=… pid=… speed=… class=… assigned=<domid>/<devid>/<port>|none [serial=…]
    /// product=…` (a serial only when an assignment could name it:
    /// [`pvusb::DeviceSelector`]). Hubs are not offered (libxl refuses them too).
    pub fn publish_inventory(&mut self) {
        use xen::pvusb::{busid_key, DEVICES_DIR};
        if !core::mem::take(&mut self.inventory_changed) {
            return;
        }
        let now: BTreeMap<String, String> = self
            .known
            .iter()
            .filter(|d| !d.is_hub)
            .map(|d| {
                let assigned = self
                    .devices
                    .iter()
                    .find_map(|(id, dev)| {
                        dev.ports
                            .iter()
                            .zip(1u8..)
                            .find(|(p, _)| p.device == Some(d.id))
                            .map(|(_, n)| format!("{}/{}/{n}", id.frontend, id.devid))
                    })
                    .unwrap_or_else(|| String::from("none"));
                let serial = d
                    .serial
                    .as_deref()
                    .filter(|s| pvusb::valid_serial(s))
                    .map(|s| format!("serial={s} "))
                    .unwrap_or_default();
                let description = format!(
                    "vid={:04x} pid={:04x} speed={} class={:02x} assigned={assigned} {serial}product={}",
                    d.vendor_id,
                    d.product_id,
                    d.speed.name(),
                    d.class,
                    d.product.as_deref().unwrap_or("")
                );
                (busid_key(&d.busid), description)
            })
            .collect();
        if now == self.published {
            return;
        }
        for key in self.published.keys().filter(|k| !now.contains_key(*k)) {
            let path = format!("{DEVICES_DIR}/{key}");
            if let Err(e) = self.xs.rm(TxId::NONE, &path) {
                warn!("event=xenstore_error op=rm path={path} error={e}");
            }
        }
        for (key, value) in now
            .iter()
            .filter(|(k, v)| self.published.get(*k) != Some(*v))
        {
            let path = format!("{DEVICES_DIR}/{key}");
            if let Err(e) = self.xs.write(TxId::NONE, &path, value.as_bytes()) {
                warn!("event=xenstore_error op=write path={path} error={e}");
            }
        }
        info!("event=usb_devices_published count={}", now.len());
        self.published = now;
    }

    /// Sets the device policy (the driver domain's `usbpolicy=`). Ports connected already
    /// keep their devices; later assignments, SET_CONFIGURATION and SET_INTERFACE requests
    /// follow it.
    pub fn set_policy(&mut self, policy: Policy) {
        for (i, r) in policy.rules.iter().enumerate() {
            info!("event=usb_policy_rule rule={} text={}", i + 1, r.text());
        }
        self.policy = policy;
    }

    /// The hypervisor handle (the main loop scans its event channels).
    pub fn hypervisor(&mut self) -> &mut H {
        &mut self.hv
    }

    /// The xenstore connection (the driver domain publishes its USB devices through it).
    pub fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }

    /// Devices known, with the state we last wrote.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceId, XenbusState)> + '_ {
        self.devices.iter().map(|(id, d)| (*id, d.state))
    }

    /// A connected frontend's counters.
    pub fn stats(&self, id: DeviceId) -> Option<Stats> {
        self.devices.get(&id)?.conn.as_ref().map(|c| c.stats)
    }

    /// The host device on port `port` (1-based) of `id`, if one is reported to the frontend.
    pub fn port_device(&self, id: DeviceId, port: u8) -> Option<u32> {
        let dev = self.devices.get(&id)?;
        dev.ports.get(usize::from(port).checked_sub(1)?)?.device
    }

    /// Requests of all frontends the host holds now.
    pub fn in_flight(&self) -> usize {
        self.tokens.len()
    }

    /// Bounce frames in use: by transfers in flight, answers not yet published, and
    /// transfers of departed frontends the host has not finished yet.
    pub fn bounce_frames_held(&self) -> usize {
        self.pool.held()
    }

    /// What every frontend together moved since the last call: for the driver domain's
    /// `event=cpu`, so its hypercalls and notifications can be put per MiB and per request.
    pub fn take_moved(&mut self) -> Stats {
        core::mem::take(&mut self.moved)
    }

    /// Logs `event=stats` for every connected frontend whose counters changed since last
    /// time (the main loop calls this now and then, not per URB). Returns whether any had.
    pub fn log_stats(&mut self) -> bool {
        let mut any = false;
        for (id, dev) in &mut self.devices {
            if dev.suppressed > 0 {
                info!(
                    "event=log_suppressed domid={} devid={} count={} per_interval={WARNINGS_PER_INTERVAL}",
                    id.frontend, id.devid, dev.suppressed
                );
            }
            (dev.warned, dev.suppressed) = (0, 0);
            if dev.deferred > 0 {
                info!(
                    "event=state_changes_deferred domid={} devid={} count={} per_interval={RECONCILES_PER_INTERVAL}",
                    id.frontend, id.devid, dev.deferred
                );
            }
            (dev.reconciles, dev.deferred) = (0, 0);
            if let Some(c) = dev.conn.as_mut() {
                if c.stats != c.logged {
                    log_stats(*id, &c.stats, "running", c.inflight.len());
                    c.logged = c.stats;
                    any = true;
                }
            }
        }
        any
    }

    /// Handles what xenstore delivered: watch events make every device be looked at again.
    pub fn poll_xenstore<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        host: &mut U,
    ) -> Result<(), XsError> {
        self.xs.poll()?;
        // A frontend's own state node, or a node in a known device's backend directory,
        // names its device: only that one is looked at again (our own writes there fire the
        // watch too, and a frontend that makes us write must not make us rescan every
        // controller). Anything else under our directory (a new device) means a full rescan.
        let mut rescan = false;
        let mut frontends = BTreeSet::new();
        let mut backend_nodes = BTreeSet::new();
        let mut assignments = BTreeSet::new();
        while let Some(e) = self.xs.next_event() {
            if let Some(id) = self
                .devices
                .iter()
                .find(|(_, d)| d.watch_token == e.token)
                .map(|(id, _)| *id)
            {
                frontends.insert(id);
                continue;
            }
            match self.device_node(&e.path) {
                // The directory itself: created or removed as a whole.
                Some((_, "")) => rescan = true,
                Some((_, rest)) if rest.starts_with(PORT_STATUS_DIR) => {}
                Some((id, rest)) if rest.starts_with(ASSIGN_DIR) => {
                    assignments.insert(id);
                }
                // The toolstack's keys (online, state) or our own writes: a frontend makes us
                // write only as often as its own changes are looked at, so not budgeted.
                Some((id, _)) => {
                    backend_nodes.insert(id);
                }
                None => rescan = true,
            }
        }
        if rescan {
            self.rescan(host);
        } else {
            for id in frontends {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.reconcile_due = true;
                    if d.reconciles >= RECONCILES_PER_INTERVAL {
                        d.deferred = d.deferred.saturating_add(1);
                    }
                }
            }
            for id in backend_nodes {
                if self.devices.contains_key(&id) {
                    self.reconcile(id, host);
                }
            }
            // The toolstack's port assignments (only it writes them).
            for id in assignments {
                if self.devices.contains_key(&id) {
                    self.read_assignments(id, host);
                }
            }
        }
        // Each frontend's state changes, within its budget.
        let due: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.reconcile_due && d.reconciles < RECONCILES_PER_INTERVAL)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(d) = self.devices.get_mut(&id) {
                d.reconciles += 1;
                d.reconcile_due = false;
                self.reconcile(id, host);
            }
        }
        Ok(())
    }

    /// Handles a notification on `port`.
    pub fn handle_event<U: UsbHost<H::Page> + ?Sized>(&mut self, port: EvtchnPort, host: &mut U) {
        let id = self
            .devices
            .iter()
            .find(|(_, d)| d.conn.as_ref().is_some_and(|c| c.port == port))
            .map(|(id, _)| *id);
        if let Some(id) = id {
            self.service(id, host);
        }
    }

    /// Handles what the host reported: completed transfers are answered, devices that came
    /// are connected to the ports assigned them, devices that left are reported gone.
    pub fn host_events<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        host: &mut U,
        events: &mut Vec<HostEvent>,
    ) {
        let mut touched = core::mem::take(&mut self.touched);
        self.inventory_changed |= events.iter().any(|e| !matches!(e, HostEvent::Completed(_)));
        for e in events.drain(..) {
            match e {
                HostEvent::Completed(c) => {
                    if let Some(id) = self.complete(c) {
                        touched.push(id);
                    }
                }
                HostEvent::Attached(mut info) => {
                    for field in info.cap_strings() {
                        warn!(
                            "event=usb_device_string_capped busid={} field={field} limit={}",
                            info.busid,
                            host::MAX_STRING_CHARS
                        );
                    }
                    let waiting: Vec<(DeviceId, u8)> = self
                        .devices
                        .iter()
                        .flat_map(|(id, d)| {
                            d.ports.iter().zip(1u8..).filter_map(|(p, n)| {
                                let wanted = p.assigned.as_ref().is_some_and(|s| {
                                    s.matches(
                                        &info.busid,
                                        info.vendor_id,
                                        info.product_id,
                                        info.serial.as_deref(),
                                    )
                                });
                                (p.device.is_none() && wanted).then_some((*id, n))
                            })
                        })
                        .collect();
                    self.known.retain(|k| k.id != info.id);
                    self.known.push(info);
                    for (id, n) in waiting {
                        self.connect_port(id, n, host);
                        touched.push(id);
                    }
                }
                HostEvent::Detached { id: gone, busid } => {
                    self.known.retain(|k| k.id != gone);
                    let mut emptied = Vec::new();
                    for (id, dev) in &mut self.devices {
                        for (p, n) in dev.ports.iter_mut().zip(1u8..) {
                            if p.device == Some(gone) {
                                p.device = None;
                                p.address = 0;
                                info!(
                                    "event=port_disconnected domid={} devid={} port={n} busid={busid} reason=unplugged",
                                    id.frontend, id.devid
                                );
                                if let Some(c) = dev.conn.as_mut() {
                                    queue_change(c, n, USBIF_SPEED_NONE);
                                }
                                touched.push(*id);
                                emptied.push((*id, n));
                            }
                        }
                    }
                    // Still assigned: the device is connected again when it comes back.
                    for (id, n) in emptied {
                        self.port_status(id, n, "waiting device_absent");
                    }
                }
            }
        }
        touched.sort();
        touched.dedup();
        for &id in &touched {
            self.flush(id);
        }
        touched.clear();
        self.touched = touched;
    }

    /// The known device whose backend directory holds node `path`, and the node's path
    /// within it (empty for the directory itself).
    fn device_node<'p>(&self, path: &'p str) -> Option<(DeviceId, &'p str)> {
        let rest = path.strip_prefix(self.root.as_str())?.strip_prefix('/')?;
        let mut parts = rest.splitn(3, '/');
        let frontend = DomId::parse(parts.next()?)?;
        let devid = parse_decimal(parts.next()?).and_then(|v| u32::try_from(v).ok())?;
        let id = DeviceId { frontend, devid };
        self.devices
            .contains_key(&id)
            .then_some((id, parts.next().unwrap_or("")))
    }

    fn rescan<U: UsbHost<H::Page> + ?Sized>(&mut self, host: &mut U) {
        let mut present = Vec::new();
        let frontends = match self.xs.directory(TxId::NONE, &self.root) {
            Ok(d) => d,
            Err(XsError::Xs(xen::abi::xs_wire::XsdError::Enoent)) => Vec::new(),
            Err(e) => {
                warn!(
                    "event=xenstore_error op=directory path={} error={e}",
                    self.root
                );
                return;
            }
        };
        for fe in frontends {
            let Some(frontend) = DomId::parse(&fe) else {
                continue;
            };
            let devids = self
                .xs
                .directory(TxId::NONE, &format!("{}/{fe}", self.root))
                .unwrap_or_default();
            for d in devids {
                let Some(devid) = parse_decimal(&d).and_then(|v| u32::try_from(v).ok()) else {
                    continue;
                };
                present.push(DeviceId { frontend, devid });
            }
        }
        let gone: Vec<DeviceId> = self
            .devices
            .keys()
            .filter(|id| !present.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget(id, "directory_removed", host);
        }
        for id in present {
            if !self.devices.contains_key(&id) {
                self.add(id);
            }
            if self.devices.contains_key(&id) {
                self.reconcile(id, host);
            }
            if self.devices.contains_key(&id) {
                self.read_assignments(id, host);
            }
        }
    }

    fn add(&mut self, id: DeviceId) {
        let dir = format!("{}/{}/{}", self.root, id.frontend, id.devid);
        match self.read_config(&dir, id) {
            Ok((frontend_dir, num_ports, usb_ver)) => {
                let watch_token = format!("fe-{}-{}", id.frontend, id.devid);
                if let Err(e) = self
                    .xs
                    .watch(&format!("{frontend_dir}/state"), &watch_token)
                {
                    warn!("event=xenstore_error op=watch path={frontend_dir}/state error={e}");
                    return;
                }
                if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::InitWait) {
                    warn!("event=xenstore_error op=write path={dir}/state error={e}");
                }
                info!(
                    "event=vusb_initwait domid={} devid={} ports={num_ports} usb_ver={usb_ver}",
                    id.frontend, id.devid
                );
                let frontend_name = self
                    .xs
                    .read_string(TxId::NONE, &format!("{dir}/{}", pvusb::FRONTEND_NAME_KEY))
                    .ok()
                    .filter(|n| !n.is_empty());
                let dev = Device {
                    dir,
                    frontend_dir,
                    frontend_name,
                    watch_token,
                    num_ports,
                    usb_ver,
                    state: XenbusState::InitWait,
                    ports: alloc::vec![VPort::default(); usize::from(num_ports)],
                    conn: None,
                    warned: 0,
                    suppressed: 0,
                    reconciles: 0,
                    reconcile_due: false,
                    deferred: 0,
                };
                self.devices.insert(id, dev);
            }
            Err(e) => warn!(
                "event=vusb_refused domid={} devid={} {e}",
                id.frontend, id.devid
            ),
        }
    }

    /// The toolstack's keys of a new device (trusted writer, still checked).
    fn read_config(&mut self, dir: &str, id: DeviceId) -> Result<(String, u8, u8), XenbusError> {
        let frontend_dir = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/frontend"))?;
        let fe_id = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/frontend-id"))?;
        if DomId::parse(&fe_id) != Some(id.frontend) {
            return Err(bad("frontend-id", &fe_id));
        }
        let expected = format!("/local/domain/{}/device/vusb/{}", id.frontend, id.devid);
        if frontend_dir != expected {
            return Err(bad("frontend", &frontend_dir));
        }
        let num_ports = xenbus::read_u32(
            &mut self.xs,
            TxId::NONE,
            dir,
            "num-ports",
            1..=USBIF_MAX_PORTNR,
        )? as u8;
        let usb_ver = xenbus::read_u32(&mut self.xs, TxId::NONE, dir, "usb-ver", 1..=2)? as u8;
        Ok((frontend_dir, num_ports, usb_ver))
    }

    fn reconcile<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, host: &mut U) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let (dir, frontend_dir, ours) = (dev.dir.clone(), dev.frontend_dir.clone(), dev.state);
        // A destroyed domain's xenstore directory goes with it, and nobody else removes a
        // backend directory the toolstack did not create through libxl: take everything back
        // from the frontend and delete our directory ourselves. The toolstack made the
        // frontend directory readable to us, so EACCES means it is gone too (xenstored
        // answers EACCES for a missing node whose nearest ancestor we cannot read).
        if matches!(
            self.xs.read(TxId::NONE, &frontend_dir),
            Err(XsError::Xs(
                xen::abi::xs_wire::XsdError::Enoent | xen::abi::xs_wire::XsdError::Eacces
            ))
        ) {
            self.forget(id, "frontend_gone", host);
            // After the teardown, whose state writes would recreate it.
            self.remove_dir(&dir);
            return;
        }
        // libxl removes a device by writing our state to Closing (and online to 0).
        let written = xenbus::read_state(&mut self.xs, TxId::NONE, &dir).ok();
        if written == Some(XenbusState::Closing)
            && ours != XenbusState::Closing
            && ours != XenbusState::Closed
        {
            self.disconnect(id, "toolstack_closing", host);
        } else {
            let frontend = xenbus::read_state(&mut self.xs, TxId::NONE, &frontend_dir)
                .unwrap_or(XenbusState::Unknown);
            match xenbus::backend_action(ours, frontend) {
                BackendAction::Connect => self.connect(id, host),
                BackendAction::Disconnect(_) => self.disconnect(id, "frontend_closing", host),
                BackendAction::Reset => {
                    if let Some(d) = self.devices.get_mut(&id) {
                        d.state = XenbusState::InitWait;
                    }
                    let _ = xenbus::switch_state(&mut self.xs, &dir, XenbusState::InitWait);
                    info!(
                        "event=vusb_initwait domid={} devid={} reason=frontend_reinitialising",
                        id.frontend, id.devid
                    );
                }
                BackendAction::None => {}
            }
        }
        let closed = self
            .devices
            .get(&id)
            .is_some_and(|d| d.state == XenbusState::Closed);
        let online = self
            .xs
            .read_string(TxId::NONE, &format!("{dir}/online"))
            .unwrap_or_default();
        if closed && online != "1" {
            // As `xl devd` would: a closed device the toolstack took offline leaves, and the
            // driver domain deletes its own backend directory.
            self.remove_dir(&dir);
            self.forget(id, "offline", host);
        }
    }

    /// Deletes a device's backend directory, and its frontend's directory above it once that
    /// is empty (as libxl's path cleanup does), in one transaction so that a controller the
    /// toolstack adds meanwhile is not taken with it.
    fn remove_dir(&mut self, dir: &str) {
        let parent = String::from(dir.rsplit_once('/').map_or(dir, |(p, _)| p));
        let result = self.xs.transaction(5, |xs, tx| {
            xs.rm(tx, dir)?;
            if xs.directory(tx, &parent)?.is_empty() {
                xs.rm(tx, &parent)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            warn!("event=xenstore_error op=rm path={dir} error={e}");
        }
    }

    fn connect<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, host: &mut U) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let fdir = dev.frontend_dir.clone();
        let read =
            |xs: &mut XenStore<T>, key, range| xenbus::read_u32(xs, TxId::NONE, &fdir, key, range);
        let refs = (|| {
            let urb = GrantRef(read(&mut self.xs, "urb-ring-ref", 0..=u32::MAX)?);
            let conn = GrantRef(read(&mut self.xs, "conn-ring-ref", 0..=u32::MAX)?);
            let port = EvtchnPort(read(&mut self.xs, "event-channel", 1..=u32::MAX)?);
            Ok::<_, XenbusError>((urb, conn, port))
        })();
        let (urb_ref, conn_ref, remote_port) = match refs {
            Ok(r) => r,
            Err(e) => return self.refuse(id, &format!("{e}")),
        };
        let reqs = [urb_ref, conn_ref].map(|gref| MapRequest {
            dom: id.frontend,
            gref,
            readonly: false,
        });
        let results = match self.hv.map(&reqs) {
            Ok(r) => r,
            Err(_) => return self.refuse(id, "reason=map_batch"),
        };
        let mut rings = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(m) => rings.push(m),
                Err(s) => failure = Some(s),
            }
        }
        if let Some(status) = failure {
            let _ = self.hv.unmap(rings);
            return self.refuse(
                id,
                &format!("reason=ring_map_failed status={}", status.name()),
            );
        }
        let port = match self.hv.bind_interdomain(id.frontend, remote_port) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.hv.unmap(rings);
                return self.refuse(
                    id,
                    &format!("reason=bind_failed error={e} remote_port={remote_port}"),
                );
            }
        };
        let urb = BackRing::new(rings[0].page.clone());
        let conn = BackRing::new(rings[1].page.clone());
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let mut c = Connection {
            rings,
            urb,
            conn,
            port,
            inflight: InFlightTable::default(),
            written: WrittenGrants::default(),
            changes: VecDeque::new(),
            stats: Stats::default(),
            logged: Stats::default(),
        };
        // Devices already on its ports are reported first.
        for (p, n) in dev.ports.iter().zip(1u8..) {
            if let Some(d) = p.device {
                let speed = self.known.iter().find(|k| k.id == d).map(|k| k.speed);
                queue_change(&mut c, n, speed.map_or(USBIF_SPEED_NONE, speed_code));
            }
        }
        dev.conn = Some(c);
        dev.state = XenbusState::Connected;
        let (dir, ports, ver) = (dev.dir.clone(), dev.num_ports, dev.usb_ver);
        if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Connected) {
            warn!("event=xenstore_error op=write path={dir}/state error={e}");
        }
        info!(
            "event=frontend_connected domid={} devid={} ports={ports} usb_ver={ver} evtchn={port} urb_ring_ref={urb_ref} conn_ring_ref={conn_ref}",
            id.frontend, id.devid
        );
        // The frontend may have notified before we bound the channel.
        self.service(id, host);
    }

    /// Gives up on a frontend that published unusable ring details: Closing, as Linux's
    /// `xenbus_dev_fatal` does, so the toolstack sees it.
    fn refuse(&mut self, id: DeviceId, why: &str) {
        warn!(
            "event=frontend_refused domid={} devid={} {why}",
            id.frontend, id.devid
        );
        if let Some(dev) = self.devices.get_mut(&id) {
            dev.state = XenbusState::Closing;
            let dir = dev.dir.clone();
            let _ = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closing);
        }
    }

    fn disconnect<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, why: &str, host: &mut U) {
        // Answers already queued go to this connection's ring, never to a later one's.
        self.finish_answers();
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let conn = dev.conn.take();
        dev.state = XenbusState::Closed;
        self.busy.retain(|b| *b != id);
        // Devices stay assigned, and are reported again when the frontend reconnects.
        for p in &mut dev.ports {
            p.address = 0;
        }
        let dir = dev.dir.clone();
        if let Some(c) = conn {
            let Connection {
                rings,
                urb,
                conn,
                port,
                mut inflight,
                stats,
                ..
            } = c;
            // Every transfer is taken back from the host; its frames stay out of use until
            // the host says it finished (a cancel is asynchronous, and may fail).
            let cancelled = inflight.len();
            let mut quarantined = 0;
            for f in inflight.drain() {
                host.cancel(f.device, f.token);
                self.tokens.take(f.token);
                quarantined += f.buffer.frames.len();
                self.quarantine.insert(f.token, f.buffer.frames);
            }
            // The rings are dropped before their pages are unmapped, in one batch.
            drop(urb);
            drop(conn);
            if let Err(s) = self.hv.unmap(rings) {
                warn!(
                    "event=grant_unmap_failed domid={} devid={} status={} what=rings",
                    id.frontend,
                    id.devid,
                    s.name()
                );
            }
            let _ = self.hv.close(port);
            log_stats(id, &stats, "teardown", 0);
            info!(
                "event=frontend_transfers_cancelled domid={} devid={} count={cancelled} frames_quarantined={quarantined}",
                id.frontend, id.devid
            );
        }
        if let Err(e) = xenbus::switch_state(&mut self.xs, &dir, XenbusState::Closed) {
            warn!("event=xenstore_error op=write path={dir}/state error={e}");
        }
        info!(
            "event=frontend_disconnected domid={} devid={} reason={why}",
            id.frontend, id.devid
        );
    }

    fn forget<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, why: &str, host: &mut U) {
        if self.devices.get(&id).is_some_and(|d| d.conn.is_some()) {
            self.disconnect(id, why, host);
        }
        if let Some(dev) = self.devices.remove(&id) {
            let _ = self
                .xs
                .unwatch(&format!("{}/state", dev.frontend_dir), &dev.watch_token);
            info!(
                "event=vusb_removed domid={} devid={} reason={why} grants_mapped={}",
                id.frontend,
                id.devid,
                self.hv.mapped()
            );
        }
    }

    /// Reads the toolstack's port assignments (`usbdom-port/<N>`) and follows their changes.
    fn read_assignments<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, host: &mut U) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let (dir, num_ports) = (dev.dir.clone(), dev.num_ports);
        let mut changed = false;
        for n in 1..=num_ports {
            let value = self
                .xs
                .read_string(TxId::NONE, &format!("{dir}/{ASSIGN_DIR}/{n}"))
                .unwrap_or_default();
            let value = value.trim();
            let want = if value.is_empty() {
                None
            } else if let Some(s) = pvusb::DeviceSelector::parse(value) {
                Some(s)
            } else {
                warn!(
                    "event=port_refused domid={} devid={} port={n} reason=bad_device value={:?}",
                    id.frontend,
                    id.devid,
                    value.get(..32).unwrap_or(value)
                );
                None
            };
            let Some(dev) = self.devices.get(&id) else {
                return;
            };
            let p = &dev.ports[usize::from(n) - 1];
            if p.assigned == want {
                continue;
            }
            changed = true;
            if p.device.is_some() {
                self.disconnect_port(id, n, "unassigned", host);
            }
            if let Some(dev) = self.devices.get_mut(&id) {
                dev.ports[usize::from(n) - 1].assigned = want.clone();
            }
            if want.is_some() {
                self.connect_port(id, n, host);
            } else {
                let key = format!("{dir}/{PORT_STATUS_DIR}/{n}");
                let _ = self.xs.rm(TxId::NONE, &key);
            }
        }
        if changed && !self.flush(id) {
            self.misbehaving(id, "reason=conn_ring_overrun", host);
        }
    }

    /// Connects the device assigned to port `n` of `id`, if it is present and may be.
    fn connect_port<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, n: u8, host: &mut U) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let Some(want) = dev.ports[usize::from(n) - 1].assigned.clone() else {
            return;
        };
        let usb_ver = dev.usb_ver;
        // Of several devices with the same IDs, one no other port holds.
        let held: Vec<u32> = self
            .devices
            .iter()
            .flat_map(|(other, d)| {
                d.ports
                    .iter()
                    .zip(1u8..)
                    .filter(move |(_, m)| (*other, *m) != (id, n))
                    .filter_map(|(p, _)| p.device)
            })
            .collect();
        let mut candidates = self
            .known
            .iter()
            .filter(|k| want.matches(&k.busid, k.vendor_id, k.product_id, k.serial.as_deref()));
        let first = candidates.clone().next();
        let Some(info) = candidates
            .find(|k| !held.contains(&k.id))
            .or(first)
            .cloned()
        else {
            info!(
                "event=port_waiting domid={} devid={} port={n} device={want} reason=device_absent",
                id.frontend, id.devid
            );
            self.port_status(id, n, "waiting device_absent");
            return;
        };
        let busid = info.busid.clone();
        if info.is_hub {
            return self.refuse_port(id, n, &busid, "hub");
        }
        if usb_ver == 1 && info.speed >= Speed::High {
            return self.refuse_port(id, n, &busid, "high_speed_device_on_usb1_controller");
        }
        if let Some((rule, text)) = self.policy_denies(id, &info) {
            return self.refuse_port(id, n, &busid, &format!("policy rule={rule} text={text}"));
        }
        let elsewhere = self.devices.iter().find_map(|(other, d)| {
            d.ports
                .iter()
                .zip(1u8..)
                .find(|(p, m)| p.device == Some(info.id) && (*other, *m) != (id, n))
                .map(|(_, m)| (*other, m))
        });
        if let Some((other, m)) = elsewhere {
            return self.refuse_port(
                id,
                n,
                &busid,
                &format!(
                    "assigned_elsewhere domid_holding={} port_holding={m}",
                    other.frontend
                ),
            );
        }
        // A fresh device for the guest, as on a real plug.
        if let Err(e) = host.reset(info.id) {
            warn!(
                "event=port_reset_failed domid={} devid={} port={n} busid={busid} error={e}",
                id.frontend, id.devid
            );
        }
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let p = &mut dev.ports[usize::from(n) - 1];
        p.device = Some(info.id);
        p.superspeed = info.speed == Speed::Super;
        p.address = 0;
        p.configs.clear();
        let code = speed_code(info.speed);
        info!(
            "event=port_connected domid={} devid={} port={n} busid={busid} vid={:04x} pid={:04x} speed={} reported_speed={code}",
            id.frontend,
            id.devid,
            info.vendor_id,
            info.product_id,
            info.speed.name()
        );
        if let Some(c) = dev.conn.as_mut() {
            queue_change(c, n, code);
        }
        self.port_status(id, n, "connected");
        self.inventory_changed = true;
    }

    /// Refuses the assignment of `busid` to port `n` of `id`, in the log and in the port's
    /// status key (`usbctl attach` shows it).
    fn refuse_port(&mut self, id: DeviceId, n: u8, busid: &str, reason: &str) {
        warn!(
            "event=port_refused domid={} devid={} port={n} busid={busid} reason={reason}",
            id.frontend, id.devid
        );
        self.port_status(id, n, &format!("refused {reason}"));
    }

    /// Writes what became of port `n`'s assignment to `usbdom-port-status/<n>`.
    fn port_status(&mut self, id: DeviceId, n: u8, text: &str) {
        let Some(dev) = self.devices.get(&id) else {
            return;
        };
        let key = format!("{}/{PORT_STATUS_DIR}/{n}", dev.dir);
        if let Err(e) = self.xs.write(TxId::NONE, &key, text.as_bytes()) {
            warn!("event=xenstore_error op=write path={key} error={e}");
        }
    }

    /// Takes the device off port `n` of `id`: its transfers are cancelled (their answers
    /// follow) and the frontend told.
    fn disconnect_port<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        id: DeviceId,
        n: u8,
        why: &str,
        host: &mut U,
    ) {
        let Some(dev) = self.devices.get_mut(&id) else {
            return;
        };
        let p = &mut dev.ports[usize::from(n) - 1];
        let Some(device) = p.device.take() else {
            return;
        };
        p.address = 0;
        let busid = self
            .known
            .iter()
            .find(|k| k.id == device)
            .map(|k| k.busid.clone())
            .unwrap_or_default();
        if let Some(c) = dev.conn.as_mut() {
            for f in c.inflight.values().filter(|f| f.device == device) {
                host.cancel(device, f.token);
            }
            queue_change(c, n, USBIF_SPEED_NONE);
        }
        info!(
            "event=port_disconnected domid={} devid={} port={n} busid={busid} reason={why}",
            id.frontend, id.devid
        );
        self.inventory_changed = true;
    }

    /// Pushes what is queued for `id`: port changes onto the conn ring (one per request
    /// the frontend gave), responses on both rings, and a notification if the frontend asks
    /// for one. False when the frontend overran its conn ring.
    fn flush(&mut self, id: DeviceId) -> bool {
        self.finish_answers();
        let Some(c) = self.devices.get_mut(&id).and_then(|d| d.conn.as_mut()) else {
            return true;
        };
        while !c.changes.is_empty() {
            match c.conn.next_request() {
                Ok(Some(req)) => {
                    let Some((portnum, speed)) = c.changes.pop_front() else {
                        break;
                    };
                    let rsp = UsbifConnResponse {
                        id: req.id,
                        portnum,
                        speed,
                    };
                    // Cannot fail: the request was just consumed.
                    let _ = c.conn.push_response(&rsp);
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        let notify_conn = c.conn.push_responses_and_check_notify();
        let notify_urb = c.urb.push_responses_and_check_notify();
        if notify_conn || notify_urb {
            let _ = self.hv.send(c.port);
        }
        true
    }

    fn misbehaving<U: UsbHost<H::Page> + ?Sized>(&mut self, id: DeviceId, why: &str, host: &mut U) {
        warn!(
            "event=frontend_misbehaving domid={} devid={} {why}",
            id.frontend, id.devid
        );
        self.disconnect(id, "protocol_violation", host);
    }
}

/// Queues a port change for the conn ring, dropping it when the frontend has let too many
/// pile up.
fn queue_change<P>(c: &mut Connection<P>, port: u8, speed: u8) {
    if c.changes.len() < MAX_PENDING_CHANGES {
        c.changes.push_back((port, speed));
    }
}

/// The `log` target of lines logged every second while guests move data: a logger may keep
/// them off slow sinks (the driver domain's COM1 traps to dom0 for every byte).
pub const PERIODIC_TARGET: &str = "periodic";

/// `in_flight`: requests taken from the ring and not answered yet.
fn log_stats(id: DeviceId, s: &Stats, phase: &str, in_flight: usize) {
    info!(
        target: PERIODIC_TARGET,
        "event=stats domid={} devid={} phase={phase} completed={} unlinked={} errors={} ring_full={} bytes={} bytes_in={} in_flight={in_flight}",
        id.frontend, id.devid, s.completed, s.unlinked, s.errors, s.ring_full, s.bytes, s.bytes_in
    );
}

#[cfg(test)]
mod tests;
