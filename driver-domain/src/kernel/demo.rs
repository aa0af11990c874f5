//! Demo mode in the kernel: `driver_domain::demo` (xen::sim with simulated user VMs served by
//! usbback) over the real xHCI driver, stepped by the main loop.

use alloc::vec::Vec;
use driver_domain::cmdline::Cmdline;
use driver_domain::demo::SimPages;
use driver_domain::demo::{Demo, Job, Workload};
use log::{info, warn};
use usbback::host::{Absent, HostEvent, UsbHost};
use xen::page::LocalPage;

use super::{selftest, time, usb};

/// The VMs the demo always has.
const VMS: [&str; 2] = ["vm1", "vm2"];

/// The demo as the main loop runs it.
pub struct DemoRun {
    demo: Demo,
    /// `bench=`: the measurements the demo runs instead of its workload.
    bench: Option<Bench>,
    finished: bool,
    /// When `event=demo_waiting` was last logged.
    logged_at: u64,
}

/// How often where the VMs wait is logged (debug).
const WAITING_LOG_US: u64 = 2_000_000;

/// The bus address of kernel memory at `addr`: the kernel is identity-mapped
/// (`memory.rs`) and no IOMMU sits between the controller and RAM.
fn bus_address(addr: usize) -> u64 {
    addr as u64
}

/// Builds the simulated machine the command line asks for: `vm1`, `vm2` and any other VM
/// `assign=` names, each with a controller and its device.
pub fn start(cmdline: &Cmdline) -> Option<DemoRun> {
    let mut names: Vec<&str> = VMS.to_vec();
    for a in &cmdline.assign {
        if !names.contains(&a.vm.as_str()) {
            names.push(a.vm.as_str());
        }
    }
    let assign: Vec<(&str, &str)> = cmdline
        .assign
        .iter()
        .map(|a| (a.busid.as_str(), a.vm.as_str()))
        .collect();
    let bytes = cmdline.demo_mib as usize * (1 << 20);
    let (workload, bench) = match cmdline.bench_rounds {
        Some(rounds) => (
            Workload::Bench {
                in_flight: cmdline.demo_in_flight,
            },
            Some(Bench {
                rounds,
                bytes,
                in_flight: cmdline.demo_in_flight,
                step: Step::Setup,
                direct: [Vec::new(), Vec::new()],
                ring: [Vec::new(), Vec::new()],
            }),
        ),
        None => (
            Workload::Demo {
                mib: cmdline.demo_mib,
            },
            None,
        ),
    };
    info!(
        "event=demo_start vms={} assignments={} mib={}",
        names.len(),
        assign.len(),
        cmdline.demo_mib
    );
    match Demo::new(&names, &assign, workload, time::now_micros) {
        Ok(mut demo) => {
            demo.set_data_path(cmdline.data_path);
            Some(DemoRun {
                demo,
                bench,
                finished: false,
                logged_at: time::now_micros(),
            })
        }
        Err(e) => {
            warn!("event=demo_start_failed error={e:?}");
            None
        }
    }
}

/// One turn of the demo with the controller's `events`. True when anything moved.
pub fn step(run: &mut DemoRun, mut usb: Option<&mut usb::Usbs>, events: Vec<HostEvent>) -> bool {
    let mut absent = Absent;
    let mut progress = match usb.as_deref_mut() {
        Some(u) => {
            let mut host = SimPages::new(u, bus_address);
            run.demo.step(&mut host, events)
        }
        None => {
            let host: &mut dyn UsbHost<LocalPage> = &mut absent;
            run.demo.step(host, events)
        }
    };
    if let Some(b) = run.bench.as_mut() {
        progress |= b.step(&mut run.demo, usb);
        if !matches!(b.step, Step::Done) {
            return progress;
        }
    }
    let now = time::now_micros();
    if now - run.logged_at > WAITING_LOG_US {
        run.demo.log_waiting();
        run.logged_at = now;
    }
    if run.demo.finish() {
        run.finished = true;
    }
    progress
}

/// Whether every VM is done (`event=demo_finished` was logged).
pub fn finished(run: &DemoRun) -> bool {
    run.finished
}

/// `bench=`: (a) the driver alone and (b) the ring path (frontend, ring, usbback, driver)
/// read, then write, `demo_mib=` MiB of vm1's stick with 16 requests in flight, rounds
/// alternated a, b, a, b…; then 1, 2 and 4 VMs read their own sticks at once.
struct Bench {
    rounds: u32,
    bytes: usize,
    /// URBs of one command's data phase, on both paths.
    in_flight: usize,
    step: Step,
    /// Microseconds per round, [read, write].
    direct: [Vec<u64>; 2],
    ring: [Vec<u64>; 2],
}

enum Step {
    /// The VMs enumerate and configure their sticks.
    Setup,
    /// vm1's ring round runs.
    Ring {
        write: bool,
    },
    /// The first `n` VMs read at once.
    Vms {
        n: usize,
        started: u64,
        left: usize,
    },
    Done,
}

/// MiB/s of `bytes` in `us`.
fn mib_s(bytes: usize, us: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / (us.max(1) as f64 / 1e6)
}

