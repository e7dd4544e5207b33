//! xen-model: the Xen hypervisor interface as plain state machines over
//! sim-core's guest memory. The simulator plays dom0 (domid 0); the guest is
//! domid 1.

pub mod errno;
pub mod gnttab;
pub mod guest;
pub mod xenstore;

/// The simulator's own domain (the toolstack and backends).
pub const DOM0: u16 = 0;
/// The guest's domain id.
pub const GUEST_DOMID: u16 = 1;
/// DOMID_SELF in hypercall arguments.
pub const DOMID_SELF: u16 = 0x7ff0;
