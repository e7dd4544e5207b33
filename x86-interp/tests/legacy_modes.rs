//! Real mode and 32-bit protected mode, against hand-computed results.

mod common;

use common::*;
use iced_x86::code_asm::*;
use sim_core::state::{cr0, gpr, sreg, Segment};
use sim_core::{Vcpu, VcpuExit};

#[test]
fn real_mode_interrupt_through_the_ivt() {
    let mut r = Rig::real();
    // IVT[0x21] = 0x1000:0x0100.
    r.mem.write_u16(0x21 * 4, 0x0100).unwrap();
    r.mem.write_u16(0x21 * 4 + 2, 0x1000).unwrap();
    r.asm(16, 0x10100, |a| {
        a.mov(bx, 0x4242u32)?;
        a.iret()
    });
    r.asm(16, 0x10000, |a| {
        a.sti()?;
        a.int(0x21)?;
        a.mov(cx, sp)?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RBX), 0x4242);
    assert_eq!(r.gpr(gpr::RCX), 0xfffe, "IRET popped IP, CS, FLAGS");
    // The frame (SS=0x2000): FLAGS with IF, CS=0x1000, IP after INT (0x10000 + 1 + 2).
    let frame = 0x20000 + 0xfffe - 6;
    assert_eq!(r.mem.read_u16(frame).unwrap(), 3);
    assert_eq!(r.mem.read_u16(frame + 2).unwrap(), 0x1000);
    assert_ne!(r.mem.read_u16(frame + 4).unwrap() & 0x200, 0);
}

#[test]
fn real_mode_iret_never_loads_reserved_flag_bits() {
    // Found by the `interp` fuzz target. SDM IRET (real-address mode):
    // EFLAGS <- tempEFLAGS AND 257FD5H; bits 3, 5 and 15 stay 0, bit 1 is 1.
    // Every bit set in the image but TF (which would single-step the HLT).
    for (operand32, image, want) in [(false, 0xfeffu64, 0x7ed7u64), (true, 0xffff_feff, 0x25_7ed7)] {
        let mut r = Rig::real();
        // The frame at SS:SP (SS=0x2000): IP, CS, FLAGS; then IRET to a HLT.
        let (sz, top) = if operand32 { (4u64, 0xfff0u64) } else { (2, 0xfff8) };
        let frame = 0x20000 + top;
        for (i, v) in [0x0010u64, 0x1000, image].iter().enumerate() {
            r.mem.write(frame + i as u64 * sz, &v.to_le_bytes()[..sz as usize]).unwrap();
        }
        r.load(0x10010, &[0xf4]);
        let iret: &[u8] = if operand32 { &[0x66, 0xcf] } else { &[0xcf] };
        r.load(0x10000, iret);
        r.edit(|s| s.gpr[gpr::RSP] = top);
        r.run_to_halt();
        assert_eq!(r.state().rflags, want, "operand size 32: {operand32}");
    }
}

