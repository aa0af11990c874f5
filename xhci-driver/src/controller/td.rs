//! Transfer Descriptors the controller owns and what their Transfer Events mean (xHCI
//! 4.10.1, 4.11.2.5, 6.4.2.1): a pure function of the TD and the event, tested on synthetic
//! TRBs, as crosvm tests its `process_td_results`.

use alloc::vec::Vec;

use xhci::ring::trb::event::CompletionCode;

use super::{Error, IsoOutcome, TransferId};
use crate::transfer::{TrbInfo, TrbRole};

/// A completion code as the number the controller wrote.
pub(super) fn code_of(c: Result<CompletionCode, u8>) -> u8 {
    match c {
        Ok(c) => c as u8,
        Err(raw) => raw,
    }
}

/// How a TD ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TdEnd {
    /// Bytes done (for an isochronous TD, of all its packets), or why it failed.
    pub(super) result: Result<usize, Error>,
    /// The error halted the endpoint (4.10.2.1): it must be reset before it runs again.
    pub(super) halts: bool,
}

/// A transfer the controller owns: the TRBs of its TDs and what has been reported of them.
pub(super) struct PendingTd {
    pub(super) id: TransferId,
    /// Address of each TRB and what it is for.
    pub(super) trbs: Vec<(u64, TrbInfo)>,
    pub(super) kind: TdKind,
    /// Control: the bytes of a Data Stage a short packet ended, awaiting the Status Stage.
    pub(super) short: Option<usize>,
    /// Isochronous: each packet's outcome once reported.
    pub(super) packets: Vec<Option<IsoOutcome>>,
    /// Isochronous: the frame it was queued in.
    pub(super) start_frame: u16,
}

/// What a TD carries, which decides how its Transfer Events end it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TdKind {
    Normal,
    Control,
    Isochronous,
}

impl PendingTd {
    /// Whether one of its TRBs is at `at`.
    pub(super) fn holds(&self, at: u64) -> bool {
        self.trbs.iter().any(|&(a, _)| a == at)
    }

    /// The address of its last TRB.
    pub(super) fn last(&self) -> u64 {
        self.trbs.last().map_or(0, |&(a, _)| a)
    }

    /// Data bytes of the TRBs of `packet` before the one at `at`, plus that one's length
    /// less `residue`.
    fn bytes_to(&self, at: u64, residue: u32, packet: u16) -> usize {
        let mut done = 0usize;
        for &(a, info) in self.trbs.iter().filter(|(_, i)| i.packet == packet) {
            if info.role != TrbRole::Data {
                if a == at {
                    break;
                }
                continue;
            }
            if a == at {
                done += info.len.saturating_sub(residue) as usize;
                break;
            }
            done += info.len as usize;
        }
        done
    }

