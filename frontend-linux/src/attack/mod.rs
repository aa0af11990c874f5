//! A hostile PVUSB frontend, to show that usbback isolates its guests: it connects to its
//! own controller as xen-hcd would, then breaks the protocol in named phases ([`Phase`]),
//! each bounded in time, and reports what the backend did. It writes the URB ring by hand
//! (slots, indices, ids), so it can do what [`crate::Frontend`] never does.
//!
//! It sees Xen only through the `xen` crate's traits, so the same code runs against
//! `xen::sim` in host tests and against Linux's `/dev/xen` devices in a guest
//! (`frontend-linux/attack`, the `usbattack` program). Time, waiting and output come from
//! the caller ([`AttackEnv`]); no loop here waits for the backend without a deadline.
//!
//! When the backend disconnects it (backend state Closing or Closed), the attacker ends its
//! grants, writes Closed and then Initialising, and connects afresh once the backend is back
//! in InitWait: the reset rule usbback follows (`xen::xenbus::backend_action`).

mod phases;
#[cfg(test)]
mod tests;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use xen::abi::ring::{
    SRING_ENTRIES, SRING_REQ_EVENT, SRING_REQ_PROD, SRING_RSP_EVENT, SRING_RSP_PROD,
};
use xen::abi::usbif::*;
use xen::abi::{DomId, EvtchnPort, Gfn, GrantRef};
use xen::hypervisor::{Errno, EventChannels, GrantTable};
use xen::page::SharedPage;
use xen::pvusb::{CONN_RING_SIZE, URB_RING_ENTRY_SIZE, URB_RING_SIZE};
use xen::ring::FrontRing;
use xen::xenbus::{self, XenbusState};
use xen::xenstore::{TxId, XenStore, XsTransport};
use zerocopy::{FromZeros, IntoBytes};

use crate::{probe, publish_rings, Error, Probe};

/// How long a (re)connection may take: the backend reaches InitWait, then Connected.
const CONNECT_LIMIT_MS: u64 = 10_000;
/// The xenstore watch token of the backend's state.
const WATCH_TOKEN: &str = "usbattack";
/// Ids a frontend may use: one per URB-ring slot, as xen-hcd's shadow array.
const IDS: u16 = URB_RING_SIZE as u16;

/// What the attacker needs besides Xen: a clock, a way to let the other side run, and a
/// place to say what happened.
pub trait AttackEnv {
    /// Milliseconds on a clock that never goes back.
    fn now_ms(&mut self) -> u64;
    /// Lets the backend run: waits up to `ms` for an event on our channel or xenstore (on
    /// Linux), or runs the backend once (in the simulation).
    fn pause(&mut self, ms: u64);
    /// One line of the attacker's log (`attack: phase=<name> key=value …`).
    fn event(&mut self, line: &str);
}

/// A named attack; each is run and reported on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Keeps the URB ring full of requests the backend answers at once, refilling each
    /// slot as soon as its answer is written: every request answered, no disconnect.
    Flood,
    /// Segments whose grant references do not exist, run past their page, or are too
    /// many: every request refused with an error status.
    BogusGrefs,
    /// Grants made to another domain, the toolstack's reserved grants, a read-only grant
    /// for IN data: refused, and the read-only page never written.
    ForeignGrefs,
    /// A request producer index more than a ring ahead, or behind: a disconnect each.
    Overrun,
    /// An id used by two requests in flight: a disconnect each.
    ReusedIds,
    /// Unlinks of ids not in flight, and two unlinks of each request in flight: every
    /// request answered once, no disconnect.
    UnlinkStorm,
    /// Isochronous requests with no packets, too many descriptor segments, descriptors too
    /// short, or packets outside the buffer: refused with an error status.
    BadIso,
    /// The state node written Initialising/Connected/Closing/Closed over and over: the
    /// backend follows, and serves us again after a clean reconnect.
    StateFlap,
}

