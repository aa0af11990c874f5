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
use usbback::host::{HostEvent, UsbHost};
use xen::abi::DomId;
use xen::hypervisor::EventChannels;
use xen::page::LocalPage;
use xen::pvusb::{
    busid_key, ControllerNodes, Direction, Pipe, TransferType, ASSIGN_DIR, DEVICES_DIR,
};
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenbus::{self, XenbusState};
use xen::xenstore::{TxId, XenStore};
use xhci_driver::descriptor::{self, parse_configuration, total_length, Configuration};
use xhci_driver::mass_storage::{
    capacity, cbw, csw, is_bulk_only_scsi, read_capacity_10, read_write_10, CSW_SIZE, READ_10,
    WRITE_10,
};

/// Bytes of one bulk data URB. Below xen-hcd's 64 KiB, and a whole number of blocks.
pub const CHUNK: usize = 32 << 10;
/// URBs in flight: Linux xen-hcd's limit (its ring has 16 slots).
pub const IN_FLIGHT: usize = 16;
/// Bytes one READ(10) or WRITE(10) moves: its data phase is [`IN_FLIGHT`] URBs at once.
pub const COMMAND_BYTES: usize = CHUNK * IN_FLIGHT;
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
    /// Enumerate and configure only; the caller gives it [`Job`]s ([`Vm::push`]).
    Bench,
}

/// Where a VM's device is in its life as the guest sees it.
#[derive(Clone, Debug)]
enum Stage {
    /// Waiting for the controller to connect and the port to report a device.
    Connecting,
    DeviceDescriptor,
    Address,
    ConfigHead,
    Config,
    SetConfiguration(Configuration),
    /// HID: SET_PROTOCOL(boot), then SET_IDLE.
    SetProtocol(Keyboard),
    SetIdle(Keyboard),
    Capacity(Storage),
    /// Reading reports.
    Reports(Keyboard, u32),
    /// Configured: runs the jobs given.
    Ready(Storage),
    /// Nothing more to do (done, no device, or failed).
    Idle,
}

impl Stage {
    /// The step's name in `event=demo_failed step=`.
    fn name(&self) -> &'static str {
        match self {
            Stage::Connecting => "connect",
            Stage::DeviceDescriptor => "device_descriptor",
            Stage::Address => "set_address",
            Stage::ConfigHead | Stage::Config => "config_descriptor",
            Stage::SetConfiguration(_) => "set_configuration",
            Stage::SetProtocol(_) => "set_protocol",
            Stage::SetIdle(_) => "set_idle",
            Stage::Capacity(_) => "read_capacity",
            Stage::Reports(..) => "keyboard_report",
            Stage::Ready(_) => "job",
            Stage::Idle => "idle",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Storage {
    bulk_in: u8,
    bulk_out: u8,
    block_size: u32,
}

#[derive(Clone, Copy, Debug)]
struct Keyboard {
    interface: u8,
    endpoint: u8,
    interval: u8,
    len: u16,
}

/// The phases of a Bulk-Only command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Cbw,
    Data,
    Csw,
}

/// A Bulk-Only command in progress.
struct Command {
    storage: Storage,
    direction: Direction,
    len: usize,
    /// OUT: the data, one buffer per URB.
    out: Vec<Vec<u8>>,
    /// IN: the data is not looked at ([`Urb::discard_in_data`]).
    discard: bool,
    phase: Phase,
    /// The data URBs' answers, once in.
    data: Vec<Completion>,
}

/// The job being run: its current command and what it has found.
struct Running {
    job: Job,
    started: u64,
    /// Bytes of the job done by finished commands.
    done: usize,
    /// Bytes of the current command.
    len: usize,
    tag: u32,
    hasher: Option<Sha256>,
    matched: bool,
}

/// One simulated user VM with its frontend.
pub struct Vm {
    name: String,
    domid: DomId,
    fe: Fe,
    busid: Option<String>,
    workload: Workload,
    stage: Stage,
    /// URBs of the current step, in submission order, and those answered.
    batch: Vec<UrbHandle>,
    arrived: Vec<Completion>,
    jobs: VecDeque<Job>,
    running: Option<Running>,
    results: VecDeque<JobResult>,
    tag: u32,
    /// The Bulk-Only command in progress.
    command: Option<Command>,
    /// A step failed: named in the log, the VM idles.
    failed: bool,
    clock: fn() -> u64,
}

impl Vm {
    /// Its domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The bus id of the device assigned to it.
    pub fn busid(&self) -> Option<&str> {
        self.busid.as_deref()
    }

