//! xenbus: device states (`public/io/xenbus.h`) and the backend/frontend handshake rules.
//!
//! The rules are pure functions of the two states, so every transition, including the ones a
//! hostile or confused peer can provoke, is unit-tested here without a store. The helpers at
//! the bottom read and write the `state` keys and the decimal keys of a device directory,
//! checking every value a peer wrote.

use alloc::format;
use alloc::string::String;

use crate::abi::parse_decimal;
use crate::xenstore::{TxId, XenStore, XsError, XsTransport};

/// `enum xenbus_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XenbusState {
    /// `XenbusStateUnknown`.
    Unknown = 0,
    /// `XenbusStateInitialising`.
    Initialising = 1,
    /// `XenbusStateInitWait`: the backend has read its configuration and waits for the
    /// frontend's ring details.
    InitWait = 2,
    /// `XenbusStateInitialised`: the frontend has published its ring details.
    Initialised = 3,
    /// `XenbusStateConnected`.
    Connected = 4,
    /// `XenbusStateClosing`: the device is going away.
    Closing = 5,
    /// `XenbusStateClosed`.
    Closed = 6,
    /// `XenbusStateReconfiguring`.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`.
    Reconfigured = 8,
}

impl XenbusState {
    /// Every state, by value.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// Parses a `state` value a peer wrote: a plain decimal 0..=8.
    pub fn parse(s: &str) -> Option<XenbusState> {
        let v = parse_decimal(s)?;
        Self::ALL.into_iter().find(|st| *st as u64 == v)
    }

    /// The decimal form written to xenstore.
    pub fn as_str(self) -> &'static str {
        ["0", "1", "2", "3", "4", "5", "6", "7", "8"][self as usize]
    }
}

/// What a backend does on seeing its frontend's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendAction {
    /// Nothing to do.
    None,
    /// Map the rings, bind the event channel, then switch to Connected.
    Connect,
    /// Unmap the rings, close the event channel, then switch to the given state (the
    /// frontend's Closing or Closed).
    Disconnect(XenbusState),
    /// The frontend came back to Initialising after a close: start over with InitWait.
    Reset,
}

/// The backend's rule (QEMU's `xen_be_check_state`, which Linux `xen-hcd` is tested against):
/// connect once the frontend has published its rings (Initialised or Connected), follow it
/// into Closing/Closed, and start again when it re-initialises after a close.
pub fn backend_action(backend: XenbusState, frontend: XenbusState) -> BackendAction {
    use XenbusState::*;
    match (backend, frontend) {
        (InitWait, Initialised | Connected) => BackendAction::Connect,
        (Closing | Closed, Initialising) => BackendAction::Reset,
        (Closed, Closing | Closed) => BackendAction::None,
        (Closing, Closing) => BackendAction::None,
        (_, Closing | Closed) => BackendAction::Disconnect(frontend),
        _ => BackendAction::None,
    }
}

/// What a frontend does on seeing its backend's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontendAction {
    /// Nothing to do.
    None,
    /// Allocate and grant the rings, allocate the event channel, publish them in one
    /// transaction, then switch to Connected.
    Connect,
    /// Tear down and switch to Closed.
    Close,
}

/// The frontend's rule, as Linux `xen-hcd` (`xenhcd_backend_changed`) applies it: connect from
/// Initialising when the backend is waiting or further; close when the backend closes.
pub fn frontend_action(frontend: XenbusState, backend: XenbusState) -> FrontendAction {
    use XenbusState::*;
    match (frontend, backend) {
        (Initialising, InitWait | Initialised | Connected) => FrontendAction::Connect,
        (Closed, _) => FrontendAction::None,
        (_, Closing | Closed) => FrontendAction::Close,
        _ => FrontendAction::None,
    }
}

/// Why a device directory could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// The store failed.
    Store(XsError),
    /// A key holds a value outside what the protocol allows.
    BadValue {
        /// The key.
        key: String,
        /// What it held (cut to 32 bytes for the log).
        value: String,
    },
}

impl From<XsError> for XenbusError {
    fn from(e: XsError) -> Self {
        XenbusError::Store(e)
    }
}

impl core::fmt::Display for XenbusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XenbusError::Store(e) => write!(f, "reason=xenstore error={e}"),
            XenbusError::BadValue { key, value } => {
                write!(f, "reason=bad_value key={key} value={value:?}")
            }
        }
    }
}

