//! The wire side: one request [`Message`] in, its reply out, and the watch event messages
//! each domain drains.

use alloc::format;
use alloc::vec::Vec;

use crate::abi::xs_wire::{XsdError, XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use crate::abi::DomId;
use crate::xenstore::{Access, Message, Request, TxId, XsError};

use super::path::{home_path, node_path, perms_path, watch_path};
use super::perms::format_perm;
use super::transaction::{Accessed, Transaction};
use super::tree::{children, Change};
use super::Xenstored;

impl Xenstored {
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
}

pub(super) fn ok() -> Vec<u8> {
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
