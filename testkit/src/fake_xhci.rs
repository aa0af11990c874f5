//! Host-test stand-ins: plain memory for DMA buffers, and a simulated controller with one
//! full-speed-capable USB2 device, enough to drive bring-up, commands, enumeration,
//! configuration and bulk transfers.

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

mod hal;
mod memory;

pub use memory::{Arena, Memory};

use xhci_driver::hal::Hal;
use xhci_driver::port::{CCS, CHANGE_BITS, CSC, PED, PP, PR, PRC, WPR, WRC};

// The simulated controller's register map (offsets in BAR0), named as xHCI 5.4 and 5.5 name
// the registers.
const OP: usize = 0x40;
/// USB Command.
pub const USBCMD: usize = OP;
/// USB Status.
pub const USBSTS: usize = OP + 0x04;
/// Command Ring Control.
pub const CRCR: usize = OP + 0x18;
/// Device Context Base Address Array Pointer.
pub const DCBAAP: usize = OP + 0x30;
/// Configure.
pub const CONFIG: usize = OP + 0x38;
/// PORTSC of port 1 (USB3, empty); port 2 (USB2) follows 16 bytes on.
pub const PORTSC1: usize = OP + 0x400;
const XECP: usize = 0x800;
/// USBLEGSUP of the USB Legacy Support Capability [`FakeXhci::with_firmware`] adds; its
/// USBLEGCTLSTS follows.
pub const USBLEGSUP: usize = XECP + 0x20;
const DOORBELLS: usize = 0x2000;
const RUNTIME: usize = 0x3000;
/// Interrupter 0's Management register.
pub const IMAN: usize = RUNTIME + 0x20;
/// Interrupter 0's Event Ring Segment Table Size.
pub const ERSTSZ: usize = RUNTIME + 0x28;
/// Interrupter 0's Event Ring Segment Table Base Address.
pub const ERSTBA: usize = RUNTIME + 0x30;
/// Interrupter 0's Event Ring Dequeue Pointer.
pub const ERDP: usize = RUNTIME + 0x38;
const BAR_SIZE: usize = 0x4000;

/// The simulated device's descriptors: USB 2.0, vendor 0x1234, product 0x5678, class 0,
/// bMaxPacketSize0 8 (so a full-speed-sized EP0 needs Evaluate Context), iProduct 2.
pub const DEVICE_DESCRIPTOR: [u8; 18] = [
    18, 1, 0x00, 0x02, 0, 0, 0, 8, 0x34, 0x12, 0x78, 0x56, 0x00, 0x01, 1, 2, 0, 1,
];
/// Its configuration: one Bulk-Only mass-storage interface, bulk IN 1 and bulk OUT 2 of 512
/// bytes.
pub const CONFIGURATION: [u8; 32] = [
    9, 2, 32, 0, 1, 1, 0, 0x80, 50, //
    9, 4, 0, 0, 2, 8, 6, 0x50, 0, //
    7, 5, 0x81, 2, 0x00, 0x02, 0, //
    7, 5, 0x02, 2, 0x00, 0x02, 0,
];
/// A hub's device descriptor: class 9, bMaxPacketSize0 64, no strings.
pub const HUB_DEVICE_DESCRIPTOR: [u8; 18] = [
    18, 1, 0x00, 0x02, 9, 0, 1, 64, 0x09, 0x04, 0xaa, 0x55, 0x00, 0x01, 0, 0, 0, 1,
];
/// Its configuration: one hub interface with the status change endpoint, interrupt IN 1.
pub const HUB_CONFIGURATION: [u8; 25] = [
    9, 2, 25, 0, 1, 1, 0, 0xe0, 0, //
    9, 4, 0, 0, 1, 9, 0, 0, 0, //
    7, 5, 0x81, 3, 1, 0, 12,
];
/// Its hub descriptor: 4 ports, TT Think Time 1 (16 FS bit times), bPwrOn2PwrGood 50 (100 ms).
pub const HUB_DESCRIPTOR: [u8; 9] = [9, 0x29, 4, 0x20, 0x00, 50, 0, 0, 0xff];
const LANGUAGES: [u8; 4] = [4, 3, 0x09, 0x04];
const PRODUCT: [u8; 10] = [10, 3, b'F', 0, b'a', 0, b'k', 0, b'e', 0];

