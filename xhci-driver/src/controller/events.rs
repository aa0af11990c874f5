//! The Event Ring of Interrupter 0 (xHCI 4.9.4, 5.5.2): events taken and acknowledged,
//! Transfer Events (6.4.2.1) ending TDs, Port Status Change Events noted, controller
//! errors seen; and commands on the Command Ring, whose completions arrive there.

use log::debug;
use xhci::ring::trb::command;
use xhci::ring::trb::event::{self, CompletionCode};

use super::registers::{ERDP, ERDP_EHB, INTERRUPTER_0, RING_BYTES, USBSTS, USBSTS_HCE, USBSTS_HSE};
use super::td::code_of;
use super::{Completed, Controller, Error};
use crate::hal::Hal;

/// Commands complete in microseconds on real controllers; Address Device waits for a
/// SET_ADDRESS on the bus.
pub const COMMAND_TIMEOUT_US: u64 = 100_000;
/// Events taken before ERDP is written even though more wait: a quarter of the Event Ring,
/// so the controller always has room to write.
const ERDP_BATCH: u32 = (RING_BYTES / crate::ring::TRB_SIZE / 4) as u32;

impl<H: Hal> Controller<H> {
    /// Takes the next event, waiting until `until` (microseconds) for `what`, and moves
    /// ERDP past it.
    pub(super) fn next_event(
        &mut self,
        until: u64,
        what: &'static str,
    ) -> Result<event::Allowed, Error> {
        loop {
            if let Some(raw) = self.event_ring.pop() {
                self.unacknowledged += 1;
                if self.unacknowledged >= ERDP_BATCH || !self.event_ring.has_next() {
                    self.acknowledge_events();
                }
                match event::Allowed::try_from(raw) {
                    Ok(e) => return Ok(e),
                    Err(raw) => {
                        debug!(
                            "event=xhci_unknown_event trb_type={} dwords={raw:08x?}",
                            (raw[3] >> 10) & 0x3f
                        );
                        continue;
                    }
                }
            }
            let status = self.hal.read32(self.op() + USBSTS);
            if status & USBSTS_HSE != 0 {
                return Err(Error::HostSystemError);
            }
            if status & USBSTS_HCE != 0 {
                return Err(Error::HostControllerError);
            }
            if self.hal.now_micros() > until {
                return Err(Error::Timeout(what));
            }
            core::hint::spin_loop();
        }
    }

    /// Writes the Event Ring Dequeue Pointer (with Event Handler Busy cleared) past the
    /// events taken since it was last written (4.9.4): when the last event written so far
    /// is taken, or every [`ERDP_BATCH`] events, not once an event (each write is an MMIO
    /// write, a trap to the device model when the controller is emulated).
    fn acknowledge_events(&mut self) {
        if self.unacknowledged == 0 {
            return;
        }
        self.unacknowledged = 0;
        let ir = self.caps.rtsoff + INTERRUPTER_0;
        self.hal
            .write64(ir + ERDP, self.event_ring.dequeue_pointer() | ERDP_EHB);
    }

    /// Keeps what an event not waited for says.
    pub(super) fn keep_event(&mut self, e: event::Allowed) {
        match e {
            event::Allowed::PortStatusChange(p) => {
                if !self.port_changes.contains(&p.port_id()) {
                    self.port_changes.push(p.port_id());
                }
            }
            event::Allowed::TransferEvent(t) => self.transfer_event(&t),
            other => debug!("event=xhci_event_ignored trb={other:?}"),
        }
    }

    /// A Transfer Event (6.4.2.1) reports on the TRB at its TRB Pointer. With Success or
    /// Short Packet the bytes done are those of the TD's data TRBs before it plus its length
    /// less the residue the event reports; a control transfer whose Data Stage ended short
    /// is done only at its Status Stage; each isochronous packet is a TD of its own with its
    /// own outcome, the transfer done with its last. Other codes end the transfer with an
    /// error, and those that halt the endpoint (4.10.2.1) leave it for
    /// [`Controller::recover_halted`]. Stopped codes come from a Stop Endpoint and end
    /// nothing. An event for a TRB no pending TD holds (the IOC after a short packet already
    /// ended its TD) is dropped.
    fn transfer_event(&mut self, t: &event::TransferEvent) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.slot_id == t.slot_id()) else {
            return;
        };
        let Some(ep) = slot.endpoints.iter_mut().find(|e| e.dci == t.endpoint_id()) else {
            return;
        };
        let at = t.trb_pointer();
        let code = t.completion_code();
        if matches!(
            code,
            Ok(CompletionCode::Stopped
                | CompletionCode::StoppedLengthInvalid
                | CompletionCode::StoppedShortPacket)
        ) {
            ep.stopped_at = Some(at);
            return;
        }
        let Some(i) = ep.pending.iter().position(|td| td.holds(at)) else {
            return;
        };
        let Some(end) = ep.pending[i].take_event(at, code, t.trb_transfer_length()) else {
            return;
        };
        let td = ep.pending.remove(i);
        if i == 0 {
            ep.ring.complete(td.last());
        }
        if end.halts {
            ep.halted = true;
        }
        let packets = td.packet_outcomes();
        self.completions.push((
            td.id,
            Completed {
                result: end.result,
                packets,
                start_frame: td.start_frame,
            },
        ));
    }

    /// Takes every pending event without waiting (for the main loop, when the interrupt
    /// counter moved), then resets the endpoints a transfer error halted. Returns how many
    /// events there were, or the controller error that stops the controller
    /// ([`Controller::restart`] recovers from it).
    pub fn poll_events(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        loop {
            match self.next_event(0, "poll") {
                Ok(e) => {
                    self.keep_event(e);
                    n += 1;
                }
                Err(Error::Timeout(_)) => break,
                Err(e) => return Err(e),
            }
        }
        self.recover_halted()?;
        Ok(n)
    }

    /// The error USBSTS reports, if the controller failed: Host System Error or Host
    /// Controller Error. Neither interrupts, so the main loop looks now and then.
    pub fn error(&self) -> Option<Error> {
        let status = self.hal.read32(self.op() + USBSTS);
        if status & USBSTS_HSE != 0 {
            Some(Error::HostSystemError)
        } else if status & USBSTS_HCE != 0 {
            Some(Error::HostControllerError)
        } else {
            None
        }
    }

    /// Queues a command, rings the Host Controller doorbell and waits for its completion.
    pub(super) fn command(&mut self, trb: [u32; 4]) -> Result<event::CommandCompletion, Error> {
        let at = self.command_ring.push(trb)?;
        self.ring_doorbell(0, 0);
        let until = self.hal.now_micros() + COMMAND_TIMEOUT_US;
        loop {
            match self.next_event(until, "command")? {
                event::Allowed::CommandCompletion(c) if c.command_trb_pointer() == at => {
                    self.command_ring.complete(at);
                    return match c.completion_code() {
                        Ok(CompletionCode::Success) => Ok(c),
                        code => Err(Error::Command(code_of(code))),
                    };
                }
                other => self.keep_event(other),
            }
        }
    }

    /// A No Op Command: proves the Command Ring, the Event Ring and the doorbell.
    pub fn noop(&mut self) -> Result<(), Error> {
        self.command(command::Noop::new().into_raw()).map(|_| ())
    }
}
