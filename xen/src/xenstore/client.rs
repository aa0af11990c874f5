//! The client: [`XenStore`] sends requests over an [`XsTransport`], matches each reply to its
//! request, queues the watch events that arrive in between, and retries transactions.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::xs_wire::{XsdError, XsdSockmsgType};
use crate::abi::DomId;

use super::{Decoder, Message, Perm, Reply, Request, TxId, WatchEvent, XsError};

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
