//! The KVM CPU backend: `sim_core::Vcpu` on the host's KVM, with a
//! user-space irqchip (sim-core's LAPIC/IOAPIC model stays in charge of
//! interrupts) and guest memory mirrored into KVM memory slots.
//!
//! Usage: create one `KvmVm` per machine, then give the machine a factory
//! closure that calls `KvmVm::create_vcpu`.

mod caps;
mod convert;
mod dirty;
mod error;
pub mod guest_debug;
pub mod hypercall;
mod kick;
pub mod measure;
mod slots;
mod vcpu;
mod vm;
pub mod xen_exit;
mod xsave;

pub use caps::KvmCaps;
pub use error::KvmError;
pub use hypercall::{DirectCalls, HypercallStrategy};
pub use vcpu::KvmVcpu;
pub use vm::KvmVm;
