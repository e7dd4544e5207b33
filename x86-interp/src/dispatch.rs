//! Handler selection at decode time. The common integer and branch forms
//! get specialised handlers (no mnemonic dispatch per execution); all other
//! instructions go through `Interpreter::exec`.

use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind};
use sim_core::memory::GuestMemory;

use crate::alu;
use crate::code_cache::{Cached, Handler};
use crate::fault::R;
use crate::interp::Interpreter;

const ADD: u8 = 0;
const OR: u8 = 1;
const ADC: u8 = 2;
const SBB: u8 = 3;
const AND: u8 = 4;
const SUB: u8 = 5;
const XOR: u8 = 6;
const CMP: u8 = 7;
const TEST: u8 = 8;

pub fn handler(ins: &Instruction) -> Handler {
    use Mnemonic as M;
    let gpr_or_imm = |i: u32| match ins.op_kind(i) {
        OpKind::Register => ins.op_register(i).is_gpr(),
        OpKind::Memory => true,
        k => is_imm(k),
    };
    let reg_form = ins.op_kind(0) == OpKind::Register
        && ins.op_register(0).is_gpr()
        && (is_imm(ins.op_kind(1)) || (ins.op_kind(1) == OpKind::Register && ins.op_register(1).is_gpr()));
    let reg0 = ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_gpr();
    match ins.mnemonic() {
        M::Add if reg_form => binop_reg::<ADD>,
        M::Sub if reg_form => binop_reg::<SUB>,
        M::And if reg_form => binop_reg::<AND>,
        M::Or if reg_form => binop_reg::<OR>,
        M::Xor if reg_form => binop_reg::<XOR>,
        M::Cmp if reg_form => binop_reg::<CMP>,
        M::Test if reg_form => binop_reg::<TEST>,
        M::Inc if reg0 => inc_dec_reg::<true>,
        M::Dec if reg0 => inc_dec_reg::<false>,
        M::Add => binop::<ADD>,
        M::Or => binop::<OR>,
        M::Adc => binop::<ADC>,
        M::Sbb => binop::<SBB>,
        M::And => binop::<AND>,
        M::Sub => binop::<SUB>,
        M::Xor => binop::<XOR>,
        M::Cmp => binop::<CMP>,
        M::Test => binop::<TEST>,
        M::Inc => inc_dec::<true>,
        M::Dec => inc_dec::<false>,
        M::Mov if reg_form => mov_rr,
        M::Mov if reg0 && ins.op_kind(1) == OpKind::Memory => mov_load,
        M::Mov if ins.op_kind(0) == OpKind::Memory && gpr_or_imm(1) && ins.op_kind(1) != OpKind::Memory => mov_store,
        M::Mov if gpr_or_imm(0) && gpr_or_imm(1) => mov,
        _ if ins.is_jcc_short_or_near() => jcc_for(ins.condition_code()),
        M::Jmp if is_near(ins.op_kind(0)) => jmp_rel,
        M::Nop | M::Pause => nop,
        M::Call => call,
        M::Ret => ret,
        M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shl | M::Sal | M::Shr | M::Sar => shift,
        M::Mul | M::Imul | M::Div | M::Idiv => muldiv,
        M::Movzx => movzx,
        M::Lea => lea,
        M::Push if gpr_or_imm(0) => push,
        M::Pop if ins.op_kind(0) == OpKind::Register && ins.op_register(0).is_gpr() => pop,
        _ => generic,
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

fn is_near(k: OpKind) -> bool {
    matches!(k, OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64)
}

fn binop<const K: u8>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let size = cpu.op_size(ins, 0);
    let dst = cpu.loc(ins, 0);
    let a = cpu.load(m, dst, size)?;
    let b = cpu.rd(m, ins, 1, size)?;
    let f = cpu.flags();
    let sz = size as u8;
    let (r, f) = match K {
        ADD => alu::add(a, b, sz, f),
        OR => alu::or(a, b, sz, f),
        ADC => alu::adc(a, b, sz, f),
        SBB => alu::sbb(a, b, sz, f),
        AND | TEST => alu::and(a, b, sz, f),
        XOR => alu::xor(a, b, sz, f),
        _ => alu::sub(a, b, sz, f),
    };
    if K != CMP && K != TEST {
        cpu.store(m, dst, size, r)?;
    }
    cpu.set_flags(f);
    Ok(())
}

/// Second operand of a register-form ALU instruction.
#[inline(always)]
fn src_reg_or_imm(cpu: &Interpreter, ins: &Instruction) -> u64 {
    if ins.op_kind(1) == OpKind::Register {
        cpu.reg(ins.op_register(1))
    } else {
        ins.immediate(1)
    }
}

/// `op r, r/imm`: no memory, no operand-kind dispatch beyond the source.
fn binop_reg<const K: u8>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let d = ins.op_register(0);
    let sz = d.size() as u8;
    let a = cpu.reg(d);
    let b = src_reg_or_imm(cpu, ins);
    let f = cpu.flags();
    let (r, f) = match K {
        ADD => alu::add(a, b, sz, f),
        OR => alu::or(a, b, sz, f),
        AND | TEST => alu::and(a, b, sz, f),
        XOR => alu::xor(a, b, sz, f),
        _ => alu::sub(a, b, sz, f),
    };
    if K != CMP && K != TEST {
        cpu.set_reg(d, r);
    }
    cpu.set_flags(f);
    Ok(())
}

