//! The `Vcpu` trait: one interface for the software interpreter and KVM.
//!
//! Exits follow KVM's protocol: `run` returns an exit; an exit that needs an
//! answer (port or MMIO read, MSR access) is answered with `complete` before
//! the next `run`, and the instruction then finishes with that answer.
//! Exceptions inside the guest are the CPU's business and never exit.

use crate::memory::GuestMemory;
use crate::paging::{self, Access, PageFault};
use crate::state::ArchState;

/// Why `Vcpu::run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum VcpuExit {
    /// IN/INS: answer with `Completion::Data` (low `size` bytes used).
    IoIn {
        port: u16,
        size: u8,
    },
    /// OUT/OUTS: answer with `Completion::Done`.
    IoOut {
        port: u16,
        size: u8,
        data: u32,
    },
    /// Read of guest-physical memory that is neither RAM nor overlay.
    MmioRead {
        gpa: u64,
        size: u8,
    },
    MmioWrite {
        gpa: u64,
        size: u8,
        data: u64,
    },
    /// VMCALL/VMMCALL (or a hypercall-page stub). The instruction has
    /// completed: the handler reads and writes registers and re-enters.
    Hypercall,
    /// RDMSR of an MSR the CPU does not own: answer with `Data` or `Fault`.
    MsrRead {
        msr: u32,
    },
    /// WRMSR of an MSR the CPU does not own: answer with `Done` or `Fault`.
    MsrWrite {
        msr: u32,
        value: u64,
    },
    /// HLT retired; the vCPU is halted until an interrupt is injected (the
    /// machine reads RFLAGS.IF to tell a wait from a stop).
    Halt,
    /// Triple fault: the CPU is in shutdown state.
    Shutdown,
    /// The instruction budget given to `run` is spent.
    BudgetExhausted,
    /// An interrupt window was requested and the vCPU can now take one.
    InterruptWindow,
}

/// The answer to an exit that needs one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Data(u64),
    Done,
    /// Raise #GP(0) in the guest (an MSR nobody owns).
    Fault,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("{0} exit has no completion")]
    MissingCompletion(&'static str),
    #[error("backend failure: {0}")]
    Backend(String),
}

/// A virtual CPU. The machine owns memory and devices and passes memory in,
/// so both backends run against the same address map.
pub trait Vcpu {
    /// Index of this vCPU (its initial APIC ID).
    fn id(&self) -> u32;

    /// Run until an exit or until `budget` instructions have retired
    /// (backends that cannot count instructions treat it as a hint).
    fn run(&mut self, mem: &GuestMemory, budget: u64) -> Result<VcpuExit, VcpuError>;

    /// Answer the last exit (see `VcpuExit`).
    fn complete(&mut self, completion: Completion);

    fn state(&self) -> ArchState;
    fn set_state(&mut self, state: &ArchState);

    /// RIP (cheap access: the machine notes it at every exit on exit time).
    fn rip(&self) -> u64 {
        self.state().rip
    }

    /// General-purpose registers (cheap access for hypercall handling).
    fn gprs(&self) -> [u64; 16];
    fn set_gprs(&mut self, gpr: &[u64; 16]);

    /// True when an external interrupt would be taken before the next
    /// instruction (IF set, no interrupt shadow, nothing else in flight).
    fn interrupt_ready(&self) -> bool;
    /// Deliver external interrupt `vector` before the next instruction. Only
    /// valid when `interrupt_ready()`; wakes a halted vCPU.
    fn inject_interrupt(&mut self, vector: u8);
    /// Ask `run` to return `InterruptWindow` once `interrupt_ready()`.
    fn request_interrupt_window(&mut self, on: bool);

    /// Instructions retired since reset, where the backend knows it.
    fn retired_instructions(&self) -> Option<u64>;

    /// The guest's time-stamp counter now.
    fn tsc(&self) -> u64;
    /// Set the TSC to `tsc` now. The interpreter then advances it by
    /// `clock::TSC_PER_INSN` per retired instruction; KVM by the host clock.
    fn set_tsc(&mut self, tsc: u64);

    /// Mark in `mem`'s dirty bitmap the RAM pages this CPU wrote without
    /// going through `GuestMemory` since the last call (KVM writes guest RAM
    /// directly; its dirty log says where). Returns whether the bitmap now
    /// holds every write of this CPU. The interpreter marks its stores as it
    /// makes them: nothing to do.
    fn sync_dirty(&self, _mem: &GuestMemory) -> bool {
        true
    }

    /// Translate a guest-virtual address through the guest's page tables as
    /// an access at CPL 0 (hypercall arguments), without setting A/D bits.
    fn translate_gva(&self, mem: &GuestMemory, gva: u64, access: Access) -> Result<u64, PageFault> {
        let s = self.state();
        paging::translate(mem, &s.paging(), gva, access, false).map(|t| t.gpa)
    }
}