    /// The block size of its stick, once configured.
    pub fn block_size(&self) -> Option<u32> {
        match self.stage {
            Stage::Ready(s) => Some(s.block_size),
            _ => None,
        }
    }

    /// Whether it has nothing left to do: workload finished, failed, or no device.
    pub fn idle(&self) -> bool {
        matches!(self.stage, Stage::Idle)
            || (matches!(self.stage, Stage::Ready(_))
                && self.running.is_none()
                && self.jobs.is_empty())
    }

    /// Whether it is configured and waits for jobs.
    pub fn ready(&self) -> bool {
        matches!(self.stage, Stage::Ready(_)) && self.running.is_none() && self.jobs.is_empty()
    }

    /// Whether a step failed.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Queues a job (for a configured stick).
    pub fn push(&mut self, job: Job) {
        self.jobs.push_back(job);
    }

    /// The oldest finished job's result.
    pub fn take_result(&mut self) -> Option<JobResult> {
        self.results.pop_front()
    }

    /// The frontend's counters.
    pub fn frontend_stats(&self) -> frontend_linux::Stats {
        self.fe.stats()
    }

    /// The protocol error that stopped the frontend, if any.
    pub fn protocol_error(&self) -> Option<frontend_linux::ProtocolError> {
        self.fe.error()
    }

    fn fail(&mut self, step: &str, why: &str) {
        warn!("event=demo_failed vm={} step={step} {why}", self.name);
        self.failed = true;
        self.stage = Stage::Idle;
        self.running = None;
        self.command = None;
        self.jobs.clear();
    }

    fn submit(&mut self, urb: Urb) {
        match self.fe.submit(urb) {
            Ok(h) => self.batch.push(h),
            Err(e) => self.fail("submit", &format!("{e}")),
        }
    }

    fn control(&mut self, device: u8, setup: [u8; 8]) {
        self.submit(Urb::control(PORT, device, setup, Vec::new()));
    }

    fn pipe(&self, direction: Direction, endpoint: u8) -> Pipe {
        Pipe {
            port: PORT,
            unlink: false,
            direction,
            device: ADDRESS,
            endpoint,
            transfer_type: TransferType::Bulk,
        }
    }

    fn bulk(&mut self, direction: Direction, endpoint: u8, buffer: Vec<u8>) {
        self.submit(Urb::new(self.pipe(direction, endpoint), buffer));
    }

    /// Moves on; true when anything happened.
    fn step(&mut self) -> bool {
        let before = (self.fe.state(), self.fe.stats().completed, self.batch.len());
        if let Err(e) = self.fe.poll() {
            if !self.failed {
                self.fail("frontend", &format!("{e}"));
            }
        }
        if let Some(e) = self.fe.error() {
            if !self.failed {
                warn!("event=demo_protocol_error vm={} {e}", self.name);
                self.fail("protocol", "reason=frontend_stopped");
            }
        }
        while let Some(c) = self.fe.take_completed() {
            self.arrived.push(c);
        }
        let mut progress = before != (self.fe.state(), self.fe.stats().completed, self.batch.len());
        // A step's URBs are all answered: the next step.
        if !self.batch.is_empty() && self.arrived.len() == self.batch.len() {
            log::debug!(
                "event=demo_answered vm={} step={} urbs={}",
                self.name,
                self.stage.name(),
                self.batch.len()
            );
            self.arrived.sort_by_key(|c| c.handle);
            let done = core::mem::take(&mut self.arrived);
            self.batch.clear();
            self.answered(done);
            progress = true;
        }
        if self.batch.is_empty() && !self.failed {
            progress |= self.start_next();
        }
        progress
    }

