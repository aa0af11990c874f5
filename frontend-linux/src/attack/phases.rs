//! The attack phases. Each sends what it breaks, waits (bounded) for the backend's answers
//! or disconnect, and says in its report whether the backend behaved as a correct one must.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use xen::abi::usbif::*;
use xen::abi::{DomId, GrantRef, PAGE_SIZE};
use xen::hypervisor::{EventChannels, GrantTable};
use xen::page::SharedPage;
use xen::pvusb::UsbIsoPacketDescriptor;
use xen::xenbus::{self, XenbusState};
use xen::xenstore::XsTransport;
use zerocopy::IntoBytes;

use super::{pipe, request, AttackEnv, Attacker, Phase, Report, Target};

/// Rounds of the grant and isochronous phases' request sets, at most.
pub(super) const ROUNDS: usize = 8;
/// How long a violation may take to cost the connection.
const DISCONNECT_LIMIT_MS: u64 = 5_000;
/// Quiet time after which a request on an interrupt endpoint counts as held in flight: long
/// enough that a device's answer is not mistaken for silence on a loaded nested machine,
/// where one took more than 20 ms (a tablet's first report; the attacker then reused an id
/// the backend had already freed).
const HOLD_MS: u64 = 300;
/// Requests sent to hold one: a device may have a report ready (QEMU's tablet has one after
/// a reset), which answers the first.
const HOLD_ATTEMPTS: usize = 3;
/// Unlinks of ids not in flight, at most.
pub(super) const STRAY_UNLINKS: usize = 256;
/// State cycles of the flap, at most.
const FLAP_CYCLES: usize = 50;
/// A device address the guest never assigns: a request to it is answered at once.
pub(super) const NO_DEVICE: u8 = 127;
/// Grant references no domain has: beyond any grant table Xen lets a guest grow.
const BOGUS_GREFS: [u32; 4] = [u32::MAX, 0x7fff_ffff, 0x0100_0000, 0x0001_0000];
/// The toolstack's grants in every guest (`GNTTAB_RESERVED_CONSOLE`, `_XENSTORE`), to dom0.
const RESERVED_GREFS: [u32; 2] = [0, 1];
/// GET_DESCRIPTOR(DEVICE), 18 bytes.
const GET_DEVICE_DESCRIPTOR: [u8; 8] = [0x80, 6, 0, 1, 0, 0, 18, 0];
/// A vendor OUT request with 8 data bytes: stalled if it ever reached a device.
const VENDOR_OUT: [u8; 8] = [0x40, 1, 0, 0, 0, 0, 8, 0];

pub(super) fn run<G, T>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    let phase = r.phase;
    match phase {
        Phase::Flood => flood(a, env, r, deadline),
        Phase::BogusGrefs => bogus_grefs(a, env, r, deadline),
        Phase::ForeignGrefs => foreign_grefs(a, env, r, deadline),
        Phase::Overrun => overrun(a, env, r, deadline),
        Phase::ReusedIds => reused_ids(a, env, r, deadline),
        Phase::UnlinkStorm => unlink_storm(a, env, r, deadline),
        Phase::BadIso => bad_iso(a, env, r, deadline),
        Phase::StateFlap => state_flap(a, env, r, deadline),
    }
}

/// Every request answered, none with success, no disconnect: what a backend owes requests
/// it must refuse.
fn all_refused(r: &Report) -> bool {
    r.disconnects == 0 && r.answered == r.sent && r.ok() == 0 && r.unexpected_ids == 0
}

fn segment(gref: u32, offset: u16, length: u16) -> UsbifRequestSegment {
    UsbifRequestSegment {
        gref: GrantRef(gref),
        offset,
        length,
    }
}

