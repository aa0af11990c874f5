//! `public/event_channel.h`: the event channel operations a backend uses.

use super::{xen_abi, DomId, EvtchnPort};

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`.
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: u32 = 9;

/// Ports the 2-level event channel ABI can name on x86_64 (64 words of 64 bits).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 4096;

xen_abi! {
    /// `EVTCHNOP_alloc_unbound`: a port that `remote_dom` may bind to.
    pub struct EvtchnAllocUnbound = "struct evtchn_alloc_unbound" {
        pub dom: DomId = "dom",
        pub remote_dom: DomId = "remote_dom",
        pub port: EvtchnPort = "port",
    }

    /// `EVTCHNOP_bind_interdomain`: connect to a port that `remote_dom` left unbound for us.
    pub struct EvtchnBindInterdomain = "struct evtchn_bind_interdomain" {
        pub remote_dom: DomId = "remote_dom",
        pub _pad: u16 = PAD,
        pub remote_port: EvtchnPort = "remote_port",
        pub local_port: EvtchnPort = "local_port",
    }

    /// `EVTCHNOP_bind_virq`.
    pub struct EvtchnBindVirq = "struct evtchn_bind_virq" {
        pub virq: u32 = "virq",
        pub vcpu: u32 = "vcpu",
        pub port: EvtchnPort = "port",
    }

    /// `EVTCHNOP_close`.
    pub struct EvtchnClose = "struct evtchn_close" {
        pub port: EvtchnPort = "port",
    }

    /// `EVTCHNOP_send`.
    pub struct EvtchnSend = "struct evtchn_send" {
        pub port: EvtchnPort = "port",
    }

    /// `EVTCHNOP_unmask`.
    pub struct EvtchnUnmask = "struct evtchn_unmask" {
        pub port: EvtchnPort = "port",
    }
}
