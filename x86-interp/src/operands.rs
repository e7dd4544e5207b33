//! Operand access driven by iced-x86's operand kinds: registers (with the
//! AH..BH and 32-bit zero-extension rules), immediates, effective addresses
//! and the stack.

use iced_x86::{Instruction, OpKind, Register};
use sim_core::memory::GuestMemory;
use sim_core::state::{gpr, sreg};

use crate::fault::{ud, R};
use crate::interp::Interpreter;

#[inline(always)]
pub fn mask(size: usize) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

#[inline(always)]
pub fn sext(v: u64, size: usize) -> u64 {
    if size >= 8 {
        v
    } else {
        let sh = 64 - size * 8;
        (((v << sh) as i64) >> sh) as u64
    }
}

/// Address size implied by a base or index register (0 = none).
#[inline(always)]
fn reg_addr_size(r: Register) -> usize {
    match r as usize {
        21..=36 => 2,
        37..=52 | 69 => 4,
        53..=68 | 70 => 8,
        _ => 0,
    }
}

/// Segment register index (ES=0 .. GS=5) of an iced segment register.
#[inline(always)]
pub fn sreg_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ES as usize).min(5)
}

/// A read-modify-write location.
#[derive(Clone, Copy)]
pub enum Loc {
    Reg(Register),
    Mem(usize, u64),
}

impl Interpreter {
    #[inline(always)]
    pub(crate) fn reg(&self, r: Register) -> u64 {
        let g = &self.s.gpr;
        let n = r as usize;
        match n {
            1..=4 => g[n - 1] & 0xff,
            5..=8 => (g[n - 5] >> 8) & 0xff,
            9..=20 => g[n - 5] & 0xff,
            21..=36 => g[n - 21] & 0xffff,
            37..=52 => g[n - 37] & 0xffff_ffff,
            53..=68 => g[n - 53],
            _ => self.other_reg(r),
        }
    }

    #[cold]
    fn other_reg(&self, r: Register) -> u64 {
        if r.is_segment_register() {
            self.s.seg[sreg_index(r)].selector as u64
        } else {
            0
        }
    }

    #[inline(always)]
    pub(crate) fn set_reg(&mut self, r: Register, v: u64) {
        let g = &mut self.s.gpr;
        let n = r as usize;
        match n {
            1..=4 => g[n - 1] = (g[n - 1] & !0xff) | (v & 0xff),
            5..=8 => g[n - 5] = (g[n - 5] & !0xff00) | ((v & 0xff) << 8),
            9..=20 => g[n - 5] = (g[n - 5] & !0xff) | (v & 0xff),
            21..=36 => g[n - 21] = (g[n - 21] & !0xffff) | (v & 0xffff),
            37..=52 => g[n - 37] = v & 0xffff_ffff,
            53..=68 => g[n - 53] = v,
            _ => {}
        }
    }

    /// Effective address (segment index, offset) of the memory operand.
    #[inline(always)]
    pub(crate) fn ea(&self, ins: &Instruction) -> (usize, u64) {
        let base = ins.memory_base();
        let index = ins.memory_index();
        let mut off = ins.memory_displacement64();
        let mut asz = reg_addr_size(base) | reg_addr_size(index);
        if asz == 0 {
            asz = match ins.memory_displ_size() {
                d @ (2 | 4 | 8) => d as usize,
                _ => self.addr_size_default(),
            };
        }
        match base {
            Register::None => {}
            // iced resolved the target against the decode IP (a page offset).
            Register::RIP | Register::EIP => off = off.wrapping_sub(ins.next_ip()).wrapping_add(self.next_rip),
            b => off = off.wrapping_add(self.reg(b)),
        }
        if index != Register::None {
            off = off.wrapping_add(self.reg(index).wrapping_mul(ins.memory_index_scale() as u64));
        }
        (sreg_index(ins.memory_segment()), off & mask(asz))
    }

