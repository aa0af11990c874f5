//! Watch events: the `XS_WATCH_EVENT` message xenstored sends when a watched node changes.

use alloc::string::String;
use alloc::vec::Vec;

use super::XsError;

/// A watch firing: the path that changed and the token given to [`XenStore::watch`].
///
/// [`XenStore::watch`]: super::XenStore::watch
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (or the watched path itself, on registration).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

impl WatchEvent {
    /// Parses an `XS_WATCH_EVENT` payload: `path\0token\0`.
    pub fn parse(payload: &[u8]) -> Result<WatchEvent, XsError> {
        let bad = XsError::Protocol("malformed watch event");
        let mut f = payload.split(|b| *b == 0);
        let path = f
            .next()
            .and_then(|p| core::str::from_utf8(p).ok())
            .ok_or(bad.clone())?;
        let token = f
            .next()
            .and_then(|t| core::str::from_utf8(t).ok())
            .ok_or(bad.clone())?;
        if path.is_empty() {
            return Err(bad);
        }
        Ok(WatchEvent {
            path: path.into(),
            token: token.into(),
        })
    }

    /// Encodes the payload (the server's side).
    pub fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.path.len() + self.token.len() + 2);
        p.extend_from_slice(self.path.as_bytes());
        p.push(0);
        p.extend_from_slice(self.token.as_bytes());
        p.push(0);
        p
    }
}
