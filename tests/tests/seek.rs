//! `replay --until` seeking, as the CLI does it (`xensim::snapshots`): a
//! replay writes snapshot files every N instructions; a seek restores the
//! nearest one at or before the target and replays forward, ending in the
//! same state as a straight replay from power-on to the same point.

use std::path::Path;

use replay::{ImageHash, Log, LogConfig, LogWriter, Replayed, SnapHeader, Start};
use sim_core::machine::{Machine, MachineConfig};
use xen_model::XenConfig;
use xensim::guest::xen;
use xensim::snapshots::{seek, Snapshotter};
use xensim_tests::{log_header, Cpu};

const STEM: &str = "run.log";

fn config() -> MachineConfig {
    MachineConfig { memory_mib: 64, max_instructions: Some(20_000_000), quantum: 500, ..Default::default() }
}

fn log_config() -> LogConfig {
    let c = config();
    LogConfig::of(&c)
}

fn images() -> Vec<ImageHash> {
    vec![ImageHash::of("guest", &xen::xen_events().unwrap())]
}

/// The xen_events guest (event channels, a timer, blocking) on Xen.
fn xen_machine() -> Machine {
    xensim_tests::xen_machine(xen::xen_events().unwrap(), config(), XenConfig::default(), Cpu::Interp, |_| {}).0
}

/// Record the guest, then replay it writing a snapshot every `every`
/// instructions; returns the log and the snapshots' icounts.
fn recorded_with_snapshots(dir: &Path, every: u64) -> (Log, Vec<u64>) {
    let path = dir.join(STEM);
    let header = log_header(&config(), &xen::xen_events().unwrap(), 2_000);
    let mut w = LogWriter::create(&path, &header).unwrap();
    replay::record(&mut xen_machine(), Box::new(sim_core::door::ClosedDoor), &mut w, 2_000).unwrap();
    w.finish().unwrap();
    let log = Log::read(&path).unwrap();
    let base = SnapHeader {
        xensim_version: "test".into(),
        config: log_config(),
        cmdline: String::new(),
        images: images(),
        icount: 0,
        now_ns: 0,
        inputs_consumed: None,
        parent: None,
    };
    let mut snapper = Snapshotter::new(dir.to_path_buf(), STEM.into(), Some(every), Vec::new(), base, 0).unwrap();
    let r =
        replay::replay_from(&mut xen_machine(), &log, None, None, &mut |_| {}, &mut |m, n| snapper.round(m, Some(n)))
            .unwrap();
    assert!(matches!(r, Replayed::Identical { .. }), "{r:?}");
    let prefix = format!("{STEM}.");
    let mut snaps: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix(&prefix)?.strip_suffix(".snap")?.parse().ok()
        })
        .collect();
    snaps.sort_unstable();
    (log, snaps)
}

/// A straight replay from power-on to the first round boundary at or past `until`.
fn straight(log: &Log, until: u64) -> Machine {
    let mut m = xen_machine();
    match replay::replay(&mut m, log, Some(until), &mut |_| {}).unwrap() {
        Replayed::Reached { .. } => {}
        other => panic!("straight replay to {until}: {other:?}"),
    }
    m
}

#[test]
fn seek_restores_the_nearest_earlier_snapshot_and_ends_where_a_straight_replay_does() {
    let dir = tempfile::tempdir().unwrap();
    let (log, snaps) = recorded_with_snapshots(dir.path(), 5_000);
    assert!(snaps.len() >= 3, "snapshots at {snaps:?}");
    // Just before a snapshot (the worst case: a whole interval to replay),
    // exactly at one, and just after one.
    for (until, from) in [(snaps[2] - 1, snaps[1]), (snaps[1], snaps[1]), (snaps[2] + 1, snaps[2])] {
        let mut m = xen_machine();
        let (path, start): (_, Start) =
            seek(&mut m, dir.path(), STEM, until, &log_config(), &images()).unwrap().expect("a snapshot to seek from");
        assert_eq!(path, dir.path().join(format!("{STEM}.{from}.snap")), "seek to {until}");
        assert_eq!(start.icount, from);
        assert_eq!(m.retired_instructions(), from, "the machine is at the snapshot");
        let r = replay::replay_from(&mut m, &log, Some(start), Some(until), &mut |_| {}, &mut |_, _| Ok(())).unwrap();
        let Replayed::Reached { icount, .. } = r else { panic!("seek to {until}: {r:?}") };
        let s = straight(&log, until);
        assert_eq!(icount, s.retired_instructions(), "seek to {until}");
        let (a, b) = (m.digest(), s.digest());
        assert_eq!(a.differences(&b), Vec::<String>::new(), "seek to {until}");
        assert_eq!(a.hash(), b.hash(), "seek to {until}");
    }
    // Before the first snapshot there is nothing to seek from.
    assert!(seek(&mut xen_machine(), dir.path(), STEM, snaps[0] - 1, &log_config(), &images()).unwrap().is_none());
}
