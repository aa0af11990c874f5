//! The xHCI driver on this machine: its HAL over the mapped BAR0 and identity-mapped DMA
//! frames, bring-up and root-port enumeration at boot, and event handling in the main loop.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use log::{info, warn};
use platform::Mmio32;

use platform::selftest::{storage_pattern, STORAGE_PATTERN_LBA, STORAGE_PATTERN_SIZE};
use xhci_driver::descriptor::TransferType;
use xhci_driver::mass_storage::{
    capacity, inquiry, inquiry_vendor, is_bulk_only_scsi, read_capacity_10, read_write_10,
    BulkOnly, StorageError, READ_10, WRITE_10,
};
use xhci_driver::{
    Configuration, Controller, Direction, DmaBuffer, Hal, Interface, Segment, TransferId, UsbDevice,
};

use super::memory::{self, DmaRegion, Mmio};
use super::{pci, time};

/// DMA memory through the identity map. Dropping it returns the frames: the driver drops a
/// buffer only once the controller no longer references it.
pub struct KernelDma(DmaRegion);

impl Drop for KernelDma {
    fn drop(&mut self) {
        memory::dma_free(DmaRegion {
            phys: self.0.phys,
            len: self.0.len,
        });
    }
}

impl KernelDma {
    fn addr(&self, offset: usize) -> u64 {
        assert!(
            offset % 4 == 0 && offset as u64 + 4 <= self.0.len,
            "DMA access outside its region"
        );
        self.0.phys + offset as u64
    }
}

impl DmaBuffer for KernelDma {
    fn phys(&self) -> u64 {
        self.0.phys
    }

    fn len(&self) -> usize {
        self.0.len as usize
    }

    fn read32(&self, offset: usize) -> u32 {
        let addr = self.addr(offset);
        // SAFETY: the region came from `memory::dma_alloc`, is identity-mapped and ours;
        // `addr` checked the access is inside it and aligned. Volatile: the controller
        // writes this memory.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let addr = self.addr(offset);
        // SAFETY: as in `read32`. Volatile writes stay in program order, and x86 stores
        // become visible to bus masters in that order (the TRB Cycle bit goes last).
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }
}

/// The platform under the driver.
pub struct KernelHal {
    regs: Mmio,
}

impl KernelHal {
    /// The HAL of the controller whose BAR0 is mapped at `regs`.
    pub fn new(regs: Mmio) -> KernelHal {
        KernelHal { regs }
    }
}

impl Hal for KernelHal {
    type Dma = KernelDma;

    fn read32(&self, offset: usize) -> u32 {
        self.regs.read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.regs.write32(offset, value)
    }

    fn mmio_len(&self) -> usize {
        self.regs.len() as usize
    }

    fn dma_alloc(&mut self, bytes: usize, align: usize) -> Option<KernelDma> {
        // Below 4 GiB whatever the controller's AC64 says: always reachable. Page-aligned
        // frames never cross a page for a request that fits in one.
        memory::dma_alloc(bytes as u64, (align as u64).max(4096), true).map(KernelDma)
    }

    fn now_micros(&self) -> u64 {
        time::now_micros()
    }
}

/// No Op commands at bring-up: the Command Ring holds 255 TRBs, the Event Ring 256.
const NOOPS: usize = 300;

/// The running driver and how the main loop learns of its events.
pub struct Usb {
    xhci: Controller<KernelHal>,
    /// Whether MSI/MSI-X is routed; without it the event ring is polled on every wake-up
    /// (the 100 Hz timer wakes the loop).
    interrupt_routed: bool,
    /// `pci::xhci_interrupts()` when the event ring was last drained.
    seen: u64,
    /// The controller reported Host System Error: it is left alone from then on.
    failed: bool,
    /// The devices on the root ports now.
    devices: Vec<UsbDevice>,
    /// What was last published to xenstore: key → description.
    published: BTreeMap<String, String>,
    /// `devices` changed since it was last published (the main loop wakes 100 times a
    /// second: the list is only rebuilt when this is set).
    devices_changed: bool,
    /// The keyboard `usbtest=keyboard` listens to.
    keyboard: Option<Keyboard>,
}

/// A HID boot keyboard whose interrupt IN endpoint always has one transfer queued.
struct Keyboard {
    slot_id: u8,
    endpoint: u8,
    /// The endpoint's max packet size: one report per transfer.
    len: usize,
    buf: KernelDma,
    queued: TransferId,
}

