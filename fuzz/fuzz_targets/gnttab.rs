#![no_main]
//! `gnttab`: see xen-model/src/fuzzing/gnttab.rs (reproduce with `xensim fuzz-repro gnttab INPUT`).

use libfuzzer_sys::fuzz_target;
use xen_model::fuzzing::gnttab::{run, Input};

fuzz_target!(|input: Input| {
    if let Err(e) = run(&input) {
        panic!("invariant broken: {e}\ninput: {input:?}");
    }
});
