//! The simulated host's tests: its standard requests, models, latency and hotplug.

use super::*;
use usb::hid::{GET_PROTOCOL, GET_REPORT, HID_DESCRIPTOR, SET_IDLE, SET_PROTOCOL, SET_REPORT};
use usb::mass_storage::{self, *};
use xen::page::LocalPage;

type Host = SimHost<LocalPage>;

/// A vetting that lets everything be activated.
fn allow(_: &ClassSet) -> bool {
    true
}

/// A zeroed buffer of `len` bytes starting `offset` bytes into its first page, so that
/// a long one spans several pages (and segments).
fn buffer(len: usize, offset: usize) -> Vec<PageSegment<LocalPage>> {
    let mut segments = Vec::new();
    let (mut left, mut offset) = (len, offset);
    while left > 0 {
        let n = (PAGE_SIZE - offset).min(left);
        segments.push(PageSegment {
            page: LocalPage::new(),
            phys: 0,
            offset: offset as u16,
            len: n as u16,
        });
        left -= n;
        offset = 0;
    }
    segments
}

fn transfer(
    token: u64,
    endpoint: u8,
    direction: Direction,
    transfer_type: TransferType,
    segments: Vec<PageSegment<LocalPage>>,
) -> Transfer<LocalPage> {
    Transfer {
        token,
        endpoint,
        direction,
        transfer_type,
        setup: None,
        segments: segments.into_iter().collect(),
        iso_packets: Vec::new(),
        start_frame: None,
    }
}

fn setup(request_type: u8, request: u8, value: u16, index: u16, length: u16) -> [u8; 8] {
    let mut s = [request_type, request, 0, 0, 0, 0, 0, 0];
    s[2..4].copy_from_slice(&value.to_le_bytes());
    s[4..6].copy_from_slice(&index.to_le_bytes());
    s[6..8].copy_from_slice(&length.to_le_bytes());
    s
}

fn control(token: u64, raw: [u8; 8], segments: Vec<PageSegment<LocalPage>>) -> Transfer<LocalPage> {
    let direction = if raw[0] & 0x80 != 0 {
        Direction::In
    } else {
        Direction::Out
    };
    let mut t = transfer(token, 0, direction, TransferType::Control, segments);
    t.setup = Some(raw);
    t
}

/// Polls until `token` completes (at most 10 polls); other events are dropped.
fn wait(host: &mut Host, token: u64) -> Completion {
    let mut events = Vec::new();
    for _ in 0..10 {
        host.poll(&mut events);
        for e in events.drain(..) {
            if let HostEvent::Completed(c) = e {
                if c.token == token {
                    return c;
                }
            }
        }
    }
    panic!("transfer {token} never completed");
}

fn run(host: &mut Host, id: u32, t: Transfer<LocalPage>) -> Result<usize, TransferError> {
    let token = t.token;
    host.submit(id, t)?;
    wait(host, token).result
}

fn control_in(host: &mut Host, id: u32, raw: [u8; 8]) -> Result<Vec<u8>, TransferError> {
    let segments = buffer(usize::from(u16::from_le_bytes([raw[6], raw[7]])), 4000);
    let n = run(host, id, control(1, raw, segments.clone()))?;
    Ok(gather(&segments, n))
}

fn control_out(
    host: &mut Host,
    id: u32,
    raw: [u8; 8],
    data: &[u8],
) -> Result<usize, TransferError> {
    let segments = buffer(data.len(), 100);
    scatter(&segments, data);
    run(host, id, control(2, raw, segments))
}

fn bulk_out(host: &mut Host, id: u32, data: &[u8], offset: usize) -> Result<usize, TransferError> {
    let segments = buffer(data.len(), offset);
    scatter(&segments, data);
    run(
        host,
        id,
        transfer(3, 2, Direction::Out, TransferType::Bulk, segments),
    )
}

fn bulk_in(host: &mut Host, id: u32, len: usize, offset: usize) -> Result<Vec<u8>, TransferError> {
    let segments = buffer(len, offset);
    let n = run(
        host,
        id,
        transfer(4, 1, Direction::In, TransferType::Bulk, segments.clone()),
    )?;
    Ok(gather(&segments, n))
}

