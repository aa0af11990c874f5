//! The simulated xenstored: the server side of the xenstore protocol, in process.
//!
//! [`Xenstored`] keeps the node tree, the watches, the transactions and each domain's queue of
//! watch events, and answers one request [`Message`] at a time with the reply Xen's C
//! xenstored (`tools/xenstored`) would give. It moves no bytes: whoever owns it feeds it
//! requests (decoded off a ring with [`crate::xenstore::Decoder`]) and drains replies and
//! [`Xenstored::next_event`].
//!
//! Every request is untrusted guest input; no input makes it panic.
//!
//! What it follows from xenstored:
//! - Paths: a path without a leading `/` is relative to the caller's home
//!   `/local/domain/<domid>`; valid characters are ASCII alphanumerics and `-/_@`, no `//`, no
//!   trailing `/`, at most `XENSTORE_ABS_PATH_MAX` bytes.
//! - Permissions: dom0 may do anything; a node's owner (first entry) has full access; another
//!   domain has the access of its own entry in the rest of the list, else the first entry's.
//!   A missing node is reported as `ENOENT` only to a domain that may read its nearest
//!   existing ancestor, `EACCES` otherwise (`errno_from_parents`), so that guests cannot probe
//!   for nodes they may not see. A node created by a guest inherits its parent's permissions
//!   with the guest as owner. Only the owner (or dom0) may set permissions, and a guest may
//!   not give a node away (`EPERM`).
//! - Watches fire on the changed node and its ancestors; removing a subtree also fires the
//!   exact watches on every removed node, deepest first. A watch fires once on registration.
//!   An event reaches a domain only if it may read the node, either as the change left it (as
//!   it was before, for a removal or a permission change) or when the event is delivered.
//!   Relative watches get relative event paths. The special nodes
//!   `@introduceDomain` and `@releaseDomain` are nodes with permissions (`n0` at start), so
//!   only dom0 gets their events unless dom0 grants read with `SET_PERMS`.
//! - Transactions work on a snapshot; every node a transaction reads, writes, finds missing,
//!   or whose children it changes is checked at commit against the live tree by generation
//!   (a node's generation changes with its value, permissions or children), and any
//!   difference ends the transaction with `EAGAIN`. Watches fire only at commit, and use the
//!   permissions the nodes have then.
//! - `WATCH` and `UNWATCH` ignore the transaction id (XSA-115); `TRANSACTION_START` inside a
//!   transaction is `EBUSY`; an unknown transaction id is `ENOENT`.
//! - A reply over `XENSTORE_PAYLOAD_MAX` (a huge directory) is `E2BIG`.
//!
//! # Where this differs from xenstored
//! - No quotas: entries per domain, node size, permissions per node, watches, transactions
//!   and queued events are unbounded. A guest in a host test can exhaust memory.
//! - The relative-path length limit (`XENSTORE_REL_PATH_MAX` below `/local/domain/<id>/`) is
//!   not enforced; only the absolute limit is.
//! - `XS_CONTROL`, `XS_INTRODUCE`, `XS_RELEASE`, `XS_IS_DOMAIN_INTRODUCED`, `XS_RESUME`,
//!   `XS_SET_TARGET`, `XS_RESET_WATCHES` and `XS_DIRECTORY_PART` answer `ENOSYS`: the
//!   toolstack side is the Rust API ([`Xenstored::introduce_domain`],
//!   [`Xenstored::release_domain`]). A message type Xen does not define is `EINVAL`.
//! - No connections: any domain id may send requests, introduced or not, and there is no
//!   ring or event channel state. Releasing a domain does not mark permissions naming it
//!   as stale (xenstored's `XS_PERM_IGNORE` after a domid is reused).
//! - No stub-domain targets (`XS_SET_TARGET`): only dom0 is privileged.
//! - Only `@introduceDomain` and `@releaseDomain` exist as special nodes; watching any other
//!   `@` name is accepted and never fires.
//! - A transaction is replayed against the live tree at commit rather than merged node by
//!   node; the outcome is the same, since the commit happens only if nothing it touched
//!   changed.
//! - Which domains get a committed transaction's events: xenstored checks read access on the
//!   nodes as the commit left them; this also lets through a domain that could read a node
//!   at the moment the transaction changed it (so a node written then removed in one
//!   transaction is still reported to a domain that could read it). Outside transactions
//!   the two rules agree.
//! - A request payload over `XENSTORE_PAYLOAD_MAX` (possible only when a caller builds the
//!   [`Message`] by hand) is `E2BIG` instead of a dropped connection.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Bound;

use crate::abi::xs_wire::{XsdError, XsdSockmsgType, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX};
use crate::abi::DomId;
use crate::xenstore::{Access, Message, Perm, Request, TxId, WatchEvent, XsError};

/// The special node fired when a domain is introduced.
const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special node fired when a domain is released.
const RELEASE_DOMAIN: &str = "@releaseDomain";

/// The nodes libxl creates in a new domain's home, owned by the domain.
const DOMAIN_DIRS: [&str; 6] = ["device", "data", "error", "drivers", "control", "attr"];

/// One node of the store.
#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    /// Never empty: the first entry is the owner and the access of unlisted domains.
    perms: Vec<Perm>,
    /// Changes whenever the value, the permissions or the set of children changes; a
    /// transaction commits only if every node it touched kept its generation.
    generation: u64,
}

/// The whole tree, keyed by absolute path (and the special `@` nodes). A flat ordered map
/// keeps a subtree contiguous (`/a/` sorts every `/a/...` together) and makes the snapshot a
/// transaction takes one clone.
type Nodes = BTreeMap<String, Node>;

/// For each node a transaction touched: its generation when the transaction started, or
/// `None` if it did not exist.
type Accessed = BTreeMap<String, Option<u64>>;

/// A change to the tree, kept by a transaction to replay at commit.
#[derive(Clone, Debug)]
enum Change {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    SetPerms(String, Vec<Perm>),
}

/// A change that may fire watches.
struct Fire {
    /// The node that changed.
    path: String,
    /// Fire only watches on exactly this path (a node removed below the removal's root).
    exact: bool,
    /// The permissions the node had at the change (before it, for a removal or a permission
    /// change). A domain that could read the node then, or can when the event is delivered,
    /// hears about it: a transaction that creates a node and then grants access to it, or
    /// writes a node and then removes it, is seen as when done outside a transaction.
    then_perms: Option<Vec<Perm>>,
}

