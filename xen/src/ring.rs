//! Xen shared rings (`public/io/ring.h` semantics), front and back, over a page or the pages
//! of a multi-page ring ([`RingMemory`]).
//!
//! Indices are free-running `u32`s; a slot is `index & (size - 1)`. Entries are copied out of
//! the page once (`RING_COPY_REQUEST`) and handed to the caller as owned values; the caller
//! validates the copy, never the shared memory. Our own producer index is kept privately and
//! only published, so the other side scribbling on it changes nothing for us. A producer that
//! claims more outstanding entries than the ring holds, or moves its index backwards, is
//! reported as [`RingError::Overrun`]: the caller disconnects it.

use core::marker::PhantomData;
use core::sync::atomic::{fence, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::abi::ring::*;
use crate::abi::PAGE_SIZE;
use crate::page::RingMemory;

/// Entries of a one-page ring whose entries are `entry_size` bytes: `(4096 - 64) / entry_size`
/// rounded down to a power of two (`__CONST_RING_SIZE`).
pub const fn ring_size(entry_size: usize) -> u32 {
    ring_size_in(PAGE_SIZE, entry_size)
}

/// Entries of a ring of `bytes` bytes (a multi-page ring's pages together) whose entries are
/// `entry_size` bytes: `(bytes - 64) / entry_size` rounded down to a power of two
/// (`__RING_SIZE` over the whole area, as blkif's multi-page rings have it).
pub const fn ring_size_in(bytes: usize, entry_size: usize) -> u32 {
    let n = (bytes - SRING_ENTRIES) / entry_size;
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// A plain-old-data ring entry.
pub trait RingEntry: FromBytes + IntoBytes + Immutable + KnownLayout + Copy {}
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout + Copy> RingEntry for T {}

/// What can go wrong on a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The other side's producer index is impossible: more outstanding entries than the ring
    /// holds, or an index that moved backwards. The peer is misbehaving.
    Overrun {
        /// The producer index it published.
        prod: u32,
        /// Our consumer index.
        cons: u32,
    },
    /// No free slot: the ring is full (front), or every consumed request is answered (back).
    Full,
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RingError::Overrun { prod, cons } => {
                write!(f, "reason=ring_overrun prod={prod} cons={cons}")
            }
            RingError::Full => write!(f, "reason=ring_full"),
        }
    }
}

struct Geometry<Req, Rsp> {
    size: u32,
    entry_size: usize,
    _entries: PhantomData<fn() -> (Req, Rsp)>,
}

impl<Req: RingEntry, Rsp: RingEntry> Geometry<Req, Rsp> {
    fn new(bytes: usize) -> Self {
        let entry_size = core::mem::size_of::<Req>().max(core::mem::size_of::<Rsp>());
        Geometry {
            size: ring_size_in(bytes, entry_size),
            entry_size,
            _entries: PhantomData,
        }
    }

    fn slot(&self, index: u32) -> usize {
        SRING_ENTRIES + (index & (self.size - 1)) as usize * self.entry_size
    }
}

/// `(new - event) < (new - old)`: whether the consumer asked to be woken for an index in
/// `(old, new]`.
fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// How many entries the peer has produced past our consumer index, refusing impossible
/// producer indices. `limit_base` is the oldest index the peer may not run `size` past.
fn available(prod: u32, cons: u32, limit_base: u32, size: u32) -> Result<u32, RingError> {
    let outstanding = prod.wrapping_sub(limit_base);
    let avail = prod.wrapping_sub(cons);
    if outstanding > size || avail > outstanding {
        return Err(RingError::Overrun { prod, cons });
    }
    Ok(avail)
}

/// The backend's end: consumes requests, produces responses (`BACK_RING_*`).
pub struct BackRing<P, Req, Rsp> {
    page: P,
    geo: Geometry<Req, Rsp>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    rsp_prod_published: u32,
}

