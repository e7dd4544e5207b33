//! Basic behaviour of the KVM vCPU against hand-computed expectations.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvm_backend::KvmVm;
use sim_core::layout::HYPERCALL_PORT;
use sim_core::memory::GuestMemory;
use sim_core::state::{gpr, ArchState};
use sim_core::vcpu::{Completion, VcpuExit};

const CODE: u64 = 0x10_0000;

fn load(code: CodeAssembler) -> (GuestMemory, ArchState) {
    let mem = GuestMemory::new(4).unwrap();
    mem.write(CODE, &assemble(code, CODE)).unwrap();
    let mut s = ArchState::pvh_entry(CODE, 0);
    s.gpr[gpr::RSP] = 0x8_0000;
    (mem, s)
}

#[test]
fn caps_are_reported() {
    let Some(vm) = kvm_or_skip("caps_are_reported") else { return };
    eprintln!("KVM caps: {}", vm.caps());
    eprintln!("MSR exits: {}; hypercalls: {:?}", vm.msr_exits(), vm.hypercall_strategy());
}

#[test]
fn port_output_and_halt() {
    let Some(vm) = kvm_or_skip("port_output_and_halt") else { return };
    let mut a = CodeAssembler::new(32).unwrap();
    for c in b"hi" {
        a.mov(al, *c as u32).unwrap();
        a.out(0xe9, al).unwrap();
    }
    a.mov(dx, 0x1234u32).unwrap();
    a.in_(eax, dx).unwrap();
    a.hlt().unwrap();
    let (mem, s) = load(a);
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 20);
    assert_eq!(t.out, b"hi");
    assert_eq!(t.exits.last(), Some(&VcpuExit::Halt));
    assert!(t.exits.contains(&VcpuExit::IoIn { port: 0x1234, size: 4 }));
    let st = v.state();
    assert_eq!(st.gpr[gpr::RAX], 0x1234 ^ 0x5a5a);
    // HLT is 1 byte; RIP is after it.
    let len = assemble(
        {
            let mut a = CodeAssembler::new(32).unwrap();
            for c in b"hi" {
                a.mov(al, *c as u32).unwrap();
                a.out(0xe9, al).unwrap();
            }
            a.mov(dx, 0x1234u32).unwrap();
            a.in_(eax, dx).unwrap();
            a.hlt().unwrap();
            a
        },
        CODE,
    )
    .len() as u64;
    assert_eq!(st.rip, CODE + len);
    assert!(st.events.halted);
}

#[test]
fn string_output_is_split_into_items() {
    let Some(vm) = kvm_or_skip("string_output_is_split_into_items") else { return };
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(esi, 0x3000u32).unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.mov(dx, 0xe9u32).unwrap();
    a.cld().unwrap();
    a.rep().outsb().unwrap();
    a.hlt().unwrap();
    let (mem, s) = load(a);
    mem.write(0x3000, b"hello").unwrap();
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 50);
    assert_eq!(t.out, b"hello");
    assert_eq!(v.state().gpr[gpr::RCX], 0);
}

#[test]
fn string_input_fills_memory() {
    let Some(vm) = kvm_or_skip("string_input_fills_memory") else { return };
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(edi, 0x2000u32).unwrap();
    a.mov(ecx, 3u32).unwrap();
    a.mov(dx, 0x70u32).unwrap();
    a.cld().unwrap();
    a.rep().insw().unwrap();
    a.hlt().unwrap();
    let (mem, s) = load(a);
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 50);
    let ins = t.exits.iter().filter(|e| **e == VcpuExit::IoIn { port: 0x70, size: 2 }).count();
    assert_eq!(ins, 3);
    // Each item reads 0x70 ^ 0x5a5a = 0x5a2a.
    let mut b = [0u8; 8];
    mem.read(0x2000, &mut b).unwrap();
    assert_eq!(b, [0x2a, 0x5a, 0x2a, 0x5a, 0x2a, 0x5a, 0, 0]);
    assert_eq!(v.state().gpr[gpr::RDI], 0x2006);
}

