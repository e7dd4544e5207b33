//! The software x86 CPU: iced-x86 decodes, this crate executes.
//!
//! `Interpreter` implements `sim_core::Vcpu`. Layout: `interp` (state, run
//! loop, fetch), `code_cache` (decoded instructions per guest page), `tlb`
//! and `mmu` (segmentation, paging, host access, MMIO exits), `operands`,
//! then one module per instruction family (`exec`, `flow`, `string`,
//! `system`, `simd`) and event delivery (`interrupts`, `segments`). Flag
//! arithmetic is in `alu`, SSE semantics in `sse`.

pub mod alu;
mod code_cache;
mod dispatch;
mod exec;
mod fault;
mod flow;
mod interp;
mod interrupts;
mod mmu;
mod operands;
mod segments;
mod simd;
pub mod sse;
mod string;
mod system;
mod tlb;

pub use interp::Interpreter;
