//! A simulated device's USB 2.0 chapter 9 side, as the host sees it: its address,
//! configuration, alternate settings and halted endpoints, the standard requests answered
//! from the model's descriptors, and its transfers in flight.

use super::*;

pub(super) struct InFlight<P> {
    pub(super) transfer: Transfer<P>,
    pub(super) address: u8,
    /// Polls left before it is started.
    pub(super) wait: u32,
    /// A standard request the host carried out when it was asked (SET_CONFIGURATION,
    /// SET_INTERFACE, CLEAR_FEATURE): only the device's answer is still to come.
    pub(super) carried_out: bool,
}

pub(super) struct SimDevice<P> {
    pub(super) info: DeviceInfo,
    pub(super) model: Box<dyn DeviceModel>,
    /// bConfigurationValue, 0 when unconfigured.
    pub(super) configuration: u8,
    pub(super) alternates: BTreeMap<u8, u8>,
    pub(super) endpoints: Vec<EndpointInfo>,
    pub(super) halted: BTreeSet<u8>,
    pub(super) stall_next: BTreeSet<u8>,
    pub(super) latency: u32,
    pub(super) in_flight: Vec<InFlight<P>>,
}

impl<P: SharedPage> SimDevice<P> {
    pub(super) fn endpoint(&self, address: u8) -> Option<EndpointInfo> {
        self.endpoints
            .iter()
            .find(|e| e.address == address)
            .copied()
    }

    /// The configuration descriptor whose bConfigurationValue is `value`, among those offered.
    pub(super) fn find_configuration(&self, value: u8) -> Option<Vec<u8>> {
        let count = self.model.device_descriptor().get(17).copied().unwrap_or(0);
        offered(count)
            .filter_map(|i| self.model.configuration_descriptor(i))
            .find(|c| c.get(5) == Some(&value))
    }

    /// SET_CONFIGURATION, with `vet` shown the classes of the configuration's interfaces.
    pub(super) fn configure(&mut self, value: u8, vet: &mut Vet<'_>) -> Result<(), TransferError> {
        let endpoints = if value == 0 {
            Vec::new()
        } else {
            let config = self.find_configuration(value).ok_or(TransferError::Stall)?;
            if !vet(&classes(&config).ok_or(TransferError::Invalid)?) {
                return Err(TransferError::Refused);
            }
            active_endpoints(&config, &BTreeMap::new())
        };
        self.configuration = value;
        self.alternates.clear();
        self.endpoints = endpoints;
        self.halted.clear();
        Ok(())
    }

    /// SET_INTERFACE, with `vet` shown the alternate setting's class.
    pub(super) fn select_alternate(
        &mut self,
        interface: u8,
        alternate: u8,
        vet: &mut Vet<'_>,
    ) -> Result<(), TransferError> {
        let config = self
            .find_configuration(self.configuration)
            .filter(|c| self.configuration != 0 && has_interface(c, interface, alternate))
            .ok_or(TransferError::Stall)?;
        let class = descriptors(&config)
            .find(|d| d[1] == INTERFACE && d.len() >= 9 && d[2] == interface && d[3] == alternate)
            .map(|d| d[5])
            .ok_or(TransferError::Stall)?;
        if !vet(&ClassSet::of(class)) {
            return Err(TransferError::Refused);
        }
        self.alternates.insert(interface, alternate);
        self.endpoints = active_endpoints(&config, &self.alternates);
        // SET_INTERFACE resets the interface's endpoints (USB 2.0 §9.4.10).
        let endpoints = &self.endpoints;
        self.halted.retain(|a| {
            endpoints
                .iter()
                .any(|e| e.address == *a && e.interface != interface)
        });
        Ok(())
    }

    pub(super) fn clear_halt(&mut self, address: u8) -> Result<(), TransferError> {
        if address & 0x7f != 0 && self.endpoint(address).is_none() {
            return Err(TransferError::Invalid);
        }
        self.halted.remove(&address);
        Ok(())
    }

