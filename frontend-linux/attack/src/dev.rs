//! The `xen` crate's traits over Linux's Xen devices, from user space:
//! `/dev/xen/gntalloc` (grants of our pages), `/dev/xen/evtchn` (event channels) and
//! `/dev/xen/xenbus` (xenstore). Ioctl numbers and layouts are Linux's
//! `include/uapi/xen/gntalloc.h` and `evtchn.h`.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use xen::abi::{DomId, EvtchnPort, Gfn, GrantRef, PAGE_SIZE};
use xen::hypervisor::{Errno, EventChannels, GrantTable};
use xen::page::SharedPage;
use xen::xenstore::{XsError, XsTransport};

/// `_IOC(_IOC_NONE, type, nr, size)`: direction 0, so the number is size, type and nr.
const fn ioc_none(kind: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((size as libc::c_ulong) << 16) | ((kind as libc::c_ulong) << 8) | nr as libc::c_ulong
}

/// `struct ioctl_gntalloc_alloc_gref` with room for one grant.
#[repr(C)]
struct GntallocAllocGref {
    domid: u16,
    flags: u16,
    count: u32,
    index: u64,
    gref_ids: [u32; 1],
}

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
struct GntallocDeallocGref {
    index: u64,
    count: u32,
}

const IOCTL_GNTALLOC_ALLOC_GREF: libc::c_ulong =
    ioc_none(b'G', 5, std::mem::size_of::<GntallocAllocGref>());
const IOCTL_GNTALLOC_DEALLOC_GREF: libc::c_ulong =
    ioc_none(b'G', 6, std::mem::size_of::<GntallocDeallocGref>());
const GNTALLOC_FLAG_WRITABLE: u16 = 1;

const IOCTL_EVTCHN_BIND_INTERDOMAIN: libc::c_ulong = ioc_none(b'E', 1, 8);
const IOCTL_EVTCHN_BIND_UNBOUND_PORT: libc::c_ulong = ioc_none(b'E', 2, 4);
const IOCTL_EVTCHN_UNBIND: libc::c_ulong = ioc_none(b'E', 3, 4);
const IOCTL_EVTCHN_NOTIFY: libc::c_ulong = ioc_none(b'E', 4, 4);

fn last_errno() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn open(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// A page of ours: heap memory until it is granted, then the page gntalloc allocated with
/// the grant, mapped into our address space (gntalloc allocates the page and its grant in
/// one call, so what was written before the grant is copied over).
#[derive(Clone)]
pub struct Page(Rc<PageCell>);

struct PageCell {
    /// Where its bytes are now: `heap`, or the mapping once granted.
    at: Cell<*mut u8>,
    heap: *mut u8,
    mapped: Cell<bool>,
}

fn page_layout() -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).expect("a page is a valid layout")
}

impl Page {
    fn new() -> Result<Page, Errno> {
        // SAFETY: the layout has a non-zero size.
        let heap = unsafe { std::alloc::alloc_zeroed(page_layout()) };
        if heap.is_null() {
            return Err(Errno(libc::ENOMEM));
        }
        Ok(Page(Rc::new(PageCell {
            at: Cell::new(heap),
            heap,
            mapped: Cell::new(false),
        })))
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < PAGE_SIZE, "access outside the page");
        // SAFETY: the page (heap or mapping) lives as long as any handle to it, the offset
        // is inside it, and the backend's concurrent accesses make its bytes atomic data.
        unsafe { AtomicU8::from_ptr(self.0.at.get().add(offset)) }
    }

    /// Moves the page onto the mapping `map` of its grant.
    fn adopt(&self, map: *mut u8) {
        // SAFETY: both are whole pages of ours; nothing else writes the mapping yet.
        unsafe { std::ptr::copy_nonoverlapping(self.0.heap, map, PAGE_SIZE) };
        self.0.at.set(map);
        self.0.mapped.set(true);
    }
}