/// Brings the controller up, proves its rings with a No Op command and enumerates the root
/// ports.
pub fn bring_up(found: &pci::Xhci) -> Option<Usb> {
    let mut xhci = match Controller::start(KernelHal::new(found.regs)) {
        Ok(x) => x,
        Err(e) => {
            warn!("event=xhci_start_failed bdf={} error={e}", found.bdf);
            return None;
        }
    };
    // More No Ops than the Command Ring and the Event Ring hold: both wrap (Link TRB with
    // Toggle Cycle, the consumer's cycle flip) against the real controller at every boot.
    let before = pci::xhci_interrupts();
    let started = time::now_micros();
    let noop = (0..NOOPS).try_for_each(|_| xhci.noop());
    match noop {
        Ok(()) => info!(
            "event=xhci_noop ok=true count={NOOPS} us={} interrupts_before={before} interrupts_after={}",
            time::now_micros() - started,
            pci::xhci_interrupts()
        ),
        Err(e) => {
            warn!("event=xhci_noop ok=false error={e}");
            if let Err(e) = xhci.halt() {
                // It may still DMA into its rings: their frames must never be reused.
                warn!("event=xhci_halt_failed bdf={} error={e}", found.bdf);
                core::mem::forget(xhci);
            }
            return None;
        }
    }
    let devices = xhci.enumerate_root_ports();
    info!(
        "event=usb_enumerated devices={} xhci_interrupts={}",
        devices.len(),
        pci::xhci_interrupts()
    );
    Some(Usb {
        xhci,
        interrupt_routed: found.vector.is_some(),
        seen: pci::xhci_interrupts(),
        failed: false,
        devices,
        published: BTreeMap::new(),
        devices_changed: true,
        keyboard: None,
    })
}

/// Takes the controller's events when its interrupt counter moved (or always, without an
/// interrupt): devices plugged into root ports are enumerated, unplugged ones released.
pub fn service(usb: &mut Usb) {
    let now = pci::xhci_interrupts();
    let quiet = now == usb.seen && !usb.xhci.has_port_changes();
    if usb.failed || (usb.interrupt_routed && quiet) {
        return;
    }
    usb.seen = now;
    match usb.xhci.poll_events() {
        Ok(events) => {
            if events > 0 {
                info!("event=xhci_events count={events} xhci_interrupts={now}");
            }
            // Also changes noted while an earlier enumeration waited for its own events.
            let attached = usb.xhci.handle_port_changes();
            // Gone, or gone and its slot given to a device just attached.
            let occupied: Vec<u8> = usb.xhci.occupied_slots().collect();
            let before = usb.devices.len();
            usb.devices.retain(|d| {
                occupied.contains(&d.slot_id) && !attached.iter().any(|a| a.slot_id == d.slot_id)
            });
            usb.devices_changed |= usb.devices.len() != before || !attached.is_empty();
            usb.devices.extend(attached);
            keyboard_reports(usb);
        }
        Err(e) => {
            warn!("event=xhci_error error={e}");
            usb.failed = true;
        }
    }
}

/// How a device is offered to dom0 (`usbctl list-assignable-devices`).
fn description(d: &UsbDevice) -> String {
    format!(
        "vid={:04x} pid={:04x} speed={} class={:02x} product={}",
        d.vendor_id,
        d.product_id,
        d.speed.name(),
        d.class,
        d.product.as_deref().unwrap_or("")
    )
}

