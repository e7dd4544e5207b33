//! Snapshot-style migration: run some exits on one backend, move ArchState
//! (and the same memory) to the other, continue; the output and final state
//! must equal an uninterrupted run.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvm_backend::KvmVm;
use sim_core::memory::GuestMemory;
use sim_core::state::{cr4, gpr, ArchState};
use sim_core::vcpu::{Completion, Vcpu, VcpuExit};
use x86_interp::Interpreter;

const CODE: u64 = 0x10_0000;

/// Prints "0123456789" computing each digit with ALU ops, then halts.
fn program() -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut top).unwrap();
    a.lea(eax, dword_ptr(ebx + 0x30)).unwrap();
    a.out(0xe9, al).unwrap();
    a.imul_3(esi, ebx, 7).unwrap();
    a.add(edi, esi).unwrap();
    a.inc(ebx).unwrap();
    a.cmp(ebx, 10).unwrap();
    a.jne(top).unwrap();
    a.hlt().unwrap();
    assemble(a, CODE)
}

/// Run until `n` OUT exits have been answered (collecting the bytes).
fn run_outs(v: &mut dyn Vcpu, mem: &GuestMemory, n: usize, out: &mut Vec<u8>) {
    while out.len() < n {
        match v.run(mem, 1_000_000).unwrap() {
            VcpuExit::IoOut { data, .. } => {
                out.push(data as u8);
                v.complete(Completion::Done);
            }
            VcpuExit::BudgetExhausted => {}
            e => panic!("unexpected {e:?}"),
        }
    }
}

fn migrate(kvm_first: bool) {
    let Some(vm) = kvm_or_skip("snapshot migration") else { return };
    let mem = GuestMemory::new(4).unwrap();
    mem.write(CODE, &program()).unwrap();
    let mut s = ArchState::pvh_entry(CODE, 0);
    s.gpr[gpr::RSP] = 0x8_0000;
    let mut kvm = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    let mut interp: Box<dyn Vcpu> = Box::new(Interpreter::new(0, 1, cpuid()));
    let (first, second) = if kvm_first { (&mut kvm, &mut interp) } else { (&mut interp, &mut kvm) };
    first.set_state(&s);
    let mut out = Vec::new();
    run_outs(first.as_mut(), &mem, 4, &mut out);
    if !kvm_first {
        // The interpreter finishes an answered instruction on its next run
        // (its state until then is at the OUT); one instruction settles it.
        assert_eq!(first.run(&mem, 1).unwrap(), VcpuExit::BudgetExhausted);
    }
    second.set_state(&first.state());
    let t = run_bare(second.as_mut(), &mem, 100);
    out.extend(t.out);
    assert_eq!(out, b"0123456789");
    assert_eq!(t.exits.last(), Some(&VcpuExit::Halt));
    let end = second.state();
    // EDI = 7 * (0 + 1 + ... + 9) = 315, EBX = 10.
    assert_eq!((end.gpr[gpr::RDI], end.gpr[gpr::RBX]), (315, 10));
}

#[test]
fn interpreter_to_kvm() {
    migrate(false);
}

#[test]
fn kvm_to_interpreter() {
    migrate(true);
}

#[test]
fn state_round_trip_on_kvm() {
    let Some(vm) = kvm_or_skip("state_round_trip_on_kvm") else { return };
    let mut kvm = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    let mut s = ArchState::pvh_entry(CODE, 0x5000);
    s.gpr = core::array::from_fn(|i| 0x1111_0000_0000 * i as u64 + i as u64);
    s.msrs.lstar = 0xffff_8000_0000_1000;
    s.msrs.sysenter_cs = 0x10;
    s.cr4 |= cr4::OSFXSR | cr4::OSXMMEXCPT;
    s.fpu.xmm = core::array::from_fn(|i| 0x0123_4567_89ab_cdef_0011_2233_4455_6600 + i as u128);
    s.fpu.mxcsr = 0x1f80 | 0x2000 | 0x8000; // round down, flush to zero
                                            // Two values pushed: TOP = 6, R6 and R7 valid (abridged tag bits 6, 7).
    s.fpu.fsw = 6 << 11;
    s.fpu.ftw = 0xc0;
    s.fpu.fcw = 0x027f; // 53-bit precision
    s.fpu.st[6][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff, 0x3f]); // 1.0
    s.fpu.st[7][..10].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xc0, 0x00, 0x40]); // 3.0
    s.cr2 = 0xdead_b000;
    s.dr[0] = 0x1234;
    kvm.set_state(&s);
    let mut back = kvm.state();
    // The TSC moves on between the two calls; everything else is exact.
    back.tsc = s.tsc;
    assert_eq!(back, s);
}

