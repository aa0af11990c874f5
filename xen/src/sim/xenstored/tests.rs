//! Tests of the simulated xenstored, each request sent through the wire encoding.

use super::*;
use crate::abi::xs_wire::{XsdError, XsdSockmsgType, XENSTORE_PAYLOAD_MAX};
use crate::xenstore::{Decoder, Reply, Request, TxId, WatchEvent, XsError};
use alloc::vec;
use proptest::prelude::*;

const D5: DomId = DomId(5);
const D7: DomId = DomId(7);

fn perm(domid: u16, access: Access) -> Perm {
    Perm {
        domid: DomId(domid),
        access,
    }
}

/// Sends `r` from `from` in transaction `tx` through the wire encoding; parses the reply.
fn call(xs: &mut Xenstored, from: DomId, tx: u32, r: Request<'_>) -> Result<Reply, XsError> {
    let mut d = Decoder::new();
    d.push(&r.encode(42, TxId(tx)).unwrap());
    let msg = d.next_message().unwrap().unwrap();
    let reply = xs.handle(from, &msg);
    assert_eq!((reply.req_id, reply.tx_id), (42, tx));
    Reply::parse(r.msg_type(), &reply)
}

fn ok_(xs: &mut Xenstored, from: DomId, r: Request<'_>) {
    assert_eq!(call(xs, from, 0, r), Ok(Reply::Ok), "{r:?} from {from:?}");
}

fn err(xs: &mut Xenstored, from: DomId, tx: u32, r: Request<'_>) -> XsdError {
    match call(xs, from, tx, r) {
        Err(XsError::Xs(e)) => e,
        other => panic!("{r:?} from {from:?}: expected an error, got {other:?}"),
    }
}

fn read(xs: &mut Xenstored, from: DomId, path: &str) -> Result<Vec<u8>, XsdError> {
    match call(xs, from, 0, Request::Read(path)) {
        Ok(Reply::Data(v)) => Ok(v),
        Err(XsError::Xs(e)) => Err(e),
        other => panic!("read {path}: {other:?}"),
    }
}

fn dir(xs: &mut Xenstored, from: DomId, path: &str) -> Vec<String> {
    match call(xs, from, 0, Request::Directory(path)) {
        Ok(Reply::Directory(names)) => names,
        other => panic!("directory {path}: {other:?}"),
    }
}

fn perms(xs: &mut Xenstored, from: DomId, path: &str) -> Vec<Perm> {
    match call(xs, from, 0, Request::GetPerms(path)) {
        Ok(Reply::Perms(p)) => p,
        other => panic!("get_perms {path}: {other:?}"),
    }
}

fn start(xs: &mut Xenstored, from: DomId) -> u32 {
    match call(xs, from, 0, Request::TransactionStart) {
        Ok(Reply::Transaction(TxId(id))) => id,
        other => panic!("transaction_start: {other:?}"),
    }
}

/// Drains `dom`'s events as (path, token).
fn events(xs: &mut Xenstored, dom: DomId) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(m) = xs.next_event(dom) {
        assert_eq!(
            (m.msg_type, m.req_id, m.tx_id),
            (XsdSockmsgType::WatchEvent as u32, 0, 0)
        );
        let e = WatchEvent::parse(&m.payload).unwrap();
        out.push((e.path, e.token));
    }
    out
}

fn ev(path: &str, token: &str) -> (String, String) {
    (path.into(), token.into())
}

fn store() -> Xenstored {
    let mut xs = Xenstored::new();
    xs.introduce_domain(D5);
    xs.introduce_domain(D7);
    xs
}