/// A CBW on LUN 0, IN when `is_in`.
fn cbw(tag: u32, length: u32, is_in: bool, cb: &[u8]) -> [u8; CBW_SIZE] {
    let direction = if is_in { Direction::In } else { Direction::Out };
    mass_storage::cbw(tag, length, direction, 0, cb)
}

/// Reads the CSW of command `tag`: (residue, status).
fn csw_of(host: &mut Host, id: u32, tag: u32) -> (u32, u8) {
    let c = bulk_in(host, id, CSW_SIZE, 0).unwrap();
    assert_eq!(c.len(), CSW_SIZE);
    let word = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
    assert_eq!(word(0), CSW_SIGNATURE);
    assert_eq!(word(4), tag);
    (word(8), c[12])
}

/// A command without data stage: its CSW status.
fn no_data(host: &mut Host, id: u32, tag: u32, cb: &[u8]) -> u8 {
    assert_eq!(bulk_out(host, id, &cbw(tag, 0, false, cb), 0), Ok(CBW_SIZE));
    let (residue, status) = csw_of(host, id, tag);
    assert_eq!(residue, 0);
    status
}

fn drain(host: &mut Host) -> Vec<HostEvent> {
    let mut events = Vec::new();
    host.poll(&mut events);
    events
}

/// SET_CONFIGURATION `value` through the host, and its answer waited for.
fn configure(host: &mut Host, id: u32, value: u8) {
    host.set_configuration(id, value, 900, &mut allow).unwrap();
    assert_eq!(wait(host, 900).result, Ok(0));
}

/// A configured 1 MiB disk.
fn storage() -> (Host, u32) {
    let mut host = Host::new();
    let id = host.plug(Box::new(MassStorage::new(2048)), "1-1", Speed::High);
    drain(&mut host);
    configure(&mut host, id, 1);
    (host, id)
}

fn keyboard() -> (Host, u32) {
    let mut host = Host::new();
    let id = host.plug(Box::new(Keyboard::new()), "1-2", Speed::Full);
    drain(&mut host);
    configure(&mut host, id, 1);
    (host, id)
}

fn interrupt_in(token: u64) -> Transfer<LocalPage> {
    transfer(
        token,
        1,
        Direction::In,
        TransferType::Interrupt,
        buffer(8, 4092),
    )
}

#[test]
fn enumeration_reads_descriptors_and_configures() {
    let mut host = Host::new();
    let id = host.plug(Box::new(MassStorage::new(2048)), "1-1", Speed::High);
    let events = drain(&mut host);
    let [HostEvent::Attached(info)] = events.as_slice() else {
        panic!("expected one Attached, got {events:?}");
    };
    assert_eq!(info.id, id);
    assert_eq!(info.busid, "1-1");
    assert_eq!(
        info.interface_classes,
        InterfaceClasses::Checked(ClassSet::of(8))
    );
    assert!(!info.is_hub);
    assert_eq!(host.devices(), core::slice::from_ref(info));

    // Asked for 64 bytes, the device descriptor is 18: a short IN.
    let device = control_in(&mut host, id, setup(0x80, GET_DESCRIPTOR, 0x0100, 0, 64)).unwrap();
    assert_eq!(device.len(), 18);
    assert_eq!(device[1], DEVICE);
    assert_eq!(u16::from_le_bytes([device[8], device[9]]), info.vendor_id);
    assert_eq!(
        u16::from_le_bytes([device[10], device[11]]),
        info.product_id
    );

    let head = control_in(&mut host, id, setup(0x80, GET_DESCRIPTOR, 0x0200, 0, 9)).unwrap();
    assert_eq!(head.len(), 9);
    let total = u16::from_le_bytes([head[2], head[3]]);
    let config = control_in(&mut host, id, setup(0x80, GET_DESCRIPTOR, 0x0200, 0, total)).unwrap();
    assert_eq!(config.len(), usize::from(total));
    assert_eq!(config[..9], head[..]);
    let endpoints = active_endpoints(&config, &BTreeMap::new());
    let addresses: Vec<(u8, TransferType)> = endpoints
        .iter()
        .map(|e| (e.address, e.transfer_type))
        .collect();
    assert_eq!(
        addresses,
        [(0x81, TransferType::Bulk), (0x02, TransferType::Bulk)]
    );
    let interface = descriptors(&config).find(|d| d[1] == INTERFACE).unwrap();
    assert_eq!(interface[5..8], [8, 6, 0x50]);

    let languages = control_in(&mut host, id, setup(0x80, GET_DESCRIPTOR, 0x0300, 0, 255)).unwrap();
    assert_eq!(languages, [4, STRING, 0x09, 0x04]);
    let raw = control_in(
        &mut host,
        id,
        setup(
            0x80,
            GET_DESCRIPTOR,
            0x0300 | u16::from(device[15]),
            LANGID_EN_US,
            255,
        ),
    )
    .unwrap();
    assert_eq!(usize::from(raw[0]), raw.len());
    let units: Vec<u16> = raw[2..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(Some(String::from_utf16(&units).unwrap()), info.product);
    assert_eq!(
        control_in(
            &mut host,
            id,
            setup(0x80, GET_DESCRIPTOR, 0x03ee, LANGID_EN_US, 255)
        ),
        Err(TransferError::Stall)
    );

    // Unconfigured, the bulk endpoints do not exist yet.
    let early = transfer(9, 2, Direction::Out, TransferType::Bulk, buffer(31, 0));
    assert_eq!(host.submit(id, early), Err(TransferError::Invalid));
    assert_eq!(
        control_out(&mut host, id, setup(0x00, SET_CONFIGURATION, 7, 0, 0), &[]),
        Err(TransferError::Stall)
    );
    assert_eq!(
        control_out(&mut host, id, setup(0x00, SET_CONFIGURATION, 1, 0, 0), &[]),
        Ok(0)
    );
    assert_eq!(host.configuration(id), Some(1));
    assert_eq!(
        control_in(&mut host, id, setup(0x80, GET_CONFIGURATION, 0, 0, 1)),
        Ok(vec![1])
    );
    assert_eq!(
        control_in(&mut host, id, setup(0x81, GET_INTERFACE, 0, 0, 1)),
        Ok(vec![0])
    );
    assert_eq!(
        no_data(&mut host, id, 1, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]),
        CSW_PASSED
    );
    let c = host.counts(id);
    assert_eq!(c.submitted, c.completed);
}

