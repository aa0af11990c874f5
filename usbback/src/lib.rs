//! The PVUSB backend ("usbback"): one virtual host controller per frontend device
//! (`backend/vusb/<frontend>/<devid>`), each a virtualised share of the real controller.
//!
//! The lifecycle (`frontends.rs`): it watches its backend directory, reaches InitWait well inside libxl's
//! 10 s, connects when the frontend has published its rings (maps both rings, binds the event
//! channel, goes Connected), follows either side into Closing/Closed (every transfer
//! cancelled, every grant unmapped), and removes the device directory when the toolstack set
//! `online` to 0.
//!
//! Ports (`ports.rs`): the toolstack (`usbctl attach`) writes a host device's bus id to
//! `usbdom-port/<N>`; the device is reported on the conn ring with its speed once it is
//! present, not a hub and not assigned elsewhere (SuperSpeed devices as high speed, their
//! descriptors rewritten, see [`superspeed`]), and reported gone (speed 0) when the key is
//! cleared or the device unplugged.
//!
//! URBs (`urb.rs`): each request is copied out of the ring once and checked
//! ([`xen::pvusb::UrbRequest::decode`]); its buffer lives in our own frames ([`bounce`]),
//! OUT data copied in from the guest's grants (one batch per pass), and is handed to the host
//! controller ([`host::UsbHost`]) as a scatter-gather list; on completion what the device
//! wrote is copied out with the answer (one batch per flush). With [`DataPath::Map`] the
//! guest's grants are mapped for the transfer instead (one batch per pass) and unmapped before
//! the answers (one batch per flush); copy is the default, and only then is no data grant
//! ever mapped.
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

mod answers;
pub mod bounce;
mod control;
mod frontends;
pub mod host;
mod indirect;
mod inflight;
pub mod persistent;
pub mod policy;
mod ports;
pub mod superspeed;
mod tokens;
mod urb;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use xen::abi::grant_table::GntStatus;

use log::{info, warn};
use usb::{Direction, IsoPacket, Speed};
use xen::abi::usbif::*;
use xen::abi::{DomId, EvtchnPort};

use answers::Answer;
use bounce::{Buffer, FramePool, WrittenGrants};
use inflight::InFlightTable;
use ports::queue_change;
use tokens::Tokens;
use xen::hypervisor::{
    CopyOp, EventChannels, GrantCopier, GrantMapper, GrantMapping, LocalFrames, MapRequest,
};
use xen::page::{PageSpan, SharedPage};
use xen::pvusb::{self, UsbIsoPacketDescriptor};

use host::{DeviceInfo, HostEvent, TransferError, UsbHost};
use policy::Policy;
use xen::ring::BackRing;
use xen::xenbus::{XenbusError, XenbusState};
use xen::xenstore::{XenStore, XsError, XsTransport};

const WATCH_BACKEND: &str = "usbback";
pub use xen::pvusb::{ASSIGN_DIR, PORT_STATUS_DIR};
/// Port changes waiting for conn-ring requests, per frontend: more are dropped (a frontend
/// that stopped reading its conn ring gets no more).
const MAX_PENDING_CHANGES: usize = 64;
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

/// A disconnected frontend's kept mappings, and the host transfers (by token) that may
/// still reach them: unmapped once the last of those is finished.
type DeferredUnmap<P> = (Vec<u64>, Vec<GrantMapping<P>>);

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
    /// That device runs at SuperSpeed and the controller is USB 2: its descriptors are
    /// rewritten for the frontend's USB 2 stack.
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
    /// Indirect requests taken (`feature-max-indirect-segments`).
    pub indirect: u64,
    /// Transfers whose device reached the frontend's kept pages directly, nothing copied
    /// (`feature-persistent`).
    pub zero_copy: u64,
    /// Submissions that waited, taken off the ring, because it held its share of the pool
    /// (`bounce::FramePool::share`).
    pub throttled: u64,
}

/// A request handed to the host, with its buffer in our frames.
struct InFlight {
    token: u64,
    device: u32,
    buffer: Buffer,
    direction: Direction,
    /// Its isochronous packets (what is copied back of each).
    iso_packets: Vec<IsoPacket>,
    /// A GET_DESCRIPTOR of a SuperSpeed device whose answer is rewritten.
    rewrite: Option<superspeed::Rewrite>,
    /// The virtual port it was sent to.
    port: u8,
    /// The unlink request waiting for this one's answer.
    unlinked_by: Option<u16>,
}

