//! The `xensim` library: the pieces of the command-line tool that tests and
//! benchmarks share, starting with the built-in guest programs.

pub mod fuzz;
pub mod guest;
pub mod hypercalls;
