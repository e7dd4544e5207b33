//! The PC's cascaded pair of Intel 8259A programmable interrupt controllers
//! (master at 0x20/0x21, slave at 0xA0/0xA1 on the master's IR2), after the
//! 8259A datasheet, with the PIIX edge/level control registers (ELCR) at
//! 0x4D0/0x4D1.
//!
//! Modelled: the ICW1-ICW4 initialisation sequence, OCW1 (mask), OCW2
//! (non-specific, specific and rotating EOIs, set priority), OCW3 (read
//! IRR/ISR, poll, special mask mode), automatic EOI, special fully nested
//! mode on the master, edge and level sensing (ICW1.LTIM or ELCR), and INTA
//! (`acknowledge`) with the spurious IR7 vector when nothing is requested.
//! Only 8086 mode matters on x86; MCS-80/85 call addresses are not modelled.
//!
//! Until a chip has received ICW1 its state is undefined per the datasheet;
//! here it raises no interrupt, so a guest that never touches the 8259s
//! (Linux on a hardware-reduced ACPI platform) never sees them.

use serde::{Deserialize, Serialize};

pub const MASTER_BASE: u16 = 0x20;
pub const SLAVE_BASE: u16 = 0xa0;
pub const ELCR_BASE: u16 = 0x4d0;
/// Master IR line the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;

const ICW1_IC4: u8 = 0x01;
const ICW1_SNGL: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
const ICW1: u8 = 0x10;
const OCW3: u8 = 0x08;
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;
/// ELCR bits that exist: IRQ0-2 (master) and IRQ8, IRQ13 (slave) are
/// always edge on PIIX.
const ELCR_WRITABLE: [u8; 2] = [0xf8, 0xde];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
enum InitStep {
    /// Not initialised since power-on.
    #[default]
    Uninitialised,
    Icw2,
    Icw3,
    Icw4,
    Ready,
}

/// One 8259A.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Chip {
    init: InitStep,
    icw1: u8,
    icw4: u8,
    /// ICW2 bits 7:3.
    vector_base: u8,
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input levels, for edge detection and level sensing.
    lines: u8,
    elcr: u8,
    /// The IR with the lowest priority (7 after ICW1; rotation moves it).
    lowest_priority: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    rotate_on_aeoi: bool,
    is_master: bool,
}

impl Chip {
    fn new(is_master: bool) -> Self {
        Chip { lowest_priority: 7, is_master, ..Default::default() }
    }

    fn level_sensitive(&self, irq: u8) -> bool {
        self.icw1 & ICW1_LTIM != 0 || self.elcr & (1 << irq) != 0
    }

    fn set_irq(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << (irq & 7);
        let rising = level && self.lines & bit == 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.level_sensitive(irq & 7) {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if rising {
            self.irr |= bit;
        } else if !level {
            // The request must stay high until INTA (datasheet: "the IR
            // input must remain high until after the falling edge of the
            // first INTA pulse").
            self.irr &= !bit;
        }
    }

    /// IRs in priority order, highest first.
    fn priority_order(&self) -> impl Iterator<Item = u8> {
        let first = (self.lowest_priority + 1) & 7;
        (0..8).map(move |k| (first + k) & 7)
    }

    /// The highest-priority requested, unmasked IR that in-service levels
    /// do not block.
    fn pending(&self) -> Option<u8> {
        if self.init != InitStep::Ready {
            return None;
        }
        let requests = self.irr & !self.imr;
        let mut blocking = self.isr;
        if self.special_mask {
            blocking &= !self.imr;
        }
        if self.is_master && self.icw4 & ICW4_SFNM != 0 {
            // Special fully nested mode: the slave may interrupt again
            // while its cascade level is in service.
            blocking &= !(1 << CASCADE_IRQ);
        }
        for irq in self.priority_order() {
            let bit = 1 << irq;
            if blocking & bit != 0 {
                return None;
            }
            if requests & bit != 0 {
                return Some(irq);
            }
        }
        None
    }

    /// The INTA cycle for `irq`: ISR set (unless AEOI), edge IRR cleared.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1 << irq;
        if !self.level_sensitive(irq) {
            self.irr &= !bit;
        }
        if self.icw4 & ICW4_AEOI != 0 {
            if self.rotate_on_aeoi {
                self.lowest_priority = irq;
            }
        } else {
            self.isr |= bit;
        }
    }

