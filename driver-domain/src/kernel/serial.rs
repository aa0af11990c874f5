//! Log sinks that need no setup from a hypervisor: COM1 (a 16550 UART, the emulated serial a
//! user watches with `xl console` or QEMU's `-serial`) and, where there is none, the 0xE9
//! debug port (Xen's `guest_loglvl=all` log and QEMU's `-debugcon`).

use super::cpu::{inb, outb};

const COM1: u16 = 0x3f8;
const DEBUGCON: u16 = xen::abi::hypercall::XEN_HVM_DEBUGCONS_IOPORT;

/// COM1 at 115200 8n1, FIFO on, no interrupts. Returns false when no UART answers (the
/// scratch register does not hold a value), as in a PVH domU.
pub fn init() -> bool {
    outb(COM1 + 7, 0x5a);
    if inb(COM1 + 7) != 0x5a {
        return false;
    }
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB on
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8n1, DLAB off
    outb(COM1 + 2, 0xc7); // FIFO on, cleared, 14-byte threshold
    outb(COM1 + 4, 0x03); // DTR, RTS
    true
}

/// Bytes of the 16550's transmit FIFO: written in one go once it is empty.
const FIFO_BYTES: usize = 16;

/// Writes bytes to COM1, or to the debug port where there is no COM1. Each access is a trap
/// to whatever emulates the port: the line status is read once per FIFO's worth, not per
/// byte.
pub fn write(bytes: &[u8], com1: bool) {
    if !com1 {
        for &b in bytes {
            outb(DEBUGCON, b);
        }
        return;
    }
    for chunk in bytes.chunks(FIFO_BYTES) {
        // Wait for an empty FIFO (THRE); bounded so a wedged UART cannot hang the kernel.
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}
