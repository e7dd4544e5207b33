//! The Xen platform model (hypercalls, event channels, grant tables, xenstore). Filled by later issues.
