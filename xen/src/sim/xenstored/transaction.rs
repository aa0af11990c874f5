//! Transactions: each works on a snapshot of the tree, logs its changes, and commits them by
//! replaying the log on the live tree if nothing it touched changed meanwhile.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::xs_wire::XsdError;
use crate::abi::DomId;
use crate::xenstore::TxId;

use super::tree::{Change, Nodes};
use super::wire::ok;
use super::Xenstored;

/// For each node a transaction touched: its generation when the transaction started, or
/// `None` if it did not exist.
pub(super) type Accessed = BTreeMap<String, Option<u64>>;

/// An open transaction.
pub(super) struct Transaction {
    pub(super) owner: DomId,
    pub(super) nodes: Nodes,
    pub(super) accessed: Accessed,
    pub(super) log: Vec<Change>,
}

impl Xenstored {
    /// Applies a change live (firing watches) or inside a transaction (logging it for commit).
    pub(super) fn change(
        &mut self,
        from: DomId,
        tx: TxId,
        change: Change,
    ) -> Result<Vec<u8>, XsdError> {
        let fires = self.view(from, tx)?.apply(&change)?;
        if tx == TxId::NONE {
            self.deliver(fires);
        } else if let Some(t) = self.transactions.get_mut(&tx.0) {
            t.log.push(change);
        }
        Ok(ok())
    }

    pub(super) fn new_tx_id(&mut self) -> u32 {
        loop {
            let id = self.next_tx;
            self.next_tx = self.next_tx.wrapping_add(1).max(1);
            if !self.transactions.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn transaction_end(
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
}