#[test]
fn write_then_read_back_through_bulk_only() {
    let (mut host, id) = storage();
    let pattern: Vec<u8> = (0..3 * BLOCK_SIZE)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let len = pattern.len() as u32;
    // The data stage starts 3000 bytes into a page, so it spans two pages.
    assert_eq!(
        bulk_out(
            &mut host,
            id,
            &cbw(0x11, len, false, &read_write_10(WRITE_10, 5, 3)),
            0
        ),
        Ok(CBW_SIZE)
    );
    assert_eq!(bulk_out(&mut host, id, &pattern, 3000), Ok(pattern.len()));
    assert_eq!(csw_of(&mut host, id, 0x11), (0, CSW_PASSED));
    let disk = host.model::<MassStorage>(id).unwrap().disk();
    assert_eq!(disk[5 * BLOCK_SIZE..8 * BLOCK_SIZE], pattern[..]);
    assert!(disk[..5 * BLOCK_SIZE]
        .iter()
        .chain(&disk[8 * BLOCK_SIZE..])
        .all(|b| *b == 0));

    assert_eq!(
        bulk_out(
            &mut host,
            id,
            &cbw(0x12, len, true, &read_write_10(READ_10, 5, 3)),
            0
        ),
        Ok(CBW_SIZE)
    );
    assert_eq!(
        bulk_in(&mut host, id, pattern.len(), 2500),
        Ok(pattern.clone())
    );
    assert_eq!(csw_of(&mut host, id, 0x12), (0, CSW_PASSED));

    // READ CAPACITY tells the last block of the disk the model has.
    let blocks = host.model::<MassStorage>(id).unwrap().disk().len() / BLOCK_SIZE;
    let cb = [READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    bulk_out(&mut host, id, &cbw(0x13, 8, true, &cb), 0).unwrap();
    let cap = bulk_in(&mut host, id, 8, 0).unwrap();
    assert_eq!(
        u32::from_be_bytes([cap[0], cap[1], cap[2], cap[3]]) as usize,
        blocks - 1
    );
    assert_eq!(
        u32::from_be_bytes([cap[4], cap[5], cap[6], cap[7]]) as usize,
        BLOCK_SIZE
    );
    assert_eq!(csw_of(&mut host, id, 0x13), (0, CSW_PASSED));

    // Past the end: the command fails, nothing is sent, and REQUEST SENSE says why.
    let past = read_write_10(READ_10, blocks as u32 - 1, 2);
    bulk_out(&mut host, id, &cbw(0x14, 1024, true, &past), 0).unwrap();
    assert_eq!(bulk_in(&mut host, id, 1024, 0), Ok(Vec::new()));
    assert_eq!(csw_of(&mut host, id, 0x14), (1024, CSW_FAILED));
    bulk_out(
        &mut host,
        id,
        &cbw(0x15, 18, true, &[REQUEST_SENSE, 0, 0, 0, 18, 0]),
        0,
    )
    .unwrap();
    let sense = bulk_in(&mut host, id, 18, 0).unwrap();
    assert_eq!(
        (sense[2] & 0xf, sense[12]),
        (ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)
    );
    assert_eq!(csw_of(&mut host, id, 0x15), (0, CSW_PASSED));
    assert_eq!(
        no_data(&mut host, id, 0x16, &[0xc5, 0, 0, 0, 0, 0]),
        CSW_FAILED
    );
    assert_eq!(
        no_data(&mut host, id, 0x17, &[MODE_SENSE_6, 0, 0x3f, 0, 0, 0]),
        CSW_PASSED
    );
}

#[test]
fn short_in_returns_the_actual_length() {
    let (mut host, id) = storage();
    // INQUIRY allows 96 bytes; the device has 36.
    bulk_out(
        &mut host,
        id,
        &cbw(7, 96, true, &[INQUIRY, 0, 0, 0, 96, 0]),
        0,
    )
    .unwrap();
    let inquiry = bulk_in(&mut host, id, 96, 0).unwrap();
    assert_eq!(usize::from(inquiry[4]) + 5, inquiry.len());
    assert_eq!((inquiry.len(), &inquiry[8..14]), (36, &b"usbdom"[..]));
    assert_eq!(csw_of(&mut host, id, 7), (96 - 36, CSW_PASSED));

    // A short control IN completes with what came (a guest's URB_SHORT_NOT_OK is its own
    // USB core's to apply).
    let t = control(5, setup(0x80, GET_DESCRIPTOR, 0x0100, 0, 64), buffer(64, 0));
    assert_eq!(run(&mut host, id, t), Ok(18));
    // A buffer smaller than what the device sends is babble.
    let max_lun = setup(0xa1, GET_MAX_LUN, 0, 0, 1);
    assert_eq!(control_in(&mut host, id, max_lun), Ok(vec![0]));
    bulk_out(
        &mut host,
        id,
        &cbw(8, 0, false, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]),
        0,
    )
    .unwrap();
    assert_eq!(bulk_in(&mut host, id, 8, 0), Err(TransferError::Babble));
}

