#![no_main]
//! `evtchn`: see xen-model/src/fuzzing/evtchn.rs (reproduce with `xensim fuzz-repro evtchn INPUT`).

use libfuzzer_sys::fuzz_target;
use xen_model::fuzzing::evtchn::{run, Input};

fuzz_target!(|input: Input| {
    if let Err(e) = run(&input) {
        panic!("invariant broken: {e}\ninput: {input:?}");
    }
});