impl<G, T> Attacker<G, T>
where
    G: GrantTable + EventChannels,
    T: XsTransport,
{
    /// Publishes `req` under a free id once a slot is free (pumping meanwhile). False when
    /// the connection is gone or `deadline` passed first.
    fn send(
        &mut self,
        env: &mut dyn AttackEnv,
        r: &mut Report,
        deadline: u64,
        mut req: UsbifUrbRequest,
        grants: Vec<GrantRef>,
    ) -> Option<u16> {
        loop {
            if !self.pump(env, r) {
                return None;
            }
            if let (true, Some(id)) = (self.room() > 0, self.free_id()) {
                req.id = id;
                self.put(&req, grants, r);
                self.publish();
                return Some(id);
            }
            if env.now_ms() >= deadline {
                return None;
            }
            env.pause(1);
        }
    }

    /// Sends `req` and waits (bounded) for its answer.
    fn call(
        &mut self,
        env: &mut dyn AttackEnv,
        r: &mut Report,
        deadline: u64,
        req: UsbifUrbRequest,
        grants: Vec<GrantRef>,
    ) -> Option<UsbifUrbResponse> {
        self.responses.clear();
        let id = self.send(env, r, deadline, req, grants)?;
        loop {
            if let Some(rsp) = self.take_response(id) {
                return Some(rsp);
            }
            if !self.pump(env, r) || env.now_ms() >= deadline {
                return None;
            }
            env.pause(1);
        }
    }

    /// A request with one segment of a fresh page of ours granted to the backend.
    fn with_page(
        &mut self,
        mut req: UsbifUrbRequest,
        fill: &[u8],
        offset: u16,
        length: u16,
    ) -> Option<(UsbifUrbRequest, Vec<GrantRef>, G::Page)> {
        let (gref, page) = self.granted_page(self.backend_id, false, fill).ok()?;
        req.seg[0] = segment(gref.0, offset, length);
        req.nr_buffer_segs = 1;
        req.buffer_length = length;
        Some((req, vec![gref], page))
    }

    /// The device to aim at, configured at the default address (which usbback serves on
    /// every port) and its endpoints read, once per connection; `None` with no device.
    fn aim(&mut self, env: &mut dyn AttackEnv, r: &mut Report, deadline: u64) -> Option<Target> {
        if self.target.is_some() {
            return self.target;
        }
        let port = (1..=self.num_ports).find(|p| self.port_speed[usize::from(p - 1)] != 0)?;
        // Preparation, not attack: its answers stay out of the phase's counts.
        let mut prep = Report::new(self.phase);
        let rsp = self.configure(env, &mut prep, deadline, port);
        r.disconnects += prep.disconnects;
        let (rsp, page) = rsp?;
        let mut config = [0u8; 255];
        let got = usize::try_from(rsp.actual_length)
            .unwrap_or(0)
            .min(config.len());
        page.read(0, &mut config[..got]);
        let mut target = Target {
            port,
            interrupt_in: None,
            isochronous: None,
        };
        // Endpoint descriptors (type 5): address, then attributes (transfer type in bits 0-1).
        let mut at = 0;
        while at + 2 <= got && config[at] >= 2 {
            let d = &config[at..(at + usize::from(config[at])).min(got)];
            if d.len() >= 4 && d[1] == 5 {
                let (address, kind) = (d[2], d[3] & 3);
                if kind == 3 && address & 0x80 != 0 {
                    target.interrupt_in.get_or_insert(address & 0xf);
                } else if kind == 1 {
                    target.isochronous.get_or_insert(address & 0xf);
                }
            }
            at += usize::from(config[at]);
        }
        let line = format!(
            "event=aim port={port} interrupt_in={:?} isochronous={:?}",
            target.interrupt_in, target.isochronous
        );
        self.say(env, &line);
        self.target = Some(target);
        self.target
    }

    /// SET_CONFIGURATION(1), then the configuration descriptor, at the default address.
    fn configure(
        &mut self,
        env: &mut dyn AttackEnv,
        r: &mut Report,
        deadline: u64,
        port: u8,
    ) -> Option<(UsbifUrbResponse, G::Page)> {
        let ctrl = |in_dir| pipe(port, in_dir, 0, 0, USBIF_PIPE_TYPE_CTRL);
        let set_configuration = request(0, ctrl(false), [0, 9, 1, 0, 0, 0, 0, 0]);
        self.call(env, r, deadline, set_configuration, Vec::new())?;
        let get_config = request(0, ctrl(true), [0x80, 6, 0, 2, 0, 0, 255, 0]);
        let (req, grants, page) = self.with_page(get_config, &[], 0, 255)?;
        let rsp = self.call(env, r, deadline, req, grants)?;
        Some((rsp, page))
    }

    /// The port requests go to: the device's, else port 1.
    fn aim_port(&mut self, env: &mut dyn AttackEnv, r: &mut Report, deadline: u64) -> u8 {
        let target = self.aim(env, r, deadline);
        r.device = target.is_some();
        target.map_or(1, |t| t.port)
    }

    /// Waits (bounded) for the backend to cut us off; true if it did.
    fn await_disconnect(&mut self, env: &mut dyn AttackEnv, r: &mut Report) -> bool {
        let before = r.disconnects;
        let deadline = env.now_ms() + DISCONNECT_LIMIT_MS;
        while self.pump(env, r) && env.now_ms() < deadline {
            env.pause(5);
        }
        r.disconnects > before
    }

    /// Sends an interrupt IN and reports whether it stays in flight: the device has no
    /// data, so the backend holds it.
    fn hold(
        &mut self,
        env: &mut dyn AttackEnv,
        r: &mut Report,
        deadline: u64,
        target: Target,
        endpoint: u8,
    ) -> Option<u16> {
        let p = pipe(target.port, true, 0, endpoint, USBIF_PIPE_TYPE_INT);
        for _ in 0..HOLD_ATTEMPTS {
            let (req, grants, _) =
                self.with_page(request(0, p, [1, 0, 0, 0, 0, 0, 0, 0]), &[], 0, 8)?;
            let id = self.send(env, r, deadline, req, grants)?;
            let quiet = env.now_ms() + HOLD_MS;
            let in_flight = |a: &Self| {
                a.link
                    .as_ref()
                    .is_some_and(|l| l.in_flight.iter().any(|(f, _)| *f == id))
            };
            while self.pump(env, r) && env.now_ms() < quiet && in_flight(self) {
                env.pause(1);
            }
            if in_flight(self) {
                return Some(id);
            }
        }
        None
    }
}

