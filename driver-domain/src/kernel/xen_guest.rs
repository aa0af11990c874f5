//! Xen, seen from an HVM or PVH guest: detection through CPUID, the hypercall page, HVM
//! parameters, `shared_info`, event channels delivered through the callback vector, grant
//! mapping into the reserved window, and the shared pages of the console and xenstore rings.
//! The `xen` crate's traits are implemented here for real; everything above them is safe
//! code that also runs against `xen::sim`.

use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use xen::abi::event_channel::*;
use xen::abi::grant_table::*;
use xen::abi::hvm::*;
use xen::abi::hypercall::*;
use xen::abi::memory::*;
use xen::abi::{DomId, EvtchnPort, GuestPhysAddr, PAGE_SIZE};
use xen::hypervisor::*;
use xen::page::word_copy_plan;
use xen::page::SharedPage;
use xen::xenstore::{XsError, XsRing, XsRingSide, XsTransport};

use super::{cpu, interrupts, memory, time};

static HYPERCALL_PAGE: AtomicU64 = AtomicU64::new(0);
static SHARED_INFO: AtomicU64 = AtomicU64::new(0);

/// What CPUID says about the hypervisor.
#[derive(Clone, Copy, Debug)]
pub struct Detected {
    /// First CPUID leaf of Xen's range.
    pub base: u32,
    /// Major and minor version.
    pub version: (u32, u32),
    /// Our domid, when Xen reports it.
    pub domid: Option<u16>,
}

/// Finds Xen's CPUID leaves ("XenVMMXenVMM" at 0x40000000 or, with Viridian, higher).
pub fn detect() -> Option<Detected> {
    let base = (0x4000_0000u32..0x4001_0000).step_by(0x100).find(|&b| {
        let (max, ebx, ecx, edx) = cpu::cpuid(b, 0);
        [ebx, ecx, edx] == [0x566e_6558, 0x6558_4d4d, 0x4d4d_566e] && max >= b + 2
    })?;
    let (v, ..) = cpu::cpuid(base + 1, 0);
    let (max, ..) = cpu::cpuid(base, 0);
    let domid = (max >= base + 4)
        .then(|| cpu::cpuid(base + 4, 0))
        .filter(|(flags, ..)| flags & (1 << 4) != 0)
        .map(|(_, _, ecx, _)| ecx as u16);
    Some(Detected {
        base,
        version: (v >> 16, v & 0xffff),
        domid,
    })
}

/// Hypercalls made and the TSC ticks they took, all and grant-table ones, the entries
/// those grant-table calls carried, and the event-channel notifications among them:
/// [`take_hypercall_times`].
static HYPERCALLS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Hypercalls since the last call (count, µs), grant-table operations among them (count,
/// µs), their entries (pages mapped, unmapped or copied) and notifications sent
/// (`EVTCHNOP_send`), for `event=cpu`: where a busy driver domain's time goes.
pub fn take_hypercall_times() -> [u64; 6] {
    let hz = super::time::tsc_hz().max(1);
    core::array::from_fn(|i| {
        let v = HYPERCALLS[i].swap(0, Ordering::Relaxed);
        // Ticks to microseconds once a second, not on every hypercall.
        if i == 1 || i == 3 {
            (u128::from(v) * 1_000_000 / u128::from(hz)) as u64
        } else {
            v
        }
    })
}

/// Raw hypercall through the hypercall page (which hides VMCALL vs VMMCALL), timed.
fn hypercall(nr: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let start = super::cpu::rdtsc();
    let ret = hypercall_untimed(nr, a1, a2, a3);
    let ticks = super::cpu::rdtsc().wrapping_sub(start);
    HYPERCALLS[0].fetch_add(1, Ordering::Relaxed);
    HYPERCALLS[1].fetch_add(ticks, Ordering::Relaxed);
    if nr == HYPERVISOR_GRANT_TABLE_OP {
        HYPERCALLS[2].fetch_add(1, Ordering::Relaxed);
        HYPERCALLS[3].fetch_add(ticks, Ordering::Relaxed);
        // The third argument of GNTTABOP_* is the number of entries.
        HYPERCALLS[4].fetch_add(a3, Ordering::Relaxed);
    }
    if nr == HYPERVISOR_EVENT_CHANNEL_OP && a1 == u64::from(EVTCHNOP_SEND) {
        HYPERCALLS[5].fetch_add(1, Ordering::Relaxed);
    }
    ret
}

fn hypercall_untimed(nr: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let entry = HYPERCALL_PAGE.load(Ordering::Relaxed) + u64::from(nr) * 32;
    assert!(
        HYPERCALL_PAGE.load(Ordering::Relaxed) != 0,
        "hypercall before the page is set up"
    );
    let ret: i64;
    // SAFETY: Xen filled the hypercall page (see `init`); stub `nr` is `mov $nr,%eax;
    // vmcall; ret`. Arguments are values or pointers to live, identity-mapped structs of the
    // layout the hypercall expects (checked against Xen's headers by the `xen` crate's tests).
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            lateout("rax") ret,
            clobber_abi("C"),
        )
    }
    ret
}