    /// Takes the Transfer Event for its TRB at `at` with `code` and the TRB Transfer Length
    /// `residue` left (xHCI 4.10.1.1, 6.4.2.1). `None` while the TD goes on: a control
    /// transfer whose Data Stage ended short is done at its Status Stage, an isochronous
    /// transfer when each packet has its outcome. On Success or Short Packet the bytes done
    /// are those of the data TRBs before `at` (of the same packet) plus `at`'s length less
    /// the residue. Other codes end it with an error; a Missed Service Error also names the
    /// packets skipped before it.
    pub(super) fn take_event(
        &mut self,
        at: u64,
        code: Result<CompletionCode, u8>,
        residue: u32,
    ) -> Option<TdEnd> {
        let ok = matches!(
            code,
            Ok(CompletionCode::Success | CompletionCode::ShortPacket)
        );
        let error = match code {
            Ok(CompletionCode::StallError) => Error::Stall,
            Ok(CompletionCode::BabbleDetectedError) => Error::Babble,
            code => Error::Transfer(code_of(code)),
        };
        let last = at == self.last();
        let result = match self.kind {
            TdKind::Normal => {
                if ok {
                    Ok(self.bytes_to(at, residue, 0))
                } else {
                    Err(error)
                }
            }
            TdKind::Control => {
                if ok && !last {
                    if code == Ok(CompletionCode::ShortPacket) {
                        self.short = Some(self.bytes_to(at, residue, 0));
                    }
                    return None;
                }
                let all = self.bytes_to(self.last(), 0, 0);
                if ok {
                    Ok(self.short.unwrap_or(all))
                } else {
                    Err(error)
                }
            }
            TdKind::Isochronous => {
                let packet = self
                    .trbs
                    .iter()
                    .find(|&&(a, _)| a == at)
                    .map_or(0, |&(_, info)| info.packet);
                let outcome = IsoOutcome {
                    actual_length: if ok {
                        self.bytes_to(at, residue, packet)
                    } else {
                        0
                    },
                    status: if ok { Ok(()) } else { Err(error) },
                };
                // A Missed Service Error names the last TD skipped: those before it
                // without an outcome were missed too.
                for p in &mut self.packets[..usize::from(packet)] {
                    if p.is_none() && code == Ok(CompletionCode::MissedServiceError) {
                        *p = Some(outcome);
                    }
                }
                if let Some(p) = self.packets.get_mut(usize::from(packet)) {
                    p.get_or_insert(outcome);
                }
                if !last && self.packets.iter().any(Option::is_none) {
                    return None;
                }
                Ok(self
                    .packets
                    .iter()
                    .map(|p| p.map_or(0, |p| p.actual_length))
                    .sum())
            }
        };
        let halts = self.kind != TdKind::Isochronous
            && matches!(
                code,
                Ok(CompletionCode::StallError
                    | CompletionCode::BabbleDetectedError
                    | CompletionCode::UsbTransactionError
                    | CompletionCode::SplitTransactionError)
            );
        Some(TdEnd { result, halts })
    }

