//! Snapshot files and seeking: a snapshot of a Xen guest mid-run (event
//! channels, shared_info, timers live) written to bytes, loaded into a fresh
//! machine and continued ends exactly like the uninterrupted run; corrupt,
//! truncated, other-version and mismatched files are refused; in-memory
//! snapshots restore by rewriting only the pages that can differ.
//!
//! Interpreter only: its guests are checked by final state hashes against the
//! uninterrupted run's, which a KVM run (host time) cannot reproduce;
//! snapshots on KVM are in kvm_boot.rs, xenstore_guest.rs and kvm_dirty.rs.

use sim_core::cpuid::Vendor;
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::XenConfig;
use xensim::guest::xen;
use xensim_tests::{log_header, Capture, Cpu};

use replay::snapfile::{self, SnapError, SnapHeader, Snapshot};
use replay::{ImageHash, LogConfig, SnapshotStore};

fn config() -> MachineConfig {
    MachineConfig { memory_mib: 64, max_instructions: Some(20_000_000), quantum: 500, ..Default::default() }
}

fn log_config(c: &MachineConfig) -> LogConfig {
    LogConfig::of(c)
}

/// The xen_events guest (callback vector, per-vCPU vector, singleshot timer
/// waking a blocked vCPU) on a fresh Xen machine.
fn xen_machine() -> (Machine, Capture) {
    xensim_tests::xen_machine(xen::xen_events().unwrap(), config(), XenConfig::default(), Cpu::Interp, |_| {})
}

fn images() -> Vec<ImageHash> {
    vec![ImageHash::of("guest", &xen::xen_events().unwrap())]
}

fn snapshot_of(m: &mut Machine) -> Snapshot {
    snapshot_with(m, false)
}

fn snapshot_with(m: &mut Machine, delta: bool) -> Snapshot {
    Snapshot {
        header: SnapHeader {
            xensim_version: "test".into(),
            config: log_config(&config()),
            cmdline: String::new(),
            images: images(),
            icount: m.retired_instructions(),
            now_ns: m.now_ns(),
            inputs_consumed: None,
            parent: None,
        },
        state: m.save_state(),
        ram: m.snapshot_ram(delta),
    }
}

fn run_to(m: &mut Machine, icount: u64) {
    while m.retired_instructions() < icount {
        assert_eq!(m.run_round().unwrap(), None, "guest stopped before {icount}");
    }
}

struct Whole {
    stop: StopReason,
    output: String,
    hash: [u8; 32],
    instructions: u64,
    /// Round boundaries (icounts) where the Xen platform's state is no
    /// longer a fresh one's: the guest spends its first ~16k instructions
    /// setting up, then maps shared_info, binds ports and blocks.
    xen_points: Vec<u64>,
}

fn whole_run() -> Whole {
    let (mut m, cap) = xen_machine();
    let fresh = m.save_state().platform;
    let mut xen_points = Vec::new();
    let stop = loop {
        if let Some(stop) = m.run_round().unwrap() {
            break stop;
        }
        if m.save_state().platform != fresh && xen_points.last() != Some(&m.retired_instructions()) {
            xen_points.push(m.retired_instructions());
        }
    };
    Whole { stop, output: cap.text(), hash: m.digest().hash(), instructions: m.retired_instructions(), xen_points }
}

