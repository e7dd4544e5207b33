//! Far CALL and JMP through call gates (SDM vol. 2, CALL and JMP
//! pseudocode): 16- and 32-bit gates in protected mode, 64-bit gates in
//! IA-32e mode, with the stack switch (and, for legacy gates, parameter
//! copy) of a CALL to an inner privilege level.

use sim_core::memory::GuestMemory;
use sim_core::state::{efer, gpr, seg_attr, sreg, Segment};

use crate::fault::{exc_code, gp, gp0, vector, R};
use crate::interp::Interpreter;
use crate::interrupts::Stack;
use crate::operands::mask;
use crate::segments::{desc_attr, sel_err};

/// System-descriptor types of call gates.
pub const CALL_GATE_16: u64 = 0x4;
pub const CALL_GATE_32: u64 = 0xc;

impl Interpreter {
    /// Transfer through the call gate `gsel` (raw descriptor `gate`); `ret`
    /// is the return offset pushed by a CALL.
    pub(crate) fn via_call_gate(&mut self, m: &GuestMemory, gsel: u16, gate: u64, call: bool, ret: u64) -> R<()> {
        let long = self.s.efer & efer::LMA != 0;
        let ty = (gate >> 40) & 0xf;
        let gerr = gp(sel_err(gsel));
        if long && ty != CALL_GATE_32 {
            return Err(gerr);
        }
        let gdpl = ((gate >> 45) & 3) as u8;
        if gdpl < self.cpl || gdpl < (gsel & 3) as u8 {
            return Err(gerr);
        }
        if gate & (1 << 47) == 0 {
            return Err(exc_code(vector::NP, sel_err(gsel)));
        }
        let mut off = gate & 0xffff;
        if ty == CALL_GATE_32 {
            off |= ((gate >> 48) & 0xffff) << 16;
        }
        if long {
            let hi = self.read_desc_hi(m, gsel)?;
            if (hi >> 40) & 0x1f != 0 {
                return Err(gerr);
            }
            off |= (hi & 0xffff_ffff) << 32;
        }
        let csel = (gate >> 16) as u16;
        if csel & !3 == 0 {
            return Err(gp0());
        }
        let cerr = gp(sel_err(csel));
        let cdesc = self.read_desc(m, csel, vector::GP).map_err(|_| cerr)?;
        let attr = desc_attr(cdesc);
        let cdpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        if attr & seg_attr::S == 0 || attr & seg_attr::CODE == 0 || cdpl > self.cpl {
            return Err(cerr);
        }
        if long && (attr & seg_attr::L == 0 || attr & seg_attr::DB != 0) {
            return Err(cerr);
        }
        if attr & seg_attr::P == 0 {
            return Err(exc_code(vector::NP, sel_err(csel)));
        }
        let conforming = attr & seg_attr::DC != 0;
        let new_cpl = if conforming { self.cpl } else { cdpl };
        if !call && !conforming && cdpl != self.cpl {
            return Err(cerr);
        }
        self.set_desc_accessed(m, csel, cdesc)?;
        let cdesc = cdesc | 1 << 40;
        if call {
            let size = if long {
                8
            } else if ty == CALL_GATE_32 {
                4
            } else {
                2
            };
            if new_cpl < self.cpl {
                self.gate_stack_switch(m, gate, size, new_cpl, ret)?;
            } else {
                let smask = self.sp_mask();
                let rsp = self.s.gpr[gpr::RSP];
                let mut st = Stack {
                    seg: self.s.seg[sreg::SS],
                    sp: rsp & smask,
                    mask: smask,
                    long: self.long64,
                    user: self.cpl == 3,
                };
                let cs = self.s.seg[sreg::CS].selector as u64;
                self.push_on(m, &mut st, cs, size)?;
                self.push_on(m, &mut st, ret & mask(size), size)?;
                self.s.gpr[gpr::RSP] = (rsp & !smask) | st.sp;
            }
        }
        self.set_cs(m, csel, cdesc, new_cpl)?;
        self.next_rip = off;
        Ok(())
    }

    /// CALL through a gate to an inner privilege: new stack from the TSS,
    /// old SS:SP, the gate's parameters (legacy gates), CS:IP.
    fn gate_stack_switch(&mut self, m: &GuestMemory, gate: u64, size: usize, new_cpl: u8, ret: u64) -> R<()> {
        let old_ss = self.s.seg[sreg::SS];
        let old_sp = self.s.gpr[gpr::RSP];
        let old_cs = self.s.seg[sreg::CS].selector as u64;
        let n = new_cpl as u64;
        if size == 8 {
            let sp = self.tss_read(m, 4 + n * 8, 8)?;
            let mut st = Stack { seg: old_ss, sp, mask: u64::MAX, long: true, user: false };
            for v in [old_ss.selector as u64, old_sp, old_cs, ret] {
                self.push_on(m, &mut st, v, 8)?;
            }
            self.s.seg[sreg::SS] = Segment { selector: new_cpl as u16, base: 0, limit: 0, attr: (new_cpl as u16) << 5 };
            self.s.gpr[gpr::RSP] = st.sp;
            return Ok(());
        }
        let tss32 = self.s.tr.attr & 8 != 0;
        let (sp, ss) = if tss32 {
            (self.tss_read(m, 4 + n * 8, 4)?, self.tss_read(m, 8 + n * 8, 2)? as u16)
        } else {
            (self.tss_read(m, 2 + n * 4, 2)?, self.tss_read(m, 4 + n * 4, 2)? as u16)
        };
        let ssd = self.check_stack_seg(m, ss, new_cpl, vector::TS)?;
        let seg = Segment::from_descriptor(ss, ssd | 1 << 40, 0);
        let smask = if seg.default_big() { 0xffff_ffff } else { 0xffff };
        let mut st = Stack { seg, sp: sp & smask, mask: smask, long: false, user: new_cpl == 3 };
        self.push_on(m, &mut st, old_ss.selector as u64, size)?;
        self.push_on(m, &mut st, old_sp & mask(size), size)?;
        // Parameters keep their order: the deepest is pushed first.
        let count = (gate >> 32) & 0x1f;
        for i in (0..count).rev() {
            let v = self.peek(m, i * size as u64, size)?;
            self.push_on(m, &mut st, v, size)?;
        }
        self.push_on(m, &mut st, old_cs, size)?;
        self.push_on(m, &mut st, ret & mask(size), size)?;
        self.set_desc_accessed(m, ss, ssd)?;
        self.s.seg[sreg::SS] = seg;
        self.s.gpr[gpr::RSP] = st.sp;
        Ok(())
    }
}
