#![no_main]
//! `hypercall`: see xen-model/src/fuzzing/hypercall.rs (reproduce with `xensim fuzz-repro hypercall INPUT`).

use libfuzzer_sys::fuzz_target;
use xen_model::fuzzing::hypercall::{run, Input};

fuzz_target!(|input: Input| {
    if let Err(e) = run(&input) {
        panic!("invariant broken: {e}\ninput: {input:?}");
    }
});
