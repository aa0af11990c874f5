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

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::xs_wire::*;
use crate::abi::DomId;
use crate::page::SharedPage;

/// Bytes of a message header.
pub const HEADER_SIZE: usize = core::mem::size_of::<XsdSockmsg>();

/// A transaction id; [`TxId::NONE`] outside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub u32);

impl TxId {
    /// Not in a transaction.
    pub const NONE: TxId = TxId(0);
}

/// Why a xenstore operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// xenstored answered with an error (`ENOENT`, `EACCES`, `EAGAIN`, …).
    Xs(XsdError),
    /// The payload or a path is over the protocol's limit; nothing was sent.
    TooBig,
    /// A path or token is empty, or holds a NUL byte; nothing was sent.
    BadArgument,
    /// The peer broke the protocol (bad framing, wrong reply, unknown error name, bad ring
    /// index). The connection cannot be trusted after this.
    Protocol(&'static str),
    /// The transport failed or closed.
    Transport(&'static str),
}

impl core::fmt::Display for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XsError::Xs(e) => write!(f, "{}", e.name()),
            XsError::TooBig => write!(f, "too_big"),
            XsError::BadArgument => write!(f, "bad_argument"),
            XsError::Protocol(why) => write!(f, "protocol_error({why})"),
            XsError::Transport(why) => write!(f, "transport_error({why})"),
        }
    }
}

impl From<XsdError> for XsError {
    fn from(e: XsdError) -> Self {
        XsError::Xs(e)
    }
}

/// Access a domain has to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// Whether this access lets a domain read.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this access lets a domain write.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }

    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
}

/// One permission entry. In a node's list the first entry names the owner and the access of
/// every domain not listed after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: DomId,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// Parses `r5`, `n0`, …
    pub fn parse(s: &str) -> Option<Perm> {
        let mut chars = s.chars();
        let access = match chars.next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return None,
        };
        let digits = chars.as_str();
        let id: u16 = crate::abi::parse_decimal(digits)?.try_into().ok()?;
        Some(Perm {
            domid: DomId(id),
            access,
        })
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 10];
        let text = format_u32(u32::from(self.domid.0), &mut buf);
        out.push(self.access.letter() as u8);
        out.extend_from_slice(text);
    }
}

