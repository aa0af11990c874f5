//! The wire format: a message is a header (`struct xsd_sockmsg`: type, request id,
//! transaction id, length) and a payload; [`Decoder`] frames a byte stream into messages.

use alloc::vec::Vec;

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::xs_wire::{XsdSockmsg, XENSTORE_PAYLOAD_MAX};

use super::XsError;

/// Bytes of a message header.
pub const HEADER_SIZE: usize = core::mem::size_of::<XsdSockmsg>();

/// A transaction id; [`TxId::NONE`] outside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u32);

impl TxId {
    /// Not in a transaction.
    pub const NONE: TxId = TxId(0);
}

/// One whole message off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message type as sent (may be a value this crate does not know).
    pub msg_type: u32,
    /// The request id it answers (or 0 for a watch event).
    pub req_id: u32,
    /// The transaction id.
    pub tx_id: u32,
    /// The payload, at most [`XENSTORE_PAYLOAD_MAX`] bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// Encodes a message (the server's side).
    pub fn encode(&self) -> Vec<u8> {
        let header = XsdSockmsg {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        };
        let mut out = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Splits a byte stream into messages; refuses a header announcing an oversized payload.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, XsError> {
        let Ok((header, _)) = XsdSockmsg::read_from_prefix(&self.buf) else {
            return Ok(None);
        };
        let len = header.len as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::Protocol("payload over XENSTORE_PAYLOAD_MAX"));
        }
        if self.buf.len() < HEADER_SIZE + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_SIZE..HEADER_SIZE + len].to_vec();
        self.buf.drain(..HEADER_SIZE + len);
        Ok(Some(Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        }))
    }
}