#[test]
fn real_mode_rep_movsb_wraps_si_di_at_64k() {
    let mut r = Rig::real();
    // DS=ES=0x3000: copy 4 bytes from DS:0xfffe (wrapping to 0x0000) to ES:0x1000.
    r.mem.write(0x30000 + 0xfffe, &[1, 2]).unwrap();
    r.mem.write(0x30000, &[3, 4]).unwrap();
    r.asm(16, 0x10000, |a| {
        a.cld()?;
        a.mov(si, 0xfffeu32)?;
        a.mov(di, 0x1000u32)?;
        a.mov(cx, 4u32)?;
        a.rep().movsb()?;
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(0x31000).unwrap(), u32::from_le_bytes([1, 2, 3, 4]));
    assert_eq!(r.gpr(gpr::RSI), 2, "SI wrapped at 64 KiB");
    assert_eq!(r.gpr(gpr::RDI), 0x1004);
}

#[test]
fn real_to_protected_mode_trampoline() {
    let mut r = Rig::real();
    for (i, d) in GDT_ENTRIES.iter().enumerate() {
        r.mem.write_u64(GDT + i as u64 * 8, *d).unwrap();
    }
    // GDTR image at 0x30000 (DS:0): limit, base.
    r.mem.write_u16(0x30000, 0x47).unwrap();
    r.mem.write_u32(0x30002, GDT as u32).unwrap();
    let pm = 0x10100u64;
    r.asm(16, 0x10000, |a| {
        a.cli()?;
        a.lgdt(word_ptr(0))?;
        a.mov(eax, cr0)?;
        a.or(eax, 1)?;
        a.mov(cr0, eax)?;
        // jmp dword 0x40:pm (66 ea imm32 sel16)
        a.db(&[0x66, 0xea])?;
        a.dd(&[pm as u32])?;
        a.dw(&[KCODE32])
    });
    r.asm(32, pm, |a| {
        a.mov(ax, KDATA as u32)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(esp, 0x9000u32)?;
        a.push(0x1234_5678)?;
        a.pop(ebx)?;
        a.mov(dword_ptr(0x50_0000), ebx)?;
        a.hlt()
    });
    r.run_to_halt();
    let s = r.state();
    assert_ne!(s.cr0 & cr0::PE, 0);
    assert_eq!(s.seg[sreg::CS].selector, KCODE32);
    assert!(s.seg[sreg::CS].default_big());
    assert_eq!(r.mem.read_u32(0x50_0000).unwrap(), 0x1234_5678);
}

#[test]
fn protected_mode_limit_violation_raises_gp_through_a_32bit_gate() {
    let mut r = Rig::prot32();
    // DS limited to 0xfff bytes (base 0x40_0000).
    let small: u64 = 0x0040_9240_0000_0fff; // base 0x400000, limit 0xfff, byte granular
    r.mem.write_u64(GDT + 0x20, small).unwrap();
    r.gate32(13, 0x28_0000, 0);
    r.asm(32, 0x28_0000, |a| {
        a.pop(esi)?; // error code
        a.mov(edi, dword_ptr(esp))?; // EIP
        a.hlt()
    });
    r.asm(32, CODE, |a| {
        a.mov(ax, 0x20u32)?;
        a.mov(es, ax)?;
        a.mov(dword_ptr(0x40_0ffc), 7)?; // through DS (flat): fine
        a.mov(eax, 0xffcu32)?;
        a.mov(dword_ptr(eax).es(), 1)?; // bytes 0xffc..0xfff: at the limit, fine
        a.mov(eax, 0xffdu32)?;
        a.mov(dword_ptr(eax).es(), 2)?; // crosses the limit: #GP(0)
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(0x40_0ffc).unwrap(), 1);
    assert_eq!(r.gpr(gpr::RSI), 0, "#GP(0) for a limit violation");
    assert_eq!(r.mem.read_u8(r.gpr(gpr::RDI)).unwrap(), 0x26, "EIP of the faulting ES-prefixed MOV");
    let _ = Segment::default();
}

#[test]
fn two_level_paging_fault_in_protected_mode() {
    let mut r = Rig::prot32();
    // Page directory at 0x10000: PDE 0 -> PT at 0x11000 identity for 0..4 MiB,
    // except page 0x3ff (0x3ff000) not present. 4 MiB page for 4..8 MiB (PSE).
    r.mem.write_u32(0x10000, 0x11000 | 3).unwrap();
    r.mem.write_u32(0x10004, 0x40_0000 | 0x83).unwrap();
    for i in 0..1024u32 {
        let e = if i == 0x3ff { 0 } else { (i << 12) | 3 };
        r.mem.write_u32(0x11000 + i as u64 * 4, e).unwrap();
    }
    r.gate32(14, 0x28_0000, 0);
    r.asm(32, 0x28_0000, |a| {
        a.pop(esi)?;
        a.mov(eax, cr2)?;
        a.hlt()
    });
    r.asm(32, CODE, |a| {
        a.mov(eax, 0x10000u32)?;
        a.mov(cr3, eax)?;
        a.mov(eax, cr4)?;
        a.or(eax, 0x10)?; // PSE
        a.mov(cr4, eax)?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32 as i32)?;
        a.mov(cr0, eax)?;
        a.mov(dword_ptr(0x40_1000), 0x55)?; // via the 4 MiB page
        a.mov(ebx, dword_ptr(0x3f_f010))?; // not present: #PF
        a.hlt()
    });
    r.run_to_halt();
    assert_eq!(r.mem.read_u32(0x40_1000).unwrap(), 0x55);
    assert_eq!(r.gpr(gpr::RAX), 0x3f_f010);
    assert_eq!(r.gpr(gpr::RSI), 0, "read, supervisor, not present");
    // The 4 MiB PDE got its accessed and dirty bits.
    assert_eq!(r.mem.read_u32(0x10004).unwrap() & 0x60, 0x60);
}

#[test]
fn protected_mode_int_from_ring3_switches_to_the_tss_stack() {
    let mut r = Rig::prot32();
    // 32-bit TSS at 0x8000: ESP0 = 0x7000, SS0 = KDATA.
    r.mem.write_u32(TSS + 4, 0x7000).unwrap();
    r.mem.write_u32(TSS + 8, KDATA as u32).unwrap();
    let tss: u64 = 0x67 | (TSS & 0xff_ffff) << 16 | 0x89 << 40;
    r.mem.write_u64(GDT + 0x30, tss).unwrap();
    r.gate32(0x80, 0x28_0000, 3);
    r.asm(32, 0x28_0000, |a| {
        a.mov(ebx, esp)?;
        a.mov(ecx, dword_ptr(esp + 12))?; // user ESP
        a.hlt()
    });
    let user = 0x50_0000u64;
    r.asm(32, user, |a| {
        a.int(0x80)?;
        a.hlt()
    });
    r.asm(32, CODE, |a| {
        a.mov(ax, TSS_SEL as u32)?;
        a.ltr(ax)?;
        a.push((UDATA | 3) as i32)?;
        a.push(0x6000)?;
        a.pushfd()?;
        a.push((UCODE32 | 3) as i32)?;
        a.push(user as i32)?;
        a.iretd()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RBX), 0x7000 - 20, "SS, ESP, EFLAGS, CS, EIP on the ring-0 stack");
    assert_eq!(r.gpr(gpr::RCX), 0x6000);
    assert_eq!(r.mem.read_u32(0x7000 - 20).unwrap() as u64, user + 2);
    let s = r.state();
    assert_eq!(s.seg[sreg::SS].selector, KDATA);
    // LTR marked the descriptor busy (type 0xB).
    assert_eq!((r.mem.read_u64(GDT + 0x30).unwrap() >> 40) & 0xf, 0xb);
    let _ = VcpuExit::Halt;
    let _ = r.cpu.retired_instructions();
}

#[test]
fn random_instruction_streams_never_panic_in_real_and_protected_mode() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (rig, code_at) in [(Rig::real(), 0x10000u64), (Rig::prot32(), CODE)] {
        let mut r = rig;
        let base = r.state();
        let mut low = vec![0u8; 0x1_0000];
        r.mem.read(0, &mut low).unwrap();
        for _ in 0..5_000 {
            let mut code = [0u8; 64];
            for c in code.chunks_mut(8) {
                c.copy_from_slice(&next().to_le_bytes());
            }
            r.load(code_at, &code);
            let mut s = base.clone();
            for g in s.gpr.iter_mut().take(8) {
                *g = next() & 0xffff_ffff;
            }
            s.gpr[gpr::RSP] = base.gpr[gpr::RSP];
            r.cpu.set_state(&s);
            for _ in 0..4 {
                match r.cpu.run(&r.mem, 64).unwrap() {
                    VcpuExit::IoIn { .. } | VcpuExit::MmioRead { .. } | VcpuExit::MsrRead { .. } => {
                        r.cpu.complete(sim_core::Completion::Data(next()))
                    }
                    VcpuExit::IoOut { .. } | VcpuExit::MmioWrite { .. } | VcpuExit::MsrWrite { .. } => {
                        r.cpu.complete(sim_core::Completion::Done)
                    }
                    _ => {}
                }
            }
            r.mem.write(0, &low).unwrap();
        }
    }
}

