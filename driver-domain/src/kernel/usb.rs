//! The xHCI driver on this machine: its HAL over the mapped BAR0 and identity-mapped DMA
//! frames, bring-up and root-port enumeration at boot, and event handling in the main loop,
//! for every controller (`driver_domain::host_set::HostSet` makes them one host for usbback).

use alloc::vec::Vec;
use driver_domain::host_set::{self, HostSet};
use driver_domain::xhci_host::XhciHost;
use driver_domain::Mmio32;
use log::{info, warn};
use usbback::host::{DeviceInfo, HostEvent, Transfer, TransferError, UsbHost, Vet};
use xhci_driver::{Controller, DmaBuffer, Hal};

use super::memory::{self, DmaRegion, Mmio};
#[cfg(feature = "demo")]
use super::selftest::{self, SelfTests};
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

/// Every controller driven, as one host.
pub type Usbs = HostSet<Usb>;

/// One controller's running driver and how the main loop learns of its events.
pub struct Usb {
    /// Its place among the controllers (`pci::Xhci::index`).
    index: usize,
    /// The controller with its devices, as usbback uses it (the self-tests use the driver
    /// underneath).
    pub(super) host: XhciHost<KernelHal>,
    /// BAR0, for `usbtest=controller-error` to make the controller fail.
    #[cfg(feature = "demo")]
    pub(super) regs: Mmio,
    /// Whether MSI/MSI-X is routed; without it the event ring is polled on every wake-up
    /// (the 100 Hz timer wakes the loop).
    interrupt_routed: bool,
    /// `pci::xhci_interrupts(index)` when the event ring was last drained.
    seen: u64,
    /// The `usbtest=` self-tests' state.
    #[cfg(feature = "demo")]
    pub(super) tests: SelfTests,
}

/// Brings every controller up ([`bring_up`]); those that fail are left out.
pub fn bring_up_all(found: &[pci::Xhci]) -> Usbs {
    let mut usbs = Usbs::default();
    for x in found {
        if let Some(u) = bring_up(x) {
            usbs.push::<()>(u);
        }
    }
    usbs
}

/// Brings the controller up, proves its rings with a No Op command and enumerates the root
/// ports, named on its own buses.
fn bring_up(found: &pci::Xhci) -> Option<Usb> {
    let index = found.index;
    let mut xhci = match Controller::start(KernelHal::new(found.regs)) {
        Ok(x) => x,
        Err(e) => {
            warn!("event=xhci_start_failed bdf={} error={e}", found.bdf);
            return None;
        }
    };
    xhci.set_first_bus(host_set::first_bus(index));
    // More No Ops than the Command Ring and the Event Ring hold: both wrap (Link TRB with
    // Toggle Cycle, the consumer's cycle flip) against the real controller at every boot.
    let before = pci::xhci_interrupts(index);
    let started = time::now_micros();
    let noop = (0..NOOPS).try_for_each(|_| xhci.noop());
    match noop {
        Ok(()) => info!(
            "event=xhci_noop ok=true count={NOOPS} us={} interrupts_before={before} interrupts_after={}",
            time::now_micros() - started,
            pci::xhci_interrupts(index)
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
        "event=usb_enumerated index={index} bdf={} devices={} xhci_interrupts={}",
        found.bdf,
        devices.len(),
        pci::xhci_interrupts(index)
    );
    Some(Usb {
        index,
        host: XhciHost::new(xhci, devices),
        #[cfg(feature = "demo")]
        regs: found.regs,
        interrupt_routed: found.vector.is_some(),
        seen: pci::xhci_interrupts(index),
        #[cfg(feature = "demo")]
        tests: SelfTests::default(),
    })
}

/// Whether [`service`] has something to do for any controller.
pub fn any_work(usbs: &mut Usbs) -> bool {
    usbs.members().any(has_work)
}

/// Whether [`service_one`] has something to do: the controller interrupted since it last
/// looked, or changes wait.
fn has_work(usb: &mut Usb) -> bool {
    !usb.host.is_dead()
        && (pci::xhci_interrupts(usb.index) != usb.seen
            || usb.host.has_pending()
            || usb.host.controller().has_port_changes())
}

/// The controller device `busid` is on.
#[cfg(feature = "demo")]
pub fn holding<'a>(usbs: &'a mut Usbs, busid: &str) -> Option<&'a mut Usb> {
    usbs.members()
        .find(|u| u.host.usb_devices().any(|d| d.busid() == busid))
}

/// Every controller's events ([`service_one`], through `Usb`'s `UsbHost::poll`), with the
/// set's device ids, for usbback.
pub fn service(usbs: &mut Usbs) -> Vec<HostEvent> {
    let mut events = Vec::new();
    UsbHost::<()>::poll(usbs, &mut events);
    events
}

/// Takes the controller's events when its interrupt counter moved (or always, without an
/// interrupt) and returns them, with its own device ids: devices plugged in are enumerated,
/// unplugged ones released, usbback's transfers completed, the self-tests' transfers moved
/// on. A controller that failed (Host System Error, Host Controller Error) is restarted: its
/// transfers fail, its devices go and come back.
fn service_one(usb: &mut Usb) -> Vec<HostEvent> {
    let mut events = Vec::new();
    let now = pci::xhci_interrupts(usb.index);
    // A controller error does not interrupt: it is looked for on every wake-up.
    let quiet = !has_work(usb) && usb.host.controller().error().is_none();
    if usb.host.is_dead() || (usb.interrupt_routed && quiet) {
        return events;
    }
    usb.seen = now;
    #[cfg(feature = "demo")]
    let restarts = usb.host.restarts();
    UsbHost::<()>::poll(&mut usb.host, &mut events);
    #[cfg(feature = "demo")]
    selftest::controller_polled(usb, restarts);
    if usb.host.is_dead() {
        return events;
    }
    // Devices that came or went are worth a line; transfers completing are not (one line
    // per URB would swamp a serial console).
    let changes = events
        .iter()
        .filter(|e| !matches!(e, HostEvent::Completed(_)))
        .count();
    if changes > 0 {
        info!(
            "event=xhci_events index={} count={changes} xhci_interrupts={now} devices={} slots_in_use={}",
            usb.index,
            usb.host.usb_devices().count(),
            usb.host.controller().occupied_slots().count()
        );
    }
    #[cfg(feature = "demo")]
    selftest::after_events(usb, restarts, &events);
    events
}

/// usbback's calls on one controller go to its driver; its events come through
/// [`service_one`], which also moves the self-tests on.
impl<P> UsbHost<P> for Usb {
    fn devices(&self) -> Vec<DeviceInfo> {
        UsbHost::<P>::devices(&self.host)
    }

    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        events.append(&mut service_one(self));
    }

    fn submit(&mut self, device: u32, transfer: Transfer<P>) -> Result<(), TransferError> {
        self.host.submit(device, transfer)
    }

    fn cancel(&mut self, device: u32, token: u64) -> bool {
        UsbHost::<P>::cancel(&mut self.host, device, token)
    }

    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        UsbHost::<P>::set_configuration(&mut self.host, device, value, token, vet)
    }

    fn set_interface(
        &mut self,
        device: u32,
        interface: u8,
        alternate: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        UsbHost::<P>::set_interface(&mut self.host, device, interface, alternate, token, vet)
    }

    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        UsbHost::<P>::clear_halt(&mut self.host, device, address, token)
    }

    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        UsbHost::<P>::reset(&mut self.host, device)
    }
}
