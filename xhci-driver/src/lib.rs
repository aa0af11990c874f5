//! A driver for xHCI USB host controllers (eXtensible Host Controller Interface 1.2), generic
//! over a small platform trait ([`Hal`]) so everything here is safe Rust that runs on the host.
//!
//! Register layouts are read 32 bits wide by this crate; TRB encodings come from the `xhci`
//! crate. Layers: [`ring`] (Command, Transfer and Event Rings), [`port`] (PORTSC),
//! [`descriptor`] (configuration descriptors), [`hub`] (hub descriptor and port status,
//! Route Strings, bus ids, Transaction Translators), [`transfer`] (TDs of Normal TRBs,
//! Endpoint Contexts), [`controller`] (taking the controller from firmware with
//! [`legacy_handoff`], bring-up, commands, root ports and hubs, enumeration, configuration,
//! transfers of every type, cancellation, recovery).
//!
//! # The API usbback uses
//! usbback passes guests' requests through to devices, so this is raw USB, not class
//! drivers. Everything goes through [`Controller`]:
//! - **Devices**: [`Controller::enumerate_root_ports`] at start, then
//!   [`Controller::handle_port_changes`] return each [`UsbDevice`] found (bus id
//!   [`UsbDevice::busid`], speed, VID:PID, class, product string, [`UsbDevice::is_hub`]);
//!   [`Controller::take_detached`] names those gone (slot, bus id). Each is logged as
//!   `event=usb_device` / `event=usb_device_gone`.
//! - **Transfers** are asynchronous: [`Controller::queue_control`] (a SETUP packet and a
//!   Data Stage buffer), [`Controller::queue_transfer`] (bulk, interrupt),
//!   [`Controller::queue_isochronous`] (packets with their own outcomes), each over a
//!   scatter-gather list of bus addresses ([`DmaSegment`]) and returning a [`TransferId`].
//!   After [`Controller::poll_events`] (the main loop calls it when the controller
//!   interrupted), [`Controller::take_completed`] hands out finished transfers, each exactly
//!   once: bytes done, or why not ([`Error::Stall`] with the endpoint already reset,
//!   [`Error::NoDevice`] when the device left, [`Error::Cancelled`], …).
//!   [`Controller::cancel`] takes one back without disturbing the others on its endpoint.
//! - **Device state** a guest changes: [`Controller::queue_set_configuration`],
//!   [`Controller::queue_set_interface`] and [`Controller::queue_clear_halt`] (then
//!   [`Controller::reset_host_endpoint`]) do the controller's side at once and queue the
//!   device's request as a control transfer, so no one waits for the device;
//!   [`Controller::set_configuration`], [`Controller::set_interface`] and
//!   [`Controller::clear_halt`] are the same, waited for; [`Controller::reset_device`]
//!   waits for the port reset. For policy, [`Controller::configurations`] has every
//!   configuration offered (at most [`controller::MAX_CONFIGURATIONS`], each at most
//!   [`descriptor::MAX_TOTAL_LENGTH`] bytes) as the device described them when it was
//!   enumerated, within a time budget for the whole description; a configuration can be
//!   vetted before it is set: [`Controller::find_configuration`], then
//!   [`Controller::queue_set_configuration`] with it; [`Controller::active_configuration`]
//!   has the alternate settings a SET_INTERFACE chooses from.
//! - **Controller failure**: [`Controller::poll_events`] returns [`Error::HostSystemError`]
//!   or [`Error::HostControllerError`] ([`Controller::error`] looks without polling);
//!   [`Controller::restart`] fails every transfer, gives up every device and brings the
//!   controller and its devices back.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod controller;
pub mod descriptor;
pub mod hal;
pub mod hub;
pub mod mass_storage;
pub mod port;
pub mod ring;
pub mod transfer;

pub use controller::{
    halt_and_reset, legacy_handoff, Capabilities, Completed, Controller, Error, Handoff,
    IsoOutcome, RootPort, TransferId, UsbDevice,
};
pub use descriptor::{Configuration, DescriptorError, Endpoint, Interface};
pub use hal::{DmaBuffer, Hal};
pub use port::Portsc;
pub use transfer::DmaSegment;
