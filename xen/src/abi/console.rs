//! `public/io/console.h`: the PV console ring shared with xenconsoled.

use super::xen_abi;

/// Bytes in the console's input ring.
pub const XENCONS_IN_SIZE: usize = 1024;
/// Bytes in the console's output ring.
pub const XENCONS_OUT_SIZE: usize = 2048;

xen_abi! {
    /// `struct xencons_interface` as in Xen 4.17 (the `connection` field came in 4.21).
    pub struct XenconsInterface = "struct xencons_interface" {
        pub input: [u8; XENCONS_IN_SIZE] = "in",
        pub output: [u8; XENCONS_OUT_SIZE] = "out",
        pub in_cons: u32 = "in_cons",
        pub in_prod: u32 = "in_prod",
        pub out_cons: u32 = "out_cons",
        pub out_prod: u32 = "out_prod",
    }
}
