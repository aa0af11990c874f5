//! PCI on the machine: configuration access (ECAM when ACPI has an MCFG, else ports
//! 0xCF8/0xCFC), the device list for the log, and taking over every xHCI controller (up to
//! [`MAX_CONTROLLERS`]): halt the controller firmware left running, map BAR0 uncached,
//! enable memory and bus mastering, and route its interrupts through MSI-X (or MSI) to a
//! vector of its own.

use core::sync::atomic::{AtomicU64, Ordering};

use driver_domain::frames::Range;
use driver_domain::host_set::MAX_CONTROLLERS;
use driver_domain::msi::{self, Message};
use driver_domain::pci::{self, Bar, Bdf, ConfigSpace};
use driver_domain::Mmio32;
use log::{info, warn};

use super::cpu::{inl, outl};
use super::memory::{self, Mmio};
use super::{apic, interrupts};

/// Configuration access through the legacy port pair.
pub struct PortConfig;

impl ConfigSpace for PortConfig {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        outl(0xcf8, bdf.legacy_address(offset));
        inl(0xcfc)
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        outl(0xcf8, bdf.legacy_address(offset));
        outl(0xcfc, value);
    }
}

/// Configuration access through an ECAM window (256 buses, 4 KiB each per function).
pub struct EcamConfig(Mmio);

impl ConfigSpace for EcamConfig {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        self.0.read32(bdf.ecam_offset(offset) as usize)
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        self.0.write32(bdf.ecam_offset(offset) as usize, value)
    }
}

/// Either access method.
pub enum Config {
    /// Ports 0xCF8/0xCFC.
    Ports(PortConfig),
    /// Memory-mapped.
    Ecam(EcamConfig),
}

impl ConfigSpace for Config {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        match self {
            Config::Ports(p) => p.read32(bdf, offset),
            Config::Ecam(e) => e.read32(bdf, offset),
        }
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        match self {
            Config::Ports(p) => p.write32(bdf, offset, value),
            Config::Ecam(e) => e.write32(bdf, offset, value),
        }
    }
}

/// ECAM from ACPI's MCFG (segment 0, starting at bus 0) when present, else the ports.
pub fn config_access(rsdp_hint: u64) -> Config {
    let windows = driver_domain::acpi::find_rsdp(&memory::PhysMem, rsdp_hint)
        .and_then(|rsdp| driver_domain::acpi::ecam_windows(&memory::PhysMem, rsdp));
    match windows {
        Ok(w) => {
            if let Some(win) = w.iter().find(|w| w.segment == 0 && w.start_bus == 0) {
                let len = (u64::from(win.end_bus) + 1) << 20;
                if let Some(mmio) = memory::map_mmio(win.base, len) {
                    info!(
                        "event=pci_access method=ecam base={:#x} buses={}",
                        win.base,
                        u32::from(win.end_bus) + 1
                    );
                    return Config::Ecam(EcamConfig(mmio));
                }
            }
            info!("event=pci_access method=ports reason=no_usable_ecam_window");
        }
        Err(e) => info!("event=pci_access method=ports reason={e:?}"),
    }
    Config::Ports(PortConfig)
}

/// An xHCI controller after takeover.
pub struct Xhci {
    /// Its place among the controllers taken over, from 0 in PCI order: it names its buses
    /// (`driver_domain::host_set::first_bus`) and its interrupt counter.
    pub index: usize,
    /// Where it sits.
    pub bdf: Bdf,
    /// The interrupt vector its first MSI/MSI-X message raises, if one is routed.
    pub vector: Option<u8>,
    /// BAR0, mapped uncached.
    pub regs: Mmio,
}

/// Interrupts each controller raised, by [`Xhci::index`].
static XHCI_INTERRUPTS: [AtomicU64; MAX_CONTROLLERS] =
    [const { AtomicU64::new(0) }; MAX_CONTROLLERS];