fn format_u32(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

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

fn parse_perm_list<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Result<Vec<Perm>, XsError> {
    let mut perms = Vec::new();
    for f in fields.filter(|f| !f.is_empty()) {
        let s = core::str::from_utf8(f).map_err(|_| XsError::Xs(XsdError::Einval))?;
        perms.push(Perm::parse(s).ok_or(XsError::Xs(XsdError::Einval))?);
    }
    if perms.is_empty() {
        return Err(XsError::Xs(XsdError::Einval));
    }
    Ok(perms)
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

/// A watch firing: the path that changed and the token given to [`XenStore::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (or the watched path itself, on registration).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

impl WatchEvent {
    /// Parses an `XS_WATCH_EVENT` payload: `path\0token\0`.
    pub fn parse(payload: &[u8]) -> Result<WatchEvent, XsError> {
        let bad = XsError::Protocol("malformed watch event");
        let mut f = payload.split(|b| *b == 0);
        let path = f
            .next()
            .and_then(|p| core::str::from_utf8(p).ok())
            .ok_or(bad.clone())?;
        let token = f
            .next()
            .and_then(|t| core::str::from_utf8(t).ok())
            .ok_or(bad.clone())?;
        if path.is_empty() {
            return Err(bad);
        }
        Ok(WatchEvent {
            path: path.into(),
            token: token.into(),
        })
    }

    /// Encodes the payload (the server's side).
    pub fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.path.len() + self.token.len() + 2);
        p.extend_from_slice(self.path.as_bytes());
        p.push(0);
        p.extend_from_slice(self.token.as_bytes());
        p.push(0);
        p
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

/// How a [`XenStore`] client moves bytes.
pub trait XsTransport {
    /// Sends one whole encoded message.
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError>;
    /// Copies bytes that have arrived into `buf`; `Ok(0)` when none are waiting. Never blocks.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError>;
    /// Waits until more bytes may have arrived (an event channel, a socket poll). A transport
    /// that knows none will ever come returns an error instead of waiting forever.
    fn wait(&mut self) -> Result<(), XsError>;
}

/// A xenstore client over any transport.
pub struct XenStore<T> {
    transport: T,
    decoder: Decoder,
    next_req_id: u32,
    events: VecDeque<WatchEvent>,
}

impl<T: XsTransport> XenStore<T> {
    /// A client on `transport`.
    pub fn new(transport: T) -> Self {
        XenStore {
            transport,
            decoder: Decoder::new(),
            next_req_id: 1,
            events: VecDeque::new(),
        }
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends `req` and waits for its reply; watch events that arrive first are queued.
    pub fn request(&mut self, tx: TxId, req: Request<'_>) -> Result<Reply, XsError> {
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        let msg = req.encode(req_id, tx)?;
        self.transport.send(&msg)?;
        loop {
            match self.next_incoming()? {
                Some(m) if m.msg_type == XsdSockmsgType::WatchEvent as u32 => {
                    self.events.push_back(WatchEvent::parse(&m.payload)?);
                }
                Some(m) if m.req_id != req_id => {
                    return Err(XsError::Protocol("reply to another request"));
                }
                Some(m) => return Reply::parse(req.msg_type(), &m),
                None => self.transport.wait()?,
            }
        }
    }

    fn next_incoming(&mut self) -> Result<Option<Message>, XsError> {
        loop {
            if let Some(m) = self.decoder.next_message()? {
                return Ok(Some(m));
            }
            let mut buf = [0u8; 512];
            let n = self.transport.recv(&mut buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Reads whatever has arrived without waiting, queueing watch events; a reply nobody
    /// asked for is a protocol error.
    pub fn poll(&mut self) -> Result<(), XsError> {
        while let Some(m) = self.next_incoming()? {
            if m.msg_type != XsdSockmsgType::WatchEvent as u32 {
                return Err(XsError::Protocol("unsolicited reply"));
            }
            self.events.push_back(WatchEvent::parse(&m.payload)?);
        }
        Ok(())
    }

    /// The oldest queued watch event.
    pub fn next_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// Reads a node's value.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XsError> {
        match self.request(tx, Request::Read(path))? {
            Reply::Data(d) => Ok(d),
            _ => Err(XsError::Protocol("read reply")),
        }
    }

    /// Reads a node's value as UTF-8 text.
    pub fn read_string(&mut self, tx: TxId, path: &str) -> Result<String, XsError> {
        String::from_utf8(self.read(tx, path)?).map_err(|_| XsError::Xs(XsdError::Einval))
    }

    /// Writes a node, creating it and missing parents.
    pub fn write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.expect_ok(tx, Request::Write(path, value))
    }

    /// Creates a node (and missing parents) with an empty value, if absent.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.expect_ok(tx, Request::Mkdir(path))
    }

    /// Removes a node and everything below it.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<(), XsError> {
        self.expect_ok(tx, Request::Rm(path))
    }

    /// Lists a node's children.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        match self.request(tx, Request::Directory(path))? {
            Reply::Directory(d) => Ok(d),
            _ => Err(XsError::Protocol("directory reply")),
        }
    }

    /// Reads a node's permissions.
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>, XsError> {
        match self.request(tx, Request::GetPerms(path))? {
            Reply::Perms(p) => Ok(p),
            _ => Err(XsError::Protocol("get_perms reply")),
        }
    }

    /// Sets a node's permissions (owner first).
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.expect_ok(tx, Request::SetPerms(path, perms))
    }

    /// Watches `path` and everything below it. xenstored fires the watch once at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.expect_ok(TxId::NONE, Request::Watch(path, token))
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.expect_ok(TxId::NONE, Request::Unwatch(path, token))
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        match self.request(TxId::NONE, Request::TransactionStart)? {
            Reply::Transaction(t) => Ok(t),
            _ => Err(XsError::Protocol("transaction reply")),
        }
    }

    /// Ends a transaction; a conflicting commit fails with `EAGAIN` (retry from the start).
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        self.expect_ok(tx, Request::TransactionEnd(commit))
    }

    /// Runs `body` in a transaction, retrying on `EAGAIN` up to `attempts` times.
    pub fn transaction<R>(
        &mut self,
        attempts: u32,
        mut body: impl FnMut(&mut Self, TxId) -> Result<R, XsError>,
    ) -> Result<R, XsError> {
        let mut last = XsError::Xs(XsdError::Eagain);
        for _ in 0..attempts {
            let tx = self.transaction_start()?;
            let value = match body(self, tx) {
                Ok(v) => v,
                Err(e) => {
                    // Abort, keeping the body's error (an abort failing adds nothing).
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            };
            match self.transaction_end(tx, true) {
                Ok(()) => return Ok(value),
                Err(XsError::Xs(XsdError::Eagain)) => last = XsError::Xs(XsdError::Eagain),
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// A domain's home path (`/local/domain/<id>`).
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        match self.request(TxId::NONE, Request::GetDomainPath(domid))? {
            Reply::DomainPath(p) => Ok(p),
            _ => Err(XsError::Protocol("domain path reply")),
        }
    }

    fn expect_ok(&mut self, tx: TxId, req: Request<'_>) -> Result<(), XsError> {
        match self.request(tx, req)? {
            Reply::Ok => Ok(()),
            _ => Err(XsError::Protocol("expected OK")),
        }
    }
}

/// Which end of the xenstore ring page we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsRingSide {
    /// A guest: writes requests, reads replies.
    Client,
    /// xenstored (or `xen::sim`): reads requests, writes replies.
    Server,
}

const XS_REQ: usize = core::mem::offset_of!(XenstoreDomainInterface, req);
const XS_RSP: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp);
const XS_REQ_CONS: usize = core::mem::offset_of!(XenstoreDomainInterface, req_cons);
const XS_REQ_PROD: usize = core::mem::offset_of!(XenstoreDomainInterface, req_prod);
const XS_RSP_CONS: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_cons);
const XS_RSP_PROD: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_prod);

