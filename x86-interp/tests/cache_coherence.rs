//! Differential check of the decoded-instruction caches: random programs
//! whose stores often land in their own code run (a) normally and (b) one
//! instruction per `run` with the state re-set in between, which drops the
//! TLB and L0 and re-verifies every code page byte for byte. Any stale
//! decode in (a) shows up as a difference.

mod common;

use common::*;
use sim_core::state::gpr;
use sim_core::{Completion, Vcpu, VcpuExit};

/// A deterministic answer for an exit, the same for both runs.
fn answer(e: &VcpuExit) -> Option<Completion> {
    match *e {
        VcpuExit::IoIn { port, .. } => Some(Completion::Data(port as u64 * 0x9e37_79b9)),
        VcpuExit::MmioRead { gpa, .. } => Some(Completion::Data(gpa.rotate_left(17))),
        VcpuExit::MsrRead { msr } => Some(Completion::Data(msr as u64 ^ 0x55)),
        VcpuExit::IoOut { .. } | VcpuExit::MmioWrite { .. } | VcpuExit::MsrWrite { .. } => Some(Completion::Done),
        _ => None,
    }
}

/// Run up to `steps` instructions; `single` re-sets the state before each one.
fn drive(r: &mut Rig, steps: u64, single: bool) {
    let start = r.cpu.retired_instructions().unwrap_or(0);
    // set_state drops a completed answer, so not right after an exit.
    let mut answered = false;
    for _ in 0..4 * steps {
        let done = r.cpu.retired_instructions().unwrap_or(0) - start;
        if done >= steps {
            return;
        }
        if single && !answered {
            let s = r.cpu.state();
            r.cpu.set_state(&s);
        }
        let budget = if single { 1 } else { steps - done };
        match r.cpu.run(&r.mem, budget).unwrap() {
            VcpuExit::Halt | VcpuExit::Shutdown => return,
            e => {
                answered = false;
                if let Some(c) = answer(&e) {
                    r.cpu.complete(c);
                    answered = true;
                }
            }
        }
    }
}

/// Build two identical rigs running `code` with registers from `regs`.
fn rigs(code: &[u8], regs: &[u64]) -> [Rig; 2] {
    let mut rigs = [Rig::long(), Rig::long()];
    for r in rigs.iter_mut() {
        r.load(HANDLERS, &[0xf4]);
        for v in 0..=255u8 {
            r.gate64(v, HANDLERS, if v == 8 { 1 } else { 0 }, 3, false);
        }
        r.load(CODE, code);
        r.edit(|s| {
            for (i, g) in s.gpr.iter_mut().enumerate() {
                *g = match i {
                    gpr::RSP => STACK_TOP,
                    gpr::RCX => 3,
                    // Pointers into the code so stores patch it.
                    gpr::RBX | gpr::RSI | gpr::RDI => CODE + (regs[i] & 0x5f),
                    _ => regs[i],
                };
            }
        });
    }
    rigs
}

fn compare(rigs: &mut [Rig; 2], steps: u64, what: &str) {
    let [a, b] = rigs;
    drive(a, steps, false);
    drive(b, steps, true);
    assert_eq!(a.cpu.retired_instructions(), b.cpu.retired_instructions(), "{what}");
    assert_eq!(a.state(), b.state(), "{what}");
    let (mut ma, mut mb) = (vec![0u8; 0x1000], vec![0u8; 0x1000]);
    a.mem.read(CODE, &mut ma).unwrap();
    b.mem.read(CODE, &mut mb).unwrap();
    assert_eq!(ma, mb, "code page, {what}");
}

#[test]
fn self_patching_programs_agree() {
    use iced_x86::code_asm::*;
    let mut seed: u64 = 0x0ddc_0ffe_e0dd_f00d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut total = 0u64;
    for _ in 0..400 {
        let mut a = CodeAssembler::new(64).unwrap();
        let mut top = a.create_label();
        a.set_label(&mut top).unwrap();
        for _ in 0..12 {
            let d = (next() % 0x50) as i32;
            let imm = next() as u32;
            match next() % 10 {
                0 => a.mov(byte_ptr(rbx + d), imm & 0xff),
                1 => a.add(byte_ptr(rsi + d), al),
                2 => a.xor(eax, imm),
                3 => a.inc(dword_ptr(rdi + d)),
                4 => a.add(eax, ebx),
                5 => a.mov(al, byte_ptr(rbx + d)),
                6 => a.lea(rdx, qword_ptr(rax + rbx * 2)),
                7 => a.rol(eax, cl),
                8 => a.mov(qword_ptr(rsi + d), rax),
                _ => a.xor(byte_ptr(rdi + d), 0x10),
            }
            .unwrap();
        }
        a.dec(ecx).unwrap();
        a.jnz(top).unwrap();
        a.hlt().unwrap();
        let code = a.assemble(CODE).unwrap();
        let regs: Vec<u64> = (0..16).map(|_| next()).collect();
        let mut r = rigs(&code, &regs);
        compare(&mut r, 200, &format!("{code:02x?}"));
        total += r[0].cpu.retired_instructions().unwrap_or(0);
    }
    assert!(total > 400 * 10, "the programs ran ({total} instructions)");
}

#[test]
fn cached_and_uncached_execution_agree() {
    let mut seed: u64 = 0x1234_5678_9abc_def1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..1500 {
        let mut code = [0u8; 96];
        for c in code.chunks_mut(8) {
            c.copy_from_slice(&next().to_le_bytes());
        }
        // A short loop around the random bytes so patched code runs again.
        code[88..96].copy_from_slice(&[0xff, 0xc9, 0x0f, 0x85, 0xa2, 0xff, 0xff, 0xff]); // dec ecx; jnz -94
        let regs: Vec<u64> = (0..16).map(|_| next()).collect();
        let mut r = rigs(&code, &regs);
        compare(&mut r, 300, &format!("{code:02x?}"));
    }
}
