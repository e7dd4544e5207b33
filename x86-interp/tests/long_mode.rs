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

#[test]
fn port_io_exits_and_completes() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(dx, 0x3f8u32)?;
        a.mov(al, 0x41u32)?;
        a.out(dx, al)?;
        a.in_(eax, 0x71)?;
        a.mov(ebx, eax)?;
        // REP OUTSB: two bytes from DATA.
        a.mov(rsi, DATA)?;
        a.mov(ecx, 2u32)?;
        a.rep().outsb()?;
        a.hlt()
    });
    r.mem.write(DATA, b"hi").unwrap();
    assert_eq!(r.run(1000), VcpuExit::IoOut { port: 0x3f8, size: 1, data: 0x41 });
    // Running without answering is an error.
    assert!(r.cpu.run(&r.mem, 10).is_err());
    r.complete(Completion::Done);
    assert_eq!(r.run(1000), VcpuExit::IoIn { port: 0x71, size: 4 });
    r.complete(Completion::Data(0xdead_beef_1234_5678));
    assert_eq!(r.run(1000), VcpuExit::IoOut { port: 0x3f8, size: 1, data: b'h' as u32 });
    r.complete(Completion::Done);
    assert_eq!(r.run(1000), VcpuExit::IoOut { port: 0x3f8, size: 1, data: b'i' as u32 });
    r.complete(Completion::Done);
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RBX), 0x1234_5678, "32-bit IN takes the low 4 bytes, zero-extended");
    assert_eq!(r.gpr(gpr::RCX), 0);
    assert_eq!(r.gpr(gpr::RSI), DATA + 2);
}

#[test]
fn mmio_read_modify_write_restarts_cleanly() {
    let mut r = Rig::long();
    // Map the LAPIC page (0xfee00000) through a 2 MiB page at 0x4000_0000... use
    // PDPT[3] -> a PD whose entry 0x1f7 maps 0xfee00000 as a 2 MiB page.
    r.mem.write_u64(PDPT + 3 * 8, 0x9000 | 7).unwrap();
    r.mem.write_u64(0x9000 + 0x1f7 * 8, 0xfee0_0000 | 0x87).unwrap();
    r.asm(64, CODE, |a| {
        a.mov(eax, 5u32)?;
        a.mov(rdi, 0xfee0_0030u64)?;
        a.add(dword_ptr(rdi), eax)?;
        a.mov(rbx, 0x77u64)?;
        a.hlt()
    });
    assert_eq!(r.run(1000), VcpuExit::MmioRead { gpa: 0xfee0_0030, size: 4 });
    let flags_before = r.state().rflags;
    r.complete(Completion::Data(0xffff_fffe));
    // Re-executed: the read is taken from the log, the write exits.
    assert_eq!(r.run(1000), VcpuExit::MmioWrite { gpa: 0xfee0_0030, size: 4, data: 3 });
    assert_eq!(r.state().rflags, flags_before, "no flags committed before the write completed");
    r.complete(Completion::Done);
    r.run_to_halt();
    // 0xfffffffe + 5 = 0x1_00000003: CF set, result 3.
    assert_ne!(r.state().rflags & CF, 0);
    assert_eq!(r.gpr(gpr::RBX), 0x77);
}

#[test]
fn cpuid_and_msrs() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.xor(eax, eax)?;
        a.cpuid()?;
        a.mov(r8d, ebx)?;
        // Internal MSR: LSTAR round trip.
        a.mov(ecx, 0xc000_0082u32)?;
        a.mov(eax, 0x1234_5678u32)?;
        a.mov(edx, 0xffff_ffffu32)?;
        a.wrmsr()?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.rdmsr()?;
        a.mov(r9d, eax)?;
        a.mov(r10d, edx)?;
        // Machine-owned MSR: APIC base.
        a.mov(ecx, 0x1bu32)?;
        a.rdmsr()?;
        a.mov(r11d, eax)?;
        a.mov(ecx, 0x4000_0000u32)?;
        a.wrmsr()?;
        a.hlt()
    });
    assert_eq!(r.run(1000), VcpuExit::MsrRead { msr: 0x1b });
    r.complete(Completion::Data(0xfee0_0900));
    assert_eq!(r.run(1000), VcpuExit::MsrWrite { msr: 0x4000_0000, value: 0xfee0_0900 });
    r.complete(Completion::Done);
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::R8) as u32, u32::from_le_bytes(*b"Genu"));
    assert_eq!(r.gpr(gpr::R9), 0x1234_5678);
    assert_eq!(r.gpr(gpr::R10), 0xffff_ffff);
    assert_eq!(r.state().msrs.lstar, 0xffff_ffff_1234_5678);
    assert_eq!(r.gpr(gpr::R11), 0xfee0_0900);
    assert_eq!(r.gpr(gpr::RDX), 0);
}

#[test]
fn msr_fault_completion_raises_gp() {
    let mut r = Rig::long();
    handler(&r, HANDLERS, 13, true);
    r.gate64(13, HANDLERS, 0, 0, false);
    r.asm(64, CODE, |a| {
        a.mov(ecx, 0x1234u32)?;
        a.rdmsr()?;
        a.hlt()
    });
    assert_eq!(r.run(1000), VcpuExit::MsrRead { msr: 0x1234 });
    r.complete(Completion::Fault);
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13);
    assert_eq!(r.gpr(gpr::R15), 0);
}

