//! xen-model: the Xen hypervisor interface as plain state machines over
//! sim-core's guest memory. The simulator plays dom0 (domid 0); the guest is
//! domid 1.

pub mod console;
pub mod cpuid;
pub mod dom0;
pub mod errno;
pub mod evtchn;
pub mod gnttab;
pub mod guest;
pub mod hvm;
pub mod hypercall;
pub mod hypercall_page;
pub mod memory;
pub mod physdev;
pub mod platform;
pub mod pv_console;
pub mod sched;
pub mod shared_info;
pub mod time;
pub mod trace;
pub mod vcpu_op;
pub mod version;

pub mod xenstore;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use platform::{Ring, XenConfig, XenPlatform};

/// The simulator's own domain (the toolstack and backends).
pub const DOM0: u16 = 0;
/// The guest's domain id.
pub const GUEST_DOMID: u16 = 1;
/// DOMID_SELF in hypercall arguments.
pub const DOMID_SELF: u16 = 0x7ff0;