#[test]
fn injected_key_completes_the_pending_interrupt_in() {
    let (mut host, id) = keyboard();
    assert_eq!(
        control_out(&mut host, id, setup(0x21, SET_PROTOCOL, 0, 0, 0), &[]),
        Ok(0)
    );
    assert_eq!(
        control_in(&mut host, id, setup(0xa1, GET_PROTOCOL, 0, 0, 1)),
        Ok(vec![0])
    );
    assert_eq!(host.model::<Keyboard>(id).unwrap().protocol(), 0);
    assert_eq!(
        control_out(&mut host, id, setup(0x21, SET_IDLE, 0x0000, 0, 0), &[]),
        Ok(0)
    );
    assert_eq!(
        control_out(
            &mut host,
            id,
            setup(0x21, SET_REPORT, 0x0200, 0, 1),
            &[0x02]
        ),
        Ok(1)
    );
    assert_eq!(host.model::<Keyboard>(id).unwrap().leds(), 0x02);

    // The report descriptor is as long as the HID descriptor says.
    let config = control_in(&mut host, id, setup(0x80, GET_DESCRIPTOR, 0x0200, 0, 255)).unwrap();
    let hid = descriptors(&config)
        .find(|d| d[1] == HID_DESCRIPTOR)
        .unwrap();
    let report = control_in(&mut host, id, setup(0x81, GET_DESCRIPTOR, 0x2200, 0, 255)).unwrap();
    assert_eq!(
        report.len(),
        usize::from(u16::from_le_bytes([hid[7], hid[8]]))
    );

    let segments = buffer(8, 4092);
    let t = transfer(
        40,
        1,
        Direction::In,
        TransferType::Interrupt,
        segments.clone(),
    );
    host.submit(id, t).unwrap();
    for _ in 0..3 {
        assert!(drain(&mut host).is_empty());
    }
    assert_eq!(host.in_flight(), 1);
    host.model_mut::<Keyboard>(id)
        .unwrap()
        .press(0x02, &[0x04, 0x05]);
    let c = wait(&mut host, 40);
    assert_eq!(c.result, Ok(8));
    assert_eq!(gather(&segments, 8), [0x02, 0, 0x04, 0x05, 0, 0, 0, 0]);
    assert_eq!(host.in_flight(), 0);
    let current = control_in(&mut host, id, setup(0xa1, GET_REPORT, 0x0100, 0, 8)).unwrap();
    assert_eq!(current, gather(&segments, 8));
    assert_eq!(host.model::<Keyboard>(id).unwrap().pending_reports(), 0);
}

