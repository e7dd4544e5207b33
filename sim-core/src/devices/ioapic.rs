//! An I/O APIC after the Intel 82093AA datasheet: IOREGSEL at +0x00 and
//! IOWIN at +0x10, the ID (0x00), version (0x01) and arbitration (0x02)
//! registers and one 64-bit redirection entry per pin at 0x10 + 2 * pin.
//!
//! The pin count is a parameter: the 82093AA has 24 pins (version register
//! 0x0017_0011); Xen's virtual IOAPIC has 48 (`VIOAPIC_NUM_PINS`, 16 ISA IRQs
//! plus 32 PCI GSIs from `hvm_pci_intx_gsi`, so 0x002F_0011), and the machine
//! uses 48 so that every PCI INTx GSI exists.
//!
//! Inputs are logical: `set_level(pin, true)` means "the source asserts its
//! interrupt", whatever the wire's electrical polarity, as in Xen's and KVM's
//! models; the polarity bit is stored for the guest but does not invert.
//! Messages are delivered at once, so delivery status (bit 12) reads 0.
//! The destination field is 8 bits (63:56) in both modes, as in Xen, where
//! the 82093AA's physical mode decodes only 59:56.

use serde::{Deserialize, Serialize};

use crate::devices::lapic::IpiDest;

/// Pins of the Intel 82093AA.
pub const IOAPIC_82093AA_PINS: u32 = 24;
/// Pins of Xen's virtual IOAPIC (and of this machine's IOAPIC).
pub const XEN_IOAPIC_PINS: u32 = 48;
/// Version field of the version register.
pub const IOAPIC_VERSION: u32 = 0x11;
/// Bytes of guest-physical space the IOAPIC claims.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;

pub const IOREGSEL: u64 = 0x00;
pub const IOWIN: u64 = 0x10;

pub const REG_ID: u32 = 0x00;
pub const REG_VERSION: u32 = 0x01;
pub const REG_ARBITRATION: u32 = 0x02;
pub const REG_REDIRECTION_BASE: u32 = 0x10;

pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
pub const RTE_POLARITY_LOW: u64 = 1 << 13;
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
pub const RTE_LEVEL: u64 = 1 << 15;
pub const RTE_MASKED: u64 = 1 << 16;
const RTE_DEST_SHIFT: u32 = 56;
/// Bits the guest may write: vector, delivery mode, destination mode,
/// polarity, trigger mode, mask (15:0 minus 12 and 14) and the destination.
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;
const ID_MASK: u32 = 0x0f00_0000;

/// Delivery mode of a redirection entry (bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoApicDelivery {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    /// The target takes its vector from an 8259 INTA cycle.
    ExtInt,
}

/// An interrupt message from the IOAPIC to the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApicMessage {
    pub vector: u8,
    pub delivery: IoApicDelivery,
    pub dest: IpiDest,
    pub level_triggered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoApic {
    /// ID register (bits 27:24 used).
    id: u32,
    /// Arbitration ID, loaded from the ID register when it is written.
    arbitration: u32,
    ioregsel: u32,
    redirection: Vec<u64>,
    /// Input level of each pin (true = asserted).
    asserted: Vec<bool>,
}

impl IoApic {
    /// An IOAPIC with `pins` pins (1..=240) in its reset state: every
    /// redirection entry masked, ID `id`.
    pub fn new(id: u8, pins: u32) -> Self {
        let pins = pins.clamp(1, 240) as usize;
        let id = (u32::from(id) << 24) & ID_MASK;
        IoApic { id, arbitration: id, ioregsel: 0, redirection: vec![RTE_MASKED; pins], asserted: vec![false; pins] }
    }

    pub fn pins(&self) -> u32 {
        self.redirection.len() as u32
    }

    /// The redirection entry of `pin`, if it exists.
    pub fn redirection_entry(&self, pin: u32) -> Option<u64> {
        self.redirection.get(pin as usize).copied()
    }

