//! The seam between the backend and the real host controller: [`UsbHost`].
//!
//! The backend passes guests' requests through to devices, so the host offers raw USB
//! transfers on any endpoint of any device it found, plus the few operations that change the
//! host controller's own view of a device (configuration, alternate setting, endpoint halt,
//! reset). The driver domain implements it over `xhci-driver`; the test kit's `sim_host`
//! implements it with device models for host tests, and its `model_host` with transfers a
//! test finishes as it likes.
//!
//! Everything is asynchronous except the configuration operations: [`UsbHost::submit`]
//! queues a transfer and returns, and its [`Completion`] comes out of
//! [`UsbHost::poll`] later, exactly once, whether it succeeded, failed, was cancelled or its
//! device went away.
//!
//! What a device offers is told for policy ([`DeviceInfo::interface_classes`]): the classes
//! of every interface and alternate setting of every configuration the host offers (at most
//! [`MAX_CONFIGURATIONS`]), or [`InterfaceClasses::Unknown`] when one could not be read. A
//! configuration or alternate setting is vetted again when a guest selects it: the host
//! shows the caller what it is about to activate ([`Vet`]) before it asks the device.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use usb::TransferError;
use usb::{Direction, IsoPacket, Speed, TransferType};

/// Configurations of a device a host offers: the first this many (USB allows 255; devices
/// have one or two). Their classes are what [`DeviceInfo::interface_classes`] tells, and a
/// SET_CONFIGURATION of any other is refused, so nothing unchecked can be activated.
pub const MAX_CONFIGURATIONS: u8 = 8;

/// Characters kept of a device's product and serial strings: a string descriptor holds at
/// most 126 UTF-16 units (bLength is one byte), so a longer one did not come from a device
/// as USB describes it.
pub const MAX_STRING_CHARS: usize = 126;

/// A set of class codes (bInterfaceClass): a bit each, so nothing a device reports makes it
/// grow.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassSet([u64; 4]);

impl ClassSet {
    /// The set holding `class` alone.
    pub fn of(class: u8) -> ClassSet {
        let mut s = ClassSet::default();
        s.insert(class);
        s
    }

    /// Adds `class`.
    pub fn insert(&mut self, class: u8) {
        self.0[usize::from(class / 64)] |= 1 << (class % 64);
    }

    /// Whether `class` is in it.
    pub fn contains(&self, class: u8) -> bool {
        self.0[usize::from(class / 64)] & (1 << (class % 64)) != 0
    }

    /// The classes in either set.
    pub fn union(mut self, other: ClassSet) -> ClassSet {
        self.0.iter_mut().zip(other.0).for_each(|(a, b)| *a |= b);
        self
    }

    /// Its classes, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(|c| self.contains(*c))
    }
}

impl FromIterator<u8> for ClassSet {
    fn from_iter<I: IntoIterator<Item = u8>>(classes: I) -> ClassSet {
        let mut s = ClassSet::default();
        for c in classes {
            s.insert(c);
        }
        s
    }
}

impl fmt::Debug for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, c) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{c:02x}")?;
        }
        f.write_str("}")
    }
}

/// The interface classes a device offers, as far as the host could read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterfaceClasses {
    /// Every interface and alternate setting of every configuration offered was read: these
    /// are their bInterfaceClass values.
    Checked(ClassSet),
    /// A configuration descriptor could not be read (or parsed): the device may offer any
    /// class, and the policy treats it so ([`crate::policy`]).
    Unknown,
}

/// Asked by [`UsbHost::set_configuration`] and [`UsbHost::set_interface`] with the classes
/// of what they would activate, after the host read it and before the device is asked:
/// false refuses the operation ([`TransferError::Refused`]).
pub type Vet<'a> = dyn FnMut(&ClassSet) -> bool + 'a;