impl Phase {
    /// Every phase, in the order `--phases all` runs them.
    pub const ALL: [Phase; 8] = [
        Phase::Flood,
        Phase::BogusGrefs,
        Phase::ForeignGrefs,
        Phase::Overrun,
        Phase::ReusedIds,
        Phase::UnlinkStorm,
        Phase::BadIso,
        Phase::StateFlap,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Flood => "flood",
            Phase::BogusGrefs => "bogus_grefs",
            Phase::ForeignGrefs => "foreign_grefs",
            Phase::Overrun => "overrun",
            Phase::ReusedIds => "reused_ids",
            Phase::UnlinkStorm => "unlink_storm",
            Phase::BadIso => "bad_iso",
            Phase::StateFlap => "state_flap",
        }
    }

    /// The phase called `name`.
    pub fn parse(name: &str) -> Option<Phase> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What one phase observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The phase.
    pub phase: Phase,
    /// Requests published on the URB ring (unlinks included).
    pub sent: u64,
    /// Responses read back.
    pub answered: u64,
    /// Responses by `status` (`USBIF_STATUS_*`, or whatever the backend wrote).
    pub statuses: BTreeMap<i32, u64>,
    /// Responses whose id had no request in flight.
    pub unexpected_ids: u64,
    /// Responses seen in their slot before the backend published `rsp_prod` past them.
    pub seen_in_slot: u64,
    /// Times the backend disconnected us (its state went Closing or Closed).
    pub disconnects: u32,
    /// Protocol violations sent that a backend must disconnect for.
    pub violations: u32,
    /// Connections made again after a disconnect.
    pub reconnects: u32,
    /// Whether a device was on one of our ports to aim at.
    pub device: bool,
    /// Milliseconds the phase took.
    pub elapsed_ms: u64,
    /// Whether the backend did what the phase expects of a correct one.
    pub as_expected: bool,
    /// Phase-specific `key=value` pairs.
    pub detail: String,
}

impl Report {
    fn new(phase: Phase) -> Report {
        Report {
            phase,
            sent: 0,
            answered: 0,
            statuses: BTreeMap::new(),
            unexpected_ids: 0,
            seen_in_slot: 0,
            disconnects: 0,
            violations: 0,
            reconnects: 0,
            device: false,
            elapsed_ms: 0,
            as_expected: false,
            detail: String::new(),
        }
    }

    /// Responses with status `USBIF_STATUS_OK`.
    pub fn ok(&self) -> u64 {
        self.statuses.get(&USBIF_STATUS_OK).copied().unwrap_or(0)
    }

    fn add_detail(&mut self, kv: &str) {
        if !self.detail.is_empty() {
            self.detail.push(' ');
        }
        self.detail.push_str(kv);
    }
}

/// A status's name in reports: the usbif name, or the errno a backend should not send.
pub fn status_name(status: i32) -> String {
    match status {
        USBIF_STATUS_OK => "ok".into(),
        USBIF_STATUS_NODEV => "nodev".into(),
        USBIF_STATUS_INVAL => "inval".into(),
        USBIF_STATUS_STALL => "stall".into(),
        USBIF_STATUS_IOERROR => "ioerror".into(),
        USBIF_STATUS_BABBLE => "babble".into(),
        USBIF_STATUS_SHUTDOWN => "shutdown".into(),
        s => format!("errno{}", -i64::from(s)),
    }
}

impl core::fmt::Display for Report {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{}:{n}", status_name(*s)))
            .collect();
        let statuses = if statuses.is_empty() {
            String::from("none")
        } else {
            statuses.join(",")
        };
        write!(
            f,
            "phase={} sent={} answered={} statuses={statuses} unexpected_ids={} seen_in_slot={} violations={} disconnects={} reconnects={} device={} elapsed_ms={} as_expected={}",
            self.phase.name(),
            self.sent,
            self.answered,
            self.unexpected_ids,
            self.seen_in_slot,
            self.violations,
            self.disconnects,
            self.reconnects,
            if self.device { "yes" } else { "no" },
            self.elapsed_ms,
            if self.as_expected { "yes" } else { "no" },
        )?;
        if !self.detail.is_empty() {
            write!(f, " {}", self.detail)?;
        }
        Ok(())
    }
}

/// Our rings and channel while connected. The URB ring is driven by hand: `req_prod` is
/// what we wrote, `answered` how far responses have been read.
struct Link<P> {
    urb: P,
    conn: FrontRing<P, UsbifConnRequest, UsbifConnResponse>,
    urb_ring_ref: GrantRef,
    conn_ring_ref: GrantRef,
    port: EvtchnPort,
    req_prod: u32,
    answered: u32,
    /// The pipe written in each slot, so a response written over it is seen at once.
    slots: [Option<u32>; URB_RING_SIZE as usize],
    /// Requests (and unlinks) in flight with the grants to end when answered; an id may be
    /// in it twice (the reused-ids phase).
    in_flight: Vec<(u16, Vec<GrantRef>)>,
}

