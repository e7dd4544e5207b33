//! A 16550A UART (COM1 at 0x3F8), per the TI/National PC16550D datasheet.
//!
//! Transmission is immediate: a byte written to THR is on the host console
//! before the OUT retires, so LSR always reports THRE|TEMT. Received bytes
//! come from the machine (`push_input`) and wait in one queue; the first
//! 16 (FIFO mode) or 1 (character mode) of them are "in the receiver", the
//! rest are held back by an ideal flow-controlled line, so input is never
//! overrun. Loopback (MCR bit 4) is modelled, since Linux's 8250 probe uses it.
//!
//! `interrupt_pending()` is the IRQ line's level (IIR source gated by
//! MCR.OUT2); the machine drives GSI 4 from it after every exit.
//! Register access is byte-wide; a wider access is treated as a byte access.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::bus::{DeviceCtx, PortDevice};

pub const COM1_BASE: u16 = 0x3f8;
pub const UART_PORT_COUNT: u16 = 8;

// Register offsets.
const RBR_THR_DLL: u16 = 0;
const IER_DLM: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;

const IER_RDI: u8 = 0x01; // received data available
const IER_THRI: u8 = 0x02; // THR empty
const IER_MSI: u8 = 0x08; // modem status

const IIR_NO_INT: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

const LCR_DLAB: u8 = 0x80;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;

pub const LSR_DR: u8 = 0x01;
pub const LSR_THRE: u8 = 0x20;
pub const LSR_TEMT: u8 = 0x40;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

const FIFO_DEPTH: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uart16550 {
    base: u16,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    /// A THR-empty interrupt is pending (set on transmit and on enabling
    /// IER.THRI; cleared by reading IIR while it is the source, or writing THR).
    thr_ipending: bool,
    /// MSR delta bits 3:0, cleared when MSR is read.
    msr_delta: u8,
    rx: VecDeque<u8>,
}

impl Uart16550 {
    /// A UART at `base` in its reset state. The divisor starts at 12 (9600
    /// baud from a 1.8432 MHz clock), the value PC firmware leaves.
    pub fn new(base: u16) -> Self {
        Uart16550 {
            base,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: 12,
            fifo_enabled: false,
            thr_ipending: false,
            msr_delta: 0,
            rx: VecDeque::new(),
        }
    }

