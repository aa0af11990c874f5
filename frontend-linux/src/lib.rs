//! A PVUSB frontend that speaks the protocol exactly as Linux's `xen-hcd`
//! (`drivers/usb/host/xen-hcd.c`) does, so the backend can be tested, measured and shown
//! against the behaviour it must serve, without a Linux guest.
//!
//! What it copies from xen-hcd:
//! - **xenstore**: probe reads `num-ports` and `usb-ver` from the backend directory; when the
//!   backend is InitWait, Initialised or Connected and we are Initialising, it grants one page
//!   per ring, allocates one event channel, writes `urb-ring-ref`, `conn-ring-ref` and
//!   `event-channel` in one transaction (retried on `EAGAIN`), lends the backend all 512
//!   conn-ring slots (ids 0..511) and switches straight to Connected. On backend Closing (or
//!   Closed) it gives back every URB with `-ESHUTDOWN`, ends its grants and switches to
//!   Closed.
//! - **URBs**: one grant per page the buffer touches (read-only for OUT), ISO descriptor pages
//!   after the buffer's, at most 16 requests in flight under 16 shadow ids reused last freed
//!   first; on a full ring URBs wait in a queue that [`Frontend::poll`] drains (Linux's 5 ms
//!   timer). An unlink is a request of its own (`pipe | UNLINK`, `unlink_id`) and two
//!   responses are expected: the original id's gives the URB back with `-ECONNRESET`, the
//!   unlink id's only frees the id.
//! - **Checks on responses**, each one fatal for good ([`ProtocolError`]): a producer index
//!   more than a ring ahead, an id of 16 or more, a response to a submit id not in flight, a
//!   grant the backend still holds when its response arrives, a conn response for a port
//!   outside 1..=num-ports or with a speed above 3. After one of them the frontend ignores its
//!   rings and refuses URBs, as xen-hcd does with `info->error`.
//!
//! Where it differs, on purpose:
//! - A producer index that runs ahead of the requests (but less than a ring) is also an
//!   index error; xen-hcd would read stale slots and fail on their ids instead.
//! - Unlinks that found the ring full are sent once slots free up; xen-hcd leaves them queued
//!   until the controller stops.
//! - A duplicate response to an unlink id is logged and dropped; xen-hcd would put the id on
//!   its free list twice.
//! - URBs of 64 KiB or more are refused instead of having their length truncated to u16.
//! - Grants the backend still holds at teardown are retried on every poll instead of leaked.
//! - IN data is copied out of the granted pages into the completion (xen-hcd leaves it in
//!   the URB's pages), unless the URB says `discard_in_data`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod attack;
mod error;
mod lifecycle;
mod responses;
mod submit;
#[cfg(test)]
mod tests;
mod urb;

pub use error::{Error, ProtocolError};
pub(crate) use lifecycle::{probe, publish_rings, Probe};
pub use urb::{errno, translate_status, Completion, Urb, UrbHandle};

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use log::{info, warn};
use usb::{Direction, TransferType};
use xen::abi::usbif::*;
use xen::abi::xs_wire::XsdError;
use xen::abi::{DomId, EvtchnPort, Gfn, GrantRef, PAGE_SIZE};
use xen::hypervisor::{Errno, EventChannels, GrantTable};
use xen::page::{PageSpan, SharedPage};
use xen::pvusb::{self, UsbIsoPacketDescriptor, CONN_RING_SIZE, URB_RING_SIZE};
use xen::ring::{FrontRing, RingError};
use xen::xenbus::{self, FrontendAction, XenbusError, XenbusState};
use xen::xenstore::{TxId, XenStore, XsError, XsTransport};
use zerocopy::{FromZeros, IntoBytes};

/// Shadow ids: one per URB-ring slot (`XENUSB_URB_RING_SIZE`).
const SHADOWS: usize = URB_RING_SIZE as usize;
/// Bytes of one ISO packet descriptor in the granted array.
const ISO_DESCRIPTOR_SIZE: usize = core::mem::size_of::<UsbIsoPacketDescriptor>();
/// The xenstore watch token of the backend's state and of our own directory.
const WATCH_TOKEN: &str = "xenhcd";

/// A port's connection changed (a conn-ring response with a new speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// Root-hub port, 1..=num-ports.
    pub port: u8,
    /// `USBIF_SPEED_*`: 0 is a disconnect.
    pub speed: u8,
}

