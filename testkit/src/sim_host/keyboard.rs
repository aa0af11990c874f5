//! HID boot keyboard (HID 1.11).

use usb::hid::{
    GET_IDLE, GET_PROTOCOL, GET_REPORT, HID_DESCRIPTOR, REPORT_DESCRIPTOR, REPORT_INPUT,
    REPORT_OUTPUT, SET_IDLE, SET_PROTOCOL, SET_REPORT,
};

use super::*;

pub(super) const KBD_INTERRUPT_IN: u8 = 0x81;
/// Keyboard usage ErrorRollOver: more keys pressed than a boot report holds.
pub(super) const ERROR_ROLL_OVER: u8 = 0x01;

/// The boot keyboard report descriptor (HID 1.11 appendix E.6).
pub(super) const KEYBOARD_REPORT_DESCRIPTOR: [u8; 63] = [
    0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, 0x05, 0x07, 0x19, 0xe0, 0x29, 0xe7, 0x15, 0x00, 0x25, 0x01,
    0x75, 0x01, 0x95, 0x08, 0x81, 0x02, 0x95, 0x01, 0x75, 0x08, 0x81, 0x01, 0x95, 0x05, 0x75, 0x01,
    0x05, 0x08, 0x19, 0x01, 0x29, 0x05, 0x91, 0x02, 0x95, 0x01, 0x75, 0x03, 0x91, 0x01, 0x95, 0x06,
    0x75, 0x08, 0x15, 0x00, 0x25, 0x65, 0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00, 0xc0,
];

/// A boot protocol keyboard: reports go out on interrupt IN 0x81 only once keys are
/// injected, so a pending transfer waits, as with a real keyboard.
pub struct Keyboard {
    reports: VecDeque<[u8; 8]>,
    /// The last report sent, which GET_REPORT returns.
    last: [u8; 8],
    /// 0 boot, 1 report protocol.
    protocol: u8,
    idle: u8,
    leds: u8,
}

impl Default for Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyboard {
    /// A keyboard with no key down, in report protocol (the HID power-on default).
    pub fn new() -> Keyboard {
        Keyboard {
            reports: VecDeque::new(),
            last: [0; 8],
            protocol: 1,
            idle: 0,
            leds: 0,
        }
    }

    /// Queues a raw 8-byte boot report (modifiers, reserved, six key usages).
    pub fn inject(&mut self, report: [u8; 8]) {
        self.reports.push_back(report);
    }

    /// Queues the report of `keys` (usage ids) held with `modifiers`; more than six keys is
    /// reported as ErrorRollOver, as a keyboard does.
    pub fn press(&mut self, modifiers: u8, keys: &[u8]) {
        let mut report = [0; 8];
        report[0] = modifiers;
        if keys.len() > 6 {
            report[2..].fill(ERROR_ROLL_OVER);
        } else {
            report[2..2 + keys.len()].copy_from_slice(keys);
        }
        self.inject(report);
    }

    /// Queues the report of every key up.
    pub fn release(&mut self) {
        self.inject([0; 8]);
    }

    /// Reports not yet taken by an interrupt IN transfer.
    pub fn pending_reports(&self) -> usize {
        self.reports.len()
    }

    /// The LED state the host last set (bit 0 Num Lock, 1 Caps Lock, 2 Scroll Lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// The protocol the host chose: 0 boot, 1 report.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    fn hid_descriptor() -> [u8; 9] {
        let [lo, hi] = (KEYBOARD_REPORT_DESCRIPTOR.len() as u16).to_le_bytes();
        [
            9,
            HID_DESCRIPTOR,
            0x11,
            0x01,
            0,
            1,
            REPORT_DESCRIPTOR,
            lo,
            hi,
        ]
    }
}

impl DeviceModel for Keyboard {
    fn device_descriptor(&self) -> Vec<u8> {
        device_descriptor(0x0110, [0, 0, 0], 8, 0x0002)
    }

    fn configuration_descriptor(&self, index: u8) -> Option<Vec<u8>> {
        (index == 0).then(|| {
            configuration_descriptor(
                0xa0,
                50,
                &[
                    &interface_descriptor(0, 1, [3, 1, 1]),
                    &Self::hid_descriptor(),
                    &endpoint_descriptor(KBD_INTERRUPT_IN, TransferType::Interrupt, 8, 10),
                ],
            )
        })
    }

    fn string(&self, index: u8) -> Option<&str> {
        model_string(index, "Sim keyboard", "000000000002")
    }

    fn control(&mut self, setup: &SetupPacket, data: &[u8]) -> Handshake<Vec<u8>> {
        if setup.index != 0 {
            return Handshake::Stall;
        }
        let high = setup.descriptor_type();
        match (setup.request_type, setup.request) {
            (0x81, GET_DESCRIPTOR) if high == REPORT_DESCRIPTOR => {
                Handshake::Ack(KEYBOARD_REPORT_DESCRIPTOR.to_vec())
            }
            (0x81, GET_DESCRIPTOR) if high == HID_DESCRIPTOR => {
                Handshake::Ack(Self::hid_descriptor().to_vec())
            }
            (0xa1, GET_REPORT) if high == REPORT_INPUT => Handshake::Ack(self.last.to_vec()),
            (0xa1, GET_IDLE) => Handshake::Ack(vec![self.idle]),
            (0xa1, GET_PROTOCOL) => Handshake::Ack(vec![self.protocol]),
            (0x21, SET_REPORT) if high == REPORT_OUTPUT && !data.is_empty() => {
                self.leds = data[0];
                Handshake::Ack(Vec::new())
            }
            (0x21, SET_IDLE) => {
                self.idle = high;
                Handshake::Ack(Vec::new())
            }
            (0x21, SET_PROTOCOL) if setup.value <= 1 => {
                self.protocol = setup.value as u8;
                Handshake::Ack(Vec::new())
            }
            _ => Handshake::Stall,
        }
    }

    fn data_in(&mut self, endpoint: u8, _max_len: usize) -> Handshake<Vec<u8>> {
        if endpoint != KBD_INTERRUPT_IN {
            return Handshake::Stall;
        }
        match self.reports.pop_front() {
            Some(r) => {
                self.last = r;
                Handshake::Ack(r.to_vec())
            }
            None => Handshake::Nak,
        }
    }

    fn data_out(&mut self, _endpoint: u8, _data: &[u8]) -> Handshake<()> {
        Handshake::Stall
    }

    fn reset(&mut self) {
        // What the host set goes back to its default; keys injected but not yet reported
        // are still held, so a test may press keys before the backend resets the device.
        let reports = core::mem::take(&mut self.reports);
        *self = Keyboard {
            reports,
            ..Keyboard::new()
        };
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