fn flood<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    // A port without a device if there is one; the address no device has either way.
    let port = (1..=a.num_ports)
        .find(|p| a.port_speed[usize::from(p - 1)] == 0)
        .unwrap_or(1);
    let p = pipe(port, true, NO_DEVICE, 1, USBIF_PIPE_TYPE_BULK);
    let mut publishes = 0u64;
    let mut peak = 0;
    while env.now_ms() < deadline && a.pump(env, r) {
        let mut pushed = false;
        while a.room() > 0 {
            let Some(id) = a.free_id() else {
                break;
            };
            a.put(&request(id, p, [0; 8]), Vec::new(), r);
            pushed = true;
        }
        peak = peak.max(a.outstanding());
        if pushed {
            a.publish();
            publishes += 1;
        } else {
            env.pause(0);
        }
    }
    let drain = env.now_ms() + DISCONNECT_LIMIT_MS;
    a.settle(env, r, drain);
    r.add_detail(&format!(
        "port={port} publishes={publishes} peak_outstanding={peak}"
    ));
    r.as_expected = all_refused(r) && r.sent > 0;
}

fn bogus_grefs<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    let port = a.aim_port(env, r, deadline);
    let ctrl = |in_dir| pipe(port, in_dir, 0, 0, USBIF_PIPE_TYPE_CTRL);
    let bulk_in = pipe(port, true, 0, 1, USBIF_PIPE_TYPE_BULK);
    let mut rounds = 0;
    while rounds < ROUNDS && env.now_ms() < deadline {
        rounds += 1;
        for gref in BOGUS_GREFS {
            let mut reqs = [
                (request(0, ctrl(true), GET_DEVICE_DESCRIPTOR), 18),
                (request(0, ctrl(false), VENDOR_OUT), 8),
                (request(0, bulk_in, [0; 8]), 512),
            ];
            for (req, len) in &mut reqs {
                req.nr_buffer_segs = 1;
                req.buffer_length = *len;
                req.seg[0] = segment(gref, 0, *len);
                a.send(env, r, deadline, *req, Vec::new());
            }
        }
        // Our own grant, in segments the wire rules forbid.
        let broken: [fn(&mut UsbifUrbRequest); 4] = [
            // Past the end of the page.
            |q| {
                q.seg[0] = UsbifRequestSegment {
                    offset: 4000,
                    length: 200,
                    ..q.seg[0]
                }
            },
            // More segments than a request has.
            |q| q.nr_buffer_segs = 17,
            |q| q.nr_buffer_segs = u16::MAX,
            // A length that is not the segments' sum.
            |q| q.buffer_length = 50,
        ];
        for breaks in broken {
            let Some((mut req, grants, _)) = a.with_page(request(0, bulk_in, [0; 8]), &[], 0, 100)
            else {
                break;
            };
            breaks(&mut req);
            a.send(env, r, deadline, req, grants);
        }
    }
    let drain = deadline.max(env.now_ms() + DISCONNECT_LIMIT_MS);
    a.settle(env, r, drain);
    r.add_detail(&format!("rounds={rounds}"));
    r.as_expected = all_refused(r) && r.sent > 0;
}

