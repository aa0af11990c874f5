//! Demo mode: the driver domain hosts `xen::sim` with its own backend domain and simulated
//! user VMs, each running the conformance frontend (`frontend-linux`, which speaks PVUSB as
//! Linux xen-hcd does), all served by the real `usbback::Backend` over whatever host it is
//! given (in the kernel: the xHCI driver and QEMU's devices).
//!
//! Each VM gets a virtual controller the way the dom0 tool does it (`usbctl hc-create`: the
//! [`ControllerNodes`]; `usbctl attach`, once the backend waits for the frontend and offers
//! the device: the bus id in the backend's [`ASSIGN_DIR`]), and
//! then behaves as a Linux guest with that device: it enumerates it (GET_DESCRIPTOR,
//! SET_ADDRESS, the configuration, SET_CONFIGURATION) and, for a mass-storage stick, runs
//! Bulk-Only Transport SCSI commands with up to 16 URBs in flight ([`Job`]); for a HID
//! keyboard it reads interrupt reports. Every step logs one `event=demo_<step> vm=<name>`
//! line.
//!
//! Nothing here blocks: [`Demo::step`] does what is due and returns, and the caller's loop
//! calls it again when something happened (an interrupt, a completion).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use frontend_linux::{Completion, Frontend, Urb, UrbHandle};
use log::{info, warn};
use sha2::{Digest, Sha256};
use usb::mass_storage::{cbw, read_capacity_10, read_write_10, CSW_SIZE, READ_10, WRITE_10};
use usb::{Direction, TransferType};
use usbback::host::{DeviceInfo, HostEvent, Transfer, TransferError, UsbHost, Vet};
use xen::abi::DomId;
use xen::hypervisor::EventChannels;
use xen::page::LocalPage;
use xen::pvusb::{busid_key, ControllerNodes, Pipe, ASSIGN_DIR, DEVICES_DIR};
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenbus::{self, XenbusState};
use xen::xenstore::{TxId, XenStore};
use xhci_driver::descriptor::{parse_configuration, total_length, Configuration};
use xhci_driver::mass_storage::{capacity, csw, is_bulk_only_scsi};

/// Bytes of one bulk data URB. Below xen-hcd's 64 KiB, and a whole number of blocks.
pub const CHUNK: usize = 32 << 10;
/// URBs in flight: Linux xen-hcd's limit (its ring has 16 slots); the demo's, and the
/// bench's unless `demo_in_flight=` asks for more.
pub const IN_FLIGHT: usize = xen::pvusb::URB_RING_SIZE as usize;
/// Bytes one READ(10) or WRITE(10) moves: its data phase is [`IN_FLIGHT`] URBs at once.
pub const COMMAND_BYTES: usize = CHUNK * IN_FLIGHT;
/// Most URBs a VM keeps in flight: the largest URB ring's entries.
pub const MAX_IN_FLIGHT: usize = xen::pvusb::MAX_URB_RING_SIZE as usize;
/// Ports of each VM's virtual controller (`usbctl hc-create <vm> 2 8`).
pub const PORTS: u8 = 8;
/// The port each VM's device is attached to.
pub const PORT: u8 = 1;
/// The address each VM gives its device (SET_ADDRESS).
pub const ADDRESS: u8 = 2;
/// Where the storage workload writes its pattern: 12 MiB into the stick (in 512-byte
/// blocks).
pub const WRITE_LBA: u32 = 24576;
/// The pattern's size.
pub const WRITE_BYTES: usize = 4096;
/// Interrupt reports the keyboard workload reads.
pub const KEYBOARD_REPORTS: u32 = 3;
/// SET_IDLE duration for the keyboard, in 4 ms units: a report every 100 ms even with no
/// key pressed (HID 1.11 7.2.4), so the workload ends without anyone typing.
const KEYBOARD_IDLE: u8 = 25;

