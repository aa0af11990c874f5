//! Bulk and interrupt transfers as Transfer Descriptors of Normal TRBs (xHCI 4.11.2.1,
//! 6.4.1.1), and the Endpoint Context that describes such an endpoint (6.2.3).

use alloc::vec::Vec;

use crate::descriptor::{Endpoint, TransferType};
use crate::port::Speed;

/// A data buffer cannot cross a 64 KiB boundary within one TRB (6.4.1.1).
pub const TRB_BOUNDARY: u64 = 1 << 16;
/// TRB Type Normal.
const TRB_NORMAL: u32 = 1;
/// Interrupt-on Short Packet.
const ISP: u32 = 1 << 2;
/// Chain bit: the next TRB belongs to the same TD.
pub const CHAIN: u32 = 1 << 4;
/// Interrupt On Completion.
const IOC: u32 = 1 << 5;
/// TD Size saturates at 31 (4.11.2.4).
const TD_SIZE_MAX: u32 = 31;

/// Direction of a transfer, as USB names it from the host's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device to host.
    In,
    /// Host to device.
    Out,
}

/// One physically contiguous piece of a transfer's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Bus address.
    pub phys: u64,
    /// Bytes.
    pub len: usize,
}

/// Why a TD was not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdError {
    /// No bytes at all (a zero-length TD is not needed by any user yet).
    Empty,
    /// The endpoint's max packet size is 0.
    NoMaxPacketSize,
}

/// The TRBs of one TD (their Cycle bits are left to the ring) and each TRB's length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Td {
    /// Normal TRBs, all but the last with Chain set, the last with IOC; every one with ISP
    /// so a short packet ends the TD with an event at once.
    pub trbs: Vec<[u32; 4]>,
    /// TRB Transfer Length of each TRB.
    pub lengths: Vec<u32>,
}

/// Builds the TD of Normal TRBs for `segments`: each split where it would cross a 64 KiB
/// boundary, TD Size per the xHCI 1.0+ rule (packets left after this TRB, 0 on the last).
pub fn normal_td(segments: &[Segment], max_packet_size: u16) -> Result<Td, TdError> {
    if max_packet_size == 0 {
        return Err(TdError::NoMaxPacketSize);
    }
    let mut pieces: Vec<(u64, u32)> = Vec::new();
    for s in segments {
        let mut phys = s.phys;
        let end = s.phys + s.len as u64;
        while phys < end {
            let boundary = (phys / TRB_BOUNDARY + 1) * TRB_BOUNDARY;
            let next = boundary.min(end);
            pieces.push((phys, (next - phys) as u32));
            phys = next;
        }
    }
    if pieces.is_empty() {
        return Err(TdError::Empty);
    }
    let total: u64 = pieces.iter().map(|p| u64::from(p.1)).sum();
    let mps = u64::from(max_packet_size);
    let packets = total.div_ceil(mps);
    let mut done = 0u64;
    let last = pieces.len() - 1;
    let mut td = Td {
        trbs: Vec::with_capacity(pieces.len()),
        lengths: Vec::with_capacity(pieces.len()),
    };
    for (i, &(phys, len)) in pieces.iter().enumerate() {
        done += u64::from(len);
        let td_size = if i == last {
            0
        } else {
            (packets - done / mps).min(u64::from(TD_SIZE_MAX)) as u32
        };
        let flags = ISP | if i == last { IOC } else { CHAIN };
        td.trbs.push([
            phys as u32,
            (phys >> 32) as u32,
            len | (td_size << 17),
            (TRB_NORMAL << 10) | flags,
        ]);
        td.lengths.push(len);
    }
    Ok(td)
}

