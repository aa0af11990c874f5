//! `xen::sim`: an in-process Xen with several domains, for host tests (and demos inside the
//! unikernel: it is `no_std` + `alloc`).
//!
//! [`Xen`] holds the whole machine: per-domain memory, grant tables, event channels and a
//! xenstored. A [`Domain`] is one domain's view of it and implements the traits a backend
//! uses ([`GrantMapper`], [`GrantCopier`], [`EventChannels`]) plus the grant-table side a
//! frontend uses ([`GrantTable`]); [`Domain::xenstore`] gives a xenstore client connected as
//! that domain.
//!
//! # Where this differs from Xen in ways a guest could notice
//! - Memory is allocated page by page on request ([`Domain::alloc_page`]), not from a
//!   physmap; frame numbers are just names.
//! - Grant tables have no size limit below [`MAX_GRANT_ENTRIES`] and no frames a guest could
//!   map; entries are created by [`Domain::grant_access`] instead of writes to a shared table,
//!   so `GTF_reading`/`GTF_writing` are tracked as mapping counts.
//! - A mapping lands at a fresh address in a per-domain window starting at [`GRANT_WINDOW`];
//!   the caller does not choose it, and mapping over RAM cannot happen.
//! - Event delivery is a pending bit per port and a per-domain "upcall pending" flag; there is
//!   no vCPU, no `shared_info` page and no interrupt. Ports are allocated lowest first.
//! - Everything runs synchronously on the caller's thread; nothing is delivered by itself.
//! - The xenstored's differences are listed in [`xenstored`].

pub mod xenstored;

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::abi::grant_table::GntStatus;
use crate::abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
use crate::abi::{DomId, EvtchnPort, Gfn, GrantRef, GuestPhysAddr, PAGE_SIZE};
use crate::hypervisor::*;
use crate::page::LocalPage;
use crate::xenstore::{Decoder, XenStore, XsError, XsTransport};
use xenstored::Xenstored;

/// Grant entries a simulated domain may have.
pub const MAX_GRANT_ENTRIES: u32 = 4096;
/// Event channel ports a simulated domain may have (the 2-level ABI's limit).
pub const MAX_PORTS: u32 = crate::abi::event_channel::EVTCHN_2L_NR_CHANNELS;
/// Where grant mappings start in each domain's guest-physical space (4 GiB, as SOLO5 does).
pub const GRANT_WINDOW: GuestPhysAddr = GuestPhysAddr(1 << 32);

struct GrantEntry {
    to: DomId,
    gfn: Gfn,
    readonly: bool,
    /// Mappings and copies in progress by the grantee: Xen's `GTF_reading`/`GTF_writing`.
    maps: u32,
}

struct MapTrack {
    granter: DomId,
    gref: GrantRef,
    addr: GuestPhysAddr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Unbound {
        remote: DomId,
    },
    Interdomain {
        remote: DomId,
        remote_port: EvtchnPort,
    },
}

struct Port {
    channel: Channel,
    pending: bool,
    masked: bool,
}

#[derive(Default)]
struct DomainState {
    memory: BTreeMap<Gfn, LocalPage>,
    next_gfn: u64,
    grants: BTreeMap<GrantRef, GrantEntry>,
    /// Grant references ended, reused last ended first (as Linux's grant table free list);
    /// past them, `next_gref` has never been used.
    free_grefs: Vec<GrantRef>,
    next_gref: u32,
    maptrack: BTreeMap<GrantHandle, MapTrack>,
    next_handle: u32,
    next_window_page: u64,
    ports: BTreeMap<EvtchnPort, Port>,
    upcall_pending: bool,
    /// `GNTTABOP_copy` calls made (the count a backend's batching is judged by).
    copy_calls: u64,
}

struct Machine {
    domains: BTreeMap<DomId, DomainState>,
    next_domid: u16,
    xenstored: Xenstored,
}

/// The simulated machine. Clones share it.
#[derive(Clone)]
pub struct Xen(Rc<RefCell<Machine>>);

impl Default for Xen {
    fn default() -> Self {
        Self::new()
    }
}

impl Xen {
    /// A machine with dom0 only.
    pub fn new() -> Xen {
        let mut domains = BTreeMap::new();
        domains.insert(DomId::DOM0, DomainState::default());
        Xen(Rc::new(RefCell::new(Machine {
            domains,
            next_domid: 1,
            xenstored: Xenstored::new(),
        })))
    }

