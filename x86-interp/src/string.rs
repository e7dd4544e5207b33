//! String instructions (MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS) with
//! REP/REPE/REPNE in every address size. One element per execution: a
//! repeated instruction leaves RIP on itself until the count runs out, so
//! interrupts, exits and the budget see every iteration (each counts as one
//! retired instruction).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use sim_core::memory::GuestMemory;
use sim_core::state::{rflags, sreg};
use sim_core::VcpuExit;

use crate::alu;
use crate::fault::R;

use crate::interp::Interpreter;
use crate::operands::{mask, sreg_index};

impl Interpreter {
    pub(crate) fn exec_string(&mut self, m: &GuestMemory, ins: &Instruction) -> Option<R<()>> {
        if !ins.code().is_string_instruction() {
            return None;
        }
        Some(self.string_op(m, ins))
    }

    /// Address size of a string instruction from its implicit operands.
    fn string_asize(ins: &Instruction) -> usize {
        for i in 0..ins.op_count() {
            match ins.op_kind(i) {
                OpKind::MemorySegSI | OpKind::MemoryESDI => return 2,
                OpKind::MemorySegESI | OpKind::MemoryESEDI => return 4,
                OpKind::MemorySegRSI | OpKind::MemoryESRDI => return 8,
                _ => {}
            }
        }
        8
    }

    fn string_op(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let asz = Self::string_asize(ins);
        let (cx, si, di) = match asz {
            2 => (Register::CX, Register::SI, Register::DI),
            4 => (Register::ECX, Register::ESI, Register::EDI),
            _ => (Register::RCX, Register::RSI, Register::RDI),
        };
        let rep = ins.has_rep_prefix() || ins.has_repe_prefix() || ins.has_repne_prefix();
        let count = self.reg(cx);
        if rep && count == 0 {
            return Ok(());
        }
        let size = ins.memory_size().size().clamp(1, 8);
        if rep
            && matches!(
                ins.mnemonic(),
                M::Stosb | M::Stosw | M::Stosd | M::Stosq | M::Movsb | M::Movsw | M::Movsd | M::Movsq
            )
        {
            if let Some(done) = self.rep_bulk(ins, size, asz, count) {
                return done;
            }
        }
        let step = if self.s.rflags & rflags::DF != 0 { (size as u64).wrapping_neg() } else { size as u64 };
        let src_seg = sreg_index(ins.memory_segment());
        let (vsi, vdi) = (self.reg(si), self.reg(di));
        let am = mask(asz);
        let mut new_si = None;
        let mut new_di = None;
        let mut cmp_flags = None;
        let mn = ins.mnemonic();
        match mn {
            M::Movsb | M::Movsw | M::Movsd | M::Movsq => {
                let v = self.rd_mem(m, src_seg, vsi, size)?;
                self.wr_mem(m, sreg::ES, vdi, size, v)?;
                new_si = Some(vsi.wrapping_add(step) & am);
                new_di = Some(vdi.wrapping_add(step) & am);
            }
            M::Stosb | M::Stosw | M::Stosd | M::Stosq => {
                let v = self.s.gpr[0] & mask(size);
                self.wr_mem(m, sreg::ES, vdi, size, v)?;
                new_di = Some(vdi.wrapping_add(step) & am);
            }
            M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => {
                let v = self.rd_mem(m, src_seg, vsi, size)?;
                self.set_reg(acc(size), v);
                new_si = Some(vsi.wrapping_add(step) & am);
            }
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => {
                let a = self.rd_mem(m, src_seg, vsi, size)?;
                let b = self.rd_mem(m, sreg::ES, vdi, size)?;
                cmp_flags = Some(alu::sub(a, b, size as u8, self.s.rflags).1);
                new_si = Some(vsi.wrapping_add(step) & am);
                new_di = Some(vdi.wrapping_add(step) & am);
            }
            M::Scasb | M::Scasw | M::Scasd | M::Scasq => {
                let b = self.rd_mem(m, sreg::ES, vdi, size)?;
                let a = self.s.gpr[0] & mask(size);
                cmp_flags = Some(alu::sub(a, b, size as u8, self.s.rflags).1);
                new_di = Some(vdi.wrapping_add(step) & am);
            }
            M::Insb | M::Insw | M::Insd => {
                self.io_allowed()?;
                // Check the destination before the port is read, so a #PF
                // does not repeat the port access.
                let la = self.lin(sreg::ES, vdi, size, true)?;
                self.probe_write(m, la, size, self.cpl == 3)?;
                let port = self.s.gpr[2] as u16;
                let v = self.exit_read(VcpuExit::IoIn { port, size: size as u8 }, size)?;
                self.wr_mem(m, sreg::ES, vdi, size, v)?;
                new_di = Some(vdi.wrapping_add(step) & am);
            }
            _ => {
                // OUTS
                self.io_allowed()?;
                let v = self.rd_mem(m, src_seg, vsi, size)?;
                let port = self.s.gpr[2] as u16;
                self.exit_write(VcpuExit::IoOut { port, size: size as u8, data: v as u32 })?;
                new_si = Some(vsi.wrapping_add(step) & am);
            }
        }
        // Commit.
        if let Some(v) = new_si {
            self.set_reg(si, v);
        }
        if let Some(v) = new_di {
            self.set_reg(di, v);
        }
        if let Some(f) = cmp_flags {
            self.s.rflags = f;
        }
        if rep {
            let c = count.wrapping_sub(1) & am;
            self.set_reg(cx, c);
            let zf = self.s.rflags & rflags::ZF != 0;
            let stop_on_cond = match cmp_flags {
                Some(_) if ins.has_repe_prefix() => !zf,
                Some(_) if ins.has_repne_prefix() => zf,
                _ => false,
            };
            if c != 0 && !stop_on_cond {
                // Run this instruction again.
                self.next_rip = self.s.rip;
            }
        }
        Ok(())
    }
}

