//! The fast handlers record ADD/SUB/CMP/logic/INC/DEC flags lazily. Every
//! kind of flag consumer must see exactly the flags the eager ALU computes:
//! PUSHF, LAHF, ADC, SETcc, Jcc (which has its own lazy shortcuts), CMOVcc,
//! an exception frame, `state()` after HLT and after the budget runs out,
//! and INC/DEC, which keep the CF of the operation before them.

mod common;

use common::*;
use iced_x86::code_asm::*;
use iced_x86::ConditionCode;
use sim_core::state::{gpr, rflags};
use sim_core::{Vcpu, VcpuExit};
use x86_interp::alu;

const STATUS: u64 = alu::STATUS_FLAGS;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add,
    Sub,
    Cmp,
    And,
    Or,
    Xor,
    Test,
    Inc,
    Dec,
    AddImm,
    CmpMem,
}

const OPS: [Op; 11] =
    [Op::Add, Op::Sub, Op::Cmp, Op::And, Op::Or, Op::Xor, Op::Test, Op::Inc, Op::Dec, Op::AddImm, Op::CmpMem];

/// Immediate of `Op::AddImm` (sign-extended to the operand size).
const IMM: i32 = -3;
/// Where `Op::CmpMem` finds its second operand (RBX's value, stored by the program).
const MEM_B: u64 = DATA + 0x800;

