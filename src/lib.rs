//! The `xensim` library: the pieces of the command-line tool that tests and
//! benchmarks share: the built-in guest programs, snapshot files along a run
//! and seeking from them.

pub mod fuzz;
pub mod guest;
pub mod hypercalls;
pub mod snapshots;
