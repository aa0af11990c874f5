//! The host controller's registers: capability (xHCI 5.3), operational (5.4) and runtime
//! with Interrupter Register Set 0 (5.5); the Supported Protocol Capabilities (7.2); and the
//! controller's life on them: halt and reset, bring-up with the memory it owns (4.2), halt,
//! and restart after a Host System Error or Host Controller Error (4.24.1).

use alloc::vec::Vec;

use log::{info, warn};

use super::td::PendingTd;
use super::{alloc, Controller, Error, UsbDevice};
use crate::hal::{DmaBuffer, Hal};
use crate::hub;
use crate::ring::{EventRing, ProducerRing, ERST_ENTRY_SIZE};

// Capability registers (5.3). Read 32 bits wide: some controllers (QEMU's) return 0 for
// narrower reads such as a 16-bit HCIVERSION.
const CAPLENGTH_HCIVERSION: usize = 0x00;
const HCSPARAMS1: usize = 0x04;
const HCSPARAMS2: usize = 0x08;
const HCCPARAMS1: usize = 0x10;
const DBOFF: usize = 0x14;
const RTSOFF: usize = 0x18;
// Operational registers (5.4), at CAPLENGTH.
const USBCMD: usize = 0x00;
pub(super) const USBSTS: usize = 0x04;
const PAGESIZE: usize = 0x08;
const CRCR: usize = 0x18;
const DCBAAP: usize = 0x30;
const CONFIG: usize = 0x38;
pub(super) const PORTSC: usize = 0x400;
pub(super) const PORT_REGISTER_SET_SIZE: usize = 0x10;
// Interrupter Register Set 0 (5.5.2), at RTSOFF + 0x20.
pub(super) const INTERRUPTER_0: usize = 0x20;
const IMAN: usize = 0x00;
const IMOD: usize = 0x04;
const ERSTSZ: usize = 0x08;
const ERSTBA: usize = 0x10;
pub(super) const ERDP: usize = 0x18;
// Runtime registers (5.5), at RTSOFF.
pub(super) const MFINDEX: usize = 0x00;

const USBCMD_RS: u32 = 1 << 0;
const USBCMD_HCRST: u32 = 1 << 1;
const USBCMD_INTE: u32 = 1 << 2;
const USBSTS_HCH: u32 = 1 << 0;
pub(super) const USBSTS_HSE: u32 = 1 << 2;
const USBSTS_EINT: u32 = 1 << 3;
const USBSTS_CNR: u32 = 1 << 11;
pub(super) const USBSTS_HCE: u32 = 1 << 12;
const IMAN_IP: u32 = 1 << 0;
const IMAN_IE: u32 = 1 << 1;
/// Event Handler Busy, RW1C in ERDP: written 1 with every dequeue pointer update.
pub(super) const ERDP_EHB: u64 = 1 << 3;
const CRCR_RCS: u64 = 1 << 0;
/// Interrupt Moderation Interval, 250 ns units: 40 µs, as Linux uses.
const IMODI: u32 = 160;
/// Extended Capability ID of the Supported Protocol Capability (7.2).
const XECP_SUPPORTED_PROTOCOL: u32 = 2;

/// One page holds each ring: 256 TRBs.
pub(super) const RING_BYTES: usize = 4096;
/// Run/Stop to HCHalted clear.
const RUN_TIMEOUT_US: u64 = 20_000;
/// How long Host Controller Reset (and Controller Not Ready after it) may take: 10 s, as
/// Linux allows at probe (a Renesas µPD720201 takes about 9 s; docs/xhci-quirks.md).
const RESET_TIMEOUT_US: u64 = 10_000_000;
/// How long nothing is read after Host Controller Reset is set: Linux waits 1 ms on Intel
/// hosts, which can hang if read sooner; every controller here gets it, once per reset.
const RESET_QUIET_US: u64 = 1_000;

/// The capability registers that matter here.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Where the operational registers begin.
    pub caplength: u8,
    /// Interface version, BCD (0x100 is 1.0).
    pub hciversion: u16,
    /// MaxSlots.
    pub max_slots: u8,
    /// MaxIntrs.
    pub max_interrupters: u16,
    /// MaxPorts.
    pub max_ports: u8,
    /// Max Scratchpad Buffers (Hi and Lo together).
    pub max_scratchpad_buffers: u16,
    /// 64-bit Addressing Capability.
    pub ac64: bool,
    /// Context Size: 64 when CSZ is set, else 32 bytes.
    pub context_size: usize,
    /// xHCI Extended Capabilities Pointer, in bytes from the base (0: none).
    pub xecp: usize,
    /// Doorbell Offset.
    pub dboff: usize,
    /// Runtime Register Space Offset.
    pub rtsoff: usize,
    /// Isochronous Scheduling Threshold, in microframes: how far ahead of MFINDEX a
    /// transfer must be queued for the controller to schedule it.
    pub ist: u16,
}

