//! `public/grant_table.h`: grant table v1 entries and the map, unmap, copy and setup ops.

use super::{xen_abi, DomId, GrantRef};

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_copy`.
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_set_version`.
pub const GNTTABOP_SET_VERSION: u32 = 8;

/// `GTF_permit_access`: the entry grants access to `domid`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: set by Xen while the grantee has the frame mapped or is copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: set by Xen while the grantee has the frame mapped writable.
pub const GTF_WRITING: u16 = 1 << 4;

/// `GNTMAP_host_map`: the only mapping mode an HVM/PVH guest may ask for.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = 1 << 2;

/// `GNTCOPY_source_gref`: `source.u` is a grant ref (else a local frame).
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: `dest.u` is a grant ref (else a local frame).
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// The first grant ref a guest may use; 0..8 are reserved (0 console, 1 xenstore).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// `enum grant_status` (`GNTST_*`): the per-op status Xen writes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub enum GntStatus {
    /// `GNTST_okay`.
    Okay = 0,
    /// `GNTST_general_error`.
    GeneralError = -1,
    /// `GNTST_bad_domain`: unrecognised domain id.
    BadDomain = -2,
    /// `GNTST_bad_gntref`: unrecognised or inappropriate grant ref.
    BadGntref = -3,
    /// `GNTST_bad_handle`: unrecognised or inappropriate handle.
    BadHandle = -4,
    /// `GNTST_bad_virt_addr`: inappropriate virtual address to map.
    BadVirtAddr = -5,
    /// `GNTST_bad_dev_addr`: inappropriate device address to unmap.
    BadDevAddr = -6,
    /// `GNTST_no_device_space`: out of space in the I/O MMU.
    NoDeviceSpace = -7,
    /// `GNTST_permission_denied`: not enough privilege for the operation.
    PermissionDenied = -8,
    /// `GNTST_bad_page`: the specified page was invalid for the op.
    BadPage = -9,
    /// `GNTST_bad_copy_arg`: a copy crossed a page boundary.
    BadCopyArg = -10,
    /// `GNTST_address_too_big`: the transfer destination address is too large.
    AddressTooBig = -11,
    /// `GNTST_eagain`: the operation was not done; try again.
    Eagain = -12,
    /// `GNTST_no_space`: out of space (handles etc.).
    NoSpace = -13,
}

impl GntStatus {
    /// Decodes a status Xen wrote; an unknown value is a general error.
    pub fn from_raw(raw: i16) -> GntStatus {
        use GntStatus::*;
        [
            Okay,
            GeneralError,
            BadDomain,
            BadGntref,
            BadHandle,
            BadVirtAddr,
            BadDevAddr,
            NoDeviceSpace,
            PermissionDenied,
            BadPage,
            BadCopyArg,
            AddressTooBig,
            Eagain,
            NoSpace,
        ]
        .into_iter()
        .find(|s| *s as i16 == raw)
        .unwrap_or(GeneralError)
    }

    /// The name Xen's headers give it, for logs.
    pub fn name(self) -> &'static str {
        use GntStatus::*;
        match self {
            Okay => "okay",
            GeneralError => "general_error",
            BadDomain => "bad_domain",
            BadGntref => "bad_gntref",
            BadHandle => "bad_handle",
            BadVirtAddr => "bad_virt_addr",
            BadDevAddr => "bad_dev_addr",
            NoDeviceSpace => "no_device_space",
            PermissionDenied => "permission_denied",
            BadPage => "bad_page",
            BadCopyArg => "bad_copy_arg",
            AddressTooBig => "address_too_big",
            Eagain => "eagain",
            NoSpace => "no_space",
        }
    }
}

xen_abi! {
    /// `struct grant_entry_v1`: one entry of a guest's own grant table.
    pub struct GrantEntryV1 = "struct grant_entry_v1" {
        pub flags: u16 = "flags",
        pub domid: DomId = "domid",
        pub frame: u32 = "frame",
    }

    /// `GNTTABOP_map_grant_ref`. For an HVM/PVH guest `host_addr` is a guest-physical address.
    pub struct GnttabMapGrantRef = "struct gnttab_map_grant_ref" {
        pub host_addr: u64 = "host_addr",
        pub flags: u32 = "flags",
        pub gref: GrantRef = "ref",
        pub dom: DomId = "dom",
        pub status: i16 = "status",
        pub handle: u32 = "handle",
        pub dev_bus_addr: u64 = "dev_bus_addr",
    }

    /// `GNTTABOP_unmap_grant_ref`.
    pub struct GnttabUnmapGrantRef = "struct gnttab_unmap_grant_ref" {
        pub host_addr: u64 = "host_addr",
        pub dev_bus_addr: u64 = "dev_bus_addr",
        pub handle: u32 = "handle",
        pub status: i16 = "status",
        pub _pad: u16 = PAD,
    }

    /// One side of a `GNTTABOP_copy`: a grant ref of `domid` or a local frame (`gmfn`).
    pub struct GnttabCopyPtr = "struct gnttab_copy_ptr" {
        /// The union of `ref` (low 32 bits) and `gmfn`.
        pub u: u64 = "u",
        pub domid: DomId = "domid",
        pub offset: u16 = "offset",
        pub _pad: u32 = PAD,
    }

    /// `GNTTABOP_copy`: Xen copies `len` bytes within one page on each side.
    pub struct GnttabCopy = "struct gnttab_copy" {
        pub source: GnttabCopyPtr = "source",
        pub dest: GnttabCopyPtr = "dest",
        pub len: u16 = "len",
        pub flags: u16 = "flags",
        pub status: i16 = "status",
        pub _pad: u16 = PAD,
    }

    /// `GNTTABOP_setup_table` (`frame_list` is a guest handle: a pointer).
    pub struct GnttabSetupTable = "struct gnttab_setup_table" {
        pub dom: DomId = "dom",
        pub _pad0: u16 = PAD,
        pub nr_frames: u32 = "nr_frames",
        pub status: i16 = "status",
        pub _pad1: [u8; 6] = PAD,
        pub frame_list: u64 = "frame_list",
    }

    /// `GNTTABOP_query_size`.
    pub struct GnttabQuerySize = "struct gnttab_query_size" {
        pub dom: DomId = "dom",
        pub _pad0: u16 = PAD,
        pub nr_frames: u32 = "nr_frames",
        pub max_nr_frames: u32 = "max_nr_frames",
        pub status: i16 = "status",
        pub _pad1: u16 = PAD,
    }
}
