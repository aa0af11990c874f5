//! Just enough ACPI to find PCI's ECAM window: the RSDP, the RSDT/XSDT, and the MCFG table.
//! Tables are read through [`PhysRead`], field by field (they may be unaligned), and every
//! table's checksum and length are checked before use.

use heapless::Vec;

use crate::PhysRead;

/// One ECAM window from MCFG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcamWindow {
    /// Physical base of bus `start_bus`'s configuration space… minus `start_bus << 20`, as
    /// MCFG states it: the base for bus 0.
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

/// Why ACPI could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// No RSDP found.
    NoRsdp,
    /// A table's signature, length or checksum is wrong.
    BadTable(&'static str),
    /// No MCFG table (a legacy PC has none).
    NoMcfg,
}

fn read_array<const N: usize>(mem: &impl PhysRead, at: u64) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    mem.read(at, &mut b).then_some(b)
}

fn read_u32(mem: &impl PhysRead, at: u64) -> Option<u32> {
    read_array::<4>(mem, at).map(u32::from_le_bytes)
}

fn read_u64(mem: &impl PhysRead, at: u64) -> Option<u64> {
    read_array::<8>(mem, at).map(u64::from_le_bytes)
}

fn checksum_ok(mem: &impl PhysRead, at: u64, len: u64) -> bool {
    let mut sum = 0u8;
    let mut buf = [0u8; 64];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(64) as usize;
        if !mem.read(at + done, &mut buf[..n]) {
            return false;
        }
        sum = buf[..n].iter().fold(sum, |s, b| s.wrapping_add(*b));
        done += n as u64;
    }
    sum == 0
}

fn valid_rsdp(mem: &impl PhysRead, at: u64) -> bool {
    read_array::<8>(mem, at) == Some(*b"RSD PTR ") && checksum_ok(mem, at, 20)
}

/// The RSDP: at `hint` (from the start info) if valid there, else found by scanning the BIOS
/// area 0xE0000–0xFFFFF on 16-byte boundaries.
pub fn find_rsdp(mem: &impl PhysRead, hint: u64) -> Result<u64, AcpiError> {
    if hint != 0 && valid_rsdp(mem, hint) {
        return Ok(hint);
    }
    (0xE0000..0x100000u64)
        .step_by(16)
        .find(|&a| valid_rsdp(mem, a))
        .ok_or(AcpiError::NoRsdp)
}

/// Length of the table at `at` after checking its signature and checksum.
fn table(mem: &impl PhysRead, at: u64, sig: &[u8; 4]) -> Option<u64> {
    if read_array::<4>(mem, at)? != *sig {
        return None;
    }
    let len = u64::from(read_u32(mem, at + 4)?);
    (36..=1 << 20)
        .contains(&len)
        .then_some(len)
        .filter(|&l| checksum_ok(mem, at, l))
}