/// The pattern VM `vm` writes: lines `usbdom-demo vm=<vm> record=<n>` to [`WRITE_BYTES`].
pub fn write_pattern(vm: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(WRITE_BYTES + 64);
    let mut n = 0;
    while p.len() < WRITE_BYTES {
        p.extend_from_slice(format!("usbdom-demo vm={vm} record={n}\n").as_bytes());
        n += 1;
    }
    p.truncate(WRITE_BYTES);
    p
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The backend as the demo runs it.
pub type SimBackend = usbback::Backend<Domain, SimXsTransport>;
type Fe = Frontend<Domain, SimXsTransport>;

/// Something a VM with a mass-storage device does once it is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// READ(10)s of `bytes` from `lba`, hashed with SHA-256 when `hash` (otherwise the
    /// data is not copied out of the frontend's pages: a throughput measurement).
    Read {
        /// First block.
        lba: u32,
        /// Bytes, a multiple of the block size.
        bytes: usize,
        /// Whether to hash them.
        hash: bool,
    },
    /// WRITE(10)s of `data` at `lba`.
    Write {
        /// First block.
        lba: u32,
        /// The bytes, a multiple of the block size.
        data: Vec<u8>,
    },
    /// WRITE(10)s of `bytes` bytes of `byte` at `lba`: a throughput measurement of any size
    /// without a buffer of that size.
    Fill {
        /// First block.
        lba: u32,
        /// Bytes, a multiple of the block size.
        bytes: usize,
        /// The value of every byte.
        byte: u8,
    },
    /// READ(10)s of `expect.len()` bytes at `lba`, compared with `expect`.
    Verify {
        /// First block.
        lba: u32,
        /// What must be there.
        expect: Vec<u8>,
    },
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::Read { .. } => "read",
            Job::Write { .. } | Job::Fill { .. } => "write",
            Job::Verify { .. } => "verify",
        }
    }

    fn lba(&self) -> u32 {
        match self {
            Job::Read { lba, .. }
            | Job::Write { lba, .. }
            | Job::Fill { lba, .. }
            | Job::Verify { lba, .. } => *lba,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Job::Read { bytes, .. } | Job::Fill { bytes, .. } => *bytes,
            Job::Write { data, .. } => data.len(),
            Job::Verify { expect, .. } => expect.len(),
        }
    }
}

/// A finished [`Job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// `read`, `write` or `verify`.
    pub job: &'static str,
    /// Data bytes moved.
    pub bytes: usize,
    /// From its first URB to its last answer.
    pub micros: u64,
    /// The SHA-256 of what a hashed read read.
    pub sha256: Option<[u8; 32]>,
    /// Whether a verify found what it expected.
    pub matched: Option<bool>,
}

/// What a VM wants from the demo at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The scripted guest: a stick is read (`mib` MiB, hashed), written and read back; a
    /// keyboard's reports are read.
    Demo {
        /// MiB to read and hash.
        mib: u32,
    },
    /// Enumerate and configure only; the caller gives it [`Job`]s ([`Vm::push`]), each
    /// command's data phase `in_flight` URBs at once (more than 16 on a multi-page URB
    /// ring).
    Bench {
        /// URBs of one command's data phase, 16 to [`MAX_IN_FLIGHT`], a power of two.
        in_flight: usize,
    },
}

impl Workload {
    /// URBs of one command's data phase.
    pub fn in_flight(self) -> usize {
        match self {
            Workload::Demo { .. } => IN_FLIGHT,
            Workload::Bench { in_flight } => in_flight.clamp(IN_FLIGHT, MAX_IN_FLIGHT),
        }
    }

    /// The URB ring's `ring-page-order` a VM asks for: a ring entry for each URB.
    fn ring_page_order(self) -> u32 {
        (self.in_flight() / IN_FLIGHT).trailing_zeros()
    }
}

/// Microseconds [`Demo::step`] spent in its parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// usbback answering the host's completions (`host_events`: copy out, respond, notify).
    pub completions: u64,
    /// usbback taking the frontends' requests (`handle_event`: decode, copy in, submit to the
    /// host; with an emulated controller this includes the device's work on each doorbell).
    pub requests: u64,
    /// The simulated VMs: their frontends (grants, ring, completions) and workloads.
    pub frontends: u64,
}

/// An assignment to make once the backend can take it.
struct Attach {
    vm: String,
    backend_dir: String,
    busid: String,
}

/// The simulated machine: a backend domain and the user VMs.
pub struct Demo {
    /// The toolstack's xenstore connection.
    dom0: XenStore<SimXsTransport>,
    /// Assignments not yet made: `usbctl attach` waits for the controller's backend and for
    /// the device in the backend's inventory.
    attaches: Vec<Attach>,
    clock: fn() -> u64,
    times: StepTimes,
    backend: SimBackend,
    vms: Vec<Vm>,
    finished: bool,
}

