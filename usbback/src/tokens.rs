//! The host's names for the requests it holds (tokens).

use alloc::vec::Vec;

use crate::DeviceId;

/// Which request each token names. A token is its slot's index and the slot's generation,
/// so a completion finds its request without a search, a token from an earlier use of the
/// slot names nothing, and once the table has grown to the most requests ever held at once,
/// issuing and taking tokens allocates nothing.
#[derive(Default)]
pub(crate) struct Tokens {
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_use: usize,
}

#[derive(Clone, Copy)]
struct Slot {
    generation: u32,
    /// The frontend and request id, while the token is out.
    owner: Option<(DeviceId, u16)>,
    /// The request is an interrupt or isochronous transfer.
    periodic: bool,
}

impl Tokens {
    /// A token for request `rid` of `id` (an interrupt or isochronous transfer when
    /// `periodic`), until [`Tokens::take`] takes it back.
    pub(crate) fn issue(&mut self, id: DeviceId, rid: u16, periodic: bool) -> u64 {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                owner: None,
                periodic: false,
            });
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.owner = Some((id, rid));
        slot.periodic = periodic;
        self.in_use += 1;
        u64::from(slot.generation) << 32 | u64::from(index)
    }

    /// The request `token` names, which it names no more; `None` for a token not out.
    pub(crate) fn take(&mut self, token: u64) -> Option<(DeviceId, u16)> {
        let index = token as u32;
        let slot = self.slots.get_mut(index as usize)?;
        if u64::from(slot.generation) != token >> 32 {
            return None;
        }
        let owner = slot.owner.take()?;
        self.free.push(index);
        self.in_use -= 1;
        Some(owner)
    }

    /// Whether `token` names an interrupt or isochronous transfer, whose completion
    /// [`crate::Backend::host_events`] answers first; false for a token not out.
    pub(crate) fn is_periodic(&self, token: u64) -> bool {
        self.slots.get(token as u32 as usize).is_some_and(|slot| {
            u64::from(slot.generation) == token >> 32 && slot.owner.is_some() && slot.periodic
        })
    }

    /// Tokens out.
    pub(crate) fn len(&self) -> usize {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::abi::DomId;

    #[test]
    fn a_token_names_its_request_once_and_a_reused_slot_gets_a_new_name() {
        let id = DeviceId {
            frontend: DomId(3),
            devid: 0,
        };
        let mut t = Tokens::default();
        let a = t.issue(id, 7, false);
        let b = t.issue(id, 8, true);
        assert!(!t.is_periodic(a) && t.is_periodic(b));
        assert_ne!(a, b);
        assert_eq!(t.len(), 2);
        assert_eq!(t.take(a), Some((id, 7)));
        assert_eq!(t.take(a), None, "taken already");
        let c = t.issue(id, 9, false);
        assert_ne!(c, a, "the slot is reused under a new generation");
        assert_eq!(c as u32, a as u32);
        assert_eq!(t.take(a), None, "the old name names nothing");
        assert_eq!(t.take(u64::MAX), None);
        assert_eq!((t.take(b), t.take(c)), (Some((id, 8)), Some((id, 9))));
        assert!(
            !t.is_periodic(b),
            "a token taken back names nothing periodic"
        );
        assert_eq!(t.len(), 0);
        // Slots are reused: no growth past the most held at once.
        for _ in 0..100 {
            let x = t.issue(id, 1, false);
            t.take(x);
        }
        assert_eq!(t.slots.len(), 2);
    }
}
