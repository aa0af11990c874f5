//! The simulated hypervisor against the rules of the real one.

use super::*;
use crate::abi::grant_table::GntStatus;
use crate::page::SharedPage;

fn frontend_page(fe: &Domain, be: &Domain, readonly: bool) -> (GrantRef, LocalPage) {
    let (gfn, page) = fe.alloc_page();
    (fe.grant_access(be.domid(), gfn, readonly).unwrap(), page)
}

fn map_one(
    be: &mut Domain,
    dom: DomId,
    gref: GrantRef,
    readonly: bool,
) -> Result<GrantMapping<LocalPage>, GntStatus> {
    be.map(&[MapRequest {
        dom,
        gref,
        readonly,
    }])
    .unwrap()
    .pop()
    .unwrap()
}

#[test]
fn a_mapped_grant_shares_the_page_both_ways() {
    let xen = Xen::new();
    let (fe, mut be) = (xen.create_domain(), xen.create_domain());
    let (gref, page) = frontend_page(&fe, &be, false);
    page.write(100, b"from the frontend");
    let m = map_one(&mut be, fe.domid(), gref, false).unwrap();
    let mut buf = [0u8; 17];
    m.page.read(100, &mut buf);
    assert_eq!(&buf, b"from the frontend");
    m.page.write(0, b"back");
    page.read(0, &mut buf[..4]);
    assert_eq!(&buf[..4], b"back");
    assert!(m.addr >= GRANT_WINDOW);
    assert!(
        gref.0 >= GNTTAB_NR_RESERVED_ENTRIES,
        "entries 0..8 are reserved"
    );
}

#[test]
fn mapping_a_page_not_granted_to_us_fails_as_xen_does() {
    let xen = Xen::new();
    let (fe, mut be, other) = (
        xen.create_domain(),
        xen.create_domain(),
        xen.create_domain(),
    );
    // Granted to another domain: "Bad flags or dom" is GNTST_general_error.
    let (gref, _) = frontend_page(&fe, &other, false);
    assert_eq!(
        map_one(&mut be, fe.domid(), gref, true).unwrap_err(),
        GntStatus::GeneralError
    );
    // Never granted.
    assert_eq!(
        map_one(&mut be, fe.domid(), GrantRef(77), true).unwrap_err(),
        GntStatus::GeneralError
    );
    // Past the table.
    assert_eq!(
        map_one(&mut be, fe.domid(), GrantRef(1 << 20), true).unwrap_err(),
        GntStatus::BadGntref
    );
    // No such domain.
    assert_eq!(
        map_one(&mut be, DomId(999), gref, true).unwrap_err(),
        GntStatus::BadDomain
    );
}

#[test]
fn a_read_only_grant_cannot_be_mapped_writable() {
    let xen = Xen::new();
    let (fe, mut be) = (xen.create_domain(), xen.create_domain());
    let (gref, _) = frontend_page(&fe, &be, true);
    assert_eq!(
        map_one(&mut be, fe.domid(), gref, false).unwrap_err(),
        GntStatus::GeneralError
    );
    let m = map_one(&mut be, fe.domid(), gref, true).unwrap();
    assert!(m.request.readonly);
}

#[test]
fn a_batch_reports_each_entry_and_counts_mappings() {
    let xen = Xen::new();
    let (fe, mut be) = (xen.create_domain(), xen.create_domain());
    let (g1, _) = frontend_page(&fe, &be, false);
    let (g2, _) = frontend_page(&fe, &be, true);
    let reqs = [
        MapRequest {
            dom: fe.domid(),
            gref: g1,
            readonly: false,
        },
        MapRequest {
            dom: fe.domid(),
            gref: g2,
            readonly: false,
        },
        MapRequest {
            dom: fe.domid(),
            gref: g1,
            readonly: true,
        },
    ];
    let results = be.map(&reqs).unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err(), &GntStatus::GeneralError);
    // Mapped twice: revoking fails until both are gone.
    assert_eq!(fe.end_access(g1), Err(Errno::EBUSY));
    let mapped: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    be.unmap(mapped).unwrap();
    assert!(!fe.grant_in_use(g1));
    fe.end_access(g1).unwrap();
    assert_eq!(
        map_one(&mut be, fe.domid(), g1, true).unwrap_err(),
        GntStatus::GeneralError
    );
    let too_many = [reqs[0]; MAX_GRANT_BATCH + 1];
    assert_eq!(
        be.map(&too_many).unwrap_err(),
        BatchTooLarge(MAX_GRANT_BATCH + 1)
    );
}

#[test]
fn unmapping_an_unknown_handle_fails() {
    let xen = Xen::new();
    let (fe, mut be) = (xen.create_domain(), xen.create_domain());
    let (gref, _) = frontend_page(&fe, &be, false);
    let m = map_one(&mut be, fe.domid(), gref, false).unwrap();
    let forged = GrantMapping {
        handle: GrantHandle(m.handle.0 + 100),
        ..map_one(&mut be, fe.domid(), gref, false).unwrap()
    };
    assert_eq!(be.unmap([forged]), Err(GntStatus::BadHandle));
    be.unmap([m]).unwrap();
}

