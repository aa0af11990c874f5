//! Demo mode in the kernel: `platform::demo` (xen::sim with simulated user VMs served by
//! usbback) over the real xHCI driver, stepped by the main loop.

use alloc::vec::Vec;
use log::{info, warn};
use platform::cmdline::Cmdline;
use platform::demo::{Demo, Workload};
use platform::host::SimPages;
use usbback::host::{Absent, HostEvent, UsbHost};
use xen::page::LocalPage;

use super::{time, usb};

/// The VMs the demo always has.
const VMS: [&str; 2] = ["vm1", "vm2"];

/// The demo as the main loop runs it.
pub struct DemoRun {
    demo: Demo,
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
    let workload = Workload::Demo {
        mib: cmdline.demo_mib,
    };
    info!(
        "event=demo_start vms={} assignments={} mib={}",
        names.len(),
        assign.len(),
        cmdline.demo_mib
    );
    match Demo::new(&names, &assign, workload, time::now_micros) {
        Ok(demo) => Some(DemoRun {
            demo,
            finished: false,
            logged_at: time::now_micros(),
        }),
        Err(e) => {
            warn!("event=demo_start_failed error={e:?}");
            None
        }
    }
}

/// One turn of the demo with the controller's `events`. True when anything moved.
pub fn step(run: &mut DemoRun, usb: Option<&mut usb::Usb>, events: Vec<HostEvent>) -> bool {
    let mut absent = Absent;
    let progress = match usb {
        Some(u) => {
            let mut host = SimPages::new(u.host(), bus_address);
            run.demo.step(&mut host, events)
        }
        None => {
            let host: &mut dyn UsbHost<LocalPage> = &mut absent;
            run.demo.step(host, events)
        }
    };
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