fn op<T>(nr: u32, cmd: u32, arg: &mut T) -> i64 {
    hypercall(nr, u64::from(cmd), arg as *mut T as u64, 0)
}

fn hvm_param(index: u32) -> Result<u64, Errno> {
    let mut p = XenHvmParam {
        domid: DomId::SELF,
        pad: 0,
        index,
        value: 0,
    };
    match op(HYPERVISOR_HVM_OP, HVMOP_GET_PARAM, &mut p) {
        0 => Ok(p.value),
        e => Err(Errno(-e as i32)),
    }
}

fn set_hvm_param(index: u32, value: u64) -> Result<(), Errno> {
    let mut p = XenHvmParam {
        domid: DomId::SELF,
        pad: 0,
        index,
        value,
    };
    match op(HYPERVISOR_HVM_OP, HVMOP_SET_PARAM, &mut p) {
        0 => Ok(()),
        e => Err(Errno(-e as i32)),
    }
}

/// A page identity-mapped in our address space: a ring Xen or the toolstack set up, or a
/// grant mapped into the window.
#[derive(Clone, Debug)]
pub struct PhysPage {
    addr: u64,
}

impl PhysPage {
    fn at(&self, offset: usize, width: usize) -> u64 {
        assert!(offset + width <= PAGE_SIZE, "access outside the page");
        self.addr + offset as u64
    }
}

impl SharedPage for PhysPage {
    fn load_u32(&self, offset: usize) -> u32 {
        let a = self.at(offset, 4);
        // SAFETY: the page is mapped for as long as this handle is used (Xen's special pages
        // forever; a grant until usbback unmaps it, after dropping every ring on it), the
        // address is 4-aligned, and the other domain's concurrent writes make it atomic data.
        unsafe { (*(a as *const AtomicU32)).load(Ordering::Relaxed) }
    }

    fn store_u32(&self, offset: usize, value: u32) {
        let a = self.at(offset, 4);
        // SAFETY: as in `load_u32`.
        unsafe { (*(a as *const AtomicU32)).store(value, Ordering::Relaxed) }
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        let a = self.at(offset, buf.len());
        // SAFETY: as in `load_u32`, for the range `at` checked is inside the page; `buf` is
        // ours and apart from it.
        unsafe { copy_shared_bytes(buf.as_mut_ptr(), a as *const u8, buf.len()) }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        let a = self.at(offset, data.len());
        // SAFETY: as in `read`.
        unsafe { copy_shared_bytes(a as *mut u8, data.as_ptr(), data.len()) }
    }

    fn copy_bytes_from(&self, offset: usize, src: &Self, src_offset: usize, len: usize) {
        let (to, from) = (self.at(offset, len), src.at(src_offset, len));
        if to.abs_diff(from) < len as u64 {
            // Overlapping ranges of one page: through a buffer, as the trait does by default.
            let mut buf = [0u8; PAGE_SIZE];
            src.read(src_offset, &mut buf[..len]);
            self.write(offset, &buf[..len]);
            return;
        }
        // SAFETY: as in `load_u32`, for both pages; `at` checked both ranges are inside their
        // pages, and they do not overlap (above).
        unsafe { copy_shared_bytes(to as *mut u8, from as *const u8, len) }
    }
}

