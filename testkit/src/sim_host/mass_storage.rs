//! Mass storage: Bulk-Only Transport (USB MSC BOT 1.0) with a SCSI disk (SPC/SBC).

use usb::mass_storage::{
    BULK_ONLY_RESET, CBW_SIGNATURE, CBW_SIZE, CSW_FAILED, CSW_PASSED, CSW_PHASE_ERROR,
    CSW_SIGNATURE, CSW_SIZE, GET_MAX_LUN, INQUIRY, MODE_SENSE_6, READ_10, READ_CAPACITY_10,
    REQUEST_SENSE, TEST_UNIT_READY, WRITE_10,
};

use super::*;

/// Bytes per logical block of [`MassStorage`].
pub const BLOCK_SIZE: usize = 512;
pub(super) const MSC_BULK_IN: u8 = 0x81;
pub(super) const MSC_BULK_OUT: u8 = 0x02;
/// Sense key ILLEGAL REQUEST.
pub(super) const ILLEGAL_REQUEST: u8 = 0x05;
// Additional sense codes.
pub(super) const INVALID_COMMAND_OPERATION_CODE: u8 = 0x20;
pub(super) const LBA_OUT_OF_RANGE: u8 = 0x21;
pub(super) const INVALID_FIELD_IN_CDB: u8 = 0x24;
/// MODE SENSE page code for all pages.
pub(super) const ALL_PAGES: u8 = 0x3f;

/// Where the Bulk-Only Transport is (BOT §5, figure 1).
enum BotState {
    /// Waiting for a CBW on bulk OUT.
    Command,
    /// Sending the data stage; `data` is already cut to dCBWDataTransferLength.
    DataIn {
        tag: u32,
        data: Vec<u8>,
        sent: usize,
        expected: usize,
        status: u8,
    },
    /// Receiving the data stage; `write` is the disk range it goes to, if any.
    DataOut {
        tag: u32,
        buf: Vec<u8>,
        received: usize,
        expected: usize,
        write: Option<core::ops::Range<usize>>,
        status: u8,
    },
    /// The CSW is ready on bulk IN.
    Status([u8; CSW_SIZE]),
}

/// What a SCSI command did when it was received.
struct Command {
    status: u8,
    /// Data to send (cut to the allocation length).
    data: Vec<u8>,
    /// The disk range a WRITE fills from the data stage.
    write: Option<core::ops::Range<usize>>,
}

/// A USB flash disk: one LUN over an in-memory disk of 512-byte blocks, high speed.
pub struct MassStorage {
    disk: Vec<u8>,
    state: BotState,
    /// Sense key, additional sense code: what REQUEST SENSE reports about the last failure.
    sense: (u8, u8),
}

pub(super) fn csw(tag: u32, residue: usize, status: u8) -> [u8; CSW_SIZE] {
    let mut c = [0; CSW_SIZE];
    c[0..4].copy_from_slice(&CSW_SIGNATURE.to_le_bytes());
    c[4..8].copy_from_slice(&tag.to_le_bytes());
    let residue = u32::try_from(residue).unwrap_or(u32::MAX);
    c[8..12].copy_from_slice(&residue.to_le_bytes());
    c[12] = status;
    c
}

impl MassStorage {
    /// A disk of `blocks` zeroed blocks (at least one).
    pub fn new(blocks: usize) -> MassStorage {
        MassStorage {
            disk: vec![0; blocks.max(1) * BLOCK_SIZE],
            state: BotState::Command,
            sense: (0, 0),
        }
    }

    /// The disk image, to check what the guest wrote.
    pub fn disk(&self) -> &[u8] {
        &self.disk
    }

    /// The disk image, to put data there for the guest to read.
    pub fn disk_mut(&mut self) -> &mut [u8] {
        &mut self.disk
    }

    fn good(&mut self, data: Vec<u8>, allocation: usize) -> Command {
        self.sense = (0, 0);
        let mut data = data;
        data.truncate(allocation);
        Command {
            status: CSW_PASSED,
            data,
            write: None,
        }
    }

    fn fail(&mut self, asc: u8) -> Command {
        self.sense = (ILLEGAL_REQUEST, asc);
        Command {
            status: CSW_FAILED,
            data: Vec::new(),
            write: None,
        }
    }

