//! Instruction dispatch and the general-purpose integer instructions. Flag
//! arithmetic lives in `alu`; this file moves operands.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use sim_core::memory::GuestMemory;
use sim_core::state::{gpr, rflags};

use crate::alu::{self, ShiftOp};
use crate::fault::{exc, gp0, ud, vector, R};
use crate::interp::Interpreter;
use crate::lazy_flags;
use crate::operands::{mask, sext, Loc};

const ARITH: u64 = rflags::CF | rflags::PF | rflags::AF | rflags::ZF | rflags::SF | rflags::OF;

impl Interpreter {
    #[inline(always)]
    pub(crate) fn set_flags(&mut self, f: u64) {
        self.s.rflags = (self.s.rflags & !ARITH) | (f & ARITH);
        self.lazy.op = lazy_flags::NONE;
    }

    /// RFLAGS, with lazily recorded status flags computed (lazy_flags.rs).
    #[inline(always)]
    pub(crate) fn flags(&self) -> u64 {
        if self.lazy.op == lazy_flags::NONE {
            self.s.rflags
        } else {
            self.lazy.apply(self.s.rflags)
        }
    }

    /// Make `s.rflags` exact (before code that reads or writes it directly).
    #[inline(always)]
    pub(crate) fn materialise_flags(&mut self) {
        if self.lazy.op != lazy_flags::NONE {
            self.s.rflags = self.lazy.apply(self.s.rflags);
            self.lazy.op = lazy_flags::NONE;
        }
    }