/// A device the host enumerated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The host's name for this attachment: never reused, so a transfer for a device that
    /// was unplugged cannot reach the next device plugged into the same port.
    pub id: u32,
    /// Linux-style bus id (`1-2`, `2-1.4`): what users type to assign it.
    pub busid: String,
    /// Speed.
    pub speed: Speed,
    /// idVendor.
    pub vendor_id: u16,
    /// idProduct.
    pub product_id: u16,
    /// bDeviceClass.
    pub class: u8,
    /// The classes of every interface it offers, for policy.
    pub interface_classes: InterfaceClasses,
    /// The product string, when it has one.
    pub product: Option<String>,
    /// The serial number string, when it has one: with the IDs, it names a device wherever
    /// it is plugged in.
    pub serial: Option<String>,
    /// Whether it is a hub (never assigned to a guest).
    pub is_hub: bool,
}

impl DeviceInfo {
    /// Cuts the product and serial strings to [`MAX_STRING_CHARS`]; returns which were cut.
    /// They are logged and published, and a host other than the xHCI one (a model) may
    /// report strings of any length.
    pub fn cap_strings(&mut self) -> Vec<&'static str> {
        let mut cut = Vec::new();
        for (name, s) in [("product", &mut self.product), ("serial", &mut self.serial)] {
            if let Some(s) = s {
                if let Some((at, _)) = s.char_indices().nth(MAX_STRING_CHARS) {
                    s.truncate(at);
                    cut.push(name);
                }
            }
        }
        cut
    }
}

/// What changed on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// A device was enumerated.
    Attached(DeviceInfo),
    /// A device went away; every transfer it had completes with [`TransferError::NoDevice`]
    /// (those completions come before this event).
    Detached {
        /// [`DeviceInfo::id`].
        id: u32,
        /// Its bus id.
        busid: String,
    },
    /// A transfer finished.
    Completed(Completion),
}

/// One piece of a transfer's buffer as the host gets it: `len` bytes at `offset` in a page
/// the driver domain holds (its own frame, or a guest's grant mapped).
///
/// `phys` is the page's bus address (a host controller DMAs there); `page` gives a host
/// that copies (the simulated one) access to the same bytes.
#[derive(Clone, Debug)]
pub struct PageSegment<P> {
    /// The page.
    pub page: P,
    /// Bus address of the page's first byte.
    pub phys: u64,
    /// Offset of the first byte in the page.
    pub offset: u16,
    /// Bytes.
    pub len: u16,
}

/// What happened to one isochronous packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsoResult {
    /// Bytes transferred.
    pub actual_length: u32,
    /// Its status.
    pub status: Result<(), TransferError>,
}

/// A transfer to queue.
///
/// A short IN transfer completes with the bytes it moved, whatever the guest's request said
/// of short reads (`USBIF_SHORT_NOT_OK`): the guest's USB core turns a short read its URB did
/// not allow into `-EREMOTEIO` itself (Linux `__usb_hcd_giveback_urb`), and no usbif status
/// could carry that error (an I/O error becomes `-EPROTO`, which usb-storage answers with a
/// device reset).
#[derive(Clone, Debug)]
pub struct Transfer<P> {
    /// The caller's name for it, echoed in its [`Completion`] and used to cancel it.
    pub token: u64,
    /// Endpoint number, 0..=15.
    pub endpoint: u8,
    /// Direction (for control transfers, of the data stage; bit 7 of bmRequestType).
    pub direction: Direction,
    /// Transfer type; it must match the endpoint's.
    pub transfer_type: TransferType,
    /// The SETUP packet of a control transfer.
    pub setup: Option<[u8; 8]>,
    /// The buffer, in order; empty for a transfer without data.
    pub segments: TransferSegments<P>,
    /// Isochronous packets; empty otherwise.
    pub iso_packets: Vec<IsoPacket>,
    /// Isochronous start frame, `None` for as soon as possible.
    pub start_frame: Option<u16>,
}

impl<P> Transfer<P> {
    /// Total bytes of the buffer.
    pub fn length(&self) -> usize {
        self.segments.iter().map(|s| usize::from(s.len)).sum()
    }
}

/// A transfer's buffer: a request's pages, inline for a stock request (no allocation per
/// transfer).
pub type TransferSegments<P> = xen::pvusb::SegList<PageSegment<P>>;

