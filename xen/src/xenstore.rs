//! The xenstore client protocol (`docs/misc/xenstore.txt`, `public/io/xs_wire.h`).
//!
//! Three layers, each usable alone:
//! - the codec: [`Request`] encodes to and decodes from a message; [`Decoder`] splits a byte
//!   stream into messages; [`Reply::parse`] turns a reply into a typed value or a typed error.
//!   It is transport-independent, so the dom0 tool can speak it over xenstored's unix socket
//!   and `xen::sim` can serve it.
//! - [`XsRing`]: the byte stream over the shared xenstore ring page.
//! - [`XenStore`]: a client over any [`XsTransport`], matching replies to requests and
//!   queueing watch events that arrive in between.
//!
//! Everything xenstored sends is untrusted input here: lengths are bounded by
//! [`XENSTORE_PAYLOAD_MAX`] and every field is checked before use.
//!
//! [`XENSTORE_PAYLOAD_MAX`]: crate::abi::xs_wire::XENSTORE_PAYLOAD_MAX

mod client;
mod error;
mod message;
mod perms;
mod request;
mod ring;
mod watch;

pub use client::{XenStore, XsTransport};
pub use error::XsError;
pub use message::{Decoder, Message, TxId, HEADER_SIZE};
pub use perms::{Access, Perm};
pub use request::{Reply, Request};
pub use ring::{XsRing, XsRingSide};
pub use watch::WatchEvent;

#[cfg(test)]
mod tests;