    /// Queue bytes arriving on the serial line.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.rx.extend(bytes);
    }

    /// Bytes received but not yet read by the guest.
    pub fn pending_input(&self) -> usize {
        self.rx.len()
    }

    /// Level of the UART's interrupt output as wired on a PC (through OUT2).
    pub fn interrupt_pending(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.interrupt_id() != IIR_NO_INT
    }

    /// The current baud-rate divisor latch.
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn fifo_depth(&self) -> usize {
        if self.fifo_enabled {
            FIFO_DEPTH
        } else {
            1
        }
    }

    /// Highest-priority pending source, in IIR bits 3:0 (receiver line status
    /// never occurs: no framing, parity or overrun errors are possible here).
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_ipending {
            IIR_THRI
        } else if self.ier & IER_MSI != 0 && self.msr_delta != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        }
    }

    /// CTS/DSR/RI/DCD. In loopback they are RTS/DTR/OUT1/OUT2; otherwise a
    /// connected, ready peer (QEMU's reset value with a chardev attached).
    fn modem_lines(&self) -> u8 {
        if !self.loopback() {
            return MSR_DCD | MSR_DSR | MSR_CTS;
        }
        let mut lines = 0;
        if self.mcr & MCR_RTS != 0 {
            lines |= MSR_CTS;
        }
        if self.mcr & MCR_DTR != 0 {
            lines |= MSR_DSR;
        }
        if self.mcr & MCR_OUT1 != 0 {
            lines |= MSR_RI;
        }
        if self.mcr & MCR_OUT2 != 0 {
            lines |= MSR_DCD;
        }
        lines
    }

    fn write_mcr(&mut self, value: u8) {
        let before = self.modem_lines();
        self.mcr = value & 0x1f;
        let after = self.modem_lines();
        let changed = before ^ after;
        // DCTS, DDSR, DDCD on any change; TERI only on RI's trailing edge.
        let mut delta = 0;
        if changed & MSR_CTS != 0 {
            delta |= 0x01;
        }
        if changed & MSR_DSR != 0 {
            delta |= 0x02;
        }
        if before & MSR_RI != 0 && after & MSR_RI == 0 {
            delta |= 0x04;
        }
        if changed & MSR_DCD != 0 {
            delta |= 0x08;
        }
        self.msr_delta |= delta;
    }

    fn read_reg(&mut self, reg: u16) -> u8 {
        match reg {
            RBR_THR_DLL if self.dlab() => self.divisor as u8,
            RBR_THR_DLL => self.rx.pop_front().unwrap_or(0),
            IER_DLM if self.dlab() => (self.divisor >> 8) as u8,
            IER_DLM => self.ier,
            IIR_FCR => {
                let id = self.interrupt_id();
                if id == IIR_THRI {
                    self.thr_ipending = false;
                }
                id | if self.fifo_enabled { IIR_FIFO_ENABLED } else { 0 }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => LSR_THRE | LSR_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR },
            MSR => {
                let value = self.modem_lines() | self.msr_delta;
                self.msr_delta = 0;
                value
            }
            SCR => self.scr,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, reg: u16, value: u8, ctx: &mut DeviceCtx) {
        match reg {
            RBR_THR_DLL if self.dlab() => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            RBR_THR_DLL => {
                if self.loopback() {
                    self.rx.push_back(value);
                } else {
                    ctx.console.push(value);
                }
                // The byte left at once: THR is empty again.
                self.thr_ipending = true;
            }
            IER_DLM if self.dlab() => self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8),
            IER_DLM => {
                let newly_enabled = value & !self.ier & IER_THRI != 0;
                self.ier = value & 0x0f;
                if newly_enabled {
                    // THR is always empty, so enabling THRI raises it at once.
                    self.thr_ipending = true;
                }
            }
            IIR_FCR => {
                let enable = value & FCR_ENABLE != 0;
                // Toggling FIFO mode or asking for it clears the receive FIFO.
                if enable != self.fifo_enabled || value & FCR_CLEAR_RX != 0 {
                    let n = self.fifo_depth().min(self.rx.len());
                    self.rx.drain(..n);
                }
                self.fifo_enabled = enable;
            }
            LCR => self.lcr = value,
            MCR => self.write_mcr(value),
            SCR => self.scr = value,
            _ => {} // LSR and MSR writes are factory-test only
        }
    }
}

impl PortDevice for Uart16550 {
    fn read(&mut self, port: u16, _size: u8, _ctx: &mut DeviceCtx) -> u32 {
        u32::from(self.read_reg(port.wrapping_sub(self.base) & 7))
    }