    /// Each packet's outcome; one never reported was missed.
    pub(super) fn packet_outcomes(&self) -> Vec<IsoOutcome> {
        self.packets
            .iter()
            .map(|p| {
                p.unwrap_or(IsoOutcome {
                    actual_length: 0,
                    status: Err(Error::Transfer(CompletionCode::MissedServiceError as u8)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use CompletionCode::{
        BabbleDetectedError, DataBufferError, MissedServiceError, ShortPacket, StallError, Success,
        UsbTransactionError,
    };

    const BASE: u64 = 0x4000;

    /// The address of the TD's `i`th TRB.
    fn at(i: usize) -> u64 {
        BASE + 16 * i as u64
    }

    fn data(len: u32, packet: u16) -> TrbInfo {
        TrbInfo {
            len,
            role: TrbRole::Data,
            packet,
        }
    }

    fn stage() -> TrbInfo {
        TrbInfo {
            len: 0,
            role: TrbRole::Stage,
            packet: 0,
        }
    }

    fn td(kind: TdKind, trbs: &[TrbInfo]) -> PendingTd {
        let packets = trbs.iter().map(|t| t.packet).max().unwrap_or(0);
        PendingTd {
            id: TransferId(7),
            trbs: trbs.iter().enumerate().map(|(i, t)| (at(i), *t)).collect(),
            kind,
            short: None,
            packets: match kind {
                TdKind::Isochronous => vec![None; usize::from(packets) + 1],
                _ => Vec::new(),
            },
            start_frame: 0,
        }
    }

    fn ended(result: Result<usize, Error>, halts: bool) -> Option<TdEnd> {
        Some(TdEnd { result, halts })
    }

    #[test]
    fn a_normal_td_counts_the_trbs_before_a_short_packet_and_its_length_less_the_residue() {
        let trbs = [data(4096, 0), data(4096, 0), data(1000, 0)];
        let mut t = td(TdKind::Normal, &trbs);
        assert_eq!(
            t.take_event(at(1), Ok(ShortPacket), 1000),
            ended(Ok(4096 + 3096), false)
        );
        let mut t = td(TdKind::Normal, &trbs);
        assert_eq!(t.take_event(at(2), Ok(Success), 0), ended(Ok(9192), false));
        // A residue larger than the TRB (a controller's garbage) counts as nothing done.
        let mut t = td(TdKind::Normal, &trbs);
        assert_eq!(
            t.take_event(at(0), Ok(ShortPacket), 5000),
            ended(Ok(0), false)
        );
    }

    #[test]
    fn errors_end_a_td_and_those_the_spec_says_halt_the_endpoint_do() {
        for (code, error, halts) in [
            (StallError, Error::Stall, true),
            (BabbleDetectedError, Error::Babble, true),
            (
                UsbTransactionError,
                Error::Transfer(UsbTransactionError as u8),
                true,
            ),
            (
                DataBufferError,
                Error::Transfer(DataBufferError as u8),
                false,
            ),
        ] {
            let mut t = td(TdKind::Normal, &[data(512, 0)]);
            assert_eq!(
                t.take_event(at(0), Ok(code), 512),
                ended(Err(error), halts),
                "{code:?}"
            );
        }
        // A code xHCI does not define is kept as the number the controller wrote.
        let mut t = td(TdKind::Normal, &[data(512, 0)]);
        assert_eq!(
            t.take_event(at(0), Err(200), 0),
            ended(Err(Error::Transfer(200)), false)
        );
    }

    #[test]
    fn a_control_transfer_whose_data_stage_ended_short_ends_at_its_status_stage() {
        let trbs = [stage(), data(255, 0), stage()];
        let mut t = td(TdKind::Control, &trbs);
        assert_eq!(t.take_event(at(1), Ok(ShortPacket), 237), None);
        assert_eq!(t.take_event(at(2), Ok(Success), 0), ended(Ok(18), false));
        // Without a short packet: the whole Data Stage.
        let mut t = td(TdKind::Control, &trbs);
        assert_eq!(t.take_event(at(2), Ok(Success), 0), ended(Ok(255), false));
        // A STALL in the Data Stage ends it there and halts EP0.
        let mut t = td(TdKind::Control, &trbs);
        assert_eq!(
            t.take_event(at(1), Ok(StallError), 255),
            ended(Err(Error::Stall), true)
        );
    }

    #[test]
    fn an_isochronous_transfer_ends_when_each_packet_has_its_outcome() {
        // Three packets, the second in two TRBs.
        let trbs = [data(192, 0), data(100, 1), data(92, 1), data(192, 2)];
        let mut t = td(TdKind::Isochronous, &trbs);
        assert_eq!(t.take_event(at(0), Ok(Success), 0), None);
        assert_eq!(t.take_event(at(2), Ok(ShortPacket), 42), None);
        assert_eq!(
            t.take_event(at(3), Ok(Success), 0),
            ended(Ok(192 + 150 + 192), false)
        );
        let lengths: Vec<usize> = t
            .packet_outcomes()
            .iter()
            .map(|p| p.actual_length)
            .collect();
        assert_eq!(lengths, [192, 150, 192]);
    }

    #[test]
    fn a_missed_service_error_names_the_packets_skipped_before_it_and_never_halts() {
        let trbs = [data(192, 0), data(192, 1), data(192, 2)];
        let missed = Err(Error::Transfer(MissedServiceError as u8));
        let mut t = td(TdKind::Isochronous, &trbs);
        assert_eq!(
            t.take_event(at(1), Ok(MissedServiceError), 0),
            None,
            "the last packet is still to come"
        );
        assert_eq!(t.take_event(at(2), Ok(Success), 0), ended(Ok(192), false));
        let statuses: Vec<_> = t.packet_outcomes().iter().map(|p| p.status).collect();
        assert_eq!(statuses, [missed, missed, Ok(())]);
        // A transfer whose last packet's event never came reports it missed too.
        let mut t = td(TdKind::Isochronous, &trbs);
        assert_eq!(t.take_event(at(0), Ok(Success), 0), None);
        assert_eq!(t.packet_outcomes()[2].status, missed);
    }
}
