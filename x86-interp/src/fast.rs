//! Handlers for the hottest instruction forms. They work from the operand
//! facts pre-decoded into the cache entry (`predecode::Pre`) with the
//! operand size fixed at compile time, and compute with the same `alu`
//! functions as the general handlers, so semantics are identical.
//!
//! Every handler here is "simple": it cannot change the mode, CPL, RFLAGS
//! bits other than the six status flags, pending events or the interrupt
//! shadow, and it reports exits and faults only through `Err` (the run
//! loop relies on this to run them back to back).

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind};
use sim_core::memory::GuestMemory;
use sim_core::state::gpr;

use crate::alu;
use crate::code_cache::{Cached, Handler};
use crate::fault::R;
use crate::interp::Interpreter;
use crate::lazy_flags::{self, Lazy};
use crate::operands::mask;
use crate::predecode::{gpr as gpr_of, Pre, RIP_REG};

const ADD: u8 = 0;
const OR: u8 = 1;
const AND: u8 = 4;
const SUB: u8 = 5;
const XOR: u8 = 6;
const CMP: u8 = 7;
const TEST: u8 = 8;

/// A specialised handler for `ins`, if it has one of the covered forms.
pub fn select(ins: &Instruction, _p: &Pre) -> Option<Handler> {
    use Mnemonic as M;
    let kind = |i: u32| if i < ins.op_count() { ins.op_kind(i) } else { OpKind::Register };
    let reg = |i: u32| if kind(i) == OpKind::Register { gpr_of(ins.op_register(i)) } else { None };
    let imm = |i: u32| i < ins.op_count() && is_imm(ins.op_kind(i));
    let mem = |i: u32| i < ins.op_count() && ins.op_kind(i) == OpKind::Memory;
    let mnemonic = ins.mnemonic();
    let n = ins.op_count();
    if let Some(k) = alu_kind(mnemonic) {
        if n != 2 {
            return None;
        }
        let (_, s) = reg(0)?;
        let form = if reg(1).is_some_and(|r| r.1 == s) {
            Form::Rr
        } else if imm(1) {
            Form::Ri
        } else if mem(1) && ins.memory_size().size() == s {
            Form::Rm
        } else {
            return None;
        };
        return match k {
            ADD => alu_forms::<ADD>(form, s),
            OR => alu_forms::<OR>(form, s),
            AND => alu_forms::<AND>(form, s),
            SUB => alu_forms::<SUB>(form, s),
            XOR => alu_forms::<XOR>(form, s),
            CMP => alu_forms::<CMP>(form, s),
            _ => alu_forms::<TEST>(form, s),
        };
    }
    match mnemonic {
        M::Mov if n == 2 => {
            if let Some((_, s)) = reg(0) {
                if reg(1).is_some_and(|r| r.1 == s) {
                    by_size(s, [mov_rr::<1>, mov_rr::<2>, mov_rr::<4>, mov_rr::<8>])
                } else if imm(1) {
                    by_size(s, [mov_ri::<1>, mov_ri::<2>, mov_ri::<4>, mov_ri::<8>])
                } else if mem(1) && ins.memory_size().size() == s {
                    by_size(s, [mov_rm::<1>, mov_rm::<2>, mov_rm::<4>, mov_rm::<8>])
                } else {
                    None
                }
            } else if mem(0) {
                let s = ins.memory_size().size();
                if reg(1).is_some_and(|r| r.1 == s) {
                    by_size(s, [mov_mr::<1>, mov_mr::<2>, mov_mr::<4>, mov_mr::<8>])
                } else if imm(1) {
                    by_size(s, [mov_mi::<1>, mov_mi::<2>, mov_mi::<4>, mov_mi::<8>])
                } else {
                    None
                }
            } else {
                None
            }
        }
        M::Lea if n == 2 && mem(1) => {
            let (_, s) = reg(0)?;
            by_size(s, [lea::<2>, lea::<2>, lea::<4>, lea::<8>])
        }
        M::Inc | M::Dec if n == 1 => {
            let (_, s) = reg(0)?;
            if mnemonic == M::Inc {
                by_size(s, [inc_dec::<true, 1>, inc_dec::<true, 2>, inc_dec::<true, 4>, inc_dec::<true, 8>])
            } else {
                by_size(s, [inc_dec::<false, 1>, inc_dec::<false, 2>, inc_dec::<false, 4>, inc_dec::<false, 8>])
            }
        }
        M::Rol | M::Ror | M::Shl | M::Sal | M::Shr | M::Sar if n == 2 && kind(1) == OpKind::Immediate8 => {
            let (_, s) = reg(0)?;
            match mnemonic {
                M::Rol => by_size(s, [shift_ri::<0, 1>, shift_ri::<0, 2>, shift_ri::<0, 4>, shift_ri::<0, 8>]),
                M::Ror => by_size(s, [shift_ri::<1, 1>, shift_ri::<1, 2>, shift_ri::<1, 4>, shift_ri::<1, 8>]),
                M::Shr => by_size(s, [shift_ri::<3, 1>, shift_ri::<3, 2>, shift_ri::<3, 4>, shift_ri::<3, 8>]),
                M::Sar => by_size(s, [shift_ri::<4, 1>, shift_ri::<4, 2>, shift_ri::<4, 4>, shift_ri::<4, 8>]),
                _ => by_size(s, [shift_ri::<2, 1>, shift_ri::<2, 2>, shift_ri::<2, 4>, shift_ri::<2, 8>]),
            }
        }
        M::Imul if (n == 2 || (n == 3 && imm(2))) => {
            let (_, s) = reg(0)?;
            if s == 1 || reg(1).is_none_or(|r| r.1 != s) {
                return None;
            }
            if n == 2 {
                by_size(s, [imul_rr::<2>, imul_rr::<2>, imul_rr::<4>, imul_rr::<8>])
            } else {
                by_size(s, [imul_rri::<2>, imul_rri::<2>, imul_rri::<4>, imul_rri::<8>])
            }
        }
        M::Movzx | M::Movsx if n == 2 => {
            let (_, d) = reg(0)?;
            let (src, s) = if mem(1) { (false, ins.memory_size().size()) } else { (true, reg(1)?.1) };
            let sx = mnemonic == M::Movsx;
            match (sx, src, s) {
                (false, false, 1) => by_size(
                    d,
                    [
                        movx::<false, false, 1, 1>,
                        movx::<false, false, 1, 2>,
                        movx::<false, false, 1, 4>,
                        movx::<false, false, 1, 8>,
                    ],
                ),
                (false, false, 2) => by_size(
                    d,
                    [
                        movx::<false, false, 2, 1>,
                        movx::<false, false, 2, 2>,
                        movx::<false, false, 2, 4>,
                        movx::<false, false, 2, 8>,
                    ],
                ),
                (false, true, 1) => by_size(
                    d,
                    [
                        movx::<false, true, 1, 1>,
                        movx::<false, true, 1, 2>,
                        movx::<false, true, 1, 4>,
                        movx::<false, true, 1, 8>,
                    ],
                ),
                (false, true, 2) => by_size(
                    d,
                    [
                        movx::<false, true, 2, 1>,
                        movx::<false, true, 2, 2>,
                        movx::<false, true, 2, 4>,
                        movx::<false, true, 2, 8>,
                    ],
                ),
                (true, false, 1) => by_size(
                    d,
                    [
                        movx::<true, false, 1, 1>,
                        movx::<true, false, 1, 2>,
                        movx::<true, false, 1, 4>,
                        movx::<true, false, 1, 8>,
                    ],
                ),
                (true, false, 2) => by_size(
                    d,
                    [
                        movx::<true, false, 2, 1>,
                        movx::<true, false, 2, 2>,
                        movx::<true, false, 2, 4>,
                        movx::<true, false, 2, 8>,
                    ],
                ),
                (true, true, 1) => by_size(
                    d,
                    [
                        movx::<true, true, 1, 1>,
                        movx::<true, true, 1, 2>,
                        movx::<true, true, 1, 4>,
                        movx::<true, true, 1, 8>,
                    ],
                ),
                (true, true, 2) => by_size(
                    d,
                    [
                        movx::<true, true, 2, 1>,
                        movx::<true, true, 2, 2>,
                        movx::<true, true, 2, 4>,
                        movx::<true, true, 2, 8>,
                    ],
                ),
                _ => None,
            }
        }
        _ if ins.is_jcc_short_or_near() => Some(jcc_fast(ins.condition_code())),
        M::Jmp
            if matches!(
                ins.code(),
                Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Jmp_rel8_32 | Code::Jmp_rel32_32
            ) =>
        {
            Some(jmp_rel)
        }
        M::Call if matches!(ins.code(), Code::Call_rel32_64) => Some(call_rel::<8>),
        M::Call if matches!(ins.code(), Code::Call_rel32_32) => Some(call_rel::<4>),
        M::Ret if ins.code() == Code::Retnq => Some(ret_near::<8>),
        M::Ret if ins.code() == Code::Retnd => Some(ret_near::<4>),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Form {
    Rr,
    Ri,
    Rm,
}

fn alu_forms<const K: u8>(form: Form, s: usize) -> Option<Handler> {
    match form {
        Form::Rr => by_size(s, [alu_rr::<K, 1>, alu_rr::<K, 2>, alu_rr::<K, 4>, alu_rr::<K, 8>]),
        Form::Ri => by_size(s, [alu_ri::<K, 1>, alu_ri::<K, 2>, alu_ri::<K, 4>, alu_ri::<K, 8>]),
        Form::Rm => by_size(s, [alu_rm::<K, 1>, alu_rm::<K, 2>, alu_rm::<K, 4>, alu_rm::<K, 8>]),
    }
}

fn alu_kind(m: Mnemonic) -> Option<u8> {
    use Mnemonic as M;
    Some(match m {
        M::Add => ADD,
        M::Or => OR,
        M::And => AND,
        M::Sub => SUB,
        M::Xor => XOR,
        M::Cmp => CMP,
        M::Test => TEST,
        _ => return None,
    })
}

fn by_size(s: usize, h: [Handler; 4]) -> Option<Handler> {
    match s {
        1 => Some(h[0]),
        2 => Some(h[1]),
        4 => Some(h[2]),
        8 => Some(h[3]),
        _ => None,
    }
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

// Register and memory access with the size fixed at compile time.

impl Interpreter {
    #[inline(always)]
    fn get<const S: usize>(&self, r: u8) -> u64 {
        self.s.gpr[r as usize & 15] & mask(S)
    }

    /// Write a GPR with the x86 rules: 8/16-bit writes merge, 32-bit writes
    /// zero-extend.
    #[inline(always)]
    fn put<const S: usize>(&mut self, r: u8, v: u64) {
        let g = &mut self.s.gpr[r as usize & 15];
        *g = match S {
            1 => (*g & !0xff) | (v & 0xff),
            2 => (*g & !0xffff) | (v & 0xffff),
            4 => v & 0xffff_ffff,
            _ => v,
        };
    }

    /// Offset of the pre-decoded memory operand.
    #[inline(always)]
    fn ea_pre(&self, p: &Pre) -> u64 {
        let mut off = p.disp;
        if p.base < 16 {
            off = off.wrapping_add(self.s.gpr[p.base as usize & 15]);
        } else if p.base == RIP_REG {
            off = off.wrapping_add(self.next_rip);
        }
        if p.index < 16 {
            off = off.wrapping_add(self.s.gpr[p.index as usize & 15] << p.scale);
        }
        off & p.amask
    }
}

/// Record an ALU result's flags lazily (lazy_flags.rs); `a`, `b` are masked.
#[inline(always)]
fn alu_apply<const K: u8, const S: usize>(cpu: &mut Interpreter, d: u8, a: u64, b: u64) {
    let (op, r) = match K {
        ADD => (lazy_flags::ADD, a.wrapping_add(b)),
        OR => (lazy_flags::LOGIC, a | b),
        AND | TEST => (lazy_flags::LOGIC, a & b),
        XOR => (lazy_flags::LOGIC, a ^ b),
        _ => (lazy_flags::SUB, a.wrapping_sub(b)),
    };
    let r = r & mask(S);
    if K != CMP && K != TEST {
        cpu.put::<S>(d, r);
    }
    cpu.lazy = Lazy { op, size: S as u8, a, b, r };
}

fn alu_rr<const K: u8, const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let p = &c.pre;
    let (a, b) = (cpu.get::<S>(p.r0), cpu.get::<S>(p.r1));
    alu_apply::<K, S>(cpu, p.r0, a, b);
    Ok(())
}

fn alu_ri<const K: u8, const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let p = &c.pre;
    let a = cpu.get::<S>(p.r0);
    alu_apply::<K, S>(cpu, p.r0, a, p.imm & mask(S));
    Ok(())
}

fn alu_rm<const K: u8, const S: usize>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let p = &c.pre;
    let off = cpu.ea_pre(p);
    let b = cpu.rd_mem(m, p.seg as usize, off, S)?;
    let a = cpu.get::<S>(p.r0);
    alu_apply::<K, S>(cpu, p.r0, a, b);
    Ok(())
}