/// Copies `len` bytes from `src` to `dst` by [`word_copy_plan`], one relaxed atomic access per
/// byte or word: either side may be memory another domain changes meanwhile, and each byte is
/// read once.
///
/// # Safety
///
/// `src..src + len` must be readable and `dst..dst + len` writable for the whole call, and
/// the two must not overlap.
unsafe fn copy_shared_bytes(dst: *mut u8, src: *const u8, len: usize) {
    let (head, words) = word_copy_plan(dst as usize, src as usize, len);
    let bytes = (0..head).chain(head + words * 8..len);
    for i in bytes {
        // SAFETY: i < len, inside both ranges (the caller's contract); byte accesses.
        unsafe {
            let v = (*(src.add(i) as *const AtomicU8)).load(Ordering::Relaxed);
            (*(dst.add(i) as *const AtomicU8)).store(v, Ordering::Relaxed);
        }
    }
    for w in 0..words {
        let i = head + w * 8;
        // SAFETY: inside both ranges; the plan makes both addresses 8-aligned here.
        unsafe {
            let v = (*(src.add(i) as *const AtomicU64)).load(Ordering::Relaxed);
            (*(dst.add(i) as *const AtomicU64)).store(v, Ordering::Relaxed);
        }
    }
}

/// Xen, set up.
pub struct Xen {
    /// What CPUID said.
    pub detected: Detected,
    /// Our domid.
    pub domid: DomId,
    /// The xenstore ring and its port.
    pub store: (PhysPage, EvtchnPort),
    /// The vector of the event upcall.
    pub vector: u8,
    window: GrantWindow,
    /// The hypercall's copy descriptors, kept from batch to batch.
    copy_buf: Vec<GnttabCopy>,
}

/// Errors of Xen setup, named for the log.
#[derive(Debug)]
pub struct SetupError(pub &'static str, pub i64);

/// Sets up the hypercall page, `shared_info`, the event upcall and the console; reads the
/// xenstore ring's location. `window` is the reserved guest-physical range for grants.
pub fn init(detected: Detected, window: (u64, u64)) -> Result<Xen, SetupError> {
    let (_, msr, ..) = cpu::cpuid(detected.base + 2, 0);
    let page = memory::dma_alloc(PAGE_SIZE as u64, PAGE_SIZE as u64, true)
        .ok_or(SetupError("no memory for the hypercall page", 0))?;
    cpu::wrmsr(msr, page.phys);
    HYPERCALL_PAGE.store(page.phys, Ordering::Relaxed);

    let mut features = XenFeatureInfo {
        submap_idx: 0,
        submap: 0,
    };
    let rc = op(HYPERVISOR_XEN_VERSION, XENVER_GET_FEATURES, &mut features);
    if rc != 0 || features.submap & (1 << XENFEAT_HVM_CALLBACK_VECTOR) == 0 {
        return Err(SetupError("no XENFEAT_hvm_callback_vector", rc));
    }

    // shared_info replaces one of our RAM frames (that frame is simply not used again).
    let si = memory::dma_alloc(PAGE_SIZE as u64, PAGE_SIZE as u64, true)
        .ok_or(SetupError("no memory for shared_info", 0))?;
    let mut xatp = XenAddToPhysmap {
        domid: DomId::SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: si.phys >> 12,
    };
    let rc = op(HYPERVISOR_MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, &mut xatp);
    if rc != 0 {
        return Err(SetupError("add_to_physmap(shared_info)", rc));
    }
    SHARED_INFO.store(si.phys, Ordering::Relaxed);
    // Every port starts masked; we unmask the ones we bind.
    for w in 0..64 {
        mask_word(w).store(u64::MAX, Ordering::Relaxed);
    }

    let vector = interrupts::allocate().ok_or(SetupError("no free vector", 0))?;
    interrupts::register(vector, on_upcall);
    set_hvm_param(
        HVM_PARAM_CALLBACK_IRQ,
        HVM_PARAM_CALLBACK_TYPE_VECTOR | u64::from(vector),
    )
    .map_err(|e| SetupError("set CALLBACK_IRQ", i64::from(e.0)))?;

    let domid = match detected.domid {
        Some(d) => DomId(d),
        None => return Err(SetupError("CPUID does not report our domid", 0)),
    };
    let store_pfn =
        hvm_param(HVM_PARAM_STORE_PFN).map_err(|e| SetupError("STORE_PFN", i64::from(e.0)))?;
    let store_port = hvm_param(HVM_PARAM_STORE_EVTCHN)
        .map_err(|e| SetupError("STORE_EVTCHN", i64::from(e.0)))?;
    let store = (
        PhysPage {
            addr: store_pfn << 12,
        },
        EvtchnPort(store_port as u32),
    );
    unmask(store.1);
    if let (Ok(pfn), Ok(port)) = (
        hvm_param(HVM_PARAM_CONSOLE_PFN),
        hvm_param(HVM_PARAM_CONSOLE_EVTCHN),
    ) {
        if pfn != 0 {
            super::logger::set_xen_console(XenConsole {
                page: PhysPage { addr: pfn << 12 },
                port: EvtchnPort(port as u32),
            });
        }
    }
    memory::map_identity(window.0, window.1).ok_or(SetupError("cannot map the grant window", 0))?;
    Ok(Xen {
        detected,
        domid,
        store,
        vector,
        window: GrantWindow::new(window.0, window.1),
        copy_buf: Vec::new(),
    })
}

fn on_upcall(_: &mut interrupts::Frame) {
    // The callback vector bypasses the local APIC: no EOI, but the pending flag must be
    // cleared or Xen injects again at once.
    let si = SHARED_INFO.load(Ordering::Relaxed);
    // SAFETY: vcpu_info[0].evtchn_upcall_pending is byte 0 of the mapped shared_info.
    unsafe { (*(si as *const AtomicU8)).store(0, Ordering::Relaxed) };
}

fn word(offset: usize, w: usize) -> &'static AtomicU64 {
    let si = SHARED_INFO.load(Ordering::Relaxed);
    assert!(si != 0 && w < 64);
    // SAFETY: shared_info is mapped at `si` for good; evtchn_pending is at 2048 and
    // evtchn_mask at 2560 (64 words each, `abi_matches_xen_headers`), 8-aligned.
    unsafe { &*((si + offset as u64 + 8 * w as u64) as *const AtomicU64) }
}

