//! USB Mass Storage Bulk-Only Transport (BOT 1.0) carrying SCSI commands (SPC, SBC): the
//! Command Block Wrapper, the Command Status Wrapper, and the few commands a self-test needs.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use usb::mass_storage::{
    cbw, CBW_SIZE, CLASS_MASS_STORAGE, CSW_SIGNATURE, CSW_SIZE, PROTOCOL_BULK_ONLY, SUBCLASS_SCSI,
};
use usb::{Direction, TransferType};

use crate::controller::{Controller, Error};
use crate::descriptor::Interface;
use crate::hal::{DmaBuffer, Hal};
use crate::transfer::DmaSegment;

/// The CBW and CSW take this long at most; data phases get the caller's timeout.
const WRAPPER_TIMEOUT_US: u64 = 1_000_000;

/// Whether an interface speaks SCSI over Bulk-Only Transport.
pub fn is_bulk_only_scsi(i: &Interface) -> bool {
    (i.class, i.subclass, i.protocol) == (CLASS_MASS_STORAGE, SUBCLASS_SCSI, PROTOCOL_BULK_ONLY)
}

/// What went wrong with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// The USB transfer failed.
    Usb(Error),
    /// The CSW was short, had the wrong signature or another command's tag (BOT 6.3).
    BadCsw,
    /// bCSWStatus 1: the command failed.
    CommandFailed,
    /// bCSWStatus 2 or another value: phase error.
    PhaseError,
    /// The data the device returned is too short to mean anything.
    ShortData,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Usb(e) => write!(f, "usb_{e}"),
            StorageError::BadCsw => f.write_str("bad_csw"),
            StorageError::CommandFailed => f.write_str("command_failed"),
            StorageError::PhaseError => f.write_str("phase_error"),
            StorageError::ShortData => f.write_str("short_data"),
        }
    }
}

impl From<Error> for StorageError {
    fn from(e: Error) -> StorageError {
        StorageError::Usb(e)
    }
}

/// Checks a Command Status Wrapper against the command's tag; returns dCSWDataResidue.
pub fn csw(bytes: &[u8], tag: u32) -> Result<u32, StorageError> {
    if bytes.len() < CSW_SIZE {
        return Err(StorageError::BadCsw);
    }
    let dword =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if dword(0) != CSW_SIGNATURE || dword(4) != tag {
        return Err(StorageError::BadCsw);
    }
    match bytes[12] {
        0 => Ok(dword(8)),
        1 => Err(StorageError::CommandFailed),
        _ => Err(StorageError::PhaseError),
    }
}

/// READ CAPACITY (10) data: (number of blocks, block length in bytes).
pub fn capacity(data: &[u8]) -> Result<(u64, u32), StorageError> {
    if data.len() < 8 {
        return Err(StorageError::ShortData);
    }
    let last = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let block = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    Ok((u64::from(last) + 1, block))
}

/// The T10 vendor identification of standard INQUIRY data (bytes 8..16), trimmed, with
/// anything but printable ASCII (and `"` and `\\`) replaced by `?`: it goes into logs.
pub fn inquiry_vendor(data: &[u8]) -> Result<String, StorageError> {
    if data.len() < 16 {
        return Err(StorageError::ShortData);
    }
    let printable = |b: u8| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\';
    let vendor: String = data[8..16]
        .iter()
        .map(|&b| if printable(b) { char::from(b) } else { '?' })
        .collect();
    Ok(String::from(vendor.trim_end()))
}

/// A Bulk-Only Transport interface of a configured device.
pub struct BulkOnly<D> {
    slot_id: u8,
    bulk_in: u8,
    bulk_out: u8,
    tag: u32,
    cbw: D,
    csw: D,
}

impl<D: DmaBuffer> BulkOnly<D> {
    /// Finds the bulk IN and OUT endpoints of `interface` (configured already) and
    /// allocates the wrappers' DMA buffers.
    pub fn new<H: Hal<Dma = D>>(
        xhci: &mut Controller<H>,
        slot_id: u8,
        interface: &Interface,
    ) -> Result<BulkOnly<D>, Error> {
        let bulk = |is_in: bool| {
            interface
                .endpoints
                .iter()
                .find(|e| e.transfer_type == TransferType::Bulk && e.is_in() == is_in)
                .map(|e| e.number())
                .ok_or(Error::NoEndpoint)
        };
        Ok(BulkOnly {
            slot_id,
            bulk_in: bulk(true)?,
            bulk_out: bulk(false)?,
            tag: 0,
            cbw: xhci.dma_alloc(64, 64)?,
            csw: xhci.dma_alloc(64, 64)?,
        })
    }

