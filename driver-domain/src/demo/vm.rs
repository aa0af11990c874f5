//! A simulated user VM of the demo: its frontend, the device it was given, and the Linux
//! guest's steps with it (enumeration, then Bulk-Only SCSI commands or keyboard reports),
//! one at a time, none blocking.

use usb::hid;

use super::*;

/// Where a VM's device is in its life as the guest sees it.
#[derive(Clone, Debug)]
pub(super) enum Stage {
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
    pub(super) fn name(&self) -> &'static str {
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
pub(super) struct Storage {
    pub(super) bulk_in: u8,
    pub(super) bulk_out: u8,
    pub(super) block_size: u32,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Keyboard {
    pub(super) interface: u8,
    pub(super) endpoint: u8,
    pub(super) interval: u8,
    pub(super) len: u16,
}

/// The phases of a Bulk-Only command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Cbw,
    Data,
    Csw,
}

/// A Bulk-Only command in progress.
pub(super) struct Command {
    pub(super) storage: Storage,
    pub(super) direction: Direction,
    pub(super) len: usize,
    /// OUT: the data, one buffer per URB.
    pub(super) out: Vec<Vec<u8>>,
    /// IN: the data is not looked at ([`Urb::discard_in_data`]).
    pub(super) discard: bool,
    pub(super) phase: Phase,
    /// The data URBs' answers, once in.
    pub(super) data: Vec<Completion>,
}

/// The job being run: its current command and what it has found.
pub(super) struct Running {
    pub(super) job: Job,
    pub(super) started: u64,
    /// Bytes of the job done by finished commands.
    pub(super) done: usize,
    /// Bytes of the current command.
    pub(super) len: usize,
    pub(super) tag: u32,
    pub(super) hasher: Option<Sha256>,
    pub(super) matched: bool,
}

/// One simulated user VM with its frontend.
pub struct Vm {
    pub(super) name: String,
    pub(super) domid: DomId,
    pub(super) fe: Fe,
    pub(super) busid: Option<String>,
    pub(super) workload: Workload,
    pub(super) stage: Stage,
    /// URBs of the current step, in submission order, and those answered.
    pub(super) batch: Vec<UrbHandle>,
    pub(super) arrived: Vec<Completion>,
    pub(super) jobs: VecDeque<Job>,
    pub(super) running: Option<Running>,
    pub(super) results: VecDeque<JobResult>,
    pub(super) tag: u32,
    /// The Bulk-Only command in progress.
    pub(super) command: Option<Command>,
    /// A step failed: named in the log, the VM idles.
    pub(super) failed: bool,
    pub(super) clock: fn() -> u64,
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

    pub(super) fn fail(&mut self, step: &str, why: &str) {
        warn!("event=demo_failed vm={} step={step} {why}", self.name);
        self.failed = true;
        self.stage = Stage::Idle;
        self.running = None;
        self.command = None;
        self.jobs.clear();
    }

    pub(super) fn submit(&mut self, urb: Urb) {
        match self.fe.submit(urb) {
            Ok(h) => self.batch.push(h),
            Err(e) => self.fail("submit", &format!("{e}")),
        }
    }

    pub(super) fn control(&mut self, device: u8, setup: [u8; 8]) {
        self.submit(Urb::control(PORT, device, setup, Vec::new()));
    }

    pub(super) fn pipe(&self, direction: Direction, endpoint: u8) -> Pipe {
        Pipe {
            port: PORT,
            unlink: false,
            direction,
            device: ADDRESS,
            endpoint,
            transfer_type: TransferType::Bulk,
        }
    }

    pub(super) fn bulk(&mut self, direction: Direction, endpoint: u8, buffer: Vec<u8>) {
        self.submit(Urb::new(self.pipe(direction, endpoint), buffer));
    }

    /// Moves on; true when anything happened.
    pub(super) fn step(&mut self) -> bool {
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
    pub(super) fn start_next(&mut self) -> bool {
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
    pub(super) fn answered(&mut self, done: Vec<Completion>) {
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
                self.control(
                    ADDRESS,
                    [0x21, hid::SET_IDLE, 0, KEYBOARD_IDLE, lo, hi, 0, 0],
                );
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
    pub(super) fn configured(&mut self, config: &Configuration) -> Option<Stage> {
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
                    .find(|e| e.transfer_type == TransferType::Bulk && e.is_in() == is_in)
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
                .find(|e| e.transfer_type == TransferType::Interrupt && e.is_in())?;
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
                self.control(ADDRESS, [0x21, hid::SET_PROTOCOL, 0, 0, lo, hi, 0, 0]);
                Some(Stage::SetProtocol(k))
            }
            None => {
                info!("event=demo_done vm={} device=other", self.name);
                Some(Stage::Idle)
            }
        }
    }

    pub(super) fn report(&mut self, k: Keyboard) {
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
    pub(super) fn command(
        &mut self,
        s: Storage,
        cdb: &[u8],
        direction: Direction,
        len: usize,
        out: Vec<Vec<u8>>,
        discard: bool,
    ) {
        self.tag = self.tag.wrapping_add(1);
        let wrapper = cbw(self.tag, len as u32, direction, 0, cdb);
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
    pub(super) fn command_phase(&mut self, done: Vec<Completion>) -> Option<Vec<Completion>> {
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
    pub(super) fn next_command(&mut self, s: Storage) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let total = r.job.bytes();
        if r.done == total {
            let r = self.running.take().expect("running");
            self.finish(r);
            return;
        }
        let len = (CHUNK * self.workload.in_flight()).min(total - r.done);
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
    pub(super) fn command_answered(&mut self, done: Vec<Completion>) {
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

    pub(super) fn finish(&mut self, r: Running) {
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