/// A registered watch.
struct Watch {
    /// The absolute path (or `@` name).
    path: String,
    token: String,
    /// Registered with a relative path: events are reported relative to the home.
    relative: bool,
}

/// What the store keeps per domain.
#[derive(Default)]
struct Conn {
    watches: Vec<Watch>,
    events: VecDeque<Message>,
}

/// An open transaction.
struct Transaction {
    owner: DomId,
    nodes: Nodes,
    accessed: Accessed,
    log: Vec<Change>,
}

/// An in-process xenstored. See the [module documentation](self).
pub struct Xenstored {
    nodes: Nodes,
    /// The last generation handed out.
    generation: u64,
    conns: BTreeMap<DomId, Conn>,
    transactions: BTreeMap<u32, Transaction>,
    /// The next transaction id to try.
    next_tx: u32,
}

impl Default for Xenstored {
    fn default() -> Self {
        Self::new()
    }
}

impl Xenstored {
    /// A store with `/`, `/local`, `/local/domain`, all owned by dom0 (perms `n0`), and dom0
    /// introduced.
    pub fn new() -> Self {
        let dom0_only = vec![Perm {
            domid: DomId::DOM0,
            access: Access::None,
        }];
        let nodes = [
            "/",
            "/local",
            "/local/domain",
            INTRODUCE_DOMAIN,
            RELEASE_DOMAIN,
        ]
        .into_iter()
        .map(|p| {
            let node = Node {
                value: Vec::new(),
                perms: dom0_only.clone(),
                generation: 0,
            };
            (p.to_string(), node)
        })
        .collect();
        let mut conns = BTreeMap::new();
        conns.insert(DomId::DOM0, Conn::default());
        Xenstored {
            nodes,
            generation: 0,
            conns,
            transactions: BTreeMap::new(),
            next_tx: 1,
        }
    }

    /// Introduces a domain: creates `/local/domain/<id>` (owner dom0, read for the domain:
    /// perms `[n0, r<id>]`), and under it `domid` = `"<id>"` (same perms), and `device`,
    /// `data`, `error`, `drivers`, `control`, `attr` owned by the domain (perms `[n<id>]`) — as
    /// libxl does. Fires watches on the special path `@introduceDomain`.
    pub fn introduce_domain(&mut self, domid: DomId) {
        let home = home_path(domid);
        let home_perms = vec![
            Perm {
                domid: DomId::DOM0,
                access: Access::None,
            },
            Perm {
                domid,
                access: Access::Read,
            },
        ];
        let own = vec![Perm {
            domid,
            access: Access::None,
        }];
        let domid_path = format!("{home}/domid");
        let mut changes = vec![
            Change::Mkdir(home.clone()),
            Change::SetPerms(home.clone(), home_perms.clone()),
            Change::Write(domid_path.clone(), domid.to_string().into_bytes()),
            Change::SetPerms(domid_path, home_perms),
        ];
        for dir in DOMAIN_DIRS {
            let path = format!("{home}/{dir}");
            changes.push(Change::Mkdir(path.clone()));
            changes.push(Change::SetPerms(path, own.clone()));
        }
        let mut fires = Vec::new();
        for change in &changes {
            // dom0 on valid paths under an existing parent: these cannot fail.
            if let Ok(f) = self.live(DomId::DOM0).apply(change) {
                fires.extend(f);
            }
        }
        self.conns.entry(domid).or_default();
        fires.push(Fire {
            path: INTRODUCE_DOMAIN.to_string(),
            exact: true,
            then_perms: None,
        });
        self.deliver(fires);
    }

    /// Releases a domain: drops its watches, transactions and queued events; fires
    /// `@releaseDomain`. Does not delete its nodes (the toolstack does that).
    pub fn release_domain(&mut self, domid: DomId) {
        self.conns.remove(&domid);
        self.transactions.retain(|_, t| t.owner != domid);
        self.deliver(vec![Fire {
            path: RELEASE_DOMAIN.to_string(),
            exact: true,
            then_perms: None,
        }]);
    }

    /// Handles one request message from domain `from`; returns the reply message (same
    /// `req_id` and `tx_id`; type = request type with payload per protocol, or `XS_ERROR` with
    /// payload `"<ENAME>\0"`). Watch events caused by it are queued for the watching domains.
    pub fn handle(&mut self, from: DomId, msg: &Message) -> Message {
        let (msg_type, payload) = match self.dispatch(from, msg) {
            Ok(payload) if payload.len() <= XENSTORE_PAYLOAD_MAX => (msg.msg_type, payload),
            Ok(_) => error_reply(XsdError::E2big),
            Err(e) => error_reply(e),
        };
        Message {
            msg_type,
            req_id: msg.req_id,
            tx_id: msg.tx_id,
            payload,
        }
    }

    /// Pops the oldest queued watch event message (type `XS_WATCH_EVENT`, `req_id` 0, `tx_id`
    /// 0, payload `"path\0token\0"`) for `dom`.
    pub fn next_event(&mut self, dom: DomId) -> Option<Message> {
        self.conns.get_mut(&dom)?.events.pop_front()
    }

