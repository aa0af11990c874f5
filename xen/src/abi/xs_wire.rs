//! `public/io/xs_wire.h`: the xenstore message header, message types, errors and ring page.

use super::xen_abi;

/// `XENSTORE_PAYLOAD_MAX`: the largest payload of one message.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// `XENSTORE_RING_SIZE`: bytes in each direction of the ring page.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_CONNECTED`.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_NONE`.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `XENSTORE_ERROR_COMM`.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX`.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`.
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// `enum xsd_sockmsg_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XsdSockmsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`.
    WatchEvent = 15,
    /// `XS_ERROR`.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
}

impl XsdSockmsgType {
    /// Every message type, in value order.
    pub const ALL: [XsdSockmsgType; 22] = {
        use XsdSockmsgType::*;
        [
            Control,
            Directory,
            Read,
            GetPerms,
            Watch,
            Unwatch,
            TransactionStart,
            TransactionEnd,
            Introduce,
            Release,
            GetDomainPath,
            Write,
            Mkdir,
            Rm,
            SetPerms,
            WatchEvent,
            Error,
            IsDomainIntroduced,
            Resume,
            SetTarget,
            ResetWatches,
            DirectoryPart,
        ]
    };

    /// Decodes a wire value; `None` for values Xen does not define.
    pub fn from_raw(raw: u32) -> Option<XsdSockmsgType> {
        Self::ALL.into_iter().find(|t| *t as u32 == raw)
    }
}

/// The errors xenstored names in `XS_ERROR` replies (`xsd_errors[]`), with their Linux errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsdError {
    /// Invalid argument.
    Einval,
    /// Permission denied.
    Eacces,
    /// The node exists.
    Eexist,
    /// Is a directory.
    Eisdir,
    /// No such node.
    Enoent,
    /// Out of memory.
    Enomem,
    /// Out of space (quota).
    Enospc,
    /// I/O error.
    Eio,
    /// Directory not empty.
    Enotempty,
    /// Not implemented.
    Enosys,
    /// Read-only.
    Erofs,
    /// Busy.
    Ebusy,
    /// Try again: a transaction conflicted.
    Eagain,
    /// Already connected.
    Eisconn,
    /// Too big.
    E2big,
    /// Operation not permitted.
    Eperm,
}

impl XsdError {
    /// Every error, in the order of `xsd_errors[]`.
    pub const ALL: [XsdError; 16] = {
        use XsdError::*;
        [
            Einval, Eacces, Eexist, Eisdir, Enoent, Enomem, Enospc, Eio, Enotempty, Enosys, Erofs,
            Ebusy, Eagain, Eisconn, E2big, Eperm,
        ]
    };

    /// The name on the wire (`"ENOENT"`).
    pub fn name(self) -> &'static str {
        use XsdError::*;
        match self {
            Einval => "EINVAL",
            Eacces => "EACCES",
            Eexist => "EEXIST",
            Eisdir => "EISDIR",
            Enoent => "ENOENT",
            Enomem => "ENOMEM",
            Enospc => "ENOSPC",
            Eio => "EIO",
            Enotempty => "ENOTEMPTY",
            Enosys => "ENOSYS",
            Erofs => "EROFS",
            Ebusy => "EBUSY",
            Eagain => "EAGAIN",
            Eisconn => "EISCONN",
            E2big => "E2BIG",
            Eperm => "EPERM",
        }
    }

    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        use XsdError::*;
        match self {
            Einval => 22,
            Eacces => 13,
            Eexist => 17,
            Eisdir => 21,
            Enoent => 2,
            Enomem => 12,
            Enospc => 28,
            Eio => 5,
            Enotempty => 39,
            Enosys => 38,
            Erofs => 30,
            Ebusy => 16,
            Eagain => 11,
            Eisconn => 106,
            E2big => 7,
            Eperm => 1,
        }
    }

    /// Decodes a wire name; `None` for names xenstored does not send.
    pub fn from_name(name: &str) -> Option<XsdError> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

xen_abi! {
    /// `struct xsd_sockmsg`: the header before every xenstore payload.
    pub struct XsdSockmsg = "struct xsd_sockmsg" {
        pub msg_type: u32 = "type",
        pub req_id: u32 = "req_id",
        pub tx_id: u32 = "tx_id",
        pub len: u32 = "len",
    }

    /// `struct xenstore_domain_interface` as in Xen 4.17: the xenstore ring page.
    pub struct XenstoreDomainInterface = "struct xenstore_domain_interface" {
        pub req: [u8; XENSTORE_RING_SIZE] = "req",
        pub rsp: [u8; XENSTORE_RING_SIZE] = "rsp",
        pub req_cons: u32 = "req_cons",
        pub req_prod: u32 = "req_prod",
        pub rsp_cons: u32 = "rsp_cons",
        pub rsp_prod: u32 = "rsp_prod",
        pub server_features: u32 = "server_features",
        pub connection: u32 = "connection",
        pub error: u32 = "error",
    }
}
