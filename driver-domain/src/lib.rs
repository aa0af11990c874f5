//! The driver domain's platform logic that needs no hardware: command line, physical memory
//! bookkeeping, PCI configuration decoding, ACPI table parsing, MSI/MSI-X message layout,
//! the log line format, and (with the `demo` feature) demo mode and the self-tests' data.
//! The kernel binary (`main.rs`) wires these to ports, MMIO and the CPU; everything here
//! runs in host tests.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod acpi;
pub mod cmdline;
#[cfg(feature = "demo")]
pub mod demo;
pub mod frames;
pub mod host_set;
pub mod logfmt;
pub mod msi;
pub mod pci;
#[cfg(feature = "demo")]
pub mod selftest;
pub mod xhci_host;

/// Reads guest-physical memory (identity-mapped in the kernel, a byte buffer in tests).
pub trait PhysRead {
    /// Copies `buf.len()` bytes at physical address `phys`; false when the range is not
    /// readable.
    fn read(&self, phys: u64, buf: &mut [u8]) -> bool;
}

/// 32-bit register access to one MMIO region, by byte offset.
pub trait Mmio32 {
    /// Reads the register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the register at `offset`.
    fn write32(&self, offset: usize, value: u32);
}