    /// Creates a domain and introduces it to xenstored (as the toolstack does).
    pub fn create_domain(&self) -> Domain {
        let mut m = self.0.borrow_mut();
        let domid = DomId(m.next_domid);
        m.next_domid += 1;
        m.domains.insert(domid, DomainState::default());
        m.xenstored.introduce_domain(domid);
        drop(m);
        self.domain(domid).expect("just created")
    }

    /// Destroys a domain: its event channels close (peers become unbound), its own mappings
    /// go away, and xenstored releases it. Pages it granted that others still map stay
    /// readable by them, as in Xen.
    pub fn destroy_domain(&self, domid: DomId) {
        let ports: Vec<EvtchnPort> = match self.0.borrow().domains.get(&domid) {
            Some(d) => d.ports.keys().copied().collect(),
            None => return,
        };
        let mut d = Domain {
            xen: self.clone(),
            domid,
        };
        for p in ports {
            let _ = d.close(p);
        }
        let mut m = self.0.borrow_mut();
        if let Some(state) = m.domains.remove(&domid) {
            for track in state.maptrack.values() {
                if let Some(g) = m
                    .domains
                    .get_mut(&track.granter)
                    .and_then(|g| g.grants.get_mut(&track.gref))
                {
                    g.maps -= 1;
                }
            }
        }
        m.xenstored.release_domain(domid);
    }

    /// A handle on an existing domain.
    pub fn domain(&self, domid: DomId) -> Option<Domain> {
        self.0
            .borrow()
            .domains
            .contains_key(&domid)
            .then(|| Domain {
                xen: self.clone(),
                domid,
            })
    }

    /// dom0's handle.
    pub fn dom0(&self) -> Domain {
        Domain {
            xen: self.clone(),
            domid: DomId::DOM0,
        }
    }
}

/// One domain's view of the machine.
#[derive(Clone)]
pub struct Domain {
    xen: Xen,
    domid: DomId,
}

impl core::fmt::Debug for Domain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "sim::Domain({})", self.domid)
    }
}

impl Domain {
    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The machine.
    pub fn xen(&self) -> &Xen {
        &self.xen
    }

    fn with<R>(&self, f: impl FnOnce(&mut Machine) -> R) -> R {
        f(&mut self.xen.0.borrow_mut())
    }

    /// A fresh zeroed page of this domain's memory.
    pub fn alloc_page(&self) -> (Gfn, LocalPage) {
        self.with(|m| {
            let d = m.domains.get_mut(&self.domid).expect("domain is alive");
            let gfn = Gfn(0x100 + d.next_gfn);
            d.next_gfn += 1;
            let page = LocalPage::new();
            d.memory.insert(gfn, page.clone());
            (gfn, page)
        })
    }

