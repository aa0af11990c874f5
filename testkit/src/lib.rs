//! The test kit: what tests run the production crates against, kept out of them.
//!
//! - [`raw_frontend`]: a PVUSB frontend whose requests a test writes by hand, with the
//!   toolstack's part, for usbback's tests and `bench backend`.
//! - [`fake_xhci`]: an xHCI controller behind `xhci-driver`'s HAL, with a USB 2 device and a
//!   hub, for the tests of `xhci-driver` and of the driver domain's `XhciHost`.
//! - [`main_loop`]: a turn of the driver domain's main loop for a backend on `xen::sim`.
//! - [`model_host`]: a host whose transfers a test holds, finishes late, fails or cancels.
//! - [`sim_host`]: a USB host with simulated devices (a Bulk-Only stick, a boot keyboard, a
//!   hub) behind usbback's [`usbback::host::UsbHost`], for the tests of usbback, the
//!   frontends, usbctl and the driver domain's demo, the fuzzers and `bench backend`.
//!
//! `no_std` with `alloc`, like the crates it serves, so a fuzzer or a kernel test can link it.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod fake_xhci;
pub mod main_loop;
pub mod model_host;
pub mod raw_frontend;
pub mod sim_host;