fn pending_word(w: usize) -> &'static AtomicU64 {
    word(2048, w)
}

fn mask_word(w: usize) -> &'static AtomicU64 {
    word(2560, w)
}

fn unmask(port: EvtchnPort) {
    let (w, bit) = ((port.0 / 64) as usize, port.0 % 64);
    if w >= 64 {
        return;
    }
    mask_word(w).fetch_and(!(1 << bit), Ordering::SeqCst);
    if pending_word(w).load(Ordering::SeqCst) & (1 << bit) != 0 {
        // Xen re-delivers an event that arrived while masked only through the hypercall.
        let mut u = EvtchnUnmask { port };
        op(HYPERVISOR_EVENT_CHANNEL_OP, EVTCHNOP_UNMASK, &mut u);
    }
}

fn errno(rc: i64) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno(-rc as i32))
    }
}

impl EventChannels for Xen {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, Errno> {
        let mut a = EvtchnAllocUnbound {
            dom: DomId::SELF,
            remote_dom: remote,
            port: EvtchnPort(0),
        };
        errno(op(
            HYPERVISOR_EVENT_CHANNEL_OP,
            EVTCHNOP_ALLOC_UNBOUND,
            &mut a,
        ))?;
        unmask(a.port);
        Ok(a.port)
    }

    fn bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, Errno> {
        let mut b = EvtchnBindInterdomain {
            remote_dom: remote,
            _pad: 0,
            remote_port,
            local_port: EvtchnPort(0),
        };
        errno(op(
            HYPERVISOR_EVENT_CHANNEL_OP,
            EVTCHNOP_BIND_INTERDOMAIN,
            &mut b,
        ))?;
        unmask(b.local_port);
        Ok(b.local_port)
    }

    fn send(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        notify(port)
    }

    fn unmask(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        unmask(port);
        Ok(())
    }