/// The byte streams of the xenstore ring page (`struct xenstore_domain_interface`).
///
/// Moves bytes only; the caller notifies the peer over the store event channel after
/// writing or consuming.
pub struct XsRing<P> {
    page: P,
    side: XsRingSide,
}

impl<P: SharedPage> XsRing<P> {
    /// One end of the ring in `page`.
    pub fn new(page: P, side: XsRingSide) -> Self {
        XsRing { page, side }
    }

    /// (data offset, consumer index offset, producer index offset) for our two directions.
    fn out_dir(&self) -> (usize, usize, usize) {
        match self.side {
            XsRingSide::Client => (XS_REQ, XS_REQ_CONS, XS_REQ_PROD),
            XsRingSide::Server => (XS_RSP, XS_RSP_CONS, XS_RSP_PROD),
        }
    }

    fn in_dir(&self) -> (usize, usize, usize) {
        match self.side {
            XsRingSide::Client => (XS_RSP, XS_RSP_CONS, XS_RSP_PROD),
            XsRingSide::Server => (XS_REQ, XS_REQ_CONS, XS_REQ_PROD),
        }
    }

    fn indices(&self, cons_off: usize, prod_off: usize) -> Result<(u32, u32), XsError> {
        let cons = self.page.load_u32(cons_off);
        let prod = self.page.load_u32(prod_off);
        fence(Ordering::SeqCst);
        if prod.wrapping_sub(cons) as usize > XENSTORE_RING_SIZE {
            return Err(XsError::Protocol("xenstore ring index"));
        }
        Ok((cons, prod))
    }

    /// Bytes waiting to be read.
    pub fn readable(&self) -> Result<usize, XsError> {
        let (_, cons_off, prod_off) = self.in_dir();
        let (cons, prod) = self.indices(cons_off, prod_off)?;
        Ok(prod.wrapping_sub(cons) as usize)
    }

