//! usbdom's Xen guest layer: the wire ABI, shared rings, the xenstore protocol, xenbus states,
//! the traits a backend needs from the hypervisor, and (feature `sim`) an in-process Xen.
//!
//! `no_std` with `alloc`; host tests use std.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod abi;
pub mod hypervisor;
pub mod page;
pub mod pvusb;
pub mod ring;
#[cfg(feature = "sim")]
pub mod sim;
pub mod xenbus;
pub mod xenstore;
