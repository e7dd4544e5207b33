//! Differential tests: small CPU programs run on the interpreter and on KVM
//! from the same state and memory; the final architectural state and the
//! data memory must agree field by field. The interpreter is an
//! independent implementation of the same architecture, so any difference
//! is a bug in one of the two (or in the state transfer). Where a program
//! has hand-computed results (from the SDM), the interpreter is checked
//! against them first.
//!
//! This host's KVM (kvm_pvm) emulates every instruction with KVM's
//! instruction emulator, which lacks x87 and SSE arithmetic, and refuses
//! paging outside long mode (see `legacy_32bit_paging`). A program that
//! hits an instruction the host cannot emulate is reported and checked on
//! the interpreter alone; any other KVM failure fails the test.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvm_backend::KvmVm;
use sim_core::memory::GuestMemory;
use sim_core::state::{gpr, rflags, ArchState};
use sim_core::vcpu::{Vcpu, VcpuError, VcpuExit};
use x86_interp::Interpreter;

const CODE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
/// The compared memory: DATA..DATA + DATA_LEN (programs put their page
/// tables here too, so accessed/dirty bits are compared).
const DATA_LEN: usize = 0x8000;
const STACK: u64 = 0x9_0000;
/// Status flags whose value every program below leaves defined.
const DEFINED: u64 = rflags::CF | rflags::PF | rflags::ZF | rflags::SF | rflags::OF | rflags::DF | rflags::IF;

struct Outcome {
    state: ArchState,
    data: Vec<u8>,
    trace: Trace,
}

impl Outcome {
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().unwrap())
    }
    fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.data[off..off + 8].try_into().unwrap())
    }
}

fn run_on(v: &mut dyn Vcpu, code: &[u8], setup: &dyn Fn(&GuestMemory)) -> Result<Outcome, VcpuError> {
    let mem = GuestMemory::new(16).unwrap();
    mem.write(CODE, code).unwrap();
    setup(&mem);
    let mut s = ArchState::pvh_entry(CODE, 0);
    s.gpr[gpr::RSP] = STACK;
    s.cr4 |= sim_core::state::cr4::OSFXSR | sim_core::state::cr4::OSXMMEXCPT;
    v.set_state(&s);
    let trace = try_run_bare(v, &mem, 1000)?;
    let mut data = vec![0u8; DATA_LEN];
    mem.read(DATA, &mut data).unwrap();
    Ok(Outcome { state: v.state(), data, trace })
}

/// Compare the architecturally comparable parts; return every difference.
fn diff(a: &Outcome, b: &Outcome) -> Vec<String> {
    let (x, y) = (&a.state, &b.state);
    let mut d = Vec::new();
    let mut cmp = |name: &str, p: u64, q: u64| {
        if p != q {
            d.push(format!("{name}: interp {p:#x} kvm {q:#x}"));
        }
    };
    for i in 0..16 {
        cmp(&format!("gpr[{i}]"), x.gpr[i], y.gpr[i]);
    }
    cmp("rip", x.rip, y.rip);
    cmp("rflags&defined", x.rflags & DEFINED, y.rflags & DEFINED);
    cmp("cr0", x.cr0, y.cr0);
    cmp("cr2", x.cr2, y.cr2);
    cmp("cr3", x.cr3, y.cr3);
    cmp("cr4", x.cr4, y.cr4);
    cmp("efer", x.efer, y.efer);
    for i in 0..6 {
        cmp(&format!("seg[{i}].selector"), x.seg[i].selector as u64, y.seg[i].selector as u64);
    }
    // The cached accessed bit is invisible to the guest (LAR and the
    // descriptor in memory are what it can see); this host's KVM leaves it
    // clear after loading CS through a gate, hardware and the interpreter set it.
    let attr = |s: &ArchState| (s.seg[1].attr & !sim_core::state::seg_attr::ACCESSED) as u64;
    cmp("cs.attr", attr(x), attr(y));
    for i in 0..16 {
        let (p, q) = (x.fpu.xmm[i], y.fpu.xmm[i]);
        cmp(&format!("xmm{i}.lo"), p as u64, q as u64);
        cmp(&format!("xmm{i}.hi"), (p >> 64) as u64, (q >> 64) as u64);
    }
    cmp("mxcsr", x.fpu.mxcsr as u64, y.fpu.mxcsr as u64);
    cmp("halted", x.events.halted as u64, y.events.halted as u64);
    for (i, (p, q)) in a.data.iter().zip(&b.data).enumerate() {
        if p != q {
            d.push(format!("data[{:#x}]: interp {p:#04x} kvm {q:#04x}", DATA + i as u64));
        }
    }
    if a.trace != b.trace {
        d.push(format!("exits: interp {:?} kvm {:?}", a.trace, b.trace));
    }
    d
}

