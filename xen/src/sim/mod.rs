//! `xen::sim`: an in-process Xen for host tests (and demos inside the unikernel).
pub mod xenstored;