/// Counters since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// URBs given back, whatever their status.
    pub completed: u64,
    /// URBs given back with a non-zero status.
    pub errors: u64,
    /// Submissions and unlinks that found the URB ring full and were queued.
    pub ring_full: u64,
    /// Bytes transferred (sum of actual lengths).
    pub bytes: u64,
    /// URBs sent as indirect requests.
    pub indirect: u64,
}

/// A submitted URB, from its request until its response.
struct InFlight<P> {
    handle: UrbHandle,
    /// The request as sent.
    req: UsbifUrbRequest,
    /// Its grants, to end: data, ISO descriptor and indirect pages.
    grants: Vec<GrantRef>,
    /// Buffer pages, then ISO descriptor pages or an indirect request's list page.
    pages: Vec<(Gfn, P)>,
    direction: Direction,
    buffer_length: usize,
    page_offset: usize,
    iso_packets: usize,
    /// The caller unlinked it: it is given back with `-ECONNRESET`.
    unlinked: bool,
    /// [`Urb::discard_in_data`].
    discard_in_data: bool,
}

/// xen-hcd's `usb_shadow`: what each of the 16 request ids is doing.
enum Shadow<P> {
    /// Free; remembers whether its last use was an unlink (xen-hcd keeps the old pipe, and
    /// so takes a late response to a free unlink id as legal).
    Free { last_unlink: bool },
    /// A submit in flight.
    Submit(Box<InFlight<P>>),
    /// An unlink in flight.
    Unlink,
}

/// An URB waiting for a free ring slot.
struct Queued {
    handle: UrbHandle,
    urb: Urb,
}

/// The rings and channel of a connected frontend.
struct Connection<P> {
    urb: FrontRing<PageSpan<P>, UsbifUrbRequest, UsbifUrbResponse>,
    conn: FrontRing<P, UsbifConnRequest, UsbifConnResponse>,
    /// One per page of the URB ring, in order.
    urb_ring_refs: Vec<GrantRef>,
    conn_ring_ref: GrantRef,
    port: EvtchnPort,
}

/// One PVUSB frontend device (`device/vusb/<devid>`) of domain `domid`.
pub struct Frontend<G: GrantTable + EventChannels, T: XsTransport> {
    platform: G,
    xs: XenStore<T>,
    nodename: String,
    otherend: String,
    backend_id: DomId,
    num_ports: u8,
    usb_ver: u8,
    state: XenbusState,
    /// The URB ring's `ring-page-order` we ask for; what we get is at most the backend's
    /// `max-ring-page-order` (0, one page, where it offers none).
    ring_page_order: u32,
    conn: Option<Connection<G::Page>>,
    shadow: Vec<Shadow<G::Page>>,
    /// Free ids, last freed on top (xen-hcd's `shadow_free` list).
    free_ids: Vec<u16>,
    pending_submit: VecDeque<Queued>,
    pending_unlink: VecDeque<UrbHandle>,
    completed: VecDeque<Completion>,
    port_events: VecDeque<PortEvent>,
    port_speed: [u8; USBIF_MAX_PORTNR as usize],
    error: Option<ProtocolError>,
    stats: Stats,
    /// Data pages to reuse, so a long run does not allocate a page per URB.
    page_pool: Vec<(Gfn, G::Page)>,
    /// We promise `feature-persistent` where the backend offers it.
    persistent_wanted: bool,
    /// This connection made the promise: data pages keep their grants (writable) from URB
    /// to URB, in `kept_grants`, until the connection ends.
    persistent: bool,
    kept_grants: BTreeMap<Gfn, GrantRef>,
    /// We send bulk URBs of more than 16 pages as indirect requests where the backend offers
    /// them.
    indirect_wanted: bool,
    /// Data segments one indirect request of this connection may list: the backend's
    /// `feature-max-indirect-segments`, or 0 when not used.
    max_indirect: u16,
    /// Grants the backend still held when we ended them; retried on every poll.
    deferred_grants: Vec<GrantRef>,
    next_handle: u64,
}

/// Pages a buffer of `len` bytes touches when it starts `offset` bytes into its first page
/// (`xenhcd_count_pages`).
fn count_pages(offset: usize, len: usize) -> usize {
    (offset + len).div_ceil(PAGE_SIZE) - offset / PAGE_SIZE
}

