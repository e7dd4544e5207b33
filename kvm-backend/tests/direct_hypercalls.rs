//! Strategy 3 on this host: a guest that issues VMCALL from its own code,
//! with a hardware breakpoint on the site (KVM_SET_GUEST_DEBUG).

mod common;

use common::*;
use iced_x86::code_asm::*;
use kvm_backend::{DirectCalls, KvmVm};
use sim_core::memory::GuestMemory;
use sim_core::state::{gpr, ArchState};
use sim_core::vcpu::VcpuExit;

const CODE: u64 = 0x10_0000;

/// `mov eax, 0x22; mov ebx, 7; <call>; mov ecx, eax; hlt`, and the call's address.
fn guest(amd: bool) -> (GuestMemory, ArchState, u64) {
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(eax, 0x22u32).unwrap();
    a.mov(ebx, 7u32).unwrap();
    if amd {
        a.vmmcall().unwrap();
    } else {
        a.vmcall().unwrap();
    }
    a.mov(ecx, eax).unwrap();
    a.hlt().unwrap();
    let code = assemble(a, CODE);
    let site = CODE + kvm_backend::guest_debug::scan(&code)[0];
    let mem = GuestMemory::new(4).unwrap();
    mem.write(CODE, &code).unwrap();
    let mut s = ArchState::pvh_entry(CODE, 0);
    s.gpr[gpr::RSP] = 0x8_0000;
    (mem, s, site)
}

#[test]
fn direct_vmcall_reaches_the_platform_through_a_breakpoint() {
    let Some(vm) = kvm_or_skip("direct_vmcall_reaches_the_platform_through_a_breakpoint") else { return };
    if vm.direct_calls() != DirectCalls::Breakpoints {
        eprintln!("skipping: direct calls are {:?} on this host", vm.direct_calls());
        return;
    }
    for amd in [false, true] {
        // A fresh VM each time: vCPU ids are per VM.
        let vm = if amd { KvmVm::new().unwrap() } else { vm.clone() };
        if !direct_call_on(&vm, amd) {
            return;
        }
    }
}

/// Run the guest with VMCALL (or VMMCALL); false if the host gave no debug exit.
fn direct_call_on(vm: &std::sync::Arc<KvmVm>, amd: bool) -> bool {
    let (mem, s, site) = guest(amd);
    assert_eq!(site, CODE + 10, "mov eax (5 bytes), mov ebx (5 bytes), then the call");
    vm.set_hypercall_sites(&[site]).unwrap();
    let mut v = KvmVm::create_vcpu(vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let first = v.run(&mem, 1_000_000).unwrap();
    let st = v.state();
    eprintln!(
        "direct call (amd {amd}) with a breakpoint: first exit {first:?}, RIP {:#x}, RAX {:#x}",
        st.rip, st.gpr[0]
    );
    if first != VcpuExit::Hypercall {
        // The exit this host gave instead is printed above; say so plainly.
        eprintln!("skipping: this host's KVM does not deliver KVM_EXIT_DEBUG for a hardware breakpoint");
        return false;
    }
    // Stopped on the VMCALL, before it ran: the arguments are in the registers.
    assert_eq!(st.rip, site);
    let mut g = v.gprs();
    assert_eq!((g[gpr::RAX], g[gpr::RBX]), (0x22, 7));
    g[gpr::RAX] = 0x1234;
    v.set_gprs(&g);
    assert_eq!(v.state().rip, site + 3, "RIP steps over the 3-byte VMCALL");
    let t = run_bare(v.as_mut(), &mem, 5);
    assert_eq!(t.exits, [VcpuExit::Halt]);
    assert_eq!(v.gprs()[gpr::RCX], 0x1234, "the guest saw the platform's result");
    true
}

/// A #DB that is not one of ours (the guest single-steps with TF) goes back
/// to the guest's own handler instead of becoming a hypercall.
#[test]
fn the_guests_own_single_step_is_not_a_hypercall() {
    let Some(vm) = kvm_or_skip("the_guests_own_single_step_is_not_a_hypercall") else { return };
    if vm.direct_calls() != DirectCalls::Breakpoints {
        return;
    }
    // IDT at 0x2000 with vector 1 -> handler: mov edx, 0xdb; hlt.
    let mut a = CodeAssembler::new(32).unwrap();
    let mut handler = a.create_label();
    a.pushfd().unwrap();
    a.or(dword_ptr(esp), 0x100).unwrap(); // TF
    a.popfd().unwrap();
    a.nop().unwrap(); // single-step trap after this one
    a.mov(edx, 1u32).unwrap();
    a.hlt().unwrap();
    a.set_label(&mut handler).unwrap();
    a.mov(edx, 0xdbu32).unwrap();
    a.hlt().unwrap();
    let code = assemble(a, CODE);
    let handler_at = CODE + code.len() as u64 - 6;
    let mem = GuestMemory::new(4).unwrap();
    mem.write(CODE, &code).unwrap();
    // 32-bit interrupt gate: offset low, selector 0x8 (pvh_entry's CS), type 0x8e, offset high.
    let mut gate = [0u8; 8];
    gate[..2].copy_from_slice(&(handler_at as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&0x8u16.to_le_bytes());
    gate[5] = 0x8e;
    gate[6..].copy_from_slice(&((handler_at >> 16) as u16).to_le_bytes());
    mem.write(0x2000 + 8, &gate).unwrap();
    let mut s = ArchState::pvh_entry(CODE, 0);
    s.gpr[gpr::RSP] = 0x8_0000;
    s.idtr.base = 0x2000;
    s.idtr.limit = 0xff;
    // The gate's selector is looked up in the GDT: null, flat code 0x8, flat data 0x10.
    for (i, d) in [0u64, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff].iter().enumerate() {
        mem.write(0x3000 + 8 * i as u64, &d.to_le_bytes()).unwrap();
    }
    s.gdtr.base = 0x3000;
    s.gdtr.limit = 0x17;
    // A breakpoint elsewhere turns guest debugging on.
    vm.set_hypercall_sites(&[0x5000]).unwrap();
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    let t = run_bare(v.as_mut(), &mem, 5);
    assert_eq!(t.exits, [VcpuExit::Halt]);
    assert_eq!(v.gprs()[gpr::RDX], 0xdb, "the guest's #DB handler ran");
}

/// A call the platform never answers (no `set_gprs`) still completes when
/// the vCPU runs on: RAX = -ENOSYS, RIP past the VMCALL, no second exit.
#[test]
fn an_unanswered_call_completes_with_enosys() {
    let Some(vm) = kvm_or_skip("an_unanswered_call_completes_with_enosys") else { return };
    if vm.direct_calls() != DirectCalls::Breakpoints {
        return;
    }
    let (mem, s, site) = guest(false);
    vm.set_hypercall_sites(&[site]).unwrap();
    let mut v = KvmVm::create_vcpu(&vm, 0, 1, cpuid()).unwrap();
    v.set_state(&s);
    if v.run(&mem, 1_000_000).unwrap() != VcpuExit::Hypercall {
        eprintln!("skipping: no KVM_EXIT_DEBUG on this host");
        return;
    }
    let t = run_bare(v.as_mut(), &mem, 5);
    assert_eq!(t.exits, [VcpuExit::Halt]);
    assert_eq!(v.gprs()[gpr::RCX] as u32, (-38i32) as u32);
}
