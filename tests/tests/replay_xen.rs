//! Every Xen guest in tests/ records and replays with identical console
//! output and final state hash: hypercalls by VMCALL and through the
//! hypercall page, event channels and the singleshot timer (xen_events),
//! upcalls through a GSI (xen_gsi_upcalls), the xenstore and console
//! rings with a console line typed mid-run (xenstore_guest), and a second
//! vCPU brought up with VCPUOP_initialise/up (xen_two_vcpus). The non-Xen
//! guests (demo, boot protocols, serial input) are in replay.rs.

use replay::{Header, Log, LogWriter, Record, Replayed};
use sim_core::boot::{BootConfig, BootImage};
use sim_core::door::{Door, Input, ScriptDoor};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::{xen, xenstore};
use xensim_tests::{log_header, Capture};

struct Guest {
    name: &'static str,
    cpus: u32,
    kernel: Vec<u8>,
    xen: XenConfig,
    inputs: Vec<(u64, Input)>,
    expected: String,
    stop: StopReason,
}

fn config(g: &Guest) -> MachineConfig {
    // Short rounds, so that even short guests cross several checkpoints.
    MachineConfig {
        cpus: g.cpus,
        memory_mib: 64,
        max_instructions: Some(200_000_000),
        quantum: 2_000,
        ..Default::default()
    }
}

fn machine(g: &Guest) -> (Machine, Capture) {
    let platform = XenPlatform::new(g.xen.clone(), g.cpus);
    let mut m = Machine::with_platform(config(g), Some(Box::new(platform)), &mut |id, n, cpuid| {
        Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
    })
    .expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    m.boot(BootConfig {
        kernel: BootImage { name: "guest".into(), bytes: g.kernel.clone() },
        modules: Vec::new(),
        cmdline: String::new(),
        rsdp: 0,
        reserved: Vec::new(),
    })
    .expect("boot");
    (m, cap)
}

fn header(g: &Guest, every: u64) -> Header {
    log_header(&config(g), &g.kernel, every)
}

fn guests() -> Vec<Guest> {
    let events = |name, kernel| Guest {
        name,
        cpus: 1,
        kernel,
        xen: XenConfig::default(),
        inputs: Vec::new(),
        expected: xen::XEN_EVENTS_EXPECTED.into(),
        stop: StopReason::DebugExit(1),
    };
    vec![
        events("hypercalls by VMCALL, event channels, timer", xen::xen_events().unwrap()),
        events("hypercalls through the hypercall page", xen::xen_events_via(xen::HypercallEntry::Page).unwrap()),
        events("hypercalls through a hypercall function", xen::xen_events_via(xen::HypercallEntry::Function).unwrap()),
        Guest {
            name: "upcalls through a GSI",
            cpus: 1,
            kernel: xen::xen_gsi_upcalls().unwrap(),
            xen: XenConfig::default(),
            inputs: Vec::new(),
            expected: xen::XEN_GSI_EXPECTED.into(),
            stop: StopReason::DebugExit(1),
        },
        Guest {
            name: "xenstore and console rings, console input",
            cpus: 1,
            kernel: xenstore::xenstore_guest().unwrap(),
            xen: XenConfig::default().with_pv_rings(),
            inputs: vec![(3_000_000, Input::Console(b"typed\n".to_vec()))],
            expected: xenstore::xenstore_guest_expected("typed\n"),
            stop: StopReason::DebugExit(1),
        },
        Guest {
            name: "two vCPUs",
            cpus: 2,
            kernel: xen::xen_two_vcpus_via(xen::HypercallEntry::Vmcall).unwrap(),
            xen: XenConfig::default(),
            inputs: Vec::new(),
            expected: xen::XEN_TWO_VCPUS_EXPECTED.into(),
            stop: StopReason::DebugExit(1),
        },
    ]
}

#[test]
fn every_xen_guest_replays_with_identical_output_and_final_state() {
    for g in guests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xen.log");
        let every = 2_000;
        let (mut m, cap) = machine(&g);
        let door: Box<dyn Door> = Box::new(ScriptDoor::new(g.inputs.clone()));
        let mut w = LogWriter::create(&path, &header(&g, every)).unwrap();
        let stop = replay::record(&mut m, door, &mut w, every).unwrap();
        w.finish().unwrap();
        assert_eq!((stop, cap.text()), (g.stop, g.expected.clone()), "{}: the recorded run", g.name);
        let recorded = m.digest();

        let log = Log::read(&path).unwrap();
        let logged: Vec<&Input> = log
            .records
            .iter()
            .filter_map(|r| if let Record::Polled { input, .. } = r { Some(input) } else { None })
            .collect();
        assert_eq!(logged, g.inputs.iter().map(|(_, i)| i).collect::<Vec<_>>(), "{}: inputs logged", g.name);
        // The replaying machine has no input of its own.
        let (mut r, cap) = machine(&g);
        match replay::replay(&mut r, &log, None, &mut |_| {}).unwrap() {
            Replayed::Identical { stop: s, checkpoints } => {
                assert_eq!(s, stop, "{}", g.name);
                assert!(checkpoints >= 2, "{}: {checkpoints} checkpoints", g.name);
            }
            other => panic!("{}: {other:?}", g.name),
        }
        assert_eq!(cap.text(), g.expected, "{}: console output reproduced", g.name);
        let replayed = r.digest();
        assert_eq!(replayed.differences(&recorded), Vec::<String>::new(), "{}", g.name);
        assert_eq!(replayed.hash(), recorded.hash(), "{}: final state hash", g.name);
    }
}