    /// Grants `to` access to our frame `gfn` (`gnttab_grant_foreign_access`).
    pub fn grant_access(&self, to: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef, Errno> {
        self.with(|m| {
            let d = m.domains.get_mut(&self.domid).expect("domain is alive");
            if !d.memory.contains_key(&gfn) {
                return Err(Errno::EINVAL);
            }
            // A free list, not a search for the lowest free reference: that cost grew with
            // the grants held (a deep queue's frontend spent 4× as long per URB).
            let gref = match d.free_grefs.pop() {
                Some(g) => g,
                None => {
                    let next = d.next_gref.max(GNTTAB_NR_RESERVED_ENTRIES);
                    if next >= MAX_GRANT_ENTRIES {
                        return Err(Errno::ENOSPC);
                    }
                    d.next_gref = next + 1;
                    GrantRef(next)
                }
            };
            d.grants.insert(
                gref,
                GrantEntry {
                    to,
                    gfn,
                    readonly,
                    maps: 0,
                },
            );
            Ok(gref)
        })
    }

    /// Revokes a grant (`gnttab_end_foreign_access_ref`): refused while the grantee has it
    /// mapped, as Linux finds `GTF_reading`/`GTF_writing` set.
    pub fn end_access(&self, gref: GrantRef) -> Result<(), Errno> {
        self.with(|m| {
            let d = m.domains.get_mut(&self.domid).expect("domain is alive");
            match d.grants.get(&gref) {
                None => Err(Errno::EINVAL),
                Some(g) if g.maps > 0 => Err(Errno::EBUSY),
                Some(_) => {
                    d.grants.remove(&gref);
                    d.free_grefs.push(gref);
                    Ok(())
                }
            }
        })
    }

    /// Whether the grantee still has `gref` mapped.
    pub fn grant_in_use(&self, gref: GrantRef) -> bool {
        self.with(|m| {
            m.domains[&self.domid]
                .grants
                .get(&gref)
                .is_some_and(|g| g.maps > 0)
        })
    }

    /// How many foreign grants this domain has mapped now (its maptrack entries): what a
    /// backend must bring back to zero when its frontends go.
    pub fn mappings(&self) -> usize {
        self.with(|m| m.domains.get(&self.domid).map_or(0, |d| d.maptrack.len()))
    }

    /// How many grant-copy calls (hypercalls on Xen) this domain made.
    pub fn copy_calls(&self) -> u64 {
        self.with(|m| m.domains.get(&self.domid).map_or(0, |d| d.copy_calls))
    }

    /// How many event channel ports this domain has open.
    pub fn open_ports(&self) -> usize {
        self.with(|m| m.domains.get(&self.domid).map_or(0, |d| d.ports.len()))
    }

    /// Whether an event arrived on an unmasked port since the last [`take_pending`] drained
    /// them (the upcall a real guest would get).
    ///
    /// [`take_pending`]: EventChannels::take_pending
    pub fn upcall_pending(&self) -> bool {
        self.with(|m| m.domains[&self.domid].upcall_pending)
    }

    /// Masks a port (events stay pending until unmasked).
    pub fn mask(&self, port: EvtchnPort) -> Result<(), Errno> {
        self.with(|m| {
            let p = m
                .domains
                .get_mut(&self.domid)
                .and_then(|d| d.ports.get_mut(&port));
            p.map(|p| p.masked = true).ok_or(Errno::EINVAL)
        })
    }

    /// A xenstore client connected as this domain.
    pub fn xenstore(&self) -> XenStore<SimXsTransport> {
        XenStore::new(SimXsTransport {
            dom: self.clone(),
            inbox: Vec::new(),
            decoder: Decoder::new(),
        })
    }

    /// Checks a grant of `granter` that we want to use, as Xen's `_set_status` does.
    fn check_grant(
        m: &Machine,
        me: DomId,
        granter: DomId,
        gref: GrantRef,
        write: bool,
    ) -> Result<Gfn, GntStatus> {
        let g = m.domains.get(&granter).ok_or(GntStatus::BadDomain)?;
        if gref.0 >= MAX_GRANT_ENTRIES {
            return Err(GntStatus::BadGntref);
        }
        // An unused entry, or one granted to another domain: "Bad flags or dom".
        let e = g
            .grants
            .get(&gref)
            .filter(|e| e.to == me)
            .ok_or(GntStatus::GeneralError)?;
        if write && e.readonly {
            // "Attempt to write-pin a r/o grant entry".
            return Err(GntStatus::GeneralError);
        }
        Ok(e.gfn)
    }

    fn resolve(
        m: &Machine,
        me: DomId,
        ptr: CopyPtr,
        write: bool,
    ) -> Result<(LocalPage, u16), GntStatus> {
        match ptr {
            CopyPtr::Grant { dom, gref, offset } => {
                let gfn = Self::check_grant(m, me, dom, gref, write)?;
                Ok((m.domains[&dom].memory[&gfn].clone(), offset))
            }
            CopyPtr::Local { gfn, offset } => {
                let page = m.domains[&me].memory.get(&gfn).ok_or(GntStatus::BadPage)?;
                Ok((page.clone(), offset))
            }
        }
    }
}

impl GrantTable for Domain {
    type Page = LocalPage;

    fn alloc_page(&mut self) -> Result<(Gfn, LocalPage), Errno> {
        Ok(Domain::alloc_page(self))
    }

    fn grant_access(&mut self, to: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef, Errno> {
        Domain::grant_access(self, to, gfn, readonly)
    }

    fn end_access(&mut self, gref: GrantRef) -> Result<(), Errno> {
        Domain::end_access(self, gref)
    }

    fn grant_in_use(&self, gref: GrantRef) -> bool {
        Domain::grant_in_use(self, gref)
    }
}

impl GrantMapper for Domain {
    type Page = LocalPage;

