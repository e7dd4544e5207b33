//! Lazily computed status flags. The simple handlers (fast.rs) record the
//! operation, size, operands and result of a flag-writing ADD/SUB/CMP,
//! logic op or INC/DEC instead of computing CF..OF; the flags are computed,
//! with the same `alu` functions as the eager path, only when read.
//!
//! Exactness: `Interpreter::flags()` always returns the true RFLAGS, and
//! `s.rflags` itself is exact whenever code other than the simple handlers
//! runs: the run loop materialises before every non-simple instruction and
//! boundary, `raise` materialises before an exception saves RFLAGS, and
//! `run` materialises before it returns.

use sim_core::state::rflags::CF;

use crate::alu;

pub const NONE: u8 = 0;
pub const ADD: u8 = 1;
pub const SUB: u8 = 2;
/// AND/OR/XOR/TEST: flags follow from the result alone.
pub const LOGIC: u8 = 3;
/// INC/DEC: `b` holds the carry flag they preserve.
pub const INC: u8 = 4;
pub const DEC: u8 = 5;

/// The last flag-writing operation, operands and result masked to `size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lazy {
    pub op: u8,
    pub size: u8,
    pub a: u64,
    pub b: u64,
    pub r: u64,
}

impl Lazy {
    /// `rflags` with the status flags of the recorded operation.
    #[inline(never)]
    pub fn apply(&self, rflags: u64) -> u64 {
        let (a, b, sz) = (self.a, self.b, self.size);
        match self.op {
            ADD => alu::add(a, b, sz, rflags).1,
            SUB => alu::sub(a, b, sz, rflags).1,
            LOGIC => alu::or(self.r, 0, sz, rflags).1,
            INC => alu::inc(a, sz, (rflags & !CF) | b).1,
            DEC => alu::dec(a, sz, (rflags & !CF) | b).1,
            _ => rflags,
        }
    }

    /// The carry flag (as CF's bit) after the recorded operation.
    #[inline(always)]
    pub fn carry(&self, rflags: u64) -> u64 {
        match self.op {
            ADD => (self.r < self.a) as u64,
            SUB => (self.a < self.b) as u64,
            LOGIC => 0,
            INC | DEC => self.b,
            _ => rflags & CF,
        }
    }
}
