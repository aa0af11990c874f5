//! `public/xen.h`, `sched.h`, `version.h`, `features.h`: hypercall numbers and the small
//! constants that go with them.

use super::xen_abi;

/// `__HYPERVISOR_memory_op`.
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
/// `__HYPERVISOR_console_io`.
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
/// `__HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// `__HYPERVISOR_vcpu_op`.
pub const HYPERVISOR_VCPU_OP: u32 = 24;
/// `__HYPERVISOR_sched_op`.
pub const HYPERVISOR_SCHED_OP: u32 = 29;
/// `__HYPERVISOR_event_channel_op`.
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// `__HYPERVISOR_physdev_op`.
pub const HYPERVISOR_PHYSDEV_OP: u32 = 33;
/// `__HYPERVISOR_hvm_op`.
pub const HYPERVISOR_HVM_OP: u32 = 34;

/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_block`.
pub const SCHEDOP_BLOCK: u32 = 1;
/// `SCHEDOP_shutdown`.
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SHUTDOWN_poweroff`.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot`.
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_crash`.
pub const SHUTDOWN_CRASH: u32 = 3;

/// `XENVER_version`.
pub const XENVER_VERSION: u32 = 0;
/// `XENVER_get_features`.
pub const XENVER_GET_FEATURES: u32 = 6;
/// `XENFEAT_auto_translated_physmap`.
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
/// `XENFEAT_hvm_callback_vector`.
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;

/// `CONSOLEIO_write`.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `XEN_HVM_DEBUGCONS_IOPORT`: one byte per `out` reaches Xen's guest log.
pub const XEN_HVM_DEBUGCONS_IOPORT: u16 = 0xe9;

xen_abi! {
    /// `SCHEDOP_shutdown`.
    pub struct SchedShutdown = "struct sched_shutdown" {
        pub reason: u32 = "reason",
    }

    /// `XENVER_get_features`.
    pub struct XenFeatureInfo = "struct xen_feature_info" {
        pub submap_idx: u32 = "submap_idx",
        pub submap: u32 = "submap",
    }
}
