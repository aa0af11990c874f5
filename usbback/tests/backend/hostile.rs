//! Arbitrary ring contents: the CI version of the fuzz target. Whatever a frontend puts in
//! its rings, one page or a multi-page ring, the backend answers or disconnects it, and
//! releases every page it mapped.

use super::*;
use proptest::prelude::*;
use zerocopy::FromBytes;

/// What a frontend may do to the backend.
#[derive(Clone, Debug)]
enum Step {
    /// Any 148 bytes as the next request.
    Raw(Vec<u8>),
    /// A plausible request, bent: its pipe bits, segment count, first segment's offset
    /// and length, and id replaced by arbitrary values where `bend` says so; for an indirect
    /// request, also an entry of its indirect page.
    Bent {
        template: u8,
        id: u16,
        bend: u8,
        pipe: u32,
        segs: u16,
        offset: u16,
        length: u16,
    },
    /// req_prod set to anything.
    Prod(u32),
    /// Transfers held in the host (or not) from now on.
    Hold(bool),
    /// The device unplugged, or plugged back.
    Plug,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 148).prop_map(Step::Raw),
        6 => (
            0u8..5,
            0u16..24,
            any::<u8>(),
            any::<u32>(),
            0u16..20,
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(template, id, bend, pipe, segs, offset, length)| {
                Step::Bent {
                    template,
                    id,
                    bend,
                    pipe,
                    segs,
                    offset,
                    length,
                }
            }),
        1 => any::<u32>().prop_map(Step::Prod),
        2 => any::<bool>().prop_map(Step::Hold),
        1 => Just(Step::Plug),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn no_ring_contents_break_the_backend_or_leak_a_mapping(
        order in prop_oneof![Just(None), Just(Some(2u32))],
        persistent in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        // The stock one-page ring, or a four-page one (64 entries, some across pages); grants
        // copied each time, or kept mapped for a frontend that promised them.
        let urb_ring = match order {
            None => UrbRing::OnePage(None),
            Some(order) => UrbRing::Pages { order, bad_ref: None },
        };
        let mut r = connected_frontend_promising(urb_ring, persistent);
        let size = r.front.urb.size();
        assign(&r.w.xen, r.be, r.fe, 1, "1-1");
        settle(&mut r.w.be, &mut r.host);
        let b = buffer(&r.w.fe, r.be, 0, &[0; 6000], false);
        let list = indirect_list(&r.w.fe, r.be, &b);
        let mut plugged = true;
        let mut rsp_seen = r.front.urb_page.load_u32(8);
        for s in steps {
            let connected =
                state_of(&r.w.xen, &backend_dir(r.be, r.fe)).unwrap() == XenbusState::Connected;
            if !connected {
                break;
            }
            match s {
                Step::Raw(bytes) => {
                    let req = UsbifUrbRequest::read_from_bytes(&bytes).unwrap();
                    if r.front.urb.free_requests() > 0 {
                        send(&r.w.fe, &mut r.front, &[req]);
                    }
                }
                Step::Bent { template, id, bend, pipe, segs, offset, length } => {
                    let mut req = match template {
                        0 => with_buffer(urb(id, 1, 0, 1, Direction::In, TransferType::Bulk), &b),
                        1 => with_buffer(control(id, 1, 0, GET_DEVICE), &b),
                        2 => {
                            let mut u = urb(id, 1, 0, 1, Direction::In, TransferType::Bulk);
                            u.pipe |= USBIF_PIPE_UNLINK;
                            u.u[0] = (pipe & 0xf) as u8;
                            u
                        }
                        3 => with_buffer(urb(id, 1, 0, 2, Direction::Out, TransferType::Bulk), &b),
                        _ => {
                            if bend & 32 != 0 {
                                // An entry of the indirect page, scribbled.
                                let at = usize::from(offset % 16) * 2;
                                list.pages[0].write(at, &length.to_le_bytes());
                            }
                            let bulk = urb(id, 1, 0, 1, Direction::In, TransferType::Bulk);
                            with_indirect(bulk, &list, &b)
                        }
                    };
                    if bend & 1 != 0 { req.pipe = pipe; }
                    if bend & 2 != 0 { req.nr_buffer_segs = segs; }
                    if bend & 4 != 0 { req.seg[0].offset = offset; }
                    if bend & 8 != 0 { req.seg[0].length = length; }
                    if bend & 16 != 0 { req.buffer_length = length; }
                    if r.front.urb.free_requests() > 0 {
                        send(&r.w.fe, &mut r.front, &[req]);
                    }
                }
                Step::Prod(p) => {
                    r.front.urb_page.store_u32(0, p);
                    r.w.fe.clone().send(r.front.port).unwrap();
                }
                Step::Hold(h) => r.host.hold = h,
                Step::Plug => {
                    if plugged {
                        r.host.unplug(r.host.devices[0].id);
                    } else {
                        let id = 100 + r.host.ops.len() as u32;
                        r.host.plug(info(id, "1-1", Speed::High, 0, &[8]));
                    }
                    plugged = !plugged;
                }
            }
            settle(&mut r.w.be, &mut r.host);
            // Linux's first check on every interrupt: never more unconsumed answers than
            // the ring holds (a forged req_prod makes the backend answer requests this
            // FrontRing did not make, so the check is Linux's, on the raw index).
            let rsp_prod = r.front.urb_page.load_u32(8);
            prop_assert!(
                rsp_prod.wrapping_sub(rsp_seen) <= size
                    || state_of(&r.w.xen, &backend_dir(r.be, r.fe)).unwrap() != XenbusState::Connected,
                "rsp_prod {rsp_prod} ran past the ring"
            );
            rsp_seen = rsp_prod;
            while let Ok(Some(_)) = r.front.urb.next_response() {}
        }
        // The toolstack takes the controller away: everything is given back.
        toolstack_remove(&r.w.xen, r.be, r.fe);
        settle(&mut r.w.be, &mut r.host);
        prop_assert!(b.released(&r.w.fe), "a data page is still mapped");
        prop_assert!(list.released(&r.w.fe), "an indirect page is still mapped");
        prop_assert!(r.front.grants.iter().all(|g| !r.w.fe.grant_in_use(*g)), "a ring is still mapped");
        prop_assert_eq!(r.w.be.in_flight(), 0);
        prop_assert_eq!(r.w.be.devices().count(), 0);
        prop_assert_eq!(r.w.be.hypervisor().mappings(), 0, "a kept grant is still mapped");
    }
}
