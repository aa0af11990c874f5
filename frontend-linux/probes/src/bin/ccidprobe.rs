//! `ccidprobe`: the device table's check of a USB smartcard reader (`cargo xtask devices`,
//! QEMU's `usb-ccid`). Linux has no kernel driver for CCID readers (pcscd drives them from
//! user space, through usbfs), so this does what pcscd's first step does: it claims the
//! reader's CCID interface through usbfs, sends PC_to_RDR_GetSlotStatus on its bulk OUT
//! endpoint and reads RDR_to_PC_SlotStatus from its bulk IN one (CCID 1.1, 6.1.2 and 6.2.2).
//! It prints one line:
//!
//! ```text
//! ccidprobe /dev/bus/usb/001/004
//! guest: ccidprobe interface=0 bulk_out=0x01 bulk_in=0x82 reply=81 slot=0 seq=1 icc_status=2 error=0
//! ```
//!
//! `icc_status` is the slot's card: 0 present and active, 1 present, 2 none. The exit status
//! is 0 when the reader answered as CCID says, 1 if not.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

/// The CCID (smart card) interface class.
const CLASS_CCID: u8 = 0x0b;
/// PC_to_RDR_GetSlotStatus and its answer's message type.
const GET_SLOT_STATUS: u8 = 0x65;
const SLOT_STATUS: u8 = 0x81;
/// The sequence number this probe sends.
const SEQ: u8 = 1;

/// `struct usbdevfs_bulktransfer` (linux/usbdevice_fs.h).
#[repr(C)]
struct BulkTransfer {
    ep: u32,
    len: u32,
    timeout_ms: u32,
    data: *mut libc::c_void,
}

/// `_IOR('U', 15, unsigned int)`, `_IOWR('U', 2, struct usbdevfs_bulktransfer)`.
const USBDEVFS_CLAIMINTERFACE: libc::c_ulong = 0x8004_550f;
const USBDEVFS_BULK: libc::c_ulong =
    0xc000_5502 | ((size_of::<BulkTransfer>() as libc::c_ulong) << 16);

/// The reader's CCID interface and its bulk endpoints, from a device's descriptors as usbfs
/// gives them (the device descriptor, then the active configuration's).
#[derive(Debug, PartialEq)]
struct Reader {
    interface: u8,
    bulk_out: u8,
    bulk_in: u8,
}

