//! Running the fuzz targets' executors on stable Rust: what
//! `xensim fuzz-repro` and the regression tests use to replay an input that
//! cargo-fuzz saved, with the decoded operation sequence.

/// Every fuzz target (fuzz/fuzz_targets/NAME.rs).
pub const TARGETS: &[&str] = &["hypercall", "xenstore_wire", "evtchn", "gnttab", "interp", "replay_log", "snapshot"];

/// One input through one target.
#[derive(Debug)]
pub struct Repro {
    /// The input as the target decodes it (Debug of its `Input`).
    pub decoded: String,
    /// `Err`: the invariant that broke, or the panic message.
    pub result: Result<(), String>,
}

/// Run `target` on `data`; `None` for an unknown target. A panic inside the
/// target is caught and reported as a failure, as libFuzzer reports a crash.
pub fn run(target: &str, data: &[u8]) -> Option<Repro> {
    if !TARGETS.contains(&target) {
        return None;
    }
    let decoded = std::cell::RefCell::new(String::from("(panicked while decoding)"));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if target == "interp" {
            let (d, r) = x86_interp::fuzzing::run_bytes(data);
            *decoded.borrow_mut() = d;
            r
        } else if target == "replay_log" || target == "snapshot" {
            *decoded.borrow_mut() = format!("{} raw bytes", data.len());
            if target == "replay_log" {
                replay::fuzzing::log(data)
            } else {
                replay::fuzzing::snapshot(data)
            }
        } else {
            match xen_model::fuzzing::run_target(target, data) {
                Some(o) => {
                    *decoded.borrow_mut() = o.decoded;
                    o.result
                }
                None => Err(format!("no target {target} in xen-model")),
            }
        }
    }));
    let result = match outcome {
        Ok(r) => r,
        Err(p) => Err(format!("panic: {}", panic_message(&*p))),
    };
    Some(Repro { decoded: decoded.into_inner(), result })
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string payload)".into())
}