/// Run `code` on both backends: the interpreter must halt and pass
/// `check` (hand-computed results); KVM must then agree field by field,
/// unless this host's KVM cannot emulate one of the instructions.
fn differential_code(name: &str, code: &[u8], setup: &dyn Fn(&GuestMemory), check: &dyn Fn(&Outcome)) {
    let Some(vm) = kvm_or_skip(name) else { return };
    let mut interp = Interpreter::new(0, 1, cpuid());
    let i = run_on(&mut interp, code, setup).unwrap_or_else(|e| panic!("{name}: interpreter: {e}"));
    assert!(i.state.events.halted, "{name}: the interpreter did not reach HLT: {:?} {:x?}", i.trace, i.state);
    check(&i);
    let mut kvm = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    let k = match run_on(kvm.as_mut(), code, setup) {
        Ok(k) => k,
        Err(e) if e.to_string().contains("could not emulate") => {
            eprintln!("{name}: KVM on this host cannot run the program ({e}); checked on the interpreter only");
            return;
        }
        Err(e) => panic!("{name}: KVM: {e}"),
    };
    let d = diff(&i, &k);
    assert!(d.is_empty(), "{name}: {} differences:\n{}", d.len(), d.join("\n"));
}

fn differential(name: &str, a: CodeAssembler, setup: &dyn Fn(&GuestMemory)) {
    differential_code(name, &assemble(a, CODE), setup, &|_| {});
}

/// Store EFLAGS & mask at [EDI] and advance EDI.
fn save_flags(a: &mut CodeAssembler, mask: u32) {
    a.pushfd().unwrap();
    a.pop(eax).unwrap();
    a.and(eax, mask as i32).unwrap();
    a.stosd().unwrap();
}

#[test]
fn alu_and_flags() {
    let arith = (rflags::CF | rflags::PF | rflags::AF | rflags::ZF | rflags::SF | rflags::OF) as u32;
    let logic = arith & !(rflags::AF as u32);
    let mut a = CodeAssembler::new(32).unwrap();
    a.cld().unwrap();
    a.mov(edi, DATA as u32).unwrap();
    let values: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1234_5678];
    for &p in &values {
        for &q in &values {
            a.mov(ebx, p).unwrap();
            a.mov(ecx, q).unwrap();
            a.add(ebx, ecx).unwrap();
            save_flags(&mut a, arith);
            a.mov(eax, ebx).unwrap();
            a.stosd().unwrap();
            a.sub(ebx, ecx).unwrap();
            save_flags(&mut a, arith);
            a.sbb(ebx, ecx).unwrap();
            save_flags(&mut a, arith);
            a.adc(ecx, ebx).unwrap();
            save_flags(&mut a, arith);
            a.xor(ebx, ecx).unwrap();
            save_flags(&mut a, logic);
            a.neg(ecx).unwrap();
            save_flags(&mut a, arith);
            a.mov(eax, ecx).unwrap();
            a.stosd().unwrap();
        }
    }
    // Multiply and divide results (flags after them are partly undefined).
    a.mov(eax, 0x1234_5678u32).unwrap();
    a.mov(ecx, 0x9abc_def0u32).unwrap();
    a.mul(ecx).unwrap();
    a.mov(esi, edx).unwrap();
    a.mov(ebx, eax).unwrap();
    a.mov(eax, 0xffff_fff0u32).unwrap();
    a.cdq().unwrap();
    a.mov(ecx, 3u32).unwrap();
    a.idiv(ecx).unwrap();
    a.hlt().unwrap();
    differential("alu_and_flags", a, &|_| {});
}

#[test]
fn string_ops_both_directions() {
    let mut a = CodeAssembler::new(32).unwrap();
    // rep movsb forward, rep stosd, repe cmpsb, then backwards with DF=1.
    a.cld().unwrap();
    a.mov(esi, (DATA + 0x1000) as u32).unwrap();
    a.mov(edi, DATA as u32).unwrap();
    a.mov(ecx, 37u32).unwrap();
    a.rep().movsb().unwrap();
    a.mov(eax, 0xdead_beefu32).unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.rep().stosd().unwrap();
    a.mov(esi, (DATA + 0x1000) as u32).unwrap();
    a.mov(edi, DATA as u32).unwrap();
    a.mov(ecx, 64u32).unwrap();
    a.repe().cmpsb().unwrap();
    a.mov(ebp, ecx).unwrap();
    a.std().unwrap();
    a.mov(esi, (DATA + 0x1000 + 99) as u32).unwrap();
    a.mov(edi, (DATA + 0x200 + 99) as u32).unwrap();
    a.mov(ecx, 100u32).unwrap();
    a.rep().movsb().unwrap();
    a.mov(al, 0x41u32).unwrap();
    a.mov(edi, (DATA + 0x1000 + 99) as u32).unwrap();
    a.mov(ecx, 100u32).unwrap();
    a.repne().scasb().unwrap();
    a.cld().unwrap();
    a.hlt().unwrap();
    differential("string_ops_both_directions", a, &|m| {
        let src: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        m.write(DATA + 0x1000, &src).unwrap();
    });
}

