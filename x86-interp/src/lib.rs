//! The software x86 CPU.