    /// Serves a request; `Ok` holds the reply payload.
    fn dispatch(&mut self, from: DomId, msg: &Message) -> Result<Vec<u8>, XsdError> {
        use XsdSockmsgType as T;
        let ty = XsdSockmsgType::from_raw(msg.msg_type).ok_or(XsdError::Einval)?;
        if msg.payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsdError::E2big);
        }
        self.conns.entry(from).or_default();
        let tx = TxId(msg.tx_id);
        // Watches are not transactional, so xenstored ignores their transaction id.
        if tx != TxId::NONE && !matches!(ty, T::Watch | T::Unwatch) {
            self.transactions
                .get(&tx.0)
                .filter(|t| t.owner == from)
                .ok_or(XsdError::Enoent)?;
        }
        if ty == T::SetPerms {
            let (path, perms) = Request::decode_set_perms(&msg.payload).map_err(xsd_error)?;
            let path = perms_path(from, path)?;
            return self.change(from, tx, Change::SetPerms(path, perms));
        }
        match Request::decode(ty, &msg.payload).map_err(xsd_error)? {
            Request::Read(p) => {
                let path = node_path(from, p)?;
                Ok(self.view(from, tx)?.lookup(&path, Access::can_read)?.value)
            }
            Request::Directory(p) => {
                let path = node_path(from, p)?;
                let mut view = self.view(from, tx)?;
                view.lookup(&path, Access::can_read)?;
                let mut payload = Vec::new();
                for name in children(view.nodes, &path) {
                    payload.extend_from_slice(name.as_bytes());
                    payload.push(0);
                }
                Ok(payload)
            }
            Request::GetPerms(p) => {
                let path = perms_path(from, p)?;
                let node = self.view(from, tx)?.lookup(&path, Access::can_read)?;
                let mut payload = Vec::new();
                for perm in &node.perms {
                    payload.extend_from_slice(format_perm(perm).as_bytes());
                    payload.push(0);
                }
                Ok(payload)
            }
            Request::Write(p, value) => {
                let change = Change::Write(node_path(from, p)?, value.to_vec());
                self.change(from, tx, change)
            }
            Request::Mkdir(p) => self.change(from, tx, Change::Mkdir(node_path(from, p)?)),
            Request::Rm(p) => self.change(from, tx, Change::Rm(node_path(from, p)?)),
            Request::Watch(p, token) => self.watch(from, p, token),
            Request::Unwatch(p, token) => {
                let (path, _) = watch_path(from, p)?;
                let conn = self.conns.entry(from).or_default();
                let i = conn
                    .watches
                    .iter()
                    .position(|w| w.path == path && w.token == token)
                    .ok_or(XsdError::Enoent)?;
                conn.watches.remove(i);
                Ok(ok())
            }
            Request::TransactionStart => {
                if tx != TxId::NONE {
                    return Err(XsdError::Ebusy);
                }
                let id = self.new_tx_id();
                let t = Transaction {
                    owner: from,
                    nodes: self.nodes.clone(),
                    accessed: Accessed::new(),
                    log: Vec::new(),
                };
                self.transactions.insert(id, t);
                Ok(format!("{id}\0").into_bytes())
            }
            Request::TransactionEnd(commit) => self.transaction_end(from, tx, commit),
            Request::GetDomainPath(domid) => Ok(format!("{}\0", home_path(domid)).into_bytes()),
            // Never decoded here: SET_PERMS is served above from its own decoder.
            Request::SetPerms(..) => Err(XsdError::Einval),
        }
    }

    /// A view of the live tree for `from`.
    fn live(&mut self, from: DomId) -> View<'_> {
        View {
            nodes: &mut self.nodes,
            generation: &mut self.generation,
            accessed: None,
            from,
        }
    }

    /// A view of the live tree, or of transaction `tx` if it is one of `from`'s.
    fn view(&mut self, from: DomId, tx: TxId) -> Result<View<'_>, XsdError> {
        if tx == TxId::NONE {
            return Ok(self.live(from));
        }
        let t = self
            .transactions
            .get_mut(&tx.0)
            .filter(|t| t.owner == from)
            .ok_or(XsdError::Enoent)?;
        Ok(View {
            nodes: &mut t.nodes,
            generation: &mut self.generation,
            accessed: Some(&mut t.accessed),
            from,
        })
    }

    /// Applies a change live (firing watches) or inside a transaction (logging it for commit).
    fn change(&mut self, from: DomId, tx: TxId, change: Change) -> Result<Vec<u8>, XsdError> {
        let fires = self.view(from, tx)?.apply(&change)?;
        if tx == TxId::NONE {
            self.deliver(fires);
        } else if let Some(t) = self.transactions.get_mut(&tx.0) {
            t.log.push(change);
        }
        Ok(ok())
    }

    fn watch(&mut self, from: DomId, p: &str, token: &str) -> Result<Vec<u8>, XsdError> {
        let (path, relative) = watch_path(from, p)?;
        let conn = self.conns.entry(from).or_default();
        if conn
            .watches
            .iter()
            .any(|w| w.path == path && w.token == token)
        {
            return Err(XsdError::Eexist);
        }
        let watch = Watch {
            path,
            token: token.to_string(),
            relative,
        };
        // xenstored fires every new watch once, so that a client need not read the state
        // separately before waiting.
        conn.events
            .push_back(event_message(&watch, &watch.path, from));
        conn.watches.push(watch);
        Ok(ok())
    }

    fn new_tx_id(&mut self) -> u32 {
        loop {
            let id = self.next_tx;
            self.next_tx = self.next_tx.wrapping_add(1).max(1);
            if !self.transactions.contains_key(&id) {
                return id;
            }
        }
    }

    fn transaction_end(
        &mut self,
        from: DomId,
        tx: TxId,
        commit: bool,
    ) -> Result<Vec<u8>, XsdError> {
        let t = match self.transactions.get(&tx.0) {
            Some(t) if tx != TxId::NONE && t.owner == from => self.transactions.remove(&tx.0),
            _ => None,
        }
        .ok_or(XsdError::Enoent)?;
        if !commit {
            return Ok(ok());
        }
        let conflict = t
            .accessed
            .iter()
            .any(|(path, generation)| self.nodes.get(path).map(|n| n.generation) != *generation);
        if conflict {
            return Err(XsdError::Eagain);
        }
        let mut fires = Vec::new();
        for change in &t.log {
            // Everything the change depended on is as the transaction saw it, so the replay
            // succeeds as it did inside the transaction.
            if let Ok(f) = self.live(from).apply(change) {
                fires.extend(f);
            }
        }
        self.deliver(fires);
        Ok(ok())
    }

    /// Queues the events a set of changes to the live tree cause.
    fn deliver(&mut self, fires: Vec<Fire>) {
        let Xenstored { nodes, conns, .. } = self;
        for fire in fires {
            let now = nodes.get(&fire.path).map(|n| &n.perms);
            for (dom, conn) in conns.iter_mut() {
                let can_read = |perms: &Vec<Perm>| access(perms, *dom).can_read();
                if !(now.is_some_and(can_read) || fire.then_perms.as_ref().is_some_and(can_read)) {
                    continue;
                }
                for w in &conn.watches {
                    let hit = w.path == fire.path || (!fire.exact && is_child(&fire.path, &w.path));
                    if hit {
                        conn.events.push_back(event_message(w, &fire.path, *dom));
                    }
                }
            }
        }
    }
}

/// The tree as one domain sees it, live or inside a transaction.
struct View<'a> {
    nodes: &'a mut Nodes,
    generation: &'a mut u64,
    /// Inside a transaction: where to record what it touched.
    accessed: Option<&'a mut Accessed>,
    from: DomId,
}