    fn close(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        let (w, bit) = ((port.0 / 64) as usize, port.0 % 64);
        if w < 64 {
            mask_word(w).fetch_or(1 << bit, Ordering::SeqCst);
        }
        let mut c = EvtchnClose { port };
        errno(op(HYPERVISOR_EVENT_CHANNEL_OP, EVTCHNOP_CLOSE, &mut c))
    }

    fn take_pending(&mut self, f: &mut dyn FnMut(EvtchnPort)) {
        let si = SHARED_INFO.load(Ordering::Relaxed);
        // SAFETY: vcpu_info[0].evtchn_pending_sel, offset 8 of shared_info, 8-aligned.
        unsafe { (*((si + 8) as *const AtomicU64)).store(0, Ordering::SeqCst) };
        for w in 0..64 {
            let ready =
                pending_word(w).load(Ordering::SeqCst) & !mask_word(w).load(Ordering::SeqCst);
            let mut bits = ready;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                pending_word(w).fetch_and(!(1 << bit), Ordering::SeqCst);
                f(EvtchnPort(w as u32 * 64 + bit));
            }
        }
    }
}

/// `EVTCHNOP_send`.
pub fn notify(port: EvtchnPort) -> Result<(), Errno> {
    let mut s = EvtchnSend { port };
    errno(op(HYPERVISOR_EVENT_CHANNEL_OP, EVTCHNOP_SEND, &mut s))
}

/// Unmaps per hypercall: usbback unmaps every request a pass answered together (at most 16
/// requests of 17 pages per frontend). Xen preempts long batches itself (a continuation).
const UNMAP_BATCH: usize = 512;

/// Slots of the grant window, one page each, handed out round the window rather than
/// lowest first: a slot is used again only after every other one was. A device's DMA
/// reaches a mapping through the IOMMU, and an IOTLB entry that outlived its unmap (seen
/// under QEMU's emulated VT-d: the second URB into the same slot landed in the first one's
/// page) then points at a page that is long out of use rather than one just handed to
/// another request.
struct GrantWindow {
    base: u64,
    used: Vec<u64>,
    slots: usize,
    /// Where the next search starts.
    next: usize,
}

impl GrantWindow {
    fn new(base: u64, size: u64) -> GrantWindow {
        let slots = (size / PAGE_SIZE as u64) as usize;
        GrantWindow {
            base,
            used: alloc::vec![0; slots.div_ceil(64)],
            slots,
            next: 0,
        }
    }

    fn take(&mut self) -> Option<u64> {
        for step in 0..self.slots {
            let slot = (self.next + step) % self.slots;
            let (w, bit) = (slot / 64, slot % 64);
            if self.used[w] & (1 << bit) == 0 {
                self.used[w] |= 1 << bit;
                self.next = (slot + 1) % self.slots;
                return Some(self.base + (slot * PAGE_SIZE) as u64);
            }
        }
        None
    }

    fn in_use(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn give_back(&mut self, addr: u64) {
        let slot = (addr - self.base) / PAGE_SIZE as u64;
        self.used[(slot / 64) as usize] &= !(1 << (slot % 64));
    }
}

impl GrantMapper for Xen {
    type Page = PhysPage;

    fn map(&mut self, requests: &[MapRequest]) -> Result<MapResults<PhysPage>, BatchTooLarge> {
        if requests.len() > MAX_GRANT_BATCH {
            return Err(BatchTooLarge(requests.len()));
        }
        let mut ops: heapless::Vec<GnttabMapGrantRef, MAX_GRANT_BATCH> = heapless::Vec::new();
        for r in requests {
            // A full window shows as a failed slot: host_addr 0 is refused per entry below.
            let addr = self.window.take().unwrap_or(0);
            let flags = GNTMAP_HOST_MAP | if r.readonly { GNTMAP_READONLY } else { 0 };
            let _ = ops.push(GnttabMapGrantRef {
                host_addr: addr,
                flags,
                gref: r.gref,
                dom: r.dom,
                status: GntStatus::GeneralError as i16,
                handle: 0,
                dev_bus_addr: 0,
            });
        }
        let valid: heapless::Vec<bool, MAX_GRANT_BATCH> =
            ops.iter().map(|o| o.host_addr != 0).collect();
        if valid.iter().all(|v| *v) {
            hypercall(
                HYPERVISOR_GRANT_TABLE_OP,
                u64::from(GNTTABOP_MAP_GRANT_REF),
                ops.as_mut_ptr() as u64,
                ops.len() as u64,
            );
        }
        let mut out = MapResults::new();
        for (o, r) in ops.iter().zip(requests) {
            let status = GntStatus::from_raw(o.status);
            let result = if status == GntStatus::Okay {
                Ok(GrantMapping {
                    request: *r,
                    handle: GrantHandle(o.handle),
                    addr: GuestPhysAddr(o.host_addr),
                    page: PhysPage { addr: o.host_addr },
                })
            } else {
                if o.host_addr != 0 {
                    self.window.give_back(o.host_addr);
                }
                Err(if o.host_addr == 0 {
                    GntStatus::NoSpace
                } else {
                    status
                })
            };
            let _ = out.push(result);
        }
        Ok(out)
    }