impl Demo {
    /// A machine with the backend domain (named `usbdom`) and one VM per name, each with a
    /// virtual controller served by the backend and the device `assign` gives it on port
    /// [`PORT`]. `clock` gives microseconds, for the jobs' timing.
    pub fn new(
        vms: &[&str],
        assign: &[(&str, &str)],
        workload: Workload,
        clock: fn() -> u64,
    ) -> Result<Demo, String> {
        let xen = Xen::new();
        let mut dom0 = xen.dom0().xenstore();
        let be_dom = xen.create_domain();
        let name = |xs: &mut xen::xenstore::XenStore<SimXsTransport>, d: DomId, n: &str| {
            xs.write(TxId::NONE, &format!("/local/domain/{d}/name"), n.as_bytes())
                .map_err(|e| format!("xenstore: {e}"))
        };
        name(&mut dom0, be_dom.domid(), "usbdom")?;
        let backend = SimBackend::new(be_dom.clone(), be_dom.xenstore(), be_dom.domid())
            .map_err(|e| format!("backend: {e}"))?;
        let mut out = Vec::new();
        let mut attaches = Vec::new();
        for &vm in vms {
            let dom = xen.create_domain();
            name(&mut dom0, dom.domid(), vm)?;
            // usbctl hc-create <vm> 2 8.
            let nodes = ControllerNodes {
                frontend: dom.domid(),
                backend: be_dom.domid(),
                devid: 0,
                usb_ver: 2,
                ports: PORTS,
            };
            dom0.transaction(5, |xs, tx| nodes.write(xs, tx))
                .map_err(|e| format!("xenstore: {e}"))?;
            // usbctl attach <vm> 0 1 <busid>, once the backend is ready for it (step).
            let busid = assign.iter().find(|(_, v)| *v == vm).map(|(b, _)| *b);
            if let Some(b) = busid {
                attaches.push(Attach {
                    vm: String::from(vm),
                    backend_dir: nodes.backend_dir(),
                    busid: String::from(b),
                });
            }
            let fe = Frontend::new(dom.clone(), dom.xenstore(), dom.domid(), 0)
                .map_err(|e| format!("frontend of {vm}: {e}"))?
                .with_ring_page_order(workload.ring_page_order());
            info!(
                "event=demo_vm vm={vm} domid={} backend={} controller={} port={PORT} busid={}",
                dom.domid(),
                be_dom.domid(),
                nodes.frontend_dir(),
                busid.unwrap_or("none")
            );
            out.push(Vm {
                name: String::from(vm),
                domid: dom.domid(),
                fe,
                busid: busid.map(String::from),
                workload,
                stage: Stage::Connecting,
                batch: Vec::new(),
                arrived: Vec::new(),
                jobs: VecDeque::new(),
                running: None,
                results: VecDeque::new(),
                tag: 0,
                command: None,
                failed: false,
                clock,
            });
        }
        Ok(Demo {
            dom0,
            attaches,
            clock,
            times: StepTimes::default(),
            backend,
            vms: out,
            finished: false,
        })
    }

    /// How the backend moves the VMs' data (`datapath=`).
    pub fn set_data_path(&mut self, path: usbback::DataPath) {
        self.backend.set_data_path(path);
    }

    /// Does what is due: the host's events and xenstore for the backend, the frontends'
    /// notifications, each VM's next step. True when anything moved (call again at once).
    pub fn step(&mut self, host: &mut dyn UsbHost<LocalPage>, mut events: Vec<HostEvent>) -> bool {
        let t0 = (self.clock)();
        let before: Vec<XenbusState> = self.backend.devices().map(|(_, s)| s).collect();
        let mut progress = !events.is_empty();
        self.backend.host_events(host, &mut events);
        let t1 = (self.clock)();
        if let Err(e) = self.backend.poll_xenstore(host) {
            warn!("event=xenstore_error op=poll error={e}");
        }
        self.backend.publish_inventory();
        let mut ports = Vec::new();
        self.backend
            .hypervisor()
            .take_pending(&mut |p| ports.push(p));
        progress |= !ports.is_empty();
        let t2 = (self.clock)();
        for p in ports {
            self.backend.handle_event(p, host);
        }
        progress |= self.backend.has_work();
        self.backend.serve_busy(host);
        let t3 = (self.clock)();
        progress |= self.attach();
        for vm in &mut self.vms {
            progress |= vm.step();
        }
        let after: Vec<XenbusState> = self.backend.devices().map(|(_, s)| s).collect();
        let t4 = (self.clock)();
        self.times.completions += t1 - t0;
        self.times.requests += t3 - t2;
        self.times.frontends += t4 - t3;
        progress | (before != after)
    }

    /// Where [`step`](Self::step)'s time went since the last call.
    pub fn take_times(&mut self) -> StepTimes {
        core::mem::take(&mut self.times)
    }

    /// What `usbctl attach` does, for each assignment whose controller's backend waits for
    /// its frontend (or is further) and whose device the backend offers: the bus id goes into
    /// the port's key. True when one was made.
    fn attach(&mut self) -> bool {
        let be = self.backend.hypervisor().domid();
        let dom0 = &mut self.dom0;
        let before = self.attaches.len();
        self.attaches.retain(|a| {
            let state = xenbus::read_state(dom0, TxId::NONE, &a.backend_dir);
            let serving = matches!(
                state,
                Ok(XenbusState::InitWait | XenbusState::Initialised | XenbusState::Connected)
            );
            let offered = format!("/local/domain/{be}/{DEVICES_DIR}/{}", busid_key(&a.busid));
            if !serving || dom0.read(TxId::NONE, &offered).is_err() {
                return true;
            }
            let key = format!("{}/{ASSIGN_DIR}/{PORT}", a.backend_dir);
            match dom0.write(TxId::NONE, &key, a.busid.as_bytes()) {
                Ok(()) => info!(
                    "event=demo_attach vm={} busid={} port={PORT} backend={}",
                    a.vm, a.busid, a.backend_dir
                ),
                Err(e) => warn!("event=demo_attach_failed vm={} error={e}", a.vm),
            }
            false
        });
        self.attaches.len() != before
    }

