//! Fuzz inputs replayed on stable through the targets' executors: every
//! input that once broke an invariant or panicked (fuzz/regressions/TARGET/,
//! named after the bug) and every seed (fuzz/corpus/TARGET/) must run clean.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(kind);
    let mut n = 0;
    let mut failures = Vec::new();
    for target in xensim::fuzz::TARGETS {
        for f in inputs(&root.join(target)) {
            let data = std::fs::read(&f).unwrap();
            let r = xensim::fuzz::run(target, &data).unwrap();
            if let Err(e) = r.result {
                failures.push(format!("{target} {}: {e}\n{}", f.display(), r.decoded));
            }
            n += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    n
}

#[test]
fn crashing_inputs_found_by_fuzzing_now_run_clean() {
    assert!(replay("regressions") > 0, "no regression inputs found under fuzz/regressions");
}

#[test]
fn seed_corpora_run_clean() {
    assert!(replay("corpus") >= xensim::fuzz::TARGETS.len(), "every target has seeds");
}

#[test]
fn unknown_targets_are_refused() {
    assert!(xensim::fuzz::run("no-such-target", b"").is_none());
}
