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

mod path;
mod perms;
mod transaction;
mod tree;
mod watch;
mod wire;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use crate::abi::DomId;
use crate::xenstore::{Access, Message, Perm};

use path::home_path;
use transaction::Transaction;
use tree::{Change, Node, Nodes};
use watch::{Fire, Watch};

/// The special node fired when a domain is introduced.
const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special node fired when a domain is released.
const RELEASE_DOMAIN: &str = "@releaseDomain";

/// The nodes libxl creates in a new domain's home, owned by the domain.
const DOMAIN_DIRS: [&str; 6] = ["device", "data", "error", "drivers", "control", "attr"];

/// What the store keeps per domain.
#[derive(Default)]
struct Conn {
    watches: Vec<Watch>,
    events: VecDeque<Message>,
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
}

#[cfg(test)]
mod tests;
