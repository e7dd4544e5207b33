//! sim-core: what every xensim machine has, whatever the CPU.
//!
//! Guest memory with run-time overlay pages, the `Vcpu` trait and its one
//! architectural state type, the CPUID table and MSR policy, the page walk.

pub mod boot;
pub mod clock;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod msr;
pub mod paging;
pub mod state;
pub mod vcpu;

pub use memory::{GuestMemory, OverlayPage};
pub use state::ArchState;
pub use vcpu::{Completion, Vcpu, VcpuError, VcpuExit};