struct Connection<P> {
    rings: Vec<GrantMapping<P>>,
    /// The frontend's grants kept mapped, when it promised `feature-persistent` and the data
    /// path copies.
    persistent: Option<persistent::PersistentGrants<P>>,
    urb: BackRing<PageSpan<P>, UsbifUrbRequest, UsbifUrbResponse>,
    conn: BackRing<P, UsbifConnRequest, UsbifConnResponse>,
    port: EvtchnPort,
    /// By request id. At most the ring's size: a frontend cannot have more requests out
    /// without overrunning its ring.
    inflight: InFlightTable,
    /// Its grants a copy wrote to lately: IN requests into them need no check first.
    written: WrittenGrants,
    /// Port changes (port, speed) not yet reported on the conn ring.
    changes: VecDeque<(u8, u8)>,
    /// Submissions taken off the ring while it held its share of the pool, in ring order:
    /// served once its transfers give pages back (at most a ring's worth: each holds its
    /// ring slot until answered). Unlinks behind them are served at once.
    parked: VecDeque<UsbifUrbRequest>,
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

/// How a transfer's data moves between a guest's pages and the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPath {
    /// Through our own frames: OUT data copied in from the guest's grants before the
    /// transfer, IN data copied out after it (`GNTTABOP_copy`, one batch per pass). The
    /// device only ever writes pages the driver domain owns: a late DMA (a stale IOTLB
    /// entry) cannot reach a page its owner has reused.
    #[default]
    Copy,
    /// The guest's grants mapped for the transfer (one batch per pass) and the device
    /// pointed at them; unmapped, in one batch, before the answers are published. Nothing
    /// is copied, but the device writes the guest's own pages.
    Map,
}

impl DataPath {
    /// Its name on the command line and in the log.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Copy => "copy",
            DataPath::Map => "map",
        }
    }

    /// The data path a name names.
    pub fn parse(name: &str) -> Option<DataPath> {
        match name {
            "copy" => Some(DataPath::Copy),
            "map" => Some(DataPath::Map),
            _ => None,
        }
    }
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
    /// A disconnected frontend's kept mappings, unmapped once the host has finished every
    /// one of the listed transfers that reached them directly.
    deferred_unmaps: Vec<DeferredUnmap<H::Page>>,
    /// Answers waiting for their copies, pushed together before publication
    /// ([`Backend::finish_answers`]), with the copies of all of them: one hypercall.
    answers: Vec<Answer>,
    answer_copies: Vec<CopyOp>,
    /// How a transfer's data reaches the guest.
    data_path: DataPath,
    /// Grants mapped for transfers that are over, unmapped together before the answers
    /// are published.
    unmaps: Vec<GrantMapping<H::Page>>,
    /// A pass's map results, kept for the allocation.
    map_results: Vec<Result<GrantMapping<H::Page>, GntStatus>>,
    /// One batch of grants to map and keep ([`persistent`]), kept for its allocation.
    keep_batch: Vec<MapRequest>,
    /// Frontends that had requests left when their budget ran out, in turn.
    busy: VecDeque<DeviceId>,
    /// What all frontends moved since [`Backend::take_moved`].
    moved: Stats,
    /// [`Backend::host_events`]' frontends to flush, kept for its allocation.
    touched: Vec<DeviceId>,
    /// [`Backend::host_events`]' events after the periodic completions, kept for its
    /// allocation.
    later: Vec<HostEvent>,
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