#[test]
fn xen_guest_snapshot_file_restores_mid_run_to_the_same_end() {
    let whole = whole_run();
    assert_eq!(whole.output, xen::XEN_EVENTS_EXPECTED);
    assert_eq!(whole.stop, StopReason::DebugExit(1));
    let mut platform_states = Vec::new();
    assert!(whole.xen_points.len() >= 3, "{:?}", whole.xen_points);
    for &point in &whole.xen_points {
        let (mut m, cap) = xen_machine();
        run_to(&mut m, point);
        let before = cap.text();
        let overlays: Vec<u64> = m.mem.overlays().map(|(g, _)| g).collect();
        let snap = snapshot_of(&mut m);
        platform_states.push(snap.state.platform.clone());
        let bytes = snap.encode();
        let loaded = snapfile::load(&bytes).unwrap();
        assert_eq!(loaded, snap);
        loaded.check_fits(&log_config(&config()), &images()).unwrap();

        let (mut r, cap2) = xen_machine();
        loaded.restore_into(&mut r).unwrap();
        assert_eq!(r.mem.overlays().map(|(g, _)| g).collect::<Vec<_>>(), overlays, "overlays mapped again");
        assert_eq!(r.digest().hash(), m.digest().hash(), "restored state at {point}");
        let stop = r.run().unwrap();
        assert_eq!(stop, whole.stop);
        assert_eq!(format!("{before}{}", cap2.text()), whole.output, "output split at {point}");
        assert_eq!(r.digest().hash(), whole.hash, "final state after restoring at {point}");
    }
    assert!(platform_states.iter().all(|p| p.len() > 4096), "shared_info contents are in the platform state");
    assert!(
        platform_states[0] != platform_states[platform_states.len() - 1],
        "platform state changes as the guest runs"
    );
}

#[test]
fn platform_state_is_in_the_hash() {
    // Same RAM and registers, different event channel state: the digest
    // must see it (the platform component).
    let (mut a, _) = xen_machine();
    run_to(&mut a, *whole_run().xen_points.last().unwrap());
    let d1 = a.digest();
    let mut s = a.save_state();
    let fresh = xen_machine().0.save_state();
    s.platform = fresh.platform;
    s.overlays.clear();
    let (mut b, _) = xen_machine();
    b.restore_state(&s).unwrap();
    b.restore_ram(&a.save_ram()).unwrap();
    let diff = d1.differences(&b.digest());
    assert!(diff.iter().any(|l| l.starts_with("platform:")), "{diff:?}");
}

#[test]
fn xen_guest_records_and_replays_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xen.log");
    let header = log_header(&config(), &xen::xen_events().unwrap(), 2_000);
    let (mut m, cap) = xen_machine();
    let mut w = replay::LogWriter::create(&path, &header).unwrap();
    let stop = replay::record(&mut m, Box::new(sim_core::door::ClosedDoor), &mut w, 2_000).unwrap();
    w.finish().unwrap();
    assert_eq!(cap.text(), xen::XEN_EVENTS_EXPECTED);
    let log = replay::Log::read(&path).unwrap();
    let (mut r, cap2) = xen_machine();
    match replay::replay(&mut r, &log, None, &mut |_| {}).unwrap() {
        replay::Replayed::Identical { stop: s, checkpoints } => {
            assert_eq!(s, stop);
            assert!(checkpoints >= 3, "{checkpoints} checkpoints");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cap2.text(), xen::XEN_EVENTS_EXPECTED);
}