    /// Logs where each VM waits (`event=demo_waiting`, debug).
    pub fn log_waiting(&self) {
        for v in &self.vms {
            log::debug!(
                "event=demo_waiting vm={} step={} batch={} answered={} frontend_in_flight={} frontend_queued={} backend_in_flight={}",
                v.name,
                v.stage.name(),
                v.batch.len(),
                v.arrived.len(),
                v.fe.in_flight(),
                v.fe.queued(),
                self.backend.in_flight()
            );
        }
    }

    /// The VMs.
    pub fn vms(&mut self) -> &mut [Vm] {
        &mut self.vms
    }

    /// The VM named `name`.
    pub fn vm(&mut self, name: &str) -> Option<&mut Vm> {
        self.vms.iter_mut().find(|v| v.name == name)
    }

    /// Whether every VM is idle.
    pub fn all_idle(&self) -> bool {
        self.vms.iter().all(Vm::idle)
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut SimBackend {
        &mut self.backend
    }

    /// Once every VM is idle: logs the end of the demo, the backend's counters per frontend
    /// and what is still held (`event=demo_finished`), once. Returns whether it finished
    /// now.
    pub fn finish(&mut self) -> bool {
        if self.finished || !self.all_idle() {
            return false;
        }
        self.finished = true;
        let ids: Vec<usbback::DeviceId> = self.backend.devices().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(s) = self.backend.stats(id) {
                let vm = self
                    .vms
                    .iter()
                    .find(|v| v.domid == id.frontend)
                    .map_or("?", |v| v.name.as_str());
                info!(
                    "event=demo_backend_stats vm={vm} domid={} completed={} errors={} unlinked={} ring_full={} bytes={}",
                    id.frontend, s.completed, s.errors, s.unlinked, s.ring_full, s.bytes
                );
            }
        }
        let failed = self.vms.iter().filter(|v| v.failed).count();
        let protocol_errors = self.vms.iter().filter(|v| v.fe.error().is_some()).count();
        let frontend_in_flight: usize = self.vms.iter().map(|v| v.fe.in_flight()).sum();
        let mappings = self.backend.hypervisor().mappings();
        info!(
            "event=demo_finished vms={} failed={failed} protocol_errors={protocol_errors} backend_in_flight={} frontend_in_flight={frontend_in_flight} backend_mappings={mappings}",
            self.vms.len(),
            self.backend.in_flight(),
        );
        true
    }
}

/// usbback's host for frontends on `xen::sim` hosted in this kernel (demo mode): the sim's
/// pages are ordinary kernel memory, so each segment's bus address becomes its page's own
/// (`bus_address` of [`LocalPage::addr`]) instead of the sim's grant-window name for it, and
/// the controller DMAs straight into the frontends' pages, as it does into grant-mapped pages
/// on Xen. Everything else goes to `host` unchanged.
pub struct SimPages<'a, U: ?Sized> {
    host: &'a mut U,
    bus_address: fn(usize) -> u64,
}

impl<'a, U: UsbHost<LocalPage> + ?Sized> SimPages<'a, U> {
    /// `host` with `bus_address` turning a kernel address into a bus address.
    pub fn new(host: &'a mut U, bus_address: fn(usize) -> u64) -> Self {
        SimPages { host, bus_address }
    }
}

impl<U: UsbHost<LocalPage> + ?Sized> UsbHost<LocalPage> for SimPages<'_, U> {
    fn devices(&self) -> Vec<DeviceInfo> {
        self.host.devices()
    }

    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        self.host.poll(events)
    }

    fn submit(&mut self, device: u32, mut t: Transfer<LocalPage>) -> Result<(), TransferError> {
        for s in &mut t.segments {
            s.phys = (self.bus_address)(s.page.addr());
        }
        self.host.submit(device, t)
    }

    fn cancel(&mut self, device: u32, token: u64) -> bool {
        self.host.cancel(device, token)
    }

    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        self.host.set_configuration(device, value, token, vet)
    }

    fn set_interface(
        &mut self,
        device: u32,
        interface: u8,
        alternate: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        self.host
            .set_interface(device, interface, alternate, token, vet)
    }

    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        self.host.clear_halt(device, address, token)
    }

    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        self.host.reset(device)
    }
}

mod vm;
use vm::Stage;
pub use vm::Vm;

#[cfg(test)]
mod tests;
