//! The fake's registers as the driver sees them ([`Hal`]): reads, and writes with their side
//! effects (port resets, Run/Stop and Host Controller Reset, doorbells, the 64-bit latches).

use super::*;

impl Hal for &FakeXhci {
    type Dma = Memory;

    fn read32(&self, offset: usize) -> u32 {
        if let Some(at) = self.reset_at.take() {
            self.reset_to_read_us.set(Some(self.clock.get() - at));
        }
        self.reg(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        assert!(offset < BAR_SIZE && offset % 4 == 0);
        if (PORTSC1..PORTSC1 + 0x20).contains(&offset) && offset % 0x10 == 0 {
            return self.write_portsc(offset, value);
        }
        if offset == USBLEGSUP + 4 {
            // The SMI status bits are RW1C.
            let old = self.reg(offset);
            self.regs.borrow_mut()[offset / 4] =
                (value & !(0b111 << 29)) | (old & !value & (0b111 << 29));
            return;
        }
        self.regs.borrow_mut()[offset / 4] = value;
        if offset == USBLEGSUP && value & 1 << 24 != 0 && self.firmware_lets_go.get() {
            self.regs.borrow_mut()[offset / 4] &= !(1 << 16);
        }
        if offset == ERDP {
            self.erdp_writes.set(self.erdp_writes.get() + 1);
        }
        match offset {
            USBCMD => {
                let halted = u32::from(value & 1 == 0);
                let mut regs = self.regs.borrow_mut();
                regs[USBSTS / 4] = (regs[USBSTS / 4] & !1) | halted;
                // Host Controller Reset completes at once here, and clears the errors.
                if value & 2 != 0 {
                    regs[USBSTS / 4] &= !(1 << 2 | 1 << 12);
                    self.reset_at.set(Some(self.clock.get()));
                }
                regs[USBCMD / 4] &= !2;
            }
            // Writes of the high dword latch 64-bit registers, as on QEMU.
            o if o == CRCR + 4 => {
                let crcr = self.reg64(CRCR);
                let mut s = self.state.borrow_mut();
                s.cmd_dequeue = crcr & !0x3f;
                s.cmd_cycle = crcr & 1 != 0;
            }
            o if o == ERSTBA + 4 => {
                let erst = self.reg64(ERSTBA);
                let mut s = self.state.borrow_mut();
                s.event_base = self.arena.read64(erst);
                s.event_trbs = self.arena.read32(erst + 8) as usize;
                s.event_enqueue = 0;
                s.event_cycle = true;
            }
            DOORBELLS => self.run_commands(),
            o if (DOORBELLS + 4..DOORBELLS + 0x100).contains(&o) && value == 1 => {
                let slot = ((o - DOORBELLS) / 4) as u8;
                match self.control_delay_us.get() {
                    0 => self.run_transfers(slot),
                    delay => self
                        .deferred
                        .borrow_mut()
                        .push((self.clock.get() + delay, slot)),
                }
            }
            o if (DOORBELLS + 4..DOORBELLS + 0x100).contains(&o) => {
                self.run_bulk(((o - DOORBELLS) / 4) as u8, value as u8)
            }
            _ => {}
        }
    }

    fn mmio_len(&self) -> usize {
        BAR_SIZE
    }

    fn dma_alloc(&mut self, bytes: usize, align: usize) -> Option<Memory> {
        self.arena.alloc(bytes, align.max(64))
    }

    fn now_micros(&self) -> u64 {
        // Time passes as the driver looks at the clock, so deadlines arrive.
        let now = self.clock.get() + 1;
        self.clock.set(now);
        let due: Vec<u8> = {
            let mut deferred = self.deferred.borrow_mut();
            let due = deferred
                .iter()
                .filter(|d| d.0 <= now)
                .map(|d| d.1)
                .collect();
            deferred.retain(|d| d.0 > now);
            due
        };
        for slot in due {
            self.run_transfers(slot);
        }
        now
    }
}