    fn unmap<I>(&mut self, mappings: I) -> Result<(), GntStatus>
    where
        I: IntoIterator<Item = GrantMapping<PhysPage>>,
    {
        let mut ops: Vec<GnttabUnmapGrantRef> = mappings
            .into_iter()
            .map(|m| GnttabUnmapGrantRef {
                host_addr: m.addr.0,
                dev_bus_addr: 0,
                handle: m.handle.0,
                status: 0,
                _pad: 0,
            })
            .collect();
        let mut first = Ok(());
        for chunk in ops.chunks_mut(UNMAP_BATCH) {
            hypercall(
                HYPERVISOR_GRANT_TABLE_OP,
                u64::from(GNTTABOP_UNMAP_GRANT_REF),
                chunk.as_mut_ptr() as u64,
                chunk.len() as u64,
            );
            for o in chunk.iter() {
                let status = GntStatus::from_raw(o.status);
                if status == GntStatus::Okay {
                    // The frame is a hole again; the slot may be reused.
                    self.window.give_back(o.host_addr);
                } else if first.is_ok() {
                    first = Err(status);
                }
            }
        }
        first
    }

    fn mapped(&self) -> usize {
        self.window.in_use()
    }
}

/// Copies per hypercall: usbback copies everything a pass takes or answers at once (at most
/// a ring of 16 requests of 16 pages per frontend). Xen preempts long batches itself.
const COPY_BATCH: usize = 512;

impl GrantCopier for Xen {
    fn copy(&mut self, ops: &[CopyOp], statuses: &mut Vec<GntStatus>) {
        let ptr = |p: CopyPtr| match p {
            CopyPtr::Grant { dom, gref, offset } => (
                GnttabCopyPtr {
                    u: u64::from(gref.0),
                    domid: dom,
                    offset,
                    _pad: 0,
                },
                true,
            ),
            CopyPtr::Local { gfn, offset } => (
                GnttabCopyPtr {
                    u: gfn.0,
                    domid: DomId::SELF,
                    offset,
                    _pad: 0,
                },
                false,
            ),
        };
        statuses.clear();
        let mut raw = core::mem::take(&mut self.copy_buf);
        for chunk in ops.chunks(COPY_BATCH) {
            raw.clear();
            raw.extend(chunk.iter().map(|op| {
                let (source, source_gref) = ptr(op.source);
                let (dest, dest_gref) = ptr(op.dest);
                let flags = if source_gref { GNTCOPY_SOURCE_GREF } else { 0 }
                    | if dest_gref { GNTCOPY_DEST_GREF } else { 0 };
                GnttabCopy {
                    source,
                    dest,
                    len: op.len,
                    flags,
                    status: GntStatus::GeneralError as i16,
                    _pad: 0,
                }
            }));
            let rc = hypercall(
                HYPERVISOR_GRANT_TABLE_OP,
                u64::from(GNTTABOP_COPY),
                raw.as_mut_ptr() as u64,
                raw.len() as u64,
            );
            statuses.extend(raw.iter().map(|c| {
                if rc < 0 {
                    GntStatus::GeneralError
                } else {
                    GntStatus::from_raw(c.status)
                }
            }));
        }
        self.copy_buf = raw;
    }
}

impl LocalFrames for Xen {
    fn alloc_frame(&mut self) -> Result<LocalFrame<PhysPage>, Errno> {
        // Our own RAM, identity-mapped: its guest-physical address is what the controller
        // DMAs to (through the IOMMU's fixed mapping of our memory, which no grant
        // operation changes).
        let region =
            memory::dma_alloc(PAGE_SIZE as u64, PAGE_SIZE as u64, true).ok_or(Errno::ENOSPC)?;
        Ok(LocalFrame {
            gfn: xen::abi::Gfn(region.phys >> 12),
            bus_addr: region.phys,
            page: PhysPage { addr: region.phys },
        })
    }
}

/// The xenstore connection over the shared ring: bytes move through the page, the store
/// event channel tells xenstored to look. Waiting halts until any interrupt (the upcall or
/// the timer) and gives up after five seconds, so a dead xenstored cannot hang the kernel.
pub struct StoreTransport {
    ring: XsRing<PhysPage>,
    port: EvtchnPort,
}

impl StoreTransport {
    /// The transport on the store ring of `xen`.
    pub fn new(xen: &Xen) -> StoreTransport {
        StoreTransport {
            ring: XsRing::new(xen.store.0.clone(), XsRingSide::Client),
            port: xen.store.1,
        }
    }
}

const STORE_TIMEOUT_US: u64 = 5_000_000;

impl XsTransport for StoreTransport {
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
        let mut sent = 0;
        let deadline = time::deadline(STORE_TIMEOUT_US);
        while sent < msg.len() {
            let n = self.ring.write(&msg[sent..])?;
            sent += n;
            let _ = notify(self.port);
            if sent < msg.len() {
                if time::now_micros() > deadline {
                    return Err(XsError::Transport("xenstore ring stayed full"));
                }
                cpu::enable_and_halt();
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        let n = self.ring.read(buf)?;
        if n > 0 {
            let _ = notify(self.port);
        }
        Ok(n)
    }

    fn wait(&mut self) -> Result<(), XsError> {
        let deadline = time::deadline(STORE_TIMEOUT_US);
        while self.ring.readable()? == 0 {
            if time::now_micros() > deadline {
                return Err(XsError::Transport("xenstored did not answer within 5 s"));
            }
            cpu::enable_and_halt();
        }
        Ok(())
    }
}

/// The PV console ring (`struct xencons_interface`), output side only: what
/// `xl console -t pv` and xenconsoled's log show.
pub struct XenConsole {
    page: PhysPage,
    port: EvtchnPort,
}

impl XenConsole {
    const OUT: usize = 1024;
    const OUT_SIZE: u32 = 2048;
    const OUT_CONS: usize = 3080;
    const OUT_PROD: usize = 3084;