    pub(crate) fn exec(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        match ins.mnemonic() {
            M::Add | M::Or | M::Adc | M::Sbb | M::And | M::Sub | M::Xor | M::Cmp | M::Test => self.binop(m, ins),
            // MOVNTI is a plain store here (no caches to bypass).
            M::Mov | M::Movnti => self.mov(m, ins),
            M::Inc | M::Dec | M::Neg | M::Not => self.unop(m, ins),
            M::Push => self.push_op(m, ins),
            M::Pop => self.pop_op(m, ins),
            M::Lea => {
                let (_, off) = self.ea(ins);
                let size = ins.op_register(0).size();
                self.set_reg(ins.op_register(0), off & mask(size));
                Ok(())
            }
            M::Movzx => {
                let v = self.rd(m, ins, 1, self.op_size(ins, 1))?;
                self.set_reg(ins.op_register(0), v);
                Ok(())
            }
            M::Movsx | M::Movsxd => {
                let ss = self.op_size(ins, 1);
                let v = sext(self.rd(m, ins, 1, ss)?, ss);
                let ds = ins.op_register(0).size();
                self.set_reg(ins.op_register(0), v & mask(ds));
                Ok(())
            }
            M::Wbinvd | M::Invd => {
                if self.cpl != 0 {
                    return Err(gp0());
                }
                Ok(())
            }
            M::Nop
            | M::Pause
            | M::Endbr32
            | M::Endbr64
            | M::Lfence
            | M::Sfence
            | M::Mfence
            | M::Prefetch
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw => Ok(()),
            M::Clflush | M::Clflushopt => {
                // Check the address is readable, as the CPU does.
                let (s, o) = self.ea(ins);
                self.rd_mem(m, s, o, 1).map(|_| ())
            }
            M::Xchg => self.xchg(m, ins),
            M::Cmpxchg => self.cmpxchg(m, ins),
            M::Cmpxchg8b | M::Cmpxchg16b => self.cmpxchg_wide(m, ins),
            M::Xadd => self.xadd(m, ins),
            M::Mul | M::Imul | M::Div | M::Idiv => self.muldiv(m, ins),
            M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => self.shift(m, ins),
            M::Shld | M::Shrd => {
                let size = self.op_size(ins, 0);
                let dst = self.loc(ins, 0);
                let a = self.load(m, dst, size)?;
                let b = self.reg(ins.op_register(1));
                let c = self.rd(m, ins, 2, 1)? as u8;
                let (r, f) = if ins.mnemonic() == M::Shld {
                    alu::shld(a, b, c, size as u8, self.flags())
                } else {
                    alu::shrd(a, b, c, size as u8, self.flags())
                };
                self.store(m, dst, size, r)?;
                self.set_flags(f);
                Ok(())
            }
            M::Bt | M::Bts | M::Btr | M::Btc => self.bit_test(m, ins),
            M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => {
                // Without BMI1/LZCNT in CPUID, F3-prefixed forms run as BSF/BSR.
                let size = self.op_size(ins, 0);
                let v = self.rd(m, ins, 1, size)?;
                let forward = matches!(ins.mnemonic(), M::Bsf | M::Tzcnt);
                let (r, f) =
                    if forward { alu::bsf(v, size as u8, self.flags()) } else { alu::bsr(v, size as u8, self.flags()) };
                if let Some(r) = r {
                    self.set_reg(ins.op_register(0), r);
                }
                self.s.rflags = f;
                Ok(())
            }
            M::Bswap => {
                let r = ins.op_register(0);
                let size = r.size();
                let v = if size == 2 { 0 } else { alu::bswap(self.reg(r), size as u8) };
                self.set_reg(r, v);
                Ok(())
            }
            M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg => {
                let size = ins.op_register(0).size();
                let v = self.rd(m, ins, 1, size)?;
                let r = ins.op_register(0);
                if alu::cond(ins.condition_code(), self.flags()) {
                    self.set_reg(r, v);
                } else if size == 4 {
                    // A 32-bit CMOV zero-extends even when false.
                    self.set_reg(r, self.reg(r));
                }
                Ok(())
            }
            M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg => {
                let v = alu::cond(ins.condition_code(), self.flags()) as u64;
                self.wr(m, ins, 0, 1, v)
            }
            M::Cbw => self.ext_acc(1),
            M::Cwde => self.ext_acc(2),
            M::Cdqe => self.ext_acc(4),
            M::Cwd => self.ext_dx(2),
            M::Cdq => self.ext_dx(4),
            M::Cqo => self.ext_dx(8),
            M::Lahf => {
                let ah = (self.s.rflags & 0xd5) | 2;
                self.set_reg(Register::AH, ah);
                Ok(())
            }
            M::Sahf => {
                let ah = self.reg(Register::AH);
                self.s.rflags = (self.s.rflags & !0xd5) | (ah & 0xd5) | rflags::FIXED1;
                Ok(())
            }
            M::Clc => self.flag_op(rflags::CF, Some(false)),
            M::Stc => self.flag_op(rflags::CF, Some(true)),
            M::Cmc => self.flag_op(rflags::CF, None),
            M::Cld => self.flag_op(rflags::DF, Some(false)),
            M::Std => self.flag_op(rflags::DF, Some(true)),
            M::Xlatb => {
                let (s, o) = self.ea(ins);
                let v = self.rd_mem(m, s, o, 1)?;
                self.set_reg(Register::AL, v);
                Ok(())
            }
            M::Ud0 | M::Ud1 | M::Ud2 => Err(ud()),
            M::Daa | M::Das | M::Aaa | M::Aas | M::Aam | M::Aad => self.bcd(ins),
            M::Salc => {
                let v = if self.s.rflags & rflags::CF != 0 { 0xff } else { 0 };
                self.set_reg(Register::AL, v);
                Ok(())
            }
            M::Bound => self.bound(m, ins),
            M::INVALID => Err(ud()),
            _ => self.exec_more(m, ins),
        }
    }

    fn exec_more(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        if let Some(r) = self.exec_flow(m, ins) {
            return r;
        }
        if let Some(r) = self.exec_string(m, ins) {
            return r;
        }
        if let Some(r) = self.exec_system(m, ins) {
            return r;
        }
        if let Some(r) = self.exec_simd(m, ins) {
            return r;
        }
        // Unimplemented x87 arithmetic still honours CR0.EM/TS (#NM) first.
        if ins.cpuid_features().contains(&iced_x86::CpuidFeature::FPU)
            && self.s.cr0 & (sim_core::state::cr0::EM | sim_core::state::cr0::TS) != 0
        {
            return Err(exc(vector::NM));
        }
        self.warn_once(ins);
        Err(ud())
    }

    fn flag_op(&mut self, bit: u64, v: Option<bool>) -> R<()> {
        match v {
            Some(true) => self.s.rflags |= bit,
            Some(false) => self.s.rflags &= !bit,
            None => self.s.rflags ^= bit,
        }
        Ok(())
    }

