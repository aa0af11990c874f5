//! The `usbtest=` self-tests: the xHCI driver alone against the devices QEMU gives it
//! (storage, keyboard, hot-plug read loops, isochronous audio, a failing controller), and
//! the direct path `cargo xtask bench qemu` measures the ring path against.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use driver_domain::Mmio32;
use log::{info, warn};
use usb::{request_type, Direction, IsoPacket, TransferType};
use usbback::host::HostEvent;

use driver_domain::selftest::{storage_pattern, STORAGE_PATTERN_LBA, STORAGE_PATTERN_SIZE};
use usb::mass_storage::{
    cbw, inquiry, read_capacity_10, read_write_10, CBW_SIZE, CSW_SIZE, READ_10, WRITE_10,
};
use xhci_driver::mass_storage::{
    capacity, csw, inquiry_vendor, is_bulk_only_scsi, BulkOnly, StorageError,
};
use xhci_driver::{
    Configuration, Controller, DmaBuffer, DmaSegment, Interface, TransferId, UsbDevice,
};

use super::time;
use super::usb::{KernelDma, KernelHal, Usb};

mod hotplug;
mod keyboard;

pub use hotplug::self_test_hotplug;
use hotplug::{start_loop, step_loops, StorageLoop};
pub use keyboard::self_test_keyboard;
use keyboard::{keyboard_reports, Keyboard};

impl Usb {
    /// The driver underneath.
    fn xhci(&mut self) -> &mut Controller<KernelHal> {
        self.host.controller()
    }

    /// The devices present now.
    fn devices(&self) -> Vec<UsbDevice> {
        self.host.usb_devices().cloned().collect()
    }
}

/// What the self-tests keep between turns of the main loop.
#[derive(Default)]
pub struct SelfTests {
    /// The keyboard `usbtest=keyboard` listens to.
    keyboard: Option<Keyboard>,
    /// `usbtest=hotplug`: every mass-storage device that arrives gets a read loop.
    hotplug: bool,
    /// The read loops running.
    loops: Vec<StorageLoop>,
    /// `usbtest=controller-error`: run the storage test again once the controller restarted.
    storage_after_restart: bool,
}

impl SelfTests {
    /// The controller was reset: the tests' transfers failed and their buffers are free.
    pub fn controller_restarted(&mut self) {
        self.keyboard = None;
        self.loops.clear();
    }

    /// The controller is given up on: it may still write into the tests' buffers, which
    /// must never be reused.
    pub fn controller_dead(&mut self) {
        core::mem::forget(self.keyboard.take());
        core::mem::forget(core::mem::take(&mut self.loops));
    }
}

/// After the controller's events were taken (`restarts`: its restart count before): a
/// restarted controller failed the tests' transfers and their buffers are free; one given
/// up on may still write into them, and they are never reused.
pub fn controller_polled(usb: &mut Usb, restarts: u64) {
    if usb.host.restarts() != restarts {
        usb.tests.controller_restarted();
    }
    if usb.host.is_dead() {
        usb.tests.controller_dead();
    }
}

/// The self-tests' turn after the controller's `events` (`restarts`: its restart count
/// before them): keyboard reports, read loops moved on (one started on each mass-storage
/// device that arrived, under `usbtest=hotplug`), and the storage test again once a failed
/// controller came back.
pub fn after_events(usb: &mut Usb, restarts: u64, events: &[HostEvent]) {
    let restarted = usb.host.restarts() != restarts;
    let attached: Vec<UsbDevice> = events
        .iter()
        .filter_map(|e| match e {
            HostEvent::Attached(info) => usb.host.usb_device(info.id).cloned(),
            HostEvent::Detached { .. } | HostEvent::Completed(_) => None,
        })
        .collect();
    keyboard_reports(usb);
    step_loops(usb);
    if usb.tests.hotplug {
        for d in &attached {
            start_loop(usb, d);
        }
    }
    if restarted && core::mem::take(&mut usb.tests.storage_after_restart) {
        info!(
            "event=usbtest_controller_error recovered=true devices={}",
            usb.host.usb_devices().count()
        );
        self_test_storage(usb);
    }
}

/// A 64 KiB READ(10) of the throughput probe may take this long.
const DATA_TIMEOUT_US: u64 = 2_000_000;
/// The throughput probe reads this much.
const BENCH_BYTES: usize = 4 << 20;
/// In 64 KiB commands.
const BENCH_CHUNK: usize = 64 << 10;

