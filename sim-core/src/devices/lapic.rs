//! The local APIC, one per vCPU, per the Intel SDM vol. 3A chapter 11
//! ("Advanced Programmable Interrupt Controller"; chapter 10 in older
//! editions): xAPIC registers by MMIO offset, x2APIC registers as MSRs
//! 0x800 + offset/16, IA32_APIC_BASE with the legal mode transitions, and
//! the timer in one-shot, periodic and TSC-deadline modes.
//!
//! Timer clock: the APIC timer counts a 1 GHz bus clock divided by the
//! Divide Configuration Register, so at divide-by-1 one tick is one virtual
//! nanosecond. The TSC is `clock::ns_to_tsc(now_ns)` (TSC 0 at power-on).
//!
//! An EOI reports the vector it retires (`LapicAction::Eoi`); the machine
//! forwards level-triggered ones to the IOAPIC (the EOI broadcast; the
//! version register does not offer EOI-broadcast suppression).
//! Not modelled: CMCI (version reports max LVT 5, so there is no
//! CMCI register), focus processor checks and lowest-priority arbitration
//! (the machine picks among `matches_destination` candidates). The xAPIC ID
//! register is read-only (model-specific per the SDM). While hardware-disabled
//! or in x2APIC mode, MMIO reads return 0 and writes are ignored.

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::layout::LAPIC_BASE;
use crate::msr::{IA32_APIC_BASE, IA32_TSC_DEADLINE, X2APIC_FIRST, X2APIC_LAST};
use crate::paging::MAX_PHYS_BITS;

/// Version register: version 0x14 (integrated APIC), max LVT entry 5 (six LVTs).
pub const APIC_VERSION: u32 = 0x0005_0014;
/// Timer input clock before the divider, in Hz.
pub const TIMER_BUS_HZ: u64 = 1_000_000_000;

pub const APIC_BASE_BSP: u64 = 1 << 8;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_EN: u64 = 1 << 11;

/// Register offsets in the xAPIC page; the x2APIC MSR is 0x800 + offset / 16.
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    pub const PPR: u32 = 0x0a0;
    pub const EOI: u32 = 0x0b0;
    pub const LDR: u32 = 0x0d0;
    pub const DFR: u32 = 0x0e0;
    pub const SVR: u32 = 0x0f0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERFMON: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// x2APIC only.
    pub const SELF_IPI: u32 = 0x3f0;
}

pub const SVR_ENABLE: u32 = 1 << 8;
pub const LVT_MASKED: u32 = 1 << 16;
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;

const LVT_COUNT: usize = 6;
const LVT_TIMER_IDX: usize = 0;
const LVT_ERROR_IDX: usize = 5;
/// Writable bits per LVT (timer, thermal, perfmon, LINT0, LINT1, error).
/// Delivery status (12) and remote IRR (14) are read-only and always 0 here.
const LVT_WRITABLE: [u32; LVT_COUNT] = [0x0007_00ff, 0x0001_07ff, 0x0001_07ff, 0x0001_a7ff, 0x0001_a7ff, 0x0001_00ff];