fn inc_dec_reg<const INC: bool>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let d = ins.op_register(0);
    let sz = d.size() as u8;
    let a = cpu.reg(d);
    let (r, f) = if INC { alu::inc(a, sz, cpu.flags()) } else { alu::dec(a, sz, cpu.flags()) };
    cpu.set_reg(d, r);
    cpu.set_flags(f);
    Ok(())
}

fn inc_dec<const INC: bool>(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let size = cpu.op_size(ins, 0);
    let dst = cpu.loc(ins, 0);
    let a = cpu.load(m, dst, size)?;
    let (r, f) = if INC { alu::inc(a, size as u8, cpu.flags()) } else { alu::dec(a, size as u8, cpu.flags()) };
    cpu.store(m, dst, size, r)?;
    cpu.set_flags(f);
    Ok(())
}

fn mov(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let size = cpu.op_size(ins, 0);
    let v = cpu.rd(m, ins, 1, size)?;
    cpu.wr(m, ins, 0, size, v)
}

/// A Jcc handler with its condition fixed at compile time.
/// `mov r, r/imm`.
fn mov_rr(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let v = src_reg_or_imm(cpu, ins);
    cpu.set_reg(ins.op_register(0), v);
    Ok(())
}

/// `mov r, [mem]`.
fn mov_load(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let r = ins.op_register(0);
    let (s, o) = cpu.ea(ins);
    let v = cpu.rd_mem(m, s, o, r.size())?;
    cpu.set_reg(r, v);
    Ok(())
}

/// `mov [mem], r/imm`.
fn mov_store(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let size = ins.memory_size().size();
    let v = src_reg_or_imm(cpu, ins);
    let (s, o) = cpu.ea(ins);
    cpu.wr_mem(m, s, o, size, v)
}

/// A match from a ConditionCode to `$jcc::<CC>` monomorphised per condition,
/// and `$jmp` for no condition: one table for every Jcc handler family.
macro_rules! per_condition {
    ($cc:expr, $jcc:ident, $jmp:expr) => {{
        use iced_x86::ConditionCode as C;
        match $cc {
            C::o => $jcc::<{ C::o as u8 }>,
            C::no => $jcc::<{ C::no as u8 }>,
            C::b => $jcc::<{ C::b as u8 }>,
            C::ae => $jcc::<{ C::ae as u8 }>,
            C::e => $jcc::<{ C::e as u8 }>,
            C::ne => $jcc::<{ C::ne as u8 }>,
            C::be => $jcc::<{ C::be as u8 }>,
            C::a => $jcc::<{ C::a as u8 }>,
            C::s => $jcc::<{ C::s as u8 }>,
            C::ns => $jcc::<{ C::ns as u8 }>,
            C::p => $jcc::<{ C::p as u8 }>,
            C::np => $jcc::<{ C::np as u8 }>,
            C::l => $jcc::<{ C::l as u8 }>,
            C::ge => $jcc::<{ C::ge as u8 }>,
            C::le => $jcc::<{ C::le as u8 }>,
            C::g => $jcc::<{ C::g as u8 }>,
            C::None => $jmp,
        }
    }};
}
pub(crate) use per_condition;

/// A Jcc handler with its condition fixed at compile time.
fn jcc_for(cc: ConditionCode) -> Handler {
    per_condition!(cc, jcc, jmp_rel)
}

/// ConditionCode by discriminant (for the const parameter above).
pub(crate) const CONDS: [ConditionCode; 17] = [
    ConditionCode::None,
    ConditionCode::o,
    ConditionCode::no,
    ConditionCode::b,
    ConditionCode::ae,
    ConditionCode::e,
    ConditionCode::ne,
    ConditionCode::be,
    ConditionCode::a,
    ConditionCode::s,
    ConditionCode::ns,
    ConditionCode::p,
    ConditionCode::np,
    ConditionCode::l,
    ConditionCode::ge,
    ConditionCode::le,
    ConditionCode::g,
];

fn jcc<const CC: u8>(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    if alu::cond(CONDS[CC as usize], cpu.flags()) {
        let t = cpu.rel_target(ins);
        cpu.jump(t)
    } else {
        Ok(())
    }
}

fn jmp_rel(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let t = cpu.rel_target(ins);
    cpu.jump(t)
}

fn nop(_cpu: &mut Interpreter, _m: &GuestMemory, _c: &Cached) -> R<()> {
    Ok(())
}

fn lea(cpu: &mut Interpreter, _m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let (_, off) = cpu.ea(ins);
    let r = ins.op_register(0);
    cpu.set_reg(r, off & crate::operands::mask(r.size()));
    Ok(())
}

fn call(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    cpu.call(m, ins)
}

fn ret(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let extra = if ins.op_count() > 0 { ins.immediate16() as u64 } else { 0 };
    let size = Interpreter::stack_size(ins).saturating_sub(extra as usize);
    cpu.ret_near(m, size, extra)
}

fn shift(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    cpu.shift(m, ins)
}

fn muldiv(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    cpu.muldiv(m, ins)
}

fn movzx(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    let v = cpu.rd(m, ins, 1, cpu.op_size(ins, 1))?;
    cpu.set_reg(ins.op_register(0), v);
    Ok(())
}

fn push(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    cpu.push_op(m, ins)
}

fn pop(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    let ins = &c.ins;
    cpu.pop_op(m, ins)
}

/// Everything without a direct handler: the mnemonic dispatch in `exec`.
fn generic(cpu: &mut Interpreter, m: &GuestMemory, c: &Cached) -> R<()> {
    cpu.exec(m, &c.ins)
}
