//! The KVM CPU backend. Filled by a later issue.
