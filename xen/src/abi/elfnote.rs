//! `public/elfnote.h`: the ELF notes a Xen guest image carries.

/// The note name of every Xen ELF note.
pub const XEN_ELFNOTE_NAME: &[u8; 4] = b"Xen\0";

/// Free-form guest information.
pub const XEN_ELFNOTE_INFO: u32 = 0;
/// PV entry point.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// PV hypercall page location.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// PV virtual base.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// PV physical address offset.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// Xen version the guest was built for.
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// Guest OS name.
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Guest OS version.
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// Loader name.
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// PAE mode of a 32-bit PV guest.
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// Required and supported PV features.
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// BSD symbol table loading.
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// Lowest hypervisor virtual address (PV).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// L1 MFN valid mask (PV).
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// Suspend cancellation support.
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// Initial P2M location (PV).
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// Modules start PFN (PV).
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// Supported features bitmap.
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// The 32-bit physical entry point of a PVH image; on its own enough to boot as PVH.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
