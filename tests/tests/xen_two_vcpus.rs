//! A guest that brings up its second vCPU the Xen way (VCPUOP_initialise
//! with a vcpu_hvm_context, VCPUOP_up) and waits for it through shared
//! memory, on the interpreter and on KVM (skipped when /dev/kvm is not usable).

use sim_core::machine::{MachineConfig, StopReason};
use xen_model::XenConfig;
use xensim::guest::xen::{self, HypercallEntry};
use xensim_tests::{kvm_or_skip, xen_machine, Cpu};

fn run(entry: HypercallEntry, cpu: Cpu<'_>) -> (StopReason, String) {
    let config = MachineConfig { cpus: 2, memory_mib: 64, max_instructions: Some(20_000_000), ..Default::default() };
    let (mut m, cap) = xen_machine(xen::xen_two_vcpus_via(entry).unwrap(), config, XenConfig::default(), cpu, |_| {});
    let stop = m.run().expect("run");
    (stop, cap.text())
}

#[test]
fn the_boot_vcpu_starts_vcpu_1_and_both_print() {
    for entry in [HypercallEntry::Vmcall, HypercallEntry::Page, HypercallEntry::Function] {
        let (stop, out) = run(entry, Cpu::Interp);
        assert_eq!(out, xen::XEN_TWO_VCPUS_EXPECTED, "{entry:?}");
        assert_eq!(stop, StopReason::DebugExit(1), "{entry:?}: exit(0) is QEMU status 1");
    }
}

#[test]
fn the_same_on_kvm() {
    for entry in [HypercallEntry::Page, HypercallEntry::Function] {
        // A VM per machine: vCPU ids are per VM.
        let Some(vm) = kvm_or_skip("the_same_on_kvm") else { return };
        let (stop, out) = run(entry, Cpu::Kvm(&vm));
        assert_eq!(out, xen::XEN_TWO_VCPUS_EXPECTED, "{entry:?}");
        assert_eq!(stop, StopReason::DebugExit(1), "{entry:?}");
    }
}