const TIMER_MODE_SHIFT: u32 = 17;
const SVR_WRITABLE: u32 = 0x3ff;
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// x2APIC ICR bits that must be zero (bit 12, delivery status, is ignored).
const X2APIC_ICR_RESERVED: u64 = 0xfff0_0000 | 0x3_0000 | 0x2000;
const X2APIC_ICR_MSR: u32 = X2APIC_FIRST + (reg::ICR_LOW >> 4);
const X2APIC_BROADCAST: u32 = u32::MAX;
const XAPIC_BROADCAST: u32 = 0xff;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpiDest {
    /// APIC ID (8 bits in xAPIC mode, 32 in x2APIC mode; all ones = broadcast).
    Physical(u32),
    /// Logical destination, matched against each target's LDR (and DFR).
    Logical(u32),
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An inter-processor interrupt requested through the ICR or SELF IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipi {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub dest: IpiDest,
    /// ICR level bit: false only for an INIT level de-assert.
    pub level: bool,
    pub trigger_level: bool,
}

/// What the machine must do after a LAPIC register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LapicAction {
    None,
    Ipi(Ipi),
    /// An EOI retired `vector` from ISR; `level_triggered` is its TMR bit.
    Eoi {
        vector: u8,
        level_triggered: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// One-shot and periodic counting: the counter held `epoch_count` at
/// `epoch_ns` and counts down one tick per `divisor` ns from there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Countdown {
    running: bool,
    epoch_ns: u64,
    epoch_count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lapic {
    apic_id: u32,
    apic_base: u64,
    tpr: u32,
    /// xAPIC LDR (bits 31:24); in x2APIC mode the LDR is derived from the ID.
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as last latched by a write.
    esr: u32,
    /// Errors seen since the last ESR write.
    esr_pending: u32,
    lvt: [u32; LVT_COUNT],
    icr: u64,
    timer_initial: u32,
    timer_divide: u32,
    countdown: Countdown,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,
}

fn highest_bit(bits: &[u32; 8]) -> Option<u8> {
    bits.iter().enumerate().rev().find(|(_, &w)| w != 0).map(|(i, &w)| (i as u32 * 32 + 31 - w.leading_zeros()) as u8)
}

fn bit_pos(vector: u8) -> (usize, u32) {
    (usize::from(vector >> 5), 1u32 << (vector & 31))
}

fn set_bit(bits: &mut [u32; 8], vector: u8, on: bool) {
    let (i, m) = bit_pos(vector);
    if on {
        bits[i] |= m;
    } else {
        bits[i] &= !m;
    }
}

/// Smallest ns at which the TSC has reached `tsc` (rounds up, so a deadline
/// never fires early).
fn tsc_deadline_ns(tsc: u64) -> u64 {
    let ns = clock::tsc_to_ns(tsc);
    if clock::ns_to_tsc(ns) < tsc {
        ns.saturating_add(1)
    } else {
        ns
    }
}

impl Lapic {
    /// A LAPIC in its power-up state: xAPIC mode, enabled in IA32_APIC_BASE,
    /// software-disabled (SVR = 0xFF), all LVTs masked.
    pub fn new(apic_id: u32, bsp: bool) -> Self {
        let mut lapic = Lapic {
            apic_id,
            apic_base: LAPIC_BASE | APIC_BASE_EN | if bsp { APIC_BASE_BSP } else { 0 },
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            lvt: [0; LVT_COUNT],
            icr: 0,
            timer_initial: 0,
            timer_divide: 0,
            countdown: Countdown::default(),
            tsc_deadline: 0,
        };
        lapic.reset_registers();
        lapic
    }

    /// INIT: every register returns to its reset value except the APIC ID and
    /// IA32_APIC_BASE (SDM "x2APIC State Transitions").
    pub fn init(&mut self) {
        self.reset_registers();
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.icr = 0;
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.countdown = Countdown::default();
        self.tsc_deadline = 0;
    }

    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }

    pub fn apic_base_msr(&self) -> u64 {
        self.apic_base
    }

    fn hw_enabled(&self) -> bool {
        self.apic_base & APIC_BASE_EN != 0
    }

    pub fn x2apic_mode(&self) -> bool {
        self.hw_enabled() && self.apic_base & APIC_BASE_EXTD != 0
    }

    /// Where the xAPIC register page is, while the LAPIC is in xAPIC mode.
    pub fn mmio_base(&self) -> Option<u64> {
        (self.hw_enabled() && !self.x2apic_mode()).then_some(self.apic_base & !0xfff)
    }

    pub fn software_enabled(&self) -> bool {
        self.hw_enabled() && self.svr & SVR_ENABLE != 0
    }

    fn ldr(&self) -> u32 {
        if self.x2apic_mode() {
            // SDM "Logical Destination Mode in x2APIC Mode": cluster ID in 31:16,
            // one bit per logical ID in 15:0, both from the x2APIC ID.
            ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xf))
        } else {
            self.ldr
        }
    }

    /// Processor priority: the higher of TPR and the in-service class.
    pub fn ppr(&self) -> u32 {
        let isrv = highest_bit(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xf0) >= (isrv & 0xf0) {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    // ---- interrupt acceptance and delivery ----

    /// A fixed or lowest-priority interrupt arrives: set IRR (and TMR for
    /// level-triggered). Dropped while the LAPIC is disabled (as KVM does:
    /// a software-disabled LAPIC still takes NMI/INIT/SIPI, which the machine
    /// handles, but not vectored interrupts). Vectors 0-15 are illegal.
    pub fn accept_interrupt(&mut self, vector: u8, level_triggered: bool) {
        if !self.software_enabled() {
            return;
        }
        if vector < 16 {
            self.signal_error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level_triggered);
    }

    /// Record an APIC error and raise the error LVT if it is unmasked.
    fn signal_error(&mut self, bit: u32) {
        self.esr_pending |= bit;
        let lvt = self.lvt[LVT_ERROR_IDX];
        let vector = lvt as u8;
        // An illegal error vector is not delivered (and not re-reported).
        if lvt & LVT_MASKED == 0 && vector >= 16 && self.software_enabled() {
            set_bit(&mut self.irr, vector, true);
            set_bit(&mut self.tmr, vector, false);
        }
    }

    /// The vector the CPU would take now: the highest requested one whose
    /// priority class is above the processor priority class.
    pub fn pending_interrupt(&self) -> Option<u8> {
        if !self.software_enabled() {
            return None;
        }
        let v = highest_bit(&self.irr)?;
        (u32::from(v) & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// INTA: move the pending vector from IRR to ISR and return it.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.pending_interrupt()?;
        set_bit(&mut self.irr, v, false);
        set_bit(&mut self.isr, v, true);
        Some(v)
    }

    /// Is this LAPIC a target of `dest` sent by the LAPIC with ID `sender`?
    /// Destinations are interpreted in this LAPIC's mode (xAPIC: 8-bit IDs,
    /// flat or cluster logical model from DFR; x2APIC: 32-bit IDs, cluster).
    pub fn matches_destination(&self, dest: &IpiDest, sender: u32) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        match *dest {
            IpiDest::SelfOnly => self.apic_id == sender,
            IpiDest::AllIncludingSelf => true,
            IpiDest::AllExcludingSelf => self.apic_id != sender,
            IpiDest::Physical(d) if self.x2apic_mode() => d == X2APIC_BROADCAST || d == self.apic_id,
            IpiDest::Physical(d) => {
                let d = d & 0xff;
                d == XAPIC_BROADCAST || d == self.apic_id & 0xff
            }
            IpiDest::Logical(d) if self.x2apic_mode() => {
                let ldr = self.ldr();
                d == X2APIC_BROADCAST || ((d >> 16) == (ldr >> 16) && d & ldr & 0xffff != 0)
            }
            IpiDest::Logical(d) => {
                let d = d & 0xff;
                let logical_id = self.ldr >> 24;
                if d == XAPIC_BROADCAST {
                    true
                } else if self.dfr >> 28 == 0xf {
                    // Flat model: one bit per APIC.
                    d & logical_id != 0
                } else {
                    // Cluster model: cluster in 7:4, member bits in 3:0.
                    (d >> 4) == (logical_id >> 4) && d & logical_id & 0xf != 0
                }
            }
        }
    }

    /// Retire the highest in-service vector.
    fn eoi(&mut self) -> LapicAction {
        match highest_bit(&self.isr) {
            Some(v) => {
                set_bit(&mut self.isr, v, false);
                let (i, m) = bit_pos(v);
                LapicAction::Eoi { vector: v, level_triggered: self.tmr[i] & m != 0 }
            }
            None => LapicAction::None,
        }
    }

    /// Whether the 8259's INTR reaches this CPU: LINT0 programmed ExtINT and
    /// unmasked, or the LAPIC hardware-disabled (its LINT0 pin then is the
    /// CPU's INTR pin). The machine asks only for the BSP, where the 8259
    /// is wired (as Xen's vlapic_accept_pic_intr).
    pub fn accepts_pic_interrupt(&self) -> bool {
        let lint0 = self.lvt[((reg::LVT_LINT0 - reg::LVT_TIMER) >> 4) as usize];
        !self.hw_enabled() || (lint0 & LVT_MASKED == 0 && (lint0 >> 8) & 7 == 7)
    }

    /// Decode the ICR into an IPI; `None` for reserved delivery modes and
    /// for fixed/lowest-priority IPIs with an illegal vector (ESR bit 5).
    fn send_ipi(&mut self) -> LapicAction {
        let icr = self.icr;
        let vector = icr as u8;
        let delivery = match (icr >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            _ => return LapicAction::None,
        };
        if matches!(delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.signal_error(ESR_SEND_ILLEGAL_VECTOR);
            return LapicAction::None;
        }
        let dest_field = if self.x2apic_mode() { (icr >> 32) as u32 } else { (icr >> 56) as u32 };
        let dest = match (icr >> 18) & 3 {
            1 => IpiDest::SelfOnly,
            2 => IpiDest::AllIncludingSelf,
            3 => IpiDest::AllExcludingSelf,
            _ if icr & (1 << 11) != 0 => IpiDest::Logical(dest_field),
            _ => IpiDest::Physical(dest_field),
        };
        LapicAction::Ipi(Ipi {
            vector,
            delivery,
            dest,
            level: icr & (1 << 14) != 0,
            trigger_level: icr & (1 << 15) != 0,
        })
    }

    // ---- timer ----

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt[LVT_TIMER_IDX] >> TIMER_MODE_SHIFT) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            // 3 is reserved; it counts like one-shot here.
            _ => TimerMode::OneShot,
        }
    }

    /// Ns per timer tick: the Divide Configuration Register's divisor
    /// (bits 3,1:0: 000 = 2, 001 = 4, ... 110 = 128, 111 = 1) at 1 GHz.
    fn tick_ns(&self) -> u64 {
        let code = ((self.timer_divide >> 1) & 4) | (self.timer_divide & 3);
        1 << ((code + 1) & 7)
    }

    fn current_count(&self, now_ns: u64) -> u32 {
        let c = &self.countdown;
        if !c.running || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let ticks = now_ns.saturating_sub(c.epoch_ns) / self.tick_ns();
        if ticks < u64::from(c.epoch_count) {
            return c.epoch_count - ticks as u32;
        }
        if self.timer_mode() == TimerMode::Periodic && self.timer_initial != 0 {
            // Reloaded with the initial count at each expiry.
            let into_period = (ticks - u64::from(c.epoch_count)) % u64::from(self.timer_initial);
            return self.timer_initial - into_period as u32;
        }
        0
    }

    fn countdown_deadline(&self) -> u64 {
        let c = &self.countdown;
        c.epoch_ns.saturating_add(u64::from(c.epoch_count) * self.tick_ns())
    }

    /// Next expiry in virtual ns, if the timer is armed.
    pub fn timer_deadline(&self) -> Option<u64> {
        if self.timer_mode() == TimerMode::TscDeadline {
            return (self.tsc_deadline != 0).then(|| tsc_deadline_ns(self.tsc_deadline));
        }
        self.countdown.running.then(|| self.countdown_deadline())
    }

    /// Fire the timer if it is due at `now_ns`: request the LVT timer vector
    /// unless masked; re-arm a periodic timer at the next period boundary
    /// after `now_ns` (missed periods coalesce, as they do in IRR).
    pub fn timer_expired(&mut self, now_ns: u64) {
        let due = match self.timer_deadline() {
            Some(d) if d <= now_ns => d,
            _ => return,
        };
        match self.timer_mode() {
            // The SDM: expiry disarms the timer and clears IA32_TSC_DEADLINE.
            TimerMode::TscDeadline => self.tsc_deadline = 0,
            TimerMode::Periodic if self.timer_initial != 0 => {
                let period = u64::from(self.timer_initial) * self.tick_ns();
                let missed = (now_ns - due) / period;
                self.countdown =
                    Countdown { running: true, epoch_ns: due + missed * period, epoch_count: self.timer_initial };
            }
            _ => self.countdown.running = false,
        }
        let lvt = self.lvt[LVT_TIMER_IDX];
        if lvt & LVT_MASKED == 0 {
            self.accept_interrupt(lvt as u8, false);
        }
    }

    fn write_timer_initial(&mut self, value: u32, now_ns: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return; // ignored in TSC-deadline mode
        }
        self.timer_initial = value;
        self.countdown = Countdown { running: value != 0, epoch_ns: now_ns, epoch_count: value };
    }

    fn write_timer_divide(&mut self, value: u32, now_ns: u64) {
        // Keep the count reached so far; count on at the new rate.
        let count = self.current_count(now_ns);
        self.timer_divide = value & 0xb;
        if self.countdown.running {
            self.countdown.epoch_ns = now_ns;
            self.countdown.epoch_count = count;
        }
    }

    fn write_lvt(&mut self, idx: usize, value: u32) {
        let mut value = value & LVT_WRITABLE[idx];
        if !self.software_enabled() {
            value |= LVT_MASKED; // masks stay set while software-disabled
        }
        if idx == LVT_TIMER_IDX {
            let was_deadline = self.timer_mode() == TimerMode::TscDeadline;
            self.lvt[idx] = value;
            if was_deadline != (self.timer_mode() == TimerMode::TscDeadline) {
                // Switching to or from TSC-deadline mode disarms the timer.
                self.timer_initial = 0;
                self.countdown = Countdown::default();
                self.tsc_deadline = 0;
            }
        } else {
            self.lvt[idx] = value;
        }
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & SVR_WRITABLE;
        if self.svr & SVR_ENABLE == 0 {
            for lvt in &mut self.lvt {
                *lvt |= LVT_MASKED;
            }
        }
    }

    // ---- register file shared by xAPIC and x2APIC ----

    /// Read a register; `None` if it does not exist in the current mode.
    fn read_reg(&mut self, offset: u32, now_ns: u64) -> Option<u32> {
        let x2 = self.x2apic_mode();
        let idx = ((offset >> 4) & 7) as usize;
        Some(match offset {
            reg::ID if x2 => self.apic_id,
            reg::ID => self.apic_id << 24,
            reg::VERSION => APIC_VERSION,
            reg::TPR => self.tpr,
            reg::PPR => self.ppr(),
            reg::LDR => self.ldr(),
            reg::DFR if !x2 => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr[idx],
            0x180..=0x1f0 => self.tmr[idx],
            0x200..=0x270 => self.irr[idx],
            reg::ESR => self.esr,
            reg::ICR_LOW if !x2 => self.icr as u32,
            reg::ICR_HIGH if !x2 => (self.icr >> 32) as u32,
            reg::LVT_TIMER..=reg::LVT_ERROR => self.lvt[((offset - reg::LVT_TIMER) >> 4) as usize],
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now_ns),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        })
    }

    /// Write a register; `None` if it does not exist or is read-only in the
    /// current mode (xAPIC ignores that; x2APIC raises #GP).
    fn write_reg(&mut self, offset: u32, value: u32, now_ns: u64) -> Option<LapicAction> {
        let x2 = self.x2apic_mode();
        match offset {
            reg::TPR => self.tpr = value & 0xff,
            reg::EOI if x2 && value != 0 => return None,
            reg::EOI => return Some(self.eoi()),
            reg::LDR if !x2 => self.ldr = value & 0xff00_0000,
            reg::DFR if !x2 => self.dfr = value | 0x0fff_ffff,
            reg::SVR => self.write_svr(value),
            reg::ESR if x2 && value != 0 => return None,
            reg::ESR => {
                // A write latches the errors seen since the previous write.
                self.esr = self.esr_pending;
                self.esr_pending = 0;
            }
            reg::ICR_LOW if !x2 => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(value & ICR_LOW_WRITABLE);
                return Some(self.send_ipi());
            }
            reg::ICR_HIGH if !x2 => self.icr = (self.icr & 0xffff_ffff) | (u64::from(value & 0xff00_0000) << 32),
            reg::LVT_TIMER..=reg::LVT_ERROR => self.write_lvt(((offset - reg::LVT_TIMER) >> 4) as usize, value),
            reg::TIMER_INITIAL => self.write_timer_initial(value, now_ns),
            reg::TIMER_DIVIDE => self.write_timer_divide(value, now_ns),
            reg::SELF_IPI if x2 && value <= 0xff => {
                return Some(LapicAction::Ipi(Ipi {
                    vector: value as u8,
                    delivery: DeliveryMode::Fixed,
                    dest: IpiDest::SelfOnly,
                    level: true,
                    trigger_level: false,
                }));
            }
            _ => return None,
        }
        Some(LapicAction::None)
    }

    // ---- xAPIC MMIO ----

    /// A 32-bit read at `offset` in the xAPIC page. Reserved, write-only and
    /// misaligned offsets read 0, as does everything outside xAPIC mode.
    pub fn mmio_read(&mut self, offset: u32, now_ns: u64) -> u32 {
        if self.mmio_base().is_none() || offset & 0xf != 0 || offset > 0xff0 {
            return 0;
        }
        self.read_reg(offset, now_ns).unwrap_or(0)
    }

    /// A 32-bit write at `offset` in the xAPIC page; writes to read-only,
    /// reserved or misaligned offsets are ignored.
    pub fn mmio_write(&mut self, offset: u32, value: u32, now_ns: u64) -> LapicAction {
        if self.mmio_base().is_none() || offset & 0xf != 0 || offset > 0xff0 {
            return LapicAction::None;
        }
        self.write_reg(offset, value, now_ns).unwrap_or(LapicAction::None)
    }

    // ---- MSRs ----

    /// RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register.
    /// `Err(())` means #GP.
    // `Err(())` is the whole story (#GP); the machine's MSR interface expects this shape.
    #[allow(clippy::result_unit_err)]
    pub fn msr_read(&mut self, msr: u32, now_ns: u64) -> Result<u64, ()> {
        match msr {
            IA32_APIC_BASE => Ok(self.apic_base),
            // Reads 0 unless the timer is in TSC-deadline mode.
            IA32_TSC_DEADLINE if self.timer_mode() == TimerMode::TscDeadline => Ok(self.tsc_deadline),
            IA32_TSC_DEADLINE => Ok(0),
            X2APIC_ICR_MSR if self.x2apic_mode() => Ok(self.icr),
            X2APIC_FIRST..=X2APIC_LAST if self.x2apic_mode() => {
                self.read_reg((msr - X2APIC_FIRST) << 4, now_ns).map(u64::from).ok_or(())
            }
            _ => Err(()),
        }
    }

    /// WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register.
    /// `Err(())` means #GP.
    // `Err(())` is the whole story (#GP); the machine's MSR interface expects this shape.
    #[allow(clippy::result_unit_err)]
    pub fn msr_write(&mut self, msr: u32, value: u64, now_ns: u64) -> Result<LapicAction, ()> {
        match msr {
            IA32_APIC_BASE => self.write_apic_base(value).map(|()| LapicAction::None),
            IA32_TSC_DEADLINE => {
                // Ignored unless the timer is in TSC-deadline mode; 0 disarms.
                if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline = value;
                }
                Ok(LapicAction::None)
            }
            X2APIC_ICR_MSR if self.x2apic_mode() => {
                if value & X2APIC_ICR_RESERVED != 0 {
                    return Err(());
                }
                self.icr = value & !(1 << 12);
                Ok(self.send_ipi())
            }
            X2APIC_FIRST..=X2APIC_LAST if self.x2apic_mode() => {
                let value = u32::try_from(value).map_err(|_| ())?;
                self.write_reg((msr - X2APIC_FIRST) << 4, value, now_ns).ok_or(())
            }
            _ => Err(()),
        }
    }

    /// IA32_APIC_BASE: base address, EN (11), EXTD (10); BSP (8) is
    /// read-only. Legal mode changes (SDM "x2APIC State Transitions"):
    /// disabled <-> xAPIC, xAPIC -> x2APIC, x2APIC -> disabled. EXTD without
    /// EN, x2APIC -> xAPIC and disabled -> x2APIC raise #GP.
    fn write_apic_base(&mut self, value: u64) -> Result<(), ()> {
        let reserved = 0x2ff | !((1u64 << MAX_PHYS_BITS) - 1);
        if value & reserved != 0 {
            return Err(());
        }
        let (en, extd) = (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0);
        let (was_en, was_extd) = (self.hw_enabled(), self.x2apic_mode());
        let legal = match (en, extd) {
            (false, true) => false,
            (true, false) => !was_extd,
            (true, true) => was_en,
            (false, false) => true,
        };
        if !legal {
            return Err(());
        }
        self.apic_base = (value & !APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP);
        if was_en && !en {
            // Register state is not preserved through the disabled state.
            self.reset_registers();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X2_ICR: u32 = 0x830;
    const X2_SELF_IPI: u32 = 0x83f;

    fn enabled_xapic() -> Lapic {
        let mut l = Lapic::new(0, true);
        l.mmio_write(reg::SVR, SVR_ENABLE | 0xff, 0);
        l
    }

    fn enabled_x2apic(id: u32) -> Lapic {
        let mut l = Lapic::new(id, id == 0);
        let base = l.msr_read(IA32_APIC_BASE, 0).unwrap();
        l.msr_write(IA32_APIC_BASE, base | APIC_BASE_EXTD, 0).unwrap();
        l.msr_write(0x80f, u64::from(SVR_ENABLE | 0xff), 0).unwrap();
        l
    }

    #[test]
    fn power_up_state_matches_the_sdm() {
        let mut l = Lapic::new(3, false);
        assert_eq!(l.msr_read(IA32_APIC_BASE, 0), Ok(0xfee0_0800));
        assert_eq!(Lapic::new(0, true).msr_read(IA32_APIC_BASE, 0), Ok(0xfee0_0900));
        assert_eq!(l.mmio_read(reg::ID, 0), 3 << 24);
        assert_eq!(l.mmio_read(reg::VERSION, 0), 0x0005_0014);
        assert_eq!(l.mmio_read(reg::SVR, 0), 0xff);
        assert_eq!(l.mmio_read(reg::DFR, 0), 0xffff_ffff);
        for off in (reg::LVT_TIMER..=reg::LVT_ERROR).step_by(16) {
            assert_eq!(l.mmio_read(off, 0), LVT_MASKED, "LVT {off:#x}");
        }
        assert_eq!(l.pending_interrupt(), None);
    }

    #[test]
    fn ppr_is_tpr_or_isr_class_whichever_higher() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::TPR, 0x35, 0);
        assert_eq!(l.mmio_read(reg::PPR, 0), 0x35);
        l.accept_interrupt(0x61, false);
        assert_eq!(l.acknowledge(), Some(0x61));
        // ISRV class 6 > TPR class 3: PPR = 0x60 (low nibble cleared).
        assert_eq!(l.mmio_read(reg::PPR, 0), 0x60);
        l.mmio_write(reg::TPR, 0x6a, 0);
        // Equal classes: TPR wins, with its low nibble.
        assert_eq!(l.mmio_read(reg::PPR, 0), 0x6a);
    }

    #[test]
    fn only_higher_priority_classes_are_delivered() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::TPR, 0x40, 0);
        l.accept_interrupt(0x45, false);
        assert_eq!(l.pending_interrupt(), None, "class 4 is not above PPR class 4");
        l.accept_interrupt(0x50, false);
        assert_eq!(l.pending_interrupt(), Some(0x50));
        assert_eq!(l.acknowledge(), Some(0x50));
        l.accept_interrupt(0x51, false);
        assert_eq!(l.pending_interrupt(), None, "same class as in-service 0x50");
        l.accept_interrupt(0xe0, false);
        assert_eq!(l.acknowledge(), Some(0xe0), "nests above 0x50");
        assert_eq!(l.mmio_read(reg::ISR + 0x70, 0), 1 << 0);
        assert_eq!(l.mmio_read(reg::ISR + 0x20, 0), 1 << 16);
        assert_eq!(l.mmio_read(reg::IRR + 0x20, 0), (1 << 17) | (1 << 5));
    }

    #[test]
    fn eoi_clears_the_highest_in_service_vector() {
        let mut l = enabled_xapic();
        l.accept_interrupt(0x30, false);
        l.acknowledge();
        l.accept_interrupt(0x90, true);
        l.acknowledge();
        assert_eq!(l.mmio_read(reg::TMR + 0x40, 0), 1 << 16, "level-triggered sets TMR");
        let a = l.mmio_write(reg::EOI, 0, 0);
        assert_eq!(a, LapicAction::Eoi { vector: 0x90, level_triggered: true });
        assert_eq!(l.mmio_read(reg::ISR + 0x40, 0), 0);
        assert_eq!(l.mmio_read(reg::ISR + 0x10, 0), 1 << 16);
        let a = l.mmio_write(reg::EOI, 0, 0);
        assert_eq!(a, LapicAction::Eoi { vector: 0x30, level_triggered: false });
        assert_eq!(l.mmio_read(reg::ISR + 0x10, 0), 0);
        assert_eq!(l.ppr(), 0);
        assert_eq!(l.mmio_write(reg::EOI, 0, 0), LapicAction::None, "nothing in service");
    }

    #[test]
    fn pic_interrupts_need_lint0_extint_unmasked_or_a_disabled_lapic() {
        let mut l = Lapic::new(0, true);
        assert!(!l.accepts_pic_interrupt(), "reset: LINT0 masked");
        l.mmio_write(reg::SVR, SVR_ENABLE | 0xff, 0);
        l.mmio_write(reg::LVT_LINT0, 0x700, 0); // ExtINT, unmasked
        assert!(l.accepts_pic_interrupt());
        l.mmio_write(reg::LVT_LINT0, 0x1_0700, 0);
        assert!(!l.accepts_pic_interrupt(), "masked");
        l.mmio_write(reg::LVT_LINT0, 0x400, 0); // NMI
        assert!(!l.accepts_pic_interrupt());
        l.msr_write(IA32_APIC_BASE, LAPIC_BASE, 0).unwrap(); // EN clear
        assert!(l.accepts_pic_interrupt(), "hardware-disabled: INTR goes straight to the CPU");
    }

    #[test]
    fn software_disabled_lapic_drops_vectors_and_forces_masks() {
        let mut l = Lapic::new(0, true);
        l.accept_interrupt(0x40, false);
        assert_eq!(l.mmio_read(reg::IRR + 0x20, 0), 0);
        l.mmio_write(reg::LVT_TIMER, 0x20, 0);
        assert_eq!(l.mmio_read(reg::LVT_TIMER, 0), LVT_MASKED | 0x20);
        l.mmio_write(reg::SVR, SVR_ENABLE | 0xff, 0);
        l.mmio_write(reg::LVT_TIMER, 0x20, 0);
        assert_eq!(l.mmio_read(reg::LVT_TIMER, 0), 0x20);
        l.mmio_write(reg::SVR, 0xff, 0);
        assert_eq!(l.mmio_read(reg::LVT_TIMER, 0), LVT_MASKED | 0x20, "disabling masks every LVT");
    }

    #[test]
    fn illegal_vectors_are_reported_in_esr_after_a_write() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::LVT_ERROR, 0xfe, 0);
        l.accept_interrupt(0x0e, false);
        let a = l.mmio_write(reg::ICR_LOW, 0x0000_4005, 0); // fixed, vector 5
        assert_eq!(a, LapicAction::None);
        assert_eq!(l.mmio_read(reg::ESR, 0), 0, "not latched until ESR is written");
        l.mmio_write(reg::ESR, 0, 0);
        assert_eq!(l.mmio_read(reg::ESR, 0), ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(l.pending_interrupt(), Some(0xfe), "error LVT raised");
        l.mmio_write(reg::ESR, 0, 0);
        assert_eq!(l.mmio_read(reg::ESR, 0), 0);
    }

    #[test]
    fn xapic_icr_sends_ipis_with_8_bit_destinations() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::ICR_HIGH, 0x0300_0000, 0);
        assert_eq!(l.mmio_read(reg::ICR_HIGH, 0), 0x0300_0000);
        // INIT, level assert, physical destination 3.
        let a = l.mmio_write(reg::ICR_LOW, 0x0000_4500, 0);
        let init = Ipi {
            vector: 0,
            delivery: DeliveryMode::Init,
            dest: IpiDest::Physical(3),
            level: true,
            trigger_level: false,
        };
        assert_eq!(a, LapicAction::Ipi(init));
        // SIPI vector 0x9a to all excluding self.
        let a = l.mmio_write(reg::ICR_LOW, 0x000c_469a, 0);
        let sipi = Ipi { vector: 0x9a, delivery: DeliveryMode::StartUp, dest: IpiDest::AllExcludingSelf, ..init };
        assert_eq!(a, LapicAction::Ipi(sipi));
        // Fixed, logical destination 0x03 (from ICR high 31:24).
        l.mmio_write(reg::ICR_HIGH, 0x0300_0000, 0);
        let a = l.mmio_write(reg::ICR_LOW, 0x0000_0831, 0);
        assert!(matches!(a, LapicAction::Ipi(Ipi { vector: 0x31, dest: IpiDest::Logical(3), level: false, .. })));
        assert_eq!(l.mmio_read(reg::ICR_LOW, 0) & (1 << 12), 0, "delivery status idle");
        // Reserved delivery mode 3: nothing sent.
        assert_eq!(l.mmio_write(reg::ICR_LOW, 0x0000_0340, 0), LapicAction::None);
    }

    #[test]
    fn destination_matching_physical_flat_and_cluster() {
        let mut l = Lapic::new(2, false);
        assert!(l.matches_destination(&IpiDest::Physical(2), 0));
        assert!(l.matches_destination(&IpiDest::Physical(0xff), 0));
        assert!(!l.matches_destination(&IpiDest::Physical(1), 0));
        assert!(l.matches_destination(&IpiDest::SelfOnly, 2));
        assert!(!l.matches_destination(&IpiDest::SelfOnly, 0));
        assert!(!l.matches_destination(&IpiDest::AllExcludingSelf, 2));
        assert!(l.matches_destination(&IpiDest::AllIncludingSelf, 2));
        // Flat model (DFR = all ones): logical ID bit set in the destination.
        l.mmio_write(reg::LDR, 0x0400_0000, 0);
        assert!(l.matches_destination(&IpiDest::Logical(0x06), 0));
        assert!(!l.matches_destination(&IpiDest::Logical(0x03), 0));
        // Cluster model: cluster 2, member bit 1.
        l.mmio_write(reg::DFR, 0x0fff_ffff, 0);
        l.mmio_write(reg::LDR, 0x2200_0000, 0);
        assert_eq!(l.mmio_read(reg::DFR, 0), 0x0fff_ffff);
        assert!(l.matches_destination(&IpiDest::Logical(0x23), 0));
        assert!(!l.matches_destination(&IpiDest::Logical(0x13), 0));
        assert!(!l.matches_destination(&IpiDest::Logical(0x21), 0));
    }

    #[test]
    fn x2apic_registers_as_msrs() {
        let mut l = enabled_x2apic(0x25);
        assert_eq!(l.msr_read(0x802, 0), Ok(0x25));
        assert_eq!(l.msr_write(0x802, 0, 0), Err(()), "ID is read-only");
        assert_eq!(l.msr_read(0x803, 0), Ok(0x0005_0014));
        // Logical x2APIC ID: cluster 0x25 >> 4 = 2, bit 0x25 & 0xf = 5.
        assert_eq!(l.msr_read(0x80d, 0), Ok(0x0002_0020));
        assert_eq!(l.msr_read(0x80e, 0), Err(()), "no DFR in x2APIC mode");
        assert_eq!(l.msr_read(0x80b, 0), Err(()), "EOI is write-only");
        assert_eq!(l.msr_write(0x80b, 1, 0), Err(()), "EOI takes only 0");
        assert_eq!(l.msr_write(0x808, 1 << 32, 0), Err(()), "upper half reserved");
        assert_eq!(l.msr_write(0x839, 0, 0), Err(()), "current count is read-only");
        assert_eq!(l.msr_read(0x831, 0), Err(()), "no ICR high in x2APIC mode");
        assert_eq!(l.msr_read(0x82f, 0), Err(()), "no CMCI with max LVT 5");
        l.msr_write(0x808, 0x20, 0).unwrap();
        assert_eq!(l.msr_read(0x808, 0), Ok(0x20));
        assert_eq!(l.msr_read(0x80a, 0), Ok(0x20));
        assert_eq!(l.mmio_read(reg::TPR, 0), 0, "MMIO interface off in x2APIC mode");
        assert!(l.matches_destination(&IpiDest::Logical(0x0002_0021), 0));
        assert!(!l.matches_destination(&IpiDest::Logical(0x0001_0020), 0));
        assert!(l.matches_destination(&IpiDest::Physical(0x25), 0));
        assert!(!l.matches_destination(&IpiDest::Physical(0xff), 0), "0xff is not broadcast in x2APIC");
        assert!(l.matches_destination(&IpiDest::Physical(u32::MAX), 0));
    }

    #[test]
    fn x2apic_icr_and_self_ipi() {
        let mut l = enabled_x2apic(1);
        // Fixed vector 0x40 to physical x2APIC ID 0x1234 (32-bit destination).
        let a = l.msr_write(X2_ICR, 0x0000_1234_0000_4040, 0).unwrap();
        let ipi = Ipi {
            vector: 0x40,
            delivery: DeliveryMode::Fixed,
            dest: IpiDest::Physical(0x1234),
            level: true,
            trigger_level: false,
        };
        assert_eq!(a, LapicAction::Ipi(ipi));
        assert_eq!(l.msr_read(X2_ICR, 0), Ok(0x0000_1234_0000_4040));
        // Shorthand self via the ICR.
        let a = l.msr_write(X2_ICR, 0x0004_0041, 0).unwrap();
        assert!(matches!(a, LapicAction::Ipi(Ipi { vector: 0x41, dest: IpiDest::SelfOnly, .. })));
        assert_eq!(l.msr_write(X2_ICR, 1 << 20, 0), Err(()), "reserved ICR bit");
        // SELF IPI register: fixed, edge, to self; write-only.
        let a = l.msr_write(X2_SELF_IPI, 0xec, 0).unwrap();
        let self_ipi = Ipi { vector: 0xec, delivery: DeliveryMode::Fixed, dest: IpiDest::SelfOnly, ..ipi };
        assert_eq!(a, LapicAction::Ipi(self_ipi));
        assert!(l.matches_destination(&self_ipi.dest, 1));
        assert_eq!(l.msr_read(X2_SELF_IPI, 0), Err(()));
        assert_eq!(l.msr_write(X2_SELF_IPI, 0x100, 0), Err(()));
        // Not available in xAPIC mode.
        assert_eq!(enabled_xapic().msr_write(X2_SELF_IPI, 0xec, 0), Err(()));
        assert_eq!(enabled_xapic().msr_read(0x802, 0), Err(()));
    }

    #[test]
    fn apic_base_transitions_follow_the_sdm() {
        let xapic = 0xfee0_0800u64;
        let x2apic = xapic | APIC_BASE_EXTD;
        let disabled = 0xfee0_0000u64;
        let mut l = Lapic::new(1, false);
        assert_eq!(l.msr_write(IA32_APIC_BASE, disabled | APIC_BASE_EXTD, 0), Err(()), "EXTD without EN");
        assert_eq!(l.msr_write(IA32_APIC_BASE, xapic | 1, 0), Err(()), "reserved bit 0");
        assert_eq!(l.msr_write(IA32_APIC_BASE, xapic | (1 << 9), 0), Err(()), "reserved bit 9");
        assert_eq!(l.msr_write(IA32_APIC_BASE, xapic | (1 << MAX_PHYS_BITS), 0), Err(()), "beyond MAXPHYADDR");
        assert!(l.msr_write(IA32_APIC_BASE, x2apic, 0).is_ok(), "xAPIC -> x2APIC");
        assert!(l.x2apic_mode());
        assert_eq!(l.msr_write(IA32_APIC_BASE, xapic, 0), Err(()), "x2APIC -> xAPIC is illegal");
        assert!(l.msr_write(IA32_APIC_BASE, disabled, 0).is_ok(), "x2APIC -> disabled");
        assert_eq!(l.msr_write(IA32_APIC_BASE, x2apic, 0), Err(()), "disabled -> x2APIC is illegal");
        assert!(l.msr_write(IA32_APIC_BASE, xapic, 0).is_ok(), "disabled -> xAPIC");
        assert_eq!(l.msr_read(IA32_APIC_BASE, 0), Ok(xapic));
        // BSP is read-only.
        l.msr_write(IA32_APIC_BASE, xapic | APIC_BASE_BSP, 0).unwrap();
        assert_eq!(l.msr_read(IA32_APIC_BASE, 0), Ok(xapic));
        let mut bsp = Lapic::new(0, true);
        bsp.msr_write(IA32_APIC_BASE, xapic, 0).unwrap();
        assert_eq!(bsp.msr_read(IA32_APIC_BASE, 0), Ok(xapic | APIC_BASE_BSP));
    }

    #[test]
    fn disabling_resets_registers_and_stops_delivery() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::TPR, 0x20, 0);
        l.accept_interrupt(0x80, false);
        l.msr_write(IA32_APIC_BASE, 0xfee0_0000, 0).unwrap();
        assert_eq!(l.mmio_base(), None);
        assert_eq!(l.pending_interrupt(), None);
        assert!(!l.matches_destination(&IpiDest::AllIncludingSelf, 5));
        l.msr_write(IA32_APIC_BASE, 0xfee0_0800, 0).unwrap();
        assert_eq!(l.mmio_read(reg::TPR, 0), 0);
        assert_eq!(l.mmio_read(reg::SVR, 0), 0xff);
        assert_eq!(l.mmio_read(reg::IRR + 0x40, 0), 0);
    }

    #[test]
    fn one_shot_timer_counts_down_at_bus_rate_over_divisor() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::TIMER_DIVIDE, 0b1011, 0); // divide by 1
        l.mmio_write(reg::LVT_TIMER, 0x30, 0);
        l.mmio_write(reg::TIMER_INITIAL, 1000, 100);
        assert_eq!(l.timer_deadline(), Some(1100));
        assert_eq!(l.mmio_read(reg::TIMER_CURRENT, 600), 500);
        l.timer_expired(1099);
        assert_eq!(l.pending_interrupt(), None, "not due yet");
        l.timer_expired(1100);
        assert_eq!(l.pending_interrupt(), Some(0x30));
        assert_eq!(l.timer_deadline(), None);
        assert_eq!(l.mmio_read(reg::TIMER_CURRENT, 2000), 0);
        assert_eq!(l.mmio_read(reg::TIMER_INITIAL, 2000), 1000);
        // Divide by 16 (0b0011): 16 ns per tick.
        l.mmio_write(reg::TIMER_DIVIDE, 0b0011, 0);
        l.mmio_write(reg::TIMER_INITIAL, 10, 5000);
        assert_eq!(l.timer_deadline(), Some(5160));
        assert_eq!(l.mmio_read(reg::TIMER_CURRENT, 5016), 9);
        // Writing 0 stops it.
        l.mmio_write(reg::TIMER_INITIAL, 0, 5020);
        assert_eq!(l.timer_deadline(), None);
    }

    #[test]
    fn periodic_timer_rearms_with_divide_config() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::TIMER_DIVIDE, 0b0000, 0); // divide by 2
        l.mmio_write(reg::LVT_TIMER, (1 << 17) | 0xef, 0);
        l.mmio_write(reg::TIMER_INITIAL, 50, 0); // period 100 ns
        assert_eq!(l.timer_deadline(), Some(100));
        l.timer_expired(100);
        assert_eq!(l.acknowledge(), Some(0xef));
        assert_eq!(l.timer_deadline(), Some(200));
        // Reload: 30 ns into the second period the count is 50 - 15.
        assert_eq!(l.mmio_read(reg::TIMER_CURRENT, 130), 35);
        l.mmio_write(reg::EOI, 0, 150);
        // Serviced late (at 470): one interrupt, next boundary after now.
        l.timer_expired(470);
        assert_eq!(l.pending_interrupt(), Some(0xef));
        assert_eq!(l.timer_deadline(), Some(500));
        // Masked periodic timer keeps counting but raises nothing.
        l.acknowledge();
        l.mmio_write(reg::EOI, 0, 480);
        l.mmio_write(reg::LVT_TIMER, LVT_MASKED | (1 << 17) | 0xef, 480);
        l.timer_expired(500);
        assert_eq!(l.pending_interrupt(), None);
        assert_eq!(l.timer_deadline(), Some(600));
    }

    #[test]
    fn changing_divide_mid_count_keeps_the_count() {
        let mut l = enabled_xapic();
        l.mmio_write(reg::TIMER_DIVIDE, 0b1011, 0); // 1 ns/tick
        l.mmio_write(reg::TIMER_INITIAL, 100, 0);
        l.mmio_write(reg::TIMER_DIVIDE, 0b0001, 40); // 4 ns/tick from here, 60 left
        assert_eq!(l.mmio_read(reg::TIMER_CURRENT, 40), 60);
        assert_eq!(l.timer_deadline(), Some(40 + 240));
    }

    #[test]
    fn tsc_deadline_fires_at_the_right_ns_and_clears_itself() {
        let mut l = enabled_xapic();
        assert_eq!(l.msr_write(IA32_TSC_DEADLINE, 5000, 0), Ok(LapicAction::None));
        assert_eq!(l.msr_read(IA32_TSC_DEADLINE, 0), Ok(0), "ignored outside deadline mode");
        l.mmio_write(reg::LVT_TIMER, (2 << 17) | 0xd0, 0);
        let tsc = clock::ns_to_tsc(7000);
        l.msr_write(IA32_TSC_DEADLINE, tsc, 0).unwrap();
        assert_eq!(l.msr_read(IA32_TSC_DEADLINE, 0), Ok(tsc));
        assert_eq!(l.timer_deadline(), Some(7000));
        l.mmio_write(reg::TIMER_INITIAL, 10, 0);
        assert_eq!(l.mmio_read(reg::TIMER_INITIAL, 0), 0, "initial count ignored in deadline mode");
        l.timer_expired(6999);
        assert_eq!(l.pending_interrupt(), None);
        l.timer_expired(7000);
        assert_eq!(l.pending_interrupt(), Some(0xd0));
        assert_eq!(l.msr_read(IA32_TSC_DEADLINE, 0), Ok(0));
        assert_eq!(l.timer_deadline(), None);
        // Leaving deadline mode disarms.
        l.msr_write(IA32_TSC_DEADLINE, tsc + 1000, 7000).unwrap();
        l.mmio_write(reg::LVT_TIMER, 0xd0, 7000);
        assert_eq!(l.timer_deadline(), None);
        l.mmio_write(reg::LVT_TIMER, (2 << 17) | 0xd0, 7000);
        assert_eq!(l.msr_read(IA32_TSC_DEADLINE, 7000), Ok(0));
    }

    #[test]
    fn tsc_deadline_ns_rounds_up() {
        // With TSC_HZ = 1 GHz the conversion is exact; whatever the rate, a
        // deadline's ns must be the first ns whose TSC reaches it.
        for tsc in [0u64, 1, 999, 1_000_001, u64::MAX / 2] {
            let ns = tsc_deadline_ns(tsc);
            assert!(clock::ns_to_tsc(ns) >= tsc);
            assert!(ns == 0 || clock::ns_to_tsc(ns - 1) < tsc);
        }
    }

    #[test]
    fn misaligned_and_reserved_mmio_is_harmless() {
        let mut l = enabled_xapic();
        assert_eq!(l.mmio_read(reg::TPR + 4, 0), 0);
        assert_eq!(l.mmio_read(0xff0, 0), 0);
        assert_eq!(l.mmio_read(0x1_0000, 0), 0);
        assert_eq!(l.mmio_write(reg::VERSION, 0, 0), LapicAction::None);
        assert_eq!(l.mmio_read(reg::VERSION, 0), APIC_VERSION);
        assert_eq!(l.mmio_write(u32::MAX, u32::MAX, u64::MAX), LapicAction::None);
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Mmio(u32, u32),
        MmioRead(u32),
        Msr(u32, u64),
        MsrRead(u32),
        Accept(u8, bool),
        Ack,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let offset = prop_oneof![(0u32..0x40).prop_map(|i| i << 4), any::<u32>()];
        let msr = prop_oneof![0x800u32..0x900, Just(IA32_APIC_BASE), Just(IA32_TSC_DEADLINE), any::<u32>()];
        let value = prop_oneof![any::<u64>(), 0u64..0x100, Just(0xfee0_0c00), Just(0xfee0_0800)];
        prop_oneof![
            (offset.clone(), any::<u32>()).prop_map(|(o, v)| Op::Mmio(o, v)),
            offset.prop_map(Op::MmioRead),
            (msr.clone(), value).prop_map(|(m, v)| Op::Msr(m, v)),
            msr.prop_map(Op::MsrRead),
            (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Accept(v, l)),
            Just(Op::Ack),
            // Up to ~13 virtual days per step: time never nears u64::MAX.
            prop_oneof![0u64..1000, 0u64..(1 << 50)].prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Any guest access sequence: no panic, and the architectural
        /// invariants hold after every step.
        #[test]
        fn arbitrary_accesses_keep_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let mut l = Lapic::new(1, false);
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Mmio(o, v) => { l.mmio_write(o, v, now); }
                    Op::MmioRead(o) => { l.mmio_read(o, now); }
                    Op::Msr(m, v) => { let _ = l.msr_write(m, v, now); }
                    Op::MsrRead(m) => { let _ = l.msr_read(m, now); }
                    Op::Accept(v, lvl) => l.accept_interrupt(v, lvl),
                    Op::Ack => { l.acknowledge(); }
                    Op::Advance(d) => {
                        now = now.saturating_add(d);
                        l.timer_expired(now);
                    }
                }
                if let Some(v) = l.pending_interrupt() {
                    prop_assert!(u32::from(v) & 0xf0 > l.ppr() & 0xf0);
                    prop_assert!(v >= 16);
                }
                // Once expiries due at `now` are serviced, the timer is not overdue
                // (a periodic timer re-arms in the future, others disarm).
                let mut probe = l.clone();
                probe.timer_expired(now);
                prop_assert!(probe.timer_deadline().is_none_or(|d| d > now));
                let base = l.msr_read(IA32_APIC_BASE, now).unwrap();
                prop_assert!(base & (APIC_BASE_EN | APIC_BASE_EXTD) != APIC_BASE_EXTD, "invalid state reached");
                prop_assert_eq!(base & APIC_BASE_BSP, 0);
            }
        }
    }
}
