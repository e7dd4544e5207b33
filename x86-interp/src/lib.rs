//! The software x86 CPU: iced-x86 decodes, this crate executes.
//!
//! `Interpreter` implements `sim_core::Vcpu`. Layout: `interp` (state, run
//! loop, fetch), `code_cache` (decoded instructions per guest page),
//! `dispatch` (handler chosen once per decoded instruction), `tlb` and `mmu`
//! (segmentation, paging, host access, MMIO exits), `operands`, then one
//! module per instruction family (`exec`, `flow`, `string`, `system`,
//! `simd`) and event delivery (`interrupts`, `segments`). Flag arithmetic is
//! in `alu`, SSE semantics in `sse`.
//!
//! Speed comes from three caches, each exact:
//! - decoded instructions per guest-physical page, dropped when this vCPU
//!   writes the page (write-TLB entries never map code pages) and re-checked
//!   byte for byte the first time a page is entered in each `run` (which
//!   catches writes by anyone else between runs);
//! - an L0 keyed by linear RIP, invalidated in O(1) by a generation counter
//!   on any TLB flush, CPL/mode change or code-page write;
//! - a software TLB per access kind (read, write, fetch).
//!
//! Counting: one retired instruction per instruction, and one per iteration
//! of a REP string instruction (the instruction restarts per element; a bulk
//! path for REP MOVS/STOS over RAM retires the same count).
//!
//! Not modelled (the guest gets #GP or #UD, see the report in each module):
//! task switches and task gates, virtual-8086 mode, legacy-mode
//! SYSCALL, x87 arithmetic (control instructions only), MMX, debug-register
//! breakpoints (TF single-step is), alignment checking, executing from MMIO.

pub mod alu;
mod code_cache;
mod dispatch;
mod exec;
mod fast;
mod fault;
mod flow;
mod gates;
mod interp;
mod interrupts;
mod kvm_calls;
mod lazy_flags;
mod mmu;
mod operands;
mod predecode;
mod segments;
mod simd;
pub mod sse;
mod string;
mod system;
mod tlb;

pub use interp::Interpreter;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