#[test]
fn hlt_interrupt_injection_and_shadow() {
    let mut r = Rig::long();
    // Handler for vector 0x40: count in RBX, IRETQ.
    r.asm(64, HANDLERS, |a| {
        a.inc(rbx)?;
        a.iretq()
    });
    r.gate64(0x40, HANDLERS, 0, 0, false);
    r.asm(64, CODE, |a| {
        a.sti()?;
        a.hlt()?;
        a.mov(ecx, 1u32)?;
        a.cli()?;
        a.hlt()
    });
    // STI's shadow: after STI retires, not ready for one instruction.
    assert_eq!(r.run(1), VcpuExit::BudgetExhausted);
    assert!(!r.cpu.interrupt_ready(), "STI shadow");
    assert_eq!(r.run(10), VcpuExit::Halt);
    assert!(r.cpu.interrupt_ready());
    assert_eq!(r.run(10), VcpuExit::Halt, "stays halted without an interrupt");
    r.cpu.inject_interrupt(0x40);
    assert_eq!(r.run(100), VcpuExit::Halt);
    assert_eq!(r.gpr(gpr::RBX), 1);
    assert_eq!(r.gpr(gpr::RCX), 1, "resumed after HLT");
    assert_eq!(r.state().rflags & rflags::IF, 0);
    assert!(!r.cpu.interrupt_ready());
}

#[test]
fn interrupt_window_and_budget() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        let mut top = a.create_label();
        a.mov(ecx, 100u32)?;
        a.set_label(&mut top)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.sti()?;
        a.nop()?;
        a.nop()?;
        a.hlt()
    });
    assert_eq!(r.run(7), VcpuExit::BudgetExhausted);
    assert_eq!(r.cpu.retired_instructions(), Some(7));
    r.cpu.request_interrupt_window(true);
    // 1 + 200 loop instructions, STI, then one shadowed instruction.
    assert_eq!(r.run(1000), VcpuExit::InterruptWindow);
    assert_eq!(r.cpu.retired_instructions(), Some(1 + 200 + 1 + 1));
    r.cpu.request_interrupt_window(false);
    assert_eq!(r.run(1000), VcpuExit::Halt);
    assert_eq!(r.cpu.retired_instructions(), Some(205));
}

#[test]
fn tsc_advances_per_instruction() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.rdtsc()?;
        a.mov(r8d, eax)?;
        a.nop()?;
        a.rdtsc()?;
        a.hlt()
    });
    r.cpu.set_tsc(1000);
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::R8), 1000);
    assert_eq!(r.gpr(gpr::RAX), 1003, "three instructions retired between the reads");
}

#[test]
fn syscall_sysret_round_trip_to_ring3() {
    let mut r = Rig::long();
    let user = DATA + 0x2000;
    let entry = HANDLERS + 0x200;
    r.edit(|s| {
        s.msrs.lstar = entry;
        s.msrs.sfmask = rflags::IF | rflags::DF;
    });
    // Kernel: go to ring 3 with SYSRET (RCX = user RIP, R11 = flags).
    r.asm(64, CODE, |a| {
        a.mov(rcx, user)?;
        a.mov(r11d, 0x202u32 | 0x400)?; // IF | DF
        a.mov(rsp, 0x3f_0000u64)?;
        a.sysretq()
    });
    r.asm(64, user, |a| {
        a.mov(r12, rsp)?;
        a.mov(eax, 42u32)?;
        a.syscall()?;
        a.hlt()
    });
    r.asm(64, entry, |a| {
        a.mov(r13, rcx)?; // return RIP
        a.mov(r14, r11)?; // user RFLAGS
        a.hlt()
    });
    r.run_to_halt();
    let s = r.state();
    assert_eq!(s.seg[sreg::CS].selector, KCODE);
    assert_eq!(s.seg[sreg::SS].selector, KDATA);
    assert_eq!(r.gpr(gpr::R13), user + 10, "after MOV r12,rsp (3) + MOV eax (5) + SYSCALL (2)");
    assert_eq!(r.gpr(gpr::R14) & 0x602, 0x602, "user flags IF|DF preserved in R11");
    assert_eq!(s.rflags & (rflags::IF | rflags::DF), 0, "masked by FMASK");
}

#[test]
fn iretq_to_ring3_and_back_through_an_interrupt_gate() {
    let mut r = Rig::long();
    let user = DATA + 0x3000;
    // Ring-3 code triggers INT 0x80 (gate DPL 3) and then INT 0x81 (DPL 0 -> #GP).
    r.asm(64, user, |a| {
        a.mov(rbx, 0x99u64)?;
        a.int(0x80)?;
        a.int(0x81)?;
        a.hlt()
    });
    r.asm(64, HANDLERS, |a| {
        a.mov(r8, rsp)?;
        a.mov(r9, qword_ptr(rsp + 8))?; // CS
        a.mov(r10, qword_ptr(rsp + 24))?; // user RSP
        a.mov(r11, qword_ptr(rsp + 32))?; // user SS
        a.iretq()
    });
    handler(&r, HANDLERS + 0x100, 13, true);
    r.gate64(0x80, HANDLERS, 0, 3, false);
    r.gate64(0x81, HANDLERS + 0x80, 0, 0, false);
    r.gate64(13, HANDLERS + 0x100, 0, 0, false);
    // Kernel builds an IRETQ frame to ring 3.
    r.asm(64, CODE, |a| {
        a.push((UDATA | 3) as i32)?;
        a.push(0x3f_8000)?;
        a.push(0x202)?;
        a.push((UCODE64 | 3) as i32)?;
        a.mov(rax, user)?;
        a.push(rax)?;
        a.iretq()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RBX), 0x99);
    // INT 0x80 from ring 3 switched to RSP0 from the TSS.
    assert_eq!(r.gpr(gpr::R8), RSP0_TOP - 40);
    assert_eq!(r.gpr(gpr::R9), (UCODE64 | 3) as u64);
    assert_eq!(r.gpr(gpr::R10), 0x3f_8000);
    assert_eq!(r.gpr(gpr::R11), (UDATA | 3) as u64);
    // INT 0x81 with gate DPL 0 from CPL 3: #GP(0x81 << 3 | 2).
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13);
    assert_eq!(r.gpr(gpr::R15), (0x81 << 3) | 2);
    assert_eq!(r.state().seg[sreg::CS].selector, KCODE);
    assert_eq!(r.state().seg[sreg::SS].selector, 0, "null SS with RPL 0 after the stack switch");
}