/// SSE state set through set_state is what the guest sees (it stores the
/// registers, and MXCSR through FXSAVE), and what the guest loads (MOVDQU,
/// FXRSTOR) is what state() reports: both directions against hand-written
/// values. (This host's KVM emulates every instruction and its emulator has
/// no LDMXCSR/STMXCSR or SSE arithmetic, so only moves and FXSAVE/FXRSTOR.)
#[test]
fn sse_state_reaches_the_guest_and_back() {
    let Some(vm) = kvm_or_skip("sse_state_reaches_the_guest_and_back") else { return };
    const OUT: u32 = 0x3000;
    const SAVE: u32 = 0x4000;
    const LOAD: u32 = 0x5000;
    let mut a = CodeAssembler::new(32).unwrap();
    a.movdqu(xmmword_ptr(OUT), xmm5).unwrap();
    a.movdqu(xmmword_ptr(OUT + 16), xmm7).unwrap();
    a.fxsave(ptr(SAVE)).unwrap();
    a.fxrstor(ptr(LOAD)).unwrap();
    a.movdqu(xmm3, xmmword_ptr(OUT + 0x100)).unwrap();
    a.hlt().unwrap();
    let mem = GuestMemory::new(4).unwrap();
    mem.write(CODE, &assemble(a, CODE)).unwrap();
    mem.write(OUT as u64 + 0x100, &0xfedc_ba98_7654_3210_0f1e_2d3c_4b5a_6978u128.to_le_bytes()).unwrap();
    // FXRSTOR image (SDM vol. 1 table 10-2): FCW 0x37f, MXCSR (byte 24)
    // round up, XMM2 (byte 160 + 2 * 16).
    mem.write_u16(LOAD as u64, 0x037f).unwrap();
    mem.write_u32(LOAD as u64 + 24, 0x1f80 | 0x4000).unwrap();
    mem.write(LOAD as u64 + 192, &0x2222_0000_1111_0000_2222_0000_1111u128.to_le_bytes()).unwrap();
    let mut s = ArchState::pvh_entry(CODE, 0);
    s.gpr[gpr::RSP] = 0x8_0000;
    s.cr4 |= cr4::OSFXSR | cr4::OSXMMEXCPT;
    s.fpu.xmm[5] = 0x5555_0000_0000_0000_0000_0000_0000_aaaa;
    s.fpu.xmm[7] = u128::MAX - 7;
    s.fpu.mxcsr = 0x1f80 | 0x2000; // round down
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 10);
    assert_eq!(t.exits, [VcpuExit::Halt]);
    let mut b = [0u8; 32];
    mem.read(OUT as u64, &mut b).unwrap();
    assert_eq!(u128::from_le_bytes(b[..16].try_into().unwrap()), s.fpu.xmm[5]);
    assert_eq!(u128::from_le_bytes(b[16..].try_into().unwrap()), s.fpu.xmm[7]);
    assert_eq!(mem.read_u32(SAVE as u64 + 24).unwrap(), 0x1f80 | 0x2000, "MXCSR in the FXSAVE image");
    let end = v.state();
    assert_eq!(end.fpu.mxcsr, 0x1f80 | 0x4000);
    assert_eq!(end.fpu.xmm[2], 0x2222_0000_1111_0000_2222_0000_1111);
    assert_eq!(end.fpu.xmm[3], 0xfedc_ba98_7654_3210_0f1e_2d3c_4b5a_6978);
    assert_eq!(end.fpu.xmm[5], 0, "FXRSTOR loaded XMM5 from the zeroed image");
}
