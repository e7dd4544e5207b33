//! The Xen platform model (hypercalls, event channels, grant tables, xenstore).

pub mod xenstore;