    fn map(&mut self, requests: &[MapRequest]) -> Result<MapResults<LocalPage>, BatchTooLarge> {
        if requests.len() > MAX_GRANT_BATCH {
            return Err(BatchTooLarge(requests.len()));
        }
        let me = self.domid;
        Ok(self.with(|m| {
            let mut out = MapResults::new();
            for req in requests {
                let result =
                    Self::check_grant(m, me, req.dom, req.gref, !req.readonly).map(|gfn| {
                        let page = m.domains[&req.dom].memory[&gfn].clone();
                        if let Some(e) = m
                            .domains
                            .get_mut(&req.dom)
                            .and_then(|d| d.grants.get_mut(&req.gref))
                        {
                            e.maps += 1;
                        }
                        let mine = m.domains.get_mut(&me).expect("domain is alive");
                        let handle = GrantHandle(mine.next_handle);
                        mine.next_handle += 1;
                        let addr = GuestPhysAddr(
                            GRANT_WINDOW.0 + mine.next_window_page * PAGE_SIZE as u64,
                        );
                        mine.next_window_page += 1;
                        mine.maptrack.insert(
                            handle,
                            MapTrack {
                                granter: req.dom,
                                gref: req.gref,
                                addr,
                            },
                        );
                        GrantMapping {
                            request: *req,
                            handle,
                            addr,
                            page,
                        }
                    });
                // Cannot overflow: requests.len() <= MAX_GRANT_BATCH.
                let _ = out.push(result);
            }
            out
        }))
    }

    fn unmap<I>(&mut self, mappings: I) -> Result<(), GntStatus>
    where
        I: IntoIterator<Item = GrantMapping<LocalPage>>,
    {
        let me = self.domid;
        self.with(|m| {
            let mut first_error = Ok(());
            for mapping in mappings {
                let mine = m.domains.get_mut(&me).expect("domain is alive");
                let track = match mine.maptrack.get(&mapping.handle) {
                    Some(t) if t.addr == mapping.addr => mine.maptrack.remove(&mapping.handle),
                    Some(_) => None,
                    None => None,
                };
                match track {
                    Some(t) => {
                        if let Some(e) = m
                            .domains
                            .get_mut(&t.granter)
                            .and_then(|d| d.grants.get_mut(&t.gref))
                        {
                            e.maps -= 1;
                        }
                    }
                    None => {
                        if first_error.is_ok() {
                            first_error = Err(GntStatus::BadHandle);
                        }
                    }
                }
            }
            first_error
        })
    }

    fn mapped(&self) -> usize {
        self.mappings()
    }
}

impl GrantCopier for Domain {
    fn copy(&mut self, ops: &[CopyOp], statuses: &mut Vec<GntStatus>) {
        let me = self.domid;
        statuses.clear();
        self.with(|m| {
            m.domains.get_mut(&me).expect("domain is alive").copy_calls += 1;
            statuses.extend(ops.iter().map(|op| {
                let status = (|| {
                    let (src, so) = Self::resolve(m, me, op.source, false)?;
                    let (dst, dof) = Self::resolve(m, me, op.dest, true)?;
                    let len = usize::from(op.len);
                    if usize::from(so) + len > PAGE_SIZE || usize::from(dof) + len > PAGE_SIZE {
                        return Err(GntStatus::BadCopyArg);
                    }
                    dst.copy_from(usize::from(dof), &src, usize::from(so), len);
                    Ok(())
                })();
                status.err().unwrap_or(GntStatus::Okay)
            }));
        })
    }
}

impl LocalFrames for Domain {
    fn alloc_frame(&mut self) -> Result<LocalFrame<LocalPage>, Errno> {
        let (gfn, page) = Domain::alloc_page(self);
        Ok(LocalFrame {
            gfn,
            bus_addr: gfn.0 << 12,
            page,
        })
    }
}

impl Machine {
    fn new_port(&mut self, dom: DomId, channel: Channel) -> Result<EvtchnPort, Errno> {
        let d = self.domains.get_mut(&dom).ok_or(Errno::ESRCH)?;
        // Port 0 is never allocated.
        let port = (1..MAX_PORTS)
            .map(EvtchnPort)
            .find(|p| !d.ports.contains_key(p))
            .ok_or(Errno::ENOSPC)?;
        d.ports.insert(
            port,
            Port {
                channel,
                pending: false,
                masked: false,
            },
        );
        Ok(port)
    }

