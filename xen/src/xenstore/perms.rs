//! Node permissions: the access letters (`n`, `r`, `w`, `b`) and the permission lists of
//! `GET_PERMS` and `SET_PERMS`, owner first.

use alloc::vec::Vec;

use crate::abi::xs_wire::XsdError;
use crate::abi::DomId;

use super::XsError;

/// Access a domain has to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// Whether this access lets a domain read.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this access lets a domain write.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }

    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }
}

/// One permission entry. In a node's list the first entry names the owner and the access of
/// every domain not listed after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: DomId,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// Parses `r5`, `n0`, …
    pub fn parse(s: &str) -> Option<Perm> {
        let mut chars = s.chars();
        let access = match chars.next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return None,
        };
        let digits = chars.as_str();
        let id: u16 = crate::abi::parse_decimal(digits)?.try_into().ok()?;
        Some(Perm {
            domid: DomId(id),
            access,
        })
    }

    pub(super) fn write_to(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 10];
        let text = format_u32(u32::from(self.domid.0), &mut buf);
        out.push(self.access.letter() as u8);
        out.extend_from_slice(text);
    }
}

pub(super) fn format_u32(mut v: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

pub(super) fn parse_perm_list<'a>(
    fields: impl Iterator<Item = &'a [u8]>,
) -> Result<Vec<Perm>, XsError> {
    let mut perms = Vec::new();
    for f in fields.filter(|f| !f.is_empty()) {
        let s = core::str::from_utf8(f).map_err(|_| XsError::Xs(XsdError::Einval))?;
        perms.push(Perm::parse(s).ok_or(XsError::Xs(XsdError::Einval))?);
    }
    if perms.is_empty() {
        return Err(XsError::Xs(XsdError::Einval));
    }
    Ok(perms)
}
