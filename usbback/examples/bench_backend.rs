//! `cargo xtask bench backend`: the backend's CPU time per URB, for 1, 2, 4 and 8
//! frontends at once, against `xen::sim` and a zero-latency host (every bulk transfer is done
//! the moment it is queued, moving no bytes: what is measured is the backend's own work —
//! copying and checking requests, mapping and unmapping grants, queueing and answering).
//!
//! Each frontend keeps 16 bulk IN requests of 4 KiB in flight (Linux xen-hcd's limit), each
//! on its own granted page, and resubmits every answered one. Only the time spent inside the
//! backend's calls is counted, and so are the heap allocations made inside them.
//!
//! The time (and the heap allocations) inside the simulated hypervisor (grant copies, notifications, the pending-event
//! scan) is taken apart from the backend's own: `xen::sim` copies a page word by word
//! through atomics and keeps its tables in maps behind a lock, several times what Xen's
//! `memcpy` and a hypercall cost on hardware, and nothing the backend could change. What
//! the backend decides is how many hypercalls it makes; they are counted. Each count runs
//! twice: frontends as Linux xen-hcd is, and frontends that promise `feature-persistent`
//! (their pages are mapped once and kept; the CPU copies). Prints one line per run:
//! `bench=backend frontends=N persistent=no|yes urbs=… ns_per_urb=… urbs_per_s=… allocs=… allocs_per_urb=…
//! hypercalls_per_urb=… copy_ops_per_urb=… sim_hypervisor_ns_per_urb=…`, where
//! `ns_per_urb` is the backend's own time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::raw_frontend::{
    assign, buffer, frontend_dir, send, toolstack_add, urb, with_buffer, Buffer, RawFrontend,
};
use usb::{Direction, Speed, TransferType};
use usbback::host::{
    ClassSet, Completion, DeviceInfo, HostEvent, InterfaceClasses, Transfer, TransferError,
    UsbHost, Vet,
};
use usbback::Backend;
use xen::abi::grant_table::GntStatus;
use xen::abi::usbif::*;
use xen::abi::{DomId, EvtchnPort};
use xen::hypervisor::{
    BatchTooLarge, CopyOp, Errno, EventChannels, GrantCopier, GrantMapper, GrantMapping,
    LocalFrame, LocalFrames, MapRequest, MapResults,
};
use xen::page::LocalPage;
use xen::pvusb::FEATURE_PERSISTENT_KEY;
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenstore::TxId;

/// The system allocator, counting allocations (and reallocations, which may move).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// URBs each frontend has answered before its time is taken.
const URBS_PER_FRONTEND: u64 = 40_000;
const IN_FLIGHT: u16 = 16;
const LENGTH: u16 = 4096;

/// Devices that finish every transfer at once.
#[derive(Default)]
struct Instant0 {
    devices: Vec<DeviceInfo>,
    events: Vec<HostEvent>,
}

impl Instant0 {
    /// A standard request the host carried out, answered on the next poll.
    fn answer(&mut self, token: u64) {
        self.events.push(HostEvent::Completed(Completion {
            token,
            result: Ok(0),
            start_frame: 0,
            iso: Vec::new(),
        }));
    }
}

impl UsbHost<LocalPage> for Instant0 {
    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices.clone()
    }
    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        events.append(&mut self.events);
    }
    fn submit(&mut self, _: u32, t: Transfer<LocalPage>) -> Result<(), TransferError> {
        self.events.push(HostEvent::Completed(Completion {
            token: t.token,
            result: Ok(t.length()),
            start_frame: 0,
            iso: Vec::new(),
        }));
        Ok(())
    }
    fn cancel(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn set_configuration(
        &mut self,
        _: u32,
        _: u8,
        token: u64,
        _: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        self.answer(token);
        Ok(())
    }
    fn set_interface(
        &mut self,
        _: u32,
        _: u8,
        _: u8,
        token: u64,
        _: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        self.answer(token);
        Ok(())
    }
    fn clear_halt(&mut self, _: u32, _: u8, token: u64) -> Result<(), TransferError> {
        self.answer(token);
        Ok(())
    }
    fn reset(&mut self, _: u32) -> Result<(), TransferError> {
        Ok(())
    }
}

/// The backend's hypervisor: `xen::sim`'s, with the time spent in it and the hypercalls
/// made through it counted.
struct Timed {
    dom: Domain,
    spent: Duration,
    /// Heap allocations `xen::sim` made (its tables), not the backend's.
    allocations: u64,
    hypercalls: u64,
    copy_ops: u64,
}

