//! PCI configuration space: addressing (legacy ports and ECAM), header decoding, BAR sizing,
//! the capability list and the MSI-X capability. Access goes through [`ConfigSpace`], so the
//! walk is tested here on a synthetic bus.

use heapless::Vec;

/// A bus/device/function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device, 0..32.
    pub dev: u8,
    /// Function, 0..8.
    pub func: u8,
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

impl Bdf {
    /// The 0xCF8 address of `offset` (dword-aligned).
    pub fn legacy_address(self, offset: u16) -> u32 {
        0x8000_0000
            | u32::from(self.bus) << 16
            | u32::from(self.dev) << 11
            | u32::from(self.func) << 8
            | u32::from(offset & 0xfc)
    }

    /// The offset of `offset` inside an ECAM window that starts at bus 0.
    pub fn ecam_offset(self, offset: u16) -> u64 {
        u64::from(self.bus) << 20
            | u64::from(self.dev) << 15
            | u64::from(self.func) << 12
            | u64::from(offset & 0xffc)
    }
}

/// 32-bit configuration access.
pub trait ConfigSpace {
    /// Reads the dword at `offset` (dword-aligned).
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the dword at `offset`.
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32);

    /// Reads a word.
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }
    /// Reads a byte.
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        (self.read32(bdf, offset & !3) >> ((offset & 3) * 8)) as u8
    }
    /// Writes a word (read-modify-write of its dword).
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, offset & !3);
        let new = (old & !(0xffff << shift)) | (u32::from(value) << shift);
        self.write32(bdf, offset & !3, new);
    }
}

/// Offsets in the type 0/1 header.
pub mod reg {
    /// Vendor and device id.
    pub const ID: u16 = 0x00;
    /// Command (low word) and status (high word).
    pub const COMMAND: u16 = 0x04;
    /// Status.
    pub const STATUS: u16 = 0x06;
    /// Revision (low byte) and class code.
    pub const CLASS: u16 = 0x08;
    /// Header type.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Secondary bus number of a bridge.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Capabilities pointer.
    pub const CAP_PTR: u16 = 0x34;
    /// Interrupt line.
    pub const INTERRUPT_LINE: u16 = 0x3c;
}

/// Command register: memory space decoding.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: legacy INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: a capability list exists.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Capability id of MSI.
pub const CAP_MSI: u8 = 0x05;
/// Capability id of MSI-X.
pub const CAP_MSIX: u8 = 0x11;
/// Class code (class, subclass, prog-if) of an xHCI controller.
pub const CLASS_XHCI: u32 = 0x0c_03_30;

/// The identifying part of a function's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class, subclass and programming interface.
    pub class: u32,
    /// Header type without the multi-function bit.
    pub header_type: u8,
    /// Whether the device has more than one function.
    pub multifunction: bool,
}

/// Reads a function's header, or `None` when nothing answers there.
pub fn header(cfg: &mut impl ConfigSpace, bdf: Bdf) -> Option<Header> {
    let id = cfg.read32(bdf, reg::ID);
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let ht = cfg.read8(bdf, reg::HEADER_TYPE);
    Some(Header {
        vendor,
        device: (id >> 16) as u16,
        class: cfg.read32(bdf, reg::CLASS) >> 8,
        header_type: ht & 0x7f,
        multifunction: ht & 0x80 != 0,
    })
}

/// Most functions [`scan`] reports.
pub const MAX_FUNCTIONS: usize = 64;

/// Every function reachable from bus 0 through PCI-PCI bridges, in bus order. Each bus is
/// scanned at most once, whatever the bridges claim.
pub fn scan(cfg: &mut impl ConfigSpace) -> Vec<(Bdf, Header), MAX_FUNCTIONS> {
    let mut found = Vec::new();
    let mut seen = [false; 256];
    let mut pending: Vec<u8, 32> = Vec::new();
    let _ = pending.push(0);
    while let Some(bus) = pending.pop() {
        if core::mem::replace(&mut seen[usize::from(bus)], true) {
            continue;
        }
        for dev in 0..32 {
            for func in 0..8 {
                let bdf = Bdf { bus, dev, func };
                let Some(h) = header(cfg, bdf) else {
                    if func == 0 {
                        break;
                    }
                    continue;
                };
                if h.header_type == 1 {
                    let secondary = cfg.read8(bdf, reg::SECONDARY_BUS);
                    if secondary != 0 {
                        let _ = pending.push(secondary);
                    }
                }
                let _ = found.push((bdf, h));
                if func == 0 && !h.multifunction {
                    break;
                }
            }
        }
    }
    found.sort_unstable_by_key(|(b, _)| *b);
    found
}