#[test]
fn hypercall_exits_after_the_instruction() {
    for vmmcall in [false, true] {
        let mut r = Rig::long();
        r.asm(64, CODE, |a| {
            a.mov(eax, 17u32)?;
            if vmmcall {
                a.vmmcall()?;
            } else {
                a.vmcall()?;
            }
            a.hlt()
        });
        assert_eq!(r.run(100), VcpuExit::Hypercall);
        assert_eq!(r.state().rip, CODE + 5 + 3);
        let mut g = r.cpu.gprs();
        g[gpr::RAX] = (-38i64) as u64;
        r.cpu.set_gprs(&g);
        r.run_to_halt();
        assert_eq!(r.gpr(gpr::RAX), (-38i64) as u64);
    }
}

#[test]
fn divide_error_and_ud2() {
    let mut r = Rig::long();
    handler(&r, HANDLERS, 0, false);
    r.gate64(0, HANDLERS, 0, 0, false);
    r.asm(64, CODE, |a| {
        a.mov(eax, 1u32)?;
        a.xor(ecx, ecx)?;
        a.div(ecx)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 0);
    assert_eq!(r.gpr(gpr::R14), CODE + 7, "#DE is a fault: RIP of the DIV");
    let mut r = Rig::long();
    handler(&r, HANDLERS, 6, false);
    r.gate64(6, HANDLERS, 0, 0, false);
    r.asm(64, CODE, |a| {
        a.ud2()?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 6);
    assert_eq!(r.gpr(gpr::R14), CODE);
}

#[test]
fn state_round_trip_is_lossless() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(rax, 5u64)?;
        a.hlt()
    });
    r.run_to_halt();
    let mut s = r.state();
    s.fpu.xmm[3] = 0x1234_5678_9abc_def0_1122_3344_5566_7788;
    s.msrs.kernel_gs_base = 0xffff_8000_0000_1000;
    s.events.nmi_masked = true;
    s.dr[0] = 0x1000;
    s.tsc = 123_456;
    r.cpu.set_state(&s);
    assert_eq!(r.cpu.state(), s);
    let mut other = x86_interp::Interpreter::new(1, 2, cpuid());
    other.set_state(&s);
    assert_eq!(other.state(), s);
}

#[test]
fn random_instruction_streams_never_panic() {
    // A tiny deterministic generator (xorshift); 10k streams of random bytes
    // run in a long-mode sandbox with every IDT vector pointing at HLT.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut r = Rig::long();
    r.load(HANDLERS, &[0xf4]);
    for v in 0..=255u8 {
        r.gate64(v, HANDLERS, if v == 8 { 1 } else { 0 }, 3, false);
    }
    let base = r.state();
    for _ in 0..10_000 {
        let mut code = [0u8; 64];
        for c in code.chunks_mut(8) {
            c.copy_from_slice(&next().to_le_bytes());
        }
        r.load(CODE, &code);
        let mut s = base.clone();
        s.gpr = [next(), next(), next(), next(), STACK_TOP, next(), next(), next(), 0, 0, 0, 0, 0, 0, 0, 0];
        r.cpu.set_state(&s);
        for _ in 0..4 {
            match r.cpu.run(&r.mem, 64).unwrap() {
                VcpuExit::IoIn { .. } | VcpuExit::MmioRead { .. } | VcpuExit::MsrRead { .. } => {
                    r.cpu.complete(Completion::Data(next()))
                }
                VcpuExit::IoOut { .. } | VcpuExit::MmioWrite { .. } | VcpuExit::MsrWrite { .. } => {
                    r.cpu.complete(Completion::Done)
                }
                _ => {}
            }
        }
        // Restore the tables the stream may have scribbled over.
        let fresh = Rig::long();
        let mut buf = vec![0u8; 0x1_0000];
        fresh.mem.read(0, &mut buf).unwrap();
        r.mem.write(0, &buf).unwrap();
        r.load(HANDLERS, &[0xf4]);
        for v in 0..=255u8 {
            r.gate64(v, HANDLERS, if v == 8 { 1 } else { 0 }, 3, false);
        }
    }
}

#[test]
fn sse_glue_loads_computes_and_stores() {
    let mut r = Rig::long();
    // Two packed-single vectors: [1.5, 2.0, -1.0, 0.25] + [2.25, 0.5, 1.0, 4.0].
    let a: [f32; 4] = [1.5, 2.0, -1.0, 0.25];
    let b: [f32; 4] = [2.25, 0.5, 1.0, 4.0];
    for i in 0..4 {
        r.mem.write_u32(DATA + i * 4, a[i as usize].to_bits()).unwrap();
        r.mem.write_u32(DATA + 16 + i * 4, b[i as usize].to_bits()).unwrap();
    }
    r.mem.write_u64(DATA + 0x40, 3.0f64.to_bits()).unwrap();
    r.asm(64, CODE, |a| {
        a.mov(rax, DATA)?;
        a.movaps(xmm0, xmmword_ptr(rax))?;
        a.addps(xmm0, xmmword_ptr(rax + 16))?;
        a.movups(xmmword_ptr(rax + 0x21), xmm0)?; // unaligned store
        a.movsd_2(xmm1, qword_ptr(rax + 0x40))?; // load zeroes the upper half
        a.mov(ecx, 2u32)?;
        a.cvtsi2sd(xmm2, ecx)?;
        a.comisd(xmm1, xmm2)?; // 3.0 > 2.0: ZF=PF=CF=0
        a.pushfq()?;
        a.pop(rbx)?;
        a.movd(edx, xmm0)?;
        a.hlt()
    });
    r.edit(|s| s.fpu.xmm[1] = u128::MAX);
    r.run_to_halt();
    let sum = [3.75f32, 2.5, 0.0, 4.25];
    for (i, want) in sum.iter().enumerate() {
        assert_eq!(f32::from_bits(r.mem.read_u32(DATA + 0x21 + i as u64 * 4).unwrap()), *want);
    }
    assert_eq!(r.state().fpu.xmm[1], 3.0f64.to_bits() as u128);
    assert_eq!(r.gpr(gpr::RBX) & (ZF | PF | CF), 0);
    assert_eq!(r.gpr(gpr::RDX), 3.75f32.to_bits() as u64);
}

