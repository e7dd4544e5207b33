//! sim-core: what every xensim machine has, whatever the CPU.
//!
//! Guest memory with run-time overlay pages, the `Vcpu` trait and its one
//! architectural state type, the CPUID table and MSR policy, the page walk.

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod byte_fields;
pub mod clock;
pub mod cpuid;
pub mod devices;
pub mod door;
pub mod irq;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod msr;
pub mod paging;
pub mod platform;
pub mod state;
pub mod timer_queue;
pub mod vcpu;

pub use memory::{GuestMemory, OverlayPage};
pub use state::ArchState;
pub use vcpu::{Completion, Vcpu, VcpuError, VcpuExit};
