//! The operations: a [`Request`] encoded into (or decoded from) a message, and the typed
//! [`Reply`] that answers it.

use alloc::string::String;
use alloc::vec::Vec;

use zerocopy::IntoBytes;

use crate::abi::xs_wire::{
    XsdError, XsdSockmsg, XsdSockmsgType, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX,
};
use crate::abi::DomId;

use super::perms::{format_u32, parse_perm_list};
use super::{Message, Perm, TxId, XsError, HEADER_SIZE};

/// A request, borrowed from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `XS_READ`.
    Read(&'a str),
    /// `XS_WRITE`: the value is raw bytes, not NUL-terminated.
    Write(&'a str, &'a [u8]),
    /// `XS_MKDIR`.
    Mkdir(&'a str),
    /// `XS_RM`.
    Rm(&'a str),
    /// `XS_DIRECTORY`.
    Directory(&'a str),
    /// `XS_GET_PERMS`.
    GetPerms(&'a str),
    /// `XS_SET_PERMS`.
    SetPerms(&'a str, &'a [Perm]),
    /// `XS_WATCH`: path and token.
    Watch(&'a str, &'a str),
    /// `XS_UNWATCH`: path and token.
    Unwatch(&'a str, &'a str),
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END`: commit (`T`) or abort (`F`).
    TransactionEnd(bool),
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath(DomId),
}

fn check_str(s: &str) -> Result<(), XsError> {
    if s.is_empty() || s.as_bytes().contains(&0) {
        return Err(XsError::BadArgument);
    }
    if s.len() > XENSTORE_ABS_PATH_MAX {
        return Err(XsError::TooBig);
    }
    Ok(())
}

impl<'a> Request<'a> {
    /// The message type.
    pub fn msg_type(&self) -> XsdSockmsgType {
        use XsdSockmsgType as T;
        match self {
            Request::Read(_) => T::Read,
            Request::Write(..) => T::Write,
            Request::Mkdir(_) => T::Mkdir,
            Request::Rm(_) => T::Rm,
            Request::Directory(_) => T::Directory,
            Request::GetPerms(_) => T::GetPerms,
            Request::SetPerms(..) => T::SetPerms,
            Request::Watch(..) => T::Watch,
            Request::Unwatch(..) => T::Unwatch,
            Request::TransactionStart => T::TransactionStart,
            Request::TransactionEnd(_) => T::TransactionEnd,
            Request::GetDomainPath(_) => T::GetDomainPath,
        }
    }

    fn payload(&self) -> Result<Vec<u8>, XsError> {
        let mut p = Vec::new();
        let zstr = |p: &mut Vec<u8>, s: &str| -> Result<(), XsError> {
            check_str(s)?;
            p.extend_from_slice(s.as_bytes());
            p.push(0);
            Ok(())
        };
        match *self {
            Request::Read(path)
            | Request::Mkdir(path)
            | Request::Rm(path)
            | Request::Directory(path)
            | Request::GetPerms(path) => zstr(&mut p, path)?,
            Request::Write(path, value) => {
                zstr(&mut p, path)?;
                p.extend_from_slice(value);
            }
            Request::SetPerms(path, perms) => {
                zstr(&mut p, path)?;
                if perms.is_empty() {
                    return Err(XsError::BadArgument);
                }
                for perm in perms {
                    perm.write_to(&mut p);
                    p.push(0);
                }
            }
            Request::Watch(path, token) | Request::Unwatch(path, token) => {
                zstr(&mut p, path)?;
                zstr(&mut p, token)?;
            }
            Request::TransactionStart => p.push(0),
            Request::TransactionEnd(commit) => {
                p.extend_from_slice(if commit { b"T\0" } else { b"F\0" });
            }
            Request::GetDomainPath(domid) => {
                let mut buf = [0u8; 10];
                p.extend_from_slice(format_u32(domid.0.into(), &mut buf));
                p.push(0);
            }
        }
        if p.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::TooBig);
        }
        Ok(p)
    }

    /// Encodes the whole message: header and payload.
    pub fn encode(&self, req_id: u32, tx: TxId) -> Result<Vec<u8>, XsError> {
        let payload = self.payload()?;
        let header = XsdSockmsg {
            msg_type: self.msg_type() as u32,
            req_id,
            tx_id: tx.0,
            len: payload.len() as u32,
        };
        let mut msg = Vec::with_capacity(HEADER_SIZE + payload.len());
        msg.extend_from_slice(header.as_bytes());
        msg.extend_from_slice(&payload);
        Ok(msg)
    }

    /// Decodes a request (the server's side: `xen::sim`, tests). Strings must be UTF-8.
    pub fn decode(msg_type: XsdSockmsgType, payload: &'a [u8]) -> Result<Request<'a>, XsError> {
        use XsdSockmsgType as T;
        let bad = XsError::Xs(XsdError::Einval);
        let mut fields = payload.split(|b| *b == 0);
        let mut next_str = || -> Result<&'a str, XsError> {
            let f = fields.next().ok_or(bad.clone())?;
            let s = core::str::from_utf8(f).map_err(|_| bad.clone())?;
            if s.is_empty() {
                return Err(bad.clone());
            }
            Ok(s)
        };
        Ok(match msg_type {
            T::Read => Request::Read(next_str()?),
            T::Mkdir => Request::Mkdir(next_str()?),
            T::Rm => Request::Rm(next_str()?),
            T::Directory => Request::Directory(next_str()?),
            T::GetPerms => Request::GetPerms(next_str()?),
            T::Write => {
                let nul = payload.iter().position(|b| *b == 0).ok_or(bad.clone())?;
                let path = core::str::from_utf8(&payload[..nul]).map_err(|_| bad.clone())?;
                if path.is_empty() {
                    return Err(bad);
                }
                Request::Write(path, &payload[nul + 1..])
            }
            T::Watch => Request::Watch(next_str()?, next_str()?),
            T::Unwatch => Request::Unwatch(next_str()?, next_str()?),
            T::TransactionStart => Request::TransactionStart,
            T::TransactionEnd => match payload {
                b"T\0" | b"T" => Request::TransactionEnd(true),
                b"F\0" | b"F" => Request::TransactionEnd(false),
                _ => return Err(bad),
            },
            T::GetDomainPath => {
                let id = DomId::parse(next_str()?).ok_or(bad.clone())?;
                Request::GetDomainPath(id)
            }
            T::SetPerms => {
                // SET_PERMS carries a variable list; the caller parses it with `perms_of`.
                return Err(XsError::Xs(XsdError::Enosys));
            }
            _ => return Err(XsError::Xs(XsdError::Enosys)),
        })
    }

    /// Decodes a `SET_PERMS` payload into its path and permission list.
    pub fn decode_set_perms(payload: &[u8]) -> Result<(&str, Vec<Perm>), XsError> {
        let bad = XsError::Xs(XsdError::Einval);
        let mut fields = payload.split(|b| *b == 0);
        let path = fields
            .next()
            .and_then(|f| core::str::from_utf8(f).ok())
            .ok_or(bad.clone())?;
        if path.is_empty() {
            return Err(bad);
        }
        let perms = parse_perm_list(fields)?;
        Ok((path, perms))
    }
}

/// A successful reply, typed by the request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK`: write, mkdir, rm, set_perms, watch, unwatch, transaction_end.
    Ok,
    /// A node's value.
    Data(Vec<u8>),
    /// A node's children.
    Directory(Vec<String>),
    /// A node's permissions, owner first.
    Perms(Vec<Perm>),
    /// A new transaction's id.
    Transaction(TxId),
    /// A domain's home path.
    DomainPath(String),
}

impl Reply {
    /// Parses a reply to a request of type `req`. An `XS_ERROR` reply becomes
    /// [`XsError::Xs`]; a reply of another type than asked, or a malformed one, is a protocol
    /// error.
    pub fn parse(req: XsdSockmsgType, msg: &Message) -> Result<Reply, XsError> {
        use XsdSockmsgType as T;
        if msg.msg_type == T::Error as u32 {
            let name = msg.payload.strip_suffix(&[0]).unwrap_or(&msg.payload);
            let name = core::str::from_utf8(name).map_err(|_| XsError::Protocol("error name"))?;
            return Err(XsError::Xs(
                XsdError::from_name(name).ok_or(XsError::Protocol("unknown error name"))?,
            ));
        }
        if msg.msg_type != req as u32 {
            return Err(XsError::Protocol("reply type differs from request"));
        }
        let text = |p: &[u8]| -> Result<String, XsError> {
            let p = p.strip_suffix(&[0]).unwrap_or(p);
            core::str::from_utf8(p)
                .map(String::from)
                .map_err(|_| XsError::Protocol("not UTF-8"))
        };
        Ok(match req {
            T::Read => Reply::Data(msg.payload.clone()),
            T::Directory => {
                let body = msg.payload.strip_suffix(&[0]).unwrap_or(&msg.payload);
                let mut names = Vec::new();
                if !body.is_empty() {
                    for n in body.split(|b| *b == 0) {
                        names.push(text(n)?);
                    }
                }
                Reply::Directory(names)
            }
            T::GetPerms => Reply::Perms(
                parse_perm_list(msg.payload.split(|b| *b == 0))
                    .map_err(|_| XsError::Protocol("malformed permissions"))?,
            ),
            T::TransactionStart => {
                let id = crate::abi::parse_decimal(&text(&msg.payload)?)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| *v != 0)
                    .ok_or(XsError::Protocol("transaction id"))?;
                Reply::Transaction(TxId(id))
            }
            T::GetDomainPath => Reply::DomainPath(text(&msg.payload)?),
            _ => {
                if text(&msg.payload)? != "OK" {
                    return Err(XsError::Protocol("expected OK"));
                }
                Reply::Ok
            }
        })
    }
}