#[test]
fn sse_misaligned_and_disabled() {
    let mut r = Rig::long();
    handler(&r, HANDLERS, 13, true);
    r.gate64(13, HANDLERS, 0, 0, false);
    handler(&r, HANDLERS + 0x100, 7, false);
    r.gate64(7, HANDLERS + 0x100, 0, 0, false);
    r.asm(64, CODE, |a| {
        a.mov(rax, DATA + 8)?;
        a.movaps(xmm0, xmmword_ptr(rax))?; // misaligned: #GP(0)
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13);
    // CR0.TS: #NM.
    r.edit(|s| {
        s.cr0 |= sim_core::state::cr0::TS;
        s.rip = CODE;
        s.events.halted = false;
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 7);
}

#[test]
fn fxsave_fxrstor_round_trip() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(rax, DATA)?;
        a.fxsave64(zmmword_ptr(rax))?;
        a.pxor(xmm9, xmm9)?;
        a.mov(ecx, 0x1f80u32 | 0x6000)?; // RC = toward zero
        a.mov(dword_ptr(rax + 0x300), ecx)?;
        a.ldmxcsr(dword_ptr(rax + 0x300))?;
        a.fxrstor64(zmmword_ptr(rax))?;
        a.stmxcsr(dword_ptr(rax + 0x304))?;
        a.hlt()
    });
    r.edit(|s| s.fpu.xmm[9] = 0xabcd);
    r.run_to_halt();
    assert_eq!(r.state().fpu.xmm[9], 0xabcd, "restored from the image");
    // FXSAVE layout (SDM vol. 1 table 10-2): MXCSR at 24, XMM9 at 160 + 9*16.
    assert_eq!(r.mem.read_u32(DATA + 24).unwrap(), 0x1f80);
    assert_eq!(r.mem.read_u64(DATA + 160 + 9 * 16).unwrap(), 0xabcd);
    assert_eq!(r.mem.read_u32(DATA + 0x304).unwrap(), 0x1f80, "MXCSR restored by FXRSTOR");
}

#[test]
fn invlpg_and_cr3_reload_drop_stale_translations() {
    let mut r = Rig::long();
    // Linear 0x1f_0000 -> physical 0x1f_0000 (value 1), later -> 0x1f_1000 (value 2).
    r.mem.write_u64(0x1f_0000, 1).unwrap();
    r.mem.write_u64(0x1f_1000, 2).unwrap();
    let pte = PT + 0x1f0 * 8;
    r.asm(64, CODE, |a| {
        a.mov(rbx, 0x1f_0000u64)?;
        a.mov(r8, qword_ptr(rbx))?; // fills the TLB
        a.mov(rax, pte)?;
        a.mov(qword_ptr(rax), 0x1f_1000 | 7)?;
        a.invlpg(byte_ptr(rbx))?;
        a.mov(r9, qword_ptr(rbx))?; // must see the new mapping
        a.mov(qword_ptr(rax), 0x1f_0000 | 7)?;
        a.mov(rcx, cr3)?;
        a.mov(cr3, rcx)?;
        a.mov(r10, qword_ptr(rbx))?; // and again after a CR3 reload
        a.mov(r11, cr0)?;
        a.mov(r12, cr4)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!((r.gpr(gpr::R8), r.gpr(gpr::R9), r.gpr(gpr::R10)), (1, 2, 1));
    assert_eq!(r.gpr(gpr::RCX), PML4);
    assert_eq!(r.gpr(gpr::R11), r.state().cr0);
    assert_eq!(r.gpr(gpr::R12), r.state().cr4);
}

#[test]
fn patching_another_code_page_is_seen() {
    let mut r = Rig::long();
    let func = CODE + 0x3000;
    // func: mov eax, imm32; ret  (imm at func + 1)
    r.asm(64, func, |a| {
        a.mov(eax, 1u32)?;
        a.ret()
    });
    r.asm(64, CODE, |a| {
        a.mov(rbx, func)?;
        a.call(rbx)?;
        a.mov(r8, rax)?;
        a.mov(dword_ptr(func + 1), 2)?; // patch from another page
        a.call(rbx)?;
        a.mov(r9, rax)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!((r.gpr(gpr::R8), r.gpr(gpr::R9)), (1, 2));
}

#[test]
fn bit_test_family_and_bit_scans() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(rbx, DATA)?;
        a.mov(rax, 100u64)?;
        a.bts(qword_ptr(rbx), rax)?; // bit 100: qword at +8, bit 36
        a.setc(r8b)?;
        a.mov(rax, -1i64)?;
        a.bts(qword_ptr(rbx + 16), rax)?; // bit -1 of +16: qword +8, bit 63
        a.btr(qword_ptr(rbx + 8), 36)?; // immediate form, within the operand
        a.setc(r9b)?;
        a.mov(ecx, 0x10u32)?;
        a.btc(ecx, 36)?; // register form: 36 mod 32 = 4
        a.setc(r10b)?;
        a.mov(edx, 0xf0u32)?;
        a.bsf(esi, edx)?;
        a.bsr(edi, edx)?;
        a.mov(r11, 0x0102_0304_0506_0708u64)?;
        a.bswap(r11)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u64(DATA + 8).unwrap(), 1 << 63);
    assert_eq!(r.mem.read_u64(DATA).unwrap(), 0);
    assert_eq!(r.mem.read_u64(DATA + 16).unwrap(), 0);
    assert_eq!((r.gpr(gpr::R8) & 0xff, r.gpr(gpr::R9) & 0xff, r.gpr(gpr::R10) & 0xff), (0, 1, 1));
    assert_eq!(r.gpr(gpr::RCX), 0);
    assert_eq!((r.gpr(gpr::RSI), r.gpr(gpr::RDI)), (4, 7));
    assert_eq!(r.gpr(gpr::R11), 0x0807_0605_0403_0201);
}

#[test]
fn extensions_shifts_multiply_divide() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(al, 0x80u32)?;
        a.movsx(r11d, al)?;
        a.movzx(r12d, al)?;
        a.movsxd(r13, r11d)?;
        a.mov(eax, 0x1234_5678u32)?;
        a.mov(ebx, 0x9abc_def0u32)?;
        a.shld(eax, ebx, 8)?;
        a.mov(r14d, eax)?;
        a.shrd(eax, ebx, 8)?;
        a.mov(r15d, eax)?;
        a.mov(rax, u64::MAX)?;
        a.mov(rcx, 2u64)?;
        a.mul(rcx)?;
        a.mov(r8, rax)?;
        a.mov(r9, rdx)?;
        a.mov(eax, -7i32 as u32)?;
        a.cdq()?;
        a.mov(ecx, 2u32)?;
        a.idiv(ecx)?;
        a.mov(r10, rax)?;
        a.mov(rsi, rdx)?;
        a.mov(rax, -5i64)?;
        a.cqo()?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::R11), 0xffff_ff80);
    assert_eq!(r.gpr(gpr::R12), 0x80);
    assert_eq!(r.gpr(gpr::R13), 0xffff_ffff_ffff_ff80);
    assert_eq!(r.gpr(gpr::R14), 0x3456_789a);
    assert_eq!(r.gpr(gpr::R15), 0xf034_5678);
    assert_eq!((r.gpr(gpr::R8), r.gpr(gpr::R9)), (0xffff_ffff_ffff_fffe, 1));
    assert_eq!((r.gpr(gpr::R10), r.gpr(gpr::RSI)), (0xffff_fffd, 0xffff_ffff), "-7/2 = -3 rem -1");
    assert_eq!(r.gpr(gpr::RDX), u64::MAX);
}

