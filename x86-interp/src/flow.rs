//! Control transfer and the stack: JMP/Jcc/CALL/RET (near and far), LOOP
//! and JCXZ, ENTER/LEAVE, PUSH/POP (incl. segment registers, PUSHA/POPA,
//! PUSHF/POPF), INT n/INT3/INTO/INT1 and IRET.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};
use sim_core::memory::GuestMemory;
use sim_core::state::{gpr, rflags, sreg};

use crate::alu;
use crate::fault::{gp0, ud, vector, R};
use crate::interp::Interpreter;
use crate::interrupts::Source;
use crate::operands::{mask, sreg_index};

fn count_reg(code: Code) -> Register {
    use Code as C;
    match code {
        C::Loop_rel8_16_CX
        | C::Loop_rel8_32_CX
        | C::Loope_rel8_16_CX
        | C::Loope_rel8_32_CX
        | C::Loopne_rel8_16_CX
        | C::Loopne_rel8_32_CX
        | C::Jcxz_rel8_16
        | C::Jcxz_rel8_32 => Register::CX,
        C::Loop_rel8_16_RCX
        | C::Loop_rel8_64_RCX
        | C::Loope_rel8_16_RCX
        | C::Loope_rel8_64_RCX
        | C::Loopne_rel8_16_RCX
        | C::Loopne_rel8_64_RCX
        | C::Jrcxz_rel8_16
        | C::Jrcxz_rel8_64 => Register::RCX,
        _ => Register::ECX,
    }
}

impl Interpreter {
    /// Target of a relative branch, resolved against the real next RIP
    /// (cached instructions were decoded at a page offset).
    #[inline(always)]
    pub(crate) fn rel_target(&self, ins: &Instruction) -> u64 {
        let nip = ins.next_ip();
        match ins.op_kind(0) {
            OpKind::NearBranch16 => {
                let d = ins.near_branch16().wrapping_sub(nip as u16) as i16 as u64;
                self.next_rip.wrapping_add(d) & 0xffff
            }
            OpKind::NearBranch32 => {
                let d = ins.near_branch32().wrapping_sub(nip as u32) as i32 as u64;
                self.next_rip.wrapping_add(d) & 0xffff_ffff
            }
            _ => self.next_rip.wrapping_add(ins.near_branch64().wrapping_sub(nip)),
        }
    }

    /// Set RIP after checking canonical form / the CS limit.
    #[inline(always)]
    pub(crate) fn jump(&mut self, target: u64) -> R<()> {
        if self.long64 {
            if ((target as i64) << 16 >> 16) as u64 != target {
                return Err(gp0());
            }
        } else if target > self.s.seg[sreg::CS].limit as u64 {
            return Err(gp0());
        }
        self.next_rip = target;
        Ok(())
    }

    /// Operand size of a near branch/stack op from its stack effect.
    #[inline(always)]
    pub(crate) fn stack_size(ins: &Instruction) -> usize {
        use Code as C;
        match ins.code() {
            // The common forms without iced's general (slower) table walk.
            C::Push_r64 | C::Pop_r64 | C::Call_rel32_64 | C::Retnq | C::Pushq_imm8 | C::Pushq_imm32 => 8,
            C::Push_r32 | C::Pop_r32 | C::Call_rel32_32 | C::Retnd | C::Pushd_imm8 | C::Pushd_imm32 => 4,
            _ => ins.stack_pointer_increment().unsigned_abs() as usize,
        }
    }

