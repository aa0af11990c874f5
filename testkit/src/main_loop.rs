//! The driver domain's main loop, one turn at a time, for a backend on `xen::sim`: what a
//! test runs between the steps of its frontends.

use alloc::vec::Vec;

use usbback::host::UsbHost;
use usbback::Backend;
use xen::hypervisor::EventChannels;
use xen::page::LocalPage;
use xen::sim::{Domain, SimXsTransport};

/// One turn: the xenstore watches, the event channels that fired, one budget's worth of the
/// frontends still holding requests, then the host's events.
pub fn turn<U: UsbHost<LocalPage> + ?Sized>(
    be: &mut Backend<Domain, SimXsTransport>,
    host: &mut U,
) {
    be.poll_xenstore(host).expect("xenstore on the sim answers");
    let mut ports = Vec::new();
    be.hypervisor().take_pending(&mut |p| ports.push(p));
    for p in ports {
        be.handle_event(p, host);
    }
    be.serve_busy(host);
    let mut events = Vec::new();
    host.poll(&mut events);
    be.host_events(host, &mut events);
}