/// The Endpoint Context (6.2.3) of a bulk, interrupt or isochronous endpoint, without its TR
/// Dequeue Pointer (dwords 2 and 3 are the caller's): dword 0 Interval and Mult, dword 1
/// CErr, EP Type, Max Burst Size and Max Packet Size, dword 4 Average TRB Length and Max
/// ESIT Payload.
pub fn endpoint_context(e: &Endpoint, speed: Speed) -> [u32; 5] {
    let in_bit = u32::from(e.is_in()) << 2;
    // EP Type: Isoch Out 1, Bulk Out 2, Interrupt Out 3, Control 4; IN adds 4.
    let ep_type = match e.transfer_type {
        TransferType::Control => 4,
        TransferType::Isochronous => 1 | in_bit,
        TransferType::Bulk => 2 | in_bit,
        TransferType::Interrupt => 3 | in_bit,
    };
    let periodic = matches!(
        e.transfer_type,
        TransferType::Isochronous | TransferType::Interrupt
    );
    let superspeed = matches!(speed, Speed::Super | Speed::SuperPlus);
    let max_burst = if superspeed {
        u32::from(e.max_burst.min(15))
    } else if periodic && speed == Speed::High {
        u32::from(e.additional_transactions.min(2))
    } else {
        0
    };
    // Mult (SuperSpeed isochronous only): bmAttributes bits 1..0 of the companion.
    let mult = if superspeed && e.transfer_type == TransferType::Isochronous {
        u32::from(e.companion_attributes & 0b11).min(2)
    } else {
        0
    };
    let interval = if periodic { interval(e, speed) } else { 0 };
    let mps = u32::from(e.max_packet_size);
    let esit = if !periodic {
        0
    } else if superspeed && e.bytes_per_interval != 0 {
        u32::from(e.bytes_per_interval)
    } else {
        mps * (max_burst + 1) * (mult + 1)
    };
    // Average TRB Length (4.14.1.1): 1 KiB for interrupt, 3 KiB for bulk and isochronous.
    let average = if e.transfer_type == TransferType::Interrupt {
        1024
    } else {
        3072
    };
    // CErr 3 (retry errors three times); isochronous endpoints do not retry.
    let cerr = if e.transfer_type == TransferType::Isochronous {
        0
    } else {
        3
    };
    [
        (mult << 8) | (u32::from(interval) << 16) | ((esit >> 16) << 24),
        (cerr << 1) | (ep_type << 3) | (max_burst << 8) | (mps << 16),
        0,
        0,
        average | ((esit & 0xffff) << 16),
    ]
}

