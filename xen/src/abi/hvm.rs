//! `public/hvm/hvm_op.h` and `params.h`: HVM parameters and the upcall vector.

use super::{xen_abi, DomId};

/// `HVMOP_set_param`.
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param`.
pub const HVMOP_GET_PARAM: u32 = 1;
/// `HVMOP_set_evtchn_upcall_vector`.
pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u32 = 23;

/// `HVM_PARAM_CALLBACK_IRQ`: how event channel upcalls are delivered.
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_STORE_PFN`: the xenstore ring's frame.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`: the xenstore ring's event channel.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_CONSOLE_PFN`: the PV console ring's frame.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`: the PV console's event channel.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// `HVM_PARAM_CALLBACK_TYPE_VECTOR`, shifted into place: callback via an IDT vector.
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2 << 56;

xen_abi! {
    /// `HVMOP_get_param` / `HVMOP_set_param`.
    pub struct XenHvmParam = "struct xen_hvm_param" {
        pub domid: DomId = "domid",
        pub pad: u16 = "pad",
        pub index: u32 = "index",
        pub value: u64 = "value",
    }

    /// `HVMOP_set_evtchn_upcall_vector`: a per-vCPU upcall through the local APIC.
    pub struct XenHvmEvtchnUpcallVector = "struct xen_hvm_evtchn_upcall_vector" {
        pub vcpu: u32 = "vcpu",
        pub vector: u8 = "vector",
        pub _pad: [u8; 3] = PAD,
    }
}
