//! The software x86 CPU.

pub mod alu;
pub mod sse;