/// A flat GDT at `gdt` (as PVH: null, code 0x08, data 0x10, TSS 0x18),
/// `extra` descriptors from 0x20 on, and its pseudo-descriptor at gdt + 0x100.
fn write_gdt(m: &GuestMemory, gdt: u64, extra: &[u64]) {
    let mut d = vec![0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0x0000_8900_0000_0067];
    d.extend_from_slice(extra);
    for (i, x) in d.iter().enumerate() {
        m.write_u64(gdt + 8 * i as u64, *x).unwrap();
    }
    m.write_u16(gdt + 0x100, (d.len() * 8 - 1) as u16).unwrap();
    m.write_u64(gdt + 0x102, gdt).unwrap();
}

/// A 64-bit interrupt gate (SDM vol. 3 figure 6-8) to `ip` through `cs`.
fn gate64(ip: u64, sel: u16) -> (u64, u64) {
    ((ip & 0xffff) | (sel as u64) << 16 | 0x8e00u64 << 32 | (ip >> 16 & 0xffff) << 48, ip >> 32)
}

/// Enter long mode from the PVH state the way a kernel does (CR4.PAE,
/// CR3, EFER.LME, CR0.PG|WP, far jump to a 64-bit CS), write through an
/// alias mapping, and take three #PFs through a 64-bit IDT whose handler
/// logs the error code and CR2 and resumes with IRETQ: not present (0),
/// write to a read-only page with CR0.WP (P|W = 3), reserved bit 51 set
/// in a PTE (P|RSVD = 9). The page tables sit in the compared memory, so
/// accessed and dirty bits are compared too.
#[test]
fn long_mode_paging_and_page_faults_through_the_idt() {
    const PML4: u64 = DATA + 0x2000;
    const PDPT: u64 = DATA + 0x3000;
    const PD: u64 = DATA + 0x4000;
    const PT: [u64; 3] = [DATA + 0x5000, DATA + 0x6000, DATA + 0x7000];
    const IDT: u64 = 0x6_0000;
    const GDT: u64 = 0x6_1000;
    const CODE64: u64 = CODE + 0x1000;
    const LOG: u64 = DATA + 0x100;
    let mut a = CodeAssembler::new(32).unwrap();
    a.lgdt(ptr(GDT + 0x100)).unwrap();
    a.mov(eax, sim_core::state::cr4::PAE as u32).unwrap();
    a.mov(cr4, eax).unwrap();
    a.mov(eax, PML4 as u32).unwrap();
    a.mov(cr3, eax).unwrap();
    a.mov(ecx, sim_core::msr::IA32_EFER).unwrap();
    a.rdmsr().unwrap();
    a.or(eax, sim_core::state::efer::LME as i32).unwrap();
    a.wrmsr().unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, (sim_core::state::cr0::PG | sim_core::state::cr0::WP) as u32 as i32).unwrap();
    a.mov(cr0, eax).unwrap();
    a.jmp_far(0x20, CODE64 as u32).unwrap();
    let code32 = assemble(a, CODE);

    let mut b = CodeAssembler::new(64).unwrap();
    let mut handler = b.create_label();
    let resume: Vec<_> = (0..3).map(|_| b.create_label()).collect();
    b.lidt(ptr(IDT + 0x1000)).unwrap();
    b.cld().unwrap();
    b.mov(rdi, LOG).unwrap();
    b.mov(dword_ptr(0x40_0010), 0xcafe_f00du32).unwrap();
    b.mov(ebx, dword_ptr(DATA + 0x10)).unwrap();
    b.lea(r15, ptr(resume[0])).unwrap();
    b.mov(rcx, qword_ptr(0x80_0000)).unwrap();
    let mut r0 = resume[0];
    b.set_label(&mut r0).unwrap();
    b.lea(r15, ptr(resume[1])).unwrap();
    b.mov(dword_ptr(0x40_1008), 1).unwrap();
    let mut r1 = resume[1];
    b.set_label(&mut r1).unwrap();
    b.lea(r15, ptr(resume[2])).unwrap();
    b.mov(rdx, qword_ptr(0x40_2000)).unwrap();
    let mut r2 = resume[2];
    b.set_label(&mut r2).unwrap();
    b.mov(esi, 0x1111_1111u32).unwrap();
    b.hlt().unwrap();
    b.set_label(&mut handler).unwrap();
    b.pop(rax).unwrap(); // error code
    b.stosq().unwrap();
    b.mov(rax, cr2).unwrap();
    b.stosq().unwrap();
    b.mov(qword_ptr(rsp), r15).unwrap(); // resume after the faulting instruction
    b.iretq().unwrap();
    let r = b.assemble_options(CODE64, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let handler_ip = r.label_ip(&handler).unwrap();
    let code64 = r.inner.code_buffer;

    let setup = move |m: &GuestMemory| {
        m.write(CODE64, &code64).unwrap();
        m.write_u64(PML4, PDPT | 3).unwrap();
        m.write_u64(PDPT, PD | 3).unwrap();
        for (i, pt) in PT.iter().enumerate() {
            m.write_u64(PD + 8 * i as u64, pt | 3).unwrap();
        }
        // PT0, PT1: identity 0..4 MiB.
        for i in 0..1024u64 {
            m.write_u64(PT[0] + 8 * i, (i << 12) | 3).unwrap();
        }
        // PT2 (4 MiB..): DATA read-write, DATA + 0x1000 read-only, then a
        // PTE with reserved bit 51 set.
        m.write_u64(PT[2], DATA | 3).unwrap();
        m.write_u64(PT[2] + 8, (DATA + 0x1000) | 1).unwrap();
        m.write_u64(PT[2] + 16, (DATA + 0x1000) | 3 | 1 << 51).unwrap();
        write_gdt(m, GDT, &[0x00af_9a00_0000_ffff]); // 0x20: 64-bit code
        let (lo, hi) = gate64(handler_ip, 0x20);
        m.write_u64(IDT + 14 * 16, lo).unwrap();
        m.write_u64(IDT + 14 * 16 + 8, hi).unwrap();
        m.write_u16(IDT + 0x1000, 256 * 16 - 1).unwrap();
        m.write_u64(IDT + 0x1002, IDT).unwrap();
    };
    differential_code("long_mode_paging", &code32, &setup, &|i| {
        let s = &i.state;
        assert_eq!(s.efer & sim_core::state::efer::LMA, sim_core::state::efer::LMA);
        assert_eq!((s.gpr[gpr::RBX], s.gpr[gpr::RSI]), (0xcafe_f00d, 0x1111_1111));
        let log: Vec<u64> = (0..6).map(|k| i.u64_at(0x100 + 8 * k)).collect();
        assert_eq!(log, [0, 0x80_0000, 3, 0x40_1008, 9, 0x40_2000], "error codes and CR2");
        assert_eq!(i.u32_at(0x1008), 0, "the read-only page was not written");
        // The alias PTE was used for a write: accessed (5) and dirty (6).
        assert_eq!(i.u64_at(0x7000), DATA | 0x63);
        assert_eq!(s.gpr[gpr::RSP], STACK, "each IRETQ popped its frame");
    });
}