/// The conn-ring speed code of a host device on a controller of `usb_ver`: SuperSpeed is
/// itself on a USB 3 controller, and offered as high speed on the others.
fn speed_code(s: Speed, usb_ver: u8) -> u8 {
    match s {
        Speed::Low => USBIF_SPEED_LOW,
        Speed::Full => USBIF_SPEED_FULL,
        Speed::Super | Speed::SuperPlus if u32::from(usb_ver) >= pvusb::USB_VER_SUPERSPEED => {
            pvusb::USBIF_SPEED_SUPER
        }
        Speed::High | Speed::Super | Speed::SuperPlus => USBIF_SPEED_HIGH,
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
            deferred_unmaps: Vec::new(),
            answers: Vec::new(),
            answer_copies: Vec::new(),
            data_path: DataPath::default(),
            unmaps: Vec::new(),
            map_results: Vec::new(),
            keep_batch: Vec::new(),
            busy: VecDeque::new(),
            moved: Stats::default(),
            touched: Vec::new(),
            later: Vec::new(),
            stage: urb::Stage::default(),
            statuses: Vec::new(),
            policy: Policy::default(),
            published: BTreeMap::new(),
            inventory_changed: true,
        })
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

    /// Chooses how transfers' data reaches the guests from now on (the driver domain's
    /// `datapath=` option). Requests already in flight finish the way they started.
    pub fn set_data_path(&mut self, path: DataPath) {
        info!("event=usbback_data_path path={}", path.name());
        self.data_path = path;
    }

    /// Lets the bounce-frame pool grow to at most `frames` of the driver domain's memory
    /// (`bounce::FramePool::set_limit`): a driver domain with little memory keeps the rest
    /// for its controllers. Logs `event=bounce_pool`.
    pub fn set_bounce_frames(&mut self, frames: usize) {
        let limit = self.pool.set_limit(frames);
        info!(
            "event=bounce_pool max_frames={limit} frontend_share={}",
            self.pool.share()
        );
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

    /// The host's devices as the backend knows them (their strings capped to
    /// [`host::MAX_STRING_CHARS`]).
    pub fn host_devices(&self) -> &[DeviceInfo] {
        &self.known
    }

    /// The configuration descriptors cached for port `port` (1-based) of `id`: rewritten for
    /// a USB 2 frontend, and bounded whatever the device answers.
    pub fn config_cache(&self, id: DeviceId, port: u8) -> Option<&superspeed::ConfigCache> {
        let dev = self.devices.get(&id)?;
        Some(&dev.ports.get(usize::from(port).checked_sub(1)?)?.configs)
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
    ///
    /// Interrupt and isochronous completions are answered, and their frontends notified,
    /// before anything else of the batch: a keyboard's report or an audio frame does not wait
    /// behind the copies of another guest's bulk data. (Each endpoint's completions keep
    /// their order: an endpoint's transfers are all of one type.)
    pub fn host_events<U: UsbHost<H::Page> + ?Sized>(
        &mut self,
        host: &mut U,
        events: &mut Vec<HostEvent>,
    ) {
        let mut touched = core::mem::take(&mut self.touched);
        let mut later = core::mem::take(&mut self.later);
        self.inventory_changed |= events.iter().any(|e| !matches!(e, HostEvent::Completed(_)));
        for e in events.drain(..) {
            match e {
                HostEvent::Completed(c) if self.tokens.is_periodic(c.token) => {
                    if let Some(id) = self.complete(c) {
                        touched.push(id);
                    }
                }
                other => later.push(other),
            }
        }
        self.flush_touched(&mut touched);
        for e in later.drain(..) {
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
        self.flush_touched(&mut touched);
        // Grants of transfers whose frontend is gone, now finished.
        self.finish_answers();
        self.touched = touched;
        self.later = later;
    }

    /// [`Backend::flush`]es each frontend in `touched` once, and empties it.
    fn flush_touched(&mut self, touched: &mut Vec<DeviceId>) {
        touched.sort();
        touched.dedup();
        for &id in touched.iter() {
            self.flush(id);
        }
        touched.clear();
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
}

/// The `log` target of lines logged every second while guests move data: a logger may keep
/// them off slow sinks (the driver domain's COM1 traps to dom0 for every byte).
pub const PERIODIC_TARGET: &str = "periodic";

/// `in_flight`: requests taken from the ring and not answered yet.
fn log_stats(id: DeviceId, s: &Stats, phase: &str, in_flight: usize) {
    info!(
        target: PERIODIC_TARGET,
        "event=stats domid={} devid={} phase={phase} completed={} unlinked={} errors={} ring_full={} bytes={} bytes_in={} in_flight={in_flight} indirect={} zero_copy={} throttled={}",
        id.frontend, id.devid, s.completed, s.unlinked, s.errors, s.ring_full, s.bytes, s.bytes_in, s.indirect, s.zero_copy, s.throttled
    );
}