    pub(crate) fn exec_flow(&mut self, m: &GuestMemory, ins: &Instruction) -> Option<R<()>> {
        use Mnemonic as M;
        Some(match ins.mnemonic() {
            _ if ins.is_jcc_short_or_near() => {
                if alu::cond(ins.condition_code(), self.s.rflags) {
                    let t = self.rel_target(ins);
                    self.jump(t)
                } else {
                    Ok(())
                }
            }
            M::Jmp => match ins.op_kind(0) {
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    let t = self.rel_target(ins);
                    self.jump(t)
                }
                OpKind::FarBranch16 | OpKind::FarBranch32 => {
                    let off = if ins.op_kind(0) == OpKind::FarBranch16 {
                        ins.far_branch16() as u64
                    } else {
                        ins.far_branch32() as u64
                    };
                    self.far_jump(m, ins.far_branch_selector(), off, None)
                }
                OpKind::Memory if matches!(ins.code(), Code::Jmp_m1616 | Code::Jmp_m1632 | Code::Jmp_m1664) => {
                    self.far_indirect(m, ins, false)
                }
                _ => {
                    let size = self.op_size(ins, 0);
                    match self.rd(m, ins, 0, size) {
                        Ok(t) => self.jump(t),
                        Err(e) => Err(e),
                    }
                }
            },
            M::Call => self.call(m, ins),
            M::Ret => {
                let size = Self::stack_size(ins);
                let extra = if ins.op_count() > 0 { ins.immediate16() as u64 } else { 0 };
                let size = if extra > 0 { size - extra as usize } else { size };
                self.ret_near(m, size, extra)
            }
            M::Retf => {
                let size = match ins.code() {
                    Code::Retfw | Code::Retfw_imm16 => 2,
                    Code::Retfd | Code::Retfd_imm16 => 4,
                    _ => 8,
                };
                let imm = if ins.op_count() > 0 { ins.immediate16() as u64 } else { 0 };
                self.far_ret(m, size, imm)
            }
            M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => self.loop_op(ins),
            M::Iret => self.iret(m, 2),
            M::Iretd => self.iret(m, 4),
            M::Iretq => self.iret(m, 8),
            M::Int => {
                let v = ins.immediate8();
                let nr = self.next_rip;
                self.deliver(m, v, None, Source::Software, nr)
            }
            M::Int3 => {
                let nr = self.next_rip;
                self.deliver(m, vector::BP, None, Source::Software, nr)
            }
            M::Into => {
                if self.long64 {
                    Err(ud())
                } else if self.s.rflags & rflags::OF != 0 {
                    let nr = self.next_rip;
                    self.deliver(m, vector::OF, None, Source::Software, nr)
                } else {
                    Ok(())
                }
            }
            M::Int1 => {
                let nr = self.next_rip;
                self.deliver(m, vector::DB, None, Source::Exception, nr)
            }
            M::Enter => self.enter(m, ins),
            M::Leave => {
                let size = match ins.code() {
                    Code::Leavew => 2,
                    Code::Leaved => 4,
                    _ => 8,
                };
                let mask = self.sp_mask();
                let bp = self.s.gpr[gpr::RBP] & mask;
                let v = match self.rd_mem(m, sreg::SS, bp, size) {
                    Ok(v) => v,
                    Err(e) => return Some(Err(e)),
                };
                let rsp = self.s.gpr[gpr::RSP];
                self.s.gpr[gpr::RSP] = (rsp & !mask) | (bp.wrapping_add(size as u64) & mask);
                let r = match size {
                    2 => Register::BP,
                    4 => Register::EBP,
                    _ => Register::RBP,
                };
                self.set_reg(r, v);
                Ok(())
            }
            M::Pushf | M::Pushfd | M::Pushfq => {
                let size = Self::stack_size(ins);
                // VM and RF read as zero in the pushed image.
                let v = self.s.rflags & !(rflags::VM | rflags::RF);
                self.push(m, v & mask(size), size)
            }
            M::Popf | M::Popfd | M::Popfq => {
                let size = Self::stack_size(ins);
                match self.peek(m, 0, size) {
                    Ok(v) => {
                        let keep_vm = self.s.rflags & rflags::VM;
                        let nf = self.merge_flags(v, size, false) & !(rflags::RF | rflags::VM);
                        self.s.gpr[gpr::RSP] = self.sp_after(size as u64);
                        self.s.rflags = nf | keep_vm;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            M::Pusha | M::Pushad => self.pusha(m, ins),
            M::Popa | M::Popad => self.popa(m, ins),
            M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => self.load_far_ptr(m, ins),
            _ => return None,
        })
    }

    pub(crate) fn call(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        match ins.op_kind(0) {
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                let t = self.rel_target(ins);
                let size = Self::stack_size(ins);
                let ret = self.next_rip & mask(size);
                self.jump(t)?;
                self.push(m, ret, size)
            }
            OpKind::FarBranch16 | OpKind::FarBranch32 => {
                let (off, size) = if ins.op_kind(0) == OpKind::FarBranch16 {
                    (ins.far_branch16() as u64, 2)
                } else {
                    (ins.far_branch32() as u64, 4)
                };
                self.far_jump(m, ins.far_branch_selector(), off, Some(size))
            }
            OpKind::Memory if matches!(ins.code(), Code::Call_m1616 | Code::Call_m1632 | Code::Call_m1664) => {
                self.far_indirect(m, ins, true)
            }
            _ => {
                let size = Self::stack_size(ins);
                let t = self.rd(m, ins, 0, size)?;
                let ret = self.next_rip & mask(size);
                self.jump(t)?;
                self.push(m, ret, size)
            }
        }
    }

    pub(crate) fn ret_near(&mut self, m: &GuestMemory, size: usize, extra: u64) -> R<()> {
        let t = self.peek(m, 0, size)?;
        self.jump(t)?;
        self.s.gpr[gpr::RSP] = self.sp_after(size as u64 + extra);
        Ok(())
    }

    fn loop_op(&mut self, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let r = count_reg(ins.code());
        let take = match ins.mnemonic() {
            M::Jcxz | M::Jecxz | M::Jrcxz => self.reg(r) == 0,
            mn => {
                let c = self.reg(r).wrapping_sub(1) & mask(r.size());
                let zf = self.s.rflags & rflags::ZF != 0;
                let t = c != 0
                    && match mn {
                        M::Loope => zf,
                        M::Loopne => !zf,
                        _ => true,
                    };
                let target = self.rel_target(ins);
                if t {
                    self.jump(target)?;
                }
                self.set_reg(r, c);
                return Ok(());
            }
        };
        if take {
            let t = self.rel_target(ins);
            self.jump(t)?;
        }
        Ok(())
    }

    /// Far JMP (call_size None) or far CALL to `sel:off` (same privilege).
    fn far_jump(&mut self, m: &GuestMemory, sel: u16, off: u64, call_size: Option<usize>) -> R<()> {
        let old_cs = self.s.seg[sreg::CS].selector as u64;
        let ret = self.next_rip;
        if self.real {
            if let Some(size) = call_size {
                let mask = self.sp_mask();
                let rsp = self.s.gpr[gpr::RSP];
                let a = rsp.wrapping_sub(size as u64) & mask;
                let b = rsp.wrapping_sub(2 * size as u64) & mask;
                self.wr_mem(m, sreg::SS, a, size, old_cs)?;
                self.wr_mem(m, sreg::SS, b, size, ret)?;
                self.s.gpr[gpr::RSP] = (rsp & !mask) | b;
            }
            let d = &mut self.s.seg[sreg::CS];
            d.selector = sel;
            d.base = (sel as u64) << 4;
            self.next_rip = off;
            return Ok(());
        }
        if sel & !3 != 0 {
            let raw = self.read_desc(m, sel, crate::fault::vector::GP)?;
            let ty = (raw >> 40) & 0x1f;
            let long = self.s.efer & sim_core::state::efer::LMA != 0;
            if ty == crate::gates::CALL_GATE_32 || (!long && ty == crate::gates::CALL_GATE_16) {
                return self.via_call_gate(m, sel, raw, call_size.is_some(), ret);
            }
        }
        let desc = self.check_far_code(m, sel)?;
        let new = sim_core::state::Segment::from_descriptor(sel, desc, 0);
        // Set the accessed bit first so nothing can fault after the pushes.
        self.set_desc_accessed(m, sel, desc)?;
        let desc = desc | 1 << 40;
        let long_target = self.s.efer & sim_core::state::efer::LMA != 0 && new.long();
        if !long_target && off > new.limit as u64 {
            return Err(gp0());
        }
        if let Some(size) = call_size {
            let mask = self.sp_mask();
            let rsp = self.s.gpr[gpr::RSP];
            let a = rsp.wrapping_sub(size as u64) & mask;
            let b = rsp.wrapping_sub(2 * size as u64) & mask;
            self.wr_mem(m, sreg::SS, a, size, old_cs)?;
            self.wr_mem(m, sreg::SS, b, size, ret)?;
            self.s.gpr[gpr::RSP] = (rsp & !mask) | b;
        }
        let cpl = self.cpl;
        self.set_cs(m, sel, desc, cpl)?;
        self.next_rip = off;
        Ok(())
    }

    /// JMP/CALL m16:16/32/64.
    fn far_indirect(&mut self, m: &GuestMemory, ins: &Instruction, call: bool) -> R<()> {
        let off_size = match ins.code() {
            Code::Jmp_m1616 | Code::Call_m1616 => 2,
            Code::Jmp_m1632 | Code::Call_m1632 => 4,
            _ => 8,
        };
        let (s, o) = self.ea(ins);
        let off = self.rd_mem(m, s, o, off_size)?;
        let sel = self.rd_mem(m, s, o.wrapping_add(off_size as u64) & mask(self.ea_size(ins)), 2)? as u16;
        self.far_jump(m, sel, off, call.then_some(off_size))
    }

    fn enter(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = match ins.code() {
            Code::Enterw_imm16_imm8 => 2,
            Code::Enterd_imm16_imm8 => 4,
            _ => 8,
        };
        let alloc = ins.immediate16() as u64;
        let level = (ins.immediate8_2nd() & 31) as u64;
        let mask = self.sp_mask();
        let rsp0 = self.s.gpr[gpr::RSP];
        let rbp = self.s.gpr[gpr::RBP];
        let mut sp = rsp0;
        sp = sp.wrapping_sub(size as u64) & mask;
        self.wr_mem(m, sreg::SS, sp, size, rbp)?;
        let frame = sp;
        if level > 0 {
            let mut bp = rbp;
            for _ in 1..level {
                bp = bp.wrapping_sub(size as u64) & mask;
                let v = self.rd_mem(m, sreg::SS, bp, size)?;
                sp = sp.wrapping_sub(size as u64) & mask;
                self.wr_mem(m, sreg::SS, sp, size, v)?;
            }
            sp = sp.wrapping_sub(size as u64) & mask;
            self.wr_mem(m, sreg::SS, sp, size, frame)?;
        }
        let new_sp = sp.wrapping_sub(alloc) & mask;
        // The final stack pointer must be writable too.
        self.lin(sreg::SS, new_sp, 1, true)?;
        self.s.gpr[gpr::RSP] = (rsp0 & !mask) | new_sp;
        let r = match size {
            2 => Register::BP,
            4 => Register::EBP,
            _ => Register::RBP,
        };
        self.set_reg(r, frame);
        Ok(())
    }

    pub(crate) fn push_op(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = Self::stack_size(ins);
        let v = match ins.op_kind(0) {
            OpKind::Register => self.reg(ins.op_register(0)),
            _ => self.rd(m, ins, 0, size)?,
        };
        self.push(m, v & mask(size), size)
    }

    pub(crate) fn pop_op(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = Self::stack_size(ins);
        let v = self.peek(m, 0, size)?;
        let old = self.s.gpr[gpr::RSP];
        let new = self.sp_after(size as u64);
        match ins.op_kind(0) {
            OpKind::Register => {
                let r = ins.op_register(0);
                if r.is_segment_register() {
                    let sr = sreg_index(r);
                    self.load_seg(m, sr, v as u16)?;
                    self.s.gpr[gpr::RSP] = new;
                    if sr == sreg::SS {
                        self.s.events.interrupt_shadow = true;
                    }
                } else {
                    self.s.gpr[gpr::RSP] = new;
                    self.set_reg(r, v);
                }
                Ok(())
            }
            _ => {
                // The address is computed with the incremented stack pointer.
                self.s.gpr[gpr::RSP] = new;
                let r = self.wr(m, ins, 0, size, v);
                if r.is_err() {
                    self.s.gpr[gpr::RSP] = old;
                }
                r
            }
        }
    }

    fn pusha(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = if ins.mnemonic() == Mnemonic::Pushad { 4 } else { 2 };
        let mask = self.sp_mask();
        let rsp = self.s.gpr[gpr::RSP];
        let mut sp = rsp;
        for i in 0..8 {
            sp = sp.wrapping_sub(size as u64) & mask;
            let v = if i == gpr::RSP { rsp } else { self.s.gpr[i] };
            self.wr_mem(m, sreg::SS, sp, size, v & crate::operands::mask(size))?;
        }
        self.s.gpr[gpr::RSP] = (rsp & !mask) | sp;
        Ok(())
    }

    fn popa(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = if ins.mnemonic() == Mnemonic::Popad { 4 } else { 2 };
        let mut vals = [0u64; 8];
        for (i, v) in vals.iter_mut().enumerate() {
            *v = self.peek(m, (i * size) as u64, size)?;
        }
        for (i, &v) in vals.iter().enumerate() {
            let r = 7 - i;
            if r == gpr::RSP {
                continue;
            }
            if size == 4 {
                self.s.gpr[r] = v;
            } else {
                self.s.gpr[r] = (self.s.gpr[r] & !0xffff) | v;
            }
        }
        self.s.gpr[gpr::RSP] = self.sp_after(8 * size as u64);
        Ok(())
    }

    /// LDS/LES/LFS/LGS/LSS r, m16:16/32/64.
    fn load_far_ptr(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let r = ins.op_register(0);
        let size = r.size();
        let (s, o) = self.ea(ins);
        let off = self.rd_mem(m, s, o, size)?;
        let sel = self.rd_mem(m, s, o.wrapping_add(size as u64) & mask(self.ea_size(ins)), 2)? as u16;
        let sr = match ins.mnemonic() {
            Mnemonic::Lds => sreg::DS,
            Mnemonic::Les => sreg::ES,
            Mnemonic::Lfs => sreg::FS,
            Mnemonic::Lgs => sreg::GS,
            _ => sreg::SS,
        };
        self.load_seg(m, sr, sel)?;
        self.set_reg(r, off);
        if sr == sreg::SS {
            self.s.events.interrupt_shadow = true;
        }
        Ok(())
    }
}