    /// Copies as much of `data` as fits; returns the bytes written.
    pub fn write(&self, data: &[u8]) -> Result<usize, XsError> {
        let (base, cons_off, prod_off) = self.out_dir();
        let (cons, prod) = self.indices(cons_off, prod_off)?;
        let space = XENSTORE_RING_SIZE - prod.wrapping_sub(cons) as usize;
        let n = space.min(data.len());
        copy_wrapped(n, prod, |ring_off, i, len| {
            self.page.write(base + ring_off, &data[i..i + len])
        });
        // Data before the index that publishes it.
        fence(Ordering::Release);
        self.page.store_u32(prod_off, prod.wrapping_add(n as u32));
        Ok(n)
    }

    /// Copies waiting bytes into `buf`; returns how many.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, XsError> {
        let (base, cons_off, prod_off) = self.in_dir();
        let (cons, prod) = self.indices(cons_off, prod_off)?;
        let n = (prod.wrapping_sub(cons) as usize).min(buf.len());
        fence(Ordering::Acquire);
        copy_wrapped(n, cons, |ring_off, i, len| {
            self.page.read(base + ring_off, &mut buf[i..i + len])
        });
        // Finish reading before giving the space back.
        fence(Ordering::SeqCst);
        self.page.store_u32(cons_off, cons.wrapping_add(n as u32));
        Ok(n)
    }
}

