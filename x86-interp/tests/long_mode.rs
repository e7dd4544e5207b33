//! Long-mode behaviour against hand-computed and SDM-specified results.

mod common;

use common::*;
use iced_x86::code_asm::*;
#[allow(unused_imports)]
use sim_core::state::sreg;
use sim_core::state::{gpr, rflags};
use sim_core::{Completion, Vcpu, VcpuExit};

const CF: u64 = rflags::CF;
const PF: u64 = rflags::PF;
const AF: u64 = rflags::AF;
const ZF: u64 = rflags::ZF;
const SF: u64 = rflags::SF;
const OF: u64 = rflags::OF;

#[test]
fn arithmetic_and_flags() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(rax, 0x7fff_ffff_ffff_ffffu64)?;
        a.add(rax, 1)?; // signed overflow: OF SF AF PF? result 0x8000..0000
        a.pushfq()?;
        a.pop(rbx)?;
        a.mov(ecx, 0xffff_ffffu32)?;
        a.inc(ecx)?; // ZF, CF unchanged
        a.pushfq()?;
        a.pop(rdx)?;
        a.mov(rsi, 10u64)?;
        a.imul_3(rsi, rsi, -3)?;
        a.mov(al, 0x80u32)?;
        a.mov(r8b, 0x80u32)?;
        a.sub(r8b, 1)?;
        a.hlt()
    });
    r.run_to_halt();
    // 0x7fff..ff + 1: result 0x8000..00, OF=1 SF=1 AF=1 (carry out of bit 3), ZF=0 CF=0, PF=1 (low byte 0).
    assert_eq!(r.gpr(gpr::RAX), 0x8000_0000_0000_0080, "MOV AL keeps the upper bits");
    assert_eq!(r.gpr(gpr::RBX) & (CF | PF | AF | ZF | SF | OF), OF | SF | AF | PF);
    // 0xffffffff + 1 = 0 (32-bit write zero-extends), ZF PF AF set, OF clear.
    assert_eq!(r.gpr(gpr::RCX), 0);
    assert_eq!(r.gpr(gpr::RDX) & (ZF | PF | AF | OF | SF), ZF | PF | AF);
    assert_eq!(r.gpr(gpr::RSI), (-30i64) as u64);
    assert_eq!(r.gpr(gpr::R8) & 0xff, 0x7f);
    // 0x80 - 1 = 0x7f: OF (neg - pos = pos), AF (borrow from bit 4).
    let f = r.state().rflags;
    assert_eq!(f & (OF | AF | SF | ZF | CF), OF | AF);
}

#[test]
fn loop_call_ret_and_stack() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        let mut func = a.create_label();
        let mut top = a.create_label();
        a.xor(eax, eax)?;
        a.mov(ecx, 10u32)?;
        a.set_label(&mut top)?;
        a.call(func)?;
        a.loop_(top)?;
        a.push(0x1234)?;
        a.pop(rdx)?;
        a.hlt()?;
        a.set_label(&mut func)?;
        a.add(rax, rcx)?;
        a.ret()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RAX), 55, "10+9+...+1");
    assert_eq!(r.gpr(gpr::RDX), 0x1234);
    assert_eq!(r.gpr(gpr::RSP), STACK_TOP);
}

/// Exception handler stub: stores the vector number given in `marker` and
/// the top of the exception frame, then halts.
fn handler(r: &Rig, at: u64, marker: u32, with_error_code: bool) {
    r.asm(64, at, |a| {
        a.mov(dword_ptr(DATA as i32 + 0x100), marker)?;
        if with_error_code {
            a.pop(r15)?; // error code
        }
        a.mov(r14, qword_ptr(rsp))?; // saved RIP
        a.mov(r13, rsp)?;
        a.hlt()
    });
}