    /// With nothing in flight: starts what comes next, if anything can start now.
    fn start_next(&mut self) -> bool {
        match self.stage {
            Stage::Connecting => {
                if self.busid.is_none() {
                    info!("event=demo_idle vm={} reason=no_device_assigned", self.name);
                    self.stage = Stage::Idle;
                    return true;
                }
                if self.fe.state() != XenbusState::Connected {
                    return false;
                }
                let speed = self.fe.port_speed(PORT).unwrap_or(0);
                if speed == 0 {
                    return false;
                }
                info!(
                    "event=demo_connected vm={} port={PORT} speed={speed} busid={}",
                    self.name,
                    self.busid.as_deref().unwrap_or("")
                );
                self.stage = Stage::DeviceDescriptor;
                // What Linux's hub driver asks first, at address 0.
                self.control(0, [0x80, 6, 0, 1, 0, 0, 18, 0]);
                true
            }
            Stage::Ready(storage) => {
                if self.running.is_none() {
                    let Some(job) = self.jobs.pop_front() else {
                        if matches!(self.workload, Workload::Demo { .. }) {
                            info!("event=demo_done vm={} device=storage", self.name);
                            self.stage = Stage::Idle;
                            return true;
                        }
                        return false;
                    };
                    let hasher = matches!(job, Job::Read { hash: true, .. }).then(Sha256::new);
                    self.running = Some(Running {
                        job,
                        started: (self.clock)(),
                        done: 0,
                        len: 0,
                        tag: 0,
                        hasher,
                        matched: true,
                    });
                }
                self.next_command(storage);
                true
            }
            _ => false,
        }
    }