impl Capabilities {
    /// Reads them, 32 bits at a time.
    pub fn read<H: Hal>(hal: &H) -> Capabilities {
        let cap = hal.read32(CAPLENGTH_HCIVERSION);
        let hcs1 = hal.read32(HCSPARAMS1);
        let hcs2 = hal.read32(HCSPARAMS2);
        let hcc1 = hal.read32(HCCPARAMS1);
        Capabilities {
            caplength: cap as u8,
            hciversion: (cap >> 16) as u16,
            max_slots: hcs1 as u8,
            max_interrupters: ((hcs1 >> 8) & 0x7ff) as u16,
            max_ports: (hcs1 >> 24) as u8,
            max_scratchpad_buffers: (((hcs2 >> 21) & 0x1f) << 5 | (hcs2 >> 27)) as u16,
            ac64: hcc1 & 1 != 0,
            context_size: if hcc1 & (1 << 2) != 0 { 64 } else { 32 },
            xecp: ((hcc1 >> 16) as usize) * 4,
            dboff: (hal.read32(DBOFF) & !0x3) as usize,
            rtsoff: (hal.read32(RTSOFF) & !0x1f) as usize,
            // Bits 2:0 count microframes, or frames when bit 3 is set.
            ist: ((hcs2 & 0x7) << if hcs2 & 0x8 != 0 { 3 } else { 0 }) as u16,
        }
    }
}

/// A Supported Protocol Capability: which root ports speak which USB major revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// Major Revision (2 or 3).
    pub major: u8,
    /// Compatible Port Offset: the first root port (1-based).
    pub first_port: u8,
    /// Compatible Port Count.
    pub count: u8,
    /// Protocol Slot Type, for Enable Slot.
    pub slot_type: u8,
}

/// Walks the extended capability list (7): each capability's byte offset from the base and
/// its first dword. `read32` reads at a byte offset; the walk ends at a zero Next pointer or
/// where a capability would not fit below `limit` (the register space's size).
pub(super) fn extended_capabilities(
    read32: impl Fn(usize) -> u32,
    xecp: usize,
    limit: usize,
) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    let mut at = xecp;
    // A capability read here is at most 16 bytes, and Next only moves forward.
    while at != 0 && at + 16 <= limit {
        let header = read32(at);
        found.push((at, header));
        let next = ((header >> 8) & 0xff) as usize;
        at = if next == 0 { 0 } else { at + next * 4 };
    }
    found
}

/// The Supported Protocol Capabilities in the extended capability list. `read32` reads at a
/// byte offset from the base; the walk ends at a zero Next pointer or where a capability
/// would not fit below `limit` (the register space's size).
pub fn supported_protocols(
    read32: impl Fn(usize) -> u32,
    xecp: usize,
    limit: usize,
) -> Vec<Protocol> {
    extended_capabilities(&read32, xecp, limit)
        .into_iter()
        .filter(|(_, header)| header & 0xff == XECP_SUPPORTED_PROTOCOL)
        .map(|(at, header)| {
            let ports = read32(at + 8);
            Protocol {
                major: (header >> 24) as u8,
                first_port: ports as u8,
                count: (ports >> 8) as u8,
                slot_type: (read32(at + 12) & 0x1f) as u8,
            }
        })
        .collect()
}

/// The memory a running controller owns: the Device Context Base Address Array, the
/// Scratchpad Buffer Array and its buffers, the Command Ring and the Event Ring of
/// Interrupter 0.
struct ControllerMemory<D> {
    dcbaa: D,
    scratchpad: Vec<D>,
    command_ring: ProducerRing<D>,
    event_ring: EventRing<D>,
    page_size: usize,
}

impl<D: DmaBuffer> ControllerMemory<D> {
    fn new<H: Hal<Dma = D>>(hal: &mut H, caps: &Capabilities) -> Result<Self, Error> {
        let op = usize::from(caps.caplength);
        // PAGESIZE bit n set means pages of 2^(n+12) bytes; the lowest set bit is the size
        // scratchpad buffers must have.
        let page_bits = (hal.read32(op + PAGESIZE) & 0xffff)
            .trailing_zeros()
            .min(15);
        let page_size = 1usize << (page_bits + 12);
        let mut dcbaa = alloc(hal, (usize::from(caps.max_slots) + 1) * 8, 64)?;
        let mut scratchpad = Vec::new();
        let buffers = usize::from(caps.max_scratchpad_buffers);
        if buffers > 0 {
            let mut array = alloc(hal, buffers * 8, 64)?;
            for i in 0..buffers {
                let buffer = alloc(hal, page_size, page_size)?;
                array.write64(i * 8, buffer.phys());
                scratchpad.push(buffer);
            }
            // DCBAA entry 0 is the Scratchpad Buffer Array when there are buffers.
            dcbaa.write64(0, array.phys());
            scratchpad.push(array);
        }
        let command_ring = ProducerRing::new(alloc(hal, RING_BYTES, 64)?);
        let event_ring = EventRing::new(
            alloc(hal, RING_BYTES, 64)?,
            alloc(hal, ERST_ENTRY_SIZE, 64)?,
        );
        Ok(ControllerMemory {
            dcbaa,
            scratchpad,
            command_ring,
            event_ring,
            page_size,
        })
    }
}

