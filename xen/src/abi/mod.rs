//! Xen's public wire ABI, as `#[repr(C)]` types.
//!
//! Every struct here is declared through [`xen_abi!`], which also records its size and every
//! field's offset and size next to the C name of the struct and field in Xen's public headers.
//! The test `abi_matches_xen_headers` compiles those headers (Debian `libxen-dev`) and compares
//! each record with what the C compiler says, so a struct cannot be added here without being
//! checked against Xen itself.
//!
//! Layouts are x86_64 (the only architecture usbdom runs on). Padding that C leaves implicit is
//! an explicit `_pad` field here, so every type can be read from and written to shared memory
//! as plain bytes with `zerocopy`, without `unsafe`.

pub mod console;
pub mod elfnote;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod memory;
pub mod ring;
pub mod shared_info;
pub mod start_info;
pub mod usbif;
pub mod xs_wire;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Where one field of an ABI struct sits, on the Rust side, with its C name.
#[derive(Clone, Copy, Debug)]
pub struct FieldLayout {
    /// The Rust field name.
    pub name: &'static str,
    /// The C member designator (`u.ref`, `seg`), or `None` for padding that C leaves implicit.
    pub c_member: Option<&'static str>,
    /// Byte offset in the Rust struct.
    pub offset: usize,
    /// Size in bytes of the Rust field.
    pub size: usize,
}

/// The layout of one ABI struct, on the Rust side, with its C name.
#[derive(Clone, Copy, Debug)]
pub struct StructLayout {
    /// The Rust type name.
    pub name: &'static str,
    /// The C type (`struct evtchn_send`).
    pub c_type: &'static str,
    /// `size_of` the Rust type.
    pub size: usize,
    /// Every field, padding included, in declaration order.
    pub fields: &'static [FieldLayout],
}

/// Declares `#[repr(C)]` ABI structs and a `LAYOUTS` table describing them.
///
/// Each field names its C member (a string literal) or is `PAD` (implicit C padding).
macro_rules! xen_abi {
    ($(
        $(#[$smeta:meta])*
        pub struct $name:ident = $ctype:literal {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident : $fty:ty = $cmember:tt
            ),* $(,)?
        }
    )*) => {
        $(
            $(#[$smeta])*
            #[repr(C)]
            #[derive(
                Clone, Copy, Debug, PartialEq, Eq,
                zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable,
                zerocopy::KnownLayout,
            )]
            pub struct $name {
                $(
                    $(#[$fmeta])*
                    #[doc = xen_abi!(@doc $cmember)]
                    pub $field: $fty,
                )*
            }
        )*

        /// Layout records of every struct in this module, checked against Xen's headers.
        pub const LAYOUTS: &[$crate::abi::StructLayout] = &[
            $(
                $crate::abi::StructLayout {
                    name: stringify!($name),
                    c_type: $ctype,
                    size: core::mem::size_of::<$name>(),
                    fields: &[
                        $(
                            $crate::abi::FieldLayout {
                                name: stringify!($field),
                                c_member: xen_abi!(@member $cmember),
                                offset: core::mem::offset_of!($name, $field),
                                size: core::mem::size_of::<$fty>(),
                            },
                        )*
                    ],
                },
            )*
        ];
    };
    (@doc PAD) => { "Padding that C leaves implicit; always zero." };
    (@doc $m:literal) => { concat!("C member `", $m, "`.") };
    (@member PAD) => { None };
    (@member $m:literal) => { Some($m) };
}
pub(crate) use xen_abi;

/// Every ABI struct layout, from every module of `abi`.
pub fn layouts() -> impl Iterator<Item = &'static StructLayout> {
    [
        console::LAYOUTS,
        event_channel::LAYOUTS,
        grant_table::LAYOUTS,
        hvm::LAYOUTS,
        hypercall::LAYOUTS,
        memory::LAYOUTS,
        shared_info::LAYOUTS,
        start_info::LAYOUTS,
        usbif::LAYOUTS,
        xs_wire::LAYOUTS,
    ]
    .into_iter()
    .flatten()
}

/// A Xen domain id (`domid_t`).
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct DomId(pub u16);

impl DomId {
    /// The privileged control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`: the calling domain, in hypercalls that take a domid.
    pub const SELF: DomId = DomId(0x7FF0);
    /// The first reserved domid; ids at or above it never name a real guest.
    pub const FIRST_RESERVED: DomId = DomId(0x7FF0);

    /// Parses a domid from untrusted text (xenstore); reserved ids are refused.
    pub fn parse(s: &str) -> Option<DomId> {
        let v: u16 = parse_decimal(s)?.try_into().ok()?;
        (v < Self::FIRST_RESERVED.0).then_some(DomId(v))
    }
}

impl core::fmt::Display for DomId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A grant reference (`grant_ref_t`): an index into the granting domain's grant table.
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct GrantRef(pub u32);

impl core::fmt::Display for GrantRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An event channel port (`evtchn_port_t`), local to one domain.
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct EvtchnPort(pub u32);

impl core::fmt::Display for EvtchnPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A guest frame number: a guest-physical address shifted right by [`PAGE_SHIFT`].
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct Gfn(pub u64);

impl Gfn {
    /// The guest-physical address of the frame's first byte.
    pub const fn addr(self) -> GuestPhysAddr {
        GuestPhysAddr(self.0 << PAGE_SHIFT)
    }
}

/// A guest-physical byte address.
#[repr(transparent)]
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct GuestPhysAddr(pub u64);

impl GuestPhysAddr {
    /// The frame that holds this address.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }
}

/// Xen's page size on x86 (4 KiB).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Parses a plain non-negative decimal as xenstore values carry them: ASCII digits only, no
/// sign, no spaces, at most 10 digits. Everything a guest writes goes through here.
pub fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_parsing_refuses_what_a_guest_might_write() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("4294967295"), Some(4294967295));
        for bad in ["", "-1", "+1", " 1", "1 ", "0x10", "12345678901", "1\0"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn domid_parse_refuses_reserved_ids() {
        assert_eq!(DomId::parse("7"), Some(DomId(7)));
        assert_eq!(DomId::parse("32752"), None); // DOMID_SELF
        assert_eq!(DomId::parse("65536"), None);
    }

    #[test]
    fn every_layout_has_fields_covering_its_size() {
        for l in layouts() {
            let covered: usize = l.fields.iter().map(|f| f.size).sum();
            assert_eq!(covered, l.size, "{}: fields do not tile the struct", l.name);
            let mut end = 0;
            for f in l.fields {
                assert_eq!(f.offset, end, "{}.{} leaves a gap", l.name, f.name);
                end = f.offset + f.size;
            }
        }
    }
}