/// `usbtest=storage`: configures the first mass-storage device (SCSI over Bulk-Only
/// Transport), INQUIRY, READ CAPACITY(10), WRITE(10) of the self-test pattern at LBA 8,
/// READ(10) back and compare (`event=usbtest_storage`), then a 4 MiB read in 64 KiB
/// READ(10)s, one at a time (`event=bench`), then a READ(10) past the end, which must fail
/// without breaking the next command (`event=usbtest_storage_past_end`).
pub fn self_test_storage(usb: &mut Usb) {
    let found = usb.devices().into_iter().find_map(|d| {
        let config = usb.xhci().configuration(d.slot_id).ok()?;
        let i = config
            .interfaces
            .iter()
            .find(|i| is_bulk_only_scsi(i))?
            .clone();
        Some((d.slot_id, config, i))
    });
    let Some((slot_id, config, interface)) = found else {
        warn!("event=usbtest_storage step=find error=no_mass_storage_device");
        return;
    };
    if let Err((step, e)) = storage(usb, slot_id, &config, &interface) {
        warn!("event=usbtest_storage slot={slot_id} step={step} error={e}");
    }
}

fn storage(
    usb: &mut Usb,
    slot_id: u8,
    config: &Configuration,
    interface: &Interface,
) -> Result<(), (&'static str, StorageError)> {
    let xhci = usb.host.controller();
    xhci.configure(slot_id, config)
        .map_err(|e| ("configure", e.into()))?;
    let mut bot = BulkOnly::new(xhci, slot_id, interface).map_err(|e| ("bot", e.into()))?;
    let mut buf = xhci
        .dma_alloc(BENCH_CHUNK, 4096)
        .map_err(|e| ("dma", e.into()))?;
    let result = exercise(xhci, &mut bot, slot_id, &mut buf);
    if let Err((_, StorageError::Usb(_))) = result {
        // A transfer the controller could not be made to give back may still reach the
        // buffer: it is never reused.
        core::mem::forget(buf);
    }
    result
}

fn exercise(
    xhci: &mut Controller<KernelHal>,
    bot: &mut BulkOnly<KernelDma>,
    slot_id: u8,
    buf: &mut KernelDma,
) -> Result<(), (&'static str, StorageError)> {
    let phys = buf.phys();
    let all = |len: usize| [DmaSegment { phys, len }];
    let mut run = |xhci: &mut Controller<KernelHal>,
                   cdb: &[u8],
                   direction: Direction,
                   len: usize,
                   step: &'static str| {
        bot.command(xhci, cdb, direction, &all(len), DATA_TIMEOUT_US)
            .map_err(|e| (step, e))
    };

    let n = run(xhci, &inquiry(36), Direction::In, 36, "inquiry")?;
    let mut data = [0u8; 36];
    buf.read_bytes(0, &mut data[..n.min(36)]);
    let vendor = inquiry_vendor(&data[..n.min(36)]).map_err(|e| ("inquiry", e))?;

    let n = run(xhci, &read_capacity_10(), Direction::In, 8, "read_capacity")?;
    let mut data = [0u8; 8];
    buf.read_bytes(0, &mut data[..n.min(8)]);
    let (blocks, block_size) = capacity(&data[..n.min(8)]).map_err(|e| ("read_capacity", e))?;
    let size = STORAGE_PATTERN_SIZE as u32;
    if block_size == 0 || size % block_size != 0 {
        return Err(("read_capacity", StorageError::ShortData));
    }
    let count = (size / block_size) as u16;

    let pattern = storage_pattern();
    buf.write_bytes(0, &pattern);
    let write = read_write_10(WRITE_10, STORAGE_PATTERN_LBA, count);
    run(xhci, &write, Direction::Out, STORAGE_PATTERN_SIZE, "write")?;
    // Cleared, so the comparison sees what the device sent back.
    for i in 0..STORAGE_PATTERN_SIZE / 4 {
        buf.write32(4 * i, 0);
    }
    let read = read_write_10(READ_10, STORAGE_PATTERN_LBA, count);
    let n = run(xhci, &read, Direction::In, STORAGE_PATTERN_SIZE, "read")?;
    let mut back = [0u8; STORAGE_PATTERN_SIZE];
    buf.read_bytes(0, &mut back);
    let matched = n == STORAGE_PATTERN_SIZE && back == pattern;
    info!(
        "event=usbtest_storage slot={slot_id} inquiry_vendor={vendor:?} blocks={blocks} block_size={block_size} write=ok read=ok match={matched}"
    );

    let per_command = (BENCH_CHUNK as u32 / block_size) as u16;
    let started = time::now_micros();
    let mut bytes = 0usize;
    let mut lba = 0u32;
    while bytes < BENCH_BYTES {
        let read = read_write_10(READ_10, lba, per_command);
        bytes += run(xhci, &read, Direction::In, BENCH_CHUNK, "bench")?;
        lba += u32::from(per_command);
    }
    let ns = (time::now_micros() - started) * 1000;
    info!(
        "event=bench path=direct device=usb-storage op=read chunk={BENCH_CHUNK} in_flight=1 bytes={bytes} ns={ns}"
    );

    // Past the last block: the device fails the command and may stall the data phase
    // (BOT 6.7.2); the endpoint is recovered and the next command works.
    let past = read_write_10(READ_10, u32::try_from(blocks).unwrap_or(u32::MAX), 1);
    let past_end = match run(xhci, &past, Direction::In, block_size as usize, "past_end") {
        Err((_, StorageError::CommandFailed)) => "command_failed",
        Ok(_) => "ok",
        Err(e) => return Err(e),
    };
    let first = read_write_10(READ_10, 0, 1);
    run(
        xhci,
        &first,
        Direction::In,
        block_size as usize,
        "after_past_end",
    )?;
    info!("event=usbtest_storage_past_end result={past_end} then_read=ok");
    bench_in_flight(xhci, bot, block_size)?;
    stalls(xhci, bot, slot_id, buf)
}

