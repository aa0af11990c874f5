//! `public/xen.h` (x86_64): `shared_info` and `vcpu_info`, the page Xen shares with a guest.

use super::xen_abi;

/// `XEN_LEGACY_MAX_VCPUS`: vCPUs whose `vcpu_info` lives in `shared_info`.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

xen_abi! {
    /// `struct vcpu_time_info`.
    pub struct VcpuTimeInfo = "struct vcpu_time_info" {
        pub version: u32 = "version",
        pub pad0: u32 = "pad0",
        pub tsc_timestamp: u64 = "tsc_timestamp",
        pub system_time: u64 = "system_time",
        pub tsc_to_system_mul: u32 = "tsc_to_system_mul",
        pub tsc_shift: i8 = "tsc_shift",
        pub flags: u8 = "flags",
        pub pad1: [u8; 2] = "pad1",
    }

    /// `struct arch_vcpu_info` (x86_64).
    pub struct ArchVcpuInfo = "struct arch_vcpu_info" {
        pub cr2: u64 = "cr2",
        pub pad: u64 = "pad",
    }

    /// `struct vcpu_info`: per-vCPU upcall flags and the pending-word selector.
    pub struct VcpuInfo = "struct vcpu_info" {
        pub evtchn_upcall_pending: u8 = "evtchn_upcall_pending",
        pub evtchn_upcall_mask: u8 = "evtchn_upcall_mask",
        pub _pad: [u8; 6] = PAD,
        pub evtchn_pending_sel: u64 = "evtchn_pending_sel",
        pub arch: ArchVcpuInfo = "arch",
        pub time: VcpuTimeInfo = "time",
    }

    /// `struct arch_shared_info` (x86_64).
    pub struct ArchSharedInfo = "struct arch_shared_info" {
        pub max_pfn: u64 = "max_pfn",
        pub pfn_to_mfn_frame_list_list: u64 = "pfn_to_mfn_frame_list_list",
        pub nmi_reason: u64 = "nmi_reason",
        pub p2m_cr3: u64 = "p2m_cr3",
        pub p2m_vaddr: u64 = "p2m_vaddr",
        pub p2m_generation: u64 = "p2m_generation",
    }

    /// `struct shared_info`: 2-level event channel bitmaps, wallclock, per-vCPU info.
    pub struct SharedInfo = "struct shared_info" {
        pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS] = "vcpu_info",
        pub evtchn_pending: [u64; 64] = "evtchn_pending",
        pub evtchn_mask: [u64; 64] = "evtchn_mask",
        pub wc_version: u32 = "wc_version",
        pub wc_sec: u32 = "wc_sec",
        pub wc_nsec: u32 = "wc_nsec",
        pub wc_sec_hi: u32 = "wc_sec_hi",
        pub arch: ArchSharedInfo = "arch",
    }
}
