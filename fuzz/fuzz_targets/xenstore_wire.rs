#![no_main]
//! `xenstore_wire`: see xen-model/src/fuzzing/xenstore_wire.rs (reproduce with `xensim fuzz-repro xenstore_wire INPUT`).

use libfuzzer_sys::fuzz_target;
use xen_model::fuzzing::xenstore_wire::{run, Input};

fuzz_target!(|input: Input| {
    if let Err(e) = run(&input) {
        panic!("invariant broken: {e}\ninput: {input:?}");
    }
});