/// A decoded base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// Memory space.
    Memory {
        /// Base address (0 when firmware left it unassigned).
        base: u64,
        /// Size in bytes.
        size: u64,
        /// 64-bit BAR (uses the next BAR slot too).
        is_64: bool,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O space.
    Io {
        /// Base port.
        base: u32,
        /// Size in ports.
        size: u32,
    },
}

/// Reads and sizes BAR `index` (0..6) of a type 0 function. Memory decoding is switched off
/// while the all-ones pattern is in the BAR so the device never claims a bogus range.
pub fn read_bar(cfg: &mut impl ConfigSpace, bdf: Bdf, index: u8) -> Option<Bar> {
    if index > 5 {
        return None;
    }
    let off = reg::BAR0 + u16::from(index) * 4;
    let cmd = cfg.read16(bdf, reg::COMMAND);
    cfg.write16(bdf, reg::COMMAND, cmd & !(COMMAND_MEMORY | 1));
    let low = cfg.read32(bdf, off);
    cfg.write32(bdf, off, 0xffff_ffff);
    let low_mask = cfg.read32(bdf, off);
    cfg.write32(bdf, off, low);
    let result = if low & 1 == 1 {
        // I/O BARs decode 16 address bits.
        let size = (!(low_mask & !3)).wrapping_add(1) & 0xffff;
        (size != 0).then_some(Bar::Io {
            base: low & !3,
            size,
        })
    } else {
        let is_64 = (low >> 1) & 3 == 2;
        let prefetchable = low & 8 != 0;
        let (high, high_mask) = if is_64 && index < 5 {
            let high = cfg.read32(bdf, off + 4);
            cfg.write32(bdf, off + 4, 0xffff_ffff);
            let high_mask = cfg.read32(bdf, off + 4);
            cfg.write32(bdf, off + 4, high);
            (high, high_mask)
        } else {
            (0, if is_64 { 0 } else { 0xffff_ffff })
        };
        let mask = u64::from(high_mask) << 32 | u64::from(low_mask & !0xf);
        let size = (!mask).wrapping_add(1);
        let base = u64::from(high) << 32 | u64::from(low & !0xf);
        (mask != 0 && size != 0).then_some(Bar::Memory {
            base,
            size,
            is_64,
            prefetchable,
        })
    };
    cfg.write16(bdf, reg::COMMAND, cmd);
    result
}

/// The offset of the first capability with `id`, walking at most 48 links (a looping list
/// ends the walk).
pub fn find_capability(cfg: &mut impl ConfigSpace, bdf: Bdf, id: u8) -> Option<u8> {
    if cfg.read16(bdf, reg::STATUS) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = cfg.read8(bdf, reg::CAP_PTR) & !3;
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let word = cfg.read16(bdf, u16::from(at));
        if word as u8 == id {
            return Some(at);
        }
        at = ((word >> 8) as u8) & !3;
    }
    None
}

/// Where a function's MSI-X table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msix {
    /// Offset of the capability.
    pub cap: u8,
    /// Table entries.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the pending-bit array in that BAR.
    pub pba_offset: u32,
}

/// MSI-X message control: enable.
pub const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X message control: function mask.
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// Reads the MSI-X capability, if the function has one.
pub fn msix(cfg: &mut impl ConfigSpace, bdf: Bdf) -> Option<Msix> {
    let cap = find_capability(cfg, bdf, CAP_MSIX)?;
    let control = cfg.read16(bdf, u16::from(cap) + 2);
    let table = cfg.read32(bdf, u16::from(cap) + 4);
    let pba = cfg.read32(bdf, u16::from(cap) + 8);
    Some(Msix {
        cap,
        table_size: (control & 0x7ff) + 1,
        table_bar: (table & 7) as u8,
        table_offset: table & !7,
        pba_bar: (pba & 7) as u8,
        pba_offset: pba & !7,
    })
}

/// Why a function's MSI-X table cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixTableError {
    /// The BAR indicator names no memory BAR (BIR 6 and 7 are reserved; or an I/O BAR).
    NotMemory,
    /// Firmware left that BAR unassigned.
    Unassigned,
    /// The table runs past the BAR's end.
    OutsideBar,
}