#[test]
fn page_fault_sets_cr2_and_error_code() {
    let mut r = Rig::long();
    // Unmap the page at 0x1f_f000 and make 0x1f_e000 supervisor read-only.
    r.mem.write_u64(PT + 0x1ff * 8, 0).unwrap();
    r.mem.write_u64(PT + 0x1fe * 8, 0x1f_e000 | 1).unwrap();
    handler(&r, HANDLERS, 14, true);
    r.gate64(14, HANDLERS, 0, 0, false);
    let n = r.asm(64, CODE, |a| {
        a.mov(rax, 0x1f_f008u64)?;
        a.mov(rbx, 0x55u64)?;
        a.mov(qword_ptr(rax), rbx)?; // not present: write fault
        a.hlt()
    });
    let _ = n;
    r.run_to_halt();
    let s = r.state();
    assert_eq!(s.cr2, 0x1f_f008);
    // Error code: not present (P=0), write (W=1), supervisor.
    assert_eq!(r.gpr(gpr::R15), 0b10);
    // Saved RIP is the faulting instruction: after two 10-byte MOVs? mov rax, imm32 sign-extended is 7 bytes.
    let fault_rip = r.gpr(gpr::R14);
    assert_eq!(r.mem.read_u8(fault_rip).unwrap() & 0xf0, 0x40, "points at the REX prefix of the faulting MOV");
    // Same-privilege 64-bit frame: SS, RSP, RFLAGS, CS, RIP, error code below
    // the (16-byte aligned) old RSP; the handler popped the error code.
    assert_eq!(r.gpr(gpr::R13), STACK_TOP - 40);
    assert_eq!(r.mem.read_u64(STACK_TOP - 8).unwrap(), KDATA as u64, "old SS");
    assert_eq!(r.mem.read_u64(STACK_TOP - 16).unwrap(), STACK_TOP, "old RSP");
    assert_eq!(r.mem.read_u64(STACK_TOP - 32).unwrap(), KCODE as u64, "old CS");
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 14);
    // Write to the read-only page with CR0.WP: P=1, W=1.
    r.edit(|s| {
        s.rip = CODE;
        s.gpr[gpr::RSP] = STACK_TOP;
        s.rflags = 2;
        s.events.halted = false;
    });
    r.asm(64, CODE, |a| {
        a.mov(rax, 0x1f_e010u64)?;
        a.mov(dword_ptr(rax), 1)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.state().cr2, 0x1f_e010);
    assert_eq!(r.gpr(gpr::R15), 0b11);
}

#[test]
fn user_access_to_supervisor_page_and_nx_fetch() {
    let mut r = Rig::long();
    handler(&r, HANDLERS, 14, true);
    r.gate64(14, HANDLERS, 0, 0, false);
    // NX on the 2 MiB page holding DATA; jump there.
    let pde = PD + (DATA >> 21) * 8;
    r.mem.write_u64(pde, DATA | 0x87 | (1 << 63)).unwrap();
    r.load(DATA, &[0x90, 0xf4]);
    r.asm(64, CODE, |a| {
        a.mov(rax, DATA)?;
        a.jmp(rax)
    });
    r.run_to_halt();
    assert_eq!(r.state().cr2, DATA);
    // P=1 (present, protection), I/D=1 (fetch).
    assert_eq!(r.gpr(gpr::R15), 0b1_0001);
    assert_eq!(r.gpr(gpr::R14), DATA, "the fault reports the target RIP");
}

