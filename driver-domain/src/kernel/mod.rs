//! The kernel: boot order, the main loop, and the panic path.

mod apic;
mod boot;
mod cpu;
#[cfg(feature = "demo")]
mod demo;
mod interrupts;
mod logger;
mod memory;
mod pci;
#[cfg(feature = "demo")]
mod selftest;
mod serial;
mod time;
mod usb;
mod xen_guest;

use core::sync::atomic::{AtomicBool, Ordering};

use driver_domain::cmdline::Cmdline;
#[cfg(feature = "demo")]
use driver_domain::cmdline::UsbTest;
use driver_domain::frames::Range;
use log::{error, info, warn};
use xen::abi::start_info::{
    HvmMemmapTableEntry, HvmStartInfo, XEN_HVM_MEMMAP_TYPE_RAM, XEN_HVM_START_MAGIC_VALUE,
};
use zerocopy::{FromBytes, IntoBytes};

use driver_domain::PhysRead;
use memory::PhysMem;

/// `isa-debug-exit` (QEMU): the boot tests leave QEMU through it.
const QEMU_EXIT_PORT: u16 = 0xf4;
/// Exit value meaning success: QEMU exits with status (0x10 << 1) | 1 = 33.
const QEMU_EXIT_SUCCESS: u32 = 0x10;
/// Exit value meaning failure: status 35.
const QEMU_EXIT_FAILURE: u32 = 0x11;
/// Most memory map entries read.
const MAX_MEMMAP: usize = 128;
/// Grant-window size reserved for later.
const GRANT_WINDOW_SIZE: u64 = 1 << 30;

static QEMU_EXIT: AtomicBool = AtomicBool::new(false);

fn read_struct<T: FromBytes + IntoBytes>(phys: u64) -> Option<T> {
    let mut v = T::new_zeroed();
    PhysMem.read(phys, v.as_mut_bytes()).then_some(v)
}