    /// Its answer to standard request `setup`, which the host carried out already: it
    /// completes as transfer `token` behind the transfers queued on the default pipe before
    /// it, after the device's latency, as a real device's would.
    pub(super) fn queue_answer(&mut self, token: u64, setup: [u8; 8]) {
        self.in_flight.push(InFlight {
            transfer: Transfer {
                token,
                endpoint: 0,
                direction: Direction::Out,
                transfer_type: TransferType::Control,
                setup: Some(setup),
                segments: TransferSegments::new(),
                iso_packets: Vec::new(),
                start_frame: None,
            },
            address: 0,
            wait: self.latency,
            carried_out: true,
        });
    }

    pub(super) fn reset(&mut self) {
        self.configuration = 0;
        self.alternates.clear();
        self.endpoints.clear();
        self.halted.clear();
        self.stall_next.clear();
        self.model.reset();
    }

    /// Checks a transfer before it is queued: everything the guest chose is bounded here.
    pub(super) fn check(&self, t: &Transfer<P>) -> Result<(), TransferError> {
        let fits = t
            .segments
            .iter()
            .all(|s| usize::from(s.offset) + usize::from(s.len) <= PAGE_SIZE);
        if t.endpoint > 15 || !fits {
            return Err(TransferError::Invalid);
        }
        if t.endpoint == 0 {
            let setup = t.setup.ok_or(TransferError::Invalid)?;
            let is_in = t.direction == Direction::In;
            if t.transfer_type != TransferType::Control
                || SetupPacket::decode(&setup).is_in() != is_in
            {
                return Err(TransferError::Invalid);
            }
            return Ok(());
        }
        // The models have neither isochronous nor extra control endpoints.
        let endpoint = self.endpoint(address_of(t)).ok_or(TransferError::Invalid)?;
        match t.transfer_type {
            TransferType::Bulk | TransferType::Interrupt
                if t.setup.is_none() && endpoint.transfer_type == t.transfer_type =>
            {
                Ok(())
            }
            _ => Err(TransferError::Invalid),
        }
    }

    /// Carries out one transfer; `None` when the device NAKed and it stays in flight.
    pub(super) fn run(&mut self, t: &Transfer<P>) -> Option<Result<usize, TransferError>> {
        if t.endpoint == 0 {
            return self.run_control(t);
        }
        let address = address_of(t);
        if self.endpoint(address).is_none() {
            // The configuration or alternate setting changed under it.
            return Some(Err(TransferError::Shutdown));
        }
        if self.stall_next.remove(&address) {
            self.halted.insert(address);
        }
        if self.halted.contains(&address) {
            return Some(Err(TransferError::Stall));
        }
        let len = t.length();
        let answer = match t.direction {
            Direction::Out => self
                .model
                .data_out(address, &gather(&t.segments, len))
                .map(|()| Ok(len)),
            Direction::In => self
                .model
                .data_in(address, len)
                .map(|data| deliver(t, &data)),
        };
        match answer {
            Handshake::Ack(result) => Some(result),
            Handshake::Nak => None,
            Handshake::Stall => {
                self.halted.insert(address);
                Some(Err(TransferError::Stall))
            }
        }
    }

    pub(super) fn run_control(&mut self, t: &Transfer<P>) -> Option<Result<usize, TransferError>> {
        let setup = SetupPacket::decode(&t.setup?);
        // A STALL on the default pipe is a protocol stall: the next SETUP clears it.
        if self.stall_next.remove(&0) {
            return Some(Err(TransferError::Stall));
        }
        let stage = usize::from(setup.length).min(t.length());
        let out = if setup.is_in() {
            Vec::new()
        } else {
            gather(&t.segments, stage)
        };
        let answer = match self.standard(&setup) {
            Some(a) => a,
            None => self.model.control(&setup, &out),
        };
        match answer {
            Handshake::Ack(mut data) if setup.is_in() => {
                data.truncate(usize::from(setup.length));
                Some(deliver(t, &data))
            }
            Handshake::Ack(_) => Some(Ok(stage)),
            Handshake::Nak => None,
            Handshake::Stall => Some(Err(TransferError::Stall)),
        }
    }

