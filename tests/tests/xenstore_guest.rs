//! A guest using the toolstack's rings on the interpreter: xenstore over its ring,
//! output on hvc0 (the PV console ring), console input through the door; and socket
//! clients (a Rust one and Debian's xenstore-write/read) next to it.

use sim_core::boot::{BootConfig, BootImage};
use sim_core::door::{Input, ScriptDoor};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xenstore;
use xensim_tests::Capture;

fn machine(platform: XenPlatform) -> (Machine, Capture) {
    let config = MachineConfig { memory_mib: 64, max_instructions: Some(200_000_000), ..Default::default() };
    let mut m = Machine::with_platform(config, Some(Box::new(platform)), &mut |id, n, cpuid| {
        Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
    })
    .expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    m.boot(BootConfig {
        kernel: BootImage { name: "guest".into(), bytes: xenstore::xenstore_guest().unwrap() },
        modules: Vec::new(),
        cmdline: String::new(),
        rsdp: 0,
    })
    .expect("boot");
    (m, cap)
}

#[test]
fn guest_talks_xenstore_over_its_ring_and_prints_on_hvc0_and_echoes_console_input() {
    let platform = XenPlatform::new(XenConfig::default().with_pv_rings(), 1);
    let (mut m, cap) = machine(platform);
    // The line arrives well after the guest starts waiting for it.
    m.set_door(Box::new(ScriptDoor::new(vec![(3_000_000, Input::Console(b"hello ring\n".to_vec()))])));
    let stop = m.run().expect("run");
    assert_eq!(cap.text(), xenstore::xenstore_guest_expected("hello ring\n"));
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}