#[test]
fn read_write_directory_round_trip() {
    let mut xs = Xenstored::new();
    let d0 = DomId::DOM0;
    assert_eq!(dir(&mut xs, d0, "/"), ["local"]);
    assert_eq!(dir(&mut xs, d0, "/local/domain"), Vec::<String>::new());
    ok_(&mut xs, d0, Request::Write("/a/b/c", b"v\0x"));
    ok_(&mut xs, d0, Request::Write("/a-b", b"1"));
    assert_eq!(read(&mut xs, d0, "/a/b/c"), Ok(b"v\0x".to_vec()));
    assert_eq!(read(&mut xs, d0, "/a/b"), Ok(vec![]));
    assert_eq!(dir(&mut xs, d0, "/"), ["a", "a-b", "local"]);
    assert_eq!(dir(&mut xs, d0, "/a"), ["b"]);
    ok_(&mut xs, d0, Request::Write("/a/b", b"new"));
    assert_eq!(read(&mut xs, d0, "/a/b"), Ok(b"new".to_vec()));
    assert_eq!(read(&mut xs, d0, "/nope"), Err(XsdError::Enoent));
    ok_(&mut xs, d0, Request::Mkdir("/a/d"));
    assert_eq!(dir(&mut xs, d0, "/a"), ["b", "d"]);
    ok_(&mut xs, d0, Request::Rm("/a/b"));
    assert_eq!(read(&mut xs, d0, "/a/b/c"), Err(XsdError::Enoent));
    assert_eq!(dir(&mut xs, d0, "/a"), ["d"]);
    // Removing a missing node is fine if its parent exists.
    ok_(&mut xs, d0, Request::Rm("/a/zz"));
    assert_eq!(err(&mut xs, d0, 0, Request::Rm("/x/y")), XsdError::Enoent);
    assert_eq!(err(&mut xs, d0, 0, Request::Rm("/")), XsdError::Einval);
    for bad in ["/a//b", "/a/", "/a b", "/é"] {
        assert_eq!(err(&mut xs, d0, 0, Request::Read(bad)), XsdError::Einval);
    }
    assert_eq!(
        call(&mut xs, D5, 0, Request::GetDomainPath(D7)),
        Ok(Reply::DomainPath("/local/domain/7".into()))
    );
}

#[test]
fn relative_paths_resolve_to_the_home() {
    let mut xs = store();
    ok_(&mut xs, D5, Request::Write("device/vusb/0/state", b"1"));
    assert_eq!(
        read(&mut xs, DomId::DOM0, "/local/domain/5/device/vusb/0/state"),
        Ok(b"1".to_vec())
    );
    assert_eq!(read(&mut xs, D5, "domid"), Ok(b"5".to_vec()));
    assert_eq!(
        dir(&mut xs, D5, "/local/domain/5"),
        ["attr", "control", "data", "device", "domid", "drivers", "error"]
    );
}

#[test]
fn guests_cannot_read_or_write_what_they_have_no_permission_on() {
    let mut xs = store();
    ok_(&mut xs, DomId::DOM0, Request::Write("/secret/x", b"s"));
    assert_eq!(read(&mut xs, D5, "/secret/x"), Err(XsdError::Eacces));
    // Nor may it learn whether a node exists under one it cannot read.
    assert_eq!(read(&mut xs, D5, "/secret/y"), Err(XsdError::Eacces));
    assert_eq!(
        err(&mut xs, D5, 0, Request::Write("/secret/x", b"mine")),
        XsdError::Eacces
    );
    assert_eq!(
        err(&mut xs, D5, 0, Request::Write("/new", b"1")),
        XsdError::Eacces
    );
    assert_eq!(
        err(&mut xs, D5, 0, Request::Rm("/secret")),
        XsdError::Eacces
    );
    // Another guest's home is readable only by that guest.
    assert_eq!(
        read(&mut xs, D5, "/local/domain/7/domid"),
        Err(XsdError::Eacces)
    );
    // Its own home is readable but owned by dom0: no writing there, only below its dirs.
    assert_eq!(
        err(&mut xs, D5, 0, Request::Write("name", b"x")),
        XsdError::Eacces
    );
    assert_eq!(read(&mut xs, D5, "name"), Err(XsdError::Enoent));
    assert_eq!(read(&mut xs, DomId::DOM0, "/secret/x"), Ok(b"s".to_vec()));
}

#[test]
fn a_guest_owns_what_it_creates() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, d0, Request::Mkdir("/local/domain/5/backend"));
    let granted = [perm(0, Access::None), perm(5, Access::Both)];
    ok_(
        &mut xs,
        d0,
        Request::SetPerms("/local/domain/5/backend", &granted),
    );
    ok_(&mut xs, D5, Request::Write("backend/vusb/1/0/state", b"2"));
    let want = vec![perm(5, Access::None), perm(5, Access::Both)];
    assert_eq!(
        perms(&mut xs, d0, "/local/domain/5/backend/vusb/1/0/state"),
        want
    );
    assert_eq!(perms(&mut xs, d0, "/local/domain/5/backend/vusb"), want);
    // dom0 creating keeps the inherited owner.
    ok_(
        &mut xs,
        d0,
        Request::Write("/local/domain/5/backend/d0", b""),
    );
    assert_eq!(
        perms(&mut xs, d0, "/local/domain/5/backend/d0"),
        granted.to_vec()
    );
}