#[test]
fn exchange_compare_and_misc() {
    let mut r = Rig::long();
    for i in 0..16u64 {
        r.mem.write_u8(DATA + 0x100 + i, (i * 3) as u8).unwrap();
    }
    r.asm(64, CODE, |a| {
        a.mov(rdi, DATA)?;
        a.mov(qword_ptr(rdi + 0x200), 5)?;
        a.mov(rax, 5u64)?;
        a.mov(rcx, 9u64)?;
        a.cmpxchg(qword_ptr(rdi + 0x200), rcx)?; // equal: store 9, ZF=1
        a.setz(r8b)?;
        a.cmpxchg(qword_ptr(rdi + 0x200), rcx)?; // rax=5 != 9: rax = 9, ZF=0
        a.setz(r9b)?;
        a.mov(r10, rax)?;
        a.mov(qword_ptr(rdi + 0x208), 10)?;
        a.mov(rdx, 3u64)?;
        a.xadd(qword_ptr(rdi + 0x208), rdx)?;
        a.lea(rbx, qword_ptr(rdi + 0x100))?;
        a.mov(al, 5u32)?;
        a.xlatb()?;
        a.movzx(r11d, al)?;
        a.stc()?;
        a.lahf()?;
        a.mov(r12, rax)?;
        a.shr(r12, 8)?;
        a.mov(r13, rsp)?;
        a.enter(16, 0)?;
        a.mov(r14, rsp)?;
        a.mov(r15, rbp)?;
        a.leave()?;
        a.cmp(r13, rsp)?;
        a.sete(sil)?;
        a.xor(ecx, ecx)?;
        a.cmp(ecx, 1)?;
        a.cmovl(ecx, r11d)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u64(DATA + 0x200).unwrap(), 9);
    assert_eq!((r.gpr(gpr::R8) & 0xff, r.gpr(gpr::R9) & 0xff, r.gpr(gpr::R10)), (1, 0, 9));
    assert_eq!(r.mem.read_u64(DATA + 0x208).unwrap(), 13);
    assert_eq!(r.gpr(gpr::RDX), 10);
    assert_eq!(r.gpr(gpr::R11), 15);
    assert_eq!(r.gpr(gpr::R12) & 0x3, 0x3, "LAHF: CF and the fixed bit 1");
    assert_eq!(r.gpr(gpr::R15), r.gpr(gpr::R13) - 8, "ENTER: RBP = frame after pushing RBP");
    assert_eq!(r.gpr(gpr::R14), r.gpr(gpr::R13) - 8 - 16);
    assert_eq!(r.gpr(gpr::RSI) & 0xff, 1, "LEAVE restored RSP");
    assert_eq!(r.gpr(gpr::RCX), 15, "0 < 1 signed: CMOVL taken");
}

#[test]
fn compatibility_mode_round_trip() {
    let mut r = Rig::long();
    let compat = CODE + 0x100;
    let back = CODE + 0x200;
    // 64-bit: far return into the 32-bit kernel code segment (L=0, D=1).
    r.asm(64, CODE, |a| {
        a.push(KCODE32 as i32)?;
        a.mov(rax, compat)?;
        a.push(rax)?;
        a.db(&[0x48, 0xcb]) // retfq
    });
    // Compatibility mode: 32-bit operand/address size, then far JMP back.
    r.asm(32, compat, |a| {
        a.mov(eax, 0xffff_ffffu32)?;
        a.add(eax, 2)?; // wraps at 32 bits
        a.mov(ebx, esp)?;
        a.db(&[0xea])?; // jmp ptr16:32
        a.dd(&[back as u32])?;
        a.dw(&[KCODE])
    });
    r.asm(64, back, |a| {
        a.mov(rcx, 0x1_0000_0000u64)?;
        a.hlt()
    });
    r.edit(|s| s.gpr[gpr::RAX] = 0xdead_0000_0000_0000);
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RAX), 1, "32-bit result, upper half zeroed");
    assert_eq!(r.gpr(gpr::RBX), STACK_TOP, "ESP after the far return");
    assert_eq!(r.gpr(gpr::RCX), 0x1_0000_0000, "back in 64-bit mode");
    assert_eq!(r.state().seg[sreg::CS].selector, KCODE);
}