/// The probe with many transfers in flight: READ(10)s of a MiB, each data phase queued at
/// once as 16 bulk transfers of 64 KiB (Linux's xen-hcd keeps at most 16 URBs in flight).
fn bench_in_flight(
    xhci: &mut Controller<KernelHal>,
    bot: &mut BulkOnly<KernelDma>,
    block_size: u32,
) -> Result<(), (&'static str, StorageError)> {
    const IN_FLIGHT: usize = 16;
    let big = xhci
        .dma_alloc(IN_FLIGHT * BENCH_CHUNK, 4096)
        .map_err(|e| ("bench_dma", e.into()))?;
    let chunks: Vec<DmaSegment> = (0..IN_FLIGHT)
        .map(|i| DmaSegment {
            phys: big.phys() + (i * BENCH_CHUNK) as u64,
            len: BENCH_CHUNK,
        })
        .collect();
    let per_command = ((IN_FLIGHT * BENCH_CHUNK) as u32 / block_size) as u16;
    let started = time::now_micros();
    let mut bytes = 0usize;
    let mut lba = 0u32;
    while bytes < BENCH_BYTES {
        let read = read_write_10(READ_10, lba, per_command);
        match bot.command_in_flight(xhci, &read, Direction::In, &chunks, DATA_TIMEOUT_US) {
            Ok(n) => bytes += n,
            Err(e) => {
                // Transfers that could not be taken back may still fill it.
                core::mem::forget(big);
                return Err(("bench_in_flight", e));
            }
        }
        lba += u32::from(per_command);
    }
    let ns = (time::now_micros() - started) * 1000;
    info!(
        "event=bench path=direct device=usb-storage op=read chunk={BENCH_CHUNK} in_flight={IN_FLIGHT} bytes={bytes} ns={ns}"
    );
    Ok(())
}

/// The commands of the direct path: READ(10) or WRITE(10) from `lba` on, each data phase
/// `in_flight` transfers.
pub struct BenchCommand {
    /// WRITE(10), a constant pattern; else READ(10).
    pub write: bool,
    /// Where the first command starts.
    pub lba: u32,
    /// Transfers of [`CHUNK`](driver_domain::demo::CHUNK) queued at once per command.
    pub in_flight: usize,
}