fn foreign_grefs<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    let port = a.aim_port(env, r, deadline);
    // A domain that is not the backend, to grant to.
    let foreign = if a.backend_id != DomId::DOM0 {
        DomId::DOM0
    } else {
        a.domid
    };
    let ctrl = |in_dir| pipe(port, in_dir, 0, 0, USBIF_PIPE_TYPE_CTRL);
    let bulk_in = pipe(port, true, 0, 1, USBIF_PIPE_TYPE_BULK);
    let pattern = [0xa5u8; PAGE_SIZE];
    let mut read_only_pages = Vec::new();
    let mut rounds = 0;
    while rounds < ROUNDS && env.now_ms() < deadline {
        rounds += 1;
        let Ok((elsewhere, _)) = a.granted_page(foreign, false, &[]) else {
            break;
        };
        let Ok((read_only, page)) = a.granted_page(a.backend_id, true, &pattern) else {
            break;
        };
        read_only_pages.push(page);
        let mut cases = vec![
            (ctrl(true), GET_DEVICE_DESCRIPTOR, elsewhere, 18),
            (ctrl(false), VENDOR_OUT, elsewhere, 8),
            (ctrl(true), GET_DEVICE_DESCRIPTOR, read_only, 18),
            (bulk_in, [0; 8], read_only, 512),
        ];
        for g in RESERVED_GREFS.map(GrantRef) {
            cases.push((ctrl(true), GET_DEVICE_DESCRIPTOR, g, 18));
            cases.push((ctrl(false), VENDOR_OUT, g, 8));
        }
        let last = cases.len() - 1;
        for (i, (p, u, gref, len)) in cases.into_iter().enumerate() {
            let mut req = request(0, p, u);
            req.nr_buffer_segs = 1;
            req.buffer_length = len;
            req.seg[0] = segment(gref.0, 0, len);
            // Our two grants end with the round's last answer.
            let grants = if i == last {
                vec![elsewhere, read_only]
            } else {
                Vec::new()
            };
            a.send(env, r, deadline, req, grants);
        }
    }
    let drain = deadline.max(env.now_ms() + DISCONNECT_LIMIT_MS);
    a.settle(env, r, drain);
    let intact = read_only_pages.iter().all(|p| {
        let mut now = [0u8; PAGE_SIZE];
        p.read(0, &mut now);
        now == pattern
    });
    r.add_detail(&format!(
        "rounds={rounds} foreign_domid={foreign} read_only_intact={}",
        if intact { "yes" } else { "no" }
    ));
    r.as_expected = all_refused(r) && r.sent > 0 && intact;
}