/// The command line, at most 1 KiB, up to its NUL.
fn read_cmdline(phys: u64, buf: &mut [u8; 1024]) -> &str {
    if phys == 0 || !PhysMem.read(phys, &mut buf[..]) {
        // Near the end of the map a full KiB may not be readable: take what is.
        let mut n = 0;
        while phys != 0
            && n < buf.len()
            && PhysMem.read(phys + n as u64, &mut buf[n..n + 1])
            && buf[n] != 0
        {
            n += 1;
        }
        return core::str::from_utf8(&buf[..n]).unwrap_or("");
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

fn page_range(start: u64, len: u64) -> Range {
    Range {
        start: start / 4096 * 4096,
        end: (start + len).div_ceil(4096) * 4096,
    }
}

#[no_mangle]
extern "C" fn kernel_main(start_info_phys: u32) -> ! {
    cpu::arm_stack_canary();
    let (tsc_hz, tsc_source) = time::init();
    logger::init(log::LevelFilter::Info);

    let si_phys = u64::from(start_info_phys);
    let si: HvmStartInfo = match read_struct::<HvmStartInfo>(si_phys) {
        Some(si) if si.magic == XEN_HVM_START_MAGIC_VALUE => si,
        _ => panic!("no hvm_start_info at {si_phys:#x}: boot through the PVH entry"),
    };
    let mut cmdline_buf = [0u8; 1024];
    let cmdline_text = read_cmdline(si.cmdline_paddr, &mut cmdline_buf);
    let cmdline = Cmdline::parse(cmdline_text);
    log::set_max_level(cmdline.log_level);
    QEMU_EXIT.store(cmdline.qemu_exit, Ordering::Relaxed);
    let xen = xen_guest::detect();
    // Xen HVM runs a device model (QEMU with its COM1); a PVH domU has no emulated devices.
    let platform = match (xen, logger::com1_present()) {
        (Some(_), true) => "xen-hvm",
        (Some(_), false) => "xen-pvh",
        (None, _) => "native",
    };
    info!(
        "event=boot image=usbdom version={} platform={platform} start_info={si_phys:#x} start_info_version={} cmdline={cmdline_text:?} tsc_hz={tsc_hz} tsc_source={}",
        env!("CARGO_PKG_VERSION"),
        si.version,
        tsc_source.name()
    );
    if cmdline.bad_log_level {
        warn!("event=cmdline_bad_value key=loglevel expected=error|warn|info|debug|trace");
    }
    if cmdline.bad_assign {
        warn!("event=cmdline_bad_value key=assign expected=busid:vm,busid:vm");
    }
    for word in &cmdline.unknown {
        warn!("event=cmdline_unknown word={word:?}");
    }

    // Memory: the map, minus the first MiB, the image and what the start info points at.
    if si.memmap_paddr == 0 || si.memmap_entries == 0 {
        panic!("the start info has no memory map (version {})", si.version);
    }
    let entries = (si.memmap_entries as usize).min(MAX_MEMMAP);
    let mut ram: heapless::Vec<Range, MAX_MEMMAP> = heapless::Vec::new();
    let mut occupied: heapless::Vec<Range, { MAX_MEMMAP + pci::MAX_BARS }> = heapless::Vec::new();
    for i in 0..entries {
        let at = si.memmap_paddr + (i * core::mem::size_of::<HvmMemmapTableEntry>()) as u64;
        let Some(e) = read_struct::<HvmMemmapTableEntry>(at) else {
            continue;
        };
        info!(
            "event=memmap addr={:#x} size={:#x} type={}",
            e.addr, e.size, e.entry_type
        );
        if e.entry_type == XEN_HVM_MEMMAP_TYPE_RAM {
            let _ = ram.push(Range {
                start: e.addr,
                end: e.addr.saturating_add(e.size),
            });
        }
    }
    let reserved = [
        Range {
            start: 0,
            end: 1 << 20,
        },
        memory::image(),
        page_range(si_phys, core::mem::size_of::<HvmStartInfo>() as u64),
        page_range(
            si.memmap_paddr,
            (entries * core::mem::size_of::<HvmMemmapTableEntry>()) as u64,
        ),
        page_range(si.cmdline_paddr, 1024),
    ];
    let (free, heap, dropped) = memory::init(ram.iter().copied(), &reserved);
    info!(
        "event=memory ram_mib={} free_mib={} heap_kib={} image={:#x}-{:#x} dropped={dropped}",
        ram.iter().map(|r| r.end - r.start).sum::<u64>() >> 20,
        free >> 20,
        heap >> 10,
        reserved[1].start,
        reserved[1].end
    );
    let dma =
        memory::dma_alloc(64 * 1024, 64 * 1024, true).expect("64 KiB of DMA memory below 4 GiB");
    info!(
        "event=dma_check phys={:#x} len={:#x} below_4g={}",
        dma.phys,
        dma.len,
        dma.phys + dma.len <= 1 << 32
    );
    memory::dma_free(dma);

    // Interrupts: IDT, local APIC, a 100 Hz timer.
    interrupts::init();
    apic::init();
    let timer_hz = apic::start_timer(100);
    cpu::enable_interrupts();
    info!(
        "event=interrupts apic={} apic_id={} timer_input_hz={timer_hz} tick_hz=100",
        apic::mode(),
        apic::id()
    );

    // PCI: find and take over the xHCI controllers.
    let mut cfg = pci::config_access(si.rsdp_paddr);
    let (xhci, bars) = pci::probe(&mut cfg);
    occupied.extend(bars);
    let usb = Some(usb::bring_up_all(&xhci)).filter(|u| !u.is_empty());
    let window = driver_domain::frames::grant_window(&occupied, GRANT_WINDOW_SIZE);
    match window {
        Some(base) => info!("event=grant_window base={base:#x} size={GRANT_WINDOW_SIZE:#x}"),
        None => warn!("event=grant_window_missing size={GRANT_WINDOW_SIZE:#x}"),
    }

    // Xen: hypercalls, events, console, xenstore.
    let xen = match (xen, window) {
        (Some(detected), Some(base)) => {
            match xen_guest::init(detected, (base, GRANT_WINDOW_SIZE)) {
                Ok(x) => {
                    info!(
                        "event=xen version={}.{} domid={} callback_vector={:#x}",
                        x.detected.version.0, x.detected.version.1, x.domid, x.vector
                    );
                    Some(x)
                }
                Err(e) => panic!("Xen setup failed: {} (rc {})", e.0, e.1),
            }
        }
        _ => None,
    };
    // Demo mode (no hypervisor, or `demo`): xen::sim in here with simulated VMs instead of
    // serving Xen's; not beside a self-test, which owns the driver. Only an image built with
    // the `demo` feature has it (and the self-tests).
    let demo_mode =
        cfg!(feature = "demo") && cmdline.usb_test.is_none() && (xen.is_none() || cmdline.demo);
    if !cfg!(feature = "demo") && (cmdline.demo || cmdline.usb_test.is_some()) {
        warn!("event=cmdline_needs_demo_image words=demo,usbtest image=usbdom-demo.elf");
    }
    // The PVUSB backend, on Xen.
    let mut backend = xen.filter(|_| !demo_mode).map(|x| {
        let domid = x.domid;
        let mut store = xen::xenstore::XenStore::new(xen_guest::StoreTransport::new(&x));
        match store.read_string(xen::xenstore::TxId::NONE, "domid") {
            Ok(d) => info!("event=xenstore domid={d}"),
            Err(e) => warn!("event=xenstore_error op=read key=domid error={e}"),
        }
        let mut backend = match usbback::Backend::new(x, store, domid) {
            Ok(b) => b,
            Err(e) => panic!("xenstore: cannot watch the backend directory: {e}"),
        };
        backend.set_policy(policy(&cmdline));
        backend.set_data_path(cmdline.data_path);
        // The bounce frames come from the memory left after boot, less what the controllers'
        // driver keeps for the devices plugged in later (their contexts and rings).
        let spare = memory::free_bytes().saturating_sub(DRIVER_RESERVE_BYTES);
        backend.set_bounce_frames((spare / xen::abi::PAGE_SIZE as u64) as usize);
        backend
    });

    // Prove the timer interrupt is delivered: wait (in hlt) for five ticks.
    let start = apic::ticks();
    let deadline = time::deadline(1_000_000);
    while apic::ticks() < start + 5 && time::now_micros() < deadline {
        cpu::enable_and_halt();
    }
    let ticks = apic::ticks() - start;
    if ticks < 5 {
        panic!("timer interrupts not delivered: {ticks} ticks in 1 s");
    }
    info!("event=timer_ok ticks={ticks}");

    // The first controller's place and vector; every controller's interrupts.
    match xhci.first() {
        Some(x) => info!(
            "event=ready uptime_us={} xhci={} xhci_vector={:#x} xhci_interrupts={} xhci_controllers={} usb_controllers={}",
            time::now_micros(),
            x.bdf,
            x.vector.unwrap_or(0),
            pci::all_xhci_interrupts(),
            xhci.len(),
            usb.as_ref().map_or(0, |u| u.len())
        ),
        None => info!(
            "event=ready uptime_us={} xhci=none xhci_controllers=0 usb_controllers=0",
            time::now_micros()
        ),
    }
    // After `event=ready`, so the boot time stays what it is; before `qemu_exit`, so a test
    // run ends when the self-test has.
    #[cfg(feature = "demo")]
    let mut usb = usb;
    #[cfg(feature = "demo")]
    // The self-tests drive the first controller.
    match (cmdline.usb_test, usb.as_mut().and_then(|u| u.member(0))) {
        (Some(UsbTest::Storage), Some(u)) => selftest::self_test_storage(u),
        (Some(UsbTest::Keyboard), Some(u)) => selftest::self_test_keyboard(u),
        (Some(UsbTest::Hotplug), Some(u)) => selftest::self_test_hotplug(u),
        (Some(UsbTest::Audio), Some(u)) => selftest::self_test_audio(u),
        (Some(UsbTest::ControllerError), Some(u)) => selftest::self_test_controller_error(u),
        (Some(_), None) => warn!("event=usbtest step=find error=no_controller"),
        (None, _) => {}
    }
    #[cfg(feature = "demo")]
    let demo = if demo_mode {
        demo::start(&cmdline)
    } else {
        None
    };
    #[cfg(not(feature = "demo"))]
    let demo = None;
    // With the demo, `qemu_exit` waits for it to finish.
    if QEMU_EXIT.load(Ordering::Relaxed) && demo.is_none() {
        cpu::outl(QEMU_EXIT_PORT, QEMU_EXIT_SUCCESS);
    }
    main_loop(backend.as_mut(), usb, demo)
}

/// A demo running in this image; none can in an image without the `demo` feature.
#[cfg(feature = "demo")]
type DemoRun = demo::DemoRun;
#[cfg(not(feature = "demo"))]
enum DemoRun {}

/// One turn of the demo with the controller's `events`: true when anything moved. Once it
/// finished, `qemu_exit` ends QEMU.
#[cfg(feature = "demo")]
fn demo_turn(
    d: &mut DemoRun,
    usb: Option<&mut usb::Usbs>,
    events: alloc::vec::Vec<usbback::host::HostEvent>,
) -> bool {
    let busy = demo::step(d, usb, events);
    if demo::finished(d) && QEMU_EXIT.load(Ordering::Relaxed) {
        cpu::outl(QEMU_EXIT_PORT, QEMU_EXIT_SUCCESS);
    }
    busy
}

#[cfg(not(feature = "demo"))]
fn demo_turn(
    d: &mut DemoRun,
    _: Option<&mut usb::Usbs>,
    _: alloc::vec::Vec<usbback::host::HostEvent>,
) -> bool {
    match *d {}
}

/// Waits for interrupts and serves what they brought: xHCI events, xenstore watch events
/// and frontend notifications. Pending Xen events are looked for with interrupts off, so one
/// that arrives between the look and the `hlt` still wakes it; an xHCI interrupt in that gap
/// is served at the next timer tick at the latest.
fn main_loop(
    mut backend: Option<&mut Backend>,
    mut usb: Option<usb::Usbs>,
    mut demo: Option<DemoRun>,
) -> ! {
    use xen::hypervisor::EventChannels;
    // Without a controller (a PVH domU cannot be given one) usbback still serves, with no
    // device on any port.
    let mut absent = usbback::host::Absent;
    let mut stats_at = time::now_micros();
    // Where the CPU went since the last stats: halted, and how often it woke.
    let (mut halted_us, mut wakeups) = (0u64, 0u64);
    // And where the busy part of it went, by step of the turn.
    let mut steps = Steps::default();
    let mut ports: alloc::vec::Vec<xen::abi::EvtchnPort> = alloc::vec::Vec::new();
    loop {
        let mut at = time::now_micros();
        let mut events = usb.as_mut().map(usb::service).unwrap_or_default();
        steps.usb += lap(&mut at);
        // The simulated VMs move on as far as they can; the loop comes back at once while
        // they do, and sleeps until the next interrupt when they wait for the controller.
        let mut demo_busy = false;
        if let Some(d) = demo.as_mut() {
            demo_busy = demo_turn(d, usb.as_mut(), events);
        } else if let Some(be) = backend.as_deref_mut() {
            let host: &mut dyn usbback::host::UsbHost<GrantPage> = match usb.as_mut() {
                Some(u) => u,
                None => &mut absent,
            };
            be.host_events(host, &mut events);
            steps.answer += lap(&mut at);
            if let Err(e) = be.poll_xenstore(host) {
                warn!("event=xenstore_error op=poll error={e}");
            }
            be.publish_inventory();
            steps.xenstore += lap(&mut at);
            let now = time::now_micros();
            if now - stats_at >= STATS_INTERVAL_US {
                let served = be.log_stats();
                let interval = now - stats_at;
                let busy = interval.saturating_sub(halted_us);
                let [calls, calls_us, grant_ops, grant_us, grant_entries, notifications] =
                    xen_guest::take_hypercall_times();
                let moved = be.take_moved();
                // Only for a second in which guests moved data: an idle one (timer ticks,
                // xenstore) is not worth a line on a slow serial port.
                if served {
                    info!(
                        target: usbback::PERIODIC_TARGET,
                        "event=cpu interval_us={interval} busy_us={busy} busy_pct={} wakeups={wakeups} hypercalls={calls} hypercall_us={calls_us} grant_ops={grant_ops} grant_op_us={grant_us} grant_entries={grant_entries} notifications={notifications} urbs={} bytes_in={} bytes_out={} ring_full={} usb_us={} answer_us={} xenstore_us={} log_us={} serve_us={}",
                        busy * 100 / interval,
                        moved.completed + moved.errors,
                        moved.bytes_in,
                        moved.bytes - moved.bytes_in,
                        moved.ring_full,
                        steps.usb,
                        steps.answer,
                        steps.xenstore,
                        steps.log,
                        steps.serve
                    );
                }
                stats_at = now;
                (halted_us, wakeups, steps) = (0, 0, Steps::default());
            }
        }
        logger::flush_console();
        cpu::check_stack_canary();
        steps.log += lap(&mut at);
        // Work that arrived while the loop ran is looked for with interrupts off, so an
        // interrupt after the look still wakes the `hlt` (`sti; hlt` takes it only after
        // the `hlt` began).
        cpu::disable_interrupts();
        // Every pending port, however many: a pending bit is cleared as it is taken.
        ports.clear();
        let mut backend_busy = false;
        if let Some(be) = backend.as_deref_mut() {
            be.hypervisor().take_pending(&mut |p| ports.push(p));
            backend_busy = be.has_work();
        }
        if ports.is_empty()
            && !demo_busy
            && !backend_busy
            && !usb.as_mut().is_some_and(usb::any_work)
        {
            // COM1 gets a few bytes when nothing else waits: each one traps to the UART's
            // emulator. Then the loop looks for work again before it sleeps.
            if logger::serial_due() {
                cpu::enable_interrupts();
                logger::drain_serial(SERIAL_BYTES_PER_TURN);
                steps.log += lap(&mut at);
                continue;
            }
            let before = time::now_micros();
            cpu::enable_and_halt();
            halted_us += time::now_micros() - before;
            wakeups += 1;
            continue;
        }
        cpu::enable_interrupts();
        if let Some(be) = backend.as_deref_mut() {
            let host: &mut dyn usbback::host::UsbHost<GrantPage> = match usb.as_mut() {
                Some(u) => u,
                None => &mut absent,
            };
            at = time::now_micros();
            for &p in &ports {
                be.handle_event(p, host);
            }
            // Frontends whose budget ran out get their next turn after every other
            // frontend's and the controller's.
            be.serve_busy(host);
            steps.serve += lap(&mut at);
        }
    }
}

/// Microseconds a main-loop turn spent in each step, for `event=cpu`: the controller's
/// events (`usb`), answering what completed (`answer`: copies out, responses,
/// notifications), xenstore, the log (stats lines and COM1), and serving the frontends'
/// rings (`serve`: copies in, queueing to the controller). What busy time is in none of
/// them went to interrupts and the loop itself.
#[derive(Default)]
struct Steps {
    usb: u64,
    answer: u64,
    xenstore: u64,
    log: u64,
    serve: u64,
}

/// The microseconds since `*at`, which becomes now.
fn lap(at: &mut u64) -> u64 {
    let now = time::now_micros();
    let since = now.saturating_sub(*at);
    *at = now;
    since
}

/// The device policy the command line gives. One that cannot be parsed denies every
/// device (a policy is a security setting: it fails closed) and says why.
fn policy(cmdline: &Cmdline) -> usbback::policy::Policy {
    use usbback::policy::{Policy, Rule};
    let deny_all = || Policy {
        rules: alloc::vec![Rule::default()],
    };
    if cmdline.policy_too_long {
        error!(
            "event=usb_policy_invalid reason=too_long max_bytes={} effect=deny_all",
            driver_domain::cmdline::MAX_POLICY
        );
        return deny_all();
    }
    match cmdline.usb_policy.as_deref().map(Policy::parse) {
        None => Policy::default(),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            error!("event=usb_policy_invalid {e} effect=deny_all");
            deny_all()
        }
    }
}

/// Bytes of queued log moved to COM1 per idle main-loop turn (within COM1's share of the
/// time, `logger::drain_serial`): about 16 traps to dom0's device model, some 16 ms under
/// nested virtualisation, microseconds on hardware.
const SERIAL_BYTES_PER_TURN: usize = 16;

/// Frame memory the bounce pool leaves to the xHCI driver: a device's contexts, endpoint
/// rings and buffers take some pages each (given back when it leaves), so 2 MiB serves tens
/// of devices at once.
const DRIVER_RESERVE_BYTES: u64 = 2 << 20;

/// How often the frontends' counters are logged when they changed (`event=stats`).
const STATS_INTERVAL_US: u64 = 1_000_000;

/// The pages usbback maps for frontends.
type GrantPage = <xen_guest::Xen as xen::hypervisor::GrantMapper>::Page;

type Backend = usbback::Backend<xen_guest::Xen, xen_guest::StoreTransport>;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cpu::disable_interrupts();
    let (file, line) = info.location().map_or(("?", 0), |l| (l.file(), l.line()));
    logger::emergency(format_args!(
        "event=panic location={file}:{line} message=\"{}\"",
        info.message()
    ));
    if QEMU_EXIT.load(Ordering::Relaxed) {
        cpu::outl(QEMU_EXIT_PORT, QEMU_EXIT_FAILURE);
    }
    cpu::halt_forever()
}
