#![no_main]
//! `interp`: see x86-interp/src/fuzzing.rs (reproduce with `xensim fuzz-repro interp INPUT`).

use libfuzzer_sys::fuzz_target;
use x86_interp::fuzzing::{run, Input};

fuzz_target!(|input: Input| {
    if let Err(e) = run(&input) {
        panic!("invariant broken: {e}\ninput: {input:?}");
    }
});
