//! Snapshot files taken during `run` and `replay` (`--snapshot-at`,
//! `--snapshot-every`), and finding the one to seek from (`replay --until`).
//! Files are named STEM.ICOUNT.snap; the first of a run holds all of RAM,
//! later ones only the pages written since the one before (KVM's dirty log
//! says which on KVM).

use std::path::{Path, PathBuf};

use replay::snapfile::{self, SnapHeader, Snapshot};
use replay::{ImageHash, LogConfig, Start};
use sim_core::machine::Machine;

pub struct Snapshotter {
    dir: PathBuf,
    stem: String,
    every: Option<u64>,
    at: Vec<u64>,
    next_every: u64,
    base: SnapHeader,
    parent: Option<(String, [u8; 32])>,
}

impl Snapshotter {
    /// None when neither option asks for snapshots.
    pub fn new(
        dir: PathBuf,
        stem: String,
        every: Option<u64>,
        mut at: Vec<u64>,
        base: SnapHeader,
        start: u64,
    ) -> Option<Self> {
        if every.is_none() && at.is_empty() {
            return None;
        }
        at.sort_unstable();
        at.retain(|&a| a > start);
        let next_every = every.map_or(u64::MAX, |e| (start / e.max(1) + 1).saturating_mul(e.max(1)));
        Some(Snapshotter { dir, stem, every: every.map(|e| e.max(1)), at, next_every, base, parent: None })
    }

    /// At a round boundary: write a snapshot if one is due.
    pub fn round(&mut self, m: &mut Machine, inputs_consumed: Option<u64>) -> Result<(), String> {
        let icount = m.retired_instructions();
        let due_at = self.at.first().is_some_and(|&a| icount >= a);
        // A replay of a KVM run may be ahead of the recorded state here:
        // the snapshot waits for the next boundary where it is not.
        if (!due_at && icount < self.next_every) || !m.state_is_recorded() {
            return Ok(());
        }
        self.at.retain(|&a| a > icount);
        if let Some(e) = self.every {
            self.next_every = (icount / e + 1).saturating_mul(e);
        }
        let ram = m.snapshot_ram(self.parent.is_some());
        let header = SnapHeader {
            icount,
            now_ns: m.now_ns(),
            inputs_consumed,
            parent: if ram.full { None } else { self.parent.clone() },
            ..self.base.clone()
        };
        let snap = Snapshot { header, state: m.save_state(), ram };
        let name = format!("{}.{icount}.snap", self.stem);
        let path = self.dir.join(&name);
        let sum = snapfile::write(&path, &snap).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), pages = snap.ram.pages.len(), full = snap.ram.full, "snapshot");
        self.parent = Some((name, sum));
        Ok(())
    }
}

/// The snapshot file in `dir` named after `stem` with the largest icount at
/// or before `until` that was taken while recording or replaying (it knows
/// how many log inputs preceded it) and fits `fits`.
pub fn nearest(dir: &Path, stem: &str, until: u64, fits: impl Fn(&Snapshot) -> bool) -> Option<PathBuf> {
    let prefix = format!("{stem}.");
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(icount) =
            name.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".snap")).and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if icount > until || best.as_ref().is_some_and(|(b, _)| *b >= icount) {
            continue;
        }
        match snapfile::read(&entry.path()) {
            Ok((s, _)) if s.header.inputs_consumed.is_some() && fits(&s) => best = Some((icount, entry.path())),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}; not used for seeking"),
        }
    }
    best.map(|(_, p)| p)
}

/// Seek for `replay --until`: restore `machine` from the nearest snapshot of
/// the log `stem` in `dir` at or before `until` that fits the log's machine
/// and images. Returns the file and where replay goes on from; `None` when
/// no snapshot fits (replay starts at power-on).
pub fn seek(
    machine: &mut Machine,
    dir: &Path,
    stem: &str,
    until: u64,
    config: &LogConfig,
    images: &[ImageHash],
) -> Result<Option<(PathBuf, Start)>, String> {
    let fits = |s: &Snapshot| s.check_fits(config, images).is_ok();
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Some(path) = nearest(dir, stem, until, fits) else {
        return Ok(None);
    };
    let s = snapfile::read_chain(&path).map_err(|e| e.to_string())?;
    s.restore_into(machine).map_err(|e| format!("{}: {e}", path.display()))?;
    let start = Start { icount: s.header.icount, inputs_consumed: s.header.inputs_consumed.unwrap_or(0) };
    Ok(Some((path, start)))
}