#[test]
fn cancel_completes_once_and_the_rest_of_the_endpoint_goes_on() {
    let (mut host, id) = keyboard();
    for token in 1..=3 {
        host.submit(id, interrupt_in(token)).unwrap();
    }
    assert!(drain(&mut host).is_empty());
    assert!(host.cancel(id, 2));
    assert!(!host.cancel(id, 2));
    assert!(!host.cancel(id, 99));
    assert!(!host.cancel(id + 1, 1));
    let kbd = host.model_mut::<Keyboard>(id).unwrap();
    kbd.press(0, &[0x04]);
    kbd.release();
    let mut events = Vec::new();
    for _ in 0..3 {
        host.poll(&mut events);
    }
    let done: Vec<(u64, Result<usize, TransferError>)> = events
        .iter()
        .map(|e| match e {
            HostEvent::Completed(c) => (c.token, c.result),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        done,
        [(2, Err(TransferError::Cancelled)), (1, Ok(8)), (3, Ok(8))]
    );
    assert!(!host.cancel(id, 1));
    assert_eq!(
        host.counts(id),
        TransferCounts {
            submitted: 3,
            completed: 3
        }
    );
}

#[test]
fn unplug_completes_in_flight_transfers_then_detaches() {
    let (mut host, disk) = storage();
    let kbd = host.plug(Box::new(Keyboard::new()), "1-2", Speed::Low);
    host.set_configuration(kbd, 1, 900, &mut allow).unwrap();
    host.set_latency(disk, 5);
    let command = cbw(1, 0, false, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]);
    let segments = buffer(CBW_SIZE, 0);
    scatter(&segments, &command);
    host.submit(
        disk,
        transfer(7, 2, Direction::Out, TransferType::Bulk, segments),
    )
    .unwrap();
    host.submit(kbd, interrupt_in(8)).unwrap();
    let attached = drain(&mut host);
    assert!(matches!(
        attached.as_slice(),
        [HostEvent::Attached(i), HostEvent::Completed(c)] if i.id == kbd && c.token == 900
    ));
    assert_eq!(host.in_flight(), 2);

    assert!(host.unplug(disk));
    assert!(!host.unplug(disk));
    let events = drain(&mut host);
    let expected = [
        HostEvent::Completed(Completion {
            token: 7,
            result: Err(TransferError::NoDevice),
            start_frame: 0,
            iso: Vec::new(),
        }),
        HostEvent::Detached {
            id: disk,
            busid: String::from("1-1"),
        },
    ];
    assert_eq!(events, expected);
    assert_eq!(
        host.in_flight(),
        1,
        "the keyboard's transfer is still waiting"
    );
    assert_eq!(
        host.counts(disk),
        TransferCounts {
            submitted: 1,
            completed: 1
        }
    );
    let again = transfer(9, 2, Direction::Out, TransferType::Bulk, buffer(31, 0));
    assert_eq!(host.submit(disk, again), Err(TransferError::NoDevice));
    assert!(host.model::<MassStorage>(disk).is_none());
    let replug = host.plug(Box::new(MassStorage::new(16)), "1-1", Speed::High);
    assert!(replug != disk && replug != kbd);
    assert_eq!(host.devices().len(), 2);
}

