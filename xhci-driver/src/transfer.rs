//! Bulk and interrupt transfers as Transfer Descriptors of Normal TRBs (xHCI 4.11.2.1,
//! 6.4.1.1), and the Endpoint Context that describes such an endpoint (6.2.3).

use alloc::vec::Vec;

use usb::{Direction, IsoPacket, Speed, TransferType};

use crate::descriptor::Endpoint;

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

/// One physically contiguous piece of a transfer's buffer, by bus address: what a TRB's
/// Data Buffer Pointer and TRB Transfer Length name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
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

/// Builds the TD of Normal TRBs for `segments`: each split where it would cross a 64 KiB
/// boundary, TD Size per the xHCI 1.0+ rule (packets left after this TRB, 0 on the last),
/// all but the last with Chain set, the last with IOC, every one with ISP so a short packet
/// ends the TD with an event at once.
pub fn normal_td(segments: &[DmaSegment], max_packet_size: u16) -> Result<TransferTrbs, TdError> {
    if max_packet_size == 0 {
        return Err(TdError::NoMaxPacketSize);
    }
    let total: usize = segments.iter().map(|s| s.len).sum();
    let pieces = pieces(segments, 0, total).unwrap_or_default();
    if pieces.is_empty() {
        return Err(TdError::Empty);
    }
    let mps = u64::from(max_packet_size);
    let mut done = 0u64;
    let last = pieces.len() - 1;
    let mut td = TransferTrbs {
        trbs: Vec::with_capacity(pieces.len()),
        info: Vec::with_capacity(pieces.len()),
    };
    for (i, &(phys, len)) in pieces.iter().enumerate() {
        done += u64::from(len);
        let size = td_size(total as u64, done, i == last, mps);
        let flags = ISP | if i == last { IOC } else { CHAIN };
        td.trbs.push([
            phys as u32,
            (phys >> 32) as u32,
            len | (size << 17),
            (TRB_NORMAL << 10) | flags,
        ]);
        td.info.push(TrbInfo {
            len,
            role: TrbRole::Data,
            packet: 0,
        });
    }
    Ok(td)
}

/// TRB Type Setup Stage.
const TRB_SETUP: u32 = 2;
/// TRB Type Data Stage.
const TRB_DATA: u32 = 3;
/// TRB Type Status Stage.
const TRB_STATUS: u32 = 4;
/// TRB Type Isoch.
const TRB_ISOCH: u32 = 5;
/// Immediate Data: the Setup Stage TRB carries the 8 bytes itself.
const IDT: u32 = 1 << 6;
/// Direction bit of Data and Status Stage TRBs: IN.
const DIR_IN: u32 = 1 << 16;
/// Start Isoch ASAP.
const SIA: u32 = 1 << 31;

/// What a TRB of a TD is for, so completion events can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrbRole {
    /// Carries data: its length counts towards the bytes transferred.
    Data,
    /// Setup or Status Stage of a control transfer.
    Stage,
}

/// One TRB of a TD as the completion logic sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrbInfo {
    /// TRB Transfer Length.
    pub len: u32,
    /// Its role.
    pub role: TrbRole,
    /// Isochronous: the packet (TD) it belongs to; 0 otherwise.
    pub packet: u16,
}

/// A transfer's TRBs (Cycle bits left to the ring) with what each is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferTrbs {
    /// The TRBs in ring order.
    pub trbs: Vec<[u32; 4]>,
    /// One entry per TRB.
    pub info: Vec<TrbInfo>,
}

/// Splits `len` bytes at byte `offset` of the buffer `segments` into pieces that do not
/// cross a 64 KiB boundary. `None` when the range runs past the buffer.
pub fn pieces(segments: &[DmaSegment], offset: usize, len: usize) -> Option<Vec<(u64, u32)>> {
    let mut out = Vec::new();
    let mut skip = offset;
    let mut left = len;
    for s in segments {
        if left == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let take = (s.len - skip).min(left);
        let mut phys = s.phys + skip as u64;
        let end = phys + take as u64;
        while phys < end {
            let boundary = (phys / TRB_BOUNDARY + 1) * TRB_BOUNDARY;
            let next = boundary.min(end);
            out.push((phys, (next - phys) as u32));
            phys = next;
        }
        left -= take;
        skip = 0;
    }
    (left == 0).then_some(out)
}

