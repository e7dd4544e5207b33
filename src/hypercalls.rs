//! The hypercall interception a run used, as its log records it, and the
//! machine pieces that replay it on the interpreter: the same hypercall
//! page, and the same instructions taken as hypercalls.

use std::sync::Arc;

use kvm_backend::guest_debug::Armed;
use kvm_backend::HypercallStrategy;
use replay::Hypercalls;
use sim_core::cpuid::CpuidTable;
use sim_core::layout::HYPERCALL_PORT;
use xen_model::hypercall_page::HypercallGate;

/// What a log records for a run on KVM with `strategy` whose kernel's own
/// VMCALL/VMMCALL sites came to `armed` (None: the interpreter, or nothing
/// armed yet).
pub fn recorded(strategy: Option<HypercallStrategy>, armed: Option<&Armed>) -> Hypercalls {
    match strategy {
        None | Some(HypercallStrategy::XenHvm) => Hypercalls::Vmcall,
        Some(HypercallStrategy::PortStub) => Hypercalls::PortStub {
            port: HYPERCALL_PORT as u8,
            sites: match armed {
                Some(Armed::Sites(s)) => s.clone(),
                _ => Vec::new(),
            },
        },
    }
}

/// The hypercall page's gate of a run that recorded `h`.
pub fn gate(h: &Hypercalls) -> HypercallGate {
    match h {
        Hypercalls::Vmcall => HypercallGate::Native,
        Hypercalls::PortStub { port, .. } => HypercallGate::Port(*port),
    }
}

/// An interpreter vCPU that takes as hypercalls what the run that recorded
/// `h` took: the page's port stubs, and VMCALL/VMMCALL only at the
/// breakpoint sites (KVM's own answer elsewhere), or every VMCALL/VMMCALL.
pub fn interpreter(h: &Hypercalls, id: u32, count: u32, cpuid: Arc<CpuidTable>) -> x86_interp::Interpreter {
    let mut cpu = x86_interp::Interpreter::new(id, count, cpuid);
    if let Hypercalls::PortStub { port, sites } = h {
        cpu.set_hypercall_port(Some(*port as u16));
        cpu.set_hypercall_sites(Some(sites.clone()));
    }
    cpu
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::cpuid::Vendor;
    use sim_core::memory::GuestMemory;
    use sim_core::vcpu::{Vcpu, VcpuExit};

    #[test]
    fn each_strategy_maps_to_its_page_and_calls() {
        // Strategy 1 (KVM_CAP_XEN_HVM): the native page, every VMCALL a
        // hypercall, as on the interpreter.
        assert_eq!(recorded(Some(HypercallStrategy::XenHvm), Some(&Armed::NotNeeded)), Hypercalls::Vmcall);
        assert_eq!(recorded(None, None), Hypercalls::Vmcall);
        assert_eq!(gate(&Hypercalls::Vmcall), HypercallGate::Native);
        // Strategy 2: port stubs, no VMCALL caught.
        let two = recorded(Some(HypercallStrategy::PortStub), Some(&Armed::NoSites));
        assert_eq!(two, Hypercalls::PortStub { port: 0xe8, sites: vec![] });
        assert_eq!(gate(&two), HypercallGate::Port(0xe8));
        // Strategy 3: port stubs and the armed sites; sites that could not
        // be armed caught nothing.
        let three = recorded(Some(HypercallStrategy::PortStub), Some(&Armed::Sites(vec![0x1000, 0x2000])));
        assert_eq!(three, Hypercalls::PortStub { port: 0xe8, sites: vec![0x1000, 0x2000] });
        assert_eq!(
            recorded(Some(HypercallStrategy::PortStub), Some(&Armed::TooMany(9))),
            Hypercalls::PortStub { port: 0xe8, sites: vec![] }
        );
        assert_eq!(HYPERCALL_PORT, 0xe8, "the port named above");
    }

    /// The interpreter built for strategy 1 runs Xen's native page: a call
    /// through the stub at offset 32 * nr is a VMCALL that exits.
    #[test]
    fn a_strategy_1_replay_runs_the_native_page() {
        let page = xen_model::hypercall_page::page(Vendor::Intel, gate(&Hypercalls::Vmcall));
        // Xen's stub: mov eax, nr (B8 imm32); vmcall (0F 01 C1); ret.
        assert_eq!(page[18 * 32..18 * 32 + 9], [0xb8, 18, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xc3]);
        let mem = GuestMemory::new(4).unwrap();
        mem.write(0x1000, &page).unwrap();
        let cpuid = Arc::new(CpuidTable::baseline(Vendor::Intel));
        let mut cpu = interpreter(&Hypercalls::Vmcall, 0, 1, cpuid);
        // Flat 32-bit protected mode at stub 18.
        let mut s = cpu.state();
        s.cr0 |= sim_core::state::cr0::PE;
        s.seg[sim_core::state::sreg::CS] = sim_core::state::Segment::from_descriptor(8, 0x00cf_9a00_0000_ffff, 0);
        s.rip = 0x1000 + 18 * 32;
        cpu.set_state(&s);
        assert_eq!(cpu.run(&mem, 10).unwrap(), VcpuExit::Hypercall);
        assert_eq!(cpu.gprs()[0], 18);
    }
}