    fn ext_acc(&mut self, from: usize) -> R<()> {
        let v = sext(self.s.gpr[gpr::RAX] & mask(from), from);
        let to = from * 2;
        let a = &mut self.s.gpr[gpr::RAX];
        *a = match to {
            2 => (*a & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
        Ok(())
    }

    fn ext_dx(&mut self, size: usize) -> R<()> {
        let neg = self.s.gpr[gpr::RAX] & (1u64 << (size * 8 - 1)) != 0;
        let v = if neg { u64::MAX } else { 0 };
        let r = match size {
            2 => Register::DX,
            4 => Register::EDX,
            _ => Register::RDX,
        };
        self.set_reg(r, v);
        Ok(())
    }

    #[inline(always)]
    fn binop(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let size = self.op_size(ins, 0);
        let dst = self.loc(ins, 0);
        let a = self.load(m, dst, size)?;
        let b = self.rd(m, ins, 1, size)?;
        let f = self.flags();
        let sz = size as u8;
        let (r, f) = match ins.mnemonic() {
            M::Add => alu::add(a, b, sz, f),
            M::Or => alu::or(a, b, sz, f),
            M::Adc => alu::adc(a, b, sz, f),
            M::Sbb => alu::sbb(a, b, sz, f),
            M::And | M::Test => alu::and(a, b, sz, f),
            M::Xor => alu::xor(a, b, sz, f),
            _ => alu::sub(a, b, sz, f),
        };
        if !matches!(ins.mnemonic(), M::Cmp | M::Test) {
            self.store(m, dst, size, r)?;
        }
        self.set_flags(f);
        Ok(())
    }

    #[inline(always)]
    fn unop(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = self.op_size(ins, 0);
        let dst = self.loc(ins, 0);
        let a = self.load(m, dst, size)?;
        let f = self.flags();
        let sz = size as u8;
        let (r, f) = match ins.mnemonic() {
            Mnemonic::Inc => alu::inc(a, sz, f),
            Mnemonic::Dec => alu::dec(a, sz, f),
            Mnemonic::Neg => alu::neg(a, sz, f),
            _ => (!a & mask(size), f),
        };
        self.store(m, dst, size, r)?;
        self.set_flags(f);
        Ok(())
    }

    #[inline(always)]
    fn mov(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let k0 = ins.op_kind(0);
        if ins.op_kind(1) == OpKind::Register && (ins.op_register(1).is_cr() || ins.op_register(1).is_dr()) {
            return self.mov_special(m, ins);
        }
        if k0 == OpKind::Register {
            let r = ins.op_register(0);
            if r.is_gpr() {
                let size = r.size();
                // MOV from a segment register zero-extends to the operand size.
                let v = self.rd(m, ins, 1, size)?;
                self.set_reg(r, v);
                return Ok(());
            }
            if r.is_segment_register() {
                let sel = self.rd(m, ins, 1, 2)? as u16;
                let sr = crate::operands::sreg_index(r);
                if sr == sim_core::state::sreg::CS {
                    return Err(ud());
                }
                self.load_seg(m, sr, sel)?;
                if sr == sim_core::state::sreg::SS {
                    self.s.events.interrupt_shadow = true;
                }
                return Ok(());
            }
            return self.mov_special(m, ins);
        }
        if ins.op_kind(1) == OpKind::Register {
            let r = ins.op_register(1);
            if !r.is_gpr() && !r.is_segment_register() {
                return self.mov_special(m, ins);
            }
        }
        let size = self.op_size(ins, 0);
        let v = self.rd(m, ins, 1, size)?;
        self.wr(m, ins, 0, size, v)
    }

    fn xchg(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = self.op_size(ins, 0);
        let (l0, l1) = (self.loc(ins, 0), self.loc(ins, 1));
        let a = self.load(m, l0, size)?;
        let b = self.load(m, l1, size)?;
        // Memory first, so a fault leaves registers untouched.
        if let Loc::Mem(..) = l1 {
            self.store(m, l1, size, a)?;
            self.store(m, l0, size, b)
        } else {
            self.store(m, l0, size, b)?;
            self.store(m, l1, size, a)
        }
    }

    fn cmpxchg(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = self.op_size(ins, 0);
        let dst = self.loc(ins, 0);
        let d = self.load(m, dst, size)?;
        let acc = self.s.gpr[gpr::RAX] & mask(size);
        let (_, f) = alu::sub(acc, d, size as u8, self.flags());
        if acc == d {
            let src = self.reg(ins.op_register(1));
            self.store(m, dst, size, src)?;
        } else {
            // The destination is always written back (locked RMW).
            self.store(m, dst, size, d)?;
            let r = match size {
                1 => Register::AL,
                2 => Register::AX,
                4 => Register::EAX,
                _ => Register::RAX,
            };
            self.set_reg(r, d);
        }
        self.set_flags(f);
        Ok(())
    }

    fn cmpxchg_wide(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let wide = ins.mnemonic() == Mnemonic::Cmpxchg16b;
        let half = if wide { 8 } else { 4 };
        let (s, o) = self.ea(ins);
        if wide && o & 15 != 0 {
            return Err(gp0());
        }
        let lo = self.rd_mem(m, s, o, half)?;
        let hi = self.rd_mem(m, s, o.wrapping_add(half as u64), half)?;
        let g = &self.s.gpr;
        let mk = mask(half);
        let equal = lo == g[gpr::RAX] & mk && hi == g[gpr::RDX] & mk;
        let (nlo, nhi) = if equal { (g[gpr::RBX] & mk, g[gpr::RCX] & mk) } else { (lo, hi) };
        let la = self.lin(s, o, half * 2, true)?;
        self.probe_write(m, la, half * 2, self.cpl == 3)?;
        self.wr_mem(m, s, o, half, nlo)?;
        self.wr_mem(m, s, o.wrapping_add(half as u64), half, nhi)?;
        if equal {
            self.s.rflags |= rflags::ZF;
        } else {
            self.s.rflags &= !rflags::ZF;
            if wide {
                self.s.gpr[gpr::RAX] = lo;
                self.s.gpr[gpr::RDX] = hi;
            } else {
                self.s.gpr[gpr::RAX] = lo & 0xffff_ffff;
                self.s.gpr[gpr::RDX] = hi & 0xffff_ffff;
            }
        }
        Ok(())
    }

    fn xadd(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = self.op_size(ins, 0);
        let dst = self.loc(ins, 0);
        let a = self.load(m, dst, size)?;
        let src = ins.op_register(1);
        let b = self.reg(src);
        let (r, f) = alu::add(a, b, size as u8, self.flags());
        self.store(m, dst, size, r)?;
        self.set_reg(src, a);
        if let Loc::Reg(d) = dst {
            // XADD reg, reg with the same register: the sum wins.
            if d.full_register() == src.full_register() {
                self.set_reg(d, r);
            }
        }
        self.set_flags(f);
        Ok(())
    }

    fn acc_regs(size: usize) -> (Register, Register) {
        match size {
            1 => (Register::AL, Register::AH),
            2 => (Register::AX, Register::DX),
            4 => (Register::EAX, Register::EDX),
            _ => (Register::RAX, Register::RDX),
        }
    }

    pub(crate) fn muldiv(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let f = self.flags();
        if ins.mnemonic() == M::Imul && ins.op_count() >= 2 {
            let size = ins.op_register(0).size();
            let (a, b) = if ins.op_count() == 3 {
                (self.rd(m, ins, 1, size)?, self.rd(m, ins, 2, size)?)
            } else {
                (self.reg(ins.op_register(0)), self.rd(m, ins, 1, size)?)
            };
            let (lo, _, f) = alu::imul(a, b, size as u8, f);
            self.set_reg(ins.op_register(0), lo);
            self.set_flags(f);
            return Ok(());
        }
        let size = self.op_size(ins, 0);
        let src = self.rd(m, ins, 0, size)?;
        let (ra, rd) = Self::acc_regs(size);
        let sz = size as u8;
        let (lo_in, hi_in) =
            if size == 1 { (self.reg(Register::AL), self.reg(Register::AH)) } else { (self.reg(ra), self.reg(rd)) };
        match ins.mnemonic() {
            M::Mul | M::Imul => {
                let (lo, hi, f) =
                    if ins.mnemonic() == M::Mul { alu::mul(lo_in, src, sz, f) } else { alu::imul(lo_in, src, sz, f) };
                if size == 1 {
                    self.set_reg(Register::AX, (hi << 8) | lo);
                } else {
                    self.set_reg(ra, lo);
                    self.set_reg(rd, hi);
                }
                self.set_flags(f);
            }
            _ => {
                let r = if ins.mnemonic() == M::Div {
                    alu::div(hi_in, lo_in, src, sz)
                } else {
                    alu::idiv(hi_in, lo_in, src, sz)
                };
                let (q, rem) = r.ok_or(exc(vector::DE))?;
                if size == 1 {
                    self.set_reg(Register::AX, ((rem & 0xff) << 8) | (q & 0xff));
                } else {
                    self.set_reg(ra, q);
                    self.set_reg(rd, rem);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn shift(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let size = self.op_size(ins, 0);
        let dst = self.loc(ins, 0);
        let a = self.load(m, dst, size)?;
        let count = self.rd(m, ins, 1, 1)? as u8;
        let op = match ins.mnemonic() {
            M::Rol => ShiftOp::Rol,
            M::Ror => ShiftOp::Ror,
            M::Rcl => ShiftOp::Rcl,
            M::Rcr => ShiftOp::Rcr,
            M::Shl | M::Sal => ShiftOp::Shl,
            M::Shr => ShiftOp::Shr,
            _ => ShiftOp::Sar,
        };
        let (r, f) = alu::shift(op, a, count, size as u8, self.flags());
        self.store(m, dst, size, r)?;
        self.s.rflags = f;
        Ok(())
    }

    fn bit_test(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let size = self.op_size(ins, 0);
        let bits = (size * 8) as u64;
        let src_is_reg = ins.op_kind(1) == OpKind::Register;
        let raw = self.rd(m, ins, 1, size)?;
        let mut dst = self.loc(ins, 0);
        let bit = if let (Loc::Mem(s, o), true) = (dst, src_is_reg) {
            // A register bit offset reaches beyond the operand (signed).
            let off = sext(raw, size) as i64;
            let delta = (off >> bits.trailing_zeros()) * size as i64;
            let o = (o.wrapping_add(delta as u64)) & mask(self.ea_size(ins));
            dst = Loc::Mem(s, o);
            (off as u64) & (bits - 1)
        } else {
            raw & (bits - 1)
        };
        let v = self.load(m, dst, size)?;
        let set = (v >> bit) & 1 != 0;
        let nv = match ins.mnemonic() {
            M::Bts => v | 1 << bit,
            M::Btr => v & !(1 << bit),
            M::Btc => v ^ 1 << bit,
            _ => v,
        };
        if ins.mnemonic() != M::Bt {
            self.store(m, dst, size, nv)?;
        }
        self.s.rflags = (self.s.rflags & !rflags::CF) | set as u64;
        Ok(())
    }

    /// Address size of the memory operand, in bytes.
    pub(crate) fn ea_size(&self, ins: &Instruction) -> usize {
        let r = |x: Register| match x as usize {
            21..=36 => 2,
            37..=52 | 69 => 4,
            53..=68 | 70 => 8,
            _ => 0,
        };
        match r(ins.memory_base()) | r(ins.memory_index()) {
            0 => match ins.memory_displ_size() {
                d @ (2 | 4 | 8) => d as usize,
                _ => self.addr_size_default(),
            },
            n => n,
        }
    }

    fn bound(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let size = ins.op_register(0).size();
        let idx = sext(self.reg(ins.op_register(0)), size) as i64;
        let (s, o) = self.ea(ins);
        let lo = sext(self.rd_mem(m, s, o, size)?, size) as i64;
        let hi = sext(self.rd_mem(m, s, o.wrapping_add(size as u64) & mask(self.ea_size(ins)), size)?, size) as i64;
        if idx < lo || idx > hi {
            return Err(exc(vector::BR));
        }
        Ok(())
    }

    fn bcd(&mut self, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        let ax = self.s.gpr[gpr::RAX] as u16;
        let f = self.flags();
        let (r, f) = match ins.mnemonic() {
            M::Daa => alu::daa(ax, f),
            M::Das => alu::das(ax, f),
            M::Aaa => alu::aaa(ax, f),
            M::Aas => alu::aas(ax, f),
            M::Aam => alu::aam(ax as u8, ins.immediate8(), f).ok_or(exc(vector::DE))?,
            _ => alu::aad(ax, ins.immediate8(), f),
        };
        self.set_reg(Register::AX, r as u64);
        self.s.rflags = f;
        Ok(())
    }

    /// MOV to/from control and debug registers.
    fn mov_special(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let _ = m;
        let (r0, r1) = (ins.op_register(0), ins.op_register(1));
        if r1.is_cr() || r1.is_dr() {
            let v = if r1.is_cr() { self.read_cr(r1)? } else { self.read_dr(r1)? };
            self.set_reg(r0, v);
            return Ok(());
        }
        if r0.is_cr() || r0.is_dr() {
            let v = self.reg(r1);
            let v = if self.long64 { v } else { v & 0xffff_ffff };
            return if r0.is_cr() { self.write_cr(r0, v) } else { self.write_dr(r0, v) };
        }
        Err(ud())
    }
}