impl Bench {
    fn step(&mut self, demo: &mut Demo, usb: Option<&mut usb::Usbs>) -> bool {
        match self.step {
            Step::Setup => {
                if !demo.all_idle() {
                    return false;
                }
                match (demo.vm("vm1").map(|v| v.ready()), usb) {
                    (Some(true), Some(usb)) => self.next_pair(demo, usb, false),
                    _ => {
                        warn!("event=bench_failed reason=vm1_has_no_configured_stick");
                        self.step = Step::Done;
                    }
                }
                true
            }
            Step::Ring { write } => {
                let Some(r) = demo.vm("vm1").and_then(|v| v.take_result()) else {
                    return false;
                };
                let round = self.ring[usize::from(write)].len();
                let t = demo.take_times();
                info!(
                    "event=bench_round path=ring op={} round={round} bytes={} us={} usbback_requests_us={} usbback_completions_us={} frontends_us={}",
                    r.job, r.bytes, r.micros, t.requests, t.completions, t.frontends
                );
                self.ring[usize::from(write)].push(r.micros);
                match usb {
                    Some(usb) => self.next_pair(demo, usb, write),
                    None => self.step = Step::Done,
                }
                true
            }
            Step::Vms { n, started, left } => {
                let got = demo
                    .vms()
                    .iter_mut()
                    .take(n)
                    .filter_map(|v| v.take_result())
                    .count();
                if got == 0 {
                    return false;
                }
                if got < left {
                    self.step = Step::Vms {
                        n,
                        started,
                        left: left - got,
                    };
                    return true;
                }
                let us = time::now_micros() - started;
                let bytes = n * self.bytes;
                info!(
                    "event=bench_vms vms={n} bytes={bytes} us={us} aggregate_mib_s={:.2}",
                    mib_s(bytes, us)
                );
                self.start_vms(demo, n * 2);
                true
            }
            Step::Done => false,
        }
    }

    /// Round a (direct, run to its end here) then b (vm1's ring job) of `write`, or the
    /// next operation once every round ran.
    fn next_pair(&mut self, demo: &mut Demo, usb: &mut usb::Usbs, write: bool) {
        let op = if write { "write" } else { "read" };
        if self.ring[usize::from(write)].len() as u32 == self.rounds {
            self.summary(demo, write);
            if write {
                self.start_vms(demo, 1);
            } else {
                self.next_pair(demo, usb, true);
            }
            return;
        }
        // The ring round's parts are counted from here (the direct round runs outside the
        // demo's steps).
        demo.take_times();
        let Some(vm) = demo.vm("vm1") else {
            self.step = Step::Done;
            return;
        };
        let (Some(busid), Some(block_size)) =
            (vm.busid().map(alloc::string::String::from), vm.block_size())
        else {
            self.step = Step::Done;
            return;
        };
        // Reads from the start, writes after what is read.
        let lba = if write {
            (self.bytes / block_size as usize) as u32
        } else {
            0
        };
        let round = self.direct[usize::from(write)].len();
        let command = selftest::BenchCommand {
            write,
            lba,
            in_flight: self.in_flight,
        };
        // The direct round runs on the controller the stick is on.
        let Some(usb) = usb::holding(usb, &busid) else {
            warn!("event=bench_failed path=direct op={op} reason=stick_gone busid={busid}");
            self.step = Step::Done;
            return;
        };
        match selftest::bench_direct(usb, &busid, command, self.bytes, block_size) {
            Ok(us) => {
                info!(
                    "event=bench_round path=direct op={op} round={round} bytes={} us={us}",
                    self.bytes
                );
                self.direct[usize::from(write)].push(us);
            }
            Err(e) => {
                warn!("event=bench_failed path=direct op={op} {e}");
                self.step = Step::Done;
                return;
            }
        }
        vm.push(if write {
            Job::Fill {
                lba,
                bytes: self.bytes,
                byte: selftest::BENCH_WRITE_BYTE,
            }
        } else {
            Job::Read {
                lba,
                bytes: self.bytes,
                hash: false,
            }
        });
        self.step = Step::Ring { write };
    }

    /// `event=bench_ratio`: the ring path's throughput over the direct path's, with the
    /// ring-full counts of vm1's frontend and of usbback.
    fn summary(&self, demo: &mut Demo, write: bool) {
        let i = usize::from(write);
        let direct: u64 = self.direct[i].iter().sum();
        let ring: u64 = self.ring[i].iter().sum();
        let bytes = self.bytes * self.ring[i].len();
        let (frontend_full, domid) = demo.vm("vm1").map_or((0, xen::abi::DomId(0)), |v| {
            (v.frontend_stats().ring_full, v.domid())
        });
        let backend_full = demo
            .backend()
            .stats(usbback::DeviceId {
                frontend: domid,
                devid: 0,
            })
            .map_or(0, |s| s.ring_full);
        info!(
            "event=bench_ratio op={} rounds={} bytes_per_round={} in_flight={} direct_us={direct} ring_us={ring} direct_mib_s={:.2} ring_mib_s={:.2} ratio={:.3} ring_full_frontend={frontend_full} ring_full_backend={backend_full}",
            if write { "write" } else { "read" },
            self.ring[i].len(),
            self.bytes,
            self.in_flight,
            mib_s(bytes, direct),
            mib_s(bytes, ring),
            direct as f64 / ring.max(1) as f64,
        );
    }

    /// The first `n` VMs with a configured stick read at once; after 4, the end.
    fn start_vms(&mut self, demo: &mut Demo, n: usize) {
        let ready = demo.vms().iter().take_while(|v| v.ready()).count();
        if n > 4 || n > ready {
            info!("event=bench_done vms_with_sticks={ready}");
            self.step = Step::Done;
            return;
        }
        for vm in demo.vms().iter_mut().take(n) {
            vm.push(Job::Read {
                lba: 0,
                bytes: self.bytes,
                hash: false,
            });
        }
        self.step = Step::Vms {
            n,
            started: time::now_micros(),
            left: n,
        };
    }
}