impl Interpreter {
    /// REP MOVS/STOS over RAM already in the TLB: many elements per
    /// execution, with exactly the architectural effect (and instruction
    /// count) of running the iterations one by one. Only forward, flat,
    /// 32/64-bit address size, no TF; None means: take the one-element path.
    fn rep_bulk(&mut self, ins: &Instruction, size: usize, asz: usize, count: u64) -> Option<R<()>> {
        use Mnemonic as M;
        let budget = self.run_target.saturating_sub(self.retired);
        if budget < 2 || asz < 4 || self.s.rflags & (rflags::DF | rflags::TF) != 0 {
            return None;
        }
        let movs = matches!(ins.mnemonic(), M::Movsb | M::Movsw | M::Movsd | M::Movsq);
        let src_seg = sreg_index(ins.memory_segment());
        let flat = |me: &Self, sr: usize| {
            me.long64 || {
                let d = &me.s.seg[sr];
                d.base == 0 && d.limit == 0xffff_ffff && d.present() && d.attr & sim_core::state::seg_attr::DC == 0
            }
        };
        if !flat(self, sreg::ES) || (movs && !flat(self, src_seg)) {
            return None;
        }
        let (si, di) = if asz == 4 { (Register::ESI, Register::EDI) } else { (Register::RSI, Register::RDI) };
        let (vsi, vdi) = (self.reg(si), self.reg(di));
        let user = self.cpl == 3;
        let seg_base = |me: &Self, sr: usize| if me.long64 && sr < sreg::FS { 0 } else { me.s.seg[sr].base };
        let dla = seg_base(self, sreg::ES).wrapping_add(vdi);
        let sla = seg_base(self, src_seg).wrapping_add(vsi);
        let dst = self.tlb.lookup(crate::tlb::Kind::Write, dla, user)?;
        let room = |la: u64| (4096 - (la & 0xfff)) / size as u64;
        let mut n = count.min(budget).min(room(dla));
        let src = if movs {
            n = n.min(room(sla));
            Some(self.tlb.lookup(crate::tlb::Kind::Read, sla, user)?)
        } else {
            None
        };
        // Keep the offsets inside the address size (no wrap in the run).
        let am = mask(asz);
        let span = n.checked_mul(size as u64)?;
        if vdi.checked_add(span)? > am || (movs && vsi.checked_add(span)? > am) || n < 2 {
            return None;
        }
        let v = self.s.gpr[0];
        for i in 0..n as usize {
            let off = i * size;
            // SAFETY: dst/src + n*size stay inside their TLB-mapped pages
            // (n <= room); element order matches the one-by-one semantics
            // even when source and destination overlap.
            unsafe {
                let d = (dst + off) as *mut u8;
                match src {
                    Some(s) => std::ptr::copy((s + off) as *const u8, d, size),
                    None => std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), d, size),
                }
            }
        }
        self.set_reg(di, vdi + span);
        if movs {
            self.set_reg(si, vsi + span);
        }
        let cx = if asz == 4 { Register::ECX } else { Register::RCX };
        let left = count - n;
        self.set_reg(cx, left);
        // The run loop retires one; the other n - 1 iterations retire here.
        self.retired += n - 1;
        if left != 0 {
            self.next_rip = self.s.rip;
        }
        Some(Ok(()))
    }
}

fn acc(size: usize) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}