fn mov_rr<const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let v = cpu.get::<S>(c.pre.r1);
    cpu.put::<S>(c.pre.r0, v);
    Ok(())
}

fn mov_ri<const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    cpu.put::<S>(c.pre.r0, c.pre.imm);
    Ok(())
}

fn mov_rm<const S: usize>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let p = &c.pre;
    let off = cpu.ea_pre(p);
    let v = cpu.rd_mem(m, p.seg as usize, off, S)?;
    cpu.put::<S>(p.r0, v);
    Ok(())
}

fn mov_mr<const S: usize>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let p = &c.pre;
    let off = cpu.ea_pre(p);
    let v = cpu.get::<S>(p.r1);
    cpu.wr_mem(m, p.seg as usize, off, S, v)
}

fn mov_mi<const S: usize>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let p = &c.pre;
    let off = cpu.ea_pre(p);
    cpu.wr_mem(m, p.seg as usize, off, S, p.imm & mask(S))
}

/// MOVZX/MOVSX from an S-byte register (REG) or memory operand to a D-byte register.
fn movx<const SX: bool, const REG: bool, const S: usize, const D: usize>(
    cpu: &mut Interpreter,
    m: &GuestMemory,
    c: &Cached,
) -> R<()> {
    let p = &c.pre;
    let v = if REG {
        cpu.get::<S>(p.r1)
    } else {
        let off = cpu.ea_pre(p);
        cpu.rd_mem(m, p.seg as usize, off, S)?
    };
    let v = if SX { crate::operands::sext(v, S) } else { v };
    cpu.put::<D>(p.r0, v & mask(D));
    Ok(())
}

