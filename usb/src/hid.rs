//! The HID class (HID 1.11) as far as a boot keyboard needs it: its codes, descriptors and
//! class requests. Used by the driver's keyboard self-test, the demo's VM and the simulated
//! keyboard alike.

/// bInterfaceClass HID.
pub const CLASS: u8 = 0x03;
/// bInterfaceSubClass of a boot interface.
pub const SUBCLASS_BOOT: u8 = 0x01;
/// bInterfaceProtocol of a keyboard.
pub const PROTOCOL_KEYBOARD: u8 = 0x01;

/// Descriptor type of the HID descriptor (HID 1.11 7.1).
pub const HID_DESCRIPTOR: u8 = 0x21;
/// Descriptor type of the report descriptor.
pub const REPORT_DESCRIPTOR: u8 = 0x22;

/// GET_REPORT (HID 1.11 7.2).
pub const GET_REPORT: u8 = 0x01;
/// GET_IDLE.
pub const GET_IDLE: u8 = 0x02;
/// GET_PROTOCOL.
pub const GET_PROTOCOL: u8 = 0x03;
/// SET_REPORT.
pub const SET_REPORT: u8 = 0x09;
/// SET_IDLE: the report rate in the high byte of wValue, 0 for only on change.
pub const SET_IDLE: u8 = 0x0a;
/// SET_PROTOCOL.
pub const SET_PROTOCOL: u8 = 0x0b;
/// SET_PROTOCOL wValue of the boot protocol, whose keyboard report is the fixed 8 bytes of
/// HID 1.11 appendix B.1.
pub const BOOT_PROTOCOL: u16 = 0;
/// GET_REPORT/SET_REPORT report type Input (high byte of wValue).
pub const REPORT_INPUT: u8 = 1;
/// Report type Output.
pub const REPORT_OUTPUT: u8 = 2;