/// Splits `n` bytes starting at ring index `start` into at most two contiguous pieces.
fn copy_wrapped(n: usize, start: u32, mut piece: impl FnMut(usize, usize, usize)) {
    let mut done = 0;
    while done < n {
        let off = (start as usize + done) % XENSTORE_RING_SIZE;
        let len = (n - done).min(XENSTORE_RING_SIZE - off);
        piece(off, done, len);
        done += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::LocalPage;
    use alloc::vec;
    use proptest::prelude::*;

    fn reply(req_id: u32, t: XsdSockmsgType, payload: &[u8]) -> Message {
        Message {
            msg_type: t as u32,
            req_id,
            tx_id: 0,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn requests_encode_as_xenstored_expects() {
        let m = Request::Write("/a/b", b"xyz").encode(7, TxId(3)).unwrap();
        assert_eq!(&m[..16], &[11, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0]);
        assert_eq!(&m[16..], b"/a/b\0xyz");
        let m = Request::Watch("/p", "tok").encode(1, TxId::NONE).unwrap();
        assert_eq!(&m[16..], b"/p\0tok\0");
        let perms = [
            Perm {
                domid: DomId(5),
                access: Access::None,
            },
            Perm {
                domid: DomId(0),
                access: Access::Read,
            },
        ];
        let m = Request::SetPerms("/p", &perms)
            .encode(1, TxId::NONE)
            .unwrap();
        assert_eq!(&m[16..], b"/p\0n5\0r0\0");
        assert_eq!(
            &Request::TransactionEnd(false).encode(1, TxId(9)).unwrap()[16..],
            b"F\0"
        );
        assert_eq!(
            &Request::TransactionStart.encode(1, TxId::NONE).unwrap()[16..],
            b"\0"
        );
        assert_eq!(
            &Request::GetDomainPath(DomId(12))
                .encode(1, TxId::NONE)
                .unwrap()[16..],
            b"12\0"
        );
    }

    #[test]
    fn requests_refuse_oversized_and_malformed_arguments() {
        let long = "x".repeat(XENSTORE_ABS_PATH_MAX + 1);
        assert_eq!(
            Request::Read(&long).encode(1, TxId::NONE),
            Err(XsError::TooBig)
        );
        let big = vec![b'v'; XENSTORE_PAYLOAD_MAX];
        assert_eq!(
            Request::Write("/a", &big).encode(1, TxId::NONE),
            Err(XsError::TooBig)
        );
        assert_eq!(
            Request::Read("").encode(1, TxId::NONE),
            Err(XsError::BadArgument)
        );
        assert_eq!(
            Request::Read("a\0b").encode(1, TxId::NONE),
            Err(XsError::BadArgument)
        );
        assert_eq!(
            Request::SetPerms("/a", &[]).encode(1, TxId::NONE),
            Err(XsError::BadArgument)
        );
    }

    #[test]
    fn every_error_reply_becomes_its_typed_error() {
        for e in XsdError::ALL {
            let mut name = e.name().as_bytes().to_vec();
            name.push(0);
            let m = reply(1, XsdSockmsgType::Error, &name);
            assert_eq!(Reply::parse(XsdSockmsgType::Read, &m), Err(XsError::Xs(e)));
        }
        let m = reply(1, XsdSockmsgType::Error, b"EWHATEVER\0");
        assert!(matches!(
            Reply::parse(XsdSockmsgType::Read, &m),
            Err(XsError::Protocol(_))
        ));
    }

    #[test]
    fn replies_parse_by_request_type() {
        use XsdSockmsgType as T;
        let p = |t, payload: &[u8]| Reply::parse(t, &reply(1, t, payload));
        assert_eq!(p(T::Read, b"v\0x"), Ok(Reply::Data(b"v\0x".to_vec())));
        assert_eq!(
            p(T::Directory, b"a\0bb\0"),
            Ok(Reply::Directory(vec!["a".into(), "bb".into()]))
        );
        assert_eq!(p(T::Directory, b""), Ok(Reply::Directory(vec![])));
        assert_eq!(
            p(T::GetPerms, b"n3\0r0\0"),
            Ok(Reply::Perms(vec![
                Perm {
                    domid: DomId(3),
                    access: Access::None
                },
                Perm {
                    domid: DomId(0),
                    access: Access::Read
                },
            ]))
        );
        assert_eq!(
            p(T::TransactionStart, b"42\0"),
            Ok(Reply::Transaction(TxId(42)))
        );
        assert!(matches!(
            p(T::TransactionStart, b"0\0"),
            Err(XsError::Protocol(_))
        ));
        assert_eq!(p(T::Write, b"OK\0"), Ok(Reply::Ok));
        assert!(matches!(p(T::Write, b"KO\0"), Err(XsError::Protocol(_))));
        let wrong = reply(1, T::Read, b"x");
        assert!(matches!(
            Reply::parse(T::Write, &wrong),
            Err(XsError::Protocol(_))
        ));
    }

    #[test]
    fn request_decode_inverts_encode() {
        let perms = [Perm {
            domid: DomId(1),
            access: Access::Both,
        }];
        let reqs = [
            Request::Read("/a"),
            Request::Write("/a", b"1\x002"),
            Request::Mkdir("/a"),
            Request::Rm("/a"),
            Request::Directory("/a"),
            Request::GetPerms("/a"),
            Request::Watch("/a", "t"),
            Request::Unwatch("/a", "t"),
            Request::TransactionStart,
            Request::TransactionEnd(true),
            Request::GetDomainPath(DomId(4)),
        ];
        for r in reqs {
            let m = r.encode(1, TxId::NONE).unwrap();
            let mut d = Decoder::new();
            d.push(&m);
            let msg = d.next_message().unwrap().unwrap();
            let t = XsdSockmsgType::from_raw(msg.msg_type).unwrap();
            assert_eq!(Request::decode(t, &msg.payload), Ok(r));
        }
        let m = Request::SetPerms("/a", &perms)
            .encode(1, TxId::NONE)
            .unwrap();
        assert_eq!(
            Request::decode_set_perms(&m[16..]),
            Ok(("/a", perms.to_vec()))
        );
    }

    #[test]
    fn decoder_waits_for_whole_messages_and_refuses_huge_ones() {
        let m = Request::Read("/x").encode(9, TxId::NONE).unwrap();
        let mut d = Decoder::new();
        d.push(&m[..10]);
        assert_eq!(d.next_message(), Ok(None));
        d.push(&m[10..]);
        d.push(&m[..3]);
        assert_eq!(d.next_message().unwrap().unwrap().req_id, 9);
        assert_eq!(d.buffered(), 3);
        let mut d = Decoder::new();
        let header = XsdSockmsg {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 4097,
        };
        d.push(header.as_bytes());
        assert!(matches!(d.next_message(), Err(XsError::Protocol(_))));
    }

    #[test]
    fn xs_ring_carries_bytes_both_ways_across_the_wrap() {
        let page = LocalPage::new();
        let client = XsRing::new(page.clone(), XsRingSide::Client);
        let server = XsRing::new(page.clone(), XsRingSide::Server);
        let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut got = Vec::new();
        let mut sent = 0;
        while got.len() < data.len() {
            sent += client.write(&data[sent..]).unwrap();
            let mut buf = [0u8; 700];
            let n = server.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(server.write(b"reply").unwrap(), 5);
        assert_eq!(client.readable(), Ok(5));
        let mut buf = [0u8; 16];
        assert_eq!(client.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"reply");
    }

    #[test]
    fn xs_ring_refuses_an_impossible_index() {
        let page = LocalPage::new();
        let client = XsRing::new(page.clone(), XsRingSide::Client);
        page.store_u32(XS_RSP_PROD, 2000);
        assert!(matches!(
            client.read(&mut [0u8; 8]),
            Err(XsError::Protocol(_))
        ));
    }

    /// A transport that answers from a script and records what was sent.
    struct Scripted {
        sent: Vec<Vec<u8>>,
        incoming: Vec<u8>,
    }

    impl XsTransport for Scripted {
        fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
            self.sent.push(msg.to_vec());
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
            // Dribble a few bytes at a time, as a ring may.
            let n = buf.len().min(self.incoming.len()).min(7);
            buf[..n].copy_from_slice(&self.incoming[..n]);
            self.incoming.drain(..n);
            Ok(n)
        }
        fn wait(&mut self) -> Result<(), XsError> {
            Err(XsError::Transport("no more replies scripted"))
        }
    }

    #[test]
    fn client_queues_watch_events_that_arrive_before_the_reply() {
        let event = WatchEvent {
            path: "/w/x".into(),
            token: "t".into(),
        };
        let mut incoming = reply(0, XsdSockmsgType::WatchEvent, &event.payload()).encode();
        incoming.extend(reply(1, XsdSockmsgType::Read, b"val").encode());
        let mut xs = XenStore::new(Scripted {
            sent: vec![],
            incoming,
        });
        assert_eq!(xs.read(TxId::NONE, "/r").unwrap(), b"val");
        assert_eq!(xs.next_event(), Some(event));
        assert_eq!(xs.next_event(), None);
        // Nothing more will come: the client reports it rather than hang.
        assert_eq!(
            xs.read(TxId::NONE, "/r"),
            Err(XsError::Transport("no more replies scripted"))
        );
    }

    #[test]
    fn client_refuses_a_reply_to_another_request() {
        let incoming = reply(5, XsdSockmsgType::Read, b"val").encode();
        let mut xs = XenStore::new(Scripted {
            sent: vec![],
            incoming,
        });
        assert!(matches!(
            xs.read(TxId::NONE, "/r"),
            Err(XsError::Protocol(_))
        ));
    }

    proptest! {
        /// Any byte stream, cut anywhere: the decoder never panics, never returns a payload
        /// over the limit, and reparsing any message as any reply never panics.
        #[test]
        fn decoder_and_reply_parser_survive_any_bytes(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..40)
        ) {
            let mut d = Decoder::new();
            for c in chunks {
                d.push(&c);
                while let Ok(Some(m)) = d.next_message() {
                    prop_assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
                    for t in XsdSockmsgType::ALL {
                        let _ = Reply::parse(t, &m);
                        let _ = Request::decode(t, &m.payload);
                    }
                    let _ = WatchEvent::parse(&m.payload);
                }
            }
        }

        /// Encode then decode returns the same message, for any path, value and ids.
        #[test]
        fn write_round_trips(path in "/[a-z0-9/_-]{1,100}", value in prop::collection::vec(any::<u8>(), 0..300),
                             req_id in any::<u32>(), tx in any::<u32>()) {
            let m = Request::Write(&path, &value).encode(req_id, TxId(tx)).unwrap();
            let mut d = Decoder::new();
            d.push(&m);
            let msg = d.next_message().unwrap().unwrap();
            prop_assert_eq!((msg.req_id, msg.tx_id), (req_id, tx));
            prop_assert_eq!(Request::decode(XsdSockmsgType::Write, &msg.payload), Ok(Request::Write(&path, &value)));
        }
    }
}