impl View<'_> {
    fn apply(&mut self, change: &Change) -> Result<Vec<Fire>, XsdError> {
        match change {
            Change::Write(path, value) => self.write(path, value),
            Change::Mkdir(path) => self.mkdir(path),
            Change::Rm(path) => self.rm(path),
            Change::SetPerms(path, perms) => self.set_perms(path, perms),
        }
    }

    /// Records a node the transaction depends on, as it was when first touched.
    fn note(&mut self, path: &str) {
        if let Some(accessed) = self.accessed.as_deref_mut() {
            if !accessed.contains_key(path) {
                let generation = self.nodes.get(path).map(|n| n.generation);
                accessed.insert(path.to_string(), generation);
            }
        }
    }

    /// The event for a write or a creation of `path`.
    fn changed(&self, path: &str) -> Fire {
        Fire {
            path: path.to_string(),
            exact: false,
            then_perms: self.nodes.get(path).map(|n| n.perms.clone()),
        }
    }

    fn bump(&mut self) -> u64 {
        *self.generation += 1;
        *self.generation
    }

    /// The node at `path` if `from` has the access `want` accepts.
    fn lookup(&mut self, path: &str, want: fn(Access) -> bool) -> Result<Node, XsdError> {
        self.note(path);
        if let Some(node) = self.nodes.get(path) {
            return if want(access(&node.perms, self.from)) {
                Ok(node.clone())
            } else {
                Err(XsdError::Eacces)
            };
        }
        // As xenstored's errno_from_parents: only a domain that may read the nearest existing
        // ancestor learns that the node is missing.
        let mut ancestor = parent(path);
        while let Some(a) = ancestor {
            self.note(a);
            if let Some(node) = self.nodes.get(a) {
                return Err(if access(&node.perms, self.from).can_read() {
                    XsdError::Enoent
                } else {
                    XsdError::Eacces
                });
            }
            ancestor = parent(a);
        }
        Err(XsdError::Enoent)
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<Vec<Fire>, XsdError> {
        match self.lookup(path, Access::can_write) {
            Ok(_) => {
                let generation = self.bump();
                if let Some(node) = self.nodes.get_mut(path) {
                    node.value = value.to_vec();
                    node.generation = generation;
                }
            }
            Err(XsdError::Enoent) => self.create(path, value)?,
            Err(e) => return Err(e),
        }
        Ok(vec![self.changed(path)])
    }

    fn mkdir(&mut self, path: &str) -> Result<Vec<Fire>, XsdError> {
        match self.lookup(path, Access::can_write) {
            Ok(_) => Ok(Vec::new()),
            Err(XsdError::Enoent) => {
                self.create(path, b"")?;
                Ok(vec![self.changed(path)])
            }
            Err(e) => Err(e),
        }
    }

    /// Creates `path` and any missing ancestors, given write access to the nearest existing one.
    fn create(&mut self, path: &str, value: &[u8]) -> Result<(), XsdError> {
        let mut missing = vec![path];
        let mut ancestor = parent(path);
        let (top, mut perms) = loop {
            let a = ancestor.ok_or(XsdError::Enoent)?;
            self.note(a);
            if let Some(node) = self.nodes.get(a) {
                break (a, node.perms.clone());
            }
            missing.push(a);
            ancestor = parent(a);
        };
        if !access(&perms, self.from).can_write() {
            return Err(XsdError::Eacces);
        }
        // A guest owns what it creates, so it can manage (and is accountable for) it.
        if self.from != DomId::DOM0 {
            if let Some(owner) = perms.first_mut() {
                owner.domid = self.from;
            }
        }
        let generation = self.bump();
        if let Some(node) = self.nodes.get_mut(top) {
            node.generation = generation;
        }
        for p in missing.into_iter().rev() {
            let node = Node {
                value: if p == path {
                    value.to_vec()
                } else {
                    Vec::new()
                },
                perms: perms.clone(),
                generation,
            };
            self.nodes.insert(p.to_string(), node);
        }
        Ok(())
    }

    fn rm(&mut self, path: &str) -> Result<Vec<Fire>, XsdError> {
        if path == "/" {
            return Err(XsdError::Einval);
        }
        let node = match self.lookup(path, Access::can_write) {
            Ok(node) => node,
            // Removing what is already gone succeeds, if its parent exists.
            Err(XsdError::Enoent) => {
                return match parent(path) {
                    Some(p) if self.nodes.contains_key(p) => Ok(Vec::new()),
                    _ => Err(XsdError::Enoent),
                };
            }
            Err(e) => return Err(e),
        };
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .nodes
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut fires = Vec::new();
        // Deepest first, as xenstored walks the subtree.
        for p in below.into_iter().rev() {
            self.note(&p);
            if let Some(gone) = self.nodes.remove(&p) {
                fires.push(Fire {
                    path: p,
                    exact: true,
                    then_perms: Some(gone.perms),
                });
            }
        }
        self.nodes.remove(path);
        fires.push(Fire {
            path: path.to_string(),
            exact: false,
            then_perms: Some(node.perms),
        });
        if let Some(p) = parent(path) {
            self.note(p);
            let generation = self.bump();
            if let Some(node) = self.nodes.get_mut(p) {
                node.generation = generation;
            }
        }
        Ok(fires)
    }

    fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<Vec<Fire>, XsdError> {
        let node = self.lookup(path, |_| true)?;
        let owner = node.perms.first().map(|p| p.domid);
        if self.from != DomId::DOM0 {
            if owner != Some(self.from) {
                return Err(XsdError::Eacces);
            }
            if perms.first().map(|p| p.domid) != owner {
                return Err(XsdError::Eperm);
            }
        }
        if perms.is_empty() {
            return Err(XsdError::Einval);
        }
        let generation = self.bump();
        if let Some(n) = self.nodes.get_mut(path) {
            n.perms = perms.to_vec();
            n.generation = generation;
        }
        Ok(vec![Fire {
            path: path.to_string(),
            exact: false,
            then_perms: Some(node.perms),
        }])
    }
}

/// The access `dom` has to a node with `perms`.
fn access(perms: &[Perm], dom: DomId) -> Access {
    let Some((owner, others)) = perms.split_first() else {
        return if dom == DomId::DOM0 {
            Access::Both
        } else {
            Access::None
        };
    };
    if dom == DomId::DOM0 || owner.domid == dom {
        return Access::Both;
    }
    others
        .iter()
        .find(|p| p.domid == dom)
        .map_or(owner.access, |p| p.access)
}

fn home_path(domid: DomId) -> String {
    format!("/local/domain/{}", domid.0)
}

fn valid_chars(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b))
}

