//! Tests of the codec, the ring and the client.

use super::ring::XS_RSP_PROD;
use super::*;
use crate::abi::xs_wire::{
    XsdError, XsdSockmsg, XsdSockmsgType, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX,
};
use crate::abi::DomId;
use crate::page::{LocalPage, SharedPage};
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;
use zerocopy::IntoBytes;

fn reply(req_id: u32, t: XsdSockmsgType, payload: &[u8]) -> Message {
    Message {
        msg_type: t as u32,
        req_id,
        tx_id: 0,
        payload: payload.to_vec(),
    }
}

#[test]
fn requests_encode_as_xenstored_expects() {
    let m = Request::Write("/a/b", b"xyz").encode(7, TxId(3)).unwrap();
    assert_eq!(&m[..16], &[11, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0]);
    assert_eq!(&m[16..], b"/a/b\0xyz");
    let m = Request::Watch("/p", "tok").encode(1, TxId::NONE).unwrap();
    assert_eq!(&m[16..], b"/p\0tok\0");
    let perms = [
        Perm {
            domid: DomId(5),
            access: Access::None,
        },
        Perm {
            domid: DomId(0),
            access: Access::Read,
        },
    ];
    let m = Request::SetPerms("/p", &perms)
        .encode(1, TxId::NONE)
        .unwrap();
    assert_eq!(&m[16..], b"/p\0n5\0r0\0");
    assert_eq!(
        &Request::TransactionEnd(false).encode(1, TxId(9)).unwrap()[16..],
        b"F\0"
    );
    assert_eq!(
        &Request::TransactionStart.encode(1, TxId::NONE).unwrap()[16..],
        b"\0"
    );
    assert_eq!(
        &Request::GetDomainPath(DomId(12))
            .encode(1, TxId::NONE)
            .unwrap()[16..],
        b"12\0"
    );
}

#[test]
fn requests_refuse_oversized_and_malformed_arguments() {
    let long = "x".repeat(XENSTORE_ABS_PATH_MAX + 1);
    assert_eq!(
        Request::Read(&long).encode(1, TxId::NONE),
        Err(XsError::TooBig)
    );
    let big = vec![b'v'; XENSTORE_PAYLOAD_MAX];
    assert_eq!(
        Request::Write("/a", &big).encode(1, TxId::NONE),
        Err(XsError::TooBig)
    );
    assert_eq!(
        Request::Read("").encode(1, TxId::NONE),
        Err(XsError::BadArgument)
    );
    assert_eq!(
        Request::Read("a\0b").encode(1, TxId::NONE),
        Err(XsError::BadArgument)
    );
    assert_eq!(
        Request::SetPerms("/a", &[]).encode(1, TxId::NONE),
        Err(XsError::BadArgument)
    );
}

#[test]
fn every_error_reply_becomes_its_typed_error() {
    for e in XsdError::ALL {
        let mut name = e.name().as_bytes().to_vec();
        name.push(0);
        let m = reply(1, XsdSockmsgType::Error, &name);
        assert_eq!(Reply::parse(XsdSockmsgType::Read, &m), Err(XsError::Xs(e)));
    }
    let m = reply(1, XsdSockmsgType::Error, b"EWHATEVER\0");
    assert!(matches!(
        Reply::parse(XsdSockmsgType::Read, &m),
        Err(XsError::Protocol(_))
    ));
}

#[test]
fn replies_parse_by_request_type() {
    use XsdSockmsgType as T;
    let p = |t, payload: &[u8]| Reply::parse(t, &reply(1, t, payload));
    assert_eq!(p(T::Read, b"v\0x"), Ok(Reply::Data(b"v\0x".to_vec())));
    assert_eq!(
        p(T::Directory, b"a\0bb\0"),
        Ok(Reply::Directory(vec!["a".into(), "bb".into()]))
    );
    assert_eq!(p(T::Directory, b""), Ok(Reply::Directory(vec![])));
    assert_eq!(
        p(T::GetPerms, b"n3\0r0\0"),
        Ok(Reply::Perms(vec![
            Perm {
                domid: DomId(3),
                access: Access::None
            },
            Perm {
                domid: DomId(0),
                access: Access::Read
            },
        ]))
    );
    assert_eq!(
        p(T::TransactionStart, b"42\0"),
        Ok(Reply::Transaction(TxId(42)))
    );
    assert!(matches!(
        p(T::TransactionStart, b"0\0"),
        Err(XsError::Protocol(_))
    ));
    assert_eq!(p(T::Write, b"OK\0"), Ok(Reply::Ok));
    assert!(matches!(p(T::Write, b"KO\0"), Err(XsError::Protocol(_))));
    let wrong = reply(1, T::Read, b"x");
    assert!(matches!(
        Reply::parse(T::Write, &wrong),
        Err(XsError::Protocol(_))
    ));
}

#[test]
fn request_decode_inverts_encode() {
    let perms = [Perm {
        domid: DomId(1),
        access: Access::Both,
    }];
    let reqs = [
        Request::Read("/a"),
        Request::Write("/a", b"1\x002"),
        Request::Mkdir("/a"),
        Request::Rm("/a"),
        Request::Directory("/a"),
        Request::GetPerms("/a"),
        Request::Watch("/a", "t"),
        Request::Unwatch("/a", "t"),
        Request::TransactionStart,
        Request::TransactionEnd(true),
        Request::GetDomainPath(DomId(4)),
    ];
    for r in reqs {
        let m = r.encode(1, TxId::NONE).unwrap();
        let mut d = Decoder::new();
        d.push(&m);
        let msg = d.next_message().unwrap().unwrap();
        let t = XsdSockmsgType::from_raw(msg.msg_type).unwrap();
        assert_eq!(Request::decode(t, &msg.payload), Ok(r));
    }
    let m = Request::SetPerms("/a", &perms)
        .encode(1, TxId::NONE)
        .unwrap();
    assert_eq!(
        Request::decode_set_perms(&m[16..]),
        Ok(("/a", perms.to_vec()))
    );
}

