//! Paths: resolving a request's path (relative to the caller's home, or one of the special
//! `@` nodes), checking it is well formed, and relating paths (parent, descendant).

use alloc::format;
use alloc::string::{String, ToString};

use crate::abi::xs_wire::{XsdError, XENSTORE_ABS_PATH_MAX};
use crate::abi::DomId;

pub(super) fn home_path(domid: DomId) -> String {
    format!("/local/domain/{}", domid.0)
}

fn valid_chars(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b))
}

/// Resolves a node path from `from`'s request; `EINVAL` if malformed.
pub(super) fn node_path(from: DomId, p: &str) -> Result<String, XsdError> {
    let path = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{}/{p}", home_path(from))
    };
    let well_formed = path.len() <= XENSTORE_ABS_PATH_MAX
        && valid_chars(&path)
        && (path == "/" || !(path.ends_with('/') || path.contains("//")));
    if well_formed {
        Ok(path)
    } else {
        Err(XsdError::Einval)
    }
}

/// A special `@` name, if `p` is a well-formed one.
fn special_path(p: &str) -> Option<String> {
    (p.starts_with('@') && p.len() <= XENSTORE_ABS_PATH_MAX && valid_chars(p))
        .then(|| p.to_string())
}

/// Resolves the path of `GET_PERMS`/`SET_PERMS`, which also take the special nodes.
pub(super) fn perms_path(from: DomId, p: &str) -> Result<String, XsdError> {
    match special_path(p) {
        Some(special) => Ok(special),
        None => node_path(from, p),
    }
}

/// Resolves a watch path; also says whether it was relative.
pub(super) fn watch_path(from: DomId, p: &str) -> Result<(String, bool), XsdError> {
    if p.starts_with('@') {
        return special_path(p).map(|s| (s, false)).ok_or(XsdError::Einval);
    }
    Ok((node_path(from, p)?, !p.starts_with('/')))
}

/// The parent of an absolute path; `None` for `/` and the special nodes.
pub(super) fn parent(path: &str) -> Option<&str> {
    if path == "/" || !path.starts_with('/') {
        return None;
    }
    match path.rfind('/')? {
        0 => Some("/"),
        i => Some(&path[..i]),
    }
}

/// Whether `path` is strictly below `ancestor`.
pub(super) fn is_child(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/') && path != "/";
    }
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('/'))
}