/// 32-bit paging with 4 KiB pages (CR4.PAE clear): identity-map the first
/// 4 MiB, alias 0x40_0000 to DATA, write through the alias, take a #PF on
/// an unmapped page through the IDT (CR2, error code 0), then #DE.
///
/// Diagnosis of the earlier failure: the interpreter follows the SDM
/// (MOV CR0 with PE=1, PG=1 is legal; #GP only for PG without PE, NW
/// without CD, reserved bits). This host's KVM (kvm_pvm) raises #GP at
/// that MOV CR0 (its log: "vec=13 ... rip=<the MOV CR0>", then #DF and a
/// triple fault with no #DF gate), for non-PAE and PAE paging alike, and
/// KVM_SET_SREGS drops CR0.PG outside long mode: it supports paging in
/// long mode only (covered by the test above). So on such a host the KVM
/// run must stop in exactly that way; on any other it must agree.
#[test]
fn legacy_32bit_paging() {
    paging_program(true);
}

/// The same program without paging: #DE through the IDT only.
#[test]
fn exception_through_the_idt() {
    paging_program(false);
}

fn paging_program(paging: bool) {
    const PD: u64 = 0x5_0000;
    const PT0: u64 = 0x5_1000;
    const PT1: u64 = 0x5_2000;
    const IDT: u64 = 0x6_0000;
    const GDT: u64 = 0x6_1000;
    let name = if paging { "legacy_32bit_paging" } else { "exception_through_the_idt" };
    let mut a = CodeAssembler::new(32).unwrap();
    let mut pf = a.create_label();
    let mut de = a.create_label();
    let mut after = a.create_label();
    let mut resume = a.create_label();
    let mut enable = a.create_label();
    a.lgdt(ptr(GDT + 0x100)).unwrap();
    a.lidt(ptr(IDT + 0x800)).unwrap();
    if paging {
        a.mov(eax, PD as u32).unwrap();
        a.mov(cr3, eax).unwrap();
        a.mov(eax, cr0).unwrap();
        a.or(eax, 0x8000_0000u32 as i32).unwrap();
        a.set_label(&mut enable).unwrap();
        a.mov(cr0, eax).unwrap();
        a.mov(dword_ptr(0x40_0010u32), 0xcafe_f00du32).unwrap();
        a.mov(ebx, dword_ptr(DATA as u32 + 0x10)).unwrap();
        // #PF: read of an unmapped page (not-present, read, supervisor: error 0).
        a.mov(ecx, dword_ptr(0x80_0000u32)).unwrap();
    }
    a.set_label(&mut resume).unwrap();
    // #DE: divide by zero.
    a.xor(edx, edx).unwrap();
    a.mov(eax, 10u32).unwrap();
    a.xor(ecx, ecx).unwrap();
    a.div(ecx).unwrap();
    a.jmp(after).unwrap();
    a.set_label(&mut pf).unwrap();
    a.pop(eax).unwrap(); // error code
    a.mov(dword_ptr(DATA as u32 + 0x100), eax).unwrap();
    a.mov(eax, cr2).unwrap();
    a.mov(dword_ptr(DATA as u32 + 0x104), eax).unwrap();
    a.jmp(resume).unwrap();
    a.set_label(&mut de).unwrap();
    a.mov(dword_ptr(DATA as u32 + 0x108), 0xde_u32).unwrap();
    a.jmp(after).unwrap();
    a.set_label(&mut after).unwrap();
    a.mov(esi, 0x1111_1111u32).unwrap();
    a.hlt().unwrap();
    let r = a.assemble_options(CODE, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let pf_ip = r.label_ip(&pf).unwrap();
    let de_ip = r.label_ip(&de).unwrap();
    let enable_ip = if paging { r.label_ip(&enable).unwrap() } else { 0 };
    let code = r.inner.code_buffer;
    let setup = move |m: &GuestMemory| {
        for i in 0..1024u64 {
            m.write_u32(PT0 + i * 4, (i * 0x1000) as u32 | 3).unwrap();
        }
        m.write_u32(PT1, DATA as u32 | 3).unwrap(); // 0x40_0000 -> DATA
        m.write_u32(PT1 + 4, (DATA + 0x1000) as u32 | 3).unwrap();
        m.write_u32(PD, PT0 as u32 | 3).unwrap();
        m.write_u32(PD + 4, PT1 as u32 | 3).unwrap();
        write_gdt(m, GDT, &[]);
        let gate = |ip: u64| (ip & 0xffff) | (0x08 << 16) | (0x8e00u64 << 32) | ((ip >> 16) << 48);
        m.write_u64(IDT, gate(de_ip)).unwrap();
        m.write_u64(IDT + 14 * 8, gate(pf_ip)).unwrap();
        m.write_u16(IDT + 0x800, 256 * 8 - 1).unwrap();
        m.write_u32(IDT + 0x802, IDT as u32).unwrap();
    };
    let check = |i: &Outcome| {
        assert_eq!(i.state.gpr[gpr::RSI], 0x1111_1111, "{:x?} {:?}", i.state.gpr, i.trace);
        assert_eq!(i.data[0x108], 0xde);
        if paging {
            assert_eq!(i.state.gpr[gpr::RBX], 0xcafe_f00d);
            assert_eq!((i.u32_at(0x100), i.u32_at(0x104)), (0, 0x80_0000), "error code and CR2");
        }
    };
    let Some(vm) = kvm_or_skip(name) else { return };
    let mut interp = Interpreter::new(0, 1, cpuid());
    let i = run_on(&mut interp, &code, &setup).unwrap();
    check(&i);
    let mut kvm = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    let k = run_on(kvm.as_mut(), &code, &setup).unwrap();
    if paging && k.trace.exits == [VcpuExit::Shutdown] {
        // The host limitation described above, and nothing else.
        assert_eq!(k.state.rip, enable_ip, "KVM stopped somewhere other than the MOV CR0");
        assert_eq!(k.state.cr0 & sim_core::state::cr0::PG, 0);
        eprintln!("{name}: this host's KVM refuses paging outside long mode (#GP at MOV CR0); interpreter only");
        return;
    }
    let d = diff(&i, &k);
    assert!(d.is_empty(), "{name}: {} differences:\n{}", d.len(), d.join("\n"));
}

/// REP string instructions of every element size in 32-bit mode: an
/// overlapping forward copy (which must replicate the first dword), ECX = 0
/// (no iteration, no flag change), LODS, SCAS/CMPS stopping early.
#[test]
fn rep_string_sizes_32bit() {
    let mut a = CodeAssembler::new(32).unwrap();
    let d = DATA as u32;
    a.cld().unwrap();
    // Overlapping copy: [d+0x404..] <- [d+0x400..], 8 dwords.
    a.mov(esi, d + 0x400).unwrap();
    a.mov(edi, d + 0x404).unwrap();
    a.mov(ecx, 8u32).unwrap();
    a.rep().movsd().unwrap();
    a.mov(dword_ptr(d + 0x500), ecx).unwrap();
    // ECX = 0: nothing stored, ZF from the CMP kept.
    a.xor(ecx, ecx).unwrap();
    a.cmp(ecx, 1).unwrap();
    a.mov(edi, d + 0x600).unwrap();
    a.mov(ax, 0x7777u32).unwrap();
    a.rep().stosw().unwrap();
    a.pushfd().unwrap();
    a.pop(dword_ptr(d + 0x504)).unwrap();
    // REP STOSW of 5 words, REP MOVSW of 3 words.
    a.mov(ecx, 5u32).unwrap();
    a.rep().stosw().unwrap();
    a.mov(esi, d + 0x600).unwrap();
    a.mov(edi, d + 0x700).unwrap();
    a.mov(ecx, 3u32).unwrap();
    a.rep().movsw().unwrap();
    // LODSD twice.
    a.mov(esi, d + 0x400).unwrap();
    a.lodsd().unwrap();
    a.mov(ebx, eax).unwrap();
    a.lodsd().unwrap();
    a.mov(dword_ptr(d + 0x508), esi).unwrap();
    // REPNE SCASW finds 0x0302 at word 1 of 0x0100, 0x0302, ...
    a.mov(edi, d + 0x800).unwrap();
    a.mov(ax, 0x0302u32).unwrap();
    a.mov(ecx, 10u32).unwrap();
    a.repne().scasw().unwrap();
    a.mov(dword_ptr(d + 0x50c), ecx).unwrap();
    a.mov(dword_ptr(d + 0x510), edi).unwrap();
    // REPE CMPSD stops at the first different dword (index 2).
    a.mov(esi, d + 0x800).unwrap();
    a.mov(edi, d + 0x900).unwrap();
    a.mov(ecx, 4u32).unwrap();
    a.repe().cmpsd().unwrap();
    a.pushfd().unwrap();
    a.pop(edx).unwrap();
    a.and(edx, (rflags::ZF | rflags::CF | rflags::SF) as i32).unwrap();
    a.hlt().unwrap();
    let setup = |m: &GuestMemory| {
        for k in 0..16u64 {
            m.write_u32(DATA + 0x400 + 4 * k, 0x1000_0001u32.wrapping_mul(k as u32 + 1)).unwrap();
        }
        for k in 0..8u64 {
            m.write_u16(DATA + 0x800 + 2 * k, 0x0100 + 0x0202 * k as u16).unwrap();
        }
        m.write(DATA + 0x900, &[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xff]).unwrap();
    };
    differential_code("rep_string_sizes_32bit", &assemble(a, CODE), &setup, &|i| {
        // Overlap: every dword of the destination is the first source dword.
        for k in 0..8 {
            assert_eq!(i.u32_at(0x404 + 4 * k), 0x1000_0001, "dword {k}");
        }
        assert_eq!(i.u32_at(0x500), 0);
        assert_eq!(i.u32_at(0x504) as u64 & rflags::CF, rflags::CF, "CMP 0, 1 borrow kept by REP with ECX = 0");
        assert_eq!(i.u32_at(0x600), 0x7777_7777);
        assert_eq!(i.u32_at(0x700), 0x7777_7777);
        assert_eq!(i.state.gpr[gpr::RBX], 0x1000_0001);
        assert_eq!(i.u32_at(0x508), DATA as u32 + 0x408);
        assert_eq!((i.u32_at(0x50c), i.u32_at(0x510)), (8, DATA as u32 + 0x804));
        // Dword 2: 0x0b0a0908 (source) vs 0x??????ff.. compares differ; ECX 1 left.
        assert_eq!(i.state.gpr[gpr::RCX], 1);
        assert_eq!(i.state.gpr[gpr::RDX] & rflags::ZF, 0);
    });
}

/// Far CALL/RET/JMP in 32-bit protected mode between code segments:
/// CALL m16:32 to selector 0x20 with a stack parameter and RETF 4; a
/// direct CALL ptr16:32 into selector 0x28 whose base is 0x1000 (so its
/// offsets are linear - 0x1000) and RETF; a direct far JMP there and back.
#[test]
fn far_call_and_return() {
    const GDT: u64 = 0x6_1000;
    const T1: u64 = CODE + 0x800;
    const T2: u64 = CODE + 0x900;
    const T3: u64 = CODE + 0xa00;
    const FP: u64 = GDT + 0x200;
    let mut a = CodeAssembler::new(32).unwrap();
    let mut back = a.create_label();
    a.lgdt(ptr(GDT + 0x100)).unwrap();
    a.push(0x1234).unwrap();
    a.call(fword_ptr(FP)).unwrap();
    a.mov(dword_ptr(DATA as u32), esp).unwrap();
    a.call_far(0x28, (T2 - 0x1000) as u32).unwrap();
    a.jmp_far(0x20, T3 as u32).unwrap();
    a.set_label(&mut back).unwrap();
    a.mov(word_ptr(DATA as u32 + 4), cs).unwrap();
    a.hlt().unwrap();
    let r = a.assemble_options(CODE, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let back_ip = r.label_ip(&back).unwrap();
    let code = r.inner.code_buffer;
    // Targets: T1 (in 0x20) reads CS and its parameter; T2 (in 0x28)
    // reads CS and the return address; T3 jumps back to 0x08.
    let t1 = {
        let mut a = CodeAssembler::new(32).unwrap();
        a.mov(eax, cs).unwrap();
        a.mov(ecx, dword_ptr(esp + 8)).unwrap();
        a.retf_1(4).unwrap();
        assemble(a, T1)
    };
    let t2 = {
        let mut a = CodeAssembler::new(32).unwrap();
        a.mov(edx, cs).unwrap();
        a.mov(ebx, dword_ptr(esp)).unwrap();
        a.mov(ebp, dword_ptr(esp + 4)).unwrap();
        a.retf().unwrap();
        assemble(a, T2 - 0x1000)
    };
    let t3 = {
        let mut a = CodeAssembler::new(32).unwrap();
        a.mov(edi, cs).unwrap();
        a.jmp_far(0x08, back_ip as u32).unwrap();
        assemble(a, T3)
    };
    let setup = move |m: &GuestMemory| {
        m.write(T1, &t1).unwrap();
        m.write(T2, &t2).unwrap();
        m.write(T3, &t3).unwrap();
        // 0x20: flat code; 0x28: code with base 0x1000, limit 4 GiB - 0x1000.
        write_gdt(m, GDT, &[0x00cf_9a00_0000_ffff, 0x00cf_9a00_1000_fffe]);
        m.write_u32(FP, T1 as u32).unwrap();
        m.write_u16(FP + 4, 0x20).unwrap();
    };
    differential_code("far_call_and_return", &code, &setup, &|i| {
        let g = &i.state.gpr;
        assert_eq!((g[gpr::RAX] & 0xffff, g[gpr::RCX]), (0x20, 0x1234));
        assert_eq!(i.u32_at(0) as u64, STACK, "RETF 4 released the parameter");
        assert_eq!((g[gpr::RDX] & 0xffff, g[gpr::RBP]), (0x28, 0x08));
        // The return address pushed by the direct far CALL: after LGDT m
        // (7 bytes), PUSH imm32 (5), CALL m16:32 (6), MOV m32, ESP (6) and
        // the 7-byte CALL ptr16:32 itself.
        assert_eq!(g[gpr::RBX], CODE + 7 + 5 + 6 + 6 + 7);
        assert_eq!(g[gpr::RDI] & 0xffff, 0x20);
        assert_eq!(i.data[4], 0x08);
        assert_eq!(i.state.seg[1].selector, 0x08);
    });
}

/// SSE arithmetic with MXCSR rounding control: ADDPS (inexact lane),
/// DIVSS rounded down then up, SQRTSD, CVTSI2SD, PADDD with wrap, PXOR;
/// results stored with MOVDQU. Expected values are the IEEE 754 results
/// computed by hand (and by the host FPU in the comments' arithmetic).
#[test]
fn sse_arithmetic() {
    let d = DATA as u32;
    let mut a = CodeAssembler::new(32).unwrap();
    a.movdqu(xmm0, xmmword_ptr(d + 0x400)).unwrap();
    a.addps(xmm0, xmmword_ptr(d + 0x410)).unwrap();
    a.movdqu(xmmword_ptr(d), xmm0).unwrap();
    a.ldmxcsr(dword_ptr(d + 0x480)).unwrap(); // round down
    a.movss(xmm1, dword_ptr(d + 0x420)).unwrap();
    a.divss(xmm1, dword_ptr(d + 0x424)).unwrap();
    a.movd(dword_ptr(d + 0x10), xmm1).unwrap();
    a.ldmxcsr(dword_ptr(d + 0x484)).unwrap(); // round up
    a.movss(xmm1, dword_ptr(d + 0x420)).unwrap();
    a.divss(xmm1, dword_ptr(d + 0x424)).unwrap();
    a.movd(dword_ptr(d + 0x14), xmm1).unwrap();
    a.ldmxcsr(dword_ptr(d + 0x488)).unwrap(); // nearest
    a.sqrtsd(xmm2, qword_ptr(d + 0x428)).unwrap();
    a.movq(qword_ptr(d + 0x18), xmm2).unwrap();
    a.mov(eax, -7i32 as u32).unwrap();
    a.cvtsi2sd(xmm3, eax).unwrap();
    a.movq(qword_ptr(d + 0x20), xmm3).unwrap();
    a.movdqu(xmm4, xmmword_ptr(d + 0x430)).unwrap();
    a.paddd(xmm4, xmmword_ptr(d + 0x440)).unwrap();
    a.movdqu(xmm5, xmm4).unwrap();
    a.pxor(xmm5, xmmword_ptr(d + 0x440)).unwrap();
    a.movdqu(xmmword_ptr(d + 0x30), xmm4).unwrap();
    a.stmxcsr(dword_ptr(d + 0x40)).unwrap();
    a.hlt().unwrap();
    let f = |x: f32| x.to_bits();
    let setup = move |m: &GuestMemory| {
        for (k, v) in [1.0f32, 2.0, 3.0, 4.0, 0.5, 0.25, -3.0, 1e30].iter().enumerate() {
            m.write_u32(DATA + 0x400 + 4 * k as u64, f(*v)).unwrap();
        }
        m.write_u32(DATA + 0x420, f(2.0)).unwrap();
        m.write_u32(DATA + 0x424, f(3.0)).unwrap();
        m.write_u64(DATA + 0x428, 2.0f64.to_bits()).unwrap();
        for (k, v) in [1u32, 2, 3, 0xffff_ffff, 1, 1, 1, 1].iter().enumerate() {
            m.write_u32(DATA + 0x430 + 4 * k as u64, *v).unwrap();
        }
        m.write_u32(DATA + 0x480, 0x1f80 | 0x2000).unwrap();
        m.write_u32(DATA + 0x484, 0x1f80 | 0x4000).unwrap();
        m.write_u32(DATA + 0x488, 0x1f80).unwrap();
    };
    differential_code("sse_arithmetic", &assemble(a, CODE), &setup, &|i| {
        // 1.5, 2.25, 0.0, and 4 + 1e30 rounds to 1e30 (0x7149f2ca).
        let sums: Vec<u32> = (0..4).map(|k| i.u32_at(4 * k)).collect();
        assert_eq!(sums, [0x3fc0_0000, 0x4010_0000, 0, 0x7149_f2ca]);
        // 2/3 = 0x3f2aaaaa.aaa...: down 0x3f2aaaaa, up 0x3f2aaaab.
        assert_eq!((i.u32_at(0x10), i.u32_at(0x14)), (0x3f2a_aaaa, 0x3f2a_aaab));
        assert_eq!(i.u64_at(0x18), 0x3ff6_a09e_667f_3bcd, "sqrt(2)");
        assert_eq!(i.u64_at(0x20), 0xc01c_0000_0000_0000, "-7.0");
        let sums: Vec<u32> = (0..4).map(|k| i.u32_at(0x30 + 4 * k)).collect();
        assert_eq!(sums, [2, 3, 4, 0]);
        assert_eq!(i.state.fpu.xmm[5], 3 | 2 << 32 | 5 << 64 | 1 << 96);
        // Round to nearest, all masked, PE (inexact) sticky from the divisions.
        assert_eq!(i.u32_at(0x40), 0x1f80 | 0x20);
    });
}