#[test]
fn stall_then_clear_halt_then_success() {
    let (mut host, id) = storage();
    let status = setup(0x82, GET_STATUS, 0, 0x81, 2);
    assert!(host.stall_next(id, 0x81));
    assert_eq!(bulk_in(&mut host, id, 13, 0), Err(TransferError::Stall));
    assert_eq!(
        bulk_in(&mut host, id, 13, 0),
        Err(TransferError::Stall),
        "stays halted"
    );
    assert_eq!(control_in(&mut host, id, status), Ok(vec![1, 0]));
    host.clear_halt(id, 0x81, 900).unwrap();
    assert_eq!(control_in(&mut host, id, status), Ok(vec![0, 0]));
    assert_eq!(
        no_data(&mut host, id, 3, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]),
        CSW_PASSED
    );

    // A CBW that is not valid stalls bulk OUT; recovery is CLEAR_FEATURE(ENDPOINT_HALT)
    // sent as a control transfer, then a Bulk-Only reset.
    let mut bad = cbw(4, 0, false, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]);
    bad[0] ^= 0xff;
    assert_eq!(bulk_out(&mut host, id, &bad, 0), Err(TransferError::Stall));
    assert_eq!(
        bulk_out(&mut host, id, &bad[..30], 0),
        Err(TransferError::Stall)
    );
    let clear = setup(0x02, CLEAR_FEATURE, ENDPOINT_HALT, 0x02, 0);
    assert_eq!(control_out(&mut host, id, clear, &[]), Ok(0));
    assert_eq!(
        control_out(&mut host, id, setup(0x21, BULK_ONLY_RESET, 0, 0, 0), &[]),
        Ok(0)
    );
    assert_eq!(
        no_data(&mut host, id, 5, &[TEST_UNIT_READY, 0, 0, 0, 0, 0]),
        CSW_PASSED
    );

    // The default pipe's STALL is a protocol stall: the next request works.
    host.stall_next(id, 0);
    let get = setup(0x80, GET_CONFIGURATION, 0, 0, 1);
    assert_eq!(control_in(&mut host, id, get), Err(TransferError::Stall));
    assert_eq!(control_in(&mut host, id, get), Ok(vec![1]));
    assert_eq!(host.clear_halt(id, 0x83, 900), Err(TransferError::Invalid));
    assert!(!host.stall_next(99, 0x81));
}

#[test]
fn bad_submissions_are_refused_and_never_complete() {
    let (mut host, id) = storage();
    let t =
        |token, endpoint, direction, kind| transfer(token, endpoint, direction, kind, buffer(8, 0));
    assert_eq!(
        host.submit(99, t(1, 1, Direction::In, TransferType::Bulk)),
        Err(TransferError::NoDevice)
    );
    assert_eq!(
        host.submit(id, t(2, 3, Direction::In, TransferType::Bulk)),
        Err(TransferError::Invalid)
    );
    assert_eq!(
        host.submit(id, t(3, 1, Direction::In, TransferType::Interrupt)),
        Err(TransferError::Invalid)
    );
    assert_eq!(
        host.submit(id, t(4, 1, Direction::Out, TransferType::Bulk)),
        Err(TransferError::Invalid)
    );
    assert_eq!(
        host.submit(id, t(5, 0, Direction::In, TransferType::Control)),
        Err(TransferError::Invalid)
    );
    assert_eq!(
        host.submit(id, t(6, 16, Direction::In, TransferType::Bulk)),
        Err(TransferError::Invalid)
    );
    assert_eq!(
        host.submit(id, t(7, 1, Direction::In, TransferType::Isochronous)),
        Err(TransferError::Invalid)
    );
    let mut wrong_way = control(8, setup(0x80, GET_STATUS, 0, 0, 2), buffer(2, 0));
    wrong_way.direction = Direction::Out;
    assert_eq!(host.submit(id, wrong_way), Err(TransferError::Invalid));
    let mut past_page = t(9, 1, Direction::In, TransferType::Bulk);
    past_page.segments[0].offset = 4090;
    assert_eq!(host.submit(id, past_page), Err(TransferError::Invalid));
    assert_eq!(host.counts(id).submitted, 0);
    assert!(drain(&mut host).is_empty());
    // An unknown request reaches the model, which stalls it.
    assert_eq!(
        control_in(&mut host, id, setup(0xc0, 0x42, 0, 0, 4)),
        Err(TransferError::Stall)
    );
    assert_eq!(
        host.set_configuration(99, 1, 900, &mut allow),
        Err(TransferError::NoDevice)
    );
    assert_eq!(
        host.set_interface(id, 0, 1, 900, &mut allow),
        Err(TransferError::Stall)
    );
    assert_eq!(host.set_interface(id, 0, 0, 900, &mut allow), Ok(()));
    // SET_INTERFACE as a control transfer goes through the same checks.
    let alternate = |alt| setup(0x01, SET_INTERFACE, alt, 0, 0);
    assert_eq!(control_out(&mut host, id, alternate(0), &[]), Ok(0));
    assert_eq!(
        control_out(&mut host, id, alternate(1), &[]),
        Err(TransferError::Stall)
    );
}

