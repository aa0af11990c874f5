//! `cargo xtask bench backend`: the backend's CPU time per URB, for 1, 2, 4 and 8
//! frontends at once, against `xen::sim` and a zero-latency host (every bulk transfer is done
//! the moment it is queued, moving no bytes: what is measured is the backend's own work —
//! copying and checking requests, mapping and unmapping grants, queueing and answering).
//!
//! Each frontend keeps 16 bulk IN requests of 4 KiB in flight (Linux xen-hcd's limit), each
//! on its own granted page, and resubmits every answered one. Only the time spent inside the
//! backend's calls is counted, and so are the heap allocations made inside them. Prints one
//! line per frontend count:
//! `bench=backend frontends=N urbs=… ns_per_urb=… urbs_per_s=… allocs_per_urb=…`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use usbback::host::{
    ClassSet, Completion, DeviceInfo, HostEvent, InterfaceClasses, Speed, Transfer, TransferError,
    UsbHost, Vet,
};
use usbback::Backend;
use xen::abi::usbif::*;
use xen::abi::{EvtchnPort, GrantRef};
use xen::hypervisor::EventChannels;
use xen::page::LocalPage;
use xen::pvusb::{ControllerNodes, Direction, Pipe, TransferType, ASSIGN_DIR};
use xen::ring::FrontRing;
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenbus::{self, XenbusState};
use xen::xenstore::TxId;
use zerocopy::FromZeros;

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

struct Frontend {
    dom: Domain,
    urb: FrontRing<LocalPage, UsbifUrbRequest, UsbifUrbResponse>,
    port: EvtchnPort,
    requests: Vec<UsbifUrbRequest>,
    answered: u64,
}

fn frontend(xen: &Xen, be: &Domain, host: &mut Instant0, n: u32) -> Frontend {
    let dom = xen.create_domain();
    let nodes = ControllerNodes {
        frontend: dom.domid(),
        backend: be.domid(),
        devid: 0,
        usb_ver: 2,
        ports: 1,
    };
    xen.dom0()
        .xenstore()
        .transaction(3, |xs, tx| nodes.write(xs, tx))
        .unwrap();
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
    let bdir = format!(
        "/local/domain/{}/backend/vusb/{}/0/{ASSIGN_DIR}/1",
        be.domid(),
        dom.domid()
    );
    xen.dom0()
        .xenstore()
        .write(TxId::NONE, &bdir, busid.as_bytes())
        .unwrap();

    let (urb_gfn, urb_page) = dom.alloc_page();
    let (conn_gfn, conn_page) = dom.alloc_page();
    let urb_ref = dom.grant_access(be.domid(), urb_gfn, false).unwrap();
    let conn_ref = dom.grant_access(be.domid(), conn_gfn, false).unwrap();
    let port = dom.clone().alloc_unbound(be.domid()).unwrap();
    let urb = FrontRing::init(urb_page);
    let mut conn = FrontRing::<_, UsbifConnRequest, UsbifConnResponse>::init(conn_page);
    for id in 0..512 {
        conn.push_request(&UsbifConnRequest { id }).unwrap();
    }
    conn.push_requests_and_check_notify();
    let fdir = format!("/local/domain/{}/device/vusb/0", dom.domid());
    let mut xs = dom.xenstore();
    for (k, v) in [
        ("urb-ring-ref", urb_ref.to_string()),
        ("conn-ring-ref", conn_ref.to_string()),
        ("event-channel", port.to_string()),
    ] {
        xs.write(TxId::NONE, &format!("{fdir}/{k}"), v.as_bytes())
            .unwrap();
    }
    xenbus::switch_state(&mut xs, &fdir, XenbusState::Connected).unwrap();

    let requests = (0..IN_FLIGHT)
        .map(|id| {
            let (gfn, _) = dom.alloc_page();
            let gref: GrantRef = dom.grant_access(be.domid(), gfn, false).unwrap();
            let mut r = UsbifUrbRequest::new_zeroed();
            r.id = id;
            r.pipe = Pipe {
                port: 1,
                unlink: false,
                direction: Direction::In,
                device: 0,
                endpoint: 1,
                transfer_type: TransferType::Bulk,
            }
            .encode();
            r.nr_buffer_segs = 1;
            r.buffer_length = LENGTH;
            r.seg[0] = UsbifRequestSegment {
                gref,
                offset: 0,
                length: LENGTH,
            };
            r
        })
        .collect();
    Frontend {
        dom,
        urb,
        port,
        requests,
        answered: 0,
    }
}

/// The main loop's buffers, kept from turn to turn as the driver domain's are.
#[derive(Default)]
struct Turn {
    ports: Vec<EvtchnPort>,
    events: Vec<HostEvent>,
}

/// Runs the backend once over everything pending; returns the time it took and the heap
/// allocations made meanwhile.
fn backend_round(
    be: &mut Backend<Domain, SimXsTransport>,
    host: &mut Instant0,
    turn: &mut Turn,
) -> (Duration, u64) {
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
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
    (elapsed, ALLOCATIONS.load(Ordering::Relaxed) - allocations)
}

fn run(frontends: u32) -> (u64, Duration, u64) {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let mut host = Instant0::default();
    let mut be = Backend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid()).unwrap();
    let mut fronts: Vec<Frontend> = (1..=frontends)
        .map(|n| frontend(&xen, &be_dom, &mut host, n))
        .collect();
    let mut turn = Turn::default();
    // Connect everything (not timed).
    for _ in 0..4 {
        be.poll_xenstore(&mut host).unwrap();
        backend_round(&mut be, &mut host, &mut turn);
    }
    for f in &mut fronts {
        for r in &f.requests {
            f.urb.push_request(r).unwrap();
        }
        if f.urb.push_requests_and_check_notify() {
            f.dom.clone().send(f.port).unwrap();
        }
    }
    let (mut busy, mut allocations) = (Duration::ZERO, 0);
    let goal = URBS_PER_FRONTEND;
    while fronts.iter().any(|f| f.answered < goal) {
        let (took, allocated) = backend_round(&mut be, &mut host, &mut turn);
        busy += took;
        allocations += allocated;
        for f in &mut fronts {
            let mut again = Vec::new();
            while let Some(rsp) = f.urb.next_response().unwrap() {
                assert_eq!(rsp.status, USBIF_STATUS_OK, "URB {} failed", rsp.id);
                f.answered += 1;
                if f.answered + u64::from(IN_FLIGHT) <= goal {
                    again.push(f.requests[usize::from(rsp.id)]);
                }
            }
            for r in again {
                f.urb.push_request(&r).unwrap();
            }
            if f.urb.push_requests_and_check_notify() {
                f.dom.clone().send(f.port).unwrap();
            }
            let _ = f.urb.final_check_for_responses();
        }
    }
    let total = fronts.iter().map(|f| f.answered).sum();
    (total, busy, allocations)
}

fn main() {
    for frontends in [1, 2, 4, 8] {
        let (urbs, busy, allocations) = run(frontends);
        let ns = busy.as_nanos() as f64 / urbs as f64;
        println!(
            "bench=backend frontends={frontends} urbs={urbs} bytes_per_urb={LENGTH} ns_per_urb={ns:.0} urbs_per_s={:.0} allocs_per_urb={:.2}",
            1e9 / ns,
            allocations as f64 / urbs as f64
        );
    }
}