    /// The standard requests addressed to the device, or to an interface or endpoint for
    /// the host's own state; `None` passes the request to the model.
    pub(super) fn standard(&mut self, setup: &SetupPacket) -> Option<Handshake<Vec<u8>>> {
        if !setup.is_standard() {
            return None;
        }
        let low = setup.value as u8;
        let ok = |r: Result<(), TransferError>| match r {
            Ok(()) => Handshake::Ack(Vec::new()),
            Err(_) => Handshake::Stall,
        };
        let answer = match (setup.request_type, setup.request) {
            (0x80, GET_STATUS) => Handshake::Ack(vec![0, 0]),
            (0x81, GET_STATUS) => match self.interface_alternate(setup.index) {
                Some(_) => Handshake::Ack(vec![0, 0]),
                None => Handshake::Stall,
            },
            (0x82, GET_STATUS) => {
                let address = setup.index as u8;
                if setup.index > 0xff || (address & 0x7f != 0 && self.endpoint(address).is_none()) {
                    Handshake::Stall
                } else {
                    Handshake::Ack(vec![u8::from(self.halted.contains(&address)), 0])
                }
            }
            (0x02, CLEAR_FEATURE) if setup.value == ENDPOINT_HALT && setup.index <= 0xff => {
                ok(self.clear_halt(setup.index as u8))
            }
            (0x80, GET_DESCRIPTOR) => match setup.descriptor_type() {
                DEVICE => Handshake::Ack(self.model.device_descriptor()),
                CONFIGURATION => match self.model.configuration_descriptor(low) {
                    Some(c) => Handshake::Ack(c),
                    None => Handshake::Stall,
                },
                STRING => self.string_descriptor(low),
                _ => return None,
            },
            (0x80, GET_CONFIGURATION) => Handshake::Ack(vec![self.configuration]),
            // By bRequest alone, as a lax device decodes it.
            (_, SET_CONFIGURATION) if !setup.is_in() && setup.value <= 0xff => {
                ok(self.configure(low, &mut |_| true))
            }
            (0x81, GET_INTERFACE) => match self.interface_alternate(setup.index) {
                Some(alternate) => Handshake::Ack(vec![alternate]),
                None => Handshake::Stall,
            },
            (_, SET_INTERFACE) if !setup.is_in() && setup.index <= 0xff && setup.value <= 0xff => {
                ok(self.select_alternate(setup.index as u8, low, &mut |_| true))
            }
            _ => return None,
        };
        Some(answer)
    }

    /// The alternate setting of interface `index` of the current configuration.
    pub(super) fn interface_alternate(&self, index: u16) -> Option<u8> {
        let interface = u8::try_from(index).ok()?;
        let alternate = self.alternates.get(&interface).copied().unwrap_or(0);
        let config = self.find_configuration(self.configuration)?;
        (self.configuration != 0 && has_interface(&config, interface, alternate))
            .then_some(alternate)
    }

    /// String descriptor `index`: 0 is the table of languages, the others UTF-16LE text.
    pub(super) fn string_descriptor(&self, index: u8) -> Handshake<Vec<u8>> {
        if index == 0 {
            let [lo, hi] = LANGID_EN_US.to_le_bytes();
            return Handshake::Ack(vec![4, STRING, lo, hi]);
        }
        let Some(text) = self.model.string(index) else {
            return Handshake::Stall;
        };
        let mut d = vec![0, STRING];
        // bLength is one byte: at most 126 UTF-16 units.
        for unit in text.encode_utf16().take(126) {
            d.extend_from_slice(&unit.to_le_bytes());
        }
        d[0] = d.len() as u8;
        Handshake::Ack(d)
    }
}