    /// Handles the answers of the step just finished.
    fn answered(&mut self, done: Vec<Completion>) {
        if let Some(bad) = done.iter().find(|c| c.status != 0) {
            let step = match &self.stage {
                Stage::Ready(_) => self.running.as_ref().map_or("job", |r| r.job.name()),
                other => other.name(),
            };
            self.fail(step, &format!("status={}", bad.status));
            return;
        }
        let done = if self.command.is_some() {
            match self.command_phase(done) {
                Some(all) => all,
                None => return,
            }
        } else {
            done
        };
        let stage = core::mem::replace(&mut self.stage, Stage::Idle);
        self.stage = match stage {
            Stage::DeviceDescriptor => {
                let d = &done[0].data;
                if d.len() < 18 {
                    self.fail("device_descriptor", "reason=short");
                    return;
                }
                info!(
                    "event=demo_device_descriptor vm={} vid={:04x} pid={:04x} usb={:04x} class={:02x} max_packet0={}",
                    self.name,
                    u16::from_le_bytes([d[8], d[9]]),
                    u16::from_le_bytes([d[10], d[11]]),
                    u16::from_le_bytes([d[2], d[3]]),
                    d[4],
                    d[7]
                );
                self.control(0, [0, 5, ADDRESS, 0, 0, 0, 0, 0]);
                Stage::Address
            }
            Stage::Address => {
                info!("event=demo_address vm={} address={ADDRESS}", self.name);
                self.control(ADDRESS, [0x80, 6, 0, 2, 0, 0, 9, 0]);
                Stage::ConfigHead
            }
            Stage::ConfigHead => match total_length(&done[0].data) {
                Ok(total) => {
                    let [lo, hi] = total.to_le_bytes();
                    self.control(ADDRESS, [0x80, 6, 0, 2, 0, 0, lo, hi]);
                    Stage::Config
                }
                Err(e) => {
                    self.fail("config_head", &format!("error={e:?}"));
                    return;
                }
            },
            Stage::Config => match parse_configuration(&done[0].data) {
                Ok(config) => {
                    self.control(ADDRESS, [0, 9, config.value, 0, 0, 0, 0, 0]);
                    Stage::SetConfiguration(config)
                }
                Err(e) => {
                    self.fail("config", &format!("error={e:?}"));
                    return;
                }
            },
            Stage::SetConfiguration(config) => match self.configured(&config) {
                Some(stage) => stage,
                None => return,
            },
            Stage::SetProtocol(k) => {
                let [lo, hi] = u16::from(k.interface).to_le_bytes();
                // SET_IDLE (HID 7.2.4): duration in the high byte of wValue.
                self.control(ADDRESS, [0x21, 0x0a, 0, KEYBOARD_IDLE, lo, hi, 0, 0]);
                Stage::SetIdle(k)
            }
            Stage::SetIdle(k) => {
                self.report(k);
                Stage::Reports(k, 0)
            }
            Stage::Reports(k, n) => {
                info!(
                    "event=demo_keyboard_report vm={} n={} report={}",
                    self.name,
                    n + 1,
                    hex(&done[0].data)
                );
                if n + 1 == KEYBOARD_REPORTS {
                    info!(
                        "event=demo_done vm={} device=keyboard reports={}",
                        self.name,
                        n + 1
                    );
                    Stage::Idle
                } else {
                    self.report(k);
                    Stage::Reports(k, n + 1)
                }
            }
            Stage::Capacity(mut s) => {
                if let Err(e) = csw(&done[1].data, self.tag) {
                    self.fail("read_capacity", &format!("error={e}"));
                    return;
                }
                match capacity(&done[0].data) {
                    Ok((blocks, block_size))
                        if block_size > 0 && CHUNK % block_size as usize == 0 =>
                    {
                        info!(
                            "event=demo_capacity vm={} blocks={blocks} block_size={block_size}",
                            self.name
                        );
                        s.block_size = block_size;
                        if let Workload::Demo { mib } = self.workload {
                            let pattern = write_pattern(&self.name);
                            let lba = WRITE_LBA * 512 / block_size;
                            self.jobs.extend([
                                Job::Read {
                                    lba: 0,
                                    bytes: mib as usize * (1 << 20),
                                    hash: true,
                                },
                                Job::Write {
                                    lba,
                                    data: pattern.clone(),
                                },
                                Job::Verify {
                                    lba,
                                    expect: pattern,
                                },
                            ]);
                        }
                        Stage::Ready(s)
                    }
                    _ => {
                        self.fail("capacity", "reason=bad_data");
                        return;
                    }
                }
            }
            Stage::Ready(s) => {
                self.command_answered(done);
                Stage::Ready(s)
            }
            Stage::Connecting | Stage::Idle => stage,
        };
    }