#[test]
fn grant_copy_checks_access_and_page_bounds() {
    let xen = Xen::new();
    let (fe, mut be) = (xen.create_domain(), xen.create_domain());
    let (ro, ro_page) = frontend_page(&fe, &be, true);
    let (rw, rw_page) = frontend_page(&fe, &be, false);
    ro_page.write(10, b"out data");
    let (local, local_page) = be.alloc_page();
    let fe_id = fe.domid();
    let grant = |gref, offset| CopyPtr::Grant {
        dom: fe_id,
        gref,
        offset,
    };
    let mine = |gfn, offset| CopyPtr::Local { gfn, offset };
    let op = |source, dest| CopyOp {
        source,
        dest,
        len: 8,
    };
    let ops = [
        // Read from a read-only grant: fine.
        op(grant(ro, 10), mine(local, 0)),
        // Write into a read-only grant: refused.
        op(mine(local, 0), grant(ro, 0)),
        // Write into a writable grant: fine.
        op(mine(local, 0), grant(rw, 4000)),
        // Crossing the end of the page.
        op(mine(local, 0), grant(rw, 4090)),
        // A frame we do not have.
        op(mine(Gfn(1), 0), grant(rw, 0)),
    ];
    let mut st = vec![GntStatus::Okay; 9];
    be.copy(&ops, &mut st);
    assert_eq!(
        st.as_slice(),
        &[
            GntStatus::Okay,
            GntStatus::GeneralError,
            GntStatus::Okay,
            GntStatus::BadCopyArg,
            GntStatus::BadPage
        ]
    );
    let mut buf = [0u8; 8];
    local_page.read(0, &mut buf);
    assert_eq!(&buf, b"out data");
    rw_page.read(4000, &mut buf);
    assert_eq!(&buf, b"out data");
}

#[test]
fn interdomain_channels_deliver_and_respect_masks() {
    let xen = Xen::new();
    let (mut fe, mut be) = (xen.create_domain(), xen.create_domain());
    let fe_port = fe.alloc_unbound(be.domid()).unwrap();
    assert_ne!(fe_port.0, 0, "port 0 is never allocated");
    let be_port = be.bind_interdomain(fe.domid(), fe_port).unwrap();
    // A fresh binding is pending, so nothing sent before it is lost.
    let mut seen = Vec::new();
    be.take_pending(&mut |p| seen.push(p));
    assert_eq!(seen, [be_port]);

    fe.send(fe_port).unwrap();
    assert!(be.upcall_pending());
    seen.clear();
    be.take_pending(&mut |p| seen.push(p));
    assert_eq!(seen, [be_port]);
    assert!(!be.upcall_pending());

    be.mask(be_port).unwrap();
    fe.send(fe_port).unwrap();
    assert!(!be.upcall_pending(), "a masked port raises no upcall");
    seen.clear();
    be.take_pending(&mut |p| seen.push(p));
    assert!(seen.is_empty());
    be.unmask(be_port).unwrap();
    assert!(be.upcall_pending(), "unmasking delivers the pending event");
    be.take_pending(&mut |p| seen.push(p));
    assert_eq!(seen, [be_port]);

    be.send(be_port).unwrap();
    seen.clear();
    fe.take_pending(&mut |p| seen.push(p));
    assert_eq!(seen, [fe_port]);
}

#[test]
fn binding_needs_a_port_offered_to_us() {
    let xen = Xen::new();
    let (mut fe, mut be, mut other) = (
        xen.create_domain(),
        xen.create_domain(),
        xen.create_domain(),
    );
    let offered_to_other = fe.alloc_unbound(other.domid()).unwrap();
    assert_eq!(
        be.bind_interdomain(fe.domid(), offered_to_other),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        be.bind_interdomain(fe.domid(), EvtchnPort(999)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        be.bind_interdomain(DomId(999), EvtchnPort(1)),
        Err(Errno::ESRCH)
    );
    assert_eq!(be.alloc_unbound(DomId(999)), Err(Errno::ESRCH));
    other
        .bind_interdomain(fe.domid(), offered_to_other)
        .unwrap();
    // Already bound: nobody else can bind it.
    assert_eq!(
        be.bind_interdomain(fe.domid(), offered_to_other),
        Err(Errno::EINVAL)
    );
    assert_eq!(be.send(EvtchnPort(4000)), Err(Errno::EINVAL));
}

#[test]
fn closing_one_end_leaves_the_other_unbound() {
    let xen = Xen::new();
    let (mut fe, mut be) = (xen.create_domain(), xen.create_domain());
    let fe_port = fe.alloc_unbound(be.domid()).unwrap();
    let be_port = be.bind_interdomain(fe.domid(), fe_port).unwrap();
    be.take_pending(&mut |_| {});
    be.close(be_port).unwrap();
    // Sending on an unbound port is accepted and goes nowhere.
    fe.send(fe_port).unwrap();
    assert!(!be.upcall_pending());
    // The frontend's port is offered to the backend again: a reconnect can bind it.
    let again = be.bind_interdomain(fe.domid(), fe_port).unwrap();
    assert_eq!(again, be_port, "ports are reused lowest first");
    assert_eq!(be.close(EvtchnPort(3000)), Err(Errno::EINVAL));
}

#[test]
fn destroying_a_domain_unbinds_its_peers_and_drops_its_mappings() {
    let xen = Xen::new();
    let (mut fe, mut be) = (xen.create_domain(), xen.create_domain());
    let (gref, _) = frontend_page(&fe, &be, false);
    let _mapping = map_one(&mut be, fe.domid(), gref, false).unwrap();
    let fe_port = fe.alloc_unbound(be.domid()).unwrap();
    be.bind_interdomain(fe.domid(), fe_port).unwrap();
    xen.destroy_domain(be.domid());
    assert!(xen.domain(be.domid()).is_none());
    assert!(!fe.grant_in_use(gref));
    fe.end_access(gref).unwrap();
    fe.send(fe_port).unwrap();
}
