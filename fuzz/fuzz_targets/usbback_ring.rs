//! One backend on `xen::sim` with a simulated stick and keyboard, fed arbitrary ring
//! contents by its frontend: requests of any bytes, req_prod set to anything, keys pressed,
//! the stick unplugged and back. Nothing may panic; the backend never answers more than the
//! ring holds; once the toolstack removes the controller nothing stays mapped or in flight.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usb::Speed;
use testkit::sim_host::{Keyboard, MassStorage, SimHost};
use usbback::Backend;
use xen::abi::usbif::*;
use xen::hypervisor::EventChannels;
use xen::page::{LocalPage, SharedPage};
use xen::pvusb::{self, ControllerNodes, ASSIGN_DIR};
use xen::ring::FrontRing;
use xen::sim::{Domain, SimXsTransport, Xen};
use xen::xenbus::{self, XenbusState};
use xen::xenstore::TxId;
use zerocopy::FromBytes;

fn settle(be: &mut Backend<Domain, SimXsTransport>, host: &mut SimHost<LocalPage>) {
    for _ in 0..3 {
        testkit::main_loop::turn(be, host);
    }
}

fuzz_target!(|data: &[u8]| {
    let xen = Xen::new();
    let be_dom = xen.create_domain();
    let fe = xen.create_domain();
    let (be_id, fe_id) = (be_dom.domid(), fe.domid());
    let mut be = Backend::new(be_dom.clone(), be_dom.xenstore(), be_id).unwrap();
    let mut host: SimHost<LocalPage> = SimHost::new();
    let mut stick = host.plug(Box::new(MassStorage::new(64)), "1-1", Speed::High);
    let kbd = host.plug(Box::new(Keyboard::new()), "1-2", Speed::Full);
    let nodes = ControllerNodes { frontend: fe_id, backend: be_id, devid: 0, usb_ver: 2, ports: 4 };
    xen.dom0().xenstore().transaction(3, |xs, tx| nodes.write(xs, tx)).unwrap();
    settle(&mut be, &mut host);

    let (urb_gfn, urb_page) = fe.alloc_page();
    let (conn_gfn, conn_page) = fe.alloc_page();
    let urb_ref = fe.grant_access(be_id, urb_gfn, false).unwrap();
    let conn_ref = fe.grant_access(be_id, conn_gfn, false).unwrap();
    let port = fe.clone().alloc_unbound(be_id).unwrap();
    // The URB ring is written raw, as a hostile frontend would: entries and req_prod.
    let urb = FrontRing::<_, UsbifUrbRequest, UsbifUrbResponse>::init(urb_page);
    let page = urb.page().clone();
    let mut req_prod = 0u32;
    let mut rsp_seen = 0u32;
    let mut conn = FrontRing::<_, UsbifConnRequest, UsbifConnResponse>::init(conn_page);
    for id in 0..512 {
        conn.push_request(&UsbifConnRequest { id }).unwrap();
    }
    conn.push_requests_and_check_notify();
    let fdir = format!("/local/domain/{fe_id}/device/vusb/0");
    let bdir = format!("/local/domain/{be_id}/backend/vusb/{fe_id}/0");
    let mut xs = fe.xenstore();
    for (k, v) in [(pvusb::URB_RING_REF_KEY, urb_ref.to_string()), (pvusb::CONN_RING_REF_KEY, conn_ref.to_string()), (pvusb::EVENT_CHANNEL_KEY, port.to_string())] {
        xs.write(TxId::NONE, &format!("{fdir}/{k}"), v.as_bytes()).unwrap();
    }
    xenbus::switch_state(&mut xs, &fdir, XenbusState::Connected).unwrap();
    let mut d0 = xen.dom0().xenstore();
    d0.write(TxId::NONE, &format!("{bdir}/{ASSIGN_DIR}/1"), b"1-1").unwrap();
    d0.write(TxId::NONE, &format!("{bdir}/{ASSIGN_DIR}/2"), b"1-2").unwrap();
    settle(&mut be, &mut host);

    // Data pages the requests' grant references may name (grant refs 10.. in the frontend).
    let mut grants = Vec::new();
    for _ in 0..4 {
        let (gfn, _) = fe.alloc_page();
        grants.push(fe.grant_access(be_id, gfn, false).unwrap());
    }

    let mut rest = data;
    let mut plugged = true;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            0 => {
                let Ok((mut req, tail)) = UsbifUrbRequest::read_from_prefix(rest) else { break };
                rest = tail;
                // Most grant refs land on real pages, so mapping succeeds and the request
                // reaches the device models.
                for s in req.seg.iter_mut() {
                    s.gref = grants[(s.gref.0 % 4) as usize];
                }
                // Ring entries start at byte 64 and are 148 bytes each; 16 of them.
                let slot = 64 + (req_prod % 16) as usize * 148;
                page.write(slot, zerocopy::IntoBytes::as_bytes(&req));
                req_prod = req_prod.wrapping_add(1);
                page.store_u32(0, req_prod);
                fe.clone().send(port).unwrap();
            }
            1 => {
                let Some((bytes, tail)) = rest.split_first_chunk::<4>() else { break };
                rest = tail;
                req_prod = u32::from_le_bytes(*bytes);
                page.store_u32(0, req_prod);
                fe.clone().send(port).unwrap();
            }
            2 => {
                if let Some(k) = host.model_mut::<Keyboard>(kbd) {
                    k.press(0, &[0x04]);
                }
            }
            _ => {
                if plugged {
                    host.unplug(stick);
                } else {
                    stick = host.plug(Box::new(MassStorage::new(64)), "1-1", Speed::High);
                }
                plugged = !plugged;
            }
        }
        settle(&mut be, &mut host);
        let connected = xenbus::read_state(&mut d0, TxId::NONE, &bdir) == Ok(XenbusState::Connected);
        // Linux's first check: never more unconsumed answers than the ring holds (this
        // frontend consumes everything at once).
        let rsp_prod = page.load_u32(8);
        if connected {
            assert!(rsp_prod.wrapping_sub(rsp_seen) <= 16, "answers ran past the ring");
        }
        rsp_seen = rsp_prod;
    }
    d0.write(TxId::NONE, &format!("{bdir}/online"), b"0").unwrap();
    xenbus::switch_state(&mut d0, &bdir, XenbusState::Closing).unwrap();
    settle(&mut be, &mut host);
    assert_eq!(be.hypervisor().mappings(), 0, "nothing stays mapped");
    assert_eq!(be.in_flight(), 0);
});