    /// The highest-priority in-service IR.
    fn highest_in_service(&self) -> Option<u8> {
        self.priority_order().find(|&irq| self.isr & (1 << irq) != 0)
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1 != 0 {
            // ICW1: IMR and ISR cleared, IR7 lowest priority, read IRR,
            // special mask off, edge sense latches reset.
            self.icw1 = value;
            self.icw4 = 0;
            self.imr = 0;
            self.isr = 0;
            self.irr = 0;
            self.lowest_priority = 7;
            self.read_isr = false;
            self.poll = false;
            self.special_mask = false;
            self.rotate_on_aeoi = false;
            self.resense_levels();
            self.init = InitStep::Icw2;
        } else if value & OCW3 != 0 {
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
            self.poll = value & 0x04 != 0;
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            self.write_ocw2(value);
        }
    }

    /// Level-sensitive IRs request exactly while their line is high.
    fn resense_levels(&mut self) {
        for irq in 0..8 {
            if self.level_sensitive(irq) {
                let bit = 1 << irq;
                self.irr = (self.irr & !bit) | (self.lines & bit);
            }
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Non-specific EOI, optionally rotating.
            0b001 | 0b101 => {
                if let Some(irq) = self.highest_in_service() {
                    self.isr &= !(1 << irq);
                    if value >> 5 == 0b101 {
                        self.lowest_priority = irq;
                    }
                }
            }
            // Specific EOI, optionally rotating.
            0b011 | 0b111 => {
                self.isr &= !(1 << level);
                if value >> 5 == 0b111 {
                    self.lowest_priority = level;
                }
            }
            0b100 => self.rotate_on_aeoi = true,
            0b000 => self.rotate_on_aeoi = false,
            0b110 => self.lowest_priority = level,
            _ => {} // 0b010: no operation
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init {
            InitStep::Icw2 => {
                self.vector_base = value & 0xf8;
                self.init = if self.icw1 & ICW1_SNGL == 0 {
                    InitStep::Icw3
                } else if self.icw1 & ICW1_IC4 != 0 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            // ICW3 (cascade wiring) is fixed by the board: slave on IR2.
            InitStep::Icw3 => {
                self.init = if self.icw1 & ICW1_IC4 != 0 { InitStep::Icw4 } else { InitStep::Ready };
            }
            InitStep::Icw4 => {
                self.icw4 = value;
                self.init = InitStep::Ready;
            }
            InitStep::Ready | InitStep::Uninitialised => self.imr = value,
        }
    }

    /// A poll command read: 0x80 | IR if a request is pending (acknowledged
    /// as by INTA), else 0.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.pending() {
            Some(irq) => {
                self.acknowledge(irq);
                0x80 | irq
            }
            None => 0,
        }
    }

    fn read_command(&mut self) -> u8 {
        if self.poll {
            self.poll_read()
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    fn read_data(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        self.imr
    }
}

/// The master/slave pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic8259Pair {
    chips: [Chip; 2],
}

impl Default for Pic8259Pair {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic8259Pair {
    pub fn new() -> Self {
        Pic8259Pair { chips: [Chip::new(true), Chip::new(false)] }
    }

    /// Whether `port` belongs to the pair (0x20-0x21, 0xA0-0xA1, 0x4D0-0x4D1).
    pub fn claims(port: u16) -> bool {
        matches!(port, 0x20 | 0x21 | 0xa0 | 0xa1 | 0x4d0 | 0x4d1)
    }

    /// Drive ISA IRQ `irq` (0-15); others are ignored.
    pub fn set_irq(&mut self, irq: u32, level: bool) {
        if irq < 8 {
            self.chips[0].set_irq(irq as u8, level);
        } else if irq < 16 {
            self.chips[1].set_irq(irq as u8 - 8, level);
        }
        self.update_cascade();
    }

    /// The slave's INT output is the master's IR2 input.
    fn update_cascade(&mut self) {
        let slave_int = self.chips[1].pending().is_some();
        self.chips[0].set_irq(CASCADE_IRQ, slave_int);
    }

    /// The master's INT output.
    pub fn interrupt_output(&self) -> bool {
        self.chips[0].pending().is_some()
    }