    /// Drive input `pin`. Edge entries send a message on a rising edge;
    /// level entries send one while asserted with remote IRR clear, and set
    /// remote IRR. A masked pin sends nothing (an edge that arrives while
    /// masked is lost; a level is delivered when unmasked).
    pub fn set_level(&mut self, pin: u32, level: bool) -> Vec<IoApicMessage> {
        let Some(was) = self.asserted.get_mut(pin as usize) else {
            return Vec::new();
        };
        let rising = level && !*was;
        *was = level;
        let rte = self.redirection[pin as usize];
        if rte & RTE_LEVEL != 0 {
            self.service_level(pin as usize).into_iter().collect()
        } else if rising && rte & RTE_MASKED == 0 {
            message(rte).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// The local APICs' EOI for `vector`: clear remote IRR of every
    /// level-triggered entry with that vector, and deliver again any whose
    /// pin is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<IoApicMessage> {
        let mut out = Vec::new();
        for pin in 0..self.redirection.len() {
            let rte = self.redirection[pin];
            if rte & RTE_LEVEL != 0 && rte & RTE_REMOTE_IRR != 0 && rte as u8 == vector {
                self.redirection[pin] &= !RTE_REMOTE_IRR;
                out.extend(self.service_level(pin));
            }
        }
        out
    }

    /// Deliver level pin `pin` if it is asserted, unmasked and not awaiting EOI.
    fn service_level(&mut self, pin: usize) -> Option<IoApicMessage> {
        let rte = self.redirection[pin];
        if !self.asserted[pin] || rte & (RTE_MASKED | RTE_REMOTE_IRR) != 0 {
            return None;
        }
        let msg = message(rte)?;
        // Remote IRR is set when a local APIC accepts the message; for the
        // modes that have no EOI (SMI, NMI, INIT, ExtINT) it stays clear.
        if matches!(msg.delivery, IoApicDelivery::Fixed | IoApicDelivery::LowestPriority) {
            self.redirection[pin] |= RTE_REMOTE_IRR;
        }
        Some(msg)
    }

    // ---- registers ----

    fn read_register(&self, index: u32) -> u32 {
        match index {
            REG_ID => self.id,
            REG_VERSION => ((self.pins() - 1) << 16) | IOAPIC_VERSION,
            REG_ARBITRATION => self.arbitration,
            _ => match self.rte_index(index) {
                Some((pin, false)) => self.redirection[pin] as u32,
                Some((pin, true)) => (self.redirection[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u32, value: u32) -> Vec<IoApicMessage> {
        match index {
            REG_ID => {
                self.id = value & ID_MASK;
                self.arbitration = self.id;
            }
            _ => {
                if let Some((pin, high)) = self.rte_index(index) {
                    return self.write_rte(pin, high, value);
                }
            }
        }
        Vec::new()
    }

    /// (pin, high half) of register `index`, if it is a redirection entry.
    fn rte_index(&self, index: u32) -> Option<(usize, bool)> {
        let rel = index.checked_sub(REG_REDIRECTION_BASE)? as usize;
        (rel / 2 < self.redirection.len()).then_some((rel / 2, rel % 2 == 1))
    }

    fn write_rte(&mut self, pin: usize, high: bool, value: u32) -> Vec<IoApicMessage> {
        let old = self.redirection[pin];
        let new =
            if high { (old & 0xffff_ffff) | (u64::from(value) << 32) } else { (old & !0xffff_ffff) | u64::from(value) };
        let mut rte = (old & !RTE_WRITABLE) | (new & RTE_WRITABLE);
        if rte & RTE_LEVEL == 0 {
            // Remote IRR is undefined for edge entries; keep it clear so a
            // later switch to level starts clean (as KVM does).
            rte &= !RTE_REMOTE_IRR;
        }
        self.redirection[pin] = rte;
        // Unmasking (or switching to level) an asserted level pin delivers it.
        if rte & RTE_LEVEL != 0 {
            return self.service_level(pin).into_iter().collect();
        }
        Vec::new()
    }

    // ---- MMIO ----

    /// A read at `offset` in the IOAPIC's page. IOREGSEL and IOWIN are
    /// 32-bit registers; narrower reads return their bytes, other offsets 0.
    pub fn mmio_read(&self, offset: u64, size: u8) -> u64 {
        let (reg, shift) = match offset {
            0..=3 => (self.ioregsel, offset - IOREGSEL),
            0x10..=0x13 => (self.read_register(self.ioregsel), offset - IOWIN),
            _ => return 0,
        };
        let v = u64::from(reg) >> (shift * 8);
        v & crate::bus::all_ones(size.min(4))
    }

    /// A write at `offset`. A narrower write changes only its bytes of the
    /// 32-bit register. Returns the messages the write causes (unmasking an
    /// asserted level pin).
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64) -> Vec<IoApicMessage> {
        let merge = |old: u32, shift: u64| -> u32 {
            let mask = (crate::bus::all_ones(size.min(4)) << (shift * 8)) as u32;
            (old & !mask) | ((value << (shift * 8)) as u32 & mask)
        };
        match offset {
            0..=3 => {
                self.ioregsel = merge(self.ioregsel, offset - IOREGSEL) & 0xff;
                Vec::new()
            }
            0x10..=0x13 => {
                let index = self.ioregsel;
                let v = merge(self.read_register(index), offset - IOWIN);
                self.write_register(index, v)
            }
            _ => Vec::new(),
        }
    }
}

/// The message redirection entry `rte` sends; `None` for reserved delivery modes.
fn message(rte: u64) -> Option<IoApicMessage> {
    let delivery = match (rte >> 8) & 7 {
        0 => IoApicDelivery::Fixed,
        1 => IoApicDelivery::LowestPriority,
        2 => IoApicDelivery::Smi,
        4 => IoApicDelivery::Nmi,
        5 => IoApicDelivery::Init,
        7 => IoApicDelivery::ExtInt,
        _ => return None,
    };
    let dest_field = (rte >> RTE_DEST_SHIFT) as u32;
    let dest = if rte & RTE_DEST_LOGICAL != 0 { IpiDest::Logical(dest_field) } else { IpiDest::Physical(dest_field) };
    Some(IoApicMessage { vector: rte as u8, delivery, dest, level_triggered: rte & RTE_LEVEL != 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut IoApic, index: u32, value: u32) -> Vec<IoApicMessage> {
        io.mmio_write(IOREGSEL, 4, u64::from(index));
        io.mmio_write(IOWIN, 4, u64::from(value))
    }

    fn read_reg(io: &mut IoApic, index: u32) -> u32 {
        io.mmio_write(IOREGSEL, 4, u64::from(index));
        io.mmio_read(IOWIN, 4) as u32
    }

    /// Program pin `pin`'s entry (low word `low`, destination byte `dest`).
    fn program(io: &mut IoApic, pin: u32, low: u32, dest: u8) -> Vec<IoApicMessage> {
        write_reg(io, 0x11 + 2 * pin, u32::from(dest) << 24);
        write_reg(io, 0x10 + 2 * pin, low)
    }

    fn fixed(vector: u8, dest: u32, level: bool) -> IoApicMessage {
        IoApicMessage { vector, delivery: IoApicDelivery::Fixed, dest: IpiDest::Physical(dest), level_triggered: level }
    }

    #[test]
    fn id_version_and_arbitration_registers() {
        let mut io = IoApic::new(2, IOAPIC_82093AA_PINS);
        // 82093AA: version 0x11, maximum redirection entry 23 in bits 23:16.
        assert_eq!(read_reg(&mut io, 1), 0x0017_0011);
        assert_eq!(read_reg(&mut io, 0), 0x0200_0000);
        assert_eq!(read_reg(&mut io, 2), 0x0200_0000);
        // ID bits 27:24 are writable; the arbitration ID follows the ID.
        write_reg(&mut io, 0, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, 0), 0x0f00_0000);
        assert_eq!(read_reg(&mut io, 2), 0x0f00_0000);
        // Version and arbitration are read-only.
        write_reg(&mut io, 1, 0);
        write_reg(&mut io, 2, 0);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0011);
        assert_eq!(read_reg(&mut io, 2), 0x0f00_0000);
        // Xen's 48-pin IOAPIC: maximum redirection entry 47.
        let mut xen = IoApic::new(0, XEN_IOAPIC_PINS);
        assert_eq!(read_reg(&mut xen, 1), 0x002f_0011);
        // IOREGSEL reads back (8 bits).
        io.mmio_write(IOREGSEL, 4, 0x1234);
        assert_eq!(io.mmio_read(IOREGSEL, 4), 0x34);
    }

    #[test]
    fn redirection_entries_reset_masked_and_keep_read_only_bits() {
        let mut io = IoApic::new(0, IOAPIC_82093AA_PINS);
        for pin in 0..24 {
            assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), 0x0001_0000, "pin {pin} masked at reset");
        }
        // Pin 24 does not exist: reads 0, writes vanish.
        write_reg(&mut io, 0x10 + 48, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, 0x10 + 48), 0);
        // All ones: delivery status (12) and remote IRR (14) stay 0 on an
        // edge entry; 55:32 are reserved.
        write_reg(&mut io, 0x10, 0xffff_ffff);
        write_reg(&mut io, 0x11, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, 0x10), 0x0001_afff);
        assert_eq!(read_reg(&mut io, 0x11), 0xff00_0000);
        assert_eq!(io.redirection_entry(0), Some(0xff00_0000_0001_afff));
    }

    #[test]
    fn edge_pin_sends_once_per_rising_edge() {
        let mut io = IoApic::new(0, 24);
        assert!(program(&mut io, 4, 0x0000_0031, 1).is_empty());
        assert_eq!(io.set_level(4, true), vec![fixed(0x31, 1, false)]);
        assert!(io.set_level(4, true).is_empty(), "no edge");
        assert!(io.set_level(4, false).is_empty());
        assert_eq!(io.set_level(4, true), vec![fixed(0x31, 1, false)]);
        assert_eq!(io.redirection_entry(4).unwrap() & RTE_REMOTE_IRR, 0);
        // An EOI does nothing for edge entries.
        assert!(io.eoi(0x31).is_empty());
    }

    #[test]
    fn masked_edge_is_lost() {
        let mut io = IoApic::new(0, 24);
        program(&mut io, 4, 0x0001_0031, 0);
        assert!(io.set_level(4, true).is_empty());
        assert!(program(&mut io, 4, 0x0000_0031, 0).is_empty(), "unmasking replays no edge");
        io.set_level(4, false);
        assert_eq!(io.set_level(4, true).len(), 1);
    }

    #[test]
    fn level_pin_waits_for_eoi_and_redelivers_while_asserted() {
        let mut io = IoApic::new(0, 48);
        // Level, active low (PCI), logical destination 0x03, vector 0x51.
        let low = 0x51 | RTE_LEVEL as u32 | RTE_POLARITY_LOW as u32 | RTE_DEST_LOGICAL as u32;
        program(&mut io, 28, low, 0x03);
        let msg = IoApicMessage {
            vector: 0x51,
            delivery: IoApicDelivery::Fixed,
            dest: IpiDest::Logical(3),
            level_triggered: true,
        };
        assert_eq!(io.set_level(28, true), vec![msg]);
        assert_ne!(read_reg(&mut io, 0x10 + 56) & RTE_REMOTE_IRR as u32, 0, "remote IRR set");
        // Still asserted, remote IRR set: nothing more.
        assert!(io.set_level(28, true).is_empty());
        assert!(io.eoi(0x52).is_empty(), "other vector");
        // EOI while still asserted: delivered again.
        assert_eq!(io.eoi(0x51), vec![msg]);
        // Deasserted, then EOI: remote IRR clears, nothing sent.
        io.set_level(28, false);
        assert!(io.eoi(0x51).is_empty());
        assert_eq!(read_reg(&mut io, 0x10 + 56) & RTE_REMOTE_IRR as u32, 0);
        // Asserted again: delivered.
        assert_eq!(io.set_level(28, true), vec![msg]);
    }

    #[test]
    fn masked_level_pin_is_delivered_on_unmask() {
        let mut io = IoApic::new(0, 24);
        program(&mut io, 9, 0x0001_8041, 0);
        assert!(io.set_level(9, true).is_empty(), "masked");
        assert_eq!(program(&mut io, 9, 0x0000_8041, 0), vec![fixed(0x41, 0, true)]);
        // Re-writing the entry while remote IRR is set sends nothing, and
        // remote IRR survives the write (it is read-only).
        assert!(program(&mut io, 9, 0x0000_8041, 0).is_empty());
        assert_ne!(io.redirection_entry(9).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn delivery_modes_decode() {
        let mut io = IoApic::new(0, 24);
        let modes = [
            (0, Some(IoApicDelivery::Fixed)),
            (1, Some(IoApicDelivery::LowestPriority)),
            (2, Some(IoApicDelivery::Smi)),
            (3, None),
            (4, Some(IoApicDelivery::Nmi)),
            (5, Some(IoApicDelivery::Init)),
            (6, None),
            (7, Some(IoApicDelivery::ExtInt)),
        ];
        for (pin, (mode, want)) in modes.into_iter().enumerate() {
            let pin = pin as u32;
            program(&mut io, pin, 0x20 | (mode << 8), 0xff);
            let got = io.set_level(pin, true);
            assert_eq!(got.first().map(|m| m.delivery), want, "mode {mode}");
            if let Some(m) = got.first() {
                assert_eq!(m.dest, IpiDest::Physical(0xff));
            }
        }
    }

    #[test]
    fn nmi_level_entry_does_not_latch_remote_irr() {
        let mut io = IoApic::new(0, 24);
        program(&mut io, 3, 0x0000_8400, 0);
        assert_eq!(io.set_level(3, true).len(), 1);
        assert_eq!(io.redirection_entry(3).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn narrow_and_odd_accesses_do_not_panic() {
        let mut io = IoApic::new(0, 24);
        io.mmio_write(IOREGSEL, 1, 0x10);
        io.mmio_write(IOWIN, 1, 0x55); // low byte of pin 0's low word
        io.mmio_write(IOWIN + 2, 1, 0x00); // clear the mask byte
        assert_eq!(io.mmio_read(IOWIN, 4), 0x55);
        assert_eq!(io.mmio_read(IOWIN + 1, 1), 0x00);
        assert_eq!(io.mmio_read(IOWIN, 2), 0x55);
        assert_eq!(io.mmio_read(0x20, 4), 0);
        io.mmio_write(0x40, 4, 0x55); // no EOI register in version 0x11
        io.mmio_write(IOREGSEL, 8, u64::MAX);
        assert_eq!(io.mmio_read(IOWIN, 8), 0, "register 0xff does not exist");
        assert!(io.set_level(u32::MAX, true).is_empty());
        assert!(io.eoi(0).is_empty());
    }
}
