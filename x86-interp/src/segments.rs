//! Descriptor tables and segment loads (Intel SDM vol. 3, chapter 5 and the
//! MOV/POP Sreg, far JMP/CALL/RET pseudocode).

use sim_core::memory::GuestMemory;
use sim_core::state::{seg_attr, sreg, Segment};

use crate::fault::{exc_code, gp, gp0, vector, R};
use crate::interp::Interpreter;

pub fn sel_err(sel: u16) -> u32 {
    (sel & 0xfffc) as u32
}

/// Access bits of a raw descriptor (type, S, DPL, P).
pub fn desc_attr(desc: u64) -> u16 {
    ((desc >> 40) & 0xff) as u16 | (((desc >> 52) & 0xf) as u16) << 8
}

impl Interpreter {
    /// Linear address of the descriptor for `sel`, checking the table limit.
    fn desc_la(&self, sel: u16, fault_vec: u8) -> R<u64> {
        let (base, limit) = if sel & 4 != 0 {
            let l = &self.s.ldtr;
            if !l.present() {
                return Err(exc_code(fault_vec, sel_err(sel)));
            }
            (l.base, l.limit as u64)
        } else {
            (self.s.gdtr.base, self.s.gdtr.limit as u64)
        };
        let idx = (sel & !7) as u64;
        if idx + 7 > limit {
            return Err(exc_code(fault_vec, sel_err(sel)));
        }
        Ok(base.wrapping_add(idx) & if self.s.efer & sim_core::state::efer::LMA != 0 { u64::MAX } else { 0xffff_ffff })
    }

    /// The 8-byte descriptor for `sel` (faults with `fault_vec`(sel)).
    pub(crate) fn read_desc(&mut self, m: &GuestMemory, sel: u16, fault_vec: u8) -> R<u64> {
        let la = self.desc_la(sel, fault_vec)?;
        self.read_la(m, la, 8, false)
    }

    /// The high 8 bytes of a 16-byte system descriptor (long mode).
    pub(crate) fn read_desc_hi(&mut self, m: &GuestMemory, sel: u16) -> R<u64> {
        let la = self.desc_la(sel.wrapping_add(8), vector::GP)?;
        self.read_la(m, la, 8, false)
    }

    /// Set the accessed bit of a code/data descriptor, as the CPU does.
    pub(crate) fn set_desc_accessed(&mut self, m: &GuestMemory, sel: u16, desc: u64) -> R<()> {
        if desc & (1 << 40) == 0 {
            let la = self.desc_la(sel, vector::GP)?;
            self.write_la(m, la + 5, 1, ((desc >> 40) as u8 | 1) as u64, false)?;
        }
        Ok(())
    }

    /// MOV/POP to a data segment register or SS (not CS).
    pub(crate) fn load_seg(&mut self, m: &GuestMemory, sr: usize, sel: u16) -> R<()> {
        if self.real {
            let d = &mut self.s.seg[sr];
            d.selector = sel;
            d.base = (sel as u64) << 4;
            if self.s.rflags & sim_core::state::rflags::VM != 0 {
                *d = Segment { selector: sel, base: (sel as u64) << 4, limit: 0xffff, attr: 0xf3 };
            }
            return Ok(());
        }
        let cpl = self.cpl;
        let rpl = (sel & 3) as u8;
        if sel & !3 == 0 {
            if sr == sreg::SS && !(self.long64 && cpl < 3 && rpl == cpl) {
                return Err(gp0());
            }
            // A null selector makes the register unusable.
            self.s.seg[sr] =
                Segment { selector: sel, base: 0, limit: 0, attr: if sr == sreg::SS { (cpl as u16) << 5 } else { 0 } };
            return Ok(());
        }
        let desc = self.read_desc(m, sel, vector::GP)?;
        let attr = desc_attr(desc);
        let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        let code = attr & seg_attr::CODE != 0;
        let rw = attr & seg_attr::RW != 0;
        if attr & seg_attr::S == 0 {
            return Err(gp(sel_err(sel)));
        }
        if sr == sreg::SS {
            if rpl != cpl || code || !rw || dpl != cpl {
                return Err(gp(sel_err(sel)));
            }
            if attr & seg_attr::P == 0 {
                return Err(exc_code(vector::SS, sel_err(sel)));
            }
        } else {
            if code && !rw {
                return Err(gp(sel_err(sel)));
            }
            let conforming_code = code && attr & seg_attr::DC != 0;
            if !conforming_code && (dpl < cpl || dpl < rpl) {
                return Err(gp(sel_err(sel)));
            }
            if attr & seg_attr::P == 0 {
                return Err(exc_code(vector::NP, sel_err(sel)));
            }
        }
        self.set_desc_accessed(m, sel, desc)?;
        self.s.seg[sr] = Segment::from_descriptor(sel, desc | 1 << 40, 0);
        Ok(())
    }