    /// The INTA sequence: the vector of the highest-priority request, or
    /// the spurious IR7 vector of the chip that had nothing to give.
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.chips[0].pending() {
            Some(CASCADE_IRQ) => {
                self.chips[0].acknowledge(CASCADE_IRQ);
                match self.chips[1].pending() {
                    Some(irq) => {
                        self.chips[1].acknowledge(irq);
                        self.chips[1].vector_base | irq
                    }
                    None => self.chips[1].vector_base | 7,
                }
            }
            Some(irq) => {
                self.chips[0].acknowledge(irq);
                self.chips[0].vector_base | irq
            }
            None => self.chips[0].vector_base | 7,
        };
        self.update_cascade();
        vector
    }

    /// A byte read from `port`; `None` if not ours.
    pub fn read(&mut self, port: u16) -> Option<u8> {
        let v = match port {
            0x20 => self.chips[0].read_command(),
            0x21 => self.chips[0].read_data(),
            0xa0 => self.chips[1].read_command(),
            0xa1 => self.chips[1].read_data(),
            0x4d0 => self.chips[0].elcr,
            0x4d1 => self.chips[1].elcr,
            _ => return None,
        };
        // A poll read may have acknowledged the slave.
        self.update_cascade();
        Some(v)
    }

    /// A byte written to `port`; ignored if not ours.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            0x20 => self.chips[0].write_command(value),
            0x21 => self.chips[0].write_data(value),
            0xa0 => self.chips[1].write_command(value),
            0xa1 => self.chips[1].write_data(value),
            0x4d0 | 0x4d1 => {
                let i = usize::from(port - 0x4d0);
                self.chips[i].elcr = value & ELCR_WRITABLE[i];
                self.chips[i].resense_levels();
            }
            _ => return,
        }
        self.update_cascade();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The initialisation every PC BIOS and Linux's init_8259A do: edge,
    /// cascade, ICW4 8086 mode; master vectors 0x20.., slave 0x28...
    fn init(p: &mut Pic8259Pair, auto_eoi: bool) {
        let icw4 = if auto_eoi { 0x03 } else { 0x01 };
        p.write(0x20, 0x11);
        p.write(0x21, 0x20);
        p.write(0x21, 0x04);
        p.write(0x21, icw4);
        p.write(0xa0, 0x11);
        p.write(0xa1, 0x28);
        p.write(0xa1, 0x02);
        p.write(0xa1, icw4);
    }

    #[test]
    fn uninitialised_pair_raises_nothing() {
        let mut p = Pic8259Pair::new();
        p.set_irq(4, true);
        assert!(!p.interrupt_output());
    }