impl MsixTableError {
    /// The name in `event=msix_unusable reason=…`.
    pub fn name(self) -> &'static str {
        match self {
            MsixTableError::NotMemory => "table_bar_not_memory",
            MsixTableError::Unassigned => "table_bar_unassigned",
            MsixTableError::OutsideBar => "table_outside_bar",
        }
    }
}

/// Where MSI-X table of `msix` lies in physical memory: `(address, length)`. Any BAR may hold
/// it (PCI 3.0 6.8.2.4; xHCIs have it in BAR0, but nothing requires that). The table is read
/// from the function's own BAR, checked to fit inside it.
pub fn msix_table(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    msix: &Msix,
) -> Result<(u64, u64), MsixTableError> {
    let Some(Bar::Memory { base, size, .. }) = read_bar(cfg, bdf, msix.table_bar) else {
        return Err(MsixTableError::NotMemory);
    };
    if base == 0 {
        return Err(MsixTableError::Unassigned);
    }
    let len = u64::from(msix.table_size) * crate::msi::MSIX_ENTRY_SIZE as u64;
    let end = u64::from(msix.table_offset)
        .checked_add(len)
        .ok_or(MsixTableError::OutsideBar)?;
    if end > size {
        return Err(MsixTableError::OutsideBar);
    }
    Ok((base + u64::from(msix.table_offset), len))
}

/// Sets MSI-X enable and function mask in the capability's message control.
pub fn set_msix_control(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    msix: &Msix,
    enable: bool,
    function_mask: bool,
) {
    let at = u16::from(msix.cap) + 2;
    let mut control = cfg.read16(bdf, at) & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
    if enable {
        control |= MSIX_ENABLE;
    }
    if function_mask {
        control |= MSIX_FUNCTION_MASK;
    }
    cfg.write16(bdf, at, control);
}

/// MSI message control: enable.
pub const MSI_ENABLE: u16 = 1 << 0;
/// MSI message control: 64-bit address capable.
pub const MSI_64BIT: u16 = 1 << 7;