/// A finished transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// [`Transfer::token`].
    pub token: u64,
    /// Bytes transferred, or why it failed.
    pub result: Result<usize, TransferError>,
    /// Isochronous: the frame it started in.
    pub start_frame: u16,
    /// Isochronous: one result per packet, in order.
    pub iso: Vec<IsoResult>,
}

/// A USB host controller with its devices, as the backend uses it.
pub trait UsbHost<P> {
    /// Every device present now (hubs included).
    fn devices(&self) -> Vec<DeviceInfo>;

    /// Does pending work (controller events, hotplug) and hands out what happened since the
    /// last call, oldest first.
    fn poll(&mut self, events: &mut Vec<HostEvent>);

    /// Queues `transfer` on device `device`. On `Err` nothing was queued and no completion
    /// will come.
    fn submit(&mut self, device: u32, transfer: Transfer<P>) -> Result<(), TransferError>;

    /// Cancels the transfer `token` of `device`: it completes with
    /// [`TransferError::Cancelled`] (or with its real result if it finished first) and the
    /// other transfers on its endpoint go on. Returns false when no such transfer is in
    /// flight (its completion was handed out already).
    fn cancel(&mut self, device: u32, token: u64) -> bool;

    /// SET_CONFIGURATION `value` (0 unconfigures), with the host's endpoints set up for it.
    /// The configuration is one of the first [`MAX_CONFIGURATIONS`]; `vet` is asked with the
    /// classes of all its interfaces and alternate settings, as the host read them to set up
    /// its endpoints, and when it says no the device is left as it was.
    ///
    /// Like [`UsbHost::submit`], it does not wait for the device: on `Ok` the request is
    /// on its way and its outcome comes as the completion of transfer `token` (no data),
    /// which [`UsbHost::cancel`] can cancel. A slow device keeps only its own guest
    /// waiting.
    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError>;

    /// SET_INTERFACE: alternate setting `alternate` of interface `interface`, with the
    /// host's endpoints switched to it. `vet` is asked with that alternate setting's class
    /// first; when it says no the device is left as it was. Completes as transfer `token`,
    /// as [`UsbHost::set_configuration`] does.
    fn set_interface(
        &mut self,
        device: u32,
        interface: u8,
        alternate: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError>;

    /// CLEAR_FEATURE(ENDPOINT_HALT) on endpoint `address` (bit 7 IN), with the host's
    /// endpoint state (data toggle, sequence number) reset to match once the device took
    /// it. Completes as transfer `token`, as [`UsbHost::set_configuration`] does.
    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError>;

    /// Resets the device (port reset) and brings it back to its address, unconfigured.
    /// In-flight transfers complete with [`TransferError::NoDevice`].
    fn reset(&mut self, device: u32) -> Result<(), TransferError>;
}

/// The host of a driver domain without a USB controller (a PVH domU cannot be given one):
/// no device is ever present, so every port stays empty and every URB is answered "no
/// device".
pub struct Absent;

impl<P> UsbHost<P> for Absent {
    fn devices(&self) -> Vec<DeviceInfo> {
        Vec::new()
    }

    fn poll(&mut self, _: &mut Vec<HostEvent>) {}

    fn submit(&mut self, _: u32, _: Transfer<P>) -> Result<(), TransferError> {
        Err(TransferError::NoDevice)
    }

    fn cancel(&mut self, _: u32, _: u64) -> bool {
        false
    }

    fn set_configuration(
        &mut self,
        _: u32,
        _: u8,
        _: u64,
        _: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        Err(TransferError::NoDevice)
    }

    fn set_interface(
        &mut self,
        _: u32,
        _: u8,
        _: u8,
        _: u64,
        _: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        Err(TransferError::NoDevice)
    }

    fn clear_halt(&mut self, _: u32, _: u8, _: u64) -> Result<(), TransferError> {
        Err(TransferError::NoDevice)
    }

    fn reset(&mut self, _: u32) -> Result<(), TransferError> {
        Err(TransferError::NoDevice)
    }
}