    #[test]
    fn icw_sequence_leaves_imr_clear_and_sets_vectors() {
        let mut p = Pic8259Pair::new();
        p.write(0x21, 0xff);
        init(&mut p, false);
        // Datasheet: ICW1 clears the interrupt mask register.
        assert_eq!(p.read(0x21), Some(0));
        assert_eq!(p.read(0xa1), Some(0));
        p.set_irq(1, true);
        assert!(p.interrupt_output());
        assert_eq!(p.acknowledge(), 0x21);
        p.set_irq(10, true);
        // IR1 is in service, IR2 (cascade) has lower priority: blocked.
        assert!(!p.interrupt_output());
        p.write(0x20, 0x20); // non-specific EOI
        assert_eq!(p.acknowledge(), 0x2a);
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3() {
        let mut p = Pic8259Pair::new();
        p.write(0x20, 0x12); // SNGL, no IC4
        p.write(0x21, 0x40); // ICW2; next data write is OCW1
        p.write(0x21, 0xfe);
        assert_eq!(p.read(0x21), Some(0xfe));
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), 0x40);
    }

    #[test]
    fn ocw1_masks_and_ocw3_reads_irr_and_isr() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.write(0x21, 0x10); // mask IR4
        p.set_irq(4, true);
        assert!(!p.interrupt_output());
        assert_eq!(p.read(0x20), Some(0x10), "IRR is read by default after ICW1");
        p.write(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(p.read(0x20), Some(0x00));
        p.write(0x21, 0x00);
        assert_eq!(p.acknowledge(), 0x24);
        assert_eq!(p.read(0x20), Some(0x10), "ISR");
        p.write(0x20, 0x0a); // read IRR
        assert_eq!(p.read(0x20), Some(0x00), "edge request consumed by INTA");
        p.write(0x20, 0x64); // specific EOI for IR4
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0x00));
    }

    #[test]
    fn priority_and_nesting() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x25);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x23, "higher priority nests");
        p.set_irq(6, true);
        assert!(!p.interrupt_output(), "IR6 waits behind IR3 and IR5");
        p.write(0x20, 0x20); // EOI clears IR3, the highest in service
        assert!(!p.interrupt_output(), "IR5 still in service");
        p.write(0x20, 0x20);
        assert_eq!(p.acknowledge(), 0x26);
    }

    #[test]
    fn spurious_irq7_when_request_vanishes() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(3, true);
        p.set_irq(3, false);
        assert_eq!(p.acknowledge(), 0x27);
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0), "a spurious IR7 sets no ISR bit");
    }

    #[test]
    fn edge_needs_a_new_rising_edge_level_does_not() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x25);
        p.write(0x20, 0x20);
        assert!(!p.interrupt_output(), "edge: line still high, no new edge");
        // ELCR: IRQ5 level-triggered; a held line requests again after EOI.
        p.write(0x4d0, 0xff);
        assert_eq!(p.read(0x4d0), Some(0xf8), "IRQ0-2 are edge only");
        assert_eq!(p.acknowledge(), 0x25);
        p.write(0x20, 0x20);
        assert_eq!(p.acknowledge(), 0x25);
        p.write(0x20, 0x20);
        p.set_irq(5, false);
        assert!(!p.interrupt_output());
        p.write(0x4d1, 0xff);
        assert_eq!(p.read(0x4d1), Some(0xde), "IRQ8 and IRQ13 are edge only");
    }

    #[test]
    fn auto_eoi_and_rotation() {
        let mut p = Pic8259Pair::new();
        init(&mut p, true);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x21);
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0), "AEOI leaves nothing in service");
        // Set priority: IR1 lowest, so IR2..IR7, IR0, IR1 in that order.
        p.write(0x20, 0xc1);
        p.set_irq(0, true);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), 0x26);
        assert_eq!(p.acknowledge(), 0x20);
    }

    #[test]
    fn rotate_on_non_specific_eoi() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(0, true);
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x20);
        p.write(0x20, 0xa0); // rotate on non-specific EOI: IR0 becomes lowest
        p.set_irq(0, false);
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), 0x24, "IR4 now outranks IR0");
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_in() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x23);
        p.set_irq(5, true);
        assert!(!p.interrupt_output(), "fully nested: IR3 in service blocks IR5");
        // Datasheet: with special mask mode set (OCW3 ESMM|SMM) and IR3
        // masked, the lower-priority IR5 is enabled.
        p.write(0x20, 0x68);
        p.write(0x21, 0x08);
        assert_eq!(p.acknowledge(), 0x25);
        // Leaving special mask mode restores nesting behind IR3.
        p.write(0x20, 0x63); // specific EOI for IR3
        p.write(0x20, 0x48); // ESMM without SMM: reset special mask
        p.set_irq(6, true);
        assert!(!p.interrupt_output(), "IR5 in service blocks IR6");
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x24, "IR4 nests above IR5");
    }

    #[test]
    fn poll_command_acknowledges() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(6, true);
        p.write(0x20, 0x0c); // OCW3 poll
        assert_eq!(p.read(0x20), Some(0x86));
        p.write(0x20, 0x0c);
        assert_eq!(p.read(0x20), Some(0x00), "IR6 in service, nothing else");
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0x40));
    }

    #[test]
    fn slave_needs_its_own_and_the_masters_eoi() {
        let mut p = Pic8259Pair::new();
        init(&mut p, false);
        p.set_irq(12, true);
        assert_eq!(p.acknowledge(), 0x2c);
        p.set_irq(12, false);
        p.set_irq(9, true);
        assert!(!p.interrupt_output(), "master IR2 in service");
        p.write(0xa0, 0x20);
        assert!(!p.interrupt_output());
        p.write(0x20, 0x20);
        assert_eq!(p.acknowledge(), 0x29);
        // A masked slave line does not reach the master.
        p.write(0xa0, 0x20);
        p.write(0x20, 0x20);
        p.write(0xa1, 0xff);
        p.set_irq(9, false);
        p.set_irq(9, true);
        assert!(!p.interrupt_output());
    }

    #[test]
    fn foreign_ports_are_not_claimed() {
        let mut p = Pic8259Pair::new();
        assert_eq!(p.read(0x22), None);
        assert!(!Pic8259Pair::claims(0x22) && Pic8259Pair::claims(0x4d1));
        p.write(0x22, 0xff);
        p.set_irq(16, true);
        p.set_irq(u32::MAX, true);
        assert_eq!(p, {
            let mut q = Pic8259Pair::new();
            q.set_irq(16, true);
            q
        });
    }
}