impl<G, T> Frontend<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// Probes `/local/domain/<domid>/device/vusb/<devid>` as xenbus and `xenhcd_probe` do:
    /// reads `backend` and `backend-id`, requires our state to be Initialising, reads the
    /// backend's `num-ports` (1..=31) and `usb-ver` (1 or 2), and watches the backend's
    /// state. Nothing is granted until [`poll`](Self::poll) sees the backend ready.
    pub fn new(platform: G, mut xs: XenStore<T>, domid: DomId, devid: u32) -> Result<Self, Error> {
        let Probe {
            nodename,
            otherend,
            backend_id,
            num_ports,
            usb_ver,
        } = probe(&mut xs, domid, devid)?;
        xs.watch(&format!("{otherend}/state"), WATCH_TOKEN)?;
        xs.watch(&nodename, WATCH_TOKEN)?;
        info!(
            "event=xenhcd_probe nodename={nodename} backend={otherend} num_ports={num_ports} usb_ver={usb_ver}"
        );
        Ok(Frontend {
            platform,
            xs,
            nodename,
            otherend,
            backend_id,
            num_ports,
            usb_ver,
            state: XenbusState::Initialising,
            ring_page_order: 0,
            conn: None,
            shadow: (0..SHADOWS)
                .map(|_| Shadow::Free { last_unlink: false })
                .collect(),
            free_ids: (0..SHADOWS as u16).rev().collect(),
            pending_submit: VecDeque::new(),
            pending_unlink: VecDeque::new(),
            completed: VecDeque::new(),
            port_events: VecDeque::new(),
            port_speed: [USBIF_SPEED_NONE; USBIF_MAX_PORTNR as usize],
            error: None,
            stats: Stats::default(),
            page_pool: Vec::new(),
            persistent_wanted: false,
            persistent: false,
            kept_grants: BTreeMap::new(),
            indirect_wanted: false,
            max_indirect: 0,
            deferred_grants: Vec::new(),
            next_handle: 0,
        })
    }

    /// Asks for a URB ring of 2^`order` pages (at most [`pvusb::MAX_RING_PAGE_ORDER`]) where
    /// the backend offers one (`docs/pvusb-features.md`): up to 256 URBs in flight instead of
    /// xen-hcd's 16. Takes effect at the next connect.
    pub fn with_ring_page_order(mut self, order: u32) -> Self {
        self.ring_page_order = order.min(pvusb::MAX_RING_PAGE_ORDER);
        self
    }

    /// Promises `feature-persistent` where the backend offers it (`docs/pvusb-features.md`):
    /// each data page keeps one grant, writable, for as long as the connection lasts, so
    /// the backend may keep it mapped and copy without a grant hypercall. Takes effect at the
    /// next connect.
    pub fn with_persistent_grants(mut self) -> Self {
        self.persistent_wanted = true;
        self
    }

    /// Sends bulk URBs of more than 16 pages, up to the backend's
    /// `feature-max-indirect-segments`, as one indirect request each
    /// (`docs/pvusb-features.md`) instead of refusing them. Takes effect at the next connect.
    pub fn with_indirect_segments(mut self) -> Self {
        self.indirect_wanted = true;
        self
    }

    /// Data segments one indirect request may list on this connection; 0 when not used.
    pub fn indirect_segments(&self) -> u16 {
        self.max_indirect
    }

    /// Whether this connection promised persistent grants.
    pub fn persistent_grants(&self) -> bool {
        self.persistent
    }

    /// Does everything that is due: follows xenstore (connect, close), handles a notification
    /// on our event channel (responses, port events), sends URBs that waited for a ring slot,
    /// and retries grants the backend held at teardown.
    ///
    /// It takes every pending event of the platform: a caller whose platform has other
    /// channels calls [`poll_xenstore`](Self::poll_xenstore),
    /// [`handle_event`](Self::handle_event) and [`kick`](Self::kick) itself.
    pub fn poll(&mut self) -> Result<(), Error> {
        self.poll_xenstore()?;
        let mut fired = false;
        let port = self.conn.as_ref().map(|c| c.port);
        self.platform
            .take_pending(&mut |p| fired |= Some(p) == port);
        if fired {
            self.handle_event();
        }
        self.kick();
        Ok(())
    }

    /// What xen-hcd's watchdog timer does: sends URBs (and unlinks) that waited for a ring
    /// slot; also retries grants the backend still held at teardown.
    pub fn kick(&mut self) {
        self.kick_pending();
        self.retry_deferred_grants();
    }

    /// Handles a notification (`xenhcd_int`): nothing at all after a protocol error;
    /// otherwise both rings until neither has more.
    pub fn handle_event(&mut self) {
        while self.error.is_none() && self.conn.is_some() {
            let more_urb = self.urb_request_done();
            let more_conn = self.conn_notify();
            if !(more_urb || more_conn) {
                break;
            }
        }
    }

    fn set_error(&mut self, e: ProtocolError) {
        warn!("event=xenhcd_error nodename={} {e}", self.nodename);
        self.error = Some(e);
    }

    /// The oldest URB given back, if any.
    pub fn take_completed(&mut self) -> Option<Completion> {
        self.completed.pop_front()
    }

    /// The oldest port change, if any.
    pub fn take_port_event(&mut self) -> Option<PortEvent> {
        self.port_events.pop_front()
    }

    /// The speed the backend last reported for `port` (`USBIF_SPEED_*`); None outside
    /// 1..=num-ports.
    pub fn port_speed(&self, port: u8) -> Option<u8> {
        (1..=self.num_ports)
            .contains(&port)
            .then(|| self.port_speed[usize::from(port - 1)])
    }

    /// The protocol error that stopped this frontend, if one did.
    pub fn error(&self) -> Option<ProtocolError> {
        self.error
    }

    /// Our xenbus state as we last wrote it.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// `num-ports` as read at probe.
    pub fn num_ports(&self) -> u8 {
        self.num_ports
    }

    /// `usb-ver` as read at probe.
    pub fn usb_ver(&self) -> u8 {
        self.usb_ver
    }

    /// URBs sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shadow
            .iter()
            .filter(|s| matches!(s, Shadow::Submit(_)))
            .count()
    }

    /// URBs waiting for a ring slot.
    pub fn queued(&self) -> usize {
        self.pending_submit.len()
    }

    /// Every grant we still hold: rings, in-flight buffers, and grants the backend kept at
    /// teardown. Empty once closed and released.
    pub fn grants(&self) -> Vec<GrantRef> {
        let rings = self.conn.iter().flat_map(|c| {
            c.urb_ring_refs
                .iter()
                .copied()
                .chain([c.conn_ring_ref])
                .collect::<Vec<_>>()
        });
        // Kept grants are those of the URBs in flight too: each is listed once.
        let persistent = self.persistent;
        let urbs = self.shadow.iter().flat_map(|s| match s {
            Shadow::Submit(_) if persistent => Vec::new(),
            Shadow::Submit(f) => f.grants.clone(),
            _ => Vec::new(),
        });
        rings
            .chain(urbs)
            .chain(self.kept_grants.values().copied())
            .chain(self.deferred_grants.iter().copied())
            .collect()
    }

    /// The URB ring's (first) shared page, for tests that write raw requests.
    pub fn urb_ring_page(&self) -> Option<&G::Page> {
        self.conn.as_ref().map(|c| &c.urb.page().pages()[0])
    }

    /// Entries of the URB ring: 16 for one page, more for a multi-page ring.
    pub fn urb_ring_size(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.urb.size())
    }

    /// The conn ring's shared page.
    pub fn conn_ring_page(&self) -> Option<&G::Page> {
        self.conn.as_ref().map(|c| c.conn.page())
    }

    /// The grant references of the URB ring's (first) page and of the conn ring.
    pub fn ring_refs(&self) -> Option<(GrantRef, GrantRef)> {
        self.conn
            .as_ref()
            .map(|c| (c.urb_ring_refs[0], c.conn_ring_ref))
    }

    /// Our end of the event channel.
    pub fn event_channel(&self) -> Option<EvtchnPort> {
        self.conn.as_ref().map(|c| c.port)
    }

    /// The platform (grants and event channels), e.g. to grant pages for raw requests.
    pub fn platform(&mut self) -> &mut G {
        &mut self.platform
    }

    /// The xenstore connection.
    pub fn xenstore(&mut self) -> &mut XenStore<T> {
        &mut self.xs
    }

    /// Our directory, `/local/domain/<domid>/device/vusb/<devid>`.
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    /// The backend's directory, as our `backend` key names it.
    pub fn backend_path(&self) -> &str {
        &self.otherend
    }

    /// The backend's domain.
    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }
}
