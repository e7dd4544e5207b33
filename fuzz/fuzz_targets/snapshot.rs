#![no_main]
//! `snapshot`: see replay/src/fuzzing.rs (reproduce with `xensim fuzz-repro snapshot INPUT`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = replay::fuzzing::snapshot(data) {
        panic!("invariant broken: {e}");
    }
});