fn bad_value(key: &str, value: &[u8]) -> XenbusError {
    let shown = &value[..value.len().min(32)];
    XenbusError::BadValue {
        key: key.into(),
        value: String::from_utf8_lossy(shown).into_owned(),
    }
}

/// Reads `<dir>/<key>` as a decimal within `range`.
pub fn read_u32<T: XsTransport>(
    xs: &mut XenStore<T>,
    tx: TxId,
    dir: &str,
    key: &str,
    range: core::ops::RangeInclusive<u32>,
) -> Result<u32, XenbusError> {
    let path = format!("{dir}/{key}");
    let raw = xs.read(tx, &path)?;
    core::str::from_utf8(&raw)
        .ok()
        .and_then(parse_decimal)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| range.contains(v))
        .ok_or_else(|| bad_value(&path, &raw))
}

/// Reads `<dir>/state`.
pub fn read_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    tx: TxId,
    dir: &str,
) -> Result<XenbusState, XenbusError> {
    let path = format!("{dir}/state");
    let raw = xs.read(tx, &path)?;
    core::str::from_utf8(&raw)
        .ok()
        .and_then(XenbusState::parse)
        .ok_or_else(|| bad_value(&path, &raw))
}

/// Writes `<dir>/state`.
pub fn switch_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    state: XenbusState,
) -> Result<(), XsError> {
    xs.write(
        TxId::NONE,
        &format!("{dir}/state"),
        state.as_str().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::XenbusState::*;
    use super::*;

    #[test]
    fn states_parse_only_their_decimal_form() {
        for s in XenbusState::ALL {
            assert_eq!(XenbusState::parse(s.as_str()), Some(s));
        }
        for bad in ["", "9", "-1", " 4", "4\n", "Connected", "99999999999"] {
            assert_eq!(XenbusState::parse(bad), None, "{bad:?}");
        }
        // Leading zeros are accepted, as Linux's `%d` accepts them.
        assert_eq!(XenbusState::parse("04"), Some(Connected));
    }

    #[test]
    fn backend_connects_only_after_the_frontend_published_rings() {
        assert_eq!(backend_action(InitWait, Initialising), BackendAction::None);
        assert_eq!(backend_action(InitWait, InitWait), BackendAction::None);
        assert_eq!(
            backend_action(InitWait, Initialised),
            BackendAction::Connect
        );
        assert_eq!(backend_action(InitWait, Connected), BackendAction::Connect);
        // Already connected: a repeated Connected changes nothing.
        assert_eq!(backend_action(Connected, Connected), BackendAction::None);
        // Before the backend reached InitWait it does not connect.
        assert_eq!(backend_action(Initialising, Connected), BackendAction::None);
    }

    #[test]
    fn backend_follows_the_frontend_down_and_back_up() {
        assert_eq!(
            backend_action(Connected, Closing),
            BackendAction::Disconnect(Closing)
        );
        assert_eq!(
            backend_action(Connected, Closed),
            BackendAction::Disconnect(Closed)
        );
        assert_eq!(
            backend_action(InitWait, Closed),
            BackendAction::Disconnect(Closed)
        );
        assert_eq!(
            backend_action(Closing, Closed),
            BackendAction::Disconnect(Closed)
        );
        assert_eq!(backend_action(Closed, Closed), BackendAction::None);
        assert_eq!(backend_action(Closed, Initialising), BackendAction::Reset);
        assert_eq!(backend_action(Closing, Initialising), BackendAction::Reset);
    }

    #[test]
    fn backend_ignores_states_a_frontend_has_no_business_in() {
        for fe in [Unknown, Reconfiguring, Reconfigured] {
            for be in XenbusState::ALL {
                assert_eq!(backend_action(be, fe), BackendAction::None, "{be:?} {fe:?}");
            }
        }
    }

    #[test]
    fn frontend_rule_matches_xen_hcd() {
        assert_eq!(
            frontend_action(Initialising, InitWait),
            FrontendAction::Connect
        );
        assert_eq!(
            frontend_action(Initialising, Connected),
            FrontendAction::Connect
        );
        assert_eq!(
            frontend_action(Initialising, Initialising),
            FrontendAction::None
        );
        assert_eq!(frontend_action(Connected, Connected), FrontendAction::None);
        assert_eq!(frontend_action(Connected, Closing), FrontendAction::Close);
        assert_eq!(frontend_action(Connected, Closed), FrontendAction::Close);
        assert_eq!(frontend_action(Closed, Closed), FrontendAction::None);
    }
}
