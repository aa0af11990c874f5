//! A driver for xHCI USB host controllers (eXtensible Host Controller Interface 1.2), generic
//! over a small platform trait ([`Hal`]) so everything here is safe Rust that runs on the host.
//!
//! Register layouts are read 32 bits wide by this crate; TRB encodings come from the `xhci`
//! crate. Layers: [`ring`] (Command, Transfer and Event Rings), [`port`] (PORTSC),
//! [`descriptor`] (configuration descriptors), [`hub`] (hub descriptor and port status,
//! Route Strings, bus ids, Transaction Translators), [`transfer`] (TDs of Normal TRBs,
//! Endpoint Contexts), [`controller`] (bring-up, commands, root ports and hubs, enumeration,
//! configuration, bulk and interrupt transfers).
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
#[cfg(test)]
mod testing;
pub mod transfer;

pub use controller::{
    halt_and_reset, Capabilities, Controller, Error, RootPort, TransferId, UsbDevice,
};
pub use descriptor::{Configuration, DescriptorError, Endpoint, Interface};
pub use hal::{DmaBuffer, Hal};
pub use port::{Portsc, Speed};
pub use transfer::{Direction, Segment};
