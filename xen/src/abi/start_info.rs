//! `public/arch-x86/hvm/start_info.h`: what a PVH entry finds in `ebx`.

use super::xen_abi;

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_HVM_MEMMAP_TYPE_ACPI`.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// `XEN_HVM_MEMMAP_TYPE_NVS`.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// `XEN_HVM_MEMMAP_TYPE_UNUSABLE`.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// `XEN_HVM_MEMMAP_TYPE_DISABLED`.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// `XEN_HVM_MEMMAP_TYPE_PMEM`.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

xen_abi! {
    /// `struct hvm_start_info`. Address fields of 0 mean absent.
    pub struct HvmStartInfo = "struct hvm_start_info" {
        pub magic: u32 = "magic",
        pub version: u32 = "version",
        pub flags: u32 = "flags",
        pub nr_modules: u32 = "nr_modules",
        pub modlist_paddr: u64 = "modlist_paddr",
        pub cmdline_paddr: u64 = "cmdline_paddr",
        pub rsdp_paddr: u64 = "rsdp_paddr",
        pub memmap_paddr: u64 = "memmap_paddr",
        pub memmap_entries: u32 = "memmap_entries",
        pub reserved: u32 = "reserved",
    }

    /// `struct hvm_modlist_entry`.
    pub struct HvmModlistEntry = "struct hvm_modlist_entry" {
        pub paddr: u64 = "paddr",
        pub size: u64 = "size",
        pub cmdline_paddr: u64 = "cmdline_paddr",
        pub reserved: u64 = "reserved",
    }

    /// `struct hvm_memmap_table_entry`.
    pub struct HvmMemmapTableEntry = "struct hvm_memmap_table_entry" {
        pub addr: u64 = "addr",
        pub size: u64 = "size",
        pub entry_type: u32 = "type",
        pub reserved: u32 = "reserved",
    }
}