/// TD Size (4.11.2.4) of a TRB after which `done` of `total` bytes are queued: the packets
/// still to go, 0 on the TD's last TRB.
fn td_size(total: u64, done: u64, last: bool, mps: u64) -> u32 {
    if last {
        0
    } else {
        (total.div_ceil(mps) - done / mps).min(u64::from(TD_SIZE_MAX)) as u32
    }
}

/// The TDs of a control transfer (4.11.2.2): a Setup Stage TRB with the request as
/// Immediate Data, a Data Stage TRB followed by chained Normal TRBs for the buffer (when
/// there is one), and a Status Stage TRB in the other direction (IN without data) that
/// interrupts on completion. IN data TRBs interrupt on a short packet so the bytes received
/// are known; the controller still runs the Status Stage after it.
pub fn control_trbs(
    setup: [u8; 8],
    direction: Direction,
    segments: &[DmaSegment],
    max_packet_size: u16,
) -> Result<TransferTrbs, TdError> {
    if max_packet_size == 0 {
        return Err(TdError::NoMaxPacketSize);
    }
    let total: usize = segments.iter().map(|s| s.len).sum();
    let data = pieces(segments, 0, total).unwrap_or_default();
    let trt = match (data.is_empty(), direction) {
        (true, _) => 0,
        (false, Direction::Out) => 2,
        (false, Direction::In) => 3,
    };
    let mut t = TransferTrbs {
        trbs: Vec::with_capacity(data.len() + 2),
        info: Vec::with_capacity(data.len() + 2),
    };
    let stage = TrbInfo {
        len: 0,
        role: TrbRole::Stage,
        packet: 0,
    };
    t.trbs.push([
        u32::from_le_bytes([setup[0], setup[1], setup[2], setup[3]]),
        u32::from_le_bytes([setup[4], setup[5], setup[6], setup[7]]),
        8,
        (TRB_SETUP << 10) | IDT | (trt << 16),
    ]);
    t.info.push(stage);
    let mps = u64::from(max_packet_size);
    let dir = if direction == Direction::In {
        DIR_IN
    } else {
        0
    };
    let isp = if direction == Direction::In { ISP } else { 0 };
    let mut done = 0u64;
    let last = data.len().saturating_sub(1);
    for (i, &(phys, len)) in data.iter().enumerate() {
        done += u64::from(len);
        let size = td_size(total as u64, done, i == last, mps);
        let (kind, d) = if i == 0 {
            (TRB_DATA, dir)
        } else {
            (TRB_NORMAL, 0)
        };
        let chain = if i == last { 0 } else { CHAIN };
        t.trbs.push([
            phys as u32,
            (phys >> 32) as u32,
            len | (size << 17),
            (kind << 10) | d | isp | chain,
        ]);
        t.info.push(TrbInfo {
            len,
            role: TrbRole::Data,
            packet: 0,
        });
    }
    let status_dir = if data.is_empty() || direction == Direction::Out {
        DIR_IN
    } else {
        0
    };
    t.trbs
        .push([0, 0, 0, (TRB_STATUS << 10) | status_dir | IOC]);
    t.info.push(stage);
    Ok(t)
}

/// Why an isochronous transfer was not built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsochError {
    /// No packets.
    NoPackets,
    /// A packet runs past the buffer, or is larger than a service interval carries.
    Packet(usize),
    /// The endpoint's max packet size is 0.
    NoMaxPacketSize,
}