/// Spins until `done` or `micros` have passed on the platform's clock; whether `done` came.
pub(super) fn spin_until<H: Hal>(hal: &H, micros: u64, done: &dyn Fn() -> bool) -> bool {
    let until = hal.now_micros() + micros;
    while !done() {
        if hal.now_micros() > until {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Takes a controller from whatever state firmware left it in to halted and reset (xHCI
/// 4.2, 5.4.1): Run/Stop cleared, HCHalted awaited, then Host Controller Reset until it and
/// Controller Not Ready clear. Returns whether it was running. SeaBIOS leaves QEMU's
/// controller running, with DMA into memory that is ours now: only a controller through
/// here may master the bus.
pub fn halt_and_reset<H: Hal>(hal: &H) -> Result<bool, Error> {
    let op = usize::from(Capabilities::read(hal).caplength);
    let cmd = hal.read32(op + USBCMD);
    hal.write32(op + USBCMD, cmd & !(USBCMD_RS | USBCMD_INTE));
    let wait = |what, micros, done: &dyn Fn() -> bool| {
        spin_until(hal, micros, done)
            .then_some(())
            .ok_or(Error::Timeout(what))
    };
    wait("halt", RUN_TIMEOUT_US, &|| {
        hal.read32(op + USBSTS) & USBSTS_HCH != 0
    })?;
    hal.write32(op + USBCMD, USBCMD_HCRST);
    spin_until(hal, RESET_QUIET_US, &|| false);
    wait("reset", RESET_TIMEOUT_US, &|| {
        hal.read32(op + USBCMD) & USBCMD_HCRST == 0 && hal.read32(op + USBSTS) & USBSTS_CNR == 0
    })?;
    Ok(cmd & USBCMD_RS != 0)
}

impl<H: Hal> Controller<H> {
    /// Brings up a halted, reset controller (xHCI 4.2): MaxSlotsEn, the Device Context Base
    /// Address Array with the scratchpad buffers, the Command Ring, Interrupter 0 with its
    /// Event Ring and interrupts enabled, then Run.
    pub fn start(mut hal: H) -> Result<Controller<H>, Error> {
        let caps = Capabilities::read(&hal);
        let op = usize::from(caps.caplength);
        let status = hal.read32(op + USBSTS);
        if status & USBSTS_HCH == 0 || status & USBSTS_CNR != 0 {
            return Err(Error::NotHalted);
        }
        let memory = ControllerMemory::new(&mut hal, &caps)?;
        let protocols = supported_protocols(|at| hal.read32(at), caps.xecp, hal.mmio_len());
        let mut xhci = Controller {
            hal,
            caps,
            dcbaa: memory.dcbaa,
            _scratchpad: memory.scratchpad,
            command_ring: memory.command_ring,
            event_ring: memory.event_ring,
            protocols,
            slots: Vec::new(),
            port_changes: Vec::new(),
            completions: Vec::new(),
            detached: Vec::new(),
            next_transfer: 0,
            hubs: Vec::new(),
            deadline: None,
            unacknowledged: 0,
            first_bus: 1,
        };
        xhci.run()?;
        info!(
            "event=xhci_running hciversion={:#x} slots={} ports={} interrupters={} context_size={} scratchpad_buffers={} page_size={} ac64={} usb2_ports={} usb3_ports={}",
            caps.hciversion,
            caps.max_slots,
            caps.max_ports,
            caps.max_interrupters,
            caps.context_size,
            caps.max_scratchpad_buffers,
            memory.page_size,
            caps.ac64,
            ports_of(&xhci.protocols, 2),
            ports_of(&xhci.protocols, 3),
        );
        Ok(xhci)
    }

    /// Programs a halted, reset controller with this driver's memory: MaxSlotsEn, DCBAAP,
    /// the Command Ring, Interrupter 0 with its Event Ring and interrupts enabled, then Run.
    fn run(&mut self) -> Result<(), Error> {
        let hal = &self.hal;
        let caps = &self.caps;
        let op = usize::from(caps.caplength);
        let config = hal.read32(op + CONFIG);
        hal.write32(op + CONFIG, (config & !0xff) | u32::from(caps.max_slots));
        hal.write64(op + DCBAAP, self.dcbaa.phys());
        let ring = &self.command_ring;
        hal.write64(
            op + CRCR,
            ring.phys() | if ring.cycle_state() { CRCR_RCS } else { 0 },
        );
        let ir = caps.rtsoff + INTERRUPTER_0;
        hal.write32(ir + ERSTSZ, self.event_ring.erst_size());
        hal.write64(ir + ERDP, self.event_ring.dequeue_pointer());
        // ERSTBA last: writing it makes the controller read the table (4.9.4).
        hal.write64(ir + ERSTBA, self.event_ring.erst_phys());
        hal.write32(ir + IMOD, IMODI);
        hal.write32(ir + IMAN, IMAN_IP | IMAN_IE);
        hal.write32(op + USBSTS, USBSTS_EINT);

        let cmd = hal.read32(op + USBCMD);
        hal.write32(op + USBCMD, cmd | USBCMD_RS | USBCMD_INTE);
        let until = hal.now_micros() + RUN_TIMEOUT_US;
        while hal.read32(op + USBSTS) & USBSTS_HCH != 0 {
            if hal.now_micros() > until {
                // Take Run back so a late start cannot DMA into the memory dropped here.
                hal.write32(op + USBCMD, cmd & !USBCMD_RS);
                return Err(Error::Timeout("run"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Recovers from a Host System Error or Host Controller Error (4.24.1): every transfer
    /// fails with `why`, every device is given up (each reported by
    /// [`Controller::take_detached`] and logged), the controller is halted and reset and
    /// brought up again on fresh memory, and the root ports are enumerated anew. Returns
    /// the devices found. When the reset itself fails the controller is dead: its memory is
    /// kept (it may still be written by the controller) and the error returned.
    pub fn restart(&mut self, why: Error) -> Result<Vec<UsbDevice>, Error> {
        let queued: Vec<PendingTd> = self
            .slots
            .iter_mut()
            .flat_map(|s| s.endpoints.iter_mut())
            .flat_map(|e| core::mem::take(&mut e.pending))
            .collect();
        warn!(
            "event=xhci_restart reason={why} transfers_failed={} devices={}",
            queued.len(),
            self.slots.len()
        );
        for td in queued {
            self.finish(td, Err(why));
        }
        halt_and_reset(&self.hal)?;
        // The controller references none of its memory now.
        for slot in core::mem::take(&mut self.slots) {
            let busid = hub::busid(&self.root_port(slot.port), &slot.hub_ports);
            info!(
                "event=usb_device_gone busid={busid} port={} slot={} reason=controller_reset",
                slot.port, slot.slot_id
            );
            self.detached.push((slot.slot_id, busid));
        }
        self.hubs.clear();
        self.port_changes.clear();
        let memory = ControllerMemory::new(&mut self.hal, &self.caps)?;
        self.dcbaa = memory.dcbaa;
        self._scratchpad = memory.scratchpad;
        self.command_ring = memory.command_ring;
        self.event_ring = memory.event_ring;
        self.run()?;
        info!("event=xhci_running after=restart");
        Ok(self.enumerate_root_ports())
    }

    /// Stops the controller (Run/Stop cleared, HCHalted awaited) so its memory can be
    /// dropped. If it does not halt, the caller must not free its memory
    /// (`core::mem::forget` the controller).
    pub fn halt(&mut self) -> Result<(), Error> {
        let op = self.op();
        let cmd = self.hal.read32(op + USBCMD);
        self.hal
            .write32(op + USBCMD, cmd & !(USBCMD_RS | USBCMD_INTE));
        let until = self.hal.now_micros() + RUN_TIMEOUT_US;
        while self.hal.read32(op + USBSTS) & USBSTS_HCH == 0 {
            if self.hal.now_micros() > until {
                return Err(Error::Timeout("halt"));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// The capability registers.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub(super) fn op(&self) -> usize {
        usize::from(self.caps.caplength)
    }

    pub(super) fn ring_doorbell(&self, slot: u8, target: u32) {
        self.hal
            .write32(self.caps.dboff + usize::from(slot) * 4, target);
    }
}

pub(super) fn ports_of(protocols: &[Protocol], major: u8) -> u32 {
    protocols
        .iter()
        .filter(|p| p.major == major)
        .map(|p| u32::from(p.count))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_counts_the_root_ports_of_one_major_version() {
        let protocol = |major, first_port, count| Protocol {
            major,
            first_port,
            count,
            slot_type: 0,
        };
        let qemu = [protocol(3, 1, 4), protocol(2, 5, 4)];
        assert_eq!((ports_of(&qemu, 2), ports_of(&qemu, 3)), (4, 4));
        assert_eq!(ports_of(&[protocol(2, 1, 2), protocol(2, 3, 6)], 2), 8);
        assert_eq!(ports_of(&qemu, 1), 0);
    }
}
