//! Why a xenstore operation fails: an error xenstored answered, or one found on this side.

use crate::abi::xs_wire::XsdError;

/// Why a xenstore operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XsError {
    /// xenstored answered with an error (`ENOENT`, `EACCES`, `EAGAIN`, …).
    Xs(XsdError),
    /// The payload or a path is over the protocol's limit; nothing was sent.
    TooBig,
    /// A path or token is empty, or holds a NUL byte; nothing was sent.
    BadArgument,
    /// The peer broke the protocol (bad framing, wrong reply, unknown error name, bad ring
    /// index). The connection cannot be trusted after this.
    Protocol(&'static str),
    /// The transport failed or closed.
    Transport(&'static str),
}

impl core::fmt::Display for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XsError::Xs(e) => write!(f, "{}", e.name()),
            XsError::TooBig => write!(f, "too_big"),
            XsError::BadArgument => write!(f, "bad_argument"),
            XsError::Protocol(why) => write!(f, "protocol_error({why})"),
            XsError::Transport(why) => write!(f, "transport_error({why})"),
        }
    }
}

impl From<XsdError> for XsError {
    fn from(e: XsdError) -> Self {
        XsError::Xs(e)
    }
}
