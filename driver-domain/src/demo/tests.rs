//! The demo's VMs against usbback's simulated devices: a stick read, hashed, written and
//! read back; a keyboard's reports; a VM with nothing assigned.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use testkit::sim_host::{Keyboard, MassStorage, SimHost};
use usb::Speed;

static NOW: AtomicU64 = AtomicU64::new(0);

fn clock() -> u64 {
    NOW.fetch_add(1, Ordering::Relaxed)
}

/// Steps until nothing moves any more.
fn run(demo: &mut Demo, host: &mut SimHost<LocalPage>) {
    for _ in 0..10_000 {
        let mut events = Vec::new();
        host.poll(&mut events);
        let moved = demo.step(host, events);
        if !moved && host.in_flight() == 0 && demo.all_idle() {
            return;
        }
    }
    panic!("the demo did not settle");
}

#[test]
fn a_stick_is_read_hashed_written_and_read_back_and_a_keyboard_reports() {
    let mut host: SimHost<LocalPage> = SimHost::new();
    // 16 MiB of pseudo-random bytes.
    let mut stick = MassStorage::new(32768);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in stick.disk_mut().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes());
    }
    let expected: [u8; 32] = Sha256::digest(&stick.disk()[..2 << 20]).into();
    let stick = host.plug(Box::new(stick), "2-1", Speed::Super);
    let mut kbd = Keyboard::new();
    for k in [4, 5, 6] {
        kbd.press(0, &[k]);
    }
    host.plug(Box::new(kbd), "1-2", Speed::High);
    let mut demo = Demo::new(
        &["vm1", "vm2", "vm3"],
        &[("2-1", "vm1"), ("1-2", "vm2")],
        Workload::Demo { mib: 2 },
        clock,
    )
    .unwrap();
    run(&mut demo, &mut host);
    assert!(demo.finish());
    let vm1 = demo.vm("vm1").unwrap();
    assert!(!vm1.failed() && vm1.protocol_error().is_none());
    let results: Vec<JobResult> = core::iter::from_fn(|| vm1.take_result()).collect();
    assert_eq!(
        results.iter().map(|r| r.job).collect::<Vec<_>>(),
        ["read", "write", "verify"]
    );
    assert_eq!(results[0].bytes, 2 << 20);
    assert_eq!(results[0].sha256, Some(expected));
    assert_eq!(results[2].matched, Some(true));
    // Each data phase is 16 URBs: exactly the ring, never more.
    assert_eq!(vm1.frontend_stats().ring_full, 0);
    let disk = host.model::<MassStorage>(stick).unwrap().disk();
    let at = WRITE_LBA as usize * 512;
    assert_eq!(&disk[at..at + WRITE_BYTES], &write_pattern("vm1")[..]);
    assert!(!demo.vm("vm2").unwrap().failed());
    assert!(!demo.vm("vm3").unwrap().failed());
    assert_eq!(demo.backend().in_flight(), 0);
    assert_eq!(host.in_flight(), 0);
}

#[test]
fn bench_vms_configure_and_wait_for_jobs() {
    let mut host: SimHost<LocalPage> = SimHost::new();
    let stick = host.plug(Box::new(MassStorage::new(4096)), "2-1", Speed::Super);
    let mut demo = Demo::new(
        &["vm1"],
        &[("2-1", "vm1")],
        Workload::Bench {
            in_flight: IN_FLIGHT,
        },
        clock,
    )
    .unwrap();
    run(&mut demo, &mut host);
    let vm = demo.vm("vm1").unwrap();
    assert!(vm.ready() && vm.take_result().is_none());
    vm.push(Job::Fill {
        lba: 0,
        bytes: COMMAND_BYTES * 2 + CHUNK,
        byte: 7,
    });
    vm.push(Job::Read {
        lba: 0,
        bytes: COMMAND_BYTES * 2,
        hash: false,
    });
    run(&mut demo, &mut host);
    let vm = demo.vm("vm1").unwrap();
    let w = vm.take_result().unwrap();
    let r = vm.take_result().unwrap();
    assert_eq!((w.job, w.bytes), ("write", COMMAND_BYTES * 2 + CHUNK));
    assert_eq!(
        (r.job, r.bytes, r.sha256),
        ("read", COMMAND_BYTES * 2, None)
    );
    assert!(w.micros > 0 && vm.ready());
    let disk = host.model::<MassStorage>(stick).unwrap().disk();
    assert!(disk[..COMMAND_BYTES * 2 + CHUNK].iter().all(|&b| b == 7));
    assert_eq!(disk[COMMAND_BYTES * 2 + CHUNK], 0);
}