/// The Endpoint Context Interval (6.2.3.6): periods of 2^Interval × 125 µs. High and
/// SuperSpeed endpoints and full-speed isochronous ones give an exponent (bInterval 1..16);
/// full- and low-speed interrupt endpoints give milliseconds (1..255), rounded down to a
/// power of two.
fn interval(e: &Endpoint, speed: Speed) -> u8 {
    let b = e.interval;
    match (speed, e.transfer_type) {
        (Speed::Full | Speed::Low, TransferType::Interrupt) => {
            // b ms = 8·b × 125 µs; floor(log2(8·b)), at least 3 (1 ms).
            let frames = u32::from(b.max(1)) * 8;
            (31 - frames.leading_zeros()).clamp(3, 10) as u8
        }
        (Speed::Full, _) => b.clamp(1, 16) - 1 + 3,
        _ => b.clamp(1, 16) - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(phys: u64, len: usize) -> Segment {
        Segment { phys, len }
    }

    #[test]
    fn a_buffer_across_64k_boundaries_is_split_there() {
        let td = normal_td(&[seg(0x1_f000, 0x2_2000)], 512).unwrap();
        assert_eq!(td.lengths, [0x1000, 0x1_0000, 0x1_0000, 0x1000]);
        let addrs: Vec<u32> = td.trbs.iter().map(|t| t[0]).collect();
        assert_eq!(addrs, [0x1_f000, 0x2_0000, 0x3_0000, 0x4_0000]);
        for t in &td.trbs {
            let start = u64::from(t[0]);
            let len = u64::from(t[2] & 0x1_ffff);
            assert_eq!(
                start / TRB_BOUNDARY,
                (start + len - 1) / TRB_BOUNDARY,
                "{t:x?}"
            );
        }
    }

    #[test]
    fn chain_isp_and_ioc_mark_the_td() {
        let td = normal_td(&[seg(0x1000, 512), seg(0x8000, 512), seg(0x9000, 100)], 512).unwrap();
        assert_eq!(td.trbs.len(), 3);
        for t in &td.trbs {
            assert_eq!((t[3] >> 10) & 0x3f, 1, "Normal");
            assert_eq!(t[3] & ISP, ISP);
            assert_eq!(t[3] & 1, 0, "the ring writes the Cycle bit");
        }
        assert_eq!(td.trbs[0][3] & (CHAIN | IOC), CHAIN);
        assert_eq!(td.trbs[1][3] & (CHAIN | IOC), CHAIN);
        assert_eq!(td.trbs[2][3] & (CHAIN | IOC), IOC);
    }

    #[test]
    fn td_size_counts_the_packets_after_each_trb_and_saturates() {
        // 3 × 512 + 100 bytes = 4 packets of 512.
        let td = normal_td(
            &[seg(0x1000, 512), seg(0x8000, 1024), seg(0x9000, 100)],
            512,
        )
        .unwrap();
        let sizes: Vec<u32> = td.trbs.iter().map(|t| t[2] >> 17).collect();
        assert_eq!(sizes, [3, 1, 0]);
        // 64 KiB pieces of 1024-byte packets: far more than 31 packets remain.
        let td = normal_td(&[seg(0x10000, 0x30000)], 1024).unwrap();
        let sizes: Vec<u32> = td.trbs.iter().map(|t| t[2] >> 17).collect();
        assert_eq!(sizes, [31, 31, 0]);
        // One TRB: TD Size 0.
        let td = normal_td(&[seg(0x10000, 31)], 64).unwrap();
        assert_eq!(td.trbs[0][2], 31);
    }

    #[test]
    fn empty_tds_and_zero_packet_sizes_are_refused() {
        assert_eq!(normal_td(&[], 512), Err(TdError::Empty));
        assert_eq!(normal_td(&[seg(0x1000, 0)], 512), Err(TdError::Empty));
        assert_eq!(
            normal_td(&[seg(0x1000, 8)], 0),
            Err(TdError::NoMaxPacketSize)
        );
    }

    fn endpoint(address: u8, transfer_type: TransferType, mps: u16, interval: u8) -> Endpoint {
        Endpoint {
            address,
            transfer_type,
            max_packet_size: mps,
            additional_transactions: 0,
            interval,
            max_burst: 0,
            companion_attributes: 0,
            bytes_per_interval: 0,
        }
    }

    #[test]
    fn bulk_endpoint_contexts() {
        let mut e = endpoint(0x81, TransferType::Bulk, 1024, 0);
        e.max_burst = 15;
        let c = endpoint_context(&e, Speed::Super);
        assert_eq!(c[0], 0);
        assert_eq!(c[1], (3 << 1) | (6 << 3) | (15 << 8) | (1024 << 16));
        assert_eq!(c[4], 3072);
        let c = endpoint_context(&endpoint(0x02, TransferType::Bulk, 512, 0), Speed::High);
        assert_eq!(c[1], (3 << 1) | (2 << 3) | (512 << 16));
    }

    #[test]
    fn interrupt_intervals_follow_the_speed() {
        let e = endpoint(0x81, TransferType::Interrupt, 8, 10);
        // Full speed, 10 ms: 2^6 × 125 µs = 8 ms.
        let c = endpoint_context(&e, Speed::Full);
        assert_eq!((c[0] >> 16) & 0xff, 6);
        assert_eq!(c[1] & (7 << 3), 7 << 3, "Interrupt IN");
        assert_eq!(c[4], 1024 | (8 << 16), "Max ESIT Payload one packet");
        // High speed, bInterval 4: 2^3 × 125 µs.
        let c = endpoint_context(&endpoint(0x81, TransferType::Interrupt, 8, 4), Speed::High);
        assert_eq!((c[0] >> 16) & 0xff, 3);
        // Low speed 255 ms is capped at 2^10 × 125 µs; 1 ms is 2^3.
        let c = endpoint_context(&endpoint(0x81, TransferType::Interrupt, 8, 255), Speed::Low);
        assert_eq!((c[0] >> 16) & 0xff, 10);
        let c = endpoint_context(&endpoint(0x81, TransferType::Interrupt, 8, 0), Speed::Low);
        assert_eq!((c[0] >> 16) & 0xff, 3);
    }

    #[test]
    fn high_bandwidth_high_speed_endpoints_get_a_burst_and_their_esit_payload() {
        let mut e = endpoint(0x81, TransferType::Interrupt, 1024, 1);
        e.additional_transactions = 2;
        let c = endpoint_context(&e, Speed::High);
        assert_eq!((c[1] >> 8) & 0xff, 2);
        assert_eq!(c[4] >> 16, 3072);
    }
}