#[test]
fn bad_snapshot_bytes_get_one_line_errors() {
    let (mut m, _) = xen_machine();
    run_to(&mut m, 10_000);
    let bytes = snapshot_of(&mut m).encode();
    assert!(snapfile::load(&bytes).is_ok());
    assert_eq!(snapfile::load(b"hello").unwrap_err(), SnapError::NotASnapshot);
    let mut v = bytes.clone();
    v[8] = 9;
    assert_eq!(snapfile::load(&v).unwrap_err(), SnapError::Version(9));
    assert!(matches!(snapfile::load(&bytes[..bytes.len() - 1]).unwrap_err(), SnapError::Size(_)));
    assert!(matches!(snapfile::load(&bytes[..30]).unwrap_err(), SnapError::Size(_)));
    let mut v = bytes.clone();
    let last = v.len() - 5;
    v[last] ^= 1;
    assert_eq!(snapfile::load(&v).unwrap_err(), SnapError::Checksum);
    // A page count promising 4 G pages: refused before any allocation.
    let mut v = bytes.clone();
    v[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(snapfile::load(&v).unwrap_err(), SnapError::Size(_)));
    // Every prefix and every single-byte flip errs without panicking.
    for n in (0..bytes.len()).step_by(997) {
        assert!(snapfile::load(&bytes[..n]).is_err());
        let mut v = bytes.clone();
        v[n] ^= 0x40;
        assert!(snapfile::load(&v).is_err(), "flip at {n}");
    }
    for e in [SnapError::NotASnapshot, SnapError::Checksum, SnapError::Size("x".into())] {
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn snapshot_for_another_machine_or_image_is_refused() {
    let (mut m, _) = xen_machine();
    let snap = snapshot_of(&mut m);
    let mut other = log_config(&config());
    other.memory_mib = 32;
    let e = snap.check_fits(&other, &images()).unwrap_err().to_string();
    assert!(e.contains("64 MiB") && e.contains("32 MiB"), "{e}");
    other = log_config(&config());
    other.vendor = Vendor::Amd;
    assert!(snap.check_fits(&other, &images()).is_err());
    let e = snap.check_fits(&log_config(&config()), &[ImageHash::of("guest", b"other")]).unwrap_err().to_string();
    assert!(e.contains("images given differ"), "{e}");
}

#[test]
fn delta_snapshot_files_chain_back_to_a_full_one() {
    let dir = tempfile::tempdir().unwrap();
    let whole = whole_run();
    let (mut m, cap) = xen_machine();
    let mut parent: Option<(String, [u8; 32])> = None;
    let mut last = None;
    for (i, point) in [whole.instructions / 2, whole.xen_points[1]].into_iter().enumerate() {
        run_to(&mut m, point);
        let snap = snapshot_with(&mut m, parent.is_some());
        let mut snap = snap;
        if parent.is_some() {
            // Only what changed since the first snapshot.
            assert!(!snap.ram.full);
            assert!(snap.ram.pages.len() < 64, "{} pages dirty", snap.ram.pages.len());
        }
        snap.header.parent = parent.clone();
        let name = format!("x.{i}.snap");
        let sum = snapfile::write(&dir.path().join(&name), &snap).unwrap();
        parent = Some((name.clone(), sum));
        last = Some(dir.path().join(name));
    }
    let before = cap.text();
    let last = last.unwrap();
    // Never overwritten.
    let e = snapfile::write(&last, &snapshot_of(&mut m)).unwrap_err().to_string();
    assert!(e.contains("x.1.snap"), "{e}");
    let whole_snap = snapfile::read_chain(&last).unwrap();
    assert!(whole_snap.ram.full);
    let (mut r, cap2) = xen_machine();
    whole_snap.restore_into(&mut r).unwrap();
    assert_eq!(r.run().unwrap(), whole.stop);
    assert_eq!(format!("{before}{}", cap2.text()), whole.output);
    assert_eq!(r.digest().hash(), whole.hash);
    // A changed parent breaks the chain with a one-line error.
    std::fs::remove_file(dir.path().join("x.0.snap")).unwrap();
    let e = snapfile::read_chain(&last).unwrap_err().to_string();
    assert!(e.contains("x.0.snap") && !e.contains('\n'), "{e}");
}

#[test]
fn seeking_back_rewrites_only_the_pages_that_differ() {
    let whole = whole_run();
    let (mut m, _) = xen_machine();
    let mut store = SnapshotStore::new();
    let step = whole.instructions / 10;
    let mut stop = None;
    while stop.is_none() {
        stop = m.run_round().unwrap();
        if stop.is_none() && m.retired_instructions() >= (store.len() as u64) * step {
            store.observe(&mut m, 0);
        }
    }
    assert_eq!(m.digest().hash(), whole.hash);
    assert!(store.len() >= 6, "{:?}", store.icounts());
    let total_pages = (config().memory_mib << 20) / 4096;
    // Back to each snapshot, then on to the end: the same end every time.
    for j in (0..store.len()).rev() {
        let r = store.restore(&mut m, j).unwrap();
        assert_eq!(m.retired_instructions(), r.icount);
        if j > 0 {
            assert!(r.pages_written < total_pages / 8, "restore {j} wrote {} pages", r.pages_written);
        }
        assert_eq!(m.run().unwrap(), whole.stop);
        assert_eq!(m.digest().hash(), whole.hash, "continued from snapshot {j}");
    }
}