#[test]
fn mov_ss_blocks_interrupts_for_one_instruction() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.sti()?;
        a.nop()?;
        a.mov(eax, KDATA as u32)?;
        a.mov(ss, ax)?;
        a.nop()?;
        a.hlt()
    });
    assert_eq!(r.run(4), VcpuExit::BudgetExhausted);
    assert!(!r.cpu.interrupt_ready(), "shadow after MOV SS");
    assert_eq!(r.run(1), VcpuExit::BudgetExhausted);
    assert!(r.cpu.interrupt_ready());
}

#[test]
fn sysenter_sysexit() {
    let mut r = Rig::long();
    let entry = HANDLERS + 0x300;
    let user = DATA + 0x4000;
    r.edit(|s| {
        s.msrs.sysenter_cs = KCODE as u64; // CS=0x08, SS=0x10; SYSEXIT64: CS=0x28|3, SS=0x30|3
        s.msrs.sysenter_eip = entry;
        s.msrs.sysenter_esp = 0x3e_0000;
    });
    r.asm(64, CODE, |a| {
        a.mov(rdx, user)?;
        a.mov(rcx, 0x3f_0000u64)?;
        a.db(&[0x48, 0x0f, 0x35]) // sysexitq
    });
    r.asm(64, user, |a| {
        a.mov(r8, rsp)?;
        a.sysenter()?;
        a.hlt()
    });
    r.asm(64, entry, |a| {
        a.mov(r9, rsp)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::R8), 0x3f_0000);
    assert_eq!(r.gpr(gpr::R9), 0x3e_0000);
    assert_eq!(r.state().seg[sreg::CS].selector, KCODE);
    assert_eq!(r.state().rflags & rflags::IF, 0);
}

/// Enter ring 3 at `user` with RFLAGS = `flags` via IRETQ.
fn to_ring3(r: &Rig, user: u64, flags: u32) {
    r.asm(64, CODE, |a| {
        a.push((UDATA | 3) as i32)?;
        a.push(0x3f_8000)?;
        a.push(flags as i32)?;
        a.push((UCODE64 | 3) as i32)?;
        a.mov(rax, user)?;
        a.push(rax)?;
        a.iretq()
    });
}

#[test]
fn popf_and_cli_respect_cpl_and_iopl() {
    let mut r = Rig::long();
    let user = DATA + 0x5000;
    handler(&r, HANDLERS, 13, true);
    r.gate64(13, HANDLERS, 0, 0, false);
    to_ring3(&r, user, 0x202);
    r.asm(64, user, |a| {
        a.pushfq()?;
        a.pop(rax)?;
        a.and(eax, !0x200)?; // try to clear IF
        a.or(eax, 0x3000 | 0x400)?; // try to set IOPL=3; DF may change
        a.push(rax)?;
        a.popfq()?;
        a.pushfq()?;
        a.pop(rbx)?;
        a.cli()?; // CPL 3 > IOPL 0: #GP(0)
        a.hlt()
    });
    r.run_to_halt();
    let f = r.gpr(gpr::RBX);
    assert_ne!(f & rflags::IF, 0, "IF unchanged at CPL 3 with IOPL 0");
    assert_eq!(f & rflags::IOPL, 0, "IOPL unchanged below CPL 0");
    assert_ne!(f & rflags::DF, 0, "DF is writable");
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13);
    assert_eq!(r.mem.read_u8(r.gpr(gpr::R14)).unwrap(), 0xfa, "#GP on the CLI");
}

#[test]
fn port_io_from_ring3_needs_iopl() {
    let mut r = Rig::long();
    let user = DATA + 0x6000;
    handler(&r, HANDLERS, 13, true);
    r.gate64(13, HANDLERS, 0, 0, false);
    to_ring3(&r, user, 0x3202); // IOPL 3: allowed
    r.asm(64, user, |a| {
        a.out(0x80, al)?;
        a.hlt()
    });
    assert_eq!(r.run(100), VcpuExit::IoOut { port: 0x80, size: 1, data: (user & 0xff) as u32 });
    r.complete(Completion::Done);
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13, "then HLT at CPL 3: #GP");
    let mut r = Rig::long();
    handler(&r, HANDLERS, 13, true);
    r.gate64(13, HANDLERS, 0, 0, false);
    to_ring3(&r, user, 0x202); // IOPL 0
    r.asm(64, user, |a| {
        a.out(0x80, al)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13);
    assert_eq!(r.gpr(gpr::R14), user, "#GP on the OUT, no exit");
}

#[test]
fn trap_flag_single_steps() {
    let mut r = Rig::long();
    // #DB handler counts traps in R12 and returns.
    r.asm(64, HANDLERS, |a| {
        a.inc(r12)?;
        a.iretq()
    });
    r.gate64(1, HANDLERS, 0, 0, false);
    r.asm(64, CODE, |a| {
        a.pushfq()?;
        a.or(qword_ptr(rsp), 0x100)?;
        a.popfq()?; // TF takes effect after the next instruction
        a.nop()?;
        a.nop()?;
        a.pushfq()?;
        a.and(qword_ptr(rsp), !0x100)?;
        a.popfq()?;
        a.hlt()
    });
    r.run_to_halt();
    // Traps after: NOP, NOP, PUSHFQ, AND, POPFQ (TF was set when it began) = 5.
    assert_eq!(r.gpr(gpr::R12), 5);
    assert_ne!(r.state().dr[4] & (1 << 14), 0, "DR6.BS");
}

