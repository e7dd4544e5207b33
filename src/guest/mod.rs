//! Guest programs built in Rust: an image writer (PVH and Multiboot), an
//! assembler-based program builder, and the built-in programs (the demo,
//! boot-information test guests, benchmarks).

pub mod asm;
pub mod elf;
pub mod programs;
pub mod xen;
pub mod xenstore;

pub use asm::{Boot, GuestError, GuestProgram, Mode};

#[cfg(test)]
mod tests;