fn overrun<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    // The producer index, relative to the responses: one more request than the ring
    // holds, half the index space ahead, one behind.
    let lies: [(&str, u32); 3] = [
        ("ring_plus_one", super::URB_RING_SIZE + 1),
        ("half_index_space", 0x8000_0000),
        ("backwards", u32::MAX),
    ];
    for (name, delta) in lies {
        if env.now_ms() >= deadline || !a.ensure_connected(env, r) {
            r.add_detail(&format!("{name}=not_run"));
            continue;
        }
        a.settle(env, r, deadline);
        let Some(base) = a.link.as_ref().map(|l| l.answered) else {
            continue;
        };
        r.violations += 1;
        a.publish_index(Some(base.wrapping_add(delta)));
        let cut = a.await_disconnect(env, r);
        r.add_detail(&format!(
            "{name}={}",
            if cut { "disconnected" } else { "survived" }
        ));
    }
    r.as_expected = r.violations == 3 && r.disconnects == r.violations;
}

fn reused_ids<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    // Two requests under one id in the same push: the backend takes both in one pass.
    let port = a.aim_port(env, r, deadline);
    let ctrl_in = pipe(port, true, 0, 0, USBIF_PIPE_TYPE_CTRL);
    let first = a.with_page(request(0, ctrl_in, GET_DEVICE_DESCRIPTOR), &[], 0, 18);
    let second = a.with_page(request(0, ctrl_in, GET_DEVICE_DESCRIPTOR), &[], 0, 18);
    a.settle(env, r, deadline);
    if let (Some((mut q1, g1, _)), Some((mut q2, g2, _)), Some(id)) = (first, second, a.free_id()) {
        q1.id = id;
        q2.id = id;
        a.put(&q1, g1, r);
        a.put(&q2, g2, r);
        a.publish();
        if r.device {
            r.violations += 1;
            let cut = a.await_disconnect(env, r);
            r.add_detail(&format!(
                "same_push={}",
                if cut { "disconnected" } else { "survived" }
            ));
        } else {
            // No device: each is answered at once, so the id is never twice in flight. But
            // the backend may have connected a device we were not told of yet (its conn-ring
            // report races our reconnection): then the first is in flight and the second is
            // a reused id, and a disconnect is the right answer too.
            let drain = deadline.max(env.now_ms() + DISCONNECT_LIMIT_MS);
            a.settle(env, r, drain);
            if r.disconnects > 0 {
                r.violations += 1;
                r.add_detail("same_push=disconnected_device_unannounced");
            } else {
                r.add_detail("same_push=answered_at_once");
            }
        }
    }
    // A request held in flight, then its id again: as a new request, and as an unlink's
    // own id.
    for variant in ["held_then_reused", "unlink_reusing_id"] {
        if env.now_ms() >= deadline || !a.ensure_connected(env, r) {
            r.add_detail(&format!("{variant}=not_run"));
            continue;
        }
        let target = a.aim(env, r, deadline);
        let Some((t, ep)) = target.and_then(|t| Some((t, t.interrupt_in?))) else {
            r.add_detail(&format!("{variant}=no_interrupt_endpoint"));
            continue;
        };
        let Some(id) = a.hold(env, r, deadline, t, ep) else {
            r.add_detail(&format!("{variant}=not_held"));
            continue;
        };
        let again = if variant == "held_then_reused" {
            request(id, pipe(t.port, true, 0, 0, USBIF_PIPE_TYPE_CTRL), [0; 8])
        } else {
            let p = pipe(t.port, true, 0, ep, USBIF_PIPE_TYPE_INT) | USBIF_PIPE_UNLINK;
            request(id, p, [id as u8, (id >> 8) as u8, 0, 0, 0, 0, 0, 0])
        };
        r.violations += 1;
        a.put(&again, Vec::new(), r);
        a.publish();
        let cut = a.await_disconnect(env, r);
        r.add_detail(&format!(
            "{variant}={}",
            if cut { "disconnected" } else { "survived" }
        ));
    }
    r.as_expected = if r.device || r.violations > 0 {
        r.violations > 0 && r.disconnects == r.violations
    } else {
        all_refused(r)
    };
}

