//! The xenstore client against the simulated xenstored, as domains see it.
#![cfg(feature = "sim")]

use xen::abi::xs_wire::XsdError;
use xen::abi::DomId;
use xen::sim::Xen;
use xen::xenstore::{Access, Perm, TxId, WatchEvent, XsError};

const EACCES: XsError = XsError::Xs(XsdError::Eacces);

#[test]
fn a_guest_reads_its_home_and_nothing_it_was_not_given() {
    let xen = Xen::new();
    let (a, b) = (xen.create_domain(), xen.create_domain());
    let mut xa = a.xenstore();
    let home = xa.get_domain_path(a.domid()).unwrap();
    assert_eq!(home, format!("/local/domain/{}", a.domid()));
    // Relative paths are under the home; the domain owns `data`.
    xa.write(TxId::NONE, "data/x", b"1").unwrap();
    assert_eq!(
        xa.read(TxId::NONE, &format!("{home}/data/x")).unwrap(),
        b"1"
    );
    // Another guest's node: no read, no write.
    let mut xb = b.xenstore();
    assert_eq!(xb.read(TxId::NONE, &format!("{home}/data/x")), Err(EACCES));
    assert_eq!(
        xb.write(TxId::NONE, &format!("{home}/data/y"), b"2"),
        Err(EACCES)
    );
    // dom0's tree: a guest cannot create under it.
    assert_eq!(xa.write(TxId::NONE, "/tool/x", b"1"), Err(EACCES));
    assert_eq!(
        xa.read(TxId::NONE, "data/nonexistent"),
        Err(XsError::Xs(XsdError::Enoent))
    );
    // Under a node it cannot read, a guest cannot even learn what is missing.
    assert_eq!(xa.read(TxId::NONE, "/nonexistent"), Err(EACCES));
}

#[test]
fn permissions_given_by_the_owner_take_effect() {
    let xen = Xen::new();
    let (a, b) = (xen.create_domain(), xen.create_domain());
    let mut xa = a.xenstore();
    xa.write(TxId::NONE, "data/shared", b"v").unwrap();
    let perms = xa.get_perms(TxId::NONE, "data/shared").unwrap();
    assert_eq!(
        perms[0].domid,
        a.domid(),
        "the creating guest owns a node it creates"
    );
    let p = [
        Perm {
            domid: a.domid(),
            access: Access::None,
        },
        Perm {
            domid: b.domid(),
            access: Access::Read,
        },
    ];
    xa.set_perms(TxId::NONE, "data/shared", &p).unwrap();
    let path = format!("/local/domain/{}/data/shared", a.domid());
    let mut xb = b.xenstore();
    assert_eq!(xb.read(TxId::NONE, &path).unwrap(), b"v");
    assert_eq!(xb.write(TxId::NONE, &path, b"w"), Err(EACCES));
    assert_eq!(xb.set_perms(TxId::NONE, &path, &p), Err(EACCES));
}

#[test]
fn a_watch_fires_on_registration_and_on_a_subtree_write() {
    let xen = Xen::new();
    let dom0 = xen.dom0();
    let be = xen.create_domain();
    let mut d0 = dom0.xenstore();
    let dir = format!("/local/domain/{}/backend", be.domid());
    d0.mkdir(TxId::NONE, &dir).unwrap();
    d0.set_perms(
        TxId::NONE,
        &dir,
        &[Perm {
            domid: be.domid(),
            access: Access::None,
        }],
    )
    .unwrap();
    let mut xb = be.xenstore();
    xb.watch(&dir, "tok").unwrap();
    xb.poll().unwrap();
    assert_eq!(
        xb.next_event(),
        Some(WatchEvent {
            path: dir.clone(),
            token: "tok".into()
        })
    );
    d0.write(TxId::NONE, &format!("{dir}/vusb/3/0/state"), b"1")
        .unwrap();
    xb.poll().unwrap();
    let paths: Vec<String> = std::iter::from_fn(|| xb.next_event())
        .map(|e| e.path)
        .collect();
    assert!(
        paths.contains(&format!("{dir}/vusb/3/0/state")),
        "{paths:?}"
    );
    xb.unwatch(&dir, "tok").unwrap();
    d0.write(TxId::NONE, &format!("{dir}/vusb/3/0/state"), b"2")
        .unwrap();
    xb.poll().unwrap();
    assert_eq!(xb.next_event(), None);
}

#[test]
fn a_conflicting_transaction_fails_with_eagain_and_a_retry_succeeds() {
    let xen = Xen::new();
    let (a, dom0) = (xen.create_domain(), xen.dom0());
    let mut xa = a.xenstore();
    let mut d0 = dom0.xenstore();
    let path = format!("/local/domain/{}/data/counter", a.domid());
    xa.write(TxId::NONE, &path, b"1").unwrap();
    let tx = xa.transaction_start().unwrap();
    assert_eq!(xa.read(tx, &path).unwrap(), b"1");
    d0.write(TxId::NONE, &path, b"5").unwrap();
    xa.write(tx, &path, b"2").unwrap();
    assert_eq!(
        xa.transaction_end(tx, true),
        Err(XsError::Xs(XsdError::Eagain))
    );
    assert_eq!(xa.read(TxId::NONE, &path).unwrap(), b"5");
    // The retrying helper reads the new value and commits.
    let mut attempts = 0;
    xa.transaction(3, |xs, tx| {
        attempts += 1;
        let v = xs.read(tx, &path)?;
        if attempts == 1 {
            d0.write(TxId::NONE, &path, b"6").unwrap();
        }
        xs.write(tx, &path, &[v[0] + 1])
    })
    .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(xa.read(TxId::NONE, &path).unwrap(), b"7");
    assert_eq!(
        xa.read(TxId(999), &path),
        Err(XsError::Xs(XsdError::Enoent))
    );
}

#[test]
fn domain_introduction_and_release_fire_special_watches() {
    let xen = Xen::new();
    let mut d0 = xen.dom0().xenstore();
    d0.watch("@introduceDomain", "in").unwrap();
    d0.watch("@releaseDomain", "out").unwrap();
    d0.poll().unwrap();
    while d0.next_event().is_some() {}
    let a = xen.create_domain();
    xen.destroy_domain(a.domid());
    d0.poll().unwrap();
    let tokens: Vec<String> = std::iter::from_fn(|| d0.next_event())
        .map(|e| e.token)
        .collect();
    assert_eq!(tokens, ["in", "out"]);
    assert_eq!(a.domid(), DomId(1));
}