impl<P: RingMemory, Req: RingEntry, Rsp: RingEntry> BackRing<P, Req, Rsp> {
    /// Attaches to a ring the frontend has just initialised (`BACK_RING_INIT`): touches
    /// nothing in the page.
    pub fn new(page: P) -> Self {
        BackRing {
            geo: Geometry::new(page.len()),
            page,
            req_cons: 0,
            rsp_prod_pvt: 0,
            rsp_prod_published: 0,
        }
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.geo.size
    }

    /// The shared page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Requests consumed but not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Requests the frontend has produced that we have not consumed.
    pub fn unconsumed_requests(&self) -> Result<u32, RingError> {
        let prod = self.page.load_word(SRING_REQ_PROD);
        // rmb: read the index before the entries it covers.
        fence(Ordering::Acquire);
        available(prod, self.req_cons, self.rsp_prod_pvt, self.geo.size)
    }

    /// Copies the next request out of the ring, if there is one.
    pub fn next_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let mut req = Req::new_zeroed();
        self.page
            .read_bytes(self.geo.slot(self.req_cons), req.as_mut_bytes());
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Queues a response in the next slot; visible to the frontend after
    /// [`push_responses_and_check_notify`](Self::push_responses_and_check_notify).
    /// Refused when every consumed request already has its response.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if self.outstanding() == 0 {
            return Err(RingError::Full);
        }
        self.page
            .write_bytes(self.geo.slot(self.rsp_prod_pvt), rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes queued responses; returns whether the frontend must be notified.
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.rsp_prod_published, self.rsp_prod_pvt);
        // wmb: the entries before the index that publishes them.
        fence(Ordering::Release);
        self.page.store_word(SRING_RSP_PROD, new);
        self.rsp_prod_published = new;
        // mb: publish the index before reading the frontend's wake-up threshold.
        fence(Ordering::SeqCst);
        need_notify(old, new, self.page.load_word(SRING_RSP_EVENT))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: true if requests are waiting; otherwise asks to be
    /// notified of the next one and checks once more, closing the race with the frontend.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.page
            .store_word(SRING_REQ_EVENT, self.req_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}

/// The frontend's end: produces requests, consumes responses (`FRONT_RING_*`).
pub struct FrontRing<P, Req, Rsp> {
    page: P,
    geo: Geometry<Req, Rsp>,
    req_prod_pvt: u32,
    req_prod_published: u32,
    rsp_cons: u32,
}

impl<P: RingMemory, Req: RingEntry, Rsp: RingEntry> FrontRing<P, Req, Rsp> {
    /// Initialises the shared header (`SHARED_RING_INIT` + `FRONT_RING_INIT`): producer
    /// indices 0, event thresholds 1, private and padding bytes zeroed.
    pub fn init(page: P) -> Self {
        page.write_bytes(0, &[0u8; SRING_ENTRIES]);
        page.store_word(SRING_REQ_EVENT, 1);
        page.store_word(SRING_RSP_EVENT, 1);
        FrontRing {
            geo: Geometry::new(page.len()),
            page,
            req_prod_pvt: 0,
            req_prod_published: 0,
            rsp_cons: 0,
        }
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.geo.size
    }

    /// The shared page.
    pub fn page(&self) -> &P {
        &self.page
    }