#[test]
fn protected_mode_iret_back_to_ring3() {
    let mut r = Rig::prot32();
    r.mem.write_u32(TSS + 4, 0x7000).unwrap();
    r.mem.write_u32(TSS + 8, KDATA as u32).unwrap();
    let tss: u64 = 0x67 | (TSS & 0xff_ffff) << 16 | 0x89 << 40;
    r.mem.write_u64(GDT + 0x30, tss).unwrap();
    r.gate32(0x80, 0x28_0000, 3);
    // Handler: count in EDI, return to ring 3.
    r.asm(32, 0x28_0000, |a| {
        a.inc(edi)?;
        a.iretd()
    });
    // Ring-3 #GP catcher for the final HLT: gate 13 -> HLT at ring 0.
    r.gate32(13, 0x28_0100, 0);
    r.asm(32, 0x28_0100, |a| a.hlt());
    let user = 0x50_0000u64;
    r.asm(32, user, |a| {
        a.int(0x80)?;
        a.mov(ebx, esp)?;
        a.mov(ecx, ss)?;
        a.int(0x80)?;
        a.hlt() // #GP at CPL 3
    });
    r.asm(32, CODE, |a| {
        a.mov(ax, TSS_SEL as u32)?;
        a.ltr(ax)?;
        a.xor(edi, edi)?;
        a.push((UDATA | 3) as i32)?;
        a.push(0x6000)?;
        a.push(0x202)?;
        a.push((UCODE32 | 3) as i32)?;
        a.push(user as i32)?;
        a.iretd()
    });
    r.run_to_halt();
    assert_eq!(r.gpr(gpr::RDI), 2, "two round trips through the gate");
    assert_eq!(r.gpr(gpr::RBX), 0x6000, "user ESP restored by IRETD");
    assert_eq!(r.gpr(gpr::RCX), (UDATA | 3) as u64, "user SS restored");
    let s = r.state();
    assert_eq!(s.seg[sreg::CS].selector, KCODE32, "the #GP handler runs at ring 0");
}