#[test]
fn machine_msrs_exit_and_faults_become_gp() {
    let Some(vm) = kvm_or_skip("machine_msrs_exit_and_faults_become_gp") else { return };
    if !vm.msr_exits() {
        eprintln!("skipping: no user-space MSR exits on this host ({})", vm.caps());
        return;
    }
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(ecx, 0x4000_0000u32).unwrap();
    a.mov(eax, 0x1234u32).unwrap();
    a.mov(edx, 0u32).unwrap();
    a.wrmsr().unwrap();
    a.mov(ecx, 0x1bu32).unwrap();
    a.rdmsr().unwrap();
    a.mov(ebx, eax).unwrap();
    a.mov(ecx, 0x277u32).unwrap(); // PAT: CPU-owned, no exit
    a.rdmsr().unwrap();
    a.hlt().unwrap();
    let (mem, s) = load(a);
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 20);
    assert_eq!(
        t.exits,
        vec![VcpuExit::MsrWrite { msr: 0x4000_0000, value: 0x1234 }, VcpuExit::MsrRead { msr: 0x1b }, VcpuExit::Halt]
    );
    let st = v.state();
    assert_eq!(st.gpr[gpr::RBX], 0x1b * 3);
    // PAT power-on value (SDM vol. 3 11.12.4) in EDX:EAX.
    assert_eq!(st.gpr[gpr::RAX], 0x0007_0406);
    assert_eq!(st.gpr[gpr::RDX], 0x0007_0406);

    // A faulting read goes through the IDT: no IDT here, so #GP -> #DF -> shutdown.
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(ecx, 0x1bu32).unwrap();
    a.rdmsr().unwrap();
    a.hlt().unwrap();
    let (mem, mut s) = load(a);
    s.idtr.limit = 0;
    let vm = KvmVm::new().unwrap();
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    assert_eq!(v.run(&mem, 1000).unwrap(), VcpuExit::MsrRead { msr: 0x1b });
    v.complete(Completion::Fault);
    assert_eq!(v.run(&mem, 1000).unwrap(), VcpuExit::Shutdown);
}

#[test]
fn port_stub_is_a_hypercall_with_state_after_the_out() {
    let Some(vm) = kvm_or_skip("port_stub_is_a_hypercall") else { return };
    let stub = kvm_backend::hypercall::port_stub(0x22);
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(ebx, 7u32).unwrap();
    a.call(CODE + 0x100).unwrap();
    a.mov(ecx, eax).unwrap();
    a.hlt().unwrap();
    let (mem, s) = load(a);
    mem.write(CODE + 0x100, &stub).unwrap();
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    assert_eq!(v.run(&mem, 1000).unwrap(), VcpuExit::Hypercall);
    let st = v.state();
    assert_eq!(st.rip, CODE + 0x100 + 7, "RIP is at the RET after the OUT");
    let mut g = v.gprs();
    assert_eq!((g[gpr::RAX], g[gpr::RBX]), (0x22, 7));
    g[gpr::RAX] = (-38i64) as u64;
    v.set_gprs(&g);
    assert_eq!(v.run(&mem, 1000).unwrap(), VcpuExit::Halt);
    assert_eq!(v.gprs()[gpr::RCX], (-38i64) as u64 as u32 as u64);
    let _ = HYPERCALL_PORT;
}

/// What a direct VMCALL does on this host (no KVM_CAP_XEN_HVM). Upstream
/// KVM answers it itself (-KVM_ENOSYS = -1000 in RAX, RIP advanced); this
/// host's KVM leaves RIP on the VMCALL with RAX unchanged and never exits,
/// so the vCPU spins until its slice ends. Either way the platform never
/// sees the call without a breakpoint on it (strategy 3, see
/// direct_hypercalls.rs); the test pins down that it is one of the two.
#[test]
fn direct_vmcall_behaviour_is_reported() {
    let Some(vm) = kvm_or_skip("direct_vmcall_behaviour_is_reported") else { return };
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(eax, 0x22u32).unwrap();
    a.vmcall().unwrap();
    a.mov(ebx, 0xabcdu32).unwrap();
    a.hlt().unwrap();
    let (mem, s) = load(a);
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 3);
    let st = v.state();
    let upstream = st.gpr[gpr::RAX] == (-1000i64) as u64 && t.exits == [VcpuExit::Halt];
    let stuck = st.rip == CODE + 5 && st.gpr[gpr::RAX] == 0x22 && t.exits.is_empty();
    assert!(upstream || stuck, "{t:?} {st:?}");
    eprintln!(
        "direct VMCALL: exits {:?}, RAX after = {:#x} ({}), RBX = {:#x}, RIP {:#x} (code at {CODE:#x}), events {:?}",
        t.exits, st.gpr[0], st.gpr[0] as i64, st.gpr[3], st.rip, st.events
    );
}

#[test]
fn exit_round_trips_are_measured() {
    if kvm_or_skip("exit_round_trips_are_measured").is_none() {
        return;
    }
    let pio = kvm_backend::measure::pio_exit_rtt_us(2000).unwrap();
    let hc = kvm_backend::measure::hypercall_rtt_us(2000).unwrap();
    eprintln!("kvm-exit-rtt-us {pio:.2} kvm-hypercall-rtt-us {hc:.2}");
    assert!(pio > 0.0 && pio.is_finite() && hc > 0.0 && hc.is_finite());
}
