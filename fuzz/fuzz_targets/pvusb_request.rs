//! The PVUSB request decoder on arbitrary ring entries from a frontend, and for an indirect
//! request the bytes after the entry as its indirect pages' entries. Nothing may panic, and
//! whatever it accepts must satisfy the invariants code above it relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen::abi::usbif::UsbifUrbRequest;
use xen::pvusb::{UrbRequest, UsbIsoPacketDescriptor};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Some((&ports, entry)) = data.split_first() else { return };
    let Ok((raw, pages)) = UsbifUrbRequest::read_from_prefix(entry) else { return };
    let num_ports = ports % 32;
    match UrbRequest::decode(&raw, num_ports) {
        Ok(UrbRequest::Submit(mut s)) => {
            assert!(s.pipe.port >= 1 && s.pipe.port <= num_ports);
            if let Some(indirect) = s.indirect.clone() {
                assert!(s.buffer.is_empty() && s.iso_descriptors.is_empty());
                assert!(indirect.count >= 1 && indirect.count <= xen::pvusb::MAX_INDIRECT_SEGMENTS);
                let listed = &pages[..indirect.entry_bytes().min(pages.len())];
                if s.resolve_indirect(listed).is_err() {
                    return;
                }
                assert_eq!(s.buffer.len(), usize::from(indirect.count));
            } else {
                assert!(s.buffer.len() + s.iso_descriptors.len() <= 16);
            }
            let total: usize = s.buffer.iter().map(|g| usize::from(g.length)).sum();
            assert_eq!(total, s.buffer_length as usize);
            for g in s.buffer.iter().chain(s.iso_descriptors.iter()) {
                assert!(g.length > 0 && usize::from(g.offset) + usize::from(g.length) <= 4096);
            }
            // One contiguous buffer: only the first starts inside its page, only the last
            // ends inside it.
            let n = s.buffer.len();
            for (i, g) in s.buffer.iter().enumerate() {
                assert!(i == 0 || g.offset == 0);
                assert!(i + 1 == n || usize::from(g.offset) + usize::from(g.length) == 4096);
            }
            if let xen::pvusb::Transfer::Isochronous { number_of_packets, .. } = s.transfer {
                let bytes: usize = s.iso_descriptors.iter().map(|g| usize::from(g.length)).sum();
                let need = usize::from(number_of_packets) * core::mem::size_of::<UsbIsoPacketDescriptor>();
                assert!(bytes >= need);
            }
        }
        Ok(UrbRequest::Unlink { port, .. }) => assert!(port >= 1 && port <= num_ports),
        Err(_) => {}
    }
});
