//! Watches: registering them, and turning each change to the live tree into the watch events
//! queued for the domains that watch it and may read it.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::abi::xs_wire::{XsdError, XsdSockmsgType};
use crate::abi::DomId;
use crate::xenstore::{Message, Perm, WatchEvent};

use super::path::{home_path, is_child, watch_path};
use super::perms::access;
use super::wire::ok;
use super::Xenstored;

/// A change that may fire watches.
pub(super) struct Fire {
    /// The node that changed.
    pub(super) path: String,
    /// Fire only watches on exactly this path (a node removed below the removal's root).
    pub(super) exact: bool,
    /// The permissions the node had at the change (before it, for a removal or a permission
    /// change). A domain that could read the node then, or can when the event is delivered,
    /// hears about it: a transaction that creates a node and then grants access to it, or
    /// writes a node and then removes it, is seen as when done outside a transaction.
    pub(super) then_perms: Option<Vec<Perm>>,
}

/// A registered watch.
pub(super) struct Watch {
    /// The absolute path (or `@` name).
    pub(super) path: String,
    pub(super) token: String,
    /// Registered with a relative path: events are reported relative to the home.
    relative: bool,
}

impl Xenstored {
    pub(super) fn watch(&mut self, from: DomId, p: &str, token: &str) -> Result<Vec<u8>, XsdError> {
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

    /// Queues the events a set of changes to the live tree cause.
    pub(super) fn deliver(&mut self, fires: Vec<Fire>) {
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