/// The direct path of `cargo xtask bench qemu`: `bytes` read or written through the driver
/// alone in Bulk-Only commands as `command` says: the commands a simulated VM sends through
/// its ring. The stick is configured already (by its VM). Runs to the end before it returns,
/// as the self-tests do. Returns the microseconds the commands took.
pub fn bench_direct(
    usb: &mut Usb,
    busid: &str,
    command: BenchCommand,
    bytes: usize,
    block_size: u32,
) -> Result<u64, String> {
    use driver_domain::demo::CHUNK;
    let BenchCommand {
        write,
        lba,
        in_flight,
    } = command;
    let command_bytes = CHUNK * in_flight;
    let slot_id = usb
        .host
        .usb_devices()
        .find(|d| d.busid() == busid)
        .map(|d| d.slot_id)
        .ok_or("reason=no_device")?;
    let xhci = usb.host.controller();
    let config = xhci
        .configuration(slot_id)
        .map_err(|e| format!("step=configuration error={e}"))?;
    let interface = config
        .interfaces
        .iter()
        .find(|i| is_bulk_only_scsi(i))
        .ok_or("reason=not_mass_storage")?;
    let mut bot =
        BulkOnly::new(xhci, slot_id, interface).map_err(|e| format!("step=bot error={e}"))?;
    let mut buf = xhci
        .dma_alloc(command_bytes, 4096)
        .map_err(|e| format!("step=dma error={e}"))?;
    if write {
        buf.write_bytes(0, &alloc::vec![BENCH_WRITE_BYTE; command_bytes]);
    }
    let chunks: Vec<DmaSegment> = (0..in_flight)
        .map(|i| DmaSegment {
            phys: buf.phys() + (i * CHUNK) as u64,
            len: CHUNK,
        })
        .collect();
    let (opcode, direction) = if write {
        (WRITE_10, Direction::Out)
    } else {
        (READ_10, Direction::In)
    };
    let per_command = (command_bytes / block_size as usize) as u16;
    let started = time::now_micros();
    let mut done = 0;
    while done < bytes {
        let at = lba + (done / block_size as usize) as u32;
        let cdb = read_write_10(opcode, at, per_command);
        match bot.command_in_flight(xhci, &cdb, direction, &chunks, DATA_TIMEOUT_US) {
            Ok(n) => done += n,
            Err(e) => {
                // Transfers that could not be taken back may still reach it.
                core::mem::forget(buf);
                return Err(format!("step=command error={e}"));
            }
        }
    }
    Ok(time::now_micros() - started)
}

/// What both paths of the write benchmark write.
pub const BENCH_WRITE_BYTE: u8 = 0x5a;

/// STALLs provoked on the stick and recovered: a CBW with a bad signature on bulk OUT
/// (BOT 6.6.1: the device stalls it), then a command that must work; GET_DESCRIPTOR of a
/// descriptor type nobody defines on EP0, then the device descriptor (`event=usbtest_stall`).
fn stalls(
    xhci: &mut Controller<KernelHal>,
    bot: &mut BulkOnly<KernelDma>,
    slot_id: u8,
    buf: &mut KernelDma,
) -> Result<(), (&'static str, StorageError)> {
    let bulk = match bot.send_invalid_cbw(xhci) {
        Err(xhci_driver::Error::Stall) => "stall",
        Ok(_) => "accepted",
        Err(e) => return Err(("invalid_cbw", e.into())),
    };
    let segment = [DmaSegment {
        phys: buf.phys(),
        len: 36,
    }];
    let n = bot
        .command(xhci, &inquiry(36), Direction::In, &segment, DATA_TIMEOUT_US)
        .map_err(|e| ("after_bulk_stall", e))?;
    let control = |xhci: &mut Controller<KernelHal>, descriptor_type: u8| {
        let setup = [0x80, 6, 0, descriptor_type, 0, 0, 18, 0];
        let segment = [DmaSegment {
            phys: buf.phys(),
            len: 18,
        }];
        let id = xhci.queue_control(slot_id, setup, Direction::In, &segment)?;
        xhci.wait(id, DATA_TIMEOUT_US)
    };
    let ep0 = match control(xhci, 0x42) {
        Err(xhci_driver::Error::Stall) => "stall",
        Ok(_) => "accepted",
        Err(e) => return Err(("ep0_stall", e.into())),
    };
    let device = control(xhci, 1).map_err(|e| ("after_ep0_stall", e.into()))?;
    info!(
        "event=usbtest_stall slot={slot_id} bulk_out={bulk} then_inquiry_bytes={n} ep0={ep0} then_device_descriptor_bytes={device}"
    );
    Ok(())
}

/// Packets of one isochronous transfer in `usbtest=audio`.
const AUDIO_PACKETS: usize = 8;
/// Bytes of each: 1 ms of 48 kHz 16-bit stereo, what QEMU's usb-audio takes per packet.
const AUDIO_PACKET_BYTES: usize = 192;