const CCS: [ConditionCode; 16] = [
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

/// RAX = RSI, RDX = RDI + RDI (a lazy ADD whose CF is RDI's top bit), then
/// the operation on A = RAX and B = RBX at `size`.
fn emit(a: &mut CodeAssembler, op: Op, size: u8) -> Result<(), IcedError> {
    a.mov(rax, rsi)?;
    a.mov(rdx, rdi)?;
    a.add(rdx, rdx)?;
    macro_rules! bin {
        ($m:ident) => {
            match size {
                1 => a.$m(al, bl),
                2 => a.$m(ax, bx),
                4 => a.$m(eax, ebx),
                _ => a.$m(rax, rbx),
            }
        };
    }
    macro_rules! un {
        ($m:ident) => {
            match size {
                1 => a.$m(al),
                2 => a.$m(ax),
                4 => a.$m(eax),
                _ => a.$m(rax),
            }
        };
    }
    let mem = MEM_B as i32;
    match op {
        Op::Add => bin!(add),
        Op::Sub => bin!(sub),
        Op::Cmp => bin!(cmp),
        Op::And => bin!(and),
        Op::Or => bin!(or),
        Op::Xor => bin!(xor),
        Op::Test => bin!(test),
        Op::Inc => un!(inc),
        Op::Dec => un!(dec),
        Op::AddImm => match size {
            1 => a.add(al, IMM),
            2 => a.add(ax, IMM),
            4 => a.add(eax, IMM),
            _ => a.add(rax, IMM),
        },
        Op::CmpMem => match size {
            1 => a.cmp(al, byte_ptr(mem)),
            2 => a.cmp(ax, word_ptr(mem)),
            4 => a.cmp(eax, dword_ptr(mem)),
            _ => a.cmp(rax, qword_ptr(mem)),
        },
    }
}

/// Flags the eager ALU gives for `op` on (a, b) after `rflags0`, preceded
/// by the ADD of `d + d` at 64 bits.
fn expected(op: Op, size: u8, a: u64, b: u64, d: u64, rflags0: u64) -> u64 {
    let f = alu::add(d, d, 8, rflags0).1;
    match op {
        Op::Add => alu::add(a, b, size, f).1,
        Op::Sub | Op::Cmp | Op::CmpMem => alu::sub(a, b, size, f).1,
        Op::And | Op::Test => alu::and(a, b, size, f).1,
        Op::Or => alu::or(a, b, size, f).1,
        Op::Xor => alu::xor(a, b, size, f).1,
        Op::Inc => alu::inc(a, size, f).1,
        Op::Dec => alu::dec(a, size, f).1,
        Op::AddImm => alu::add(a, IMM as i64 as u64, size, f).1,
    }
}

/// Pairs (a, b, d) the guest loops over; results go to RESULTS, one
/// qword per pair.
const TABLE: u64 = DATA + 0x1000;
const RESULTS: u64 = DATA + 0x4000;

#[derive(Clone, Copy, Debug)]
enum Consumer {
    Pushf,
    Lahf,
    Adc,
    Setcc(usize),
    Jcc(usize),
    Cmov(usize),
    /// #GP from a simple instruction (a load from a non-canonical address):
    /// the handler stores the RFLAGS of the exception frame.
    Fault,
    /// INC/DEC of a zeroed register right after the operation (keeps its CF).
    IncDec(bool),
}

fn consumers() -> Vec<Consumer> {
    let mut v = vec![Consumer::Pushf, Consumer::Lahf, Consumer::Adc, Consumer::Fault];
    v.extend([Consumer::IncDec(true), Consumer::IncDec(false)]);
    for k in 0..CCS.len() {
        v.extend([Consumer::Setcc(k), Consumer::Jcc(k), Consumer::Cmov(k)]);
    }
    v
}

/// What the consumer leaves in R8 given the eager flags `f`.
fn consumer_expected(c: Consumer, f: u64) -> u64 {
    match c {
        Consumer::Pushf | Consumer::Fault => f & STATUS,
        Consumer::Lahf => (f & 0xd5) | 2,
        Consumer::Adc => f & rflags::CF,
        Consumer::Setcc(k) | Consumer::Jcc(k) | Consumer::Cmov(k) => alu::cond(CCS[k], f) as u64,
        Consumer::IncDec(true) => alu::inc(0, 8, f).1 & STATUS,
        Consumer::IncDec(false) => alu::dec(0, 8, f).1 & STATUS,
    }
}

fn emit_consumer(a: &mut CodeAssembler, c: Consumer) -> Result<(), IcedError> {
    match c {
        Consumer::Pushf => {
            a.pushfq()?;
            a.pop(r8)?;
            a.and(r8, STATUS as i32)
        }
        Consumer::Lahf => {
            a.lahf()?;
            a.mov(r8, rax)?;
            a.shr(r8, 8)?;
            a.and(r8d, 0xff)
        }
        Consumer::Adc => {
            a.mov(r8, 0u64)?;
            a.adc(r8, 0)
        }
        Consumer::Fault => {
            a.mov(r11, 0x8000_0000_0000_0000u64)?;
            a.mov(rcx, qword_ptr(r11)) // 3 bytes; the handler skips it
        }
        Consumer::IncDec(inc) => {
            if inc {
                a.inc(r9)?;
            } else {
                a.dec(r9)?;
            }
            a.pushfq()?;
            a.pop(r8)?;
            a.and(r8, STATUS as i32)
        }
        Consumer::Setcc(k) => {
            a.mov(r8, 0u64)?;
            match CCS[k] {
                ConditionCode::o => a.seto(r8b),
                ConditionCode::no => a.setno(r8b),
                ConditionCode::b => a.setb(r8b),
                ConditionCode::ae => a.setae(r8b),
                ConditionCode::e => a.sete(r8b),
                ConditionCode::ne => a.setne(r8b),
                ConditionCode::be => a.setbe(r8b),
                ConditionCode::a => a.seta(r8b),
                ConditionCode::s => a.sets(r8b),
                ConditionCode::ns => a.setns(r8b),
                ConditionCode::p => a.setp(r8b),
                ConditionCode::np => a.setnp(r8b),
                ConditionCode::l => a.setl(r8b),
                ConditionCode::ge => a.setge(r8b),
                ConditionCode::le => a.setle(r8b),
                _ => a.setg(r8b),
            }
        }
        Consumer::Jcc(k) => {
            let mut taken = a.create_label();
            a.mov(r8, 1u64)?;
            match CCS[k] {
                ConditionCode::o => a.jo(taken)?,
                ConditionCode::no => a.jno(taken)?,
                ConditionCode::b => a.jb(taken)?,
                ConditionCode::ae => a.jae(taken)?,
                ConditionCode::e => a.je(taken)?,
                ConditionCode::ne => a.jne(taken)?,
                ConditionCode::be => a.jbe(taken)?,
                ConditionCode::a => a.ja(taken)?,
                ConditionCode::s => a.js(taken)?,
                ConditionCode::ns => a.jns(taken)?,
                ConditionCode::p => a.jp(taken)?,
                ConditionCode::np => a.jnp(taken)?,
                ConditionCode::l => a.jl(taken)?,
                ConditionCode::ge => a.jge(taken)?,
                ConditionCode::le => a.jle(taken)?,
                _ => a.jg(taken)?,
            }
            a.mov(r8, 0u64)?;
            a.set_label(&mut taken)?;
            a.nop()
        }
        Consumer::Cmov(k) => {
            a.mov(r8, 0u64)?;
            a.mov(r10, 1u64)?;
            match CCS[k] {
                ConditionCode::o => a.cmovo(r8, r10),
                ConditionCode::no => a.cmovno(r8, r10),
                ConditionCode::b => a.cmovb(r8, r10),
                ConditionCode::ae => a.cmovae(r8, r10),
                ConditionCode::e => a.cmove(r8, r10),
                ConditionCode::ne => a.cmovne(r8, r10),
                ConditionCode::be => a.cmovbe(r8, r10),
                ConditionCode::a => a.cmova(r8, r10),
                ConditionCode::s => a.cmovs(r8, r10),
                ConditionCode::ns => a.cmovns(r8, r10),
                ConditionCode::p => a.cmovp(r8, r10),
                ConditionCode::np => a.cmovnp(r8, r10),
                ConditionCode::l => a.cmovl(r8, r10),
                ConditionCode::ge => a.cmovge(r8, r10),
                ConditionCode::le => a.cmovle(r8, r10),
                _ => a.cmovg(r8, r10),
            }
        }
    }
}

const VALUES: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xffff,
    0x8000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    0x0123_4567_89ab_cdef,
];