    /// Slots free for new requests.
    pub fn free_requests(&self) -> u32 {
        self.geo.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Writes a request into the next free slot; visible after
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify).
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full);
        }
        self.page
            .write_bytes(self.geo.slot(self.req_prod_pvt), req.as_bytes());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes queued requests; returns whether the backend must be notified.
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let (old, new) = (self.req_prod_published, self.req_prod_pvt);
        fence(Ordering::Release);
        self.page.store_word(SRING_REQ_PROD, new);
        self.req_prod_published = new;
        fence(Ordering::SeqCst);
        need_notify(old, new, self.page.load_word(SRING_REQ_EVENT))
    }

    /// Responses the backend has produced that we have not consumed; a backend that answers
    /// more than was asked is an overrun.
    pub fn unconsumed_responses(&self) -> Result<u32, RingError> {
        let prod = self.page.load_word(SRING_RSP_PROD);
        fence(Ordering::Acquire);
        let avail = available(prod, self.rsp_cons, self.rsp_cons, self.geo.size)?;
        if avail > self.req_prod_published.wrapping_sub(self.rsp_cons) {
            return Err(RingError::Overrun {
                prod,
                cons: self.rsp_cons,
            });
        }
        Ok(avail)
    }

    /// Copies the next response out of the ring, if there is one.
    pub fn next_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let mut rsp = Rsp::new_zeroed();
        self.page
            .read_bytes(self.geo.slot(self.rsp_cons), rsp.as_mut_bytes());
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.page
            .store_word(SRING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::usbif::*;
    use crate::page::LocalPage;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    type Back = BackRing<LocalPage, UsbifConnRequest, UsbifConnResponse>;
    type Front = FrontRing<LocalPage, UsbifConnRequest, UsbifConnResponse>;

    fn pair() -> (Front, Back) {
        let page = LocalPage::new();
        (Front::init(page.clone()), Back::new(page))
    }

    /// A pair whose indices all start at `start`, as after 2^32 - n entries of traffic.
    fn pair_at(start: u32) -> (Front, Back) {
        let (mut f, mut b) = pair();
        f.req_prod_pvt = start;
        f.req_prod_published = start;
        f.rsp_cons = start;
        b.req_cons = start;
        b.rsp_prod_pvt = start;
        b.rsp_prod_published = start;
        for (off, v) in [(SRING_REQ_PROD, start), (SRING_RSP_PROD, start)] {
            f.page.store_word(off, v);
        }
        for off in [SRING_REQ_EVENT, SRING_RSP_EVENT] {
            f.page.store_word(off, start.wrapping_add(1));
        }
        (f, b)
    }

    fn req(id: u16) -> UsbifConnRequest {
        UsbifConnRequest { id }
    }

    fn rsp(id: u16) -> UsbifConnResponse {
        UsbifConnResponse {
            id,
            portnum: 1,
            speed: USBIF_SPEED_HIGH,
        }
    }

    #[test]
    fn sizes_follow_ring_h() {
        assert_eq!(ring_size(148), 16);
        assert_eq!(ring_size(4), 512);
        assert_eq!(ring_size(16), 128);
        assert_eq!(ring_size(4096), 0);
        let (f, _) = pair();
        assert_eq!(f.size(), 512);
        assert_eq!(f.page.load_word(SRING_REQ_EVENT), 1);
    }

    #[test]
    fn a_ring_over_several_pages_carries_entries_that_cross_a_page_boundary() {
        use crate::page::PageSpan;
        // URB entries (148 bytes here) do not divide a page: some straddle two.
        let span = PageSpan::new((0..4).map(|_| LocalPage::new()).collect());
        let mut f: FrontRing<_, UsbifUrbRequest, UsbifUrbResponse> = FrontRing::init(span.clone());
        let mut b: BackRing<_, UsbifUrbRequest, UsbifUrbResponse> = BackRing::new(span.clone());
        let entry = core::mem::size_of::<UsbifUrbRequest>();
        assert_eq!(f.size(), ring_size_in(4 * PAGE_SIZE, entry));
        assert_eq!(f.size(), 64, "four pages of {entry}-byte entries");
        assert_eq!(ring_size_in(PAGE_SIZE, entry), ring_size(entry));
        for round in 0..3u16 {
            for i in 0..64u16 {
                let mut r = UsbifUrbRequest::new_zeroed();
                r.id = round * 64 + i;
                r.buffer_length = 0x1234 ^ i;
                r.u = [i as u8; 8];
                f.push_request(&r).unwrap();
            }
            assert_eq!(
                f.push_request(&UsbifUrbRequest::new_zeroed()),
                Err(RingError::Full)
            );
            f.push_requests_and_check_notify();
            for i in 0..64u16 {
                let r = b.next_request().unwrap().unwrap();
                assert_eq!(
                    (r.id, r.buffer_length, r.u),
                    (round * 64 + i, 0x1234 ^ i, [i as u8; 8])
                );
                let rsp = UsbifUrbResponse {
                    id: r.id,
                    start_frame: 0,
                    status: 0,
                    actual_length: i32::from(i),
                    error_count: 0,
                };
                b.push_response(&rsp).unwrap();
            }
            b.push_responses_and_check_notify();
            for i in 0..64u16 {
                let rsp = f.next_response().unwrap().unwrap();
                assert_eq!((rsp.id, rsp.actual_length), (round * 64 + i, i32::from(i)));
            }
        }
    }

    #[test]
    fn indices_wrap_past_2_pow_32() {
        let (mut f, mut b) = pair_at(u32::MAX - 5);
        for round in 0..3u16 {
            for i in 0..10 {
                f.push_request(&req(round * 10 + i)).unwrap();
            }
            f.push_requests_and_check_notify();
            for i in 0..10 {
                let r = b.next_request().unwrap().unwrap();
                assert_eq!(r.id, round * 10 + i);
                b.push_response(&rsp(r.id)).unwrap();
            }
            assert_eq!(b.next_request(), Ok(None));
            b.push_responses_and_check_notify();
            for i in 0..10 {
                assert_eq!(f.next_response().unwrap().unwrap().id, round * 10 + i);
            }
        }
        assert!(b.req_cons < 100, "the index wrapped: {}", b.req_cons);
        assert_eq!(f.free_requests(), 512);
    }

    #[test]
    fn notify_only_when_the_consumer_asked() {
        let (mut f, mut b) = pair();
        f.push_request(&req(1)).unwrap();
        // The backend's req_event is 1: the first request wakes it.
        assert!(f.push_requests_and_check_notify());
        f.push_request(&req(2)).unwrap();
        // Nobody re-armed: no notification for the second.
        assert!(!f.push_requests_and_check_notify());
        assert_eq!(b.next_request().unwrap().unwrap().id, 1);
        assert_eq!(b.next_request().unwrap().unwrap().id, 2);
        // Drained: final check re-arms for request 3.
        assert_eq!(b.final_check_for_requests(), Ok(false));
        f.push_request(&req(3)).unwrap();
        assert!(f.push_requests_and_check_notify());

        b.push_response(&rsp(1)).unwrap();
        assert!(b.push_responses_and_check_notify(), "rsp_event starts at 1");
        b.push_response(&rsp(2)).unwrap();
        assert!(!b.push_responses_and_check_notify());
        // Pushing nothing never notifies.
        assert!(!b.push_responses_and_check_notify());
    }

    #[test]
    fn final_check_sees_a_request_that_raced_the_rearm() {
        let (mut f, mut b) = pair();
        f.push_request(&req(1)).unwrap();
        f.push_requests_and_check_notify();
        assert_eq!(b.final_check_for_requests(), Ok(true));
    }

    #[test]
    fn a_producer_claiming_too_much_is_detected() {
        let (f, mut b) = pair();
        // The frontend claims 513 requests on a 512-entry ring.
        f.page.store_word(SRING_REQ_PROD, 513);
        assert_eq!(
            b.next_request(),
            Err(RingError::Overrun { prod: 513, cons: 0 })
        );
        assert_eq!(
            b.final_check_for_requests(),
            Err(RingError::Overrun { prod: 513, cons: 0 })
        );
    }

    #[test]
    fn requests_beyond_unanswered_ones_are_an_overrun() {
        let (mut f, mut b) = pair();
        for i in 0..512 {
            f.push_request(&req(i)).unwrap();
        }
        f.push_requests_and_check_notify();
        for _ in 0..512 {
            b.next_request().unwrap().unwrap();
        }
        // All 512 consumed, none answered: one more claimed request cannot fit.
        f.page.store_word(SRING_REQ_PROD, 513);
        assert!(matches!(b.next_request(), Err(RingError::Overrun { .. })));
        // A producer index moved backwards is refused too.
        f.page.store_word(SRING_REQ_PROD, 100);
        assert!(matches!(b.next_request(), Err(RingError::Overrun { .. })));
    }

    #[test]
    fn front_refuses_when_full_and_back_refuses_unasked_responses() {
        let (mut f, mut b) = pair();
        for i in 0..512 {
            f.push_request(&req(i)).unwrap();
        }
        assert_eq!(f.push_request(&req(0)), Err(RingError::Full));
        assert_eq!(b.push_response(&rsp(0)), Err(RingError::Full));
    }

    #[test]
    fn a_backend_answering_more_than_asked_is_detected() {
        let (mut f, _b) = pair();
        f.push_request(&req(1)).unwrap();
        f.push_requests_and_check_notify();
        f.page.store_word(SRING_RSP_PROD, 2);
        assert!(matches!(
            f.next_response(),
            Err(RingError::Overrun { prod: 2, cons: 0 })
        ));
    }

    #[test]
    fn our_published_index_ignores_peer_scribbles() {
        let (mut f, mut b) = pair();
        f.push_request(&req(1)).unwrap();
        f.push_requests_and_check_notify();
        b.next_request().unwrap();
        b.push_response(&rsp(1)).unwrap();
        b.push_responses_and_check_notify();
        // The frontend overwrites rsp_prod; our next publish is still computed from ours.
        f.page.store_word(SRING_RSP_PROD, 9999);
        f.page.store_word(SRING_RSP_EVENT, 2);
        assert_eq!(b.outstanding(), 0);
        assert_eq!(b.push_response(&rsp(2)), Err(RingError::Full));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Produce(u8),
        Consume(u8),
        Respond(u8),
        Collect(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..40).prop_map(Op::Produce),
            (0u8..40).prop_map(Op::Consume),
            (0u8..40).prop_map(Op::Respond),
            (0u8..40).prop_map(Op::Collect),
        ]
    }

    proptest! {
        /// Any interleaving of both ends, starting anywhere in the index space, delivers every
        /// request and response once, in order, and never reports an error.
        #[test]
        fn any_interleaving_is_fifo(start in any::<u32>(), ops in prop::collection::vec(op(), 1..200)) {
            let (mut f, mut b) = pair_at(start);
            let (mut sent, mut got, mut answered, mut collected) = (0u16, 0u16, 0u16, 0u16);
            for o in ops {
                match o {
                    Op::Produce(n) => {
                        for _ in 0..n {
                            if f.push_request(&req(sent)).is_err() { break; }
                            sent += 1;
                        }
                        f.push_requests_and_check_notify();
                    }
                    Op::Consume(n) => {
                        for _ in 0..n {
                            match b.next_request().unwrap() {
                                Some(r) => { prop_assert_eq!(r.id, got); got += 1; }
                                None => break,
                            }
                        }
                    }
                    Op::Respond(n) => {
                        for _ in 0..n {
                            if b.push_response(&rsp(answered)).is_err() { break; }
                            answered += 1;
                        }
                        b.push_responses_and_check_notify();
                    }
                    Op::Collect(n) => {
                        for _ in 0..n {
                            match f.next_response().unwrap() {
                                Some(r) => { prop_assert_eq!(r.id, collected); collected += 1; }
                                None => break,
                            }
                        }
                    }
                }
                prop_assert!(got <= sent && answered <= got && collected <= answered);
                prop_assert!(sent - collected <= 512);
            }
        }

        /// Whatever a hostile frontend writes into the header, the backend either returns
        /// requests it can answer or reports an overrun; it never hands out more than fit.
        #[test]
        fn hostile_producer_index_never_overfills(prods in prop::collection::vec(any::<u32>(), 1..20)) {
            let page = LocalPage::new();
            let mut b = Back::new(page.clone());
            for prod in prods {
                page.store_word(SRING_REQ_PROD, prod);
                while let Ok(Some(_)) = b.next_request() {}
                prop_assert!(b.outstanding() <= 512);
            }
        }
    }
}