#[derive(Default)]
struct State {
    cmd_dequeue: u64,
    cmd_cycle: bool,
    event_base: u64,
    event_trbs: usize,
    event_enqueue: usize,
    event_cycle: bool,
    next_slot: u8,
    /// Per slot: the Default Control Endpoint's dequeue pointer and cycle.
    ep0: Vec<(u8, u64, bool)>,
    setup: (u32, u32),
    /// Every Setup Stage seen: (bmRequestType, bRequest, wValue, wIndex).
    pub setups: Vec<(u8, u8, u16, u16)>,
    /// Configured endpoints: slot, DCI, dequeue pointer, cycle, halted.
    endpoints: Vec<(u8, u8, u64, bool, bool)>,
    /// The Input Context's Add Context flags and Slot Context dword 0 of the last Configure
    /// Endpoint.
    pub configured: (u32, u32),
    /// Its Drop Context flags, or all ones for Deconfigure.
    pub dropped: u32,
    /// Commands whose TRB type the controller saw, in order.
    pub commands: Vec<u32>,
    /// Every value written to a PORTSC, with its port.
    pub portsc_writes: Vec<(u8, u32)>,
    /// Slot Context dwords 0..=2 of each Address Device (11) and Configure Endpoint (12):
    /// slot, command, dwords.
    pub slot_contexts: Vec<(u8, u32, [u32; 3])>,
}

/// A controller in memory: capability registers of a small xHCI (8 slots, 2 scratchpad
/// buffers, port 1 USB3 and port 2 USB2), a Command Ring processor, an Event Ring producer,
/// and a USB2 high-speed device on port 2 that needs a reset.
pub struct FakeXhci {
    regs: RefCell<Vec<u32>>,
    arena: Rc<Arena>,
    clock: Cell<u64>,
    state: RefCell<State>,
    /// Whether commands complete (false: they stay queued for ever).
    pub answer_commands: Cell<bool>,
    /// Whether the device answers control transfers.
    pub answer_transfers: Cell<bool>,
    /// How long (µs of its clock) the device takes to answer each control transfer.
    pub control_delay_us: Cell<u64>,
    /// Writes of ERDP (its low dword) so far.
    pub erdp_writes: Cell<u32>,
    /// When (its clock) Host Controller Reset was set, until the next register read.
    reset_at: Cell<Option<u64>>,
    /// µs of its clock from the last Host Controller Reset to the first read after it.
    pub reset_to_read_us: Cell<Option<u64>>,
    /// Default Control Endpoints rung and not yet answered: (when, slot).
    deferred: RefCell<Vec<(u64, u8)>>,
    /// What GET_DESCRIPTOR(CONFIGURATION) of index 0 returns.
    pub configuration: RefCell<Vec<u8>>,
    /// What it returns for indexes 1, 2, …; nothing (a zero-length Data Stage) past them.
    pub more_configurations: RefCell<Vec<Vec<u8>>>,
    /// The device descriptor's bNumConfigurations.
    pub num_configurations: Cell<u8>,
    /// How many bytes the next bulk IN TD gets (fewer than queued: a short packet).
    pub bulk_in_bytes: Cell<usize>,
    /// Whether the next bulk TD is answered with STALL.
    pub stall_next: Cell<bool>,
    /// Whether bulk endpoints answer at all.
    pub answer_bulk: Cell<bool>,
    /// Bytes the bulk OUT endpoint received.
    pub bulk_out: RefCell<Vec<u8>>,
    /// Bytes OUT Data Stages of control transfers carried.
    pub control_out: RefCell<Vec<u8>>,
    /// When set, the device in slot 1 is a hub answering with this hub descriptor; slots
    /// after it are the devices behind it.
    pub hub_descriptor: RefCell<Option<Vec<u8>>>,
    /// The hub's ports: wPortStatus and wPortChange of each (port 1 first).
    pub hub_ports: RefCell<Vec<(u16, u16)>>,
    /// Whether the hub ends a port reset.
    pub hub_resets: Cell<bool>,
    /// Firmware that owns the controller ([`FakeXhci::with_firmware`]) lets go when the OS
    /// asks.
    pub firmware_lets_go: Cell<bool>,
}

impl Default for FakeXhci {
    fn default() -> FakeXhci {
        FakeXhci::new()
    }
}