#[test]
fn double_fault_and_triple_fault() {
    let mut r = Rig::long();
    // #GP handler points at a non-present IDT entry (vector 13 not present)
    // -> #NP while delivering #GP (both contributory) -> #DF.
    handler(&r, HANDLERS, 8, true);
    r.gate64(8, HANDLERS, 1, 0, false);
    r.mem.write_u64(IDT + 13 * 16, 0).unwrap(); // #GP gate not present
    r.asm(64, CODE, |a| {
        a.mov(rax, 0x8000_0000_0000_0000u64)?;
        a.mov(rbx, qword_ptr(rax))?; // non-canonical: #GP(0)
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 8);
    assert_eq!(r.gpr(gpr::R15), 0, "#DF error code is 0");
    // IST1 was used: the frame sits just below IST1_TOP (aligned).
    assert_eq!(r.gpr(gpr::R13), IST1_TOP - 5 * 8);
    // Now make #DF's gate bad as well: triple fault.
    r.mem.write_u64(IDT + 8 * 16, 0).unwrap();
    r.edit(|s| {
        s.rip = CODE;
        s.gpr[gpr::RSP] = STACK_TOP;
        s.events.halted = false;
    });
    assert_eq!(r.run_until_exit(), sim_core::VcpuExit::Shutdown);
}

#[test]
fn benign_then_contributory_is_delivered_serially() {
    // #UD handler gate points at a null code selector? Use: INT3 (benign) with
    // a not-present gate -> #NP delivered normally (no #DF).
    let mut r = Rig::long();
    handler(&r, HANDLERS, 11, true);
    r.gate64(11, HANDLERS, 0, 0, false);
    r.gate64(3, HANDLERS + 0x100, 0, 3, false);
    r.mem.write_u8(IDT + 3 * 16 + 5, 0x6e).unwrap(); // P=0, DPL3 interrupt gate
    r.asm(64, CODE, |a| {
        a.int3()?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 11);
    // #NP error code: IDT bit (2) | vector 3 << 3; EXT=0 for a software interrupt.
    assert_eq!(r.gpr(gpr::R15), (3 << 3) | 2);
}

#[test]
fn rep_string_ops_in_64_and_32_bit_address_size() {
    let mut r = Rig::long();
    let src = DATA;
    let dst = DATA + 0x1000;
    for i in 0..64u64 {
        r.mem.write_u8(src + i, i as u8 + 1).unwrap();
    }
    r.asm(64, CODE, |a| {
        a.cld()?;
        a.mov(rsi, src)?;
        a.mov(rdi, dst)?;
        a.mov(ecx, 16u32)?;
        a.rep().movsd()?; // 64 bytes
                          // 32-bit address size: addr32 rep stosb with ECX, EDI.
        a.mov(edi, (dst + 0x100) as u32)?;
        a.mov(ecx, 5u32)?;
        a.mov(al, 0xaau32)?;
        a.db(&[0x67, 0xf3, 0xaa])?; // addr32 rep stosb
                                    // repne scasb: find 0x20 in src (byte value 0x20 at index 31).
        a.mov(rdi, src)?;
        a.mov(rcx, 64u64)?;
        a.mov(al, 0x20u32)?;
        a.repne().scasb()?;
        a.mov(r8, rcx)?;
        a.mov(r9, rdi)?;
        // repe cmpsb over equal 64 bytes: runs out with ZF=1.
        a.mov(rsi, src)?;
        a.mov(rdi, dst)?;
        a.mov(rcx, 64u64)?;
        a.repe().cmpsb()?;
        a.hlt()
    });
    let before = r.cpu.retired_instructions().unwrap();
    r.run_to_halt();
    for i in 0..64u64 {
        assert_eq!(r.mem.read_u8(dst + i).unwrap(), i as u8 + 1);
    }
    assert_eq!(r.mem.read_u64(dst + 0x100).unwrap() & 0xff_ffff_ffff, 0xaa_aaaa_aaaa);
    assert_eq!(r.mem.read_u8(dst + 0x105).unwrap(), 0, "exactly five bytes stored");
    assert_eq!(r.gpr(gpr::RDI) >> 32, 0);
    // Found at index 31: 32 iterations, RCX = 64 - 32, RDI one past the match.
    assert_eq!(r.gpr(gpr::R8), 32);
    assert_eq!(r.gpr(gpr::R9), src + 32);
    assert_eq!(r.gpr(gpr::RCX), 0);
    assert_ne!(r.state().rflags & ZF, 0);
    // Every REP iteration retires as one instruction: 16 + 5 + 32 + 64
    // iterations plus 16 other instructions (incl. HLT).
    let n = r.cpu.retired_instructions().unwrap() - before;
    assert_eq!(n, 16 + 5 + 32 + 64 + 16);
}

#[test]
fn self_modifying_code_is_re_decoded() {
    let mut r = Rig::long();
    // A loop body whose immediate is patched each iteration:
    // the first pass adds 1, then the code rewrites the imm8 to 5.
    let target = CODE + 0x40;
    r.asm(64, CODE, |a| {
        a.xor(eax, eax)?;
        a.mov(ecx, 3u32)?;
        a.mov(rdx, target)?;
        a.jmp(rdx)
    });
    r.asm(64, target, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.db(&[0x83, 0xc0, 0x01])?; // add eax, 1: imm8 at offset 2
        a.mov(byte_ptr(target + 2), 5)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RAX), 1 + 5 + 5);
    // Writes between runs (by the machine) are seen too.
    r.mem.write_u8(target + 2, 7).unwrap();
    r.edit(|s| {
        s.rip = CODE;
        s.events.halted = false;
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RAX), 7 + 5 + 5);
}

#[test]
fn instruction_crossing_a_page_boundary() {
    let mut r = Rig::long();
    let at = CODE + 0x1000 - 3;
    r.asm(64, CODE, |a| {
        a.mov(rdx, at)?;
        a.jmp(rdx)
    });
    r.asm(64, at, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?; // 10 bytes, 3 on the first page
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RAX), 0x1122_3344_5566_7788);
    // The second page not present: #PF with CR2 = start of that page.
    // Now an instruction whose second page (0x20_0000) is not present.
    let at = 0x1f_fffd;
    r.mem.write_u64(PT + 0x1ff * 8, 0x1f_f000 | 7).unwrap();
    r.load(at, &[0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0xf4]);
    // 0x20_0000 is the first 2 MiB page: unmap it by making PD[1] not present,
    // after moving our code elsewhere.
    r.edit(|s| {
        s.rip = at;
        s.events.halted = false;
        s.gpr[gpr::RSP] = 0x1f_0000;
    });
    r.mem.write_u64(PD + 8, 0).unwrap();
    // HANDLERS is in the unmapped 2 MiB page: use a handler below it.
    handler(&r, 0x1e_0100, 14, true);
    r.gate64(14, 0x1e_0100, 0, 0, false);
    r.run_to_halt();
    assert_eq!(r.state().cr2, 0x20_0000);
    assert_eq!(r.gpr(gpr::R15), pf_fetch_not_present());
    assert_eq!(r.gpr(gpr::R14), at);
}

fn pf_fetch_not_present() -> u64 {
    // P=0, I/D=1 (EFER.NXE is set in the rig).
    0b1_0000
}