fn unlink_storm<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    let target = a.aim(env, r, deadline);
    r.device = target.is_some();
    let port = target.map_or(1, |t| t.port);
    let unlink = |unlink_id: u16| {
        let p = pipe(port, true, 0, 1, USBIF_PIPE_TYPE_INT) | USBIF_PIPE_UNLINK;
        let [lo, hi] = unlink_id.to_le_bytes();
        request(0, p, [lo, hi, 0, 0, 0, 0, 0, 0])
    };
    // Unlinks of ids nothing is in flight under, in and out of the id range.
    let strays: Vec<u16> = (0..16).chain([16, 255, 0x8000, u16::MAX]).collect();
    let mut stray = 0;
    while stray < STRAY_UNLINKS && env.now_ms() < deadline {
        let Some(_) = a.send(
            env,
            r,
            deadline,
            unlink(strays[stray % strays.len()]),
            Vec::new(),
        ) else {
            break;
        };
        stray += 1;
    }
    let drain = deadline.max(env.now_ms() + DISCONNECT_LIMIT_MS);
    a.settle(env, r, drain);
    r.add_detail(&format!("stray_unlinks={stray}"));
    // Requests held in flight, each unlinked, then unlinked again once it is answered.
    if let Some((t, ep)) = target.and_then(|t| Some((t, t.interrupt_in?))) {
        let mut held = BTreeSet::new();
        for _ in 0..super::URB_RING_SIZE / 2 {
            if let Some(id) = a.hold(env, r, deadline, t, ep) {
                held.insert(id);
            }
        }
        a.responses.clear();
        for round in 0..2 {
            // All in one push: the ids they take are chosen while every original is still
            // in flight, so no unlink takes the id of an original answered meanwhile (its
            // answer would pass for the original's).
            for &id in &held {
                let (true, Some(free)) = (a.room() > 0, a.free_id()) else {
                    break;
                };
                let mut req = unlink(id);
                req.id = free;
                a.put(&req, Vec::new(), r);
            }
            a.publish();
            let drain = deadline.max(env.now_ms() + DISCONNECT_LIMIT_MS);
            a.settle(env, r, drain);
            if round == 0 {
                let originals = a.responses.iter().filter(|x| held.contains(&x.id)).count();
                r.add_detail(&format!(
                    "held={} originals_answered={originals}",
                    held.len()
                ));
                if originals != held.len() {
                    return;
                }
            }
        }
    }
    r.as_expected = r.disconnects == 0 && r.answered == r.sent && r.unexpected_ids == 0;
}

/// One malformed isochronous request: its fields, packet descriptors and whether it has a
/// data buffer.
pub(super) struct IsoCase {
    name: &'static str,
    packets: u16,
    desc_segs: u16,
    desc_len: u16,
    descriptors: &'static [(u32, u32)],
    buffer: u16,
}

pub(super) const ISO_CASES: [IsoCase; 7] = [
    IsoCase {
        name: "no_packets",
        packets: 0,
        desc_segs: 1,
        desc_len: 16,
        descriptors: &[(0, 8)],
        buffer: 192,
    },
    IsoCase {
        name: "too_many_desc_segs",
        packets: 1,
        desc_segs: 16,
        desc_len: 16,
        descriptors: &[(0, 8)],
        buffer: 192,
    },
    IsoCase {
        name: "desc_segs_huge",
        packets: 1,
        desc_segs: u16::MAX,
        desc_len: 16,
        descriptors: &[(0, 8)],
        buffer: 192,
    },
    IsoCase {
        name: "descriptors_too_short",
        packets: 10,
        desc_segs: 1,
        desc_len: 16,
        descriptors: &[(0, 8)],
        buffer: 192,
    },
    IsoCase {
        name: "packet_outside_buffer",
        packets: 2,
        desc_segs: 1,
        desc_len: 32,
        descriptors: &[(0, 96), (4000, 96)],
        buffer: 192,
    },
    IsoCase {
        name: "packet_length_wraps",
        packets: 1,
        desc_segs: 1,
        desc_len: 16,
        descriptors: &[(0xffff_fff0, 0x20)],
        buffer: 192,
    },
    IsoCase {
        name: "packets_without_buffer",
        packets: 1,
        desc_segs: 1,
        desc_len: 16,
        descriptors: &[(0, 8)],
        buffer: 0,
    },
];

