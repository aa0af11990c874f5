//! What goes wrong: a response the frontend will not accept ([`ProtocolError`], fatal as
//! xen-hcd's `info->error`) and the errors of probing and connecting ([`Error`]).

use super::*;

/// A response the frontend will not accept; xen-hcd's `xenhcd_set_error` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// "Illegal index on urb-ring": the backend's `rsp_prod` is impossible.
    UrbRingIndex {
        /// The producer index it published.
        rsp_prod: u32,
        /// Our consumer index.
        rsp_cons: u32,
    },
    /// "Illegal data on urb-ring": a response id of 16 or more.
    UrbRingData {
        /// The id.
        id: u16,
    },
    /// "Illegal request id": a response to a submit id that is not in flight.
    IllegalRequestId {
        /// The id.
        id: u16,
    },
    /// "backend didn't release grant": a grant of the request was still mapped or in use
    /// when its response arrived.
    GrantNotReleased {
        /// The request id.
        id: u16,
        /// The grant still held.
        gref: GrantRef,
    },
    /// "Illegal index on conn-ring".
    ConnRingIndex {
        /// The producer index it published.
        rsp_prod: u32,
        /// Our consumer index.
        rsp_cons: u32,
    },
    /// "Illegal data on conn-ring": a port outside 1..=num-ports or a speed above 3 (above 4,
    /// SuperSpeed, on a USB 3 controller).
    ConnRingData {
        /// The port number.
        portnum: u8,
        /// The speed.
        speed: u8,
    },
}

impl core::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProtocolError::UrbRingIndex { rsp_prod, rsp_cons } => {
                write!(
                    f,
                    "reason=illegal_urb_ring_index rsp_prod={rsp_prod} rsp_cons={rsp_cons}"
                )
            }
            ProtocolError::UrbRingData { id } => write!(f, "reason=illegal_urb_ring_data id={id}"),
            ProtocolError::IllegalRequestId { id } => {
                write!(f, "reason=illegal_request_id id={id}")
            }
            ProtocolError::GrantNotReleased { id, gref } => {
                write!(
                    f,
                    "reason=backend_did_not_release_grant id={id} gref={gref}"
                )
            }
            ProtocolError::ConnRingIndex { rsp_prod, rsp_cons } => write!(
                f,
                "reason=illegal_conn_ring_index rsp_prod={rsp_prod} rsp_cons={rsp_cons}"
            ),
            ProtocolError::ConnRingData { portnum, speed } => write!(
                f,
                "reason=illegal_conn_ring_data portnum={portnum} speed={speed}"
            ),
        }
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// xenstore failed, or a key the frontend needs holds a bad value (probe, connect).
    Xenbus(XenbusError),
    /// Our frontend directory was not in state Initialising at probe: Linux does not probe it.
    NotInitialising(XenbusState),
    /// A grant, page or event channel operation failed.
    Hypervisor(Errno),
    /// Not connected (yet, or any more): Linux has no controller to take the URB.
    NotConnected,
    /// A response was invalid earlier; like xen-hcd (`-ESHUTDOWN`), nothing is taken any more.
    Failed(ProtocolError),
    /// The URB needs more than 16 segments, or 64 KiB or more (`-E2BIG`).
    TooBig,
    /// The URB is malformed: an unlink pipe, or a page offset beyond the page.
    Invalid,
    /// Unlink of an URB that is not outstanding.
    UnknownUrb,
    /// The URB is already being unlinked (`-EBUSY`).
    Busy,
}

impl From<XenbusError> for Error {
    fn from(e: XenbusError) -> Self {
        Error::Xenbus(e)
    }
}

impl From<XsError> for Error {
    fn from(e: XsError) -> Self {
        Error::Xenbus(XenbusError::Store(e))
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Hypervisor(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Xenbus(e) => write!(f, "{e}"),
            Error::NotInitialising(s) => write!(f, "reason=not_initialising state={s:?}"),
            Error::Hypervisor(e) => write!(f, "reason=hypervisor error={e}"),
            Error::NotConnected => write!(f, "reason=not_connected"),
            Error::Failed(e) => write!(f, "reason=failed_earlier {e}"),
            Error::TooBig => write!(f, "reason=too_big"),
            Error::Invalid => write!(f, "reason=invalid_urb"),
            Error::UnknownUrb => write!(f, "reason=unknown_urb"),
            Error::Busy => write!(f, "reason=already_unlinking"),
        }
    }
}