#[test]
fn a_perms_entry_grants_its_domain_access() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, d0, Request::Write("/shared", b"x"));
    let p = [perm(0, Access::None), perm(7, Access::Read)];
    ok_(&mut xs, d0, Request::SetPerms("/shared", &p));
    assert_eq!(read(&mut xs, D7, "/shared"), Ok(b"x".to_vec()));
    assert_eq!(perms(&mut xs, D7, "/shared"), p.to_vec());
    assert_eq!(read(&mut xs, D5, "/shared"), Err(XsdError::Eacces));
    assert_eq!(
        err(&mut xs, D7, 0, Request::Write("/shared", b"y")),
        XsdError::Eacces
    );
    // Only the owner may change permissions, and may not give the node away.
    assert_eq!(
        err(&mut xs, D7, 0, Request::SetPerms("/shared", &p)),
        XsdError::Eacces
    );
    let mine = [perm(5, Access::Read)];
    ok_(&mut xs, D5, Request::SetPerms("device", &mine));
    assert_eq!(read(&mut xs, D7, "/local/domain/5/device"), Ok(vec![]));
    assert_eq!(
        err(
            &mut xs,
            D5,
            0,
            Request::SetPerms("device", &[perm(7, Access::Both)])
        ),
        XsdError::Eperm
    );
}

#[test]
fn watches_fire_on_registration_and_on_changes_below() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, d0, Request::Watch("/a", "t"));
    assert_eq!(events(&mut xs, d0), [ev("/a", "t")]);
    ok_(&mut xs, d0, Request::Write("/a/b/c", b"1"));
    ok_(&mut xs, d0, Request::Write("/ab", b"1"));
    assert_eq!(events(&mut xs, d0), [ev("/a/b/c", "t")]);
    // A mkdir that changes nothing fires nothing.
    ok_(&mut xs, d0, Request::Mkdir("/a/b"));
    assert_eq!(events(&mut xs, d0), []);
    assert_eq!(
        err(&mut xs, d0, 0, Request::Watch("/a", "t")),
        XsdError::Eexist
    );
    ok_(&mut xs, d0, Request::Unwatch("/a", "t"));
    assert_eq!(
        err(&mut xs, d0, 0, Request::Unwatch("/a", "t")),
        XsdError::Enoent
    );
    ok_(&mut xs, d0, Request::Write("/a/b", b"2"));
    assert_eq!(events(&mut xs, d0), []);

    // A relative watch reports relative paths.
    ok_(&mut xs, D5, Request::Watch("device", "fe"));
    assert_eq!(events(&mut xs, D5), [ev("device", "fe")]);
    ok_(
        &mut xs,
        d0,
        Request::Write("/local/domain/5/device/vusb/0", b""),
    );
    assert_eq!(events(&mut xs, D5), [ev("device/vusb/0", "fe")]);
    // The same watch spelled absolutely is a duplicate.
    assert_eq!(
        err(
            &mut xs,
            D5,
            0,
            Request::Watch("/local/domain/5/device", "fe")
        ),
        XsdError::Eexist
    );
}

#[test]
fn events_only_reach_domains_that_may_read_the_node() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, D5, Request::Watch("/secret", "s"));
    ok_(&mut xs, d0, Request::Watch("/secret", "s"));
    assert_eq!(events(&mut xs, D5), [ev("/secret", "s")]);
    events(&mut xs, d0);
    ok_(&mut xs, d0, Request::Write("/secret/x", b"1"));
    assert_eq!(events(&mut xs, D5), []);
    assert_eq!(events(&mut xs, d0), [ev("/secret/x", "s")]);
    // Granting read is itself an event the domain now sees; so are later changes.
    let p = [perm(0, Access::None), perm(5, Access::Read)];
    ok_(&mut xs, d0, Request::SetPerms("/secret/x", &p));
    assert_eq!(events(&mut xs, D5), [ev("/secret/x", "s")]);
    ok_(&mut xs, d0, Request::Write("/secret/x", b"2"));
    assert_eq!(events(&mut xs, D5), [ev("/secret/x", "s")]);
}

#[test]
fn rm_fires_watches_on_the_removed_subtree() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, d0, Request::Write("/a/b/c", b"1"));
    ok_(&mut xs, d0, Request::Watch("/a/b/c", "deep"));
    ok_(&mut xs, d0, Request::Watch("/a", "top"));
    ok_(&mut xs, d0, Request::Watch("/a/b/c/none", "missing"));
    ok_(&mut xs, d0, Request::Watch("/other", "other"));
    events(&mut xs, d0);
    ok_(&mut xs, d0, Request::Rm("/a/b"));
    assert_eq!(
        events(&mut xs, d0),
        [ev("/a/b/c", "deep"), ev("/a/b", "top")]
    );
    // A guest that could read a removed node hears of its removal.
    ok_(&mut xs, D5, Request::Write("data/x", b"1"));
    ok_(&mut xs, D5, Request::Watch("data/x", "x"));
    events(&mut xs, D5);
    ok_(&mut xs, d0, Request::Rm("/local/domain/5/data"));
    assert_eq!(events(&mut xs, D5), [ev("data/x", "x")]);
}

