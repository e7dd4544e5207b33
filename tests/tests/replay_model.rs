//! Replaying a log on a build whose Xen model behaves differently (the
//! test-only event-channel skew: allocations pass over the lowest free port)
//! is a divergence report naming the Xen platform, a vCPU and a point no
//! later than the first checkpoint after the models part; never a panic, a
//! hang, or "identical".

use replay::{Header, Log, LogWriter, Record, Replayed};
use sim_core::machine::{Machine, MachineConfig};
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xen;
use xensim_tests::{log_header, Cpu};

const EVERY: u64 = 2_000;

fn config() -> MachineConfig {
    MachineConfig { memory_mib: 64, max_instructions: Some(20_000_000), quantum: 500, ..Default::default() }
}

/// The xen_events guest (binds VIRQ_TIMER, among others) on a Xen machine,
/// its platform skewed or not.
fn xen_machine(skewed: bool) -> Machine {
    let skew = |p: &mut XenPlatform| {
        if skewed {
            p.testing_skew_event_channels();
        }
    };
    xensim_tests::xen_machine(xen::xen_events().unwrap(), config(), XenConfig::default(), Cpu::Interp, skew).0
}

fn header() -> Header {
    log_header(&config(), &xen::xen_events().unwrap(), EVERY)
}

/// The first round boundary at which the skewed machine's platform state
/// differs from the normal one's, found by running both side by side.
fn first_difference() -> u64 {
    let (mut a, mut b) = (xen_machine(false), xen_machine(true));
    loop {
        let (ra, rb) = (a.run_round().unwrap(), b.run_round().unwrap());
        assert_eq!(a.retired_instructions(), b.retired_instructions(), "rounds stay in step until the models part");
        if a.save_state().platform != b.save_state().platform {
            return a.retired_instructions();
        }
        assert!(ra.is_none() && rb.is_none(), "the skew never showed: the test guest must allocate a port");
    }
}

#[test]
fn a_different_xen_model_is_reported_as_a_platform_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xen.log");
    let mut m = xen_machine(false);
    let mut w = LogWriter::create(&path, &header()).unwrap();
    replay::record(&mut m, Box::new(sim_core::door::ClosedDoor), &mut w, EVERY).unwrap();
    w.finish().unwrap();
    let log = Log::read(&path).unwrap();

    // The unchanged model replays identically: the report below is the skew's.
    let mut same = xen_machine(false);
    assert!(matches!(replay::replay(&mut same, &log, None, &mut |_| {}).unwrap(), Replayed::Identical { .. }));

    let parted = first_difference();
    let first_check_after = log
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Checkpoint(d) | Record::End { digest: d, .. } if d.icount >= parted => Some(d.icount),
            _ => None,
        })
        .min()
        .expect("a checkpoint after the models part");
    let mut skewed = xen_machine(true);
    let d = match replay::replay(&mut skewed, &log, None, &mut |_| {}).unwrap() {
        Replayed::Diverged(d) => d,
        other => panic!("a different Xen model must diverge, got {other:?}"),
    };
    assert!(d.differences.iter().any(|l| l.starts_with("platform:")), "names the Xen model: {d}");
    assert!(d.vcpu < config().cpus, "names a vCPU: {d}");
    assert!(
        (parted..=first_check_after).contains(&d.icount),
        "reported at {} (models part at {parted}, next checkpoint {first_check_after})",
        d.icount
    );
    assert_eq!(d.rip, skewed.vcpu(d.vcpu as usize).state().rip);
    let text = d.to_string();
    assert!(text.starts_with(&format!("replay diverged at icount {} on vCPU {}", d.icount, d.vcpu)), "{text}");
}
