//! State hashes and snapshots: the same run hashes the same, a different
//! input shows up in the component it changed, and a machine restored from
//! a mid-run snapshot ends exactly where the uninterrupted run ends.

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

/// One page of RAM as the guest would see it with no overlay over it.
fn ram_page(m: &Machine, gfn: u64) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    m.mem.read_ram(gfn << 12, &mut page).unwrap();
    page
}

/// A RAM image holds RAM beneath overlay pages (the overlay's contents are
/// the platform's state, saved apart): restored, the overlay shows its own
/// bytes, and once it is unmapped the guest sees its RAM page again.
#[test]
fn ram_images_hold_the_ram_beneath_overlay_pages() {
    let run = Run { config: MachineConfig { memory_mib: 16, ..Default::default() }, ..Run::default() };
    let gfn = 0x300;
    let marker = b"RAM beneath the overlay";
    let (mut a, _, _) = machine(programs::demo().unwrap(), &run);
    a.mem.write(gfn << 12, marker).unwrap();
    a.mem.map_overlay(gfn, sim_core::OverlayPage::new());
    a.mem.write(gfn << 12, b"overlay contents").unwrap();
    let (state, ram) = (a.save_state(), a.save_ram());
    let saved = ram.pages.iter().find(|(g, _)| *g == gfn).map(|(_, p)| &p[..marker.len()]);
    assert_eq!(saved, Some(&marker[..]));

    let (mut b, _, _) = machine(programs::demo().unwrap(), &run);
    // What a platform's restore does: the overlay page exists again.
    b.mem.map_overlay(gfn, sim_core::OverlayPage::new());
    b.restore_state(&state).unwrap();
    b.restore_ram(&ram).unwrap();
    let mut seen = [0u8; 16];
    b.mem.read(gfn << 12, &mut seen).unwrap();
    assert_eq!(&seen, b"overlay contents", "the full image's zeroing left the overlay alone");
    assert_eq!(b.digest().differences(&a.digest()), Vec::<String>::new());
    assert_eq!(b.digest().hash(), a.digest().hash());

    a.mem.unmap_overlay(gfn);
    b.mem.unmap_overlay(gfn);
    let mut back = vec![0u8; marker.len()];
    b.mem.read(gfn << 12, &mut back).unwrap();
    assert_eq!(&back[..], marker);
    assert_eq!(ram_page(&b, gfn), ram_page(&a, gfn));
    assert_eq!(b.digest().hash(), a.digest().hash());
}

/// The same through the Xen platform: the guest maps shared_info
/// (XENMAPSPACE_shared_info) over a RAM page holding a marker; a delta
/// snapshot restored into a fresh machine runs to the uninterrupted run's
/// end state, and with shared_info moved away the marker is back in both.
#[test]
fn shared_info_over_ram_snapshot_keeps_the_page_beneath() {
    use xensim::guest::xen::{xen_events, SHARED_INFO_GFN, XEN_EVENTS_EXPECTED};
    use xensim_tests::{xen_machine, Cpu};
    // 1 GiB: shared_info's frame (just below 1008 MiB + 4 KiB) is RAM here.
    let config =
        MachineConfig { memory_mib: 1024, max_instructions: Some(200_000_000), quantum: 5_000, ..Default::default() };
    let marker = b"guest data under shared_info";
    let new = || {
        let (m, cap) =
            xen_machine(xen_events().unwrap(), config.clone(), xen_model::XenConfig::default(), Cpu::Interp, |_| {});
        assert!(m.mem.is_ram(SHARED_INFO_GFN << 12));
        (m, cap)
    };
    let (mut a, cap_a) = new();
    a.mem.write(SHARED_INFO_GFN << 12, marker).unwrap();
    while a.mem.overlay_at(SHARED_INFO_GFN).is_none() {
        assert_eq!(a.run_round().unwrap(), None, "the guest maps shared_info");
    }
    let (state, ram) = (a.save_state(), a.snapshot_ram(true));
    let at = a.retired_instructions();
    let printed = cap_a.text().len();
    // exit(0) is QEMU status 1.
    assert_eq!(a.run().unwrap(), StopReason::DebugExit(1));
    assert_eq!(cap_a.text(), XEN_EVENTS_EXPECTED);

    let (mut b, cap_b) = new();
    b.restore_state(&state).unwrap();
    b.restore_ram_pages(ram.pages.iter().map(|(g, p)| (*g, Some(&p[..])))).unwrap();
    assert_eq!(b.retired_instructions(), at);
    assert_eq!(b.run().unwrap(), StopReason::DebugExit(1));
    assert_eq!(cap_b.text(), XEN_EVENTS_EXPECTED[printed..], "output after the snapshot point only");
    assert_eq!(b.digest().differences(&a.digest()), Vec::<String>::new());
    assert_eq!(b.digest().hash(), a.digest().hash());

    for m in [&mut a, &mut b] {
        assert!(m.mem.unmap_overlay(SHARED_INFO_GFN).is_some());
        let mut seen = vec![0u8; marker.len()];
        m.mem.read(SHARED_INFO_GFN << 12, &mut seen).unwrap();
        assert_eq!(&seen[..], marker);
    }
    assert_eq!(ram_page(&b, SHARED_INFO_GFN), ram_page(&a, SHARED_INFO_GFN));
}