impl Drop for PageCell {
    fn drop(&mut self) {
        if self.mapped.get() {
            // SAFETY: our own mapping of one page, unused from here on; gntalloc frees the
            // page once the grant is deallocated and the grantee has unmapped it.
            unsafe { libc::munmap(self.at.get().cast(), PAGE_SIZE) };
        }
        // SAFETY: allocated in `Page::new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.heap, page_layout()) };
    }
}

impl SharedPage for Page {
    fn load_u32(&self, offset: usize) -> u32 {
        assert!(offset % 4 == 0 && offset + 4 <= PAGE_SIZE, "unaligned word");
        // SAFETY: as in `byte`; the word is 4-aligned inside a page-aligned page.
        unsafe { AtomicU32::from_ptr(self.0.at.get().add(offset).cast()) }.load(Ordering::Relaxed)
    }

    fn store_u32(&self, offset: usize, value: u32) {
        assert!(offset % 4 == 0 && offset + 4 <= PAGE_SIZE, "unaligned word");
        // SAFETY: as in `load_u32`.
        unsafe { AtomicU32::from_ptr(self.0.at.get().add(offset).cast()) }
            .store(value, Ordering::Relaxed)
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(offset + i).load(Ordering::Relaxed);
        }
    }

    fn write(&self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.byte(offset + i).store(*b, Ordering::Relaxed);
        }
    }
}

/// Grants and event channels of this guest, through gntalloc and evtchn.
pub struct Platform {
    gntalloc: File,
    evtchn: File,
    /// Pages allocated and not granted yet, by the frame number we made up for them.
    pages: HashMap<u64, Page>,
    next_gfn: u64,
    /// gntalloc's mmap index of each grant we made.
    grants: HashMap<u32, u64>,
}

impl Platform {
    /// Opens `/dev/xen/gntalloc` and `/dev/xen/evtchn` (modules `xen-gntalloc` and
    /// `xen-evtchn`).
    pub fn open() -> std::io::Result<Platform> {
        Ok(Platform {
            gntalloc: open("/dev/xen/gntalloc")?,
            evtchn: open("/dev/xen/evtchn")?,
            pages: HashMap::new(),
            next_gfn: 1,
            grants: HashMap::new(),
        })
    }

    /// The event channel device, to wait on.
    pub fn evtchn_fd(&self) -> RawFd {
        self.evtchn.as_raw_fd()
    }

    fn evtchn_ioctl(&self, request: libc::c_ulong, arg: &mut [u32]) -> Result<u32, Errno> {
        // SAFETY: `arg` is the ioctl's struct of u32 fields, as long as it says.
        let rc = unsafe { libc::ioctl(self.evtchn.as_raw_fd(), request, arg.as_mut_ptr()) };
        if rc < 0 {
            Err(last_errno())
        } else {
            Ok(rc as u32)
        }
    }
}

impl GrantTable for Platform {
    type Page = Page;

    fn alloc_page(&mut self) -> Result<(Gfn, Page), Errno> {
        let page = Page::new()?;
        let gfn = self.next_gfn;
        self.next_gfn += 1;
        self.pages.insert(gfn, page.clone());
        Ok((Gfn(gfn), page))
    }

    /// gntalloc grants a page once, when it allocates it: a page already granted is refused
    /// (`EINVAL`).
    fn grant_access(&mut self, to: DomId, gfn: Gfn, readonly: bool) -> Result<GrantRef, Errno> {
        let page = self.pages.remove(&gfn.0).ok_or(Errno::EINVAL)?;
        let mut op = GntallocAllocGref {
            domid: to.0,
            flags: if readonly { 0 } else { GNTALLOC_FLAG_WRITABLE },
            count: 1,
            index: 0,
            gref_ids: [0],
        };
        // SAFETY: `op` is the ioctl's struct, with room for the one grant asked for.
        let rc = unsafe {
            libc::ioctl(
                self.gntalloc.as_raw_fd(),
                IOCTL_GNTALLOC_ALLOC_GREF,
                &mut op,
            )
        };
        if rc < 0 {
            return Err(last_errno());
        }
        // SAFETY: maps the page gntalloc just allocated, at the index it gave for it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.gntalloc.as_raw_fd(),
                op.index as libc::off_t,
            )
        };
        if map == libc::MAP_FAILED {
            let e = last_errno();
            let _ = self.dealloc(op.index);
            return Err(e);
        }
        page.adopt(map.cast());
        self.grants.insert(op.gref_ids[0], op.index);
        Ok(GrantRef(op.gref_ids[0]))
    }

    /// Deallocates the grant; the kernel keeps the page until the grantee lets go of it,
    /// so this never reports `EBUSY`.
    fn end_access(&mut self, gref: GrantRef) -> Result<(), Errno> {
        let index = self.grants.remove(&gref.0).ok_or(Errno::EINVAL)?;
        self.dealloc(index)
    }

    /// gntalloc cannot tell: always false.
    fn grant_in_use(&self, _gref: GrantRef) -> bool {
        false
    }
}