impl Timed {
    fn call<R>(&mut self, hypercalls: u64, f: impl FnOnce(&mut Domain) -> R) -> R {
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        let started = Instant::now();
        let r = f(&mut self.dom);
        self.spent += started.elapsed();
        self.allocations += ALLOCATIONS.load(Ordering::Relaxed) - allocations;
        self.hypercalls += hypercalls;
        r
    }
}

impl GrantMapper for Timed {
    type Page = LocalPage;
    fn map(&mut self, requests: &[MapRequest]) -> Result<MapResults<LocalPage>, BatchTooLarge> {
        self.call(1, |d| d.map(requests))
    }
    fn unmap<I>(&mut self, mappings: I) -> Result<(), GntStatus>
    where
        I: IntoIterator<Item = GrantMapping<LocalPage>>,
    {
        self.call(1, |d| d.unmap(mappings))
    }
    fn mapped(&self) -> usize {
        self.dom.mapped()
    }
}

impl GrantCopier for Timed {
    fn copy(&mut self, ops: &[CopyOp], statuses: &mut Vec<GntStatus>) {
        self.copy_ops += ops.len() as u64;
        self.call(1, |d| d.copy(ops, statuses))
    }
}

impl LocalFrames for Timed {
    fn alloc_frame(&mut self) -> Result<LocalFrame<LocalPage>, Errno> {
        self.call(0, |d| d.alloc_frame())
    }
}

impl EventChannels for Timed {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, Errno> {
        self.call(1, |d| d.alloc_unbound(remote))
    }
    fn bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, Errno> {
        self.call(1, |d| d.bind_interdomain(remote, remote_port))
    }
    fn send(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        self.call(1, |d| d.send(port))
    }
    fn unmask(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        self.call(1, |d| d.unmask(port))
    }
    fn close(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        self.call(1, |d| d.close(port))
    }
    /// Reading the shared info page's bitmaps, not a hypercall.
    fn take_pending(&mut self, f: &mut dyn FnMut(EvtchnPort)) {
        self.call(0, |d| d.take_pending(f))
    }
}

struct Frontend {
    dom: Domain,
    front: RawFrontend,
    requests: Vec<UsbifUrbRequest>,
    /// The requests' buffers, one page each.
    _buffers: Vec<Buffer>,
    answered: u64,
}

/// Frontend `n`, with its own device; `persistent`: it promises `feature-persistent`.
fn frontend(xen: &Xen, be: &Domain, host: &mut Instant0, n: u32, persistent: bool) -> Frontend {
    let dom = xen.create_domain();
    toolstack_add(xen, be.domid(), dom.domid(), 1);
    let busid = format!("1-{n}");
    let info = DeviceInfo {
        id: n,
        busid: busid.clone(),
        speed: Speed::High,
        vendor_id: 0x1234,
        product_id: 0x5678,
        class: 0,
        interface_classes: InterfaceClasses::Checked(ClassSet::of(8)),
        product: None,
        serial: None,
        is_hub: false,
    };
    host.devices.push(info.clone());
    host.events.push(HostEvent::Attached(info));
    assign(xen, be.domid(), dom.domid(), 1, &busid);
    if persistent {
        let key = format!("{}/{FEATURE_PERSISTENT_KEY}", frontend_dir(dom.domid()));
        dom.xenstore().write(TxId::NONE, &key, b"1").unwrap();
    }
    let front = RawFrontend::connect(&dom, be.domid(), None);
    let buffers: Vec<Buffer> = (0..IN_FLIGHT)
        .map(|_| buffer(&dom, be.domid(), 0, &[0; LENGTH as usize], false))
        .collect();
    let requests = buffers
        .iter()
        .zip(0..)
        .map(|(b, id)| with_buffer(urb(id, 1, 0, 1, Direction::In, TransferType::Bulk), b))
        .collect();
    Frontend {
        dom,
        front,
        requests,
        _buffers: buffers,
        answered: 0,
    }
}

/// The main loop's buffers, kept from turn to turn as the driver domain's are.
#[derive(Default)]
struct Turn {
    ports: Vec<EvtchnPort>,
    events: Vec<HostEvent>,
}