#[test]
fn rep_stos_respects_the_budget_per_iteration() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(rdi, DATA + 0xff0)?; // crosses into the next page after 16 bytes
        a.mov(ecx, 100u32)?;
        a.mov(al, 0x5au32)?;
        a.rep().stosb()?;
        a.mov(rsi, DATA + 0x2000)?;
        a.mov(rdi, DATA + 0x2001)?;
        a.mov(ecx, 64u32)?;
        a.rep().movsb()?; // overlapping forward copy propagates byte 0
        a.hlt()
    });
    r.mem.write_u8(DATA + 0x2000, 0xab).unwrap();
    assert_eq!(r.run(3 + 10), VcpuExit::BudgetExhausted);
    assert_eq!(r.gpr(gpr::RCX), 90, "exactly ten iterations retired");
    assert_eq!(r.gpr(gpr::RDI), DATA + 0xff0 + 10);
    assert_eq!(r.mem.read_u8(DATA + 0xff0 + 9).unwrap(), 0x5a);
    assert_eq!(r.mem.read_u8(DATA + 0xff0 + 10).unwrap(), 0);
    r.run_to_halt();
    assert_eq!(r.cpu.retired_instructions(), Some(3 + 100 + 3 + 64 + 1));
    for i in 0..100 {
        assert_eq!(r.mem.read_u8(DATA + 0xff0 + i).unwrap(), 0x5a);
    }
    assert_eq!(r.mem.read_u8(DATA + 0xff0 + 100).unwrap(), 0);
    for i in 0..=64 {
        assert_eq!(r.mem.read_u8(DATA + 0x2000 + i).unwrap(), 0xab, "byte {i}");
    }
    assert_eq!(r.mem.read_u8(DATA + 0x2000 + 65).unwrap(), 0);
}

#[test]
fn movnti_stores_like_mov() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(rbx, DATA)?;
        a.movnti(qword_ptr(rbx + 8), rax)?;
        a.movnti(dword_ptr(rbx + 16), eax)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u64(DATA + 8).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(r.mem.read_u64(DATA + 16).unwrap(), 0x5566_7788);
}

#[test]
fn every_jcc_condition() {
    let mut r = Rig::long();
    r.asm(64, CODE, |a| {
        a.push((CF | SF | PF | 2) as i32)?;
        a.popfq()?;
        a.xor(r8d, r8d)?;
        let mut labels: Vec<CodeLabel> = (0..16).map(|_| a.create_label()).collect();
        for (i, l) in labels.iter_mut().enumerate() {
            match i {
                0 => a.jo(*l)?,
                1 => a.jno(*l)?,
                2 => a.jb(*l)?,
                3 => a.jae(*l)?,
                4 => a.je(*l)?,
                5 => a.jne(*l)?,
                6 => a.jbe(*l)?,
                7 => a.ja(*l)?,
                8 => a.js(*l)?,
                9 => a.jns(*l)?,
                10 => a.jp(*l)?,
                11 => a.jnp(*l)?,
                12 => a.jl(*l)?,
                13 => a.jge(*l)?,
                14 => a.jle(*l)?,
                _ => a.jg(*l)?,
            }
            a.or(r8d, 1 << i)?; // only when not taken; OR clobbers the flags, so reload them
            a.push((CF | SF | PF | 2) as i32)?;
            a.popfq()?;
            a.set_label(l)?;
        }
        a.hlt()
    });
    r.run_to_halt();
    // CF=1 ZF=0 SF=1 OF=0 PF=1: not taken are o, ae, e, a, ns, np, ge, g.
    let not_taken = [0, 3, 4, 7, 9, 11, 13, 15].iter().fold(0u64, |m, b| m | 1 << b);
    assert_eq!(r.gpr(gpr::R8), not_taken);
}