    /// The disk bytes of READ(10)/WRITE(10) `cb`, when they are on the disk.
    fn blocks(&self, cb: &[u8; 16]) -> Option<core::ops::Range<usize>> {
        let lba = u64::from(u32::from_be_bytes([cb[2], cb[3], cb[4], cb[5]]));
        let count = u64::from(u16::from_be_bytes([cb[7], cb[8]]));
        let start = usize::try_from(lba.checked_mul(BLOCK_SIZE as u64)?).ok()?;
        let len = usize::try_from(count * BLOCK_SIZE as u64).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.disk.len()).then_some(start..end)
    }

    /// Executes a SCSI command block (zero-padded to 16 bytes).
    fn scsi(&mut self, cb: &[u8; 16]) -> Command {
        match cb[0] {
            TEST_UNIT_READY => self.good(Vec::new(), 0),
            REQUEST_SENSE => {
                // Fixed format sense data (SPC-3 §4.5.3).
                let mut s = vec![0; 18];
                s[0] = 0x70;
                s[2] = self.sense.0;
                s[7] = 10;
                s[12] = self.sense.1;
                self.good(s, usize::from(cb[4]))
            }
            INQUIRY if cb[1] & 1 != 0 => self.fail(INVALID_FIELD_IN_CDB),
            INQUIRY => {
                // Direct access block device, SPC-3, response data format 2.
                let mut d = vec![0, 0, 5, 2, 31, 0, 0, 0];
                d.extend_from_slice(b"usbdom  ");
                d.extend_from_slice(b"Sim disk        ");
                d.extend_from_slice(b"0.1 ");
                self.good(d, usize::from(u16::from_be_bytes([cb[3], cb[4]])))
            }
            MODE_SENSE_6 if cb[2] & 0x3f == ALL_PAGES => {
                // Header only: medium type 0, not write protected, no block descriptor.
                self.good(vec![3, 0, 0, 0], usize::from(cb[4]))
            }
            MODE_SENSE_6 => self.fail(INVALID_FIELD_IN_CDB),
            READ_CAPACITY_10 => {
                let last = u32::try_from(self.disk.len() / BLOCK_SIZE - 1).unwrap_or(u32::MAX);
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
                self.good(d, 8)
            }
            READ_10 => match self.blocks(cb) {
                Some(r) => {
                    let data = self.disk[r].to_vec();
                    let len = data.len();
                    self.good(data, len)
                }
                None => self.fail(LBA_OUT_OF_RANGE),
            },
            WRITE_10 => match self.blocks(cb) {
                Some(r) => {
                    let mut c = self.good(Vec::new(), 0);
                    c.write = Some(r);
                    c
                }
                None => self.fail(LBA_OUT_OF_RANGE),
            },
            _ => self.fail(INVALID_COMMAND_OPERATION_CODE),
        }
    }

    /// A CBW arrived: runs its command and sets up the data stage the host announced.
    fn command_block(&mut self, cbw: &[u8]) -> Handshake<()> {
        let word = |i: usize| u32::from_le_bytes([cbw[i], cbw[i + 1], cbw[i + 2], cbw[i + 3]]);
        // A CBW that is not valid and meaningful (BOT §6.2) is answered with STALL, as
        // QEMU's usb-storage does; LUN 0 is the only one.
        if cbw.len() != CBW_SIZE || word(0) != CBW_SIGNATURE || cbw[13] != 0 {
            return Handshake::Stall;
        }
        let cb_len = usize::from(cbw[14]);
        if !(1..=16).contains(&cb_len) {
            return Handshake::Stall;
        }
        let tag = word(4);
        let expected = usize::try_from(word(8)).unwrap_or(usize::MAX);
        let is_in = cbw[12] & 0x80 != 0;
        let mut cb = [0; 16];
        cb[..cb_len].copy_from_slice(&cbw[15..15 + cb_len]);
        let c = self.scsi(&cb);
        // The host decides the data stage (BOT §6.7, the thirteen cases): a command whose
        // data goes the other way, or a write larger than announced, is a phase error.
        self.state = if expected == 0 {
            let status = if c.write.as_ref().is_some_and(|r| !r.is_empty()) {
                CSW_PHASE_ERROR
            } else {
                c.status
            };
            BotState::Status(csw(tag, 0, status))
        } else if is_in {
            let status = if c.write.is_some() {
                CSW_PHASE_ERROR
            } else {
                c.status
            };
            let mut data = c.data;
            data.truncate(expected);
            BotState::DataIn {
                tag,
                data,
                sent: 0,
                expected,
                status,
            }
        } else {
            let (write, status) = match c.write {
                Some(r) if r.len() <= expected => (Some(r), c.status),
                Some(_) => (None, CSW_PHASE_ERROR),
                None if !c.data.is_empty() => (None, CSW_PHASE_ERROR),
                None => (None, c.status),
            };
            BotState::DataOut {
                tag,
                buf: Vec::new(),
                received: 0,
                expected,
                write,
                status,
            }
        };
        Handshake::Ack(())
    }
}