    pub(crate) fn addr_size_default(&self) -> usize {
        match self.bits {
            64 => 8,
            32 => 4,
            _ => 2,
        }
    }

    #[inline(always)]
    pub(crate) fn loc(&self, ins: &Instruction, i: u32) -> Loc {
        match ins.op_kind(i) {
            OpKind::Register => Loc::Reg(ins.op_register(i)),
            _ => {
                let (s, o) = self.ea(ins);
                Loc::Mem(s, o)
            }
        }
    }

    #[inline(always)]
    pub(crate) fn load(&mut self, m: &GuestMemory, loc: Loc, size: usize) -> R<u64> {
        match loc {
            Loc::Reg(r) => Ok(self.reg(r)),
            Loc::Mem(s, o) => self.rd_mem(m, s, o, size),
        }
    }

    #[inline(always)]
    pub(crate) fn store(&mut self, m: &GuestMemory, loc: Loc, size: usize, v: u64) -> R<()> {
        match loc {
            Loc::Reg(r) => {
                self.set_reg(r, v);
                Ok(())
            }
            Loc::Mem(s, o) => self.wr_mem(m, s, o, size, v),
        }
    }

    /// Read operand `i` (register, memory or immediate), masked to `size`.
    #[inline(always)]
    pub(crate) fn rd(&mut self, m: &GuestMemory, ins: &Instruction, i: u32, size: usize) -> R<u64> {
        match ins.op_kind(i) {
            OpKind::Register => Ok(self.reg(ins.op_register(i))),
            OpKind::Memory => {
                let (s, o) = self.ea(ins);
                self.rd_mem(m, s, o, size)
            }
            OpKind::Immediate8
            | OpKind::Immediate8_2nd
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(ins.immediate(i) & mask(size)),
            _ => Err(ud()),
        }
    }

    /// Write operand `i` (register or memory).
    #[inline(always)]
    pub(crate) fn wr(&mut self, m: &GuestMemory, ins: &Instruction, i: u32, size: usize, v: u64) -> R<()> {
        let loc = self.loc(ins, i);
        self.store(m, loc, size, v)
    }

    /// Size in bytes of operand `i`.
    #[inline(always)]
    pub(crate) fn op_size(&self, ins: &Instruction, i: u32) -> usize {
        match ins.op_kind(i) {
            OpKind::Register => ins.op_register(i).size(),
            OpKind::Memory => ins.memory_size().size(),
            OpKind::Immediate8 | OpKind::Immediate8_2nd => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            _ => 8,
        }
    }

    // The stack.

    #[inline(always)]
    pub(crate) fn sp_mask(&self) -> u64 {
        if self.long64 {
            u64::MAX
        } else if self.s.seg[sreg::SS].default_big() {
            0xffff_ffff
        } else {
            0xffff
        }
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, m: &GuestMemory, v: u64, size: usize) -> R<()> {
        let mask = self.sp_mask();
        let rsp = self.s.gpr[gpr::RSP];
        let new = rsp.wrapping_sub(size as u64) & mask;
        self.wr_mem(m, sreg::SS, new, size, v)?;
        self.s.gpr[gpr::RSP] = (rsp & !mask) | new;
        Ok(())
    }

    /// Read the top of the stack at `depth` bytes above RSP without popping.
    #[inline(always)]
    pub(crate) fn peek(&mut self, m: &GuestMemory, depth: u64, size: usize) -> R<u64> {
        let mask = self.sp_mask();
        let off = self.s.gpr[gpr::RSP].wrapping_add(depth) & mask;
        self.rd_mem(m, sreg::SS, off, size)
    }

    /// RSP after popping `bytes`.
    #[inline(always)]
    pub(crate) fn sp_after(&self, bytes: u64) -> u64 {
        let mask = self.sp_mask();
        let rsp = self.s.gpr[gpr::RSP];
        (rsp & !mask) | (rsp.wrapping_add(bytes) & mask)
    }
}
