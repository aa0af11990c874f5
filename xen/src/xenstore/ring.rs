//! The shared ring page (`struct xenstore_domain_interface`): two byte streams, requests
//! and replies, between a domain and xenstored.

use core::sync::atomic::{fence, Ordering};

use crate::abi::xs_wire::{XenstoreDomainInterface, XENSTORE_RING_SIZE};
use crate::page::SharedPage;

use super::XsError;

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
pub(super) const XS_RSP_PROD: usize = core::mem::offset_of!(XenstoreDomainInterface, rsp_prod);

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
