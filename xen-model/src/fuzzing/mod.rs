//! Fuzz targets over the Xen models, compiled on stable so that a crashing
//! input reproduces with `xensim fuzz-repro` as well as with cargo-fuzz.
//! Each target has an `Input` (derived with `arbitrary`, printed with
//! `Debug` as the decoded operation sequence) and a `run` that executes one
//! input and returns the first invariant it finds broken. A host panic is a
//! bug as much as an `Err`.

pub mod evtchn;
pub mod gnttab;
pub mod hypercall;
pub mod xenstore_wire;

use arbitrary::{Arbitrary, Unstructured};

/// Most operations one input runs: keeps every execution short.
pub const MAX_STEPS: usize = 64;

/// Decode `data` the way libfuzzer-sys's `fuzz_target!(|input: T| ...)`
/// does (`arbitrary_take_rest`), so both see the same input.
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// The targets this crate provides.
pub const TARGETS: &[&str] = &["hypercall", "xenstore_wire", "evtchn", "gnttab"];

/// What a target did with one input.
#[derive(Debug)]
pub struct Outcome {
    /// The decoded input, or a note that the bytes do not decode (libFuzzer
    /// skips such inputs).
    pub decoded: String,
    pub result: Result<(), String>,
}

fn exec<'a, T: Arbitrary<'a> + std::fmt::Debug>(data: &'a [u8], run: impl FnOnce(&T) -> Result<(), String>) -> Outcome {
    match decode::<T>(data) {
        Some(input) => Outcome { decoded: format!("{input:#?}"), result: run(&input) },
        None => Outcome { decoded: "(does not decode: skipped, as cargo fuzz does)".into(), result: Ok(()) },
    }
}

/// Run target `name` on raw fuzzer bytes; `None` if no such target here.
pub fn run_target(name: &str, data: &[u8]) -> Option<Outcome> {
    Some(match name {
        "hypercall" => exec(data, hypercall::run),
        "xenstore_wire" => exec(data, xenstore_wire::run),
        "evtchn" => exec(data, evtchn::run),
        "gnttab" => exec(data, gnttab::run),
        _ => return None,
    })
}
