//! The Mass Storage class's Bulk-Only Transport (BOT 1.0) and the SCSI commands (SPC, SBC)
//! it carries: the numbers and wrappers both a host (the xHCI self-test, the demo) and a
//! device model use.

use crate::Direction;

/// bInterfaceClass Mass Storage.
pub const CLASS_MASS_STORAGE: u8 = 0x08;
/// bInterfaceSubClass SCSI transparent command set.
pub const SUBCLASS_SCSI: u8 = 0x06;
/// bInterfaceProtocol Bulk-Only Transport.
pub const PROTOCOL_BULK_ONLY: u8 = 0x50;

/// dCBWSignature, "USBC" (BOT 5.1).
pub const CBW_SIGNATURE: u32 = 0x4342_5355;
/// dCSWSignature, "USBS" (BOT 5.2).
pub const CSW_SIGNATURE: u32 = 0x5342_5355;
/// Bytes of a Command Block Wrapper.
pub const CBW_SIZE: usize = 31;
/// Bytes of a Command Status Wrapper.
pub const CSW_SIZE: usize = 13;
/// bCSWStatus: command passed.
pub const CSW_PASSED: u8 = 0;
/// bCSWStatus: command failed (REQUEST SENSE says why).
pub const CSW_FAILED: u8 = 1;
/// bCSWStatus: phase error (the host and device disagree on the data stage).
pub const CSW_PHASE_ERROR: u8 = 2;

/// Bulk-Only Mass Storage Reset (class request, BOT 3.1).
pub const BULK_ONLY_RESET: u8 = 0xff;
/// Get Max LUN (class request, BOT 3.2).
pub const GET_MAX_LUN: u8 = 0xfe;

/// TEST UNIT READY.
pub const TEST_UNIT_READY: u8 = 0x00;
/// REQUEST SENSE.
pub const REQUEST_SENSE: u8 = 0x03;
/// INQUIRY.
pub const INQUIRY: u8 = 0x12;
/// MODE SENSE (6).
pub const MODE_SENSE_6: u8 = 0x1a;
/// READ CAPACITY (10).
pub const READ_CAPACITY_10: u8 = 0x25;
/// READ (10).
pub const READ_10: u8 = 0x28;
/// WRITE (10).
pub const WRITE_10: u8 = 0x2a;

/// A Command Block Wrapper (BOT 5.1) for `cdb` (at most 16 bytes are kept).
pub fn cbw(
    tag: u32,
    data_length: u32,
    direction: Direction,
    lun: u8,
    cdb: &[u8],
) -> [u8; CBW_SIZE] {
    let mut w = [0u8; CBW_SIZE];
    w[0..4].copy_from_slice(&CBW_SIGNATURE.to_le_bytes());
    w[4..8].copy_from_slice(&tag.to_le_bytes());
    w[8..12].copy_from_slice(&data_length.to_le_bytes());
    w[12] = if direction == Direction::In { 0x80 } else { 0 };
    w[13] = lun & 0x0f;
    let n = cdb.len().min(16);
    w[14] = n as u8;
    w[15..15 + n].copy_from_slice(&cdb[..n]);
    w
}

/// INQUIRY for `length` bytes of standard data.
pub fn inquiry(length: u8) -> [u8; 6] {
    [INQUIRY, 0, 0, 0, length, 0]
}

/// READ CAPACITY (10).
pub fn read_capacity_10() -> [u8; 10] {
    [READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// READ (10) or WRITE (10) of `blocks` blocks at `lba`.
pub fn read_write_10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [opcode, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

/// The CBW of a READ (10) (`write` false) or WRITE (10) of `blocks` blocks of `block_size`
/// bytes at `lba`, on LUN 0.
pub fn read_write_10_cbw(
    tag: u32,
    write: bool,
    lba: u32,
    blocks: u16,
    block_size: u32,
) -> [u8; CBW_SIZE] {
    let (opcode, direction) = if write {
        (WRITE_10, Direction::Out)
    } else {
        (READ_10, Direction::In)
    };
    let length = u32::from(blocks) * block_size;
    cbw(
        tag,
        length,
        direction,
        0,
        &read_write_10(opcode, lba, blocks),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cbw_carries_signature_tag_length_direction_and_cdb() {
        let w = cbw(7, 4096, Direction::In, 0, &read_write_10(READ_10, 8, 8));
        assert_eq!(&w[0..4], b"USBC");
        assert_eq!(u32::from_le_bytes([w[4], w[5], w[6], w[7]]), 7);
        assert_eq!(u32::from_le_bytes([w[8], w[9], w[10], w[11]]), 4096);
        assert_eq!((w[12], w[13], w[14]), (0x80, 0, 10));
        assert_eq!(&w[15..25], &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]);
        assert_eq!(w[25..], [0; 6]);
    }

    #[test]
    fn a_read_or_write_cbw_names_its_blocks_and_direction() {
        let w = read_write_10_cbw(3, true, 0x0102_0304, 2, 512);
        assert_eq!(u32::from_le_bytes([w[8], w[9], w[10], w[11]]), 1024);
        assert_eq!(w[12], 0);
        assert_eq!(&w[15..25], &[WRITE_10, 0, 1, 2, 3, 4, 0, 0, 2, 0]);
        assert_eq!(read_write_10_cbw(3, false, 0, 1, 512)[12], 0x80);
    }
}