#[test]
fn a_conflicting_transaction_fails_with_eagain() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, d0, Request::Write("/a", b"1"));
    let tx = start(&mut xs, D5);
    assert_eq!(
        call(&mut xs, D5, tx, Request::Read("/local/domain/5/domid")),
        Ok(Reply::Data(b"5".to_vec()))
    );
    ok_(&mut xs, d0, Request::Write("/local/domain/5/domid", b"5"));
    assert_eq!(
        call(&mut xs, D5, tx, Request::Write("data/x", b"1")),
        Ok(Reply::Ok)
    );
    assert_eq!(
        err(&mut xs, D5, tx, Request::TransactionEnd(true)),
        XsdError::Eagain
    );
    assert_eq!(read(&mut xs, D5, "data/x"), Err(XsdError::Enoent));
    // The transaction is gone.
    assert_eq!(
        err(&mut xs, D5, tx, Request::Read("domid")),
        XsdError::Enoent
    );

    // Listing a directory conflicts with a child created meanwhile.
    let tx = start(&mut xs, d0);
    assert!(call(&mut xs, d0, tx, Request::Directory("/a")).is_ok());
    ok_(&mut xs, d0, Request::Write("/a/new", b""));
    assert_eq!(
        err(&mut xs, d0, tx, Request::TransactionEnd(true)),
        XsdError::Eagain
    );

    // So does a node the transaction found missing and someone else created.
    let tx = start(&mut xs, d0);
    assert_eq!(err(&mut xs, d0, tx, Request::Read("/b")), XsdError::Enoent);
    ok_(&mut xs, d0, Request::Write("/b", b""));
    assert_eq!(
        err(&mut xs, d0, tx, Request::TransactionEnd(true)),
        XsdError::Eagain
    );
}

#[test]
fn a_transaction_commits_and_fires_watches_only_then() {
    let mut xs = store();
    let d0 = DomId::DOM0;
    ok_(&mut xs, D5, Request::Watch("data", "w"));
    events(&mut xs, D5);
    let tx = start(&mut xs, D5);
    let other = start(&mut xs, D5);
    assert_ne!(tx, other);
    let w = |path, v| Request::Write(path, v);
    assert_eq!(call(&mut xs, D5, tx, w("data/x", b"1")), Ok(Reply::Ok));
    assert_eq!(call(&mut xs, D5, tx, w("data/y", b"2")), Ok(Reply::Ok));
    assert_eq!(call(&mut xs, D5, tx, Request::Rm("data/y")), Ok(Reply::Ok));
    assert_eq!(
        call(&mut xs, D5, tx, Request::Read("data/x")),
        Ok(Reply::Data(b"1".to_vec()))
    );
    assert_eq!(read(&mut xs, D5, "data/x"), Err(XsdError::Enoent));
    // Unrelated live changes do not conflict.
    ok_(&mut xs, d0, Request::Write("/elsewhere", b""));
    assert_eq!(events(&mut xs, D5), []);
    assert_eq!(
        call(&mut xs, D5, tx, Request::TransactionEnd(true)),
        Ok(Reply::Ok)
    );
    assert_eq!(read(&mut xs, D5, "data/x"), Ok(b"1".to_vec()));
    assert_eq!(read(&mut xs, D5, "data/y"), Err(XsdError::Enoent));
    assert_eq!(
        events(&mut xs, D5),
        [ev("data/x", "w"), ev("data/y", "w"), ev("data/y", "w")]
    );
    // An aborted transaction changes nothing.
    assert_eq!(call(&mut xs, D5, other, w("data/z", b"")), Ok(Reply::Ok));
    assert_eq!(
        call(&mut xs, D5, other, Request::TransactionEnd(false)),
        Ok(Reply::Ok)
    );
    assert_eq!(read(&mut xs, D5, "data/z"), Err(XsdError::Enoent));
    assert_eq!(events(&mut xs, D5), []);
}