/// The TDs of an isochronous transfer (4.11.2.3, 6.4.1.3): one TD per packet, an Isoch TRB
/// followed by chained Normal TRBs where the packet crosses a 64 KiB boundary or a buffer
/// segment, each TD interrupting on completion so every packet gets its own status and
/// length. Start Isoch ASAP: the controller schedules the first packet in the next
/// interval it can, and each following packet one interval later. `max_burst` is the
/// endpoint's (0 below SuperSpeed); `esit_payload` the bytes one interval may carry.
pub fn isoch_trbs(
    segments: &[DmaSegment],
    packets: &[IsoPacket],
    direction: Direction,
    max_packet_size: u16,
    max_burst: u8,
    esit_payload: usize,
) -> Result<TransferTrbs, IsochError> {
    if packets.is_empty() {
        return Err(IsochError::NoPackets);
    }
    if max_packet_size == 0 {
        return Err(IsochError::NoMaxPacketSize);
    }
    let mps = u64::from(max_packet_size);
    let burst = u64::from(max_burst) + 1;
    let isp = if direction == Direction::In { ISP } else { 0 };
    let mut t = TransferTrbs {
        trbs: Vec::new(),
        info: Vec::new(),
    };
    for (n, p) in packets.iter().enumerate() {
        let (offset, length) = (p.offset as usize, p.length as usize);
        if length > esit_payload {
            return Err(IsochError::Packet(n));
        }
        let mut data = pieces(segments, offset, length).ok_or(IsochError::Packet(n))?;
        if data.is_empty() {
            // A zero-length packet is one TRB of no bytes.
            data.push((0, 0));
        }
        // Transfer Descriptor Packet Count, then bursts (4.11.2.3): TBC is the bursts less
        // one, TLBPC the packets in the last burst less one.
        let tdpc = (length as u64).div_ceil(mps).max(1);
        let tbc = (tdpc.div_ceil(burst) - 1) as u32;
        let tlbpc = match tdpc % burst {
            0 => burst - 1,
            r => r - 1,
        } as u32;
        let total = length as u64;
        let mut done = 0u64;
        let last = data.len() - 1;
        for (i, &(phys, len)) in data.iter().enumerate() {
            done += u64::from(len);
            let size = td_size(total, done, i == last, mps);
            let end = if i == last { IOC } else { CHAIN };
            let head = if i == 0 {
                (TRB_ISOCH << 10) | SIA | (tbc << 7) | (tlbpc << 16)
            } else {
                TRB_NORMAL << 10
            };
            t.trbs.push([
                phys as u32,
                (phys >> 32) as u32,
                len | (size << 17),
                head | isp | end,
            ]);
            t.info.push(TrbInfo {
                len,
                role: TrbRole::Data,
                packet: n as u16,
            });
        }
    }
    Ok(t)
}