impl Platform {
    fn dealloc(&self, index: u64) -> Result<(), Errno> {
        let mut op = GntallocDeallocGref { index, count: 1 };
        // SAFETY: `op` is the ioctl's struct.
        let rc = unsafe {
            libc::ioctl(
                self.gntalloc.as_raw_fd(),
                IOCTL_GNTALLOC_DEALLOC_GREF,
                &mut op,
            )
        };
        if rc < 0 {
            Err(last_errno())
        } else {
            Ok(())
        }
    }
}

impl EventChannels for Platform {
    fn alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, Errno> {
        self.evtchn_ioctl(IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut [u32::from(remote.0)])
            .map(EvtchnPort)
    }

    fn bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, Errno> {
        let mut op = [u32::from(remote.0), remote_port.0];
        self.evtchn_ioctl(IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut op)
            .map(EvtchnPort)
    }

    fn send(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        self.evtchn_ioctl(IOCTL_EVTCHN_NOTIFY, &mut [port.0])
            .map(drop)
    }

    /// Writing a port to the device unmasks it.
    fn unmask(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        self.evtchn
            .write_all(&port.0.to_ne_bytes())
            .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
    }

    fn close(&mut self, port: EvtchnPort) -> Result<(), Errno> {
        self.evtchn_ioctl(IOCTL_EVTCHN_UNBIND, &mut [port.0])
            .map(drop)
    }

    /// Reads the ports that fired (the kernel masks each as it queues it) and unmasks them.
    fn take_pending(&mut self, f: &mut dyn FnMut(EvtchnPort)) {
        let mut buf = [0u8; 4 * 64];
        loop {
            let n = match self.evtchn.read(&mut buf) {
                Ok(n) if n >= 4 => n,
                _ => return,
            };
            for raw in buf[..n / 4 * 4].chunks_exact(4) {
                let port = EvtchnPort(u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]));
                let _ = self.unmask(port);
                f(port);
            }
        }
    }
}

/// xenstore through `/dev/xen/xenbus`: whole messages written, replies and watch events read
/// back (the kernel forwards the rest to xenstored, and keeps our watches itself).
pub struct Xenbus(File);

/// How long a reply may take before the transport gives up.
const XENBUS_REPLY_MS: libc::c_int = 5_000;

impl Xenbus {
    /// Opens `/dev/xen/xenbus` (built into the kernel with xenbus).
    pub fn open() -> std::io::Result<Xenbus> {
        open("/dev/xen/xenbus").map(Xenbus)
    }

    /// The device, to wait on.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl XsTransport for Xenbus {
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
        // One write per message: the kernel buffers it whole before acting on it.
        match self.0.write(msg) {
            Ok(n) if n == msg.len() => Ok(()),
            _ => Err(XsError::Transport("xenbus write")),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        match self.0.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(_) => Err(XsError::Transport("xenbus read")),
        }
    }

    fn wait(&mut self) -> Result<(), XsError> {
        let mut fds = [libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(fds.as_mut_ptr(), 1, XENBUS_REPLY_MS) } {
            n if n > 0 => Ok(()),
            0 => Err(XsError::Transport("xenbus: no reply within 5 s")),
            _ if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted => Ok(()),
            _ => Err(XsError::Transport("xenbus poll")),
        }
    }
}