#[test]
fn x87_control_state_and_unimplemented_arithmetic() {
    let mut r = Rig::long();
    handler(&r, HANDLERS, 6, false);
    r.gate64(6, HANDLERS, 0, 0, false);
    handler(&r, HANDLERS + 0x100, 7, false);
    r.gate64(7, HANDLERS + 0x100, 0, 0, false);
    r.edit(|s| {
        s.fpu.fcw = 0x1234;
        s.fpu.fsw = 0x80ff;
    });
    r.asm(64, CODE, |a| {
        a.mov(rbx, DATA)?;
        a.fnstcw(word_ptr(rbx))?;
        a.fnclex()?;
        a.fnstsw(ax)?;
        a.mov(r8d, eax)?;
        a.fninit()?;
        a.fnstcw(word_ptr(rbx + 2))?;
        a.mov(word_ptr(rbx + 4), 0x027f)?;
        a.fldcw(word_ptr(rbx + 4))?;
        a.wait()?;
        a.fld1()?; // not implemented: #UD
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u16(DATA).unwrap(), 0x1234);
    assert_eq!(r.gpr(gpr::R8) & 0xffff, 0x0000, "FNCLEX clears the exception and busy bits");
    assert_eq!(r.mem.read_u16(DATA + 2).unwrap(), 0x037f, "FNINIT control word");
    assert_eq!(r.state().fpu.fcw, 0x027f);
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 6);
    // With CR0.TS the same instruction raises #NM instead.
    let fld1_at = r.gpr(gpr::R14);
    r.edit(|s| {
        s.cr0 |= sim_core::state::cr0::TS;
        s.rip = fld1_at;
        s.events.halted = false;
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 7);
}

#[test]
fn far_call_through_a_64bit_call_gate_to_ring0_and_back() {
    let mut r = Rig::long();
    let target = HANDLERS + 0x400;
    let user = DATA + 0x7000;
    // 64-bit call gate at GDT 0x48 (16 bytes), DPL 3, to KCODE:target.
    let lo =
        (target & 0xffff) | (KCODE as u64) << 16 | (0xcu64 | 3 << 5 | 0x80) << 40 | ((target >> 16) & 0xffff) << 48;
    r.mem.write_u64(GDT + 0x48, lo).unwrap();
    r.mem.write_u64(GDT + 0x50, target >> 32).unwrap();
    r.edit(|s| s.gdtr.limit = 0x57);
    handler(&r, HANDLERS, 13, true);
    r.gate64(13, HANDLERS, 0, 0, false);
    r.asm(64, target, |a| {
        a.mov(r8, rsp)?;
        a.mov(r9, qword_ptr(rsp + 8))?; // caller CS
        a.mov(r10, qword_ptr(rsp + 16))?; // caller RSP
        a.mov(r11, qword_ptr(rsp + 24))?; // caller SS
        a.db(&[0x48, 0xcb]) // retfq: back to ring 3
    });
    // Pointer m16:32 at DATA + 0x7800: offset (ignored), selector 0x48|3.
    r.mem.write_u32(DATA + 0x7800, 0).unwrap();
    r.mem.write_u16(DATA + 0x7804, 0x48 | 3).unwrap();
    r.asm(64, user, |a| {
        a.mov(rbx, DATA + 0x7800)?;
        a.db(&[0xff, 0x1b])?; // call far [rbx]
        a.mov(r12, rsp)?;
        a.hlt() // #GP at CPL 3 ends the test
    });
    let to_user = CODE;
    r.asm(64, to_user, |a| {
        a.push((UDATA | 3) as i32)?;
        a.push(0x3f_8000)?;
        a.push(0x202)?;
        a.push((UCODE64 | 3) as i32)?;
        a.mov(rax, user)?;
        a.push(rax)?;
        a.iretq()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::R8), RSP0_TOP - 32, "SS, RSP, CS, RIP on the RSP0 stack");
    assert_eq!(r.gpr(gpr::R9), (UCODE64 | 3) as u64);
    assert_eq!(r.gpr(gpr::R10), 0x3f_8000);
    assert_eq!(r.gpr(gpr::R11), (UDATA | 3) as u64);
    assert_eq!(r.gpr(gpr::R12), 0x3f_8000, "RETF restored the ring-3 stack");
    assert_eq!(r.mem.read_u32(DATA + 0x100).unwrap(), 13);
}

/// The machine may move vCPUs between threads.
#[test]
fn interpreter_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<x86_interp::Interpreter>();
}

#[test]
fn a_byte_out_to_the_hypercall_port_is_a_hypercall_once_set() {
    // mov eax, 17 (5 bytes); out 0xe8, al (2); out 0xe8, ax (3); hlt
    let prog = |a: &mut iced_x86::code_asm::CodeAssembler| {
        a.mov(eax, 17u32)?;
        a.out(0xe8u32, al)?;
        a.out(0xe8u32, ax)?;
        a.hlt()
    };
    // Unset: an ordinary port write.
    let mut r = Rig::long();
    r.asm(64, CODE, prog);
    assert_eq!(r.run(100), VcpuExit::IoOut { port: 0xe8, size: 1, data: 17 });
    // Set: the byte OUT retires and exits as a hypercall (as KVM reports the
    // hypercall-page stub); the word OUT to the same port stays port I/O.
    let mut r = Rig::long();
    r.cpu.set_hypercall_port(Some(0xe8));
    r.asm(64, CODE, prog);
    assert_eq!(r.run(100), VcpuExit::Hypercall);
    assert_eq!(r.state().rip, CODE + 5 + 2, "RIP after the OUT");
    let mut g = r.cpu.gprs();
    g[gpr::RAX] = 0x1234;
    r.cpu.set_gprs(&g);
    assert_eq!(r.run(100), VcpuExit::IoOut { port: 0xe8, size: 2, data: 0x1234 });
}

#[test]
fn with_hypercall_sites_only_those_vmcalls_exit() {
    // mov eax, 18 (5 bytes); vmcall (3) at CODE+5; mov eax, 18; vmcall at CODE+13; hlt
    let prog = |a: &mut iced_x86::code_asm::CodeAssembler| {
        a.mov(eax, 18u32)?;
        a.vmcall()?;
        a.mov(eax, 18u32)?;
        a.vmcall()?;
        a.hlt()
    };
    let mut r = Rig::long();
    r.cpu.set_hypercall_sites(Some(vec![CODE + 13]));
    r.asm(64, CODE, prog);
    // The first VMCALL is no site: KVM's own handler answered it with
    // -KVM_ENOSYS (-1000) and it retired without an exit.
    assert_eq!(r.run(100), VcpuExit::Hypercall);
    assert_eq!(r.state().rip, CODE + 16, "the exit is the second VMCALL's");
    assert_eq!(r.gpr(gpr::RAX), 18, "the site's call has its number in RAX");
    // Without sites every VMCALL is a hypercall.
    let mut r = Rig::long();
    r.asm(64, CODE, prog);
    assert_eq!(r.run(100), VcpuExit::Hypercall);
    assert_eq!(r.state().rip, CODE + 8);
}

#[test]
fn a_vmcall_outside_the_sites_gets_kvms_enosys() {
    let mut r = Rig::long();
    r.cpu.set_hypercall_sites(Some(Vec::new()));
    r.asm(64, CODE, |a| {
        a.mov(eax, 18u32)?;
        a.vmcall()?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RAX), (-1000i64) as u64);
}