    /// Appends `bytes`, waiting up to 50 ms in all for xenconsoled to make room (a console
    /// nobody reads must not stall the kernel: past that the rest is dropped). For the boot
    /// log and a panic; the main loop's lines go through [`XenConsole::write_some`].
    pub fn write(&self, bytes: &[u8]) {
        let deadline = time::deadline(50_000);
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.write_some(rest);
            rest = &rest[n..];
            if !rest.is_empty() && time::now_micros() > deadline {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Appends what of `bytes` fits now and returns how many that was; notifies
    /// xenconsoled once if any. Never waits.
    pub fn write_some(&self, bytes: &[u8]) -> usize {
        let cons = self.page.load_u32(Self::OUT_CONS);
        let mut prod = self.page.load_u32(Self::OUT_PROD);
        core::sync::atomic::fence(Ordering::SeqCst);
        let room = Self::OUT_SIZE.saturating_sub(prod.wrapping_sub(cons)) as usize;
        let n = room.min(bytes.len());
        if n == 0 {
            return 0;
        }
        for &b in &bytes[..n] {
            self.page
                .write(Self::OUT + (prod % Self::OUT_SIZE) as usize, &[b]);
            prod = prod.wrapping_add(1);
        }
        // The bytes before the index that publishes them.
        core::sync::atomic::fence(Ordering::Release);
        self.page.store_u32(Self::OUT_PROD, prod);
        let _ = notify(self.port);
        n
    }
}
