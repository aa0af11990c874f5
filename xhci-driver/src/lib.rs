//! A driver for xHCI USB host controllers (eXtensible Host Controller Interface 1.2), generic
//! over a small platform trait ([`Hal`]) so everything here is safe Rust that runs on the host.
//!
//! Register layouts are read 32 bits wide by this crate; TRB encodings come from the `xhci`
//! crate. Layers: [`ring`] (Command, Transfer and Event Rings), [`port`] (PORTSC),
//! [`controller`] (bring-up, commands, root ports, first enumeration).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod controller;
pub mod hal;
pub mod port;
pub mod ring;
#[cfg(test)]
mod testing;

pub use controller::{Capabilities, Controller, Error, RootPort, UsbDevice};
pub use hal::{DmaBuffer, Hal};
pub use port::{Portsc, Speed};