fn lea<const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let off = cpu.ea_pre(&c.pre);
    cpu.put::<S>(c.pre.r0, off & mask(S));
    Ok(())
}

fn inc_dec<const INC: bool, const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let a = cpu.get::<S>(c.pre.r0);
    let cf = cpu.lazy.carry(cpu.s.rflags);
    let (op, r) = if INC { (lazy_flags::INC, a.wrapping_add(1)) } else { (lazy_flags::DEC, a.wrapping_sub(1)) };
    let r = r & mask(S);
    cpu.put::<S>(c.pre.r0, r);
    cpu.lazy = Lazy { op, size: S as u8, a, b: cf, r };
    Ok(())
}

/// Shift/rotate by an immediate. OP: 0 ROL, 1 ROR, 2 SHL, 3 SHR, 4 SAR.
fn shift_ri<const OP: u8, const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    use alu::ShiftOp as O;
    let op = match OP {
        0 => O::Rol,
        1 => O::Ror,
        2 => O::Shl,
        3 => O::Shr,
        _ => O::Sar,
    };
    let count = c.pre.imm as u8 & if S == 8 { 0x3f } else { 0x1f };
    // Shifts by a non-zero count replace all six status flags, so the old
    // ones need not be computed; rotates and count 0 keep some.
    let old = if OP >= 2 && count != 0 { cpu.s.rflags } else { cpu.flags() };
    let a = cpu.get::<S>(c.pre.r0);
    let (r, f) = alu::shift(op, a, count, S as u8, old);
    cpu.put::<S>(c.pre.r0, r);
    cpu.set_flags(f);
    Ok(())
}