#[test]
fn decoder_waits_for_whole_messages_and_refuses_huge_ones() {
    let m = Request::Read("/x").encode(9, TxId::NONE).unwrap();
    let mut d = Decoder::new();
    d.push(&m[..10]);
    assert_eq!(d.next_message(), Ok(None));
    d.push(&m[10..]);
    d.push(&m[..3]);
    assert_eq!(d.next_message().unwrap().unwrap().req_id, 9);
    assert_eq!(d.buffered(), 3);
    let mut d = Decoder::new();
    let header = XsdSockmsg {
        msg_type: 2,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    };
    d.push(header.as_bytes());
    assert!(matches!(d.next_message(), Err(XsError::Protocol(_))));
}

#[test]
fn xs_ring_carries_bytes_both_ways_across_the_wrap() {
    let page = LocalPage::new();
    let client = XsRing::new(page.clone(), XsRingSide::Client);
    let server = XsRing::new(page.clone(), XsRingSide::Server);
    let data: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let mut got = Vec::new();
    let mut sent = 0;
    while got.len() < data.len() {
        sent += client.write(&data[sent..]).unwrap();
        let mut buf = [0u8; 700];
        let n = server.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, data);
    assert_eq!(server.write(b"reply").unwrap(), 5);
    assert_eq!(client.readable(), Ok(5));
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"reply");
}

#[test]
fn xs_ring_refuses_an_impossible_index() {
    let page = LocalPage::new();
    let client = XsRing::new(page.clone(), XsRingSide::Client);
    page.store_u32(XS_RSP_PROD, 2000);
    assert!(matches!(
        client.read(&mut [0u8; 8]),
        Err(XsError::Protocol(_))
    ));
}

/// A transport that answers from a script and records what was sent.
struct Scripted {
    sent: Vec<Vec<u8>>,
    incoming: Vec<u8>,
}

impl XsTransport for Scripted {
    fn send(&mut self, msg: &[u8]) -> Result<(), XsError> {
        self.sent.push(msg.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        // Dribble a few bytes at a time, as a ring may.
        let n = buf.len().min(self.incoming.len()).min(7);
        buf[..n].copy_from_slice(&self.incoming[..n]);
        self.incoming.drain(..n);
        Ok(n)
    }
    fn wait(&mut self) -> Result<(), XsError> {
        Err(XsError::Transport("no more replies scripted"))
    }
}

#[test]
fn client_queues_watch_events_that_arrive_before_the_reply() {
    let event = WatchEvent {
        path: "/w/x".into(),
        token: "t".into(),
    };
    let mut incoming = reply(0, XsdSockmsgType::WatchEvent, &event.payload()).encode();
    incoming.extend(reply(1, XsdSockmsgType::Read, b"val").encode());
    let mut xs = XenStore::new(Scripted {
        sent: vec![],
        incoming,
    });
    assert_eq!(xs.read(TxId::NONE, "/r").unwrap(), b"val");
    assert_eq!(xs.next_event(), Some(event));
    assert_eq!(xs.next_event(), None);
    // Nothing more will come: the client reports it rather than hang.
    assert_eq!(
        xs.read(TxId::NONE, "/r"),
        Err(XsError::Transport("no more replies scripted"))
    );
}

#[test]
fn client_refuses_a_reply_to_another_request() {
    let incoming = reply(5, XsdSockmsgType::Read, b"val").encode();
    let mut xs = XenStore::new(Scripted {
        sent: vec![],
        incoming,
    });
    assert!(matches!(
        xs.read(TxId::NONE, "/r"),
        Err(XsError::Protocol(_))
    ));
}

proptest! {
    /// Any byte stream, cut anywhere: the decoder never panics, never returns a payload
    /// over the limit, and reparsing any message as any reply never panics.
    #[test]
    fn decoder_and_reply_parser_survive_any_bytes(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..40)
    ) {
        let mut d = Decoder::new();
        for c in chunks {
            d.push(&c);
            while let Ok(Some(m)) = d.next_message() {
                prop_assert!(m.payload.len() <= XENSTORE_PAYLOAD_MAX);
                for t in XsdSockmsgType::ALL {
                    let _ = Reply::parse(t, &m);
                    let _ = Request::decode(t, &m.payload);
                }
                let _ = WatchEvent::parse(&m.payload);
            }
        }
    }

    /// Encode then decode returns the same message, for any path, value and ids.
    #[test]
    fn write_round_trips(path in "/[a-z0-9/_-]{1,100}", value in prop::collection::vec(any::<u8>(), 0..300),
                         req_id in any::<u32>(), tx in any::<u32>()) {
        let m = Request::Write(&path, &value).encode(req_id, TxId(tx)).unwrap();
        let mut d = Decoder::new();
        d.push(&m);
        let msg = d.next_message().unwrap().unwrap();
        prop_assert_eq!((msg.req_id, msg.tx_id), (req_id, tx));
        prop_assert_eq!(Request::decode(XsdSockmsgType::Write, &msg.payload), Ok(Request::Write(&path, &value)));
    }
}