    /// After SET_CONFIGURATION: what the class driver does first.
    fn configured(&mut self, config: &Configuration) -> Option<Stage> {
        let classes: Vec<String> = config
            .interfaces
            .iter()
            .map(|i| format!("{:02x}", i.class))
            .collect();
        info!(
            "event=demo_configured vm={} configuration={} interfaces={}",
            self.name,
            config.value,
            classes.join(",")
        );
        if let Some(i) = config.interfaces.iter().find(|i| is_bulk_only_scsi(i)) {
            let ep = |is_in: bool| {
                i.endpoints
                    .iter()
                    .find(|e| {
                        e.transfer_type == descriptor::TransferType::Bulk && e.is_in() == is_in
                    })
                    .map(|e| e.number())
            };
            let (Some(bulk_in), Some(bulk_out)) = (ep(true), ep(false)) else {
                self.fail("configured", "reason=no_bulk_endpoints");
                return None;
            };
            let s = Storage {
                bulk_in,
                bulk_out,
                block_size: 0,
            };
            self.command(s, &read_capacity_10(), Direction::In, 8, Vec::new(), false);
            return Some(Stage::Capacity(s));
        }
        let keyboard = config.interfaces.iter().find_map(|i| {
            let e = i
                .endpoints
                .iter()
                .find(|e| e.transfer_type == descriptor::TransferType::Interrupt && e.is_in())?;
            ((i.class, i.subclass, i.protocol) == (3, 1, 1)).then_some(Keyboard {
                interface: i.number,
                endpoint: e.number(),
                interval: e.interval,
                len: e.max_packet_size,
            })
        });
        match keyboard {
            Some(k) => {
                let [lo, hi] = u16::from(k.interface).to_le_bytes();
                // SET_PROTOCOL(boot): the 8-byte report of HID 1.11 appendix B.1.
                self.control(ADDRESS, [0x21, 0x0b, 0, 0, lo, hi, 0, 0]);
                Some(Stage::SetProtocol(k))
            }
            None => {
                info!("event=demo_done vm={} device=other", self.name);
                Some(Stage::Idle)
            }
        }
    }

    fn report(&mut self, k: Keyboard) {
        let mut urb = Urb::new(
            Pipe {
                port: PORT,
                unlink: false,
                direction: Direction::In,
                device: ADDRESS,
                endpoint: k.endpoint,
                transfer_type: TransferType::Interrupt,
            },
            alloc::vec![0; usize::from(k.len)],
        );
        urb.interval = u16::from(k.interval);
        self.submit(urb);
    }

    /// Starts a Bulk-Only command as Linux's usb-storage runs one (BOT 5.3): the CBW, once
    /// it is through the data URBs all at once (the frontend keeps 16 in flight), once they
    /// are all answered the CSW. The stage's handler gets the data URBs' answers and the
    /// CSW's, last.
    ///
    /// Queueing the CSW behind the data is legal USB, but QEMU's usb-storage before its
    /// 2025 rework ("usb/msd: Permit relaxed ordering of IN packets"; Debian's 7.2 here)
    /// loses such a CSW now and then: the command never ends.
    fn command(
        &mut self,
        s: Storage,
        cdb: &[u8],
        direction: Direction,
        len: usize,
        out: Vec<Vec<u8>>,
        discard: bool,
    ) {
        self.tag = self.tag.wrapping_add(1);
        let d = match direction {
            Direction::In => xhci_driver::Direction::In,
            Direction::Out => xhci_driver::Direction::Out,
        };
        let wrapper = cbw(self.tag, len as u32, d, 0, cdb);
        self.bulk(Direction::Out, s.bulk_out, wrapper.to_vec());
        self.command = Some(Command {
            storage: s,
            direction,
            len,
            out,
            discard,
            phase: Phase::Cbw,
            data: Vec::new(),
        });
    }

    /// The CBW or the data phase of the command in progress was answered: the next phase.
    /// Returns the command's answers once its CSW is in.
    fn command_phase(&mut self, done: Vec<Completion>) -> Option<Vec<Completion>> {
        let mut c = self.command.take()?;
        match c.phase {
            Phase::Cbw if c.len > 0 => {
                if c.direction == Direction::Out {
                    for chunk in core::mem::take(&mut c.out) {
                        self.bulk(Direction::Out, c.storage.bulk_out, chunk);
                    }
                } else {
                    let mut at = 0;
                    while at < c.len {
                        let n = CHUNK.min(c.len - at);
                        let mut urb = Urb::new(
                            self.pipe(Direction::In, c.storage.bulk_in),
                            alloc::vec![0; n],
                        );
                        urb.discard_in_data = c.discard;
                        self.submit(urb);
                        at += n;
                    }
                }
                c.phase = Phase::Data;
            }
            Phase::Cbw | Phase::Data => {
                if c.phase == Phase::Data {
                    c.data = done;
                }
                self.bulk(Direction::In, c.storage.bulk_in, alloc::vec![0; CSW_SIZE]);
                c.phase = Phase::Csw;
            }
            Phase::Csw => {
                let mut all = c.data;
                all.extend(done);
                return Some(all);
            }
        }
        self.command = Some(c);
        None
    }

