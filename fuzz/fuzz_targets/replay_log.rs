#![no_main]
//! `replay_log`: see replay/src/fuzzing.rs (reproduce with `xensim fuzz-repro replay_log INPUT`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = replay::fuzzing::log(data) {
        panic!("invariant broken: {e}");
    }
});
