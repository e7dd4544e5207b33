//! State hashes and snapshots: the same run hashes the same, a different
//! input shows up in the component it changed, and a machine restored from
//! a mid-run snapshot ends exactly where the uninterrupted run ends.
//!
//! On KVM: kvm_boot.rs restores mid-run snapshots on a fresh VM and
//! refuses a different machine's. Interpreter only: equal digests of two
//! runs (a KVM run's time follows the host; kvm_record.rs replays one to
//! the recorded hash) and inputs placed at instruction counts.

use sim_core::door::{Input, ScriptDoor};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xensim::guest::programs;
use xensim_tests::{boot, machine, Run};

fn echo_run(inputs: Vec<(u64, Input)>) -> Run {
    Run {
        config: MachineConfig {
            memory_mib: 16,
            max_instructions: Some(3_000_000),
            quantum: 10_000,
            ..Default::default()
        },
        inputs,
        ..Run::default()
    }
}

fn inputs(second: &[u8]) -> Vec<(u64, Input)> {
    vec![(20_000, Input::Serial(b"abc".to_vec())), (400_000, Input::Serial(second.to_vec()))]
}

#[test]
fn same_run_same_digest_and_a_changed_input_names_what_differs() {
    let a = boot(programs::serial_echo().unwrap(), &echo_run(inputs(b"xyz.")));
    let b = boot(programs::serial_echo().unwrap(), &echo_run(inputs(b"xyz.")));
    let (da, db) = (a.machine.digest(), b.machine.digest());
    assert_eq!(da.hash(), db.hash());
    assert!(da.differences(&db).is_empty());
    // One byte fewer: the guest counted 5 bytes, not 6 (RBX holds the count).
    let c = boot(programs::serial_echo().unwrap(), &echo_run(inputs(b"xy.")));
    let dc = c.machine.digest();
    assert_ne!(da.hash(), dc.hash());
    let diff = da.differences(&dc);
    assert!(diff.iter().any(|l| l == "vcpu0 rbx 0x6 != 0x5"), "{diff:#?}");
    assert!(diff.iter().any(|l| l.starts_with("RAM 0x")), "the echo buffer differs: {diff:#?}");
    assert!(diff.iter().any(|l| l.starts_with("time:")), "{diff:#?}");
    assert!(!diff.iter().any(|l| l.starts_with("ioapic") || l.starts_with("pic")), "untouched: {diff:#?}");
}

/// Run rounds until at least `icount` instructions retired.
fn run_to(m: &mut Machine, icount: u64) {
    while m.retired_instructions() < icount {
        assert_eq!(m.run_round().unwrap(), None, "guest stopped before {icount}");
    }
}

#[test]
fn restoring_a_mid_run_snapshot_ends_like_the_uninterrupted_run() {
    let run = echo_run(inputs(b"xyz."));
    let kernel = programs::serial_echo().unwrap();
    let (mut m, cap, _) = machine(kernel.clone(), &run);
    run_to(&mut m, 100_000);
    let at = m.retired_instructions();
    let (state, ram) = (m.save_state(), m.save_ram());
    assert_eq!(m.run().unwrap(), StopReason::Halted);
    let whole = m.digest();
    assert_eq!(cap.text(), "ABCXYZ\n6 bytes\n");

    // A fresh machine, booted so that RAM differs from the snapshot's, then
    // restored; it gets only the inputs the snapshot had not yet seen.
    let (mut r, cap2, _) = machine(kernel, &Run { inputs: Vec::new(), ..run.clone() });
    run_to(&mut r, 5_000);
    r.restore_state(&state).unwrap();
    r.restore_ram(&ram).unwrap();
    assert_eq!(r.retired_instructions(), at);
    assert_eq!(r.digest().hash(), {
        let (mut again, _, _) = machine(programs::serial_echo().unwrap(), &run);
        run_to(&mut again, 100_000);
        again.digest().hash()
    });
    let later = run.inputs.iter().filter(|(i, _)| *i > at).cloned().collect();
    r.set_door(Box::new(ScriptDoor::new(later)));
    assert_eq!(r.run().unwrap(), StopReason::Halted);
    assert_eq!(cap2.text(), "XYZ\n6 bytes\n", "output after the snapshot point only");
    let restored = r.digest();
    assert_eq!(restored.differences(&whole), Vec::<String>::new());
    assert_eq!(restored.hash(), whole.hash());
}

#[test]
fn demo_guest_snapshot_at_many_points_restores_to_the_same_end() {
    let run = Run::default();
    let kernel = programs::demo().unwrap();
    let whole = boot(kernel.clone(), &run);
    let end = whole.machine.digest().hash();
    assert!(whole.instructions > 1000);
    for point in [1, whole.instructions / 3, whole.instructions * 2 / 3] {
        let (mut m, _, _) = machine(kernel.clone(), &run);
        run_to(&mut m, point);
        let (state, ram) = (m.save_state(), m.save_ram());
        let (mut r, _, _) = machine(kernel.clone(), &run);
        r.restore_state(&state).unwrap();
        r.restore_ram(&ram).unwrap();
        assert_eq!(r.run().unwrap(), StopReason::Halted);
        assert_eq!(r.digest().hash(), end, "snapshot at {point}");
    }
}

#[test]
fn a_snapshot_does_not_restore_into_a_different_machine() {
    let run = Run::default();
    let (m, _, _) = machine(programs::demo().unwrap(), &run);
    let state = m.save_state();
    let other = Run { config: MachineConfig { memory_mib: 32, ..run.config.clone() }, ..run };
    let (mut r, _, _) = machine(programs::demo().unwrap(), &other);
    let err = r.restore_state(&state).unwrap_err();
    assert!(err.contains("64 MiB") && err.contains("32 MiB"), "{err}");
    let mut bad = state.clone();
    bad.devices[0].1 = vec![0xc1]; // msgpack "never used" byte
    let (mut r, _, _) = machine(programs::demo().unwrap(), &Run::default());
    assert!(r.restore_state(&bad).is_err());
}
