//! Shared helpers for the KVM tests: open KVM or skip, assemble guests,
//! run a bare vCPU with a minimal exit loop.

#![allow(dead_code)]

use std::sync::Arc;

use iced_x86::code_asm::CodeAssembler;
use kvm_backend::KvmVm;
use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::memory::GuestMemory;
use sim_core::vcpu::{Completion, Vcpu, VcpuError, VcpuExit};

/// The VM, or None after printing why KVM cannot be used here.
pub fn kvm_or_skip(test: &str) -> Option<Arc<KvmVm>> {
    match KvmVm::new() {
        Ok(vm) => Some(vm),
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

pub fn cpuid() -> Arc<CpuidTable> {
    Arc::new(CpuidTable::baseline(Vendor::Intel))
}

/// Assemble `a` at `ip`.
pub fn assemble(mut a: CodeAssembler, ip: u64) -> Vec<u8> {
    a.assemble(ip).expect("assemble")
}

/// What a bare vCPU did until it halted (or `max_exits` passed): the bytes
/// written to port 0xE9 and every exit.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub out: Vec<u8>,
    pub exits: Vec<VcpuExit>,
}

/// Run `v` until Halt/Shutdown: OUT to 0xE9 is collected, IN reads
/// `in_value`, MSR exits fault, MMIO reads return all ones.
pub fn run_bare(v: &mut dyn Vcpu, mem: &GuestMemory, max_exits: usize) -> Trace {
    try_run_bare(v, mem, max_exits).expect("run")
}

/// `run_bare` that returns the backend's failure instead of panicking.
pub fn try_run_bare(v: &mut dyn Vcpu, mem: &GuestMemory, max_exits: usize) -> Result<Trace, VcpuError> {
    let mut t = Trace::default();
    for _ in 0..max_exits {
        let exit = v.run(mem, 1_000_000)?;
        if !matches!(exit, VcpuExit::BudgetExhausted) {
            t.exits.push(exit);
        }
        match exit {
            VcpuExit::IoOut { port, data, .. } => {
                if port == 0xe9 {
                    t.out.push(data as u8);
                }
                v.complete(Completion::Done);
            }
            VcpuExit::IoIn { port, .. } => v.complete(Completion::Data(port as u64 ^ 0x5a5a)),
            VcpuExit::MmioRead { .. } => v.complete(Completion::Data(u64::MAX)),
            VcpuExit::MmioWrite { .. } | VcpuExit::MsrWrite { .. } => v.complete(Completion::Done),
            VcpuExit::MsrRead { msr } => v.complete(Completion::Data(msr as u64 * 3)),
            VcpuExit::Halt | VcpuExit::Shutdown => break,
            _ => {}
        }
    }
    Ok(t)
}