    fn write(&mut self, port: u16, _size: u8, value: u32, ctx: &mut DeviceCtx) {
        self.write_reg(port.wrapping_sub(self.base) & 7, value as u8, ctx);
    }
    fn save(&self) -> Vec<u8> {
        crate::bus::save_serde(self)
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self = crate::bus::restore_serde(data)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rig {
        uart: Uart16550,
        console: Vec<u8>,
    }

    impl Rig {
        fn new() -> Self {
            Rig { uart: Uart16550::new(COM1_BASE), console: Vec::new() }
        }
        fn inb(&mut self, reg: u16) -> u8 {
            let mut exit = None;
            let mut ctx = DeviceCtx { now_ns: 0, console: &mut self.console, exit: &mut exit };
            self.uart.read(COM1_BASE + reg, 1, &mut ctx) as u8
        }
        fn outb(&mut self, reg: u16, v: u8) {
            let mut exit = None;
            let mut ctx = DeviceCtx { now_ns: 0, console: &mut self.console, exit: &mut exit };
            self.uart.write(COM1_BASE + reg, 1, u32::from(v), &mut ctx);
        }
    }

    #[test]
    fn dlab_gives_divisor_latch_and_hides_it_otherwise() {
        let mut r = Rig::new();
        r.outb(1, 0x00); // IER
        r.outb(3, 0x83); // DLAB, 8N1
        r.outb(0, 0x01); // DLL: 115200 baud
        r.outb(1, 0x00); // DLM
        assert_eq!((r.inb(0), r.inb(1)), (0x01, 0x00));
        r.outb(1, 0x04);
        assert_eq!(r.uart.divisor(), 0x0401);
        r.outb(3, 0x03);
        assert_eq!(r.inb(3), 0x03);
        assert_eq!(r.inb(1), 0x00, "IER untouched by DLM writes");
        r.outb(0, b'x'); // THR now, not DLL
        assert_eq!(r.console, b"x");
        assert_eq!(r.uart.divisor(), 0x0401);
    }

    #[test]
    fn line_status_reflects_receive_queue() {
        let mut r = Rig::new();
        assert_eq!(r.inb(5), LSR_THRE | LSR_TEMT);
        r.uart.push_input(b"hi");
        assert_eq!(r.inb(5), LSR_THRE | LSR_TEMT | LSR_DR);
        assert_eq!(r.inb(0), b'h');
        assert_eq!(r.inb(5) & LSR_DR, LSR_DR);
        assert_eq!(r.inb(0), b'i');
        assert_eq!(r.inb(5), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn fifo_enable_shows_in_iir_and_clear_drops_only_the_fifo() {
        let mut r = Rig::new();
        assert_eq!(r.inb(2), 0x01);
        r.outb(2, 0xc7); // enable, clear both, trigger 14
        assert_eq!(r.inb(2), 0xc1);
        r.uart.push_input(&[b'a'; 20]);
        r.uart.push_input(b"z");
        r.outb(2, 0xc3); // clear RX: the 16 bytes in the FIFO go
        assert_eq!(r.uart.pending_input(), 5);
        r.outb(2, 0x00);
        assert_eq!(r.inb(2), 0x01);
    }

    #[test]
    fn thre_interrupt_raised_on_enable_and_cleared_by_iir_read() {
        let mut r = Rig::new();
        r.outb(4, MCR_OUT2);
        assert!(!r.uart.interrupt_pending());
        r.outb(1, IER_THRI);
        assert!(r.uart.interrupt_pending());
        assert_eq!(r.inb(2), 0x02);
        assert_eq!(r.inb(2), 0x01, "reading IIR cleared the THRE source");
        r.outb(0, b'.');
        assert_eq!(r.inb(2), 0x02);
        r.outb(1, IER_THRI | IER_RDI);
        r.uart.push_input(b"k");
        assert_eq!(r.inb(2), 0x04, "received data outranks THRE");
        assert_eq!(r.inb(0), b'k');
        r.outb(4, 0);
        assert!(!r.uart.interrupt_pending(), "OUT2 gates the IRQ line");
    }

    #[test]
    fn loopback_follows_linux_8250_probe() {
        // drivers/tty/serial/8250: MCR = LOOP|OUT2|RTS must read MSR[7:4] = DCD|CTS.
        let mut r = Rig::new();
        r.outb(4, MCR_LOOP | 0x0a);
        assert_eq!(r.inb(6) & 0xf0, 0x90);
        r.outb(0, 0x5a);
        assert!(r.console.is_empty());
        assert_eq!(r.inb(5) & LSR_DR, LSR_DR);
        assert_eq!(r.inb(0), 0x5a);
        r.outb(4, 0);
        assert_eq!(r.inb(6), 0xb0 | 0x02, "DSR rose on leaving loopback");
        assert_eq!(r.inb(6), 0xb0, "deltas clear on read");
    }

    #[test]
    fn scratch_register_round_trips() {
        let mut r = Rig::new();
        r.outb(7, 0xa5);
        assert_eq!(r.inb(7), 0xa5);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any access sequence: no panic, LSR.DR always tells whether RBR
        /// has data, and the transmitter always reads empty.
        #[test]
        fn arbitrary_accesses(ops in proptest::collection::vec((any::<u16>(), any::<u8>(), any::<bool>()), 1..300)) {
            let mut uart = Uart16550::new(COM1_BASE);
            let (mut console, mut exit) = (Vec::new(), None);
            let mut ctx = DeviceCtx { now_ns: 0, console: &mut console, exit: &mut exit };
            uart.push_input(b"input");
            for (port, value, is_write) in ops {
                let port = COM1_BASE + (port & 7);
                if is_write {
                    uart.write(port, 1, u32::from(value), &mut ctx);
                } else {
                    uart.read(port, 1, &mut ctx);
                }
                let lsr = uart.read(COM1_BASE + 5, 1, &mut ctx) as u8;
                prop_assert_eq!(lsr & LSR_DR != 0, uart.pending_input() > 0);
                prop_assert_eq!(lsr & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
            }
        }
    }
}