impl DeviceModel for MassStorage {
    fn device_descriptor(&self) -> Vec<u8> {
        device_descriptor(0x0200, [0, 0, 0], 64, 0x0001)
    }

    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        (index == 0).then(|| {
            configuration_descriptor(
                0x80,
                250,
                &[
                    &interface_descriptor(0, 2, [8, 6, 0x50]),
                    &endpoint_descriptor(MSC_BULK_IN, TransferType::Bulk, 512, 0),
                    &endpoint_descriptor(MSC_BULK_OUT, TransferType::Bulk, 512, 0),
                ],
            )
        })
    }

    fn string(&self, index: u8) -> Option<&str> {
        model_string(index, "Sim flash disk", "000000000001")
    }

    fn control(&mut self, setup: &SetupPacket, _data: &[u8]) -> Handshake<Vec<u8>> {
        match (setup.request_type, setup.request) {
            (0x21, BULK_ONLY_RESET) if setup.value == 0 && setup.index == 0 => {
                self.state = BotState::Command;
                Handshake::Ack(Vec::new())
            }
            (0xa1, GET_MAX_LUN) if setup.value == 0 && setup.index == 0 => Handshake::Ack(vec![0]),
            _ => Handshake::Stall,
        }
    }

    fn data_in(&mut self, endpoint: u8, max_len: usize) -> Handshake<Vec<u8>> {
        if endpoint != MSC_BULK_IN {
            return Handshake::Stall;
        }
        match &mut self.state {
            BotState::DataIn {
                tag,
                data,
                sent,
                expected,
                status,
            } => {
                let n = (data.len() - *sent).min(max_len);
                let chunk = data[*sent..*sent + n].to_vec();
                *sent += n;
                // A short packet ends the data stage early (BOT §6.7.2); the residue says
                // how much of the announced length was not sent.
                if *sent == *expected || n < max_len {
                    self.state = BotState::Status(csw(*tag, *expected - *sent, *status));
                }
                Handshake::Ack(chunk)
            }
            BotState::Status(c) => {
                let c = c.to_vec();
                self.state = BotState::Command;
                Handshake::Ack(c)
            }
            BotState::Command | BotState::DataOut { .. } => Handshake::Stall,
        }
    }

    fn data_out(&mut self, endpoint: u8, data: &[u8]) -> Handshake<()> {
        if endpoint != MSC_BULK_OUT {
            return Handshake::Stall;
        }
        match &mut self.state {
            BotState::Command => self.command_block(data),
            BotState::DataOut {
                tag,
                buf,
                received,
                expected,
                write,
                status,
            } => {
                if data.len() > *expected - *received {
                    return Handshake::Stall;
                }
                *received += data.len();
                let used = write.as_ref().map_or(0, |r| r.len());
                // Only what the write needs is kept: the host chose the announced length.
                let keep = used.saturating_sub(buf.len()).min(data.len());
                buf.extend_from_slice(&data[..keep]);
                if *received == *expected {
                    if let Some(r) = write.take() {
                        self.disk[r].copy_from_slice(buf);
                    }
                    self.state = BotState::Status(csw(*tag, *expected - used, *status));
                }
                Handshake::Ack(())
            }
            BotState::DataIn { .. } | BotState::Status(_) => Handshake::Stall,
        }
    }

    fn reset(&mut self) {
        self.state = BotState::Command;
        self.sense = (0, 0);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