impl FakeXhci {
    /// The same controller with 64-byte contexts (HCCPARAMS1.CSZ).
    pub fn with_64_byte_contexts() -> FakeXhci {
        let fake = FakeXhci::new();
        fake.regs.borrow_mut()[4] |= 1 << 2;
        fake
    }

    fn context_size(&self) -> u64 {
        if self.reg(0x10) & (1 << 2) != 0 {
            64
        } else {
            32
        }
    }

    /// Halted and reset, the device connected with Connect Status Change pending.
    pub fn new() -> FakeXhci {
        let mut regs = vec![0u32; BAR_SIZE / 4];
        regs[0] = 0x0100_0000 | OP as u32;
        regs[1] = 8 | (1 << 8) | (2 << 24);
        regs[2] = 2 << 27;
        regs[4] = 1 | ((XECP as u32 / 4) << 16);
        regs[5] = DOORBELLS as u32;
        regs[6] = RUNTIME as u32;
        regs[USBSTS / 4] = 1;
        regs[(OP + 0x08) / 4] = 1;
        regs[XECP / 4] = 0x0300_0402;
        regs[XECP / 4 + 2] = 0x0000_0101;
        regs[(XECP + 0x10) / 4] = 0x0200_0002;
        regs[(XECP + 0x10) / 4 + 2] = 0x0000_0102;
        regs[PORTSC1 / 4] = PP;
        regs[(PORTSC1 + 0x10) / 4] = PP | CCS | CSC | (7 << 5);
        FakeXhci {
            regs: RefCell::new(regs),
            arena: Arena::new(0x10_0000, 1 << 20),
            clock: Cell::new(0),
            reset_at: Cell::new(None),
            reset_to_read_us: Cell::new(None),
            state: RefCell::new(State::default()),
            answer_commands: Cell::new(true),
            answer_transfers: Cell::new(true),
            control_delay_us: Cell::new(0),
            erdp_writes: Cell::new(0),
            deferred: RefCell::new(Vec::new()),
            configuration: RefCell::new(CONFIGURATION.to_vec()),
            more_configurations: RefCell::new(Vec::new()),
            num_configurations: Cell::new(DEVICE_DESCRIPTOR[17]),
            bulk_in_bytes: Cell::new(usize::MAX),
            stall_next: Cell::new(false),
            answer_bulk: Cell::new(true),
            bulk_out: RefCell::new(Vec::new()),
            control_out: RefCell::new(Vec::new()),
            hub_descriptor: RefCell::new(None),
            hub_ports: RefCell::new(Vec::new()),
            hub_resets: Cell::new(true),
            firmware_lets_go: Cell::new(true),
        }
    }

    /// The controller as a laptop's firmware leaves it: a USB Legacy Support Capability
    /// after the protocol ones, HC BIOS Owned set, its SMIs on (USB SMI and on OS Ownership
    /// Change) and an ownership-change SMI pending. Firmware clears HC BIOS Owned when HC OS
    /// Owned is set, unless `lets_go` is false.
    pub fn with_firmware(lets_go: bool) -> FakeXhci {
        let fake = FakeXhci::new();
        {
            let mut regs = fake.regs.borrow_mut();
            // The USB 2 protocol capability's Next now points 4 dwords on, to it.
            regs[(XECP + 0x10) / 4] |= 4 << 8;
            regs[USBLEGSUP / 4] = 1 | 1 << 16;
            regs[USBLEGSUP / 4 + 1] = 1 | 1 << 13 | 1 << 29;
        }
        fake.firmware_lets_go.set(lets_go);
        fake
    }

    /// The device on port 2 is a hub with `HUB_DESCRIPTOR`'s 4 ports, a full-speed device
    /// connected to port 3.
    pub fn with_hub() -> FakeXhci {
        let fake = FakeXhci::new();
        *fake.hub_descriptor.borrow_mut() = Some(HUB_DESCRIPTOR.to_vec());
        // Port 3: PORT_CONNECTION and PORT_POWER, C_PORT_CONNECTION.
        *fake.hub_ports.borrow_mut() = vec![(0x100, 0), (0x100, 0), (0x101, 1), (0x100, 0)];
        fake
    }

    /// Slot Context dwords 0..=2 of each Address Device and Configure Endpoint.
    pub fn slot_contexts(&self) -> Vec<(u8, u32, [u32; 3])> {
        self.state.borrow().slot_contexts.clone()
    }

