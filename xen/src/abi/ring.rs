//! `public/io/ring.h`: the shared ring page header (the ring logic is in [`crate::ring`]).

/// Offset of `req_prod` in a shared ring page.
pub const SRING_REQ_PROD: usize = 0;
/// Offset of `req_event`.
pub const SRING_REQ_EVENT: usize = 4;
/// Offset of `rsp_prod`.
pub const SRING_RSP_PROD: usize = 8;
/// Offset of `rsp_event`.
pub const SRING_RSP_EVENT: usize = 12;
/// Offset of the `pvt` union (zeroed by the frontend).
pub const SRING_PVT: usize = 16;
/// Offset of the first ring entry; the header before it is 64 bytes.
pub const SRING_ENTRIES: usize = 64;
