//! MSI and MSI-X messages for x86 (Intel SDM vol. 3, "Message Signalled Interrupts") and the
//! MSI-X table programming order (PCI Local Bus spec 6.8.2).

use crate::Mmio32;

/// The fixed part of an x86 MSI address.
pub const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;
/// Bytes of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: usize = 16;
/// MSI-X vector control: the entry is masked.
pub const MSIX_VECTOR_MASKED: u32 = 1;

/// An MSI message: where the device writes and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Address (always below 4 GiB on x86).
    pub address: u32,
    /// Data.
    pub data: u32,
}

impl Message {
    /// A fixed-delivery, edge-triggered interrupt on `vector` of the CPU with local APIC id
    /// `apic_id` (physical destination mode). Vectors below 0x10 are reserved; vector 0 would
    /// also mean "a pirq number" to Xen's device model. Ids above 255 need interrupt
    /// remapping and are refused.
    pub fn fixed(apic_id: u32, vector: u8) -> Option<Message> {
        if vector < 0x10 || apic_id > 0xff {
            return None;
        }
        Some(Message {
            address: MSI_ADDRESS_BASE | (apic_id << 12),
            data: u32::from(vector),
        })
    }
}

/// Programs MSI-X table entry `index` with `msg`, leaving it masked: mask first, then the
/// fields, so the device never sends a half-written message (and Xen's device model binds
/// the entry only when it is unmasked).
pub fn program_entry(table: &impl Mmio32, index: usize, msg: Message) {
    let base = index * MSIX_ENTRY_SIZE;
    let ctrl = table.read32(base + 12);
    table.write32(base + 12, ctrl | MSIX_VECTOR_MASKED);
    table.write32(base, msg.address);
    table.write32(base + 4, 0);
    table.write32(base + 8, msg.data);
}

/// Masks or unmasks MSI-X table entry `index`.
pub fn set_entry_masked(table: &impl Mmio32, index: usize, masked: bool) {
    let at = index * MSIX_ENTRY_SIZE + 12;
    let ctrl = table.read32(at);
    table.write32(
        at,
        if masked {
            ctrl | MSIX_VECTOR_MASKED
        } else {
            ctrl & !MSIX_VECTOR_MASKED
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Table {
        regs: RefCell<BTreeMap<usize, u32>>,
        writes: RefCell<std::vec::Vec<(usize, u32)>>,
    }

    impl Mmio32 for Table {
        fn read32(&self, offset: usize) -> u32 {
            *self.regs.borrow().get(&offset).unwrap_or(&0)
        }
        fn write32(&self, offset: usize, value: u32) {
            self.regs.borrow_mut().insert(offset, value);
            self.writes.borrow_mut().push((offset, value));
        }
    }

    #[test]
    fn fixed_messages_encode_destination_and_vector() {
        assert_eq!(
            Message::fixed(3, 0x41),
            Some(Message {
                address: 0xFEE0_3000,
                data: 0x41
            })
        );
        assert_eq!(Message::fixed(0, 0x0f), None);
        assert_eq!(Message::fixed(256, 0x40), None);
    }

    #[test]
    fn an_entry_is_masked_before_it_is_written_and_stays_masked() {
        let t = Table::default();
        t.regs.borrow_mut().insert(2 * 16 + 12, 0); // entry 2 unmasked by firmware
        program_entry(&t, 2, Message::fixed(1, 0x50).unwrap());
        let w = t.writes.borrow().clone();
        assert_eq!(w[0], (44, 1), "mask comes first");
        assert_eq!(&w[1..], &[(32, 0xFEE0_1000), (36, 0), (40, 0x50)]);
        set_entry_masked(&t, 2, false);
        assert_eq!(t.read32(44), 0);
    }
}