    fn is_hub(&self, slot: u8) -> bool {
        slot == 1 && self.hub_descriptor.borrow().is_some()
    }

    /// A hub class request without data (SET_FEATURE, CLEAR_FEATURE of a port).
    fn hub_request(&self, request_type: u8, request: u8, feature: u16, port: u16) {
        let mut ports = self.hub_ports.borrow_mut();
        let Some(p) = ports.get_mut(usize::from(port).wrapping_sub(1)) else {
            return;
        };
        match (request_type, request, feature) {
            // SET_FEATURE(PORT_RESET): enabled, C_PORT_RESET.
            (0x23, 3, 4) if self.hub_resets.get() => {
                p.0 |= 1 << 1;
                p.1 |= 1 << 4;
            }
            (0x23, 3, 4) => p.0 |= 1 << 4,
            (0x23, 3, 8) => p.0 |= 1 << 8,
            (0x23, 1, f @ 16..=20) => p.1 &= !(1 << (f - 16)),
            _ => {}
        }
    }

    /// A register's value.
    pub fn reg(&self, offset: usize) -> u32 {
        self.regs.borrow()[offset / 4]
    }

    /// Where the controller writes its next event: once the driver has handled every
    /// event, ERDP points here.
    pub fn event_enqueue_pointer(&self) -> u64 {
        let s = self.state.borrow();
        s.event_base + (s.event_enqueue * 16) as u64
    }

    /// Memory as the controller sees it.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// TRB types of the commands processed.
    pub fn commands(&self) -> Vec<u32> {
        self.state.borrow().commands.clone()
    }

    /// Values written to PORTSC registers.
    pub fn portsc_writes(&self) -> Vec<(u8, u32)> {
        self.state.borrow().portsc_writes.clone()
    }

    /// Setup Stages seen: (bmRequestType, bRequest, wValue, wIndex).
    pub fn setups(&self) -> Vec<(u8, u8, u16, u16)> {
        self.state.borrow().setups.clone()
    }

    /// Add Context flags and Slot Context dword 0 of the last Configure Endpoint.
    pub fn configured(&self) -> (u32, u32) {
        self.state.borrow().configured
    }

    /// The Drop Context flags of the last Configure Endpoint (all ones for Deconfigure).
    pub fn dropped(&self) -> u32 {
        self.state.borrow().dropped
    }

    /// Sets USBSTS bits (HSE, HCE) as a failing controller does, and halts it.
    pub fn fail(&self, usbsts: u32) {
        let mut regs = self.regs.borrow_mut();
        regs[USBSTS / 4] |= usbsts | 1;
        regs[USBCMD / 4] &= !1;
    }

    /// Sets a PORTSC before the controller runs.
    pub fn set_portsc(&self, port: u8, value: u32) {
        self.regs.borrow_mut()[(PORTSC1 + (usize::from(port) - 1) * 0x10) / 4] = value;
    }

    /// Unplugs the device on `port`: disconnected, disabled, Connect Status Change and a
    /// Port Status Change Event.
    pub fn unplug(&self, port: u8) {
        let at = PORTSC1 + (usize::from(port) - 1) * 0x10;
        let mut regs = self.regs.borrow_mut();
        regs[at / 4] = (regs[at / 4] & PP) | CSC | (5 << 5);
        drop(regs);
        self.post([u32::from(port) << 24, 0, 1 << 24, 34 << 10]);
    }

    /// Plugs a device into `port`: connected, link Polling (a USB2 port needs a reset).
    pub fn plug(&self, port: u8) {
        let at = PORTSC1 + (usize::from(port) - 1) * 0x10;
        let mut regs = self.regs.borrow_mut();
        regs[at / 4] = (regs[at / 4] & PP) | CCS | CSC | (7 << 5);
        drop(regs);
        self.post([u32::from(port) << 24, 0, 1 << 24, 34 << 10]);
    }

    fn reg64(&self, offset: usize) -> u64 {
        u64::from(self.reg(offset)) | u64::from(self.reg(offset + 4)) << 32
    }