/// The interrupt handler of controller `K`: each controller has its own vector, so an
/// interrupt says which controller has events without reading any register.
fn on_xhci_interrupt<const K: usize>(_: &mut interrupts::Frame) {
    XHCI_INTERRUPTS[K].fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

/// The handler of each controller, by index.
const XHCI_HANDLERS: [interrupts::Handler; MAX_CONTROLLERS] = [
    on_xhci_interrupt::<0>,
    on_xhci_interrupt::<1>,
    on_xhci_interrupt::<2>,
    on_xhci_interrupt::<3>,
];

/// Most memory BARs [`probe`] reports.
pub const MAX_BARS: usize = 64;

/// Logs every function and takes over every xHCI controller, up to [`MAX_CONTROLLERS`].
/// Returns them and the ranges every memory BAR decodes.
pub fn probe(
    cfg: &mut Config,
) -> (
    heapless::Vec<Xhci, MAX_CONTROLLERS>,
    heapless::Vec<Range, MAX_BARS>,
) {
    let devices = pci::scan(cfg);
    let mut bars = heapless::Vec::new();
    let mut xhci = heapless::Vec::new();
    for (bdf, h) in &devices {
        info!(
            "event=pci_device bdf={bdf} vid={:04x} did={:04x} class={:06x}",
            h.vendor, h.device, h.class
        );
        if h.header_type != 0 {
            continue;
        }
        let mut index = 0;
        while index < 6 {
            let bar = pci::read_bar(cfg, *bdf, index);
            if let Some(Bar::Memory { base, size, .. }) = bar {
                let _ = bars.push(Range {
                    start: base,
                    end: base.saturating_add(size),
                });
            }
            index += if matches!(bar, Some(Bar::Memory { is_64: true, .. })) {
                2
            } else {
                1
            };
        }
        if h.class != pci::CLASS_XHCI {
            continue;
        }
        if xhci.is_full() {
            // Left as firmware left it: its DMA goes to memory not ours to watch, as before
            // it was passed through.
            warn!("event=xhci_refused bdf={bdf} reason=too_many_controllers max={MAX_CONTROLLERS}");
            continue;
        }
        if let Some(x) = take_over(cfg, *bdf, h.vendor, h.device, xhci.len()) {
            let _ = xhci.push(x);
        }
    }
    if xhci.is_empty() {
        warn!("event=no_controller reason=no_function_with_class_0c0330");
    }
    (xhci, bars)
}

fn take_over(cfg: &mut Config, bdf: Bdf, vendor: u16, device: u16, index: usize) -> Option<Xhci> {
    let Some(Bar::Memory { base, size, .. }) = pci::read_bar(cfg, bdf, 0) else {
        warn!("event=xhci_refused bdf={bdf} reason=bar0_not_memory");
        return None;
    };
    if base == 0 {
        warn!("event=xhci_refused bdf={bdf} reason=bar0_unassigned");
        return None;
    }
    let Some(regs) = memory::map_mmio(base, size) else {
        warn!("event=xhci_refused bdf={bdf} reason=bar0_unmappable base={base:#x} size={size:#x}");
        return None;
    };
    // Memory decoding on, bus mastering still off, legacy INTx off.
    let cmd = cfg.read16(bdf, pci::reg::COMMAND);
    cfg.write16(
        bdf,
        pci::reg::COMMAND,
        (cmd | pci::COMMAND_MEMORY | pci::COMMAND_INTX_DISABLE) & !pci::COMMAND_BUS_MASTER,
    );
    // Capability registers are read 32 bits wide: QEMU returns 0 for a 16-bit HCIVERSION read.
    let cap = regs.read32(0);
    let hciversion = cap >> 16;
    let hcsparams1 = regs.read32(4);
    // A laptop's firmware may own the controller (USB Legacy Support) and take SMIs on its
    // events: it is asked to let go first, and its SMIs are turned off.
    let hal = super::usb::KernelHal::new(regs);
    let handoff = xhci_driver::legacy_handoff(&hal);
    info!(
        "event=xhci_legacy_handoff bdf={bdf} result={}",
        handoff.name()
    );
    // Firmware (SeaBIOS) leaves the controller running with DMA into memory that is ours
    // now: only a halted, reset controller may master the bus.
    match xhci_driver::halt_and_reset(&hal) {
        Ok(was_running) => info!("event=xhci_reset was_running={was_running} ok=true"),
        Err(e) => {
            warn!("event=xhci_refused bdf={bdf} reason=reset_failed error={e}");
            return None;
        }
    }
    let cmd = cfg.read16(bdf, pci::reg::COMMAND);
    cfg.write16(bdf, pci::reg::COMMAND, cmd | pci::COMMAND_BUS_MASTER);
    let vector = route_interrupt(cfg, bdf, XHCI_HANDLERS[index]);
    let bus = driver_domain::host_set::first_bus(index);
    info!(
        "event=xhci_found index={index} bdf={bdf} vid={vendor:04x} did={device:04x} bar0={base:#x} size={size:#x} hciversion={hciversion:#x} slots={} ports={} buses={bus},{}",
        hcsparams1 & 0xff,
        hcsparams1 >> 24,
        bus + 1
    );
    Some(Xhci {
        index,
        bdf,
        vector,
        regs,
    })
}

/// Routes the controller's first interrupter to a fresh vector on this CPU, served by
/// `handler`: MSI-X entry 0 (programmed masked, then unmasked), else MSI. The driver turns
/// interrupts on in the controller.
fn route_interrupt(cfg: &mut Config, bdf: Bdf, handler: interrupts::Handler) -> Option<u8> {
    let vector = interrupts::allocate()?;
    let msg = Message::fixed(apic::id(), vector)?;
    interrupts::register(vector, handler);
    // MSI-X, its table in whichever BAR holds it; else MSI; else the controller is polled
    // on every wake-up.
    let msix = pci::msix(cfg, bdf).and_then(|m| {
        let table = match pci::msix_table(cfg, bdf, &m) {
            // Mapped on its own (the same uncached pages again when it is in BAR0).
            Ok((at, len)) => memory::map_mmio(at, len),
            Err(e) => {
                warn!(
                    "event=msix_unusable bdf={bdf} table_bar={} offset={:#x} reason={} next=msi",
                    m.table_bar,
                    m.table_offset,
                    e.name()
                );
                return None;
            }
        };
        Some((m, table?))
    });
    if let Some((m, table)) = msix {
        // Function-masked while the table is written; every entry masked, entry 0 programmed.
        pci::set_msix_control(cfg, bdf, &m, true, true);
        for i in 0..usize::from(m.table_size) {
            msi::set_entry_masked(&table, i, true);
        }
        msi::program_entry(&table, 0, msg);
        msi::set_entry_masked(&table, 0, false);
        pci::set_msix_control(cfg, bdf, &m, true, false);
        info!(
            "event=msix_routed bdf={bdf} entries={} vector={vector:#x} apic_id={}",
            m.table_size,
            apic::id()
        );
        return Some(vector);
    }
    if let Some(cap) = pci::find_capability(cfg, bdf, pci::CAP_MSI) {
        pci::configure_msi(cfg, bdf, cap, msg);
        info!(
            "event=msi_routed bdf={bdf} vector={vector:#x} apic_id={}",
            apic::id()
        );
        return Some(vector);
    }
    warn!("event=interrupt_unrouted bdf={bdf} reason=no_msi_or_msix");
    None
}

/// Interrupts controller `index` has raised.
pub fn xhci_interrupts(index: usize) -> u64 {
    XHCI_INTERRUPTS
        .get(index)
        .map_or(0, |n| n.load(Ordering::Relaxed))
}

/// Interrupts all controllers have raised.
pub fn all_xhci_interrupts() -> u64 {
    XHCI_INTERRUPTS
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .sum()
}