    fn raise(&mut self, dom: DomId, port: EvtchnPort) {
        if let Some(d) = self.domains.get_mut(&dom) {
            if let Some(p) = d.ports.get_mut(&port) {
                p.pending = true;
                if !p.masked {
                    d.upcall_pending = true;
                }
            }
        }
    }
}

impl EventChannels for Domain {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, Errno> {
        let me = self.domid;
        self.with(|m| {
            if !m.domains.contains_key(&remote) {
                return Err(Errno::ESRCH);
            }
            m.new_port(me, Channel::Unbound { remote })
        })
    }

    fn bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, Errno> {
        let me = self.domid;
        self.with(|m| {
            let r = m.domains.get(&remote).ok_or(Errno::ESRCH)?;
            match r.ports.get(&remote_port).map(|p| p.channel) {
                Some(Channel::Unbound { remote: offered_to }) if offered_to == me => {}
                _ => return Err(Errno::EINVAL),
            }
            let local = m.new_port(
                me,
                Channel::Interdomain {
                    remote,
                    remote_port,
                },
            )?;
            let rp = m
                .domains
                .get_mut(&remote)
                .and_then(|d| d.ports.get_mut(&remote_port));
            if let Some(rp) = rp {
                rp.channel = Channel::Interdomain {
                    remote: me,
                    remote_port: local,
                };
            }
            // Xen marks the new local port pending so nothing sent before the bind is lost.
            m.raise(me, local);
            Ok(local)
        })
    }

    fn send(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        let me = self.domid;
        self.with(|m| {
            let p = m.domains[&me].ports.get(&port).ok_or(Errno::EINVAL)?;
            if let Channel::Interdomain {
                remote,
                remote_port,
            } = p.channel
            {
                m.raise(remote, remote_port);
            }
            // Sending on an unbound port is a no-op in Xen.
            Ok(())
        })
    }

    fn unmask(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        let me = self.domid;
        self.with(|m| {
            let d = m.domains.get_mut(&me).expect("domain is alive");
            let p = d.ports.get_mut(&port).ok_or(Errno::EINVAL)?;
            p.masked = false;
            if p.pending {
                d.upcall_pending = true;
            }
            Ok(())
        })
    }

    fn close(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        let me = self.domid;
        self.with(|m| {
            let p = m
                .domains
                .get_mut(&me)
                .and_then(|d| d.ports.remove(&port))
                .ok_or(Errno::EINVAL)?;
            if let Channel::Interdomain {
                remote,
                remote_port,
            } = p.channel
            {
                let rp = m
                    .domains
                    .get_mut(&remote)
                    .and_then(|d| d.ports.get_mut(&remote_port));
                if let Some(rp) = rp {
                    rp.channel = Channel::Unbound { remote: me };
                }
            }
            Ok(())
        })
    }

    fn take_pending(&mut self, f: &mut dyn FnMut(EvtchnPort)) {
        let me = self.domid;
        let ready: Vec<EvtchnPort> = self.with(|m| {
            let d = m.domains.get_mut(&me).expect("domain is alive");
            d.upcall_pending = false;
            d.ports
                .iter_mut()
                .filter(|(_, p)| p.pending && !p.masked)
                .map(|(port, p)| {
                    p.pending = false;
                    *port
                })
                .collect()
        });
        // Called outside the borrow so `f` may use the machine.
        for port in ready {
            f(port);
        }
    }
}

/// A xenstore connection of one simulated domain: requests are served at once by the
/// machine's xenstored, so a reply is always waiting after `send`.
pub struct SimXsTransport {
    dom: Domain,
    inbox: Vec<u8>,
    decoder: Decoder,
}

impl XsTransport for SimXsTransport {
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
        self.decoder.push(msg);
        while let Some(request) = self.decoder.next_message()? {
            let domid = self.dom.domid;
            let reply = self.dom.with(|m| m.xenstored.handle(domid, &request));
            self.inbox.extend_from_slice(&reply.encode());
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        if self.inbox.is_empty() {
            let domid = self.dom.domid;
            if let Some(ev) = self.dom.with(|m| m.xenstored.next_event(domid)) {
                self.inbox.extend_from_slice(&ev.encode());
            }
        }
        let n = buf.len().min(self.inbox.len());
        buf[..n].copy_from_slice(&self.inbox[..n]);
        self.inbox.drain(..n);
        Ok(n)
    }

    fn wait(&mut self) -> Result<(), XsError> {
        Err(XsError::Transport("sim: nothing more will arrive"))
    }
}

#[cfg(test)]
mod tests;