    fn post(&self, trb: [u32; 4]) {
        let mut s = self.state.borrow_mut();
        let at = s.event_base + (s.event_enqueue * 16) as u64;
        for (i, d) in trb.iter().take(3).enumerate() {
            self.arena.write32(at + i as u64 * 4, *d);
        }
        self.arena
            .write32(at + 12, (trb[3] & !1) | u32::from(s.event_cycle));
        s.event_enqueue += 1;
        if s.event_enqueue == s.event_trbs {
            s.event_enqueue = 0;
            s.event_cycle = !s.event_cycle;
        }
    }

    fn read_trb(&self, at: u64) -> [u32; 4] {
        [0, 4, 8, 12].map(|o| self.arena.read32(at + o))
    }

    fn run_commands(&self) {
        loop {
            let (at, cycle) = {
                let s = self.state.borrow();
                (s.cmd_dequeue, s.cmd_cycle)
            };
            let trb = self.read_trb(at);
            if (trb[3] & 1 != 0) != cycle {
                return;
            }
            let kind = (trb[3] >> 10) & 0x3f;
            if kind == 6 {
                let mut s = self.state.borrow_mut();
                s.cmd_dequeue = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                s.cmd_cycle ^= trb[3] & 2 != 0;
                continue;
            }
            if !self.answer_commands.get() {
                return;
            }
            let mut slot = (trb[3] >> 24) as u8;
            let mut stopped = Vec::new();
            {
                let mut s = self.state.borrow_mut();
                s.commands.push(kind);
                s.cmd_dequeue += 16;
                match kind {
                    // Enable Slot.
                    9 => {
                        s.next_slot += 1;
                        slot = s.next_slot;
                    }
                    // Address Device: the Default Control Endpoint's TR Dequeue Pointer.
                    11 => {
                        let input = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                        let slot_context = input + self.context_size();
                        let dwords = [0, 4, 8].map(|o| self.arena.read32(slot_context + o));
                        s.slot_contexts.push((slot, 11, dwords));
                        let dq = self.arena.read64(input + 2 * self.context_size() + 8);
                        s.ep0.push((slot, dq & !0xf, dq & 1 != 0));
                    }
                    // Configure Endpoint: every added endpoint's TR Dequeue Pointer.
                    12 => {
                        let input = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                        let add = self.arena.read32(input + 4);
                        let drop = if trb[3] & (1 << 9) != 0 {
                            u32::MAX
                        } else {
                            self.arena.read32(input)
                        };
                        s.dropped = drop;
                        s.endpoints
                            .retain(|e| e.0 != slot || (drop | add) & (1 << e.1) == 0);
                        s.configured = (add, self.arena.read32(input + self.context_size()));
                        let slot_context = input + self.context_size();
                        let dwords = [0, 4, 8].map(|o| self.arena.read32(slot_context + o));
                        s.slot_contexts.push((slot, 12, dwords));
                        for dci in 2..32u8 {
                            if add & (1 << dci) != 0 {
                                let at = input + (u64::from(dci) + 1) * self.context_size();
                                let dq = self.arena.read64(at + 8);
                                s.endpoints.push((slot, dci, dq & !0xf, dq & 1 != 0, false));
                            }
                        }
                    }
                    // Reset Endpoint: no longer Halted.
                    14 => {
                        let dci = ((trb[3] >> 16) & 0x1f) as u8;
                        for e in s.endpoints.iter_mut().filter(|e| (e.0, e.1) == (slot, dci)) {
                            e.4 = false;
                        }
                    }
                    // Stop Endpoint: the TR Dequeue Pointer saved in the Output Endpoint
                    // Context, a Stopped event for a TD in progress.
                    15 => {
                        let dci = ((trb[3] >> 16) & 0x1f) as u8;
                        let output = self
                            .arena
                            .read64(u64::from(self.reg(DCBAAP)) + u64::from(slot) * 8);
                        if let Some(e) = s.endpoints.iter().find(|e| (e.0, e.1) == (slot, dci)) {
                            let at = output + u64::from(dci) * self.context_size() + 8;
                            self.arena.write32(at, e.2 as u32 | u32::from(e.3));
                            self.arena.write32(at + 4, (e.2 >> 32) as u32);
                            let pending = self.read_trb(e.2);
                            if (pending[3] & 1 != 0) == e.3 {
                                stopped.push([
                                    trb_low(e.2),
                                    (e.2 >> 32) as u32,
                                    26 << 24,
                                    transfer_event(slot, dci),
                                ]);
                            }
                        }
                    }
                    // Set TR Dequeue Pointer.
                    16 => {
                        let dci = ((trb[3] >> 16) & 0x1f) as u8;
                        let dq = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                        for e in s.endpoints.iter_mut().filter(|e| (e.0, e.1) == (slot, dci)) {
                            e.2 = dq & !0xf;
                            e.3 = dq & 1 != 0;
                        }
                    }
                    _ => {}
                }
            }
            for event in stopped {
                self.post(event);
            }
            self.post([
                trb_low(at),
                (at >> 32) as u32,
                1 << 24,
                (33 << 10) | u32::from(slot) << 24,
            ]);
        }
    }

