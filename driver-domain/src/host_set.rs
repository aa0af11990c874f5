//! Every xHCI controller of the driver domain as one [`UsbHost`] for usbback.
//!
//! Laptops pass two or three controllers to the USB VM (an Intel PCH with Thunderbolt's,
//! AMD's two or three). Each controller names its devices with its own ids and its root
//! ports' buses from its own first bus (`2k - 1` and `2k` for the `k`-th, as Linux numbers
//! them), so bus ids differ between controllers but ids do not. The set gives each device an
//! id of its own, never reused, remembers which controller and which id there it stands
//! for, and routes every call on a device to that controller. Completions carry usbback's
//! tokens and pass through unchanged.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use usbback::host::{DeviceInfo, HostEvent, Transfer, TransferError, UsbHost, Vet};

/// Controllers driven at most: laptops have two or three.
pub const MAX_CONTROLLERS: usize = 4;

/// The Linux bus number of controller `index`'s USB 2 ports (its USB 3 ports are on the
/// next): 1, 3, 5, …
pub fn first_bus(index: usize) -> u8 {
    // MAX_CONTROLLERS keeps it far below 255.
    (2 * index + 1) as u8
}

/// Several hosts as one.
pub struct HostSet<H> {
    members: Vec<H>,
    /// The set's id of each device present: (member, the member's id).
    ids: BTreeMap<u32, (usize, u32)>,
    /// The reverse of `ids`.
    by_member: BTreeMap<(usize, u32), u32>,
    next_id: u32,
}

impl<H> Default for HostSet<H> {
    fn default() -> Self {
        HostSet {
            members: Vec::new(),
            ids: BTreeMap::new(),
            by_member: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl<H> HostSet<H> {
    /// Adds a host, its devices present given the set's ids; returns its index.
    pub fn push<P>(&mut self, host: H) -> usize
    where
        H: UsbHost<P>,
    {
        let index = self.members.len();
        for d in host.devices() {
            self.outer(index, d.id);
        }
        self.members.push(host);
        index
    }

    /// How many hosts there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Host `index`.
    pub fn member(&mut self, index: usize) -> Option<&mut H> {
        self.members.get_mut(index)
    }

    /// Every host, in order.
    pub fn members(&mut self) -> impl Iterator<Item = &mut H> + '_ {
        self.members.iter_mut()
    }

    /// The set's id of device `id` of host `index`, given one the first time it is named.
    fn outer(&mut self, index: usize, id: u32) -> u32 {
        if let Some(&outer) = self.by_member.get(&(index, id)) {
            return outer;
        }
        let outer = self.next_id;
        // A u32 of plug-ins: wrapping would take billions of them.
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.ids.insert(outer, (index, id));
        self.by_member.insert((index, id), outer);
        outer
    }

    /// The host and its own id for the set's device `id`.
    fn route(&mut self, id: u32) -> Option<(&mut H, u32)> {
        let (index, inner) = *self.ids.get(&id)?;
        Some((self.members.get_mut(index)?, inner))
    }

    /// Puts the set's ids into `events`, all handed out by host `index`: a device attached
    /// gets one (or the one it got when the host was added), a device detached gives its up.
    fn adopt(&mut self, index: usize, events: &mut [HostEvent]) {
        for e in events {
            match e {
                HostEvent::Attached(info) => info.id = self.outer(index, info.id),
                HostEvent::Detached { id, .. } => {
                    let outer = self.outer(index, *id);
                    self.ids.remove(&outer);
                    self.by_member.remove(&(index, *id));
                    *id = outer;
                }
                HostEvent::Completed(_) => {}
            }
        }
    }
}

impl<P, H: UsbHost<P>> UsbHost<P> for HostSet<H> {
    fn devices(&self) -> Vec<DeviceInfo> {
        let mut all = Vec::new();
        for (index, h) in self.members.iter().enumerate() {
            // Every device has an id of the set's: those present when the host was added got
            // theirs then, the others with their Attached event, in the poll that listed them.
            all.extend(h.devices().into_iter().filter_map(|mut d| {
                d.id = *self.by_member.get(&(index, d.id))?;
                Some(d)
            }));
        }
        all
    }

    fn poll(&mut self, events: &mut Vec<HostEvent>) {
        for index in 0..self.members.len() {
            let from = events.len();
            self.members[index].poll(events);
            self.adopt(index, &mut events[from..]);
        }
    }

    fn submit(&mut self, device: u32, transfer: Transfer<P>) -> Result<(), TransferError> {
        let (h, inner) = self.route(device).ok_or(TransferError::NoDevice)?;
        h.submit(inner, transfer)
    }

    fn cancel(&mut self, device: u32, token: u64) -> bool {
        self.route(device)
            .is_some_and(|(h, inner)| h.cancel(inner, token))
    }

    fn set_configuration(
        &mut self,
        device: u32,
        value: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let (h, inner) = self.route(device).ok_or(TransferError::NoDevice)?;
        h.set_configuration(inner, value, token, vet)
    }

    fn set_interface(
        &mut self,
        device: u32,
        interface: u8,
        alternate: u8,
        token: u64,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let (h, inner) = self.route(device).ok_or(TransferError::NoDevice)?;
        h.set_interface(inner, interface, alternate, token, vet)
    }

    fn clear_halt(&mut self, device: u32, address: u8, token: u64) -> Result<(), TransferError> {
        let (h, inner) = self.route(device).ok_or(TransferError::NoDevice)?;
        h.clear_halt(inner, address, token)
    }

    fn reset(&mut self, device: u32) -> Result<(), TransferError> {
        let (h, inner) = self.route(device).ok_or(TransferError::NoDevice)?;
        h.reset(inner)
    }
}

#[cfg(test)]
mod tests;
