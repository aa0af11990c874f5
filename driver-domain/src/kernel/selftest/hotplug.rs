//! `usbtest=hotplug`: read loops on every mass-storage device that arrives, moved on by the
//! main loop, so a device can leave (and come back) in the middle of one.

use super::*;

/// A read loop on a mass-storage device (`usbtest=hotplug`): READ(10)s of 64 KiB one after
/// the other, each stage (CBW, data, CSW) a transfer queued and picked up by the main loop,
/// so the device can leave at any moment.
pub(super) struct StorageLoop {
    busid: String,
    slot_id: u8,
    bulk_in: u8,
    bulk_out: u8,
    tag: u32,
    lba: u32,
    reads: u64,
    cbw: KernelDma,
    data: KernelDma,
    csw: KernelDma,
    stage: LoopStage,
}

#[derive(Clone, Copy)]
enum LoopStage {
    Command(TransferId),
    Data(TransferId),
    Status(TransferId),
}

/// Blocks a loop read covers before it wraps (the first 8 MiB).
pub(super) const LOOP_BLOCKS: u32 = 16 * 1024;
/// A loop logs its progress once, after this many reads.
pub(super) const LOOP_PROGRESS: u64 = 50;

/// `usbtest=hotplug`: a read loop on every mass-storage device present, and on each that
/// arrives later.
pub fn self_test_hotplug(usb: &mut Usb) {
    usb.tests.hotplug = true;
    for d in usb.devices() {
        start_loop(usb, &d);
    }
}

/// Starts a read loop on `d` when it is a Bulk-Only mass-storage device.
pub(super) fn start_loop(usb: &mut Usb, d: &UsbDevice) {
    let busid = d.busid();
    let xhci = usb.host.controller();
    let Ok(config) = xhci.configuration(d.slot_id) else {
        return;
    };
    let Some(interface) = config.interfaces.iter().find(|i| is_bulk_only_scsi(i)) else {
        return;
    };
    let bulk = |is_in: bool| {
        interface
            .endpoints
            .iter()
            .find(|e| e.transfer_type == TransferType::Bulk && e.is_in() == is_in)
            .map(|e| e.number())
    };
    let (Some(bulk_in), Some(bulk_out)) = (bulk(true), bulk(false)) else {
        return;
    };
    let started = xhci.configure(d.slot_id, &config).and_then(|()| {
        let mut cbw = xhci.dma_alloc(64, 64)?;
        let data = xhci.dma_alloc(BENCH_CHUNK, 4096)?;
        let csw = xhci.dma_alloc(64, 64)?;
        let first = queue_read(xhci, d.slot_id, bulk_out, &mut cbw, 1, 0)?;
        Ok(StorageLoop {
            busid: busid.clone(),
            slot_id: d.slot_id,
            bulk_in,
            bulk_out,
            tag: 1,
            lba: 0,
            reads: 0,
            cbw,
            data,
            csw,
            stage: LoopStage::Command(first),
        })
    });
    match started {
        Ok(l) => {
            info!(
                "event=usbtest_loop_started busid={busid} slot={}",
                d.slot_id
            );
            usb.tests.loops.push(l);
        }
        Err(e) => warn!(
            "event=usbtest_loop_error busid={busid} slot={} step=start error={e}",
            d.slot_id
        ),
    }
}

/// Blocks of one loop read.
pub(super) const LOOP_READ_BLOCKS: u16 = (BENCH_CHUNK / 512) as u16;

/// Queues the CBW of a READ(10) of 64 KiB at `lba` with `tag`.
pub(super) fn queue_read(
    xhci: &mut Controller<KernelHal>,
    slot_id: u8,
    bulk_out: u8,
    buf: &mut KernelDma,
    tag: u32,
    lba: u32,
) -> Result<TransferId, xhci_driver::Error> {
    let wrapper = cbw(
        tag,
        BENCH_CHUNK as u32,
        Direction::In,
        0,
        &read_write_10(READ_10, lba, LOOP_READ_BLOCKS),
    );
    buf.write_bytes(0, &wrapper);
    let segment = [DmaSegment {
        phys: buf.phys(),
        len: CBW_SIZE,
    }];
    xhci.queue_transfer(slot_id, bulk_out, Direction::Out, &segment)
}

/// Queues the loop's next READ(10).
pub(super) fn next_command(
    xhci: &mut Controller<KernelHal>,
    l: &mut StorageLoop,
) -> Result<(), xhci_driver::Error> {
    l.tag = l.tag.wrapping_add(1);
    l.lba = (l.lba + u32::from(LOOP_READ_BLOCKS)) % LOOP_BLOCKS;
    let id = queue_read(xhci, l.slot_id, l.bulk_out, &mut l.cbw, l.tag, l.lba)?;
    l.stage = LoopStage::Command(id);
    Ok(())
}

/// Moves every read loop on by the transfers that finished; a loop whose transfer failed
/// (its device left: `no_device`) ends with `event=usbtest_loop_stopped`.
pub(super) fn step_loops(usb: &mut Usb) {
    let xhci = usb.host.controller();
    let mut i = 0;
    while i < usb.tests.loops.len() {
        let l = &mut usb.tests.loops[i];
        let outcome = loop {
            let id = match l.stage {
                LoopStage::Command(id) | LoopStage::Data(id) | LoopStage::Status(id) => id,
            };
            let Some(result) = xhci.take_completion(id) else {
                break Ok(());
            };
            let next = result.and_then(|n| match l.stage {
                LoopStage::Command(_) => {
                    let segment = [DmaSegment {
                        phys: l.data.phys(),
                        len: BENCH_CHUNK,
                    }];
                    xhci.queue_transfer(l.slot_id, l.bulk_in, Direction::In, &segment)
                        .map(|id| l.stage = LoopStage::Data(id))
                }
                LoopStage::Data(_) => {
                    let segment = [DmaSegment {
                        phys: l.csw.phys(),
                        len: CSW_SIZE,
                    }];
                    xhci.queue_transfer(l.slot_id, l.bulk_in, Direction::In, &segment)
                        .map(|id| l.stage = LoopStage::Status(id))
                }
                LoopStage::Status(_) => {
                    let mut bytes = [0u8; CSW_SIZE];
                    l.csw.read_bytes(0, &mut bytes);
                    match csw(&bytes[..n.min(CSW_SIZE)], l.tag) {
                        Ok(_) => l.reads += 1,
                        // The first command after a reset reports a unit attention: the
                        // transport worked, the next command reads.
                        Err(StorageError::CommandFailed) => {}
                        Err(_) => return Err(xhci_driver::Error::BadTransfer),
                    }
                    if l.reads == LOOP_PROGRESS {
                        info!(
                            "event=usbtest_loop_progress busid={} slot={} reads={}",
                            l.busid, l.slot_id, l.reads
                        );
                    }
                    next_command(xhci, l)
                }
            });
            if let Err(e) = next {
                break Err(e);
            }
        };
        match outcome {
            Ok(()) => i += 1,
            Err(e) => {
                let l = usb.tests.loops.remove(i);
                info!(
                    "event=usbtest_loop_stopped busid={} slot={} reads={} error={e} slots_in_use={}",
                    l.busid,
                    l.slot_id,
                    l.reads,
                    xhci.occupied_slots().count()
                );
            }
        }
    }
}