/// What the backend's calls cost in one round.
#[derive(Default, Clone, Copy)]
struct Cost {
    /// Time inside the backend, the simulated hypervisor's excluded.
    own: Duration,
    /// Time inside the simulated hypervisor.
    hypervisor: Duration,
    allocations: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.own += o.own;
        self.hypervisor += o.hypervisor;
        self.allocations += o.allocations;
    }
}

/// Runs the backend once over everything pending.
fn backend_round(
    be: &mut Backend<Timed, SimXsTransport>,
    host: &mut Instant0,
    turn: &mut Turn,
) -> Cost {
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - be.hypervisor().allocations;
    let in_hypervisor = be.hypervisor().spent;
    let started = Instant::now();
    turn.ports.clear();
    be.hypervisor().take_pending(&mut |p| turn.ports.push(p));
    for &p in &turn.ports {
        be.handle_event(p, host);
    }
    be.serve_busy(host);
    host.poll(&mut turn.events);
    be.host_events(host, &mut turn.events);
    let elapsed = started.elapsed();
    let hypervisor = be.hypervisor().spent - in_hypervisor;
    Cost {
        own: elapsed.saturating_sub(hypervisor),
        hypervisor,
        allocations: ALLOCATIONS.load(Ordering::Relaxed)
            - be.hypervisor().allocations
            - allocations,
    }
}

/// One run's totals.
struct Totals {
    urbs: u64,
    cost: Cost,
    hypercalls: u64,
    copy_ops: u64,
}

fn run(frontends: u32, persistent: bool) -> Totals {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let mut host = Instant0::default();
    let timed = Timed {
        dom: be_dom.clone(),
        spent: Duration::ZERO,
        allocations: 0,
        hypercalls: 0,
        copy_ops: 0,
    };
    let mut be = Backend::new(timed, be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut fronts: Vec<Frontend> = (1..=frontends)
        .map(|n| frontend(&xen, &be_dom, &mut host, n, persistent))
        .collect();
    let mut turn = Turn::default();
    // Connect everything (not timed).
    for _ in 0..4 {
        be.poll_xenstore(&mut host).unwrap();
        backend_round(&mut be, &mut host, &mut turn);
    }
    for f in &mut fronts {
        send(&f.dom, &mut f.front, &f.requests);
    }
    let (hypercalls, copy_ops) = (be.hypervisor().hypercalls, be.hypervisor().copy_ops);
    let mut cost = Cost::default();
    let goal = URBS_PER_FRONTEND;
    while fronts.iter().any(|f| f.answered < goal) {
        cost += backend_round(&mut be, &mut host, &mut turn);
        for f in &mut fronts {
            let mut again = Vec::new();
            while let Some(rsp) = f.front.urb.next_response().unwrap() {
                assert_eq!(rsp.status, USBIF_STATUS_OK, "URB {} failed", rsp.id);
                f.answered += 1;
                if f.answered + u64::from(IN_FLIGHT) <= goal {
                    again.push(f.requests[usize::from(rsp.id)]);
                }
            }
            send(&f.dom, &mut f.front, &again);
            let _ = f.front.urb.final_check_for_responses();
        }
    }
    Totals {
        urbs: fronts.iter().map(|f| f.answered).sum(),
        cost,
        hypercalls: be.hypervisor().hypercalls - hypercalls,
        copy_ops: be.hypervisor().copy_ops - copy_ops,
    }
}

fn main() {
    for (frontends, persistent) in [1, 2, 4, 8]
        .into_iter()
        .flat_map(|n| [(n, false), (n, true)])
    {
        let t = run(frontends, persistent);
        let persistent = if persistent { "yes" } else { "no" };
        let per_urb = |x: f64| x / t.urbs as f64;
        let ns = per_urb(t.cost.own.as_nanos() as f64);
        println!(
            "bench=backend frontends={frontends} persistent={persistent} urbs={} bytes_per_urb={LENGTH} ns_per_urb={ns:.0} urbs_per_s={:.0} allocs={} allocs_per_urb={:.2} hypercalls_per_urb={:.3} copy_ops_per_urb={:.2} sim_hypervisor_ns_per_urb={:.0}",
            t.urbs,
            1e9 / ns,
            t.cost.allocations,
            per_urb(t.cost.allocations as f64),
            per_urb(t.hypercalls as f64),
            per_urb(t.copy_ops as f64),
            per_urb(t.cost.hypervisor.as_nanos() as f64),
        );
    }
}