/// The device on one of our ports and the endpoints its configuration has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    port: u8,
    /// An interrupt IN endpoint: a request on it stays in flight until the device has data.
    interrupt_in: Option<u8>,
    /// An isochronous endpoint.
    isochronous: Option<u8>,
}

/// The hostile frontend of `device/vusb/<devid>` of domain `domid`.
pub struct Attacker<G: GrantTable + EventChannels, T: XsTransport> {
    platform: G,
    xs: XenStore<T>,
    domid: DomId,
    nodename: String,
    otherend: String,
    backend_id: DomId,
    num_ports: u8,
    /// Our state as last written.
    state: XenbusState,
    link: Option<Link<G::Page>>,
    port_speed: [u8; USBIF_MAX_PORTNR as usize],
    /// The device aimed at, once configured on this connection.
    target: Option<Target>,
    /// Responses read and not yet looked at by the phase that waits for them.
    responses: Vec<UsbifUrbResponse>,
    /// Grants the backend still held when we ended them; retried on every pump.
    deferred: Vec<GrantRef>,
    /// The phase running, for event lines.
    phase: Phase,
}

impl<G, T> Attacker<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// Probes our device as xen-hcd does: `backend`, `backend-id`, our state Initialising,
    /// the backend's `num-ports`; watches the backend's state. Nothing is granted yet.
    pub fn new(platform: G, mut xs: XenStore<T>, domid: DomId, devid: u32) -> Result<Self, Error> {
        let Probe {
            nodename,
            otherend,
            backend_id,
            num_ports,
            ..
        } = probe(&mut xs, domid, devid)?;
        xs.watch(&format!("{otherend}/state"), WATCH_TOKEN)?;
        Ok(Attacker {
            platform,
            xs,
            domid,
            nodename,
            otherend,
            backend_id,
            num_ports,
            state: XenbusState::Initialising,
            link: None,
            port_speed: [USBIF_SPEED_NONE; USBIF_MAX_PORTNR as usize],
            target: None,
            responses: Vec::new(),
            deferred: Vec::new(),
            phase: Phase::Flood,
        })
    }

    /// Runs one phase for at most `budget_ms` (plus what a reconnection takes, at most
    /// 10 s each) and reports it; its events go to `env` as they happen.
    pub fn run(&mut self, phase: Phase, env: &mut dyn AttackEnv, budget_ms: u64) -> Report {
        self.phase = phase;
        let start = env.now_ms();
        let deadline = start + budget_ms;
        let mut r = Report::new(phase);
        if self.ensure_connected(env, &mut r) {
            r.device = self.port_speed.iter().any(|s| *s != USBIF_SPEED_NONE);
            phases::run(self, env, &mut r, deadline);
        } else {
            r.add_detail("connected=no");
        }
        r.elapsed_ms = env.now_ms() - start;
        let line = format!("attack: {r}");
        env.event(&line);
        r
    }

    /// Leaves as a frontend should: state Closed, the backend's teardown awaited, every
    /// grant ended. Returns the grants the backend still held when we gave up waiting.
    pub fn close(&mut self, env: &mut dyn AttackEnv) -> usize {
        self.drop_link();
        let _ = xenbus::switch_state(&mut self.xs, &self.nodename, XenbusState::Closed);
        self.state = XenbusState::Closed;
        let deadline = env.now_ms() + CONNECT_LIMIT_MS;
        while !self.deferred.is_empty() && env.now_ms() < deadline {
            env.pause(10);
            self.retry_deferred();
        }
        self.deferred.len()
    }

    /// Our domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The backend's domain.
    pub fn backend_id(&self) -> DomId {
        self.backend_id
    }

    /// The platform (grants and event channels).
    pub fn platform(&mut self) -> &mut G {
        &mut self.platform
    }

    fn say(&mut self, env: &mut dyn AttackEnv, what: &str) {
        let line = format!("attack: phase={} {what}", self.phase.name());
        env.event(&line);
    }

    /// Connected, with the backend Connected: reconnects if needed.
    fn ensure_connected(&mut self, env: &mut dyn AttackEnv, r: &mut Report) -> bool {
        if self.link.is_some() && self.backend_state() == XenbusState::Connected {
            return true;
        }
        let again = self.state != XenbusState::Initialising;
        let ok = self.reconnect(env);
        if ok && again {
            r.reconnects += 1;
        }
        ok
    }

    fn backend_state(&mut self) -> XenbusState {
        xenbus::read_state(&mut self.xs, TxId::NONE, &self.otherend).unwrap_or(XenbusState::Unknown)
    }

    /// Waits (bounded) for the backend to reach one of `states`.
    fn await_backend(&mut self, env: &mut dyn AttackEnv, states: &[XenbusState]) -> bool {
        let deadline = env.now_ms() + CONNECT_LIMIT_MS;
        loop {
            let _ = self.xs.poll();
            while self.xs.next_event().is_some() {}
            if states.contains(&self.backend_state()) {
                return true;
            }
            if env.now_ms() >= deadline {
                return false;
            }
            env.pause(10);
        }
    }

    /// As xen-hcd reconnecting from scratch: Closed (the backend lets go of the old rings),
    /// Initialising (it resets to InitWait), new rings, Connected. Each step waits for the
    /// backend's answer to it: an InitWait seen right after writing Closed may be the
    /// backend's answer to an earlier Initialising, and connecting on it races the backend,
    /// which then reads Connected while Closed and waits for an Initialising that is past.
    fn reconnect(&mut self, env: &mut dyn AttackEnv) -> bool {
        use XenbusState::*;
        if self.link.is_some() || self.state != Initialising {
            self.drop_link();
            let _ = xenbus::switch_state(&mut self.xs, &self.nodename, Closed);
            self.state = Closed;
            if !self.await_backend(env, &[Closed]) {
                self.say(env, "event=reconnect_failed waiting_for=closed");
                return false;
            }
            self.retry_deferred();
            let _ = xenbus::switch_state(&mut self.xs, &self.nodename, Initialising);
            self.state = Initialising;
        }
        if !self.await_backend(env, &[InitWait]) {
            self.say(env, "event=reconnect_failed waiting_for=initwait");
            return false;
        }
        if let Err(e) = self.connect() {
            let line = format!("event=connect_failed {e}");
            self.say(env, &line);
            return false;
        }
        if !self.await_backend(env, &[Connected]) {
            self.say(env, "event=reconnect_failed waiting_for=connected");
            return false;
        }
        // The backend reports the devices on our ports first thing.
        let mut scratch = Report::new(self.phase);
        for _ in 0..5 {
            env.pause(5);
            self.pump(env, &mut scratch);
        }
        let devices = self.port_speed.iter().filter(|s| **s != 0).count();
        let line = format!("event=connected devices={devices}");
        self.say(env, &line);
        true
    }

    /// `xenhcd_connect`: rings granted, a channel, the keys in one transaction, the conn
    /// ring lent, Connected.
    fn connect(&mut self) -> Result<(), Error> {
        let be = self.backend_id;
        let (urb_gfn, urb_page) = self.platform.alloc_page()?;
        let (conn_gfn, conn_page) = self.platform.alloc_page()?;
        // FRONT_RING_INIT of the URB ring's header; its slots and indices are ours to write.
        urb_page.write(0, &[0; SRING_ENTRIES]);
        urb_page.store_u32(SRING_REQ_EVENT, 1);
        urb_page.store_u32(SRING_RSP_EVENT, 1);
        let mut conn = FrontRing::init(conn_page);
        let urb_ring_ref = self.platform.grant_access(be, urb_gfn, false)?;
        let conn_ring_ref = match self.platform.grant_access(be, conn_gfn, false) {
            Ok(g) => g,
            Err(e) => {
                self.end_grant(urb_ring_ref);
                return Err(e.into());
            }
        };
        let port = match self.platform.alloc_unbound(be) {
            Ok(p) => p,
            Err(e) => {
                self.end_grant(urb_ring_ref);
                self.end_grant(conn_ring_ref);
                return Err(e.into());
            }
        };
        let dir = self.nodename.clone();
        if let Err(e) = publish_rings(
            &mut self.xs,
            &dir,
            &[urb_ring_ref],
            conn_ring_ref,
            port,
            false,
        ) {
            let _ = self.platform.close(port);
            self.end_grant(urb_ring_ref);
            self.end_grant(conn_ring_ref);
            return Err(e.into());
        }
        for id in 0..CONN_RING_SIZE as u16 {
            let _ = conn.push_request(&UsbifConnRequest { id });
        }
        conn.push_requests_and_check_notify();
        self.link = Some(Link {
            urb: urb_page,
            conn,
            urb_ring_ref,
            conn_ring_ref,
            port,
            req_prod: 0,
            answered: 0,
            slots: [None; URB_RING_SIZE as usize],
            in_flight: Vec::new(),
        });
        self.port_speed = [USBIF_SPEED_NONE; USBIF_MAX_PORTNR as usize];
        self.target = None;
        xenbus::switch_state(&mut self.xs, &dir, XenbusState::Connected)?;
        self.state = XenbusState::Connected;
        Ok(())
    }

    /// Forgets the connection: the channel closed, the rings' and requests' grants ended
    /// (or deferred while the backend holds them).
    fn drop_link(&mut self) {
        let Some(l) = self.link.take() else {
            return;
        };
        let _ = self.platform.close(l.port);
        let grants = [l.urb_ring_ref, l.conn_ring_ref]
            .into_iter()
            .chain(l.in_flight.into_iter().flat_map(|(_, g)| g));
        for g in grants {
            self.end_grant(g);
        }
        self.target = None;
        self.responses.clear();
    }

    fn end_grant(&mut self, gref: GrantRef) {
        if self.platform.end_access(gref) == Err(Errno::EBUSY) {
            self.deferred.push(gref);
        }
    }

    fn retry_deferred(&mut self) {
        let platform = &mut self.platform;
        self.deferred
            .retain(|&g| platform.end_access(g) == Err(Errno::EBUSY));
    }

    /// Does what is due: follows the backend's state (a disconnect drops the link), takes
    /// our events, reads port changes and responses. False when not connected.
    fn pump(&mut self, env: &mut dyn AttackEnv, r: &mut Report) -> bool {
        let _ = self.xs.poll();
        let mut fired = false;
        while self.xs.next_event().is_some() {
            fired = true;
        }
        if fired && self.link.is_some() {
            let backend = self.backend_state();
            if matches!(backend, XenbusState::Closing | XenbusState::Closed) {
                r.disconnects += 1;
                let line = format!("event=disconnected backend_state={}", backend as u8);
                self.say(env, &line);
                self.drop_link();
                let _ = xenbus::switch_state(&mut self.xs, &self.nodename, XenbusState::Closed);
                self.state = XenbusState::Closed;
            }
        }
        self.platform.take_pending(&mut |_| {});
        self.conn_events();
        self.collect(r);
        self.retry_deferred();
        self.link.is_some()
    }

    /// Port changes from the conn ring, each slot lent again.
    fn conn_events(&mut self) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        while let Ok(Some(rsp)) = l.conn.next_response() {
            if (1..=self.num_ports).contains(&rsp.portnum) {
                self.port_speed[usize::from(rsp.portnum - 1)] = rsp.speed;
                self.target = None;
            }
            let _ = l.conn.push_request(&UsbifConnRequest { id: rsp.id });
        }
        let _ = l.conn.final_check_for_responses();
        if l.conn.push_requests_and_check_notify() {
            let _ = self.platform.send(l.port);
        }
    }

    /// Reads responses in ring order. A slot counts as answered when `rsp_prod` covers it,
    /// or as soon as a status was written over the pipe we left there: the flood refills a
    /// slot before the backend publishes its answer, as a hostile frontend may.
    fn collect(&mut self, r: &mut Report) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        while l.answered != l.req_prod {
            let slot = (l.answered % URB_RING_SIZE) as usize;
            let at = SRING_ENTRIES + slot * URB_RING_ENTRY_SIZE;
            let rsp_prod = l.urb.load_u32(SRING_RSP_PROD);
            fence(Ordering::Acquire);
            let ahead = rsp_prod.wrapping_sub(l.answered);
            let published = ahead != 0 && ahead <= l.req_prod.wrapping_sub(l.answered);
            // The status is written after the id; a pipe is never a valid errno.
            let word = l.urb.load_u32(at + 4);
            let status = word as i32;
            let written =
                l.slots[slot].is_some_and(|pipe| word != pipe && (-4095..=0).contains(&status));
            if !(published || written) {
                break;
            }
            fence(Ordering::Acquire);
            let mut rsp = UsbifUrbResponse::new_zeroed();
            l.urb.read(at, rsp.as_mut_bytes());
            if !published {
                rsp.status = status;
                r.seen_in_slot += 1;
            }
            l.slots[slot] = None;
            l.answered = l.answered.wrapping_add(1);
            r.answered += 1;
            *r.statuses.entry(rsp.status).or_default() += 1;
            match l.in_flight.iter().position(|(id, _)| *id == rsp.id) {
                Some(i) => {
                    let (_, grants) = l.in_flight.remove(i);
                    for g in grants {
                        if self.platform.end_access(g) == Err(Errno::EBUSY) {
                            self.deferred.push(g);
                        }
                    }
                }
                None => r.unexpected_ids += 1,
            }
            self.responses.push(rsp);
        }
        l.urb.store_u32(SRING_RSP_EVENT, l.answered.wrapping_add(1));
        fence(Ordering::SeqCst);
    }

    /// Free ring slots (our count: requests not yet answered take theirs).
    fn room(&self) -> u32 {
        self.link
            .as_ref()
            .map_or(0, |l| URB_RING_SIZE - l.req_prod.wrapping_sub(l.answered))
    }

    /// The lowest id with no request in flight.
    fn free_id(&self) -> Option<u16> {
        let l = self.link.as_ref()?;
        (0..IDS).find(|id| l.in_flight.iter().all(|(f, _)| f != id))
    }

    fn outstanding(&self) -> usize {
        self.link.as_ref().map_or(0, |l| l.in_flight.len())
    }

    /// Writes a request into the next slot (not published). The caller checked [`room`].
    fn put(&mut self, req: &UsbifUrbRequest, grants: Vec<GrantRef>, r: &mut Report) {
        let Some(l) = self.link.as_mut() else {
            return;
        };
        let slot = (l.req_prod % URB_RING_SIZE) as usize;
        l.urb
            .write(SRING_ENTRIES + slot * URB_RING_ENTRY_SIZE, req.as_bytes());
        l.slots[slot] = Some(req.pipe);
        l.in_flight.push((req.id, grants));
        l.req_prod = l.req_prod.wrapping_add(1);
        r.sent += 1;
    }

    /// Publishes what [`put`] wrote and notifies, every time (a hostile frontend does not
    /// spare the backend its events).
    fn publish(&mut self) {
        self.publish_index(None);
    }

    /// Publishes `req_prod`, or `index` instead when given (the overrun phase's lie).
    fn publish_index(&mut self, index: Option<u32>) {
        let Some(l) = self.link.as_ref() else {
            return;
        };
        fence(Ordering::Release);
        l.urb.store_u32(SRING_REQ_PROD, index.unwrap_or(l.req_prod));
        fence(Ordering::SeqCst);
        let _ = self.platform.send(l.port);
    }

    /// A page of ours granted to `to` (read-only if `readonly`) after `fill` wrote it.
    fn granted_page(
        &mut self,
        to: DomId,
        readonly: bool,
        fill: &[u8],
    ) -> Result<(GrantRef, G::Page), Errno> {
        let (gfn, page): (Gfn, G::Page) = self.platform.alloc_page()?;
        page.write(0, fill);
        let gref = self.platform.grant_access(to, gfn, readonly)?;
        Ok((gref, page))
    }

    /// Pumps until every request is answered, we are disconnected, or `deadline`.
    fn settle(&mut self, env: &mut dyn AttackEnv, r: &mut Report, deadline: u64) {
        while self.pump(env, r) && self.outstanding() > 0 && env.now_ms() < deadline {
            env.pause(1);
        }
    }

    /// Takes the response to `id` if it has come.
    fn take_response(&mut self, id: u16) -> Option<UsbifUrbResponse> {
        let i = self.responses.iter().position(|rsp| rsp.id == id)?;
        Some(self.responses.remove(i))
    }
}

/// A request with every field zero but these.
fn request(id: u16, pipe: u32, u: [u8; 8]) -> UsbifUrbRequest {
    let mut req = UsbifUrbRequest::new_zeroed();
    req.id = id;
    req.pipe = pipe;
    req.u = u;
    req
}

/// The wire form of a pipe (`usbif.h` bit layout).
fn pipe(port: u8, in_dir: bool, device: u8, endpoint: u8, transfer_type: u32) -> u32 {
    u32::from(port) & USBIF_PIPE_PORT_MASK
        | if in_dir { USBIF_PIPE_DIR } else { 0 }
        | (u32::from(device) & USBIF_PIPE_DEV_MASK) << USBIF_PIPE_DEV_SHIFT
        | (u32::from(endpoint) & USBIF_PIPE_EP_MASK) << USBIF_PIPE_EP_SHIFT
        | transfer_type << USBIF_PIPE_TYPE_SHIFT
}
