//! The node tree: its nodes, the changes made to it, and the [`View`] one domain has of it,
//! live or inside a transaction, through which every read and change goes.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Bound;

use crate::abi::xs_wire::XsdError;
use crate::abi::DomId;
use crate::xenstore::{Access, Perm, TxId};

use super::path::parent;
use super::perms::access;
use super::transaction::Accessed;
use super::watch::Fire;
use super::Xenstored;

/// One node of the store.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) value: Vec<u8>,
    /// Never empty: the first entry is the owner and the access of unlisted domains.
    pub(super) perms: Vec<Perm>,
    /// Changes whenever the value, the permissions or the set of children changes; a
    /// transaction commits only if every node it touched kept its generation.
    pub(super) generation: u64,
}

/// The whole tree, keyed by absolute path (and the special `@` nodes). A flat ordered map
/// keeps a subtree contiguous (`/a/` sorts every `/a/...` together) and makes the snapshot a
/// transaction takes one clone.
pub(super) type Nodes = BTreeMap<String, Node>;

/// A change to the tree, kept by a transaction to replay at commit.
#[derive(Clone, Debug)]
pub(super) enum Change {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    SetPerms(String, Vec<Perm>),
}

impl Xenstored {
    /// A view of the live tree for `from`.
    pub(super) fn live(&mut self, from: DomId) -> View<'_> {
        View {
            nodes: &mut self.nodes,
            generation: &mut self.generation,
            accessed: None,
            from,
        }
    }

    /// A view of the live tree, or of transaction `tx` if it is one of `from`'s.
    pub(super) fn view(&mut self, from: DomId, tx: TxId) -> Result<View<'_>, XsdError> {
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
}

/// The tree as one domain sees it, live or inside a transaction.
pub(super) struct View<'a> {
    pub(super) nodes: &'a mut Nodes,
    generation: &'a mut u64,
    /// Inside a transaction: where to record what it touched.
    accessed: Option<&'a mut Accessed>,
    from: DomId,
}

impl View<'_> {
    pub(super) fn apply(&mut self, change: &Change) -> Result<Vec<Fire>, XsdError> {
        match change {
            Change::Write(path, value) => self.write(path, value),
            Change::Mkdir(path) => self.mkdir(path),
            Change::Rm(path) => self.rm(path),
            Change::SetPerms(path, perms) => self.set_perms(path, perms),
        }
    }

    /// Records a node the transaction depends on, as it was when first touched.
    fn record_access(&mut self, path: &str) {
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
    pub(super) fn lookup(
        &mut self,
        path: &str,
        want: fn(Access) -> bool,
    ) -> Result<Node, XsdError> {
        self.record_access(path);
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
            self.record_access(a);
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
            self.record_access(a);
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
            self.record_access(&p);
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
            self.record_access(p);
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

/// The names of the children of `path`, sorted.
pub(super) fn children<'n>(nodes: &'n Nodes, path: &str) -> Vec<&'n str> {
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