/// Max ESIT Payload (4.14.2): the bytes a periodic endpoint moves per service interval.
pub fn max_esit_payload(e: &Endpoint, speed: Speed) -> u32 {
    let superspeed = matches!(speed, Speed::Super | Speed::SuperPlus);
    if superspeed && e.bytes_per_interval != 0 {
        return u32::from(e.bytes_per_interval);
    }
    let (burst, mult) = if superspeed {
        let mult = if e.transfer_type == TransferType::Isochronous {
            u32::from(e.companion_attributes & 0b11).min(2)
        } else {
            0
        };
        (u32::from(e.max_burst.min(15)), mult)
    } else if speed == Speed::High {
        (u32::from(e.additional_transactions.min(2)), 0)
    } else {
        (0, 0)
    };
    u32::from(e.max_packet_size) * (burst + 1) * (mult + 1)
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
    let esit = if periodic {
        max_esit_payload(e, speed)
    } else {
        0
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

/// MFINDEX (5.5.1) counts 125 µs microframes in 14 bits.
pub const MICROFRAME_MASK: u16 = 0x3fff;

/// Where an isochronous transfer's packets go on the bus, in microframes of MFINDEX's
/// 14-bit count: the first packet's and the one after its last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsochSlot {
    /// The first packet's microframe.
    pub start: u16,
    /// The microframe after its last packet's service interval: where a transfer queued
    /// behind it starts.
    pub next: u16,
}

impl IsochSlot {
    /// The start as USB reports it for the transfer (Linux's `urb->start_frame`, which
    /// PVUSB passes on): 1 ms frames (11 bits) at full and low speed, microframes (14 bits)
    /// above.
    pub fn start_frame(&self, speed: Speed) -> u16 {
        match speed {
            Speed::Full | Speed::Low => (self.start >> 3) & 0x7ff,
            _ => self.start & MICROFRAME_MASK,
        }
    }
}

/// Where the controller puts an isochronous transfer of `packets` packets queued with Start
/// Isoch ASAP (4.11.2.5) on an endpoint with Endpoint Context Interval `interval` (each
/// packet one service interval of 2^interval microframes): right after the transfer before
/// it when that is still queued (`behind`: its [`IsochSlot::next`]), else at the first
/// service interval boundary the controller can still schedule, `ist` microframes
/// (Isochronous Scheduling Threshold, 5.3.4) after MFINDEX `mfindex`. Two transfers queued
/// back to back so never claim the same frame.
pub fn isoch_slot(
    mfindex: u16,
    ist: u16,
    interval: u8,
    packets: usize,
    behind: Option<u16>,
) -> IsochSlot {
    let period = 1u32 << interval.min(15);
    let start = match behind {
        Some(next) => u32::from(next),
        None => (u32::from(mfindex & MICROFRAME_MASK) + u32::from(ist)).div_ceil(period) * period,
    };
    let next = start + period * packets as u32;
    IsochSlot {
        start: (start & u32::from(MICROFRAME_MASK)) as u16,
        next: (next & u32::from(MICROFRAME_MASK)) as u16,
    }
}

/// The Endpoint Context Interval (6.2.3.6): periods of 2^Interval × 125 µs. High and
/// SuperSpeed endpoints and full-speed isochronous ones give an exponent (bInterval 1..16);
/// full- and low-speed interrupt endpoints give milliseconds (1..255), rounded down to a
/// power of two.
pub fn interval(e: &Endpoint, speed: Speed) -> u8 {
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

    #[test]
    fn isochronous_transfers_queued_back_to_back_get_consecutive_slots() {
        // Full speed, one packet a frame (Interval 3: 8 microframes), IST 1 frame.
        let first = isoch_slot(0x101, 8, 3, 4, None);
        assert_eq!(
            first,
            IsochSlot {
                start: 0x110,
                next: 0x130
            }
        );
        assert_eq!(first.start_frame(Speed::Full), 0x22);
        let second = isoch_slot(0x102, 8, 3, 4, Some(first.next));
        assert_eq!(
            second.start, first.next,
            "right behind the first, not at MFINDEX"
        );
        assert_eq!(second.start_frame(Speed::Full), 0x26);
        // High speed, every microframe: reported in microframes.
        let hs = isoch_slot(0x3ffe, 2, 0, 3, None);
        assert_eq!(
            hs,
            IsochSlot { start: 0, next: 3 },
            "MFINDEX wraps at 14 bits"
        );
        assert_eq!(hs.start_frame(Speed::High), 0);
        // A long interval starts on its boundary.
        assert_eq!(isoch_slot(0x45, 0, 5, 1, None).start, 0x60);
    }

    fn seg(phys: u64, len: usize) -> DmaSegment {
        DmaSegment { phys, len }
    }

    #[test]
    fn a_buffer_across_64k_boundaries_is_split_there() {
        let td = normal_td(&[seg(0x1_f000, 0x2_2000)], 512).unwrap();
        assert_eq!(
            td.info.iter().map(|i| i.len).collect::<Vec<_>>(),
            [0x1000, 0x1_0000, 0x1_0000, 0x1000]
        );
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
    fn pieces_take_a_range_across_segments_and_64k_boundaries() {
        let segs = [seg(0x1_f000, 0x800), seg(0x5_0000, 0x2_0000)];
        assert_eq!(pieces(&segs, 0x400, 0x400), Some(vec![(0x1_f400, 0x400)]));
        assert_eq!(
            pieces(&segs, 0x700, 0x1_0200),
            Some(vec![
                (0x1_f700, 0x100),
                (0x5_0000, 0x1_0000),
                (0x6_0000, 0x100)
            ])
        );
        assert_eq!(pieces(&segs, 0x800, 0), Some(vec![]));
        assert_eq!(pieces(&segs, 0x2_0000, 0x801), None, "past the end");
    }

    #[test]
    fn a_control_transfer_with_in_data_has_setup_data_and_status_stages() {
        let setup = [0x80, 6, 0, 2, 0, 0, 0x20, 1];
        let t = control_trbs(setup, Direction::In, &[seg(0x1_ff00, 0x120)], 64).unwrap();
        let kinds: Vec<u32> = t.trbs.iter().map(|t| (t[3] >> 10) & 0x3f).collect();
        assert_eq!(kinds, [2, 3, 1, 4], "Setup, Data, Normal, Status");
        assert_eq!(t.trbs[0][0], 0x0200_0680);
        assert_eq!(t.trbs[0][1], 0x0120_0000);
        assert_eq!(t.trbs[0][2], 8);
        assert_eq!(t.trbs[0][3] & (IDT | 3 << 16), IDT | 3 << 16, "IDT, TRT IN");
        assert_eq!(t.trbs[1][3] & (DIR_IN | CHAIN | ISP), DIR_IN | CHAIN | ISP);
        assert_eq!(t.trbs[1][2], 0x100 | (1 << 17), "one packet after it");
        assert_eq!(
            t.trbs[2][3] & (CHAIN | ISP),
            ISP,
            "the last data TRB ends the chain"
        );
        assert_eq!(
            t.trbs[3][3] & (DIR_IN | IOC),
            IOC,
            "Status OUT after IN data"
        );
        assert_eq!(t.info[1].role, TrbRole::Data);
        assert_eq!(t.info[3].role, TrbRole::Stage);
    }

    #[test]
    fn control_transfers_without_data_or_with_out_data_get_an_in_status_stage() {
        let t = control_trbs([0, 9, 1, 0, 0, 0, 0, 0], Direction::Out, &[], 8).unwrap();
        assert_eq!(t.trbs.len(), 2);
        assert_eq!(t.trbs[0][3] & (3 << 16), 0, "TRT No Data");
        assert_eq!(t.trbs[1][3] & (DIR_IN | IOC), DIR_IN | IOC);
        let t = control_trbs(
            [0x21, 9, 0, 2, 0, 0, 1, 0],
            Direction::Out,
            &[seg(0x2000, 1)],
            8,
        )
        .unwrap();
        assert_eq!(t.trbs[0][3] & (3 << 16), 2 << 16, "TRT OUT");
        assert_eq!(t.trbs[1][3] & (DIR_IN | ISP), 0);
        assert_eq!(t.trbs[2][3] & DIR_IN, DIR_IN);
    }

    #[test]
    fn isochronous_packets_are_one_td_each_with_burst_counts() {
        let segs = [seg(0x1_0000, 3 * 1024)];
        let packets = [
            IsoPacket {
                offset: 0,
                length: 1024,
            },
            IsoPacket {
                offset: 1024,
                length: 0,
            },
            IsoPacket {
                offset: 1024,
                length: 2048,
            },
        ];
        let t = isoch_trbs(&segs, &packets, Direction::In, 512, 1, 2048).unwrap();
        assert_eq!(t.trbs.len(), 3);
        for (trb, packet) in t.trbs.iter().zip(0u16..) {
            assert_eq!((trb[3] >> 10) & 0x3f, 5, "Isoch");
            assert_eq!(trb[3] & (SIA | IOC | ISP | CHAIN), SIA | IOC | ISP);
            assert_eq!(t.info[usize::from(packet)].packet, packet);
        }
        // 1024 bytes = 2 packets of 512, one burst of 2: TBC 0, TLBPC 1.
        assert_eq!((t.trbs[0][3] >> 7) & 3, 0);
        assert_eq!((t.trbs[0][3] >> 16) & 0xf, 1);
        // Zero length: one packet.
        assert_eq!(t.trbs[1][2] & 0x1_ffff, 0);
        assert_eq!((t.trbs[1][3] >> 16) & 0xf, 0);
        // 2048 bytes = 4 packets, bursts of 2: TBC 1, TLBPC 1.
        assert_eq!((t.trbs[2][3] >> 7) & 3, 1);
        assert_eq!(t.trbs[2][0], 0x1_0400);
        assert_eq!(
            isoch_trbs(&segs, &packets, Direction::In, 512, 1, 1024),
            Err(IsochError::Packet(2)),
            "more than an interval carries"
        );
        let past = [IsoPacket {
            offset: 3000,
            length: 200,
        }];
        assert_eq!(
            isoch_trbs(&segs, &past, Direction::Out, 512, 0, 1024),
            Err(IsochError::Packet(0))
        );
        assert_eq!(
            isoch_trbs(&segs, &[], Direction::Out, 512, 0, 1024),
            Err(IsochError::NoPackets)
        );
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