#[test]
fn transaction_ids_are_checked() {
    let mut xs = store();
    let tx = start(&mut xs, D5);
    assert_eq!(
        err(&mut xs, D5, 999, Request::Read("domid")),
        XsdError::Enoent
    );
    // Another domain's transaction is not there for it.
    assert_eq!(
        err(&mut xs, D7, tx, Request::Read("domid")),
        XsdError::Enoent
    );
    assert_eq!(
        err(&mut xs, D7, tx, Request::TransactionEnd(true)),
        XsdError::Enoent
    );
    assert_eq!(
        err(&mut xs, D5, 0, Request::TransactionEnd(true)),
        XsdError::Enoent
    );
    assert_eq!(
        err(&mut xs, D5, tx, Request::TransactionStart),
        XsdError::Ebusy
    );
    // Watches ignore the transaction id.
    assert_eq!(
        call(&mut xs, D5, tx, Request::Watch("data", "t")),
        Ok(Reply::Ok)
    );
    assert_eq!(events(&mut xs, D5), [ev("data", "t")]);
}

#[test]
fn introduce_and_release_fire_their_special_watches() {
    let mut xs = Xenstored::new();
    let d0 = DomId::DOM0;
    ok_(&mut xs, d0, Request::Watch("@introduceDomain", "i"));
    ok_(&mut xs, d0, Request::Watch("@releaseDomain", "r"));
    ok_(&mut xs, D5, Request::Watch("@releaseDomain", "r5"));
    assert_eq!(
        events(&mut xs, d0),
        [ev("@introduceDomain", "i"), ev("@releaseDomain", "r")]
    );
    assert_eq!(events(&mut xs, D5), [ev("@releaseDomain", "r5")]);
    xs.introduce_domain(D7);
    assert_eq!(events(&mut xs, d0), [ev("@introduceDomain", "i")]);
    assert_eq!(
        perms(&mut xs, d0, "/local/domain/7"),
        [perm(0, Access::None), perm(7, Access::Read)]
    );
    assert_eq!(
        perms(&mut xs, d0, "/local/domain/7/device"),
        [perm(7, Access::None)]
    );
    ok_(&mut xs, D7, Request::Watch("device", "d"));
    xs.release_domain(D7);
    assert_eq!(events(&mut xs, d0), [ev("@releaseDomain", "r")]);
    // A guest hears of it only once dom0 grants read on the special node.
    assert_eq!(events(&mut xs, D5), []);
    assert_eq!(xs.next_event(D7), None);
    let p = [perm(0, Access::None), perm(5, Access::Read)];
    ok_(&mut xs, d0, Request::SetPerms("@releaseDomain", &p));
    events(&mut xs, D5);
    xs.release_domain(D7);
    assert_eq!(events(&mut xs, D5), [ev("@releaseDomain", "r5")]);
    // Its nodes stay for the toolstack to remove.
    assert_eq!(
        read(&mut xs, d0, "/local/domain/7/domid"),
        Ok(b"7".to_vec())
    );
}

#[test]
fn unimplemented_and_unknown_types_are_refused() {
    let mut xs = store();
    let msg = |msg_type| Message {
        msg_type,
        req_id: 3,
        tx_id: 0,
        payload: b"x\0".to_vec(),
    };
    let r = xs.handle(DomId::DOM0, &msg(XsdSockmsgType::Introduce as u32));
    assert_eq!(
        Reply::parse(XsdSockmsgType::Introduce, &r),
        Err(XsError::Xs(XsdError::Enosys))
    );
    let r = xs.handle(DomId::DOM0, &msg(99));
    assert_eq!((r.req_id, r.payload.as_slice()), (3, &b"EINVAL\0"[..]));
}

proptest! {
    /// Any message from any domain gets a reply to it, never a panic.
    #[test]
    fn garbage_never_panics(
        msgs in prop::collection::vec(
            (0u32..24, 0u32..4, 0u16..8, prop::collection::vec(
                prop_oneof![Just(0u8), Just(b'/'), Just(b'a'), Just(b'@'), Just(b'T'),
                            Just(b'r'), Just(b'1'), any::<u8>()], 0..40)),
            1..30)
    ) {
        let mut xs = store();
        for (msg_type, tx_id, from, payload) in msgs {
            let msg = Message { msg_type, req_id: 9, tx_id, payload };
            let reply = xs.handle(DomId(from), &msg);
            prop_assert_eq!((reply.req_id, reply.tx_id), (9, tx_id));
            prop_assert!(reply.msg_type == msg_type
                || reply.msg_type == XsdSockmsgType::Error as u32);
            prop_assert!(reply.payload.len() <= XENSTORE_PAYLOAD_MAX);
            while xs.next_event(DomId(from)).is_some() {}
        }
    }
}
