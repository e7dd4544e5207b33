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

fn acc(size: usize) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}