/// `usbtest=audio`: configures the first device with an isochronous OUT endpoint, switches
/// its interface to the alternate setting that has the endpoint (SET_INTERFACE), streams
/// packets to it as one isochronous transfer and logs each packet's outcome
/// (`event=usbtest_isochronous`), then goes back to alternate setting 0.
pub fn self_test_audio(usb: &mut Usb) {
    let found = usb.devices().into_iter().find_map(|d| {
        let config = usb.xhci().configuration(d.slot_id).ok()?;
        let (interface, alternate, endpoint) = config.interfaces.iter().find_map(|i| {
            let e = i
                .endpoints
                .iter()
                .find(|e| e.transfer_type == TransferType::Isochronous && !e.is_in())?;
            Some((i.number, i.alternate_setting, *e))
        })?;
        Some((d.slot_id, config, interface, alternate, endpoint))
    });
    let Some((slot_id, config, interface, alternate, endpoint)) = found else {
        warn!("event=usbtest_isochronous step=find error=no_isochronous_out_endpoint");
        return;
    };
    let xhci = usb.host.controller();
    let step = |step: &'static str| {
        move |e: xhci_driver::Error| {
            warn!("event=usbtest_isochronous slot={slot_id} step={step} error={e}");
        }
    };
    let Ok(()) = xhci.configure(slot_id, &config).map_err(step("configure")) else {
        return;
    };
    let Ok(()) = xhci
        .set_interface(slot_id, interface, alternate)
        .map_err(step("set_interface"))
    else {
        return;
    };
    let Ok(mut buf) = xhci.dma_alloc(4096, 4096).map_err(step("dma")) else {
        return;
    };
    // A quiet sawtooth: the bytes do not matter, only that every packet goes out.
    for i in 0..(AUDIO_PACKETS * AUDIO_PACKET_BYTES) / 4 {
        buf.write32(4 * i, (i as u32 & 0xff) * 0x0001_0001);
    }
    let segment = [DmaSegment {
        phys: buf.phys(),
        len: AUDIO_PACKETS * AUDIO_PACKET_BYTES,
    }];
    let packets: Vec<IsoPacket> = (0..AUDIO_PACKETS)
        .map(|i| IsoPacket {
            offset: (i * AUDIO_PACKET_BYTES) as u32,
            length: AUDIO_PACKET_BYTES.min(usize::from(endpoint.max_packet_size)) as u32,
        })
        .collect();
    let Ok(id) = xhci
        .queue_isochronous(
            slot_id,
            endpoint.number(),
            Direction::Out,
            &segment,
            &packets,
        )
        .map_err(step("queue"))
    else {
        return;
    };
    let until = time::now_micros() + DATA_TIMEOUT_US;
    let done = loop {
        if let Err(e) = xhci.poll_events() {
            step("poll")(e);
            core::mem::forget(buf);
            return;
        }
        if let Some((_, c)) = xhci.take_completed().filter(|(i, _)| *i == id) {
            break c;
        }
        if time::now_micros() > until {
            let _ = xhci.cancel(id);
            if xhci.take_completion(id).is_none() {
                core::mem::forget(buf);
            }
            warn!("event=usbtest_isochronous slot={slot_id} step=wait error=timeout");
            return;
        }
        core::hint::spin_loop();
    };
    let ok = done.packets.iter().filter(|p| p.status.is_ok()).count();
    let result = match done.result {
        Ok(n) => format!("ok bytes={n}"),
        Err(e) => format!("{e}"),
    };
    let back = match xhci.set_interface(slot_id, interface, 0) {
        Ok(()) => String::from("ok"),
        Err(e) => format!("{e}"),
    };
    info!(
        "event=usbtest_isochronous slot={slot_id} interface={interface} alternate={alternate} endpoint={:#04x} packets={} ok_packets={ok} result={result} start_frame={} back_to_alternate_0={back}",
        endpoint.address,
        done.packets.len(),
        done.start_frame
    );
}

/// `usbtest=controller-error`: makes QEMU's controller assert Host Controller Error (it
/// checks ERSTSZ when ERSTBA is written, and refuses anything but one segment), so the main
/// loop restarts it; the storage test then runs on the restarted controller.
pub fn self_test_controller_error(usb: &mut Usb) {
    const RTSOFF: usize = 0x18;
    const ERSTSZ: usize = 0x28;
    const ERSTBA: usize = 0x30;
    usb.tests.storage_after_restart = true;
    let rts = (usb.regs.read32(RTSOFF) & !0x1f) as usize;
    let low = usb.regs.read32(rts + ERSTBA);
    let high = usb.regs.read32(rts + ERSTBA + 4);
    usb.regs.write32(rts + ERSTSZ, 2);
    usb.regs.write32(rts + ERSTBA, low);
    usb.regs.write32(rts + ERSTBA + 4, high);
    info!(
        "event=usbtest_controller_error provoked=erstsz error={}",
        usb.host
            .controller()
            .error()
            .map_or(String::from("none"), |e| format!("{e}"))
    );
}