    /// Check a code-segment descriptor for a far JMP/CALL at the current
    /// privilege; returns the descriptor.
    pub(crate) fn check_far_code(&mut self, m: &GuestMemory, sel: u16) -> R<u64> {
        if sel & !3 == 0 {
            return Err(gp0());
        }
        let desc = self.read_desc(m, sel, vector::GP)?;
        let attr = desc_attr(desc);
        let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        let rpl = (sel & 3) as u8;
        if attr & seg_attr::S == 0 || attr & seg_attr::CODE == 0 {
            // Task gates and TSS targets: not modelled (call gates are in gates.rs).
            return Err(gp(sel_err(sel)));
        }
        if attr & seg_attr::DC != 0 {
            if dpl > self.cpl {
                return Err(gp(sel_err(sel)));
            }
        } else if rpl > self.cpl || dpl != self.cpl {
            return Err(gp(sel_err(sel)));
        }
        if attr & seg_attr::P == 0 {
            return Err(exc_code(vector::NP, sel_err(sel)));
        }
        if self.s.efer & sim_core::state::efer::LMA != 0 && attr & seg_attr::L != 0 && attr & seg_attr::DB != 0 {
            return Err(gp(sel_err(sel)));
        }
        Ok(desc)
    }

    /// Load CS from a checked descriptor at privilege `cpl`.
    pub(crate) fn set_cs(&mut self, m: &GuestMemory, sel: u16, desc: u64, cpl: u8) -> R<()> {
        self.set_desc_accessed(m, sel, desc)?;
        self.s.seg[sreg::CS] = Segment::from_descriptor((sel & !3) | cpl as u16, desc | 1 << 40, 0);
        self.refresh_mode();
        Ok(())
    }

    /// After a return to an outer privilege: data segment registers the new
    /// CPL may not use become null (SDM RET/IRET pseudocode).
    pub(crate) fn null_inaccessible_segments(&mut self) {
        let cpl = self.cpl;
        for sr in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
            let d = self.s.seg[sr];
            let conforming_code = d.is_code() && d.attr & seg_attr::DC != 0;
            if d.present() && !conforming_code && d.dpl() < cpl {
                self.s.seg[sr] =
                    Segment { selector: 0, base: if sr >= sreg::FS { d.base } else { 0 }, limit: 0, attr: 0 };
            }
        }
    }

    /// Validate an SS selector for a stack switch to privilege `cpl`.
    pub(crate) fn check_stack_seg(&mut self, m: &GuestMemory, sel: u16, cpl: u8, fault_vec: u8) -> R<u64> {
        if sel & !3 == 0 || (sel & 3) as u8 != cpl {
            return Err(exc_code(fault_vec, sel_err(sel)));
        }
        let desc = self.read_desc(m, sel, fault_vec)?;
        let attr = desc_attr(desc);
        let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        if attr & seg_attr::S == 0 || attr & seg_attr::CODE != 0 || attr & seg_attr::RW == 0 || dpl != cpl {
            return Err(exc_code(fault_vec, sel_err(sel)));
        }
        if attr & seg_attr::P == 0 {
            return Err(exc_code(vector::SS, sel_err(sel)));
        }
        Ok(desc)
    }
}
