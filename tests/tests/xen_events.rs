//! Guests making Xen hypercalls with XenPlatform attached: upcalls by
//! callback vector and per-vCPU LAPIC vector, and a timer-driven block.
//! On the interpreter by VMCALL and through the hypercall page; on KVM
//! through the hypercall page, whose stubs end in a port exit there.
//!
//! A guest that issues VMCALL directly cannot make hypercalls on KVM hosts
//! without KVM_CAP_XEN_HVM: on this host the VMCALL does not exit and RIP
//! stays on it (see kvm-backend's direct_vmcall_behaviour_is_reported), so
//! that variant is not run on KVM.

use std::sync::Arc;

use kvm_backend::KvmVm;
use sim_core::boot::{BootConfig, BootImage};
use sim_core::layout::HYPERCALL_PORT;
use sim_core::machine::{Machine, MachineConfig, StopReason, VcpuFactory};
use xen_model::hypercall_page::HypercallGate;
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xen::{self, HypercallEntry};
use xensim_tests::Capture;

fn run_xen_on(kernel: Vec<u8>, gate: HypercallGate, factory: &mut VcpuFactory<'_>) -> (StopReason, String) {
    let config = MachineConfig { memory_mib: 64, max_instructions: Some(20_000_000), ..Default::default() };
    let xen = XenConfig { hypercall_gate: gate, ..Default::default() };
    let platform = XenPlatform::new(xen, config.cpus);
    let mut m = Machine::with_platform(config, Some(Box::new(platform)), factory).expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    m.boot(BootConfig {
        kernel: BootImage { name: "guest".into(), bytes: kernel },
        modules: Vec::new(),
        cmdline: String::new(),
        rsdp: 0,
        reserved: Vec::new(),
    })
    .expect("boot");
    let stop = m.run().expect("run");
    (stop, cap.text())
}

fn run_xen(kernel: Vec<u8>) -> (StopReason, String) {
    run_xen_on(kernel, HypercallGate::Native, &mut |id, n, cpuid| {
        Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
    })
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
fn the_same_through_the_hypercall_page_on_kvm() {
    let vm: Arc<KvmVm> = match KvmVm::new() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skipping the_same_through_the_hypercall_page_on_kvm: {e}");
            return;
        }
    };
    let kernel = xen::xen_events_via(HypercallEntry::Page).unwrap();
    let (stop, out) =
        run_xen_on(kernel, HypercallGate::Port(HYPERCALL_PORT as u8), &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1));
}

#[test]
fn upcalls_through_a_gsi_and_the_platform_devices_pci_intx() {
    let (stop, out) = run_xen(xen::xen_gsi_upcalls().unwrap());
    assert_eq!(out, xen::XEN_GSI_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}