/// (a, b, d) for every pair of VALUES, alternating the CF the ADD before
/// the operation leaves; the whole list twice, so every pair also runs
/// with the loop's instructions already cached (the lazy path).
fn pairs() -> Vec<(u64, u64, u64)> {
    let mut v = Vec::new();
    for (i, &a) in VALUES.iter().enumerate() {
        for &b in &VALUES {
            v.push((a, b, if (i + v.len()) % 2 == 0 { 1 << 63 } else { 1 }));
        }
    }
    let again = v.clone();
    v.extend(again);
    v
}

#[test]
fn every_consumer_sees_the_eager_flags() {
    let pairs = pairs();
    let mut r = Rig::long();
    // #GP handler: frame = error code, RIP, CS, RFLAGS, RSP, SS.
    r.asm(64, HANDLERS, |a| {
        a.mov(r8, qword_ptr(rsp + 24))?;
        a.and(r8, STATUS as i32)?;
        a.add(qword_ptr(rsp + 8), 3)?;
        a.add(rsp, 8)?;
        a.iretq()
    });
    r.gate64(13, HANDLERS, 0, 0, false);
    for (n, &(a, b, d)) in pairs.iter().enumerate() {
        let at = TABLE + n as u64 * 24;
        for (k, v) in [a, b, d].into_iter().enumerate() {
            r.mem.write_u64(at + k as u64 * 8, v).unwrap();
        }
    }
    let table_end = TABLE + pairs.len() as u64 * 24;
    let start = r.state();
    for op in OPS {
        for size in [1u8, 2, 4, 8] {
            for c in consumers() {
                r.asm(64, CODE, |a| {
                    let mut next = a.create_label();
                    a.mov(r15, TABLE)?;
                    a.mov(r14, RESULTS)?;
                    a.set_label(&mut next)?;
                    a.mov(rsi, qword_ptr(r15))?;
                    a.mov(rbx, qword_ptr(r15 + 8))?;
                    a.mov(rdi, qword_ptr(r15 + 16))?;
                    a.mov(qword_ptr(MEM_B as i32), rbx)?;
                    a.mov(r9, 0u64)?;
                    emit(a, op, size)?;
                    emit_consumer(a, c)?;
                    a.mov(qword_ptr(r14), r8)?;
                    a.add(r15, 24)?;
                    a.add(r14, 8)?;
                    a.mov(rax, table_end)?;
                    a.cmp(r15, rax)?;
                    a.jb(next)?;
                    a.hlt()
                });
                r.cpu.set_state(&start);
                r.run_to_halt();
                for (n, &(a, b, d)) in pairs.iter().enumerate() {
                    let f = expected(op, size, a, b, d, start.rflags);
                    let got = r.mem.read_u64(RESULTS + n as u64 * 8).unwrap();
                    assert_eq!(
                        got,
                        consumer_expected(c, f),
                        "{c:?} after {op:?} size {size} a {a:#x} b {b:#x} d {d:#x} (pair {n})"
                    );
                }
            }
        }
    }
}

/// A run that stops on its budget right after a lazily flagged instruction
/// (in a warm loop, so it ran on the lazy path) leaves the exact flags in
/// `state()`.
#[test]
fn budget_stop_after_a_lazy_op_exposes_exact_flags() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        let mut top = a.create_label();
        a.mov(rax, 0x8000_0000_0000_0000u64)?;
        a.mov(rbx, 1u64)?;
        a.set_label(&mut top)?;
        a.sub(rax, rbx)?;
        a.inc(rcx)?;
        a.jmp(top)
    });
    // 2 + 3 * 5 + 1 instructions: the sixth SUB is the last one retired.
    assert_eq!(r.run(18), VcpuExit::BudgetExhausted);
    assert_eq!(r.gpr(gpr::RAX), 0x7fff_ffff_ffff_fffa);
    // 0x7fff_ffff_ffff_fffb - 1: no carry, zero, sign, overflow or nibble
    // borrow; low byte 0xfa has six one bits (PF).
    assert_eq!(r.state().rflags & STATUS, rflags::PF);
    // And the INC after it keeps CF = 0 and computes from RCX = 5.
    assert_eq!(r.run(1), VcpuExit::BudgetExhausted);
    assert_eq!(r.state().rflags & STATUS, alu::inc(5, 8, rflags::PF).1 & STATUS);
    assert_eq!(alu::inc(5, 8, rflags::PF).1 & STATUS, rflags::PF, "6 = 0b110: even parity");
}