    /// Queues the next command of the running job, or finishes it.
    fn next_command(&mut self, s: Storage) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let total = r.job.bytes();
        if r.done == total {
            let r = self.running.take().expect("running");
            self.finish(r);
            return;
        }
        let len = COMMAND_BYTES.min(total - r.done);
        let bs = s.block_size as usize;
        let lba = r.job.lba() + (r.done / bs) as u32;
        let blocks = (len / bs) as u16;
        r.len = len;
        let (opcode, direction) = match r.job {
            Job::Write { .. } | Job::Fill { .. } => (WRITE_10, Direction::Out),
            _ => (READ_10, Direction::In),
        };
        let done = r.done;
        let out = match &r.job {
            Job::Write { data, .. } => data[done..done + len]
                .chunks(CHUNK)
                .map(<[u8]>::to_vec)
                .collect(),
            Job::Fill { byte, .. } => (0..len.div_ceil(CHUNK))
                .map(|i| alloc::vec![*byte; CHUNK.min(len - i * CHUNK)])
                .collect(),
            _ => Vec::new(),
        };
        let cdb = read_write_10(opcode, lba, blocks);
        // A read that is not hashed does not look at its data.
        let discard = matches!(r.job, Job::Read { hash: false, .. });
        self.command(s, &cdb, direction, len, out, discard);
        if let Some(r) = self.running.as_mut() {
            r.tag = self.tag;
        }
    }

    /// The answers of one command of the running job.
    fn command_answered(&mut self, done: Vec<Completion>) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let status = &done[done.len() - 1].data;
        if let Err(e) = csw(status, r.tag) {
            let job = r.job.name();
            self.fail(job, &format!("error={e}"));
            return;
        }
        let data = &done[..done.len() - 1];
        match &r.job {
            Job::Read { .. } => {
                if let Some(h) = r.hasher.as_mut() {
                    for c in data {
                        h.update(&c.data);
                    }
                }
            }
            Job::Verify { expect, .. } => {
                let mut at = r.done;
                for c in data {
                    r.matched &= expect.get(at..at + c.data.len()) == Some(&c.data[..]);
                    at += c.data.len();
                }
            }
            Job::Write { .. } | Job::Fill { .. } => {}
        }
        let moved: usize = data.iter().map(|c| c.actual_length as usize).sum();
        let (expected, job) = (r.len, r.job.name());
        if moved != expected {
            self.fail(
                job,
                &format!("reason=short_data bytes={moved} expected={expected}"),
            );
            return;
        }
        r.done += expected;
    }

    fn finish(&mut self, r: Running) {
        let micros = (self.clock)().saturating_sub(r.started);
        let sha256 = r.hasher.map(|h| h.finalize().into());
        let matched = matches!(r.job, Job::Verify { .. }).then_some(r.matched);
        let result = JobResult {
            job: r.job.name(),
            bytes: r.job.bytes(),
            micros,
            sha256,
            matched,
        };
        if matches!(self.workload, Workload::Demo { .. }) {
            let extra = match (&result.sha256, result.matched) {
                (Some(h), _) => format!(" sha256={}", hex(h)),
                (_, Some(m)) => format!(" match={m}"),
                _ => String::new(),
            };
            info!(
                "event=demo_{} vm={} lba={} bytes={} us={micros}{extra}",
                result.job,
                self.name,
                r.job.lba(),
                result.bytes
            );
        }
        self.results.push_back(result);
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
                .map_err(|e| format!("frontend of {vm}: {e}"))?;
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

#[cfg(test)]
mod tests;
