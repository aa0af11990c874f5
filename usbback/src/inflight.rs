//! A frontend's requests in flight, by request id.

use alloc::vec::Vec;

use crate::InFlight;

/// At most a ring's worth of requests (a frontend cannot have more out without overrunning
/// its ring), in one allocation made when the frontend connects: taking a request in and
/// answering it neither allocates nor shifts the others.
pub(crate) struct InFlightTable {
    entries: Vec<(u16, InFlight)>,
}

impl InFlightTable {
    /// The table of a ring of `ring_size` entries.
    pub(crate) fn with_capacity(ring_size: u32) -> Self {
        InFlightTable {
            entries: Vec::with_capacity(ring_size as usize),
        }
    }

    /// Adds request `rid`, which the caller checked is not in flight.
    pub(crate) fn insert(&mut self, rid: u16, f: InFlight) {
        self.entries.push((rid, f));
    }

    pub(crate) fn contains(&self, rid: u16) -> bool {
        self.entries.iter().any(|e| e.0 == rid)
    }

    pub(crate) fn get_mut(&mut self, rid: u16) -> Option<&mut InFlight> {
        self.entries
            .iter_mut()
            .find(|e| e.0 == rid)
            .map(|e| &mut e.1)
    }

    /// Takes request `rid` out; the last entry takes its place.
    pub(crate) fn remove(&mut self, rid: u16) -> Option<InFlight> {
        let at = self.entries.iter().position(|e| e.0 == rid)?;
        Some(self.entries.swap_remove(at).1)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &InFlight> {
        self.entries.iter().map(|e| &e.1)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every request, taken out.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = InFlight> + '_ {
        self.entries.drain(..).map(|e| e.1)
    }
}