/// Programs plain MSI with one message and enables it. The address and data are written
/// while MSI is disabled, which is MSI's only way of masking.
pub fn configure_msi(cfg: &mut impl ConfigSpace, bdf: Bdf, cap: u8, msg: crate::msi::Message) {
    let cap = u16::from(cap);
    // Disabled, one message (multiple message enable = 0).
    let control = cfg.read16(bdf, cap + 2) & !(MSI_ENABLE | 0x70);
    cfg.write16(bdf, cap + 2, control);
    cfg.write32(bdf, cap + 4, msg.address);
    let data_at = if control & MSI_64BIT != 0 {
        cfg.write32(bdf, cap + 8, 0);
        cap + 12
    } else {
        cap + 8
    };
    cfg.write16(bdf, data_at, msg.data as u16);
    cfg.write16(bdf, cap + 2, control | MSI_ENABLE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A bus of functions with config registers and BAR size masks.
    #[derive(Default)]
    struct FakeBus {
        regs: BTreeMap<(Bdf, u16), u32>,
        bar_masks: BTreeMap<(Bdf, u16), u32>,
    }

    impl FakeBus {
        fn add(&mut self, bdf: Bdf, vendor: u16, device: u16, class: u32, header_type: u8) {
            self.regs
                .insert((bdf, 0), u32::from(device) << 16 | u32::from(vendor));
            self.regs.insert((bdf, 8), class << 8 | 1);
            self.regs.insert((bdf, 0xc), u32::from(header_type) << 16);
        }
    }

    impl ConfigSpace for FakeBus {
        fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
            *self.regs.get(&(bdf, offset)).unwrap_or(&0xffff_ffff)
        }
        fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
            let v = match self.bar_masks.get(&(bdf, offset)) {
                Some(&mask) if value == 0xffff_ffff => {
                    let old = self.regs.get(&(bdf, offset)).copied().unwrap_or(0);
                    mask | (old & 0xf)
                }
                _ => value,
            };
            self.regs.insert((bdf, offset), v);
        }
    }

    fn bdf(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf { bus, dev, func }
    }

    #[test]
    fn addresses_follow_the_spec() {
        assert_eq!(bdf(0, 5, 0).legacy_address(0x10), 0x8000_2810);
        assert_eq!(bdf(1, 2, 3).ecam_offset(0x104), 0x0011_3104);
        assert_eq!(bdf(0, 5, 0).to_string(), "00:05.0");
    }

    #[test]
    fn scan_follows_bridges_and_functions() {
        let mut bus = FakeBus::default();
        bus.add(bdf(0, 0, 0), 0x8086, 0x29c0, 0x06_00_00, 0);
        bus.add(bdf(0, 3, 0), 0x1b36, 0x0001, 0x06_04_00, 1); // bridge to bus 1
        bus.regs.insert((bdf(0, 3, 0), 0x18), 0x0001_0100);
        bus.add(bdf(0, 31, 0), 0x8086, 0x2918, 0x06_01_00, 0x80); // multifunction
        bus.add(bdf(0, 31, 3), 0x8086, 0x2930, 0x0c_05_00, 0);
        bus.add(bdf(1, 0, 0), 0x1b36, 0x000d, CLASS_XHCI, 0);
        let found: std::vec::Vec<_> = scan(&mut bus)
            .into_iter()
            .map(|(b, h)| (b.to_string(), h.vendor, h.class))
            .collect();
        assert_eq!(
            found,
            [
                ("00:00.0".into(), 0x8086, 0x060000),
                ("00:03.0".into(), 0x1b36, 0x060400),
                ("00:1f.0".into(), 0x8086, 0x060100),
                ("00:1f.3".into(), 0x8086, 0x0c0500),
                ("01:00.0".into(), 0x1b36, CLASS_XHCI),
            ]
        );
    }

    #[test]
    fn a_bridge_loop_is_scanned_once() {
        let mut bus = FakeBus::default();
        bus.add(bdf(0, 1, 0), 0x1b36, 1, 0x06_04_00, 1);
        bus.regs.insert((bdf(0, 1, 0), 0x18), 0x0000_0000); // secondary 0: ignored
        bus.add(bdf(0, 2, 0), 0x1b36, 1, 0x06_04_00, 1);
        bus.regs.insert((bdf(0, 2, 0), 0x18), 0x0002_0200);
        bus.add(bdf(2, 0, 0), 0x1b36, 1, 0x06_04_00, 1);
        bus.regs.insert((bdf(2, 0, 0), 0x18), 0x0002_0202); // points back at bus 2
        assert_eq!(scan(&mut bus).len(), 3);
    }

    #[test]
    fn bars_are_sized_and_restored() {
        let mut bus = FakeBus::default();
        let x = bdf(0, 5, 0);
        bus.add(x, 0x1b36, 0x000d, CLASS_XHCI, 0);
        bus.regs.insert((x, 4), 0x0000_0006);
        bus.regs.insert((x, 0x10), 0xfebd_4004); // 64-bit memory BAR
        bus.regs.insert((x, 0x14), 0);
        bus.bar_masks.insert((x, 0x10), 0xffff_c000);
        bus.bar_masks.insert((x, 0x14), 0xffff_ffff);
        bus.regs.insert((x, 0x18), 0xc001); // I/O BAR of 32 ports at 0xc000
        bus.bar_masks.insert((x, 0x18), 0xffff_ffe0);
        assert_eq!(
            read_bar(&mut bus, x, 0),
            Some(Bar::Memory {
                base: 0xfebd_4000,
                size: 0x4000,
                is_64: true,
                prefetchable: false
            })
        );
        assert_eq!(bus.regs[&(x, 0x10)], 0xfebd_4004, "BAR restored");
        assert_eq!(bus.regs[&(x, 4)], 6, "command restored");
        assert_eq!(
            read_bar(&mut bus, x, 2),
            Some(Bar::Io {
                base: 0xc000,
                size: 32
            })
        );
        assert_eq!(read_bar(&mut bus, x, 6), None);
    }

    #[test]
    fn capabilities_are_found_and_loops_end() {
        let mut bus = FakeBus::default();
        let x = bdf(0, 5, 0);
        bus.add(x, 0x1b36, 0x000d, CLASS_XHCI, 0);
        bus.regs.insert((x, 4), 0x0010_0000); // status: capability list
        bus.regs.insert((x, 0x34), 0x90);
        bus.regs.insert((x, 0x90), 0x0000_a011 | (15 << 16)); // MSI-X, next 0xa0, 16 entries
        bus.regs.insert((x, 0x94), 0x0000_3000); // table in BAR0 at 0x3000
        bus.regs.insert((x, 0x98), 0x0000_3800);
        bus.regs.insert((x, 0xa0), 0x0000_9005); // MSI, next 0x90: a loop
        assert_eq!(find_capability(&mut bus, x, CAP_MSI), Some(0xa0));
        assert_eq!(
            msix(&mut bus, x),
            Some(Msix {
                cap: 0x90,
                table_size: 16,
                table_bar: 0,
                table_offset: 0x3000,
                pba_bar: 0,
                pba_offset: 0x3800
            })
        );
        assert_eq!(find_capability(&mut bus, x, 0x10), None, "the loop ends");
        let m = msix(&mut bus, x).unwrap();
        set_msix_control(&mut bus, x, &m, true, true);
        assert_eq!(bus.regs[&(x, 0x90)] >> 16, 0xc000 | 15);
        set_msix_control(&mut bus, x, &m, true, false);
        assert_eq!(bus.regs[&(x, 0x90)] >> 16, 0x8000 | 15);
    }

    #[test]
    fn an_msix_table_is_found_in_whichever_bar_holds_it() {
        let mut bus = FakeBus::default();
        let x = bdf(0, 5, 0);
        bus.add(x, 0x1b36, 0x000d, CLASS_XHCI, 0);
        bus.regs.insert((x, 0x10), 0xfebd_0004); // BAR0: 64-bit, 64 KiB (BAR1 its top half)
        bus.regs.insert((x, 0x14), 0);
        bus.bar_masks.insert((x, 0x10), 0xffff_0000);
        bus.bar_masks.insert((x, 0x14), 0xffff_ffff);
        bus.regs.insert((x, 0x18), 0xfebe_0000); // BAR2: 32-bit, 8 KiB
        bus.bar_masks.insert((x, 0x18), 0xffff_e000);
        bus.regs.insert((x, 0x1c), 0xc001); // BAR3: I/O
        bus.bar_masks.insert((x, 0x1c), 0xffff_ffe0);
        bus.regs.insert((x, 0x20), 0); // BAR4: memory, unassigned
        bus.bar_masks.insert((x, 0x20), 0xffff_f000);
        let table = |bar: u8, offset: u32, entries: u16| Msix {
            cap: 0x90,
            table_size: entries,
            table_bar: bar,
            table_offset: offset,
            pba_bar: bar,
            pba_offset: 0,
        };
        let mut at = |m: Msix| msix_table(&mut bus, x, &m);
        assert_eq!(at(table(0, 0x3000, 16)), Ok((0xfebd_3000, 256)));
        assert_eq!(at(table(2, 0x1000, 8)), Ok((0xfebe_1000, 128)));
        // 2048 entries (32 KiB) at 0 do not fit BAR2's 8 KiB, nor one entry at its last byte.
        assert_eq!(at(table(2, 0, 2048)), Err(MsixTableError::OutsideBar));
        assert_eq!(at(table(2, 0x1ff8, 1)), Err(MsixTableError::OutsideBar));
        assert_eq!(at(table(3, 0, 1)), Err(MsixTableError::NotMemory));
        assert_eq!(at(table(4, 0, 1)), Err(MsixTableError::Unassigned));
        assert_eq!(at(table(6, 0, 1)), Err(MsixTableError::NotMemory));
    }

    #[test]
    fn msi_is_programmed_while_disabled_then_enabled() {
        let mut bus = FakeBus::default();
        let x = bdf(0, 2, 0);
        bus.regs
            .insert((x, 0xa0), (MSI_64BIT as u32 | 0x0e) << 16 | 0x05); // 64-bit, MMC=7
        bus.regs.insert((x, 0xac), 0);
        configure_msi(
            &mut bus,
            x,
            0xa0,
            crate::msi::Message::fixed(0, 0x41).unwrap(),
        );
        assert_eq!(bus.regs[&(x, 0xa4)], 0xfee0_0000);
        assert_eq!(bus.regs[&(x, 0xa8)], 0);
        assert_eq!(bus.regs[&(x, 0xac)] & 0xffff, 0x41);
        assert_eq!(
            bus.regs[&(x, 0xa0)] >> 16,
            u32::from(MSI_64BIT | 0x0e | MSI_ENABLE)
        );
    }
}