// IMUL replaces all six status flags: the old ones need not be computed.

fn imul_rr<const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let (a, b) = (cpu.get::<S>(c.pre.r0), cpu.get::<S>(c.pre.r1));
    let (lo, _, f) = alu::imul(a, b, S as u8, cpu.s.rflags);
    cpu.put::<S>(c.pre.r0, lo);
    cpu.set_flags(f);
    Ok(())
}

fn imul_rri<const S: usize>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let a = cpu.get::<S>(c.pre.r1);
    let (lo, _, f) = alu::imul(a, c.pre.imm & mask(S), S as u8, cpu.s.rflags);
    cpu.put::<S>(c.pre.r0, lo);
    cpu.set_flags(f);
    Ok(())
}

/// Target of the pre-decoded near branch.
#[inline(always)]
fn branch_target(cpu: &Interpreter, p: &Pre) -> u64 {
    cpu.next_rip.wrapping_add(p.imm) & p.amask
}

fn jcc_fast(cc: ConditionCode) -> Handler {
    crate::dispatch::per_condition!(cc, jcc, jmp_rel)
}

/// A condition evaluated from lazily recorded flags where that is direct:
/// ZF is "result is zero" for every recorded op, and after SUB/CMP the
/// unsigned and signed orders of the operands give CF, ZF and SF != OF.
#[inline(always)]
fn lazy_cond<const CC: u8>(cpu: &Interpreter) -> bool {
    use ConditionCode as C;
    let l = &cpu.lazy;
    const E: u8 = C::e as u8;
    const NE: u8 = C::ne as u8;
    if l.op != lazy_flags::NONE && (CC == E || CC == NE) {
        return (l.r == 0) == (CC == E);
    }
    if l.op == lazy_flags::SUB {
        let sx = |v: u64| {
            let sh = 64 - 8 * l.size as u32;
            ((v << sh) as i64) >> sh
        };
        let (a, b) = (l.a, l.b);
        match CC {
            x if x == C::b as u8 => return a < b,
            x if x == C::ae as u8 => return a >= b,
            x if x == C::be as u8 => return a <= b,
            x if x == C::a as u8 => return a > b,
            x if x == C::l as u8 => return sx(a) < sx(b),
            x if x == C::ge as u8 => return sx(a) >= sx(b),
            x if x == C::le as u8 => return sx(a) <= sx(b),
            x if x == C::g as u8 => return sx(a) > sx(b),
            _ => {}
        }
    }
    alu::cond(crate::dispatch::CONDS[CC as usize], cpu.flags())
}

fn jcc<const CC: u8>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    if lazy_cond::<CC>(cpu) {
        let t = branch_target(cpu, &c.pre);
        cpu.jump(t)
    } else {
        Ok(())
    }
}

fn jmp_rel(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let t = branch_target(cpu, &c.pre);
    cpu.jump(t)
}

fn call_rel<const S: usize>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let t = branch_target(cpu, &c.pre);
    let ret = cpu.next_rip & mask(S);
    cpu.jump(t)?;
    cpu.push(m, ret, S)
}

fn ret_near<const S: usize>(cpu: &mut Interpreter, m: &GuestMemory, _c: &Cached) -> R<()> {
    let t = cpu.peek(m, 0, S)?;
    cpu.jump(t)?;
    cpu.s.gpr[gpr::RSP] = cpu.sp_after(S as u64);
    Ok(())
}