/// Resolves a node path from `from`'s request; `EINVAL` if malformed.
fn node_path(from: DomId, p: &str) -> Result<String, XsdError> {
    let path = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{p}", home_path(from))
    };
    let well_formed = path.len() <= XENSTORE_ABS_PATH_MAX
        && valid_chars(&path)
        && (path == "/" || !(path.ends_with('/') || path.contains("//")));
    if well_formed {
        Ok(path)
    } else {
        Err(XsdError::Einval)
    }
}

/// A special `@` name, if `p` is a well-formed one.
fn special_path(p: &str) -> Option<String> {
    (p.starts_with('@') && p.len() <= XENSTORE_ABS_PATH_MAX && valid_chars(p))
        .then(|| p.to_string())
}

/// Resolves the path of `GET_PERMS`/`SET_PERMS`, which also take the special nodes.
fn perms_path(from: DomId, p: &str) -> Result<String, XsdError> {
    match special_path(p) {
        Some(special) => Ok(special),
        None => node_path(from, p),
    }
}

/// Resolves a watch path; also says whether it was relative.
fn watch_path(from: DomId, p: &str) -> Result<(String, bool), XsdError> {
    if p.starts_with('@') {
        return special_path(p).map(|s| (s, false)).ok_or(XsdError::Einval);
    }
    Ok((node_path(from, p)?, !p.starts_with('/')))
}

/// The parent of an absolute path; `None` for `/` and the special nodes.
fn parent(path: &str) -> Option<&str> {
    if path == "/" || !path.starts_with('/') {
        return None;
    }
    match path.rfind('/')? {
        0 => Some("/"),
        i => Some(&path[..i]),
    }
}

/// Whether `path` is strictly below `ancestor`.
fn is_child(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/') && path != "/";
    }
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The names of the children of `path`, sorted.
fn children<'n>(nodes: &'n Nodes, path: &str) -> Vec<&'n str> {
    let prefix = if path == "/" {
        String::from("/")
    } else {
        format!("{path}/")
    };
    nodes
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .map(|(k, _)| k.as_str())
        .take_while(|k| k.starts_with(&prefix))
        .filter_map(|k| k.get(prefix.len()..))
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .collect()
}

/// A watch event for `watch` about `path`, as the watching domain `dom` should see it.
fn event_message(watch: &Watch, path: &str, dom: DomId) -> Message {
    let home = format!("{}/", home_path(dom));
    let path = if watch.relative {
        path.strip_prefix(&home).unwrap_or(path)
    } else {
        path
    };
    let event = WatchEvent {
        path: path.to_string(),
        token: watch.token.clone(),
    };
    Message {
        msg_type: XsdSockmsgType::WatchEvent as u32,
        req_id: 0,
        tx_id: 0,
        payload: event.payload(),
    }
}