fn bad_iso<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    let target = a.aim(env, r, deadline);
    r.device = target.is_some();
    let port = target.map_or(1, |t| t.port);
    let ep = target.and_then(|t| t.isochronous).unwrap_or(1);
    let mut rounds = 0;
    while rounds < ROUNDS && env.now_ms() < deadline {
        rounds += 1;
        for (k, case) in ISO_CASES.iter().enumerate() {
            let p = pipe(port, k % 2 == 0, 0, ep, USBIF_PIPE_TYPE_ISOC);
            let mut u = [0u8; 8];
            u[0..2].copy_from_slice(&1u16.to_le_bytes());
            u[4..6].copy_from_slice(&case.packets.to_le_bytes());
            u[6..8].copy_from_slice(&case.desc_segs.to_le_bytes());
            let mut req = request(0, p, u);
            let mut grants = Vec::new();
            let descriptors: Vec<u8> = case
                .descriptors
                .iter()
                .flat_map(|&(offset, length)| {
                    let d = UsbIsoPacketDescriptor {
                        offset,
                        length,
                        actual_length: 0,
                        status: 0,
                    };
                    d.as_bytes().to_vec()
                })
                .collect();
            let Ok((desc, _)) = a.granted_page(a.backend_id, false, &descriptors) else {
                break;
            };
            grants.push(desc);
            let mut next = 0;
            if case.buffer > 0 {
                let Ok((buf, _)) = a.granted_page(a.backend_id, false, &[]) else {
                    break;
                };
                grants.push(buf);
                req.seg[0] = segment(buf.0, 0, case.buffer);
                req.nr_buffer_segs = 1;
                req.buffer_length = case.buffer;
                next = 1;
            }
            // The descriptor segment after the buffer's, repeated as far as it claims.
            let claimed = usize::from(case.desc_segs).min(USBIF_MAX_SEGMENTS_PER_REQUEST - next);
            for s in &mut req.seg[next..next + claimed] {
                *s = segment(desc.0, 0, case.desc_len);
            }
            a.send(env, r, deadline, req, grants);
        }
    }
    let drain = deadline.max(env.now_ms() + DISCONNECT_LIMIT_MS);
    a.settle(env, r, drain);
    let names: Vec<&str> = ISO_CASES.iter().map(|c| c.name).collect();
    r.add_detail(&format!("rounds={rounds} cases={}", names.join(",")));
    r.as_expected = all_refused(r) && r.sent > 0;
}

fn state_flap<G: GrantTable + EventChannels, T: XsTransport>(
    a: &mut Attacker<G, T>,
    env: &mut dyn AttackEnv,
    r: &mut Report,
    deadline: u64,
) {
    use XenbusState::*;
    let mut writes = 0;
    let mut seen = BTreeSet::new();
    let mut cycles = 0;
    // The rings stay granted throughout: the backend may map them again mid-flap.
    while cycles < FLAP_CYCLES && env.now_ms() < deadline {
        cycles += 1;
        for s in [Initialising, Connected, Closing, Closed] {
            if xenbus::switch_state(&mut a.xs, &a.nodename, s).is_ok() {
                writes += 1;
            }
            // Every other cycle the backend sees each step; otherwise only the last.
            if cycles % 2 == 0 {
                env.pause(1);
            }
        }
        env.pause(1);
        seen.insert(a.backend_state() as u8);
    }
    a.state = Closed;
    let back = a.reconnect(env);
    if back {
        r.reconnects += 1;
    }
    // Served again: a request answered, as any.
    let p = pipe(1, true, NO_DEVICE, 1, USBIF_PIPE_TYPE_BULK);
    let limit = env.now_ms() + DISCONNECT_LIMIT_MS;
    let served = back
        && a.call(env, r, limit, request(0, p, [0; 8]), Vec::new())
            .is_some_and(|rsp| rsp.status == USBIF_STATUS_NODEV);
    let seen: Vec<_> = seen.iter().map(|s| format!("{s}")).collect();
    r.add_detail(&format!(
        "cycles={cycles} writes={writes} backend_states={} served_after={}",
        seen.join(","),
        if served { "yes" } else { "no" }
    ));
    r.as_expected = served;
}
