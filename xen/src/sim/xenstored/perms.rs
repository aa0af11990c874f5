//! Permissions: the access a domain has to a node under its permission list, and the list's
//! text form.

use alloc::format;
use alloc::string::String;

use crate::abi::DomId;
use crate::xenstore::{Access, Perm};

/// The access `dom` has to a node with `perms`.
pub(super) fn access(perms: &[Perm], dom: DomId) -> Access {
    let Some((owner, others)) = perms.split_first() else {
        return if dom == DomId::DOM0 {
            Access::Both
        } else {
            Access::None
        };
    };
    if dom == DomId::DOM0 || owner.domid == dom {
        return Access::Both;
    }
    others
        .iter()
        .find(|p| p.domid == dom)
        .map_or(owner.access, |p| p.access)
}

pub(super) fn format_perm(perm: &Perm) -> String {
    let letter = match perm.access {
        Access::None => 'n',
        Access::Read => 'r',
        Access::Write => 'w',
        Access::Both => 'b',
    };
    format!("{letter}{}", perm.domid.0)
}