    /// Runs one command (BOT 5.3): the CBW on bulk OUT, the data phase over `data` (if
    /// any bytes) in `direction`, the CSW on bulk IN. Returns the bytes the data phase moved.
    /// A STALL of the data phase is cleared and the CSW still read, as BOT 6.7.2 asks.
    pub fn command<H: Hal<Dma = D>>(
        &mut self,
        xhci: &mut Controller<H>,
        cdb: &[u8],
        direction: Direction,
        data: &[DmaSegment],
        timeout_us: u64,
    ) -> Result<usize, StorageError> {
        self.tag = self.tag.wrapping_add(1);
        let length: usize = data.iter().map(|s| s.len).sum();
        let length = u32::try_from(length).map_err(|_| StorageError::Usb(Error::BadTransfer))?;
        self.send_cbw(xhci, &cbw(self.tag, length, direction, 0, cdb))?;
        let mut moved = 0;
        if length > 0 {
            let endpoint = match direction {
                Direction::In => self.bulk_in,
                Direction::Out => self.bulk_out,
            };
            match xhci.transfer(self.slot_id, endpoint, direction, data, timeout_us) {
                Ok(n) => moved = n,
                Err(Error::Stall) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.read_csw(xhci)?;
        Ok(moved)
    }

    /// Runs one command whose data phase (in `direction`) is split into one bulk transfer
    /// per chunk, all queued at once (as a host with many requests in flight does): the CBW,
    /// every chunk, then the CSW. Returns the bytes the data phase moved.
    pub fn command_in_flight<H: Hal<Dma = D>>(
        &mut self,
        xhci: &mut Controller<H>,
        cdb: &[u8],
        direction: Direction,
        chunks: &[DmaSegment],
        timeout_us: u64,
    ) -> Result<usize, StorageError> {
        self.tag = self.tag.wrapping_add(1);
        let length: usize = chunks.iter().map(|s| s.len).sum();
        let length = u32::try_from(length).map_err(|_| StorageError::Usb(Error::BadTransfer))?;
        self.send_cbw(xhci, &cbw(self.tag, length, direction, 0, cdb))?;
        let endpoint = match direction {
            Direction::In => self.bulk_in,
            Direction::Out => self.bulk_out,
        };
        let mut queued = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let id = xhci.queue_transfer(
                self.slot_id,
                endpoint,
                direction,
                core::slice::from_ref(chunk),
            );
            match id {
                Ok(id) => queued.push(id),
                Err(e) => {
                    for id in queued {
                        xhci.cancel(id)?;
                    }
                    return Err(e.into());
                }
            }
        }
        let mut moved = 0;
        let mut failed = None;
        for id in queued {
            match xhci.wait(id, timeout_us) {
                Ok(n) => moved += n,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.read_csw(xhci)?;
        Ok(moved)
    }

    /// Sends a CBW whose signature is wrong: the device must STALL it (BOT 6.6.1). Returns
    /// what the bulk OUT transfer ended with (after a STALL the endpoint is recovered on
    /// both sides, so the next command works).
    pub fn send_invalid_cbw<H: Hal<Dma = D>>(
        &mut self,
        xhci: &mut Controller<H>,
    ) -> Result<usize, Error> {
        let mut wrapper = cbw(0, 0, Direction::Out, 0, &[0; 6]);
        wrapper[0..4].copy_from_slice(b"XXXX");
        self.send_cbw(xhci, &wrapper)
    }

    fn send_cbw<H: Hal<Dma = D>>(
        &mut self,
        xhci: &mut Controller<H>,
        wrapper: &[u8; CBW_SIZE],
    ) -> Result<usize, Error> {
        self.cbw.write_bytes(0, wrapper);
        let out = [DmaSegment {
            phys: self.cbw.phys(),
            len: CBW_SIZE,
        }];
        xhci.transfer(
            self.slot_id,
            self.bulk_out,
            Direction::Out,
            &out,
            WRAPPER_TIMEOUT_US,
        )
    }

    fn read_csw<H: Hal<Dma = D>>(&mut self, xhci: &mut Controller<H>) -> Result<u32, StorageError> {
        let status = [DmaSegment {
            phys: self.csw.phys(),
            len: CSW_SIZE,
        }];
        let n = xhci.transfer(
            self.slot_id,
            self.bulk_in,
            Direction::In,
            &status,
            WRAPPER_TIMEOUT_US,
        )?;
        let mut bytes = [0u8; CSW_SIZE];
        self.csw.read_bytes(0, &mut bytes);
        csw(&bytes[..n.min(CSW_SIZE)], self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csw_is_checked() {
        let mut s = [0u8; 13];
        s[0..4].copy_from_slice(b"USBS");
        s[4..8].copy_from_slice(&9u32.to_le_bytes());
        s[8..12].copy_from_slice(&12u32.to_le_bytes());
        assert_eq!(csw(&s, 9), Ok(12));
        assert_eq!(csw(&s, 8), Err(StorageError::BadCsw));
        assert_eq!(csw(&s[..12], 9), Err(StorageError::BadCsw));
        s[12] = 1;
        assert_eq!(csw(&s, 9), Err(StorageError::CommandFailed));
        s[12] = 7;
        assert_eq!(csw(&s, 9), Err(StorageError::PhaseError));
        s[0] = b'X';
        assert_eq!(csw(&s, 9), Err(StorageError::BadCsw));
    }

    #[test]
    fn scsi_data_is_decoded_and_short_data_refused() {
        assert_eq!(capacity(&[0, 0, 0x7f, 0xff, 0, 0, 2, 0]), Ok((0x8000, 512)));
        assert_eq!(capacity(&[0; 7]), Err(StorageError::ShortData));
        let mut inq = [0u8; 36];
        inq[8..16].copy_from_slice(b"QEMU \"\x01 ");
        assert_eq!(inquiry_vendor(&inq).unwrap(), "QEMU ??");
        assert_eq!(inquiry_vendor(&inq[..15]), Err(StorageError::ShortData));
    }
}