fn find_reader(descriptors: &[u8]) -> Option<Reader> {
    let (mut interface, mut bulk_out, mut bulk_in) = (None, None, None);
    let mut rest = descriptors;
    while let [len, kind, ..] = *rest {
        let len = usize::from(len);
        if len < 2 || len > rest.len() {
            break;
        }
        let d = &rest[..len];
        match (kind, d) {
            // INTERFACE: bInterfaceNumber at 2, bInterfaceClass at 5.
            (4, [_, _, number, _, _, class, ..]) => {
                if interface.is_some() && bulk_out.is_some() && bulk_in.is_some() {
                    break;
                }
                interface = (*class == CLASS_CCID).then_some(*number);
                (bulk_out, bulk_in) = (None, None);
            }
            // ENDPOINT: bEndpointAddress at 2, bmAttributes at 3 (2: bulk).
            (5, [_, _, address, attributes, ..]) if interface.is_some() && attributes & 3 == 2 => {
                if address & 0x80 != 0 {
                    bulk_in = Some(*address);
                } else {
                    bulk_out = Some(*address);
                }
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Some(Reader {
        interface: interface?,
        bulk_out: bulk_out?,
        bulk_in: bulk_in?,
    })
}

/// One bulk transfer through usbfs; the bytes moved.
fn bulk(fd: i32, endpoint: u8, data: &mut [u8]) -> std::io::Result<usize> {
    let mut t = BulkTransfer {
        ep: endpoint.into(),
        len: data.len() as u32,
        timeout_ms: 5000,
        data: data.as_mut_ptr().cast(),
    };
    // SAFETY: `t` points at `data`, valid for `len` bytes for the call's length; usbfs reads
    // (OUT) or writes (IN) at most that many.
    let n = unsafe { libc::ioctl(fd, USBDEVFS_BULK, &mut t) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn probe(path: &str) -> Result<String, String> {
    let mut device = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open error=\"{e}\""))?;
    let mut descriptors = Vec::new();
    device
        .read_to_end(&mut descriptors)
        .map_err(|e| format!("descriptors error=\"{e}\""))?;
    let r = find_reader(&descriptors).ok_or("no_ccid_interface")?;
    let fd = device.as_raw_fd();
    let mut number = u32::from(r.interface);
    // SAFETY: the argument is the interface number, read by the kernel.
    if unsafe { libc::ioctl(fd, USBDEVFS_CLAIMINTERFACE, &mut number) } < 0 {
        return Err(format!(
            "claim error=\"{}\"",
            std::io::Error::last_os_error()
        ));
    }
    // bMessageType, dwLength (0), bSlot (0), bSeq, three reserved bytes.
    let mut request = [GET_SLOT_STATUS, 0, 0, 0, 0, 0, SEQ, 0, 0, 0];
    bulk(fd, r.bulk_out, &mut request).map_err(|e| format!("bulk_out error=\"{e}\""))?;
    let mut reply = [0u8; 64];
    let n = bulk(fd, r.bulk_in, &mut reply).map_err(|e| format!("bulk_in error=\"{e}\""))?;
    let reply = &reply[..n];
    let line = format!(
        "interface={} bulk_out={:#04x} bulk_in={:#04x} reply={:02x} slot={} seq={} icc_status={} error={}",
        r.interface,
        r.bulk_out,
        r.bulk_in,
        reply.first().copied().unwrap_or(0),
        reply.get(5).copied().unwrap_or(0xff),
        reply.get(6).copied().unwrap_or(0),
        reply.get(7).map_or(0xff, |s| s & 3),
        reply.get(8).copied().unwrap_or(0xff),
    );
    if n < 10 || reply[0] != SLOT_STATUS || reply[6] != SEQ {
        return Err(format!("unexpected_reply bytes={n} {line}"));
    }
    Ok(line)
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: ccidprobe /dev/bus/usb/BBB/DDD");
        return ExitCode::from(2);
    };
    match probe(&path) {
        Ok(line) => {
            println!("guest: ccidprobe {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("guest: ccidprobe failed={e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ccid_interface_and_its_bulk_endpoints_are_found() {
        let device = [
            18, 1, 0x10, 1, 0, 0, 0, 64, 0xe6, 8, 0x33, 0x44, 0, 1, 1, 2, 3, 1,
        ];
        let config = [9, 2, 93, 0, 1, 1, 0, 0xa0, 50];
        // A vendor interface with a bulk pair first: not the reader.
        let other = [9, 4, 1, 0, 2, 0xff, 0, 0, 0];
        let other_in = [7, 5, 0x83, 2, 64, 0, 0];
        let other_out = [7, 5, 0x04, 2, 64, 0, 0];
        let ccid = [9, 4, 0, 0, 3, CLASS_CCID, 0, 0, 0];
        let class = [54u8, 0x21, 0x10, 1];
        let mut class = class.to_vec();
        class.resize(54, 0);
        let bulk_out = [7, 5, 0x01, 2, 64, 0, 0];
        let bulk_in = [7, 5, 0x82, 2, 64, 0, 0];
        let interrupt = [7, 5, 0x83, 3, 2, 0, 1];
        let all: Vec<u8> = [
            &device[..],
            &config,
            &other,
            &other_in,
            &other_out,
            &ccid,
            &class,
            &bulk_out,
            &bulk_in,
            &interrupt,
        ]
        .concat();
        assert_eq!(
            find_reader(&all),
            Some(Reader {
                interface: 0,
                bulk_out: 0x01,
                bulk_in: 0x82
            })
        );
        // A truncated descriptor ends the walk; no reader without both endpoints.
        assert_eq!(find_reader(&all[..all.len() - 20]), None);
        assert_eq!(find_reader(&[9, 4, 0]), None);
    }

    #[test]
    fn the_bulk_ioctl_number_is_linuxs() {
        // _IOWR('U', 2, struct usbdevfs_bulktransfer) with its 24 bytes on x86-64.
        assert_eq!(USBDEVFS_BULK, 0xc018_5502);
    }
}