/// Publishes the devices usbdom can assign under its `data/usbdom/devices` (the change
/// only): hubs are not offered (they are not assignable, as libxl also refuses them).
pub fn publish<T: xen::xenstore::XsTransport>(usb: &mut Usb, xs: &mut xen::xenstore::XenStore<T>) {
    use xen::pvusb::{busid_key, DEVICES_DIR};
    use xen::xenstore::TxId;
    if !core::mem::take(&mut usb.devices_changed) {
        return;
    }
    let now: BTreeMap<String, String> = usb
        .devices
        .iter()
        .filter(|d| d.class != 0x09)
        .map(|d| (busid_key(&d.busid()), description(d)))
        .collect();
    if now == usb.published {
        return;
    }
    for key in usb.published.keys().filter(|k| !now.contains_key(*k)) {
        if let Err(e) = xs.rm(TxId::NONE, &format!("{DEVICES_DIR}/{key}")) {
            warn!("event=xenstore_error op=rm path={DEVICES_DIR}/{key} error={e}");
        }
    }
    for (key, value) in now
        .iter()
        .filter(|(k, v)| usb.published.get(*k) != Some(*v))
    {
        if let Err(e) = xs.write(
            TxId::NONE,
            &format!("{DEVICES_DIR}/{key}"),
            value.as_bytes(),
        ) {
            warn!("event=xenstore_error op=write path={DEVICES_DIR}/{key} error={e}");
        }
    }
    info!("event=usb_devices_published count={}", now.len());
    usb.published = now;
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
    let found = usb.devices.iter().find_map(|d| {
        let config = usb.xhci.configuration(d.slot_id).ok()?;
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
    let xhci = &mut usb.xhci;
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
    let all = |len: usize| [Segment { phys, len }];
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
    for (i, word) in pattern.chunks_exact(4).enumerate() {
        buf.write32(
            4 * i,
            u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
        );
    }
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
    Ok(())
}

// HID 1.11 7.2: class requests to the interface.
const REQUEST_TYPE_CLASS_INTERFACE_OUT: u8 = 0x21;
const HID_SET_IDLE: u8 = 0x0a;
const HID_SET_PROTOCOL: u8 = 0x0b;
/// SET_PROTOCOL wValue: the boot protocol, whose keyboard report is the fixed 8 bytes of
/// HID 1.11 appendix B.1.
const HID_BOOT_PROTOCOL: u16 = 0;
const HID_CLASS: u8 = 0x03;
const HID_SUBCLASS_BOOT: u8 = 0x01;
const HID_PROTOCOL_KEYBOARD: u8 = 0x01;

/// `usbtest=keyboard`: configures the first HID boot keyboard (interface 03/01/01) in the
/// boot protocol, reporting only on change (SET_IDLE 0), and queues a transfer on its
/// interrupt IN endpoint (`event=usbtest_keyboard_ready`). The main loop logs each report
/// (`event=usbtest_keyboard report=…`) and queues the next transfer.
pub fn self_test_keyboard(usb: &mut Usb) {
    let found = usb.devices.iter().find_map(|d| {
        let config = usb.xhci.configuration(d.slot_id).ok()?;
        let (interface, endpoint) = config.interfaces.iter().find_map(|i| {
            let boot_keyboard = i.class == HID_CLASS
                && i.subclass == HID_SUBCLASS_BOOT
                && i.protocol == HID_PROTOCOL_KEYBOARD
                && i.alternate_setting == 0;
            let e = i
                .endpoints
                .iter()
                .find(|e| e.transfer_type == TransferType::Interrupt && e.is_in())?;
            boot_keyboard.then_some((i.number, *e))
        })?;
        Some((d.slot_id, config, interface, endpoint))
    });
    let Some((slot_id, config, interface, endpoint)) = found else {
        warn!("event=usbtest_keyboard step=find error=no_boot_keyboard");
        return;
    };
    let xhci = &mut usb.xhci;
    let step = |step: &'static str| {
        move |e: xhci_driver::Error| {
            warn!("event=usbtest_keyboard slot={slot_id} step={step} error={e}");
        }
    };
    let Ok(()) = xhci.configure(slot_id, &config).map_err(step("configure")) else {
        return;
    };
    let set_protocol = xhci.control(
        slot_id,
        REQUEST_TYPE_CLASS_INTERFACE_OUT,
        HID_SET_PROTOCOL,
        HID_BOOT_PROTOCOL,
        u16::from(interface),
    );
    let Ok(()) = set_protocol.map_err(step("set_protocol")) else {
        return;
    };
    // Duration 0: a report only when the keys change (HID 7.2.4), which is what is logged.
    let set_idle = xhci.control(
        slot_id,
        REQUEST_TYPE_CLASS_INTERFACE_OUT,
        HID_SET_IDLE,
        0,
        u16::from(interface),
    );
    let Ok(()) = set_idle.map_err(step("set_idle")) else {
        return;
    };
    let Ok(buf) = xhci.dma_alloc(4096, 4096).map_err(step("dma")) else {
        return;
    };
    let len = usize::from(endpoint.max_packet_size).min(buf.len());
    let number = endpoint.number();
    let segment = [Segment {
        phys: buf.phys(),
        len,
    }];
    let Ok(queued) = xhci
        .queue_transfer(slot_id, number, Direction::In, &segment)
        .map_err(step("queue"))
    else {
        return;
    };
    info!(
        "event=usbtest_keyboard_ready slot={slot_id} interface={interface} endpoint={:#04x} max_packet_size={len}",
        endpoint.address
    );
    usb.keyboard = Some(Keyboard {
        slot_id,
        endpoint: number,
        len,
        buf,
        queued,
    });
}

/// Logs the keyboard's report when its transfer finished, and queues the next one.
fn keyboard_reports(usb: &mut Usb) {
    let Some(k) = usb.keyboard.as_mut() else {
        return;
    };
    let Some(result) = usb.xhci.take_completion(k.queued) else {
        return;
    };
    match result {
        Ok(n) => {
            let mut report = [0u8; 64];
            let n = n.min(k.len).min(report.len());
            k.buf.read_bytes(0, &mut report[..n]);
            let mut hex = String::new();
            for (i, b) in report[..n].iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                hex.push_str(&format!("{sep}{b:02x}"));
            }
            info!("event=usbtest_keyboard report={hex}");
        }
        Err(e) => {
            // A halted endpoint takes no more transfers: listening ends (the TD is done, so
            // the buffer is free).
            warn!("event=usbtest_keyboard slot={} error={e}", k.slot_id);
            usb.keyboard = None;
            return;
        }
    }
    let segment = [Segment {
        phys: k.buf.phys(),
        len: k.len,
    }];
    match usb
        .xhci
        .queue_transfer(k.slot_id, k.endpoint, Direction::In, &segment)
    {
        Ok(id) => k.queued = id,
        Err(e) => {
            // The keyboard left (its slot is gone) or its ring broke: listening ends.
            warn!(
                "event=usbtest_keyboard slot={} step=queue error={e}",
                k.slot_id
            );
            usb.keyboard = None;
        }
    }
}
