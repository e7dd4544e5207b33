//! Snapshots kept in memory along one run, for seeking: the first holds all
//! of RAM, each later one the pages written since the one before. Going back
//! (or forward) to a snapshot rewrites only the pages that can differ: those
//! written since the machine last matched a snapshot, and those the deltas
//! between that snapshot and the target list.

use std::collections::{BTreeMap, BTreeSet};

use sim_core::machine::snapshot::{MachineState, RamImage};
use sim_core::machine::Machine;

struct Stored {
    icount: u64,
    state: MachineState,
    /// Pages by frame; for the first snapshot every non-zero page.
    pages: BTreeMap<u64, Vec<u8>>,
    full: bool,
    inputs_consumed: u64,
}

/// In-memory snapshots of one machine, in instruction order.
#[derive(Default)]
pub struct SnapshotStore {
    snaps: Vec<Stored>,
    /// The snapshot the machine's RAM equals apart from its dirty pages.
    base: Option<usize>,
}

/// A restored snapshot's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    pub icount: u64,
    pub inputs_consumed: u64,
    /// RAM pages rewritten.
    pub pages_written: u64,
}

impl SnapshotStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.snaps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snaps.is_empty()
    }

    /// Instruction counts of the snapshots held.
    pub fn icounts(&self) -> Vec<u64> {
        self.snaps.iter().map(|s| s.icount).collect()
    }

    /// Note the machine at a round boundary: a new snapshot if it is past
    /// the last one and came from it; else, if it is exactly at a stored
    /// one, that one becomes its base (replay is deterministic, so its RAM
    /// is that snapshot's apart from pages dirtied since the old base).
    pub fn observe(&mut self, machine: &mut Machine, inputs_consumed: u64) {
        let icount = machine.retired_instructions();
        if let Some(i) = self.snaps.iter().position(|s| s.icount == icount) {
            self.base = Some(i);
            return;
        }
        let last = self.snaps.len().checked_sub(1);
        if last.is_some_and(|l| self.snaps[l].icount > icount || self.base != Some(l)) {
            return;
        }
        // Without exact dirty tracking (KVM) every snapshot is full.
        let RamImage { full, pages } = machine.snapshot_ram(last.is_some());
        self.snaps.push(Stored {
            icount,
            state: machine.save_state(),
            pages: pages.into_iter().collect(),
            full,
            inputs_consumed,
        });
        self.base = Some(self.snaps.len() - 1);
    }

    /// The latest snapshot at or before `icount`.
    pub fn nearest(&self, icount: u64) -> Option<usize> {
        self.snaps.iter().rposition(|s| s.icount <= icount)
    }

    /// Page `gfn` as snapshot `j` had it (`None`: zero).
    fn page_at(&self, j: usize, gfn: u64) -> Option<&[u8]> {
        for s in self.snaps[..=j].iter().rev() {
            if let Some(p) = s.pages.get(&gfn) {
                return Some(p);
            }
            if s.full {
                return None;
            }
        }
        None
    }

    /// Make `machine` snapshot `j` again.
    pub fn restore(&mut self, machine: &mut Machine, j: usize) -> Result<Restored, String> {
        let target = self.snaps.get(j).ok_or_else(|| format!("no snapshot {j}"))?;
        let (icount, inputs_consumed) = (target.icount, target.inputs_consumed);
        let mut touched: BTreeSet<u64> = machine.dirty_frames().into_iter().collect();
        match self.base {
            Some(b) if machine.dirty_tracking_exact() => {
                let (lo, hi) = (j.min(b), j.max(b));
                for s in &self.snaps[lo + 1..=hi] {
                    if s.full {
                        touched.extend(self.full_frames(machine));
                        break;
                    }
                    touched.extend(s.pages.keys());
                }
            }
            // Nothing known about RAM: every page.
            _ => touched.extend(self.full_frames(machine)),
        }
        machine.restore_state(&self.snaps[j].state)?;
        let pages_written = machine.restore_ram_pages(touched.iter().map(|&g| (g, self.page_at(j, g))))?;
        self.base = Some(j);
        Ok(Restored { icount, inputs_consumed, pages_written })
    }

    fn full_frames(&self, machine: &Machine) -> Vec<u64> {
        machine.mem.ram_ranges().iter().flat_map(|&(start, len)| (start >> 12)..((start + len) >> 12)).collect()
    }
}