    fn run_transfers(&self, slot: u8) {
        if !self.answer_transfers.get() {
            return;
        }
        let Some(i) = self.state.borrow().ep0.iter().position(|e| e.0 == slot) else {
            return;
        };
        loop {
            let (_, at, cycle) = self.state.borrow().ep0[i];
            let trb = self.read_trb(at);
            if (trb[3] & 1 != 0) != cycle {
                return;
            }
            self.state.borrow_mut().ep0[i].1 += 16;
            match (trb[3] >> 10) & 0x3f {
                2 => {
                    let mut s = self.state.borrow_mut();
                    s.setup = (trb[0], trb[1]);
                    let setup = (trb[0] as u8, (trb[0] >> 8) as u8, (trb[0] >> 16) as u16);
                    s.setups.push((setup.0, setup.1, setup.2, trb[1] as u16));
                    drop(s);
                    if self.is_hub(slot) {
                        self.hub_request(setup.0, setup.1, setup.2, trb[1] as u16);
                    }
                }
                // An OUT Data Stage: its bytes are the device's.
                3 if trb[3] & (1 << 16) == 0 => {
                    let buffer = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                    let bytes = self.arena.read_bytes(buffer, (trb[2] & 0x1ffff) as usize);
                    self.control_out.borrow_mut().extend(bytes);
                }
                3 => {
                    let (w0, w1) = self.state.borrow().setup;
                    let value = w0 >> 16;
                    let hub = self.is_hub(slot);
                    let status;
                    let mut device = DEVICE_DESCRIPTOR;
                    device[17] = self.num_configurations.get();
                    let more = self.more_configurations.borrow();
                    let config_index = (value & 0xff) as usize;
                    let response: &[u8] = match (w0 as u8, value >> 8) {
                        // Hub GET_STATUS of a port.
                        (0xa3, _) => {
                            let port = usize::from(w1 as u16).wrapping_sub(1);
                            let (st, ch) = self
                                .hub_ports
                                .borrow()
                                .get(port)
                                .copied()
                                .unwrap_or_default();
                            status = [st.to_le_bytes(), ch.to_le_bytes()].concat();
                            &status
                        }
                        (0xa0, 0x29) => &self.hub_descriptor.borrow().clone().unwrap_or_default(),
                        (_, 1) if hub => &HUB_DEVICE_DESCRIPTOR,
                        (_, 2) if hub => &HUB_CONFIGURATION,
                        (_, 1) => &device,
                        (_, 2) if config_index == 0 => &self.configuration.borrow().clone(),
                        (_, 2) => more.get(config_index - 1).map_or(&[], |c| c.as_slice()),
                        (_, 3) if value & 0xff == 0 => &LANGUAGES,
                        (_, 3) => &PRODUCT,
                        _ => &[],
                    };
                    let asked = (trb[2] & 0x1ffff).min(w1 >> 16) as usize;
                    let n = asked.min(response.len());
                    let buffer = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                    self.arena.write_bytes(buffer, &response[..n]);
                    if n < asked && trb[3] & (1 << 2) != 0 {
                        let residue = (asked - n) as u32;
                        self.post([
                            trb_low(at),
                            (at >> 32) as u32,
                            (13 << 24) | residue,
                            transfer_event(slot, 1),
                        ]);
                    }
                }
                4 if trb[3] & (1 << 5) != 0 => {
                    self.post([
                        trb_low(at),
                        (at >> 32) as u32,
                        1 << 24,
                        transfer_event(slot, 1),
                    ]);
                }
                _ => {}
            }
        }
    }