fn format_perm(perm: &Perm) -> String {
    let letter = match perm.access {
        Access::None => 'n',
        Access::Read => 'r',
        Access::Write => 'w',
        Access::Both => 'b',
    };
    format!("{letter}{}", perm.domid.0)
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn error_reply(e: XsdError) -> (u32, Vec<u8>) {
    let mut payload = e.name().as_bytes().to_vec();
    payload.push(0);
    (XsdSockmsgType::Error as u32, payload)
}

/// The xenstore error a decoding failure answers with.
fn xsd_error(e: XsError) -> XsdError {
    match e {
        XsError::Xs(e) => e,
        _ => XsdError::Einval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::{Decoder, Reply};
    use alloc::vec;
    use proptest::prelude::*;

    const D5: DomId = DomId(5);
    const D7: DomId = DomId(7);

    fn perm(domid: u16, access: Access) -> Perm {
        Perm {
            domid: DomId(domid),
            access,
        }
    }

    /// Sends `r` from `from` in transaction `tx` through the wire encoding; parses the reply.
    fn call(xs: &mut Xenstored, from: DomId, tx: u32, r: Request<'_>) -> Result<Reply, XsError> {
        let mut d = Decoder::new();
        d.push(&r.encode(42, TxId(tx)).unwrap());
        let msg = d.next_message().unwrap().unwrap();
        let reply = xs.handle(from, &msg);
        assert_eq!((reply.req_id, reply.tx_id), (42, tx));
        Reply::parse(r.msg_type(), &reply)
    }

    fn ok_(xs: &mut Xenstored, from: DomId, r: Request<'_>) {
        assert_eq!(call(xs, from, 0, r), Ok(Reply::Ok), "{r:?} from {from:?}");
    }

    fn err(xs: &mut Xenstored, from: DomId, tx: u32, r: Request<'_>) -> XsdError {
        match call(xs, from, tx, r) {
            Err(XsError::Xs(e)) => e,
            other => panic!("{r:?} from {from:?}: expected an error, got {other:?}"),
        }
    }

    fn read(xs: &mut Xenstored, from: DomId, path: &str) -> Result<Vec<u8>, XsdError> {
        match call(xs, from, 0, Request::Read(path)) {
            Ok(Reply::Data(v)) => Ok(v),
            Err(XsError::Xs(e)) => Err(e),
            other => panic!("read {path}: {other:?}"),
        }
    }

    fn dir(xs: &mut Xenstored, from: DomId, path: &str) -> Vec<String> {
        match call(xs, from, 0, Request::Directory(path)) {
            Ok(Reply::Directory(names)) => names,
            other => panic!("directory {path}: {other:?}"),
        }
    }

    fn perms(xs: &mut Xenstored, from: DomId, path: &str) -> Vec<Perm> {
        match call(xs, from, 0, Request::GetPerms(path)) {
            Ok(Reply::Perms(p)) => p,
            other => panic!("get_perms {path}: {other:?}"),
        }
    }

    fn start(xs: &mut Xenstored, from: DomId) -> u32 {
        match call(xs, from, 0, Request::TransactionStart) {
            Ok(Reply::Transaction(TxId(id))) => id,
            other => panic!("transaction_start: {other:?}"),
        }
    }

    /// Drains `dom`'s events as (path, token).
    fn events(xs: &mut Xenstored, dom: DomId) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(m) = xs.next_event(dom) {
            assert_eq!(
                (m.msg_type, m.req_id, m.tx_id),
                (XsdSockmsgType::WatchEvent as u32, 0, 0)
            );
            let e = WatchEvent::parse(&m.payload).unwrap();
            out.push((e.path, e.token));
        }
        out
    }

    fn ev(path: &str, token: &str) -> (String, String) {
        (path.into(), token.into())
    }

    fn store() -> Xenstored {
        let mut xs = Xenstored::new();
        xs.introduce_domain(D5);
        xs.introduce_domain(D7);
        xs
    }

    #[test]
    fn read_write_directory_round_trip() {
        let mut xs = Xenstored::new();
        let d0 = DomId::DOM0;
        assert_eq!(dir(&mut xs, d0, "/"), ["local"]);
        assert_eq!(dir(&mut xs, d0, "/local/domain"), Vec::<String>::new());
        ok_(&mut xs, d0, Request::Write("/a/b/c", b"v\0x"));
        ok_(&mut xs, d0, Request::Write("/a-b", b"1"));
        assert_eq!(read(&mut xs, d0, "/a/b/c"), Ok(b"v\0x".to_vec()));
        assert_eq!(read(&mut xs, d0, "/a/b"), Ok(vec![]));
        assert_eq!(dir(&mut xs, d0, "/"), ["a", "a-b", "local"]);
        assert_eq!(dir(&mut xs, d0, "/a"), ["b"]);
        ok_(&mut xs, d0, Request::Write("/a/b", b"new"));
        assert_eq!(read(&mut xs, d0, "/a/b"), Ok(b"new".to_vec()));
        assert_eq!(read(&mut xs, d0, "/nope"), Err(XsdError::Enoent));
        ok_(&mut xs, d0, Request::Mkdir("/a/d"));
        assert_eq!(dir(&mut xs, d0, "/a"), ["b", "d"]);
        ok_(&mut xs, d0, Request::Rm("/a/b"));
        assert_eq!(read(&mut xs, d0, "/a/b/c"), Err(XsdError::Enoent));
        assert_eq!(dir(&mut xs, d0, "/a"), ["d"]);
        // Removing a missing node is fine if its parent exists.
        ok_(&mut xs, d0, Request::Rm("/a/zz"));
        assert_eq!(err(&mut xs, d0, 0, Request::Rm("/x/y")), XsdError::Enoent);
        assert_eq!(err(&mut xs, d0, 0, Request::Rm("/")), XsdError::Einval);
        for bad in ["/a//b", "/a/", "/a b", "/é"] {
            assert_eq!(err(&mut xs, d0, 0, Request::Read(bad)), XsdError::Einval);
        }
        assert_eq!(
            call(&mut xs, D5, 0, Request::GetDomainPath(D7)),
            Ok(Reply::DomainPath("/local/domain/7".into()))
        );
    }

    #[test]
    fn relative_paths_resolve_to_the_home() {
        let mut xs = store();
        ok_(&mut xs, D5, Request::Write("device/vusb/0/state", b"1"));
        assert_eq!(
            read(&mut xs, DomId::DOM0, "/local/domain/5/device/vusb/0/state"),
            Ok(b"1".to_vec())
        );
        assert_eq!(read(&mut xs, D5, "domid"), Ok(b"5".to_vec()));
        assert_eq!(
            dir(&mut xs, D5, "/local/domain/5"),
            ["attr", "control", "data", "device", "domid", "drivers", "error"]
        );
    }

    #[test]
    fn guests_cannot_read_or_write_what_they_have_no_permission_on() {
        let mut xs = store();
        ok_(&mut xs, DomId::DOM0, Request::Write("/secret/x", b"s"));
        assert_eq!(read(&mut xs, D5, "/secret/x"), Err(XsdError::Eacces));
        // Nor may it learn whether a node exists under one it cannot read.
        assert_eq!(read(&mut xs, D5, "/secret/y"), Err(XsdError::Eacces));
        assert_eq!(
            err(&mut xs, D5, 0, Request::Write("/secret/x", b"mine")),
            XsdError::Eacces
        );
        assert_eq!(
            err(&mut xs, D5, 0, Request::Write("/new", b"1")),
            XsdError::Eacces
        );
        assert_eq!(
            err(&mut xs, D5, 0, Request::Rm("/secret")),
            XsdError::Eacces
        );
        // Another guest's home is readable only by that guest.
        assert_eq!(
            read(&mut xs, D5, "/local/domain/7/domid"),
            Err(XsdError::Eacces)
        );
        // Its own home is readable but owned by dom0: no writing there, only below its dirs.
        assert_eq!(
            err(&mut xs, D5, 0, Request::Write("name", b"x")),
            XsdError::Eacces
        );
        assert_eq!(read(&mut xs, D5, "name"), Err(XsdError::Enoent));
        assert_eq!(read(&mut xs, DomId::DOM0, "/secret/x"), Ok(b"s".to_vec()));
    }

    #[test]
    fn a_guest_owns_what_it_creates() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, d0, Request::Mkdir("/local/domain/5/backend"));
        let granted = [perm(0, Access::None), perm(5, Access::Both)];
        ok_(
            &mut xs,
            d0,
            Request::SetPerms("/local/domain/5/backend", &granted),
        );
        ok_(&mut xs, D5, Request::Write("backend/vusb/1/0/state", b"2"));
        let want = vec![perm(5, Access::None), perm(5, Access::Both)];
        assert_eq!(
            perms(&mut xs, d0, "/local/domain/5/backend/vusb/1/0/state"),
            want
        );
        assert_eq!(perms(&mut xs, d0, "/local/domain/5/backend/vusb"), want);
        // dom0 creating keeps the inherited owner.
        ok_(
            &mut xs,
            d0,
            Request::Write("/local/domain/5/backend/d0", b""),
        );
        assert_eq!(
            perms(&mut xs, d0, "/local/domain/5/backend/d0"),
            granted.to_vec()
        );
    }

    #[test]
    fn a_perms_entry_grants_its_domain_access() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, d0, Request::Write("/shared", b"x"));
        let p = [perm(0, Access::None), perm(7, Access::Read)];
        ok_(&mut xs, d0, Request::SetPerms("/shared", &p));
        assert_eq!(read(&mut xs, D7, "/shared"), Ok(b"x".to_vec()));
        assert_eq!(perms(&mut xs, D7, "/shared"), p.to_vec());
        assert_eq!(read(&mut xs, D5, "/shared"), Err(XsdError::Eacces));
        assert_eq!(
            err(&mut xs, D7, 0, Request::Write("/shared", b"y")),
            XsdError::Eacces
        );
        // Only the owner may change permissions, and may not give the node away.
        assert_eq!(
            err(&mut xs, D7, 0, Request::SetPerms("/shared", &p)),
            XsdError::Eacces
        );
        let mine = [perm(5, Access::Read)];
        ok_(&mut xs, D5, Request::SetPerms("device", &mine));
        assert_eq!(read(&mut xs, D7, "/local/domain/5/device"), Ok(vec![]));
        assert_eq!(
            err(
                &mut xs,
                D5,
                0,
                Request::SetPerms("device", &[perm(7, Access::Both)])
            ),
            XsdError::Eperm
        );
    }

    #[test]
    fn watches_fire_on_registration_and_on_changes_below() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, d0, Request::Watch("/a", "t"));
        assert_eq!(events(&mut xs, d0), [ev("/a", "t")]);
        ok_(&mut xs, d0, Request::Write("/a/b/c", b"1"));
        ok_(&mut xs, d0, Request::Write("/ab", b"1"));
        assert_eq!(events(&mut xs, d0), [ev("/a/b/c", "t")]);
        // A mkdir that changes nothing fires nothing.
        ok_(&mut xs, d0, Request::Mkdir("/a/b"));
        assert_eq!(events(&mut xs, d0), []);
        assert_eq!(
            err(&mut xs, d0, 0, Request::Watch("/a", "t")),
            XsdError::Eexist
        );
        ok_(&mut xs, d0, Request::Unwatch("/a", "t"));
        assert_eq!(
            err(&mut xs, d0, 0, Request::Unwatch("/a", "t")),
            XsdError::Enoent
        );
        ok_(&mut xs, d0, Request::Write("/a/b", b"2"));
        assert_eq!(events(&mut xs, d0), []);

        // A relative watch reports relative paths.
        ok_(&mut xs, D5, Request::Watch("device", "fe"));
        assert_eq!(events(&mut xs, D5), [ev("device", "fe")]);
        ok_(
            &mut xs,
            d0,
            Request::Write("/local/domain/5/device/vusb/0", b""),
        );
        assert_eq!(events(&mut xs, D5), [ev("device/vusb/0", "fe")]);
        // The same watch spelled absolutely is a duplicate.
        assert_eq!(
            err(
                &mut xs,
                D5,
                0,
                Request::Watch("/local/domain/5/device", "fe")
            ),
            XsdError::Eexist
        );
    }

    #[test]
    fn events_only_reach_domains_that_may_read_the_node() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, D5, Request::Watch("/secret", "s"));
        ok_(&mut xs, d0, Request::Watch("/secret", "s"));
        assert_eq!(events(&mut xs, D5), [ev("/secret", "s")]);
        events(&mut xs, d0);
        ok_(&mut xs, d0, Request::Write("/secret/x", b"1"));
        assert_eq!(events(&mut xs, D5), []);
        assert_eq!(events(&mut xs, d0), [ev("/secret/x", "s")]);
        // Granting read is itself an event the domain now sees; so are later changes.
        let p = [perm(0, Access::None), perm(5, Access::Read)];
        ok_(&mut xs, d0, Request::SetPerms("/secret/x", &p));
        assert_eq!(events(&mut xs, D5), [ev("/secret/x", "s")]);
        ok_(&mut xs, d0, Request::Write("/secret/x", b"2"));
        assert_eq!(events(&mut xs, D5), [ev("/secret/x", "s")]);
    }

    #[test]
    fn rm_fires_watches_on_the_removed_subtree() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, d0, Request::Write("/a/b/c", b"1"));
        ok_(&mut xs, d0, Request::Watch("/a/b/c", "deep"));
        ok_(&mut xs, d0, Request::Watch("/a", "top"));
        ok_(&mut xs, d0, Request::Watch("/a/b/c/none", "missing"));
        ok_(&mut xs, d0, Request::Watch("/other", "other"));
        events(&mut xs, d0);
        ok_(&mut xs, d0, Request::Rm("/a/b"));
        assert_eq!(
            events(&mut xs, d0),
            [ev("/a/b/c", "deep"), ev("/a/b", "top")]
        );
        // A guest that could read a removed node hears of its removal.
        ok_(&mut xs, D5, Request::Write("data/x", b"1"));
        ok_(&mut xs, D5, Request::Watch("data/x", "x"));
        events(&mut xs, D5);
        ok_(&mut xs, d0, Request::Rm("/local/domain/5/data"));
        assert_eq!(events(&mut xs, D5), [ev("data/x", "x")]);
    }

    #[test]
    fn a_conflicting_transaction_fails_with_eagain() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, d0, Request::Write("/a", b"1"));
        let tx = start(&mut xs, D5);
        assert_eq!(
            call(&mut xs, D5, tx, Request::Read("/local/domain/5/domid")),
            Ok(Reply::Data(b"5".to_vec()))
        );
        ok_(&mut xs, d0, Request::Write("/local/domain/5/domid", b"5"));
        assert_eq!(
            call(&mut xs, D5, tx, Request::Write("data/x", b"1")),
            Ok(Reply::Ok)
        );
        assert_eq!(
            err(&mut xs, D5, tx, Request::TransactionEnd(true)),
            XsdError::Eagain
        );
        assert_eq!(read(&mut xs, D5, "data/x"), Err(XsdError::Enoent));
        // The transaction is gone.
        assert_eq!(
            err(&mut xs, D5, tx, Request::Read("domid")),
            XsdError::Enoent
        );

        // Listing a directory conflicts with a child created meanwhile.
        let tx = start(&mut xs, d0);
        assert!(call(&mut xs, d0, tx, Request::Directory("/a")).is_ok());
        ok_(&mut xs, d0, Request::Write("/a/new", b""));
        assert_eq!(
            err(&mut xs, d0, tx, Request::TransactionEnd(true)),
            XsdError::Eagain
        );

        // So does a node the transaction found missing and someone else created.
        let tx = start(&mut xs, d0);
        assert_eq!(err(&mut xs, d0, tx, Request::Read("/b")), XsdError::Enoent);
        ok_(&mut xs, d0, Request::Write("/b", b""));
        assert_eq!(
            err(&mut xs, d0, tx, Request::TransactionEnd(true)),
            XsdError::Eagain
        );
    }

    #[test]
    fn a_transaction_commits_and_fires_watches_only_then() {
        let mut xs = store();
        let d0 = DomId::DOM0;
        ok_(&mut xs, D5, Request::Watch("data", "w"));
        events(&mut xs, D5);
        let tx = start(&mut xs, D5);
        let other = start(&mut xs, D5);
        assert_ne!(tx, other);
        let w = |path, v| Request::Write(path, v);
        assert_eq!(call(&mut xs, D5, tx, w("data/x", b"1")), Ok(Reply::Ok));
        assert_eq!(call(&mut xs, D5, tx, w("data/y", b"2")), Ok(Reply::Ok));
        assert_eq!(call(&mut xs, D5, tx, Request::Rm("data/y")), Ok(Reply::Ok));
        assert_eq!(
            call(&mut xs, D5, tx, Request::Read("data/x")),
            Ok(Reply::Data(b"1".to_vec()))
        );
        assert_eq!(read(&mut xs, D5, "data/x"), Err(XsdError::Enoent));
        // Unrelated live changes do not conflict.
        ok_(&mut xs, d0, Request::Write("/elsewhere", b""));
        assert_eq!(events(&mut xs, D5), []);
        assert_eq!(
            call(&mut xs, D5, tx, Request::TransactionEnd(true)),
            Ok(Reply::Ok)
        );
        assert_eq!(read(&mut xs, D5, "data/x"), Ok(b"1".to_vec()));
        assert_eq!(read(&mut xs, D5, "data/y"), Err(XsdError::Enoent));
        assert_eq!(
            events(&mut xs, D5),
            [ev("data/x", "w"), ev("data/y", "w"), ev("data/y", "w")]
        );
        // An aborted transaction changes nothing.
        assert_eq!(call(&mut xs, D5, other, w("data/z", b"")), Ok(Reply::Ok));
        assert_eq!(
            call(&mut xs, D5, other, Request::TransactionEnd(false)),
            Ok(Reply::Ok)
        );
        assert_eq!(read(&mut xs, D5, "data/z"), Err(XsdError::Enoent));
        assert_eq!(events(&mut xs, D5), []);
    }

    #[test]
    fn transaction_ids_are_checked() {
        let mut xs = store();
        let tx = start(&mut xs, D5);
        assert_eq!(
            err(&mut xs, D5, 999, Request::Read("domid")),
            XsdError::Enoent
        );
        // Another domain's transaction is not there for it.
        assert_eq!(
            err(&mut xs, D7, tx, Request::Read("domid")),
            XsdError::Enoent
        );
        assert_eq!(
            err(&mut xs, D7, tx, Request::TransactionEnd(true)),
            XsdError::Enoent
        );
        assert_eq!(
            err(&mut xs, D5, 0, Request::TransactionEnd(true)),
            XsdError::Enoent
        );
        assert_eq!(
            err(&mut xs, D5, tx, Request::TransactionStart),
            XsdError::Ebusy
        );
        // Watches ignore the transaction id.
        assert_eq!(
            call(&mut xs, D5, tx, Request::Watch("data", "t")),
            Ok(Reply::Ok)
        );
        assert_eq!(events(&mut xs, D5), [ev("data", "t")]);
    }

    #[test]
    fn introduce_and_release_fire_their_special_watches() {
        let mut xs = Xenstored::new();
        let d0 = DomId::DOM0;
        ok_(&mut xs, d0, Request::Watch("@introduceDomain", "i"));
        ok_(&mut xs, d0, Request::Watch("@releaseDomain", "r"));
        ok_(&mut xs, D5, Request::Watch("@releaseDomain", "r5"));
        assert_eq!(
            events(&mut xs, d0),
            [ev("@introduceDomain", "i"), ev("@releaseDomain", "r")]
        );
        assert_eq!(events(&mut xs, D5), [ev("@releaseDomain", "r5")]);
        xs.introduce_domain(D7);
        assert_eq!(events(&mut xs, d0), [ev("@introduceDomain", "i")]);
        assert_eq!(
            perms(&mut xs, d0, "/local/domain/7"),
            [perm(0, Access::None), perm(7, Access::Read)]
        );
        assert_eq!(
            perms(&mut xs, d0, "/local/domain/7/device"),
            [perm(7, Access::None)]
        );
        ok_(&mut xs, D7, Request::Watch("device", "d"));
        xs.release_domain(D7);
        assert_eq!(events(&mut xs, d0), [ev("@releaseDomain", "r")]);
        // A guest hears of it only once dom0 grants read on the special node.
        assert_eq!(events(&mut xs, D5), []);
        assert_eq!(xs.next_event(D7), None);
        let p = [perm(0, Access::None), perm(5, Access::Read)];
        ok_(&mut xs, d0, Request::SetPerms("@releaseDomain", &p));
        events(&mut xs, D5);
        xs.release_domain(D7);
        assert_eq!(events(&mut xs, D5), [ev("@releaseDomain", "r5")]);
        // Its nodes stay for the toolstack to remove.
        assert_eq!(
            read(&mut xs, d0, "/local/domain/7/domid"),
            Ok(b"7".to_vec())
        );
    }

    #[test]
    fn unimplemented_and_unknown_types_are_refused() {
        let mut xs = store();
        let msg = |msg_type| Message {
            msg_type,
            req_id: 3,
            tx_id: 0,
            payload: b"x\0".to_vec(),
        };
        let r = xs.handle(DomId::DOM0, &msg(XsdSockmsgType::Introduce as u32));
        assert_eq!(
            Reply::parse(XsdSockmsgType::Introduce, &r),
            Err(XsError::Xs(XsdError::Enosys))
        );
        let r = xs.handle(DomId::DOM0, &msg(99));
        assert_eq!((r.req_id, r.payload.as_slice()), (3, &b"EINVAL\0"[..]));
    }

    proptest! {
        /// Any message from any domain gets a reply to it, never a panic.
        #[test]
        fn garbage_never_panics(
            msgs in prop::collection::vec(
                (0u32..24, 0u32..4, 0u16..8, prop::collection::vec(
                    prop_oneof![Just(0u8), Just(b'/'), Just(b'a'), Just(b'@'), Just(b'T'),
                                Just(b'r'), Just(b'1'), any::<u8>()], 0..40)),
                1..30)
        ) {
            let mut xs = store();
            for (msg_type, tx_id, from, payload) in msgs {
                let msg = Message { msg_type, req_id: 9, tx_id, payload };
                let reply = xs.handle(DomId(from), &msg);
                prop_assert_eq!((reply.req_id, reply.tx_id), (9, tx_id));
                prop_assert!(reply.msg_type == msg_type
                    || reply.msg_type == XsdSockmsgType::Error as u32);
                prop_assert!(reply.payload.len() <= XENSTORE_PAYLOAD_MAX);
                while xs.next_event(DomId(from)).is_some() {}
            }
        }
    }
}