#[test]
fn far_call_through_a_32bit_call_gate_copies_parameters() {
    let mut r = Rig::prot32();
    r.mem.write_u32(TSS + 4, 0x7000).unwrap();
    r.mem.write_u32(TSS + 8, KDATA as u32).unwrap();
    let tss: u64 = 0x67 | (TSS & 0xff_ffff) << 16 | 0x89 << 40;
    r.mem.write_u64(GDT + 0x30, tss).unwrap();
    let target = 0x28_0400u64;
    // 32-bit call gate at 0x48: DPL 3, 2 parameters, to KCODE32:target.
    let gate = (target & 0xffff)
        | (KCODE32 as u64) << 16
        | 2 << 32
        | (0xcu64 | 3 << 5 | 0x80) << 40
        | ((target >> 16) & 0xffff) << 48;
    r.mem.write_u64(GDT + 0x48, gate).unwrap();
    r.edit(|s| s.gdtr.limit = 0x4f);
    r.asm(32, target, |a| {
        a.mov(ebx, esp)?;
        a.mov(ecx, dword_ptr(esp + 8))?; // parameter nearer the caller's ESP
        a.mov(edx, dword_ptr(esp + 12))?;
        a.retf_1(8)
    });
    r.gate32(13, 0x28_0100, 0);
    r.asm(32, 0x28_0100, |a| a.hlt());
    let user = 0x50_0000u64;
    r.asm(32, user, |a| {
        a.push(0x2222)?;
        a.push(0x1111)?;
        a.db(&[0x9a])?; // call ptr16:32 0x48|3:0
        a.dd(&[0])?;
        a.dw(&[0x48 | 3])?;
        a.mov(esi, esp)?;
        a.hlt()
    });
    r.asm(32, CODE, |a| {
        a.mov(ax, TSS_SEL as u32)?;
        a.ltr(ax)?;
        a.push((UDATA | 3) as i32)?;
        a.push(0x6000)?;
        a.push(0x202)?;
        a.push((UCODE32 | 3) as i32)?;
        a.push(user as i32)?;
        a.iretd()
    });
    r.run_to_halt();
    // Inner stack: SS, ESP, param2, param1, CS, EIP below 0x7000.
    assert_eq!(r.gpr(gpr::RBX), 0x7000 - 24);
    assert_eq!((r.gpr(gpr::RCX), r.gpr(gpr::RDX)), (0x1111, 0x2222));
    assert_eq!(r.gpr(gpr::RSI), 0x6000, "RETF 8 dropped the parameters from the caller's stack");
}