    /// Runs the TDs on a bulk endpoint's Transfer Ring (following Link TRBs): IN TDs get
    /// `bulk_in_bytes` bytes of 0xa5 at most, OUT TDs' bytes are kept; a short packet is
    /// reported on its TRB and skips the rest of the TD, a STALL halts the endpoint.
    fn run_bulk(&self, slot: u8, dci: u8) {
        if !self.answer_bulk.get() {
            return;
        }
        let find = |s: &State| s.endpoints.iter().position(|e| (e.0, e.1) == (slot, dci));
        let Some(i) = find(&self.state.borrow()) else {
            return;
        };
        loop {
            let (_, _, mut at, mut cycle, halted) = self.state.borrow().endpoints[i];
            if halted {
                return;
            }
            // Gather one TD.
            let mut td = Vec::new();
            loop {
                let trb = self.read_trb(at);
                if (trb[3] & 1 != 0) != cycle {
                    return;
                }
                if (trb[3] >> 10) & 0x3f == 6 {
                    cycle ^= trb[3] & 2 != 0;
                    at = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                    continue;
                }
                td.push((at, trb));
                at += 16;
                if trb[3] & (1 << 4) == 0 {
                    break;
                }
            }
            {
                let mut s = self.state.borrow_mut();
                s.endpoints[i].2 = at;
                s.endpoints[i].3 = cycle;
            }
            if self.stall_next.replace(false) {
                self.state.borrow_mut().endpoints[i].4 = true;
                let (first, trb) = td[0];
                let event = [
                    trb_low(first),
                    (first >> 32) as u32,
                    (6 << 24) | (trb[2] & 0x1ffff),
                ];
                self.post([event[0], event[1], event[2], transfer_event(slot, dci)]);
                return;
            }
            let mut left = self.bulk_in_bytes.replace(usize::MAX);
            for (n, &(trb_at, trb)) in td.iter().enumerate() {
                // A cancelled transfer's No Op TRBs move nothing.
                if (trb[3] >> 10) & 0x3f == 8 {
                    continue;
                }
                let len = (trb[2] & 0x1ffff) as usize;
                let buffer = u64::from(trb[0]) | u64::from(trb[1]) << 32;
                let done = if dci % 2 == 1 {
                    let got = len.min(left);
                    left -= got;
                    self.arena.write_bytes(buffer, &vec![0xa5; got]);
                    got
                } else {
                    let bytes = self.arena.read_bytes(buffer, len);
                    self.bulk_out.borrow_mut().extend(bytes);
                    len
                };
                let short = done < len;
                let last = n == td.len() - 1;
                if (short && trb[3] & (1 << 2) != 0) || (last && trb[3] & (1 << 5) != 0) {
                    let code = if short { 13 } else { 1 };
                    let event = [
                        trb_low(trb_at),
                        (trb_at >> 32) as u32,
                        (code << 24) | (len - done) as u32,
                    ];
                    self.post([event[0], event[1], event[2], transfer_event(slot, dci)]);
                }
                if short {
                    break;
                }
            }
        }
    }

    fn write_portsc(&self, offset: usize, value: u32) {
        let port = ((offset - PORTSC1) / 0x10 + 1) as u8;
        self.state.borrow_mut().portsc_writes.push((port, value));
        let mut regs = self.regs.borrow_mut();
        let old = regs[offset / 4];
        let mut new = old & !(value & CHANGE_BITS);
        if value & PED != 0 {
            new &= !PED;
        }
        // Resets complete at once: enabled, U0, Port Reset Change (and Warm Port Reset
        // Change); a USB2 device at high speed, a USB3 one at SuperSpeed.
        let reset = value & PR != 0 && old & CCS != 0;
        let warm = value & WPR != 0 && old & CCS != 0;
        if reset {
            new = (new & !(0xf << 5) & !(0xf << 10)) | PED | PRC | (3 << 10);
        }
        if warm {
            new = (new & !(0xf << 5) & !(0xf << 10)) | PED | PRC | WRC | (4 << 10);
        }
        let reset = reset || warm;
        new = (new & !PP) | (value & PP);
        regs[offset / 4] = new;
        drop(regs);
        if reset {
            self.post([u32::from(port) << 24, 0, 1 << 24, 34 << 10]);
        }
    }
}

fn trb_low(at: u64) -> u32 {
    at as u32
}

fn transfer_event(slot: u8, dci: u8) -> u32 {
    (32 << 10) | u32::from(dci) << 16 | u32::from(slot) << 24
}
