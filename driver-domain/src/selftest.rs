//! Data of the kernel's self-tests, shared with the host-side checks.

/// Bytes the storage self-test writes: one 4 KiB block (LBA 8 onwards with 512-byte blocks).
pub const STORAGE_PATTERN_SIZE: usize = 4096;
/// First LBA the storage self-test writes.
pub const STORAGE_PATTERN_LBA: u32 = 8;
/// Each 32-byte record starts with this.
pub const STORAGE_PATTERN_TAG: &[u8; 16] = b"usbdom-selftest:";

/// The storage self-test's pattern: 128 records of 32 bytes, each `usbdom-selftest:`, the
/// record's index as 15 lower-case hex digits, and a newline, so that `strings` or `xxd` on
/// the stick's image shows it and a misplaced or repeated record is obvious.
pub fn storage_pattern() -> [u8; STORAGE_PATTERN_SIZE] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut p = [0u8; STORAGE_PATTERN_SIZE];
    for (i, record) in p.chunks_exact_mut(32).enumerate() {
        record[..16].copy_from_slice(STORAGE_PATTERN_TAG);
        for (d, b) in record[16..31].iter_mut().enumerate() {
            *b = HEX[(i >> (4 * (14 - d))) & 0xf];
        }
        record[31] = b'\n';
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_numbered_records() {
        let p = storage_pattern();
        assert_eq!(&p[..32], b"usbdom-selftest:000000000000000\n");
        assert_eq!(&p[32 * 127..], b"usbdom-selftest:00000000000007f\n");
    }
}
