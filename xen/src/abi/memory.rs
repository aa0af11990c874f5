//! `public/memory.h`: placing Xen pages in the guest physmap and reading the memory map.

use super::{xen_abi, DomId};

/// `XENMEM_add_to_physmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// `XENMEM_memory_map`.
pub const XENMEM_MEMORY_MAP: u32 = 9;

/// `XENMAPSPACE_shared_info`.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;

xen_abi! {
    /// `XENMEM_add_to_physmap`: put frame `idx` of `space` at guest frame `gpfn`.
    pub struct XenAddToPhysmap = "struct xen_add_to_physmap" {
        pub domid: DomId = "domid",
        pub size: u16 = "size",
        pub space: u32 = "space",
        pub idx: u64 = "idx",
        pub gpfn: u64 = "gpfn",
    }

    /// `XENMEM_memory_map` (`buffer` is a guest handle: a pointer to e820 records).
    pub struct XenMemoryMap = "struct xen_memory_map" {
        pub nr_entries: u32 = "nr_entries",
        pub _pad: u32 = PAD,
        pub buffer: u64 = "buffer",
    }
}
