//! The software x86 CPU.

pub mod alu;
