//! Guests making Xen hypercalls with XenPlatform attached: upcalls by
//! callback vector and per-vCPU LAPIC vector, and a timer-driven block;
//! upcalls through a GSI and the platform device's PCI INTx.
//!
//! Each guest runs on the interpreter and, when /dev/kvm is usable, on KVM,
//! with the same expected transcript. On KVM without Xen support the
//! hypercall page's stubs end in a port exit (strategy 2) and a guest's own
//! VMCALL is caught by a hardware breakpoint (strategy 3), which needs the
//! VMCALL in one place: the `Function` entry (as Linux's
//! xen_hypercall_intel). Guests with a VMCALL at every call site have too
//! many sites for the four breakpoints and run on the interpreter only.

use sim_core::machine::{MachineConfig, StopReason};
use xen_model::XenConfig;
use xensim::guest::xen::{self, HypercallEntry};
use xensim_tests::{kvm_or_skip, xen_machine, Cpu};

fn run_xen_on(kernel: Vec<u8>, cpu: Cpu<'_>) -> (StopReason, String) {
    let config = MachineConfig { memory_mib: 64, max_instructions: Some(20_000_000), ..Default::default() };
    let (mut m, cap) = xen_machine(kernel, config, XenConfig::default(), cpu, |_| {});
    let stop = m.run().expect("run");
    (stop, cap.text())
}

fn run_xen(kernel: Vec<u8>) -> (StopReason, String) {
    run_xen_on(kernel, Cpu::Interp)
}

#[test]
fn upcalls_by_vector_and_lapic_and_a_timer_wakes_a_blocked_vcpu() {
    let (stop, out) = run_xen(xen::xen_events().unwrap());
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}

#[test]
fn the_same_through_the_hypercall_page() {
    let (stop, out) = run_xen(xen::xen_events_via(HypercallEntry::Page).unwrap());
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1));
}

#[test]
fn the_same_through_a_vmcall_function() {
    let (stop, out) = run_xen(xen::xen_events_via(HypercallEntry::Function).unwrap());
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1));
}

#[test]
fn the_same_through_the_hypercall_page_on_kvm() {
    let Some(vm) = kvm_or_skip("the_same_through_the_hypercall_page_on_kvm") else { return };
    let (stop, out) = run_xen_on(xen::xen_events_via(HypercallEntry::Page).unwrap(), Cpu::Kvm(&vm));
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1));
}

#[test]
fn the_same_through_a_vmcall_function_on_kvm() {
    let Some(vm) = kvm_or_skip("the_same_through_a_vmcall_function_on_kvm") else { return };
    let (stop, out) = run_xen_on(xen::xen_events_via(HypercallEntry::Function).unwrap(), Cpu::Kvm(&vm));
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1));
}

#[test]
fn upcalls_through_a_gsi_and_the_platform_devices_pci_intx() {
    let (stop, out) = run_xen(xen::xen_gsi_upcalls().unwrap());
    assert_eq!(out, xen::XEN_GSI_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}

#[test]
fn gsi_upcalls_through_the_hypercall_page_and_a_vmcall_function() {
    for entry in [HypercallEntry::Page, HypercallEntry::Function] {
        let (stop, out) = run_xen(xen::xen_gsi_upcalls_via(entry).unwrap());
        assert_eq!(out, xen::XEN_GSI_EXPECTED, "{entry:?}");
        assert_eq!(stop, StopReason::DebugExit(1), "{entry:?}");
    }
}

#[test]
fn gsi_upcalls_on_kvm() {
    let Some(vm) = kvm_or_skip("gsi_upcalls_on_kvm") else { return };
    for entry in [HypercallEntry::Page, HypercallEntry::Function] {
        // A VM per machine: vCPU ids are per VM.
        let vm = if entry == HypercallEntry::Page { vm.clone() } else { kvm_backend::KvmVm::new().unwrap() };
        let (stop, out) = run_xen_on(xen::xen_gsi_upcalls_via(entry).unwrap(), Cpu::Kvm(&vm));
        assert_eq!(out, xen::XEN_GSI_EXPECTED, "{entry:?}");
        assert_eq!(stop, StopReason::DebugExit(1), "{entry:?}");
    }
}

#[test]
fn kvm_configures_the_hypercall_msr_the_platform_advertises() {
    // KVM_XEN_HVM_CONFIG's MSR (strategy 1) must be the one in CPUID 0x40000002 EBX.
    assert_eq!(kvm_backend::xen_exit::XEN_HYPERCALL_MSR, xen_model::platform::HYPERCALL_MSR);
}