#[test]
fn a_data_stage_the_wrong_way_is_a_phase_error() {
    let (mut host, id) = storage();
    // WRITE(10) of one block, but the CBW announces an IN data stage: nothing is
    // written, the device sends nothing, and the CSW reports a phase error.
    let cb = read_write_10(WRITE_10, 0, 1);
    bulk_out(&mut host, id, &cbw(9, BLOCK_SIZE as u32, true, &cb), 0).unwrap();
    assert_eq!(bulk_in(&mut host, id, BLOCK_SIZE, 0), Ok(Vec::new()));
    assert_eq!(
        csw_of(&mut host, id, 9),
        (BLOCK_SIZE as u32, CSW_PHASE_ERROR)
    );
    // More OUT data than the CBW announced is refused with STALL.
    let cb = read_write_10(WRITE_10, 0, 1);
    bulk_out(&mut host, id, &cbw(10, BLOCK_SIZE as u32, false, &cb), 0).unwrap();
    let too_much = vec![0xaa; 2 * BLOCK_SIZE];
    assert_eq!(
        bulk_out(&mut host, id, &too_much, 0),
        Err(TransferError::Stall)
    );
    assert!(host
        .model::<MassStorage>(id)
        .unwrap()
        .disk()
        .iter()
        .all(|b| *b == 0));
}

#[test]
fn hub_is_reported_as_a_hub() {
    let mut host = Host::new();
    let id = host.plug(Box::new(Hub::new(4)), "1-3", Speed::Full);
    let info = &host.devices()[0];
    assert!(info.is_hub);
    assert_eq!(
        (info.class, info.interface_classes),
        (
            HUB_CLASSCODE,
            InterfaceClasses::Checked(ClassSet::of(HUB_CLASSCODE))
        )
    );
    let d = control_in(&mut host, id, setup(0xa0, GET_DESCRIPTOR, 0x2900, 0, 71)).unwrap();
    assert_eq!((d[1], d[2]), (usb::hub::DESCRIPTOR_TYPE, 4));
}

#[test]
fn reset_and_reconfiguration_end_transfers_in_flight() {
    let (mut host, id) = keyboard();
    host.submit(id, interrupt_in(1)).unwrap();
    host.reset(id).unwrap();
    assert_eq!(wait(&mut host, 1).result, Err(TransferError::NoDevice));
    assert_eq!(host.configuration(id), Some(0));
    assert_eq!(
        host.submit(id, interrupt_in(2)),
        Err(TransferError::Invalid)
    );

    host.set_configuration(id, 1, 900, &mut allow).unwrap();
    host.submit(id, interrupt_in(3)).unwrap();
    host.set_configuration(id, 0, 900, &mut allow).unwrap();
    assert_eq!(wait(&mut host, 3).result, Err(TransferError::Shutdown));
    assert_eq!(
        host.counts(id),
        TransferCounts {
            submitted: 2,
            completed: 2
        }
    );
}

#[test]
fn latency_delays_completion_by_that_many_polls() {
    let (mut host, id) = storage();
    host.set_latency(id, 2);
    let get = control(1, setup(0x80, GET_CONFIGURATION, 0, 0, 1), buffer(1, 0));
    host.submit(id, get).unwrap();
    assert!(drain(&mut host).is_empty());
    assert!(drain(&mut host).is_empty());
    assert_eq!(drain(&mut host).len(), 1);
}
