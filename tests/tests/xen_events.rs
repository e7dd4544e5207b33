//! Guests making Xen hypercalls on the interpreter, with XenPlatform
//! attached: upcalls by callback vector and per-vCPU LAPIC vector, and a
//! timer-driven block.

use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xen;
use xensim_tests::Capture;

fn run_xen(kernel: Vec<u8>) -> (StopReason, String) {
    let config = MachineConfig { memory_mib: 64, max_instructions: Some(20_000_000), ..Default::default() };
    let platform = XenPlatform::new(XenConfig::default(), config.cpus);
    let mut m = Machine::with_platform(config, Some(Box::new(platform)), &mut |id, n, cpuid| {
        Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
    })
    .expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    m.boot(BootConfig {
        kernel: BootImage { name: "guest".into(), bytes: kernel },
        modules: Vec::new(),
        cmdline: String::new(),
        rsdp: 0,
    })
    .expect("boot");
    let stop = m.run().expect("run");
    (stop, cap.text())
}

#[test]
fn upcalls_by_vector_and_lapic_and_a_timer_wakes_a_blocked_vcpu() {
    let (stop, out) = run_xen(xen::xen_events().unwrap());
    assert_eq!(out, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}

#[test]
fn upcalls_through_a_gsi_and_the_platform_devices_pci_intx() {
    let (stop, out) = run_xen(xen::xen_gsi_upcalls().unwrap());
    assert_eq!(out, xen::XEN_GSI_EXPECTED);
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}