/// The ECAM windows the MCFG table describes.
pub fn ecam_windows(mem: &impl PhysRead, rsdp: u64) -> Result<Vec<EcamWindow, 4>, AcpiError> {
    let revision = read_array::<1>(mem, rsdp + 15).ok_or(AcpiError::BadTable("RSDP"))?[0];
    let xsdt = if revision >= 2 {
        read_u64(mem, rsdp + 24).unwrap_or(0)
    } else {
        0
    };
    let (root, sig, width) = if xsdt != 0 {
        (xsdt, b"XSDT", 8)
    } else {
        (
            u64::from(read_u32(mem, rsdp + 16).ok_or(AcpiError::BadTable("RSDP"))?),
            b"RSDT",
            4,
        )
    };
    let len = table(mem, root, sig).ok_or(AcpiError::BadTable("RSDT/XSDT"))?;
    let mut entry = root + 36;
    while entry + width <= root + len {
        let at = if width == 8 {
            read_u64(mem, entry)
        } else {
            read_u32(mem, entry).map(u64::from)
        };
        entry += width;
        let Some(at) = at else { continue };
        let Some(mlen) = table(mem, at, b"MCFG") else {
            continue;
        };
        let mut windows = Vec::new();
        let mut e = at + 44;
        while e + 16 <= at + mlen {
            let base = read_u64(mem, e).ok_or(AcpiError::BadTable("MCFG"))?;
            let rest = read_array::<4>(mem, e + 8).ok_or(AcpiError::BadTable("MCFG"))?;
            let _ = windows.push(EcamWindow {
                base,
                segment: u16::from_le_bytes([rest[0], rest[1]]),
                start_bus: rest[2],
                end_bus: rest[3],
            });
            e += 16;
        }
        return Ok(windows);
    }
    Err(AcpiError::NoMcfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(std::vec::Vec<u8>);

    impl PhysRead for Mem {
        fn read(&self, phys: u64, buf: &mut [u8]) -> bool {
            let at = phys as usize;
            match self.0.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    fn fix_checksum(mem: &mut [u8], at: usize, len: usize, sum_at: usize) {
        mem[sum_at] = 0;
        let s = mem[at..at + len]
            .iter()
            .fold(0u8, |s, b| s.wrapping_add(*b));
        mem[sum_at] = 0u8.wrapping_sub(s);
    }

    fn sdt(mem: &mut [u8], at: usize, sig: &[u8; 4], body: &[u8]) {
        let len = 36 + body.len();
        mem[at..at + 4].copy_from_slice(sig);
        mem[at + 4..at + 8].copy_from_slice(&(len as u32).to_le_bytes());
        mem[at + 36..at + len].copy_from_slice(body);
        fix_checksum(mem, at, len, at + 9);
    }

    /// SeaBIOS on q35: an RSDP (revision 0) in the BIOS area, an RSDT, and MCFG at an odd
    /// address.
    fn q35() -> Mem {
        let mut m = vec![0u8; 0x100000];
        let rsdp = 0xf5a40;
        m[rsdp..rsdp + 8].copy_from_slice(b"RSD PTR ");
        m[rsdp + 16..rsdp + 20].copy_from_slice(&0x7000u32.to_le_bytes());
        fix_checksum(&mut m, rsdp, 20, rsdp + 8);
        let mut body = vec![];
        body.extend_from_slice(&0x8000u32.to_le_bytes()); // some other table
        body.extend_from_slice(&0x9003u32.to_le_bytes()); // MCFG, unaligned
        sdt(&mut m, 0x7000, b"RSDT", &body);
        sdt(&mut m, 0x8000, b"FACP", &[0; 8]);
        let mut mcfg = vec![0u8; 8];
        mcfg.extend_from_slice(&0xb000_0000u64.to_le_bytes());
        mcfg.extend_from_slice(&[0, 0, 0, 0xff, 0, 0, 0, 0]);
        sdt(&mut m, 0x9003, b"MCFG", &mcfg);
        Mem(m)
    }

    #[test]
    fn finds_ecam_through_the_rsdt() {
        let m = q35();
        let rsdp = find_rsdp(&m, 0).unwrap();
        assert_eq!(rsdp, 0xf5a40);
        let w = ecam_windows(&m, rsdp).unwrap();
        assert_eq!(
            w.as_slice(),
            &[EcamWindow {
                base: 0xb000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 0xff
            }]
        );
    }

    #[test]
    fn a_bad_checksum_or_no_mcfg_is_reported() {
        let mut m = q35();
        m.0[0x9003 + 40] ^= 1;
        assert_eq!(ecam_windows(&m, 0xf5a40), Err(AcpiError::NoMcfg));
        let mut m = q35();
        m.0[0x7000 + 20] ^= 1;
        assert_eq!(
            ecam_windows(&m, 0xf5a40),
            Err(AcpiError::BadTable("RSDT/XSDT"))
        );
        assert_eq!(
            find_rsdp(&Mem(vec![0; 0x100000]), 0),
            Err(AcpiError::NoRsdp)
        );
    }
}
