//! The state digest hashes RAM incrementally on the interpreter: it starts
//! from the hashes of zeroed regions and reads again only regions written
//! since the last digest. Whether digested at every round or once at the
//! end, the RAM hashes must equal BLAKE3 computed here over every region.
//!
//! On KVM (dirty log): kvm_dirty.rs.

use sim_core::door::{Input, ScriptDoor};
use sim_core::machine::snapshot::RAM_REGION;
use sim_core::machine::{Machine, MachineConfig};
use xen_model::XenConfig;
use xensim::guest::{programs, xen, xenstore};
use xensim_tests::{machine, xen_machine, Cpu, Run};

/// (region start, BLAKE3) of every `RAM_REGION` piece of each RAM range,
/// read in one piece each (RAM itself: overlay pages are hashed apart).
fn full_ram_hashes(m: &Machine) -> Vec<(u64, [u8; 32])> {
    let mut out = Vec::new();
    for &(start, len) in m.mem.ram_ranges() {
        let mut off = 0;
        while off < len {
            let n = RAM_REGION.min(len - off);
            let mut buf = vec![0u8; n as usize];
            m.mem.read_ram(start + off, &mut buf).unwrap();
            out.push((start + off, *blake3::hash(&buf).as_bytes()));
            off += n;
        }
    }
    out
}

#[test]
fn incremental_ram_hashes_match_a_full_hash() {
    let run = Run { config: MachineConfig { memory_mib: 16, quantum: 5_000, ..Default::default() }, ..Run::default() };
    let image = programs::bench_memcpy(64 << 10, 4).unwrap();
    let (mut every, _, _) = machine(image.clone(), &run);
    let (mut once, _, _) = machine(image, &run);
    let mut rounds = 0;
    while every.run_round().unwrap().is_none() {
        if rounds == 3 {
            assert_eq!(every.digest().ram, full_ram_hashes(&every), "early in the run");
        } else {
            let _ = every.digest();
        }
        rounds += 1;
    }
    while once.run_round().unwrap().is_none() {}
    assert!(rounds > 10, "the guest ran for {rounds} rounds");
    let (a, b) = (every.digest(), once.digest());
    assert_eq!(a.ram, full_ram_hashes(&every));
    assert_eq!(b.ram, full_ram_hashes(&once));
    assert!(a.ram.iter().any(|(_, h)| *h != a.ram[a.ram.len() - 1].1), "some regions were written");
    assert_eq!(a.differences(&b), Vec::<String>::new());
    assert_eq!(a.hash(), b.hash());
}

/// The Xen platform writes guest RAM too (rings, vcpu_info, the hypercall
/// page, grant copies): those writes must reach the hashes as the CPU's do.
#[test]
fn xen_guests_ram_hashes_match_a_full_hash() {
    let config =
        MachineConfig { memory_mib: 64, max_instructions: Some(200_000_000), quantum: 5_000, ..Default::default() };
    let guests = [
        (xen::xen_events().unwrap(), XenConfig::default(), Vec::new()),
        (
            xenstore::xenstore_guest().unwrap(),
            XenConfig::default().with_pv_rings(),
            vec![(3_000_000, Input::Console(b"typed\n".to_vec()))],
        ),
    ];
    for (kernel, xen, inputs) in guests {
        let (mut m, _) = xen_machine(kernel, config.clone(), xen, Cpu::Interp, |_| {});
        m.set_door(Box::new(ScriptDoor::new(inputs)));
        let mut rounds = 0u64;
        // A digest (a platform save, slow in test builds) every 20th round.
        while m.run_round().unwrap().is_none() {
            rounds += 1;
            if rounds % 20 == 0 {
                let d = m.digest();
                if rounds == 100 {
                    assert_eq!(d.ram, full_ram_hashes(&m), "round {rounds}");
                }
            }
        }
        assert_eq!(m.digest().ram, full_ram_hashes(&m), "at the end, after {rounds} rounds");
    }
}

/// The digest as the format defines it, computed a second way: every
/// component is BLAKE3 of the rmp-serde encoding (into a buffer) of the
/// matching `save_state` field, or of the raw bytes for byte components.
fn reference_components(m: &Machine) -> Vec<(String, [u8; 32])> {
    let of = |v: Vec<u8>| *blake3::hash(&v).as_bytes();
    let enc = |v: &dyn Fn() -> Result<Vec<u8>, rmp_serde::encode::Error>| of(v().unwrap());
    let s = m.save_state();
    let mut out = Vec::new();
    for (i, v) in s.vcpus.iter().enumerate() {
        out.push((format!("vcpu{i}"), enc(&|| rmp_serde::to_vec(v))));
    }
    for (i, l) in s.lapics.iter().enumerate() {
        out.push((format!("lapic{i}"), enc(&|| rmp_serde::to_vec(l))));
    }
    out.push(("ioapic".into(), enc(&|| rmp_serde::to_vec(&s.ioapic))));
    out.push(("pic".into(), enc(&|| rmp_serde::to_vec(&s.pic))));
    out.push(("gsi".into(), enc(&|| rmp_serde::to_vec(&s.gsi))));
    out.push(("timers".into(), enc(&|| rmp_serde::to_vec(&s.timers))));
    out.push(("time".into(), enc(&|| rmp_serde::to_vec(&(s.now_ns, s.retired, s.wall_clock_ns)))));
    out.push(("console-input".into(), of(s.console_input.clone())));
    for (name, data) in &s.devices {
        out.push((name.clone(), of(data.clone())));
    }
    out.push(("platform".into(), of(s.platform.clone())));
    // Pages encode as MessagePack bin (the field's serde_bytes encoding).
    let overlays: Vec<(u64, serde_bytes::ByteBuf)> =
        s.overlays.iter().map(|(gfn, page)| (*gfn, serde_bytes::ByteBuf::from(page.clone()))).collect();
    out.push(("overlays".into(), enc(&|| rmp_serde::to_vec(&overlays))));
    out
}

/// Digests hash the machine's state in place; the values must stay those
/// of the log format (hashes of the saved state's encodings), on a Xen
/// guest (platform, overlays, console input) at several points of its run.
#[test]
fn digest_components_match_the_saved_states_encodings() {
    let config =
        MachineConfig { memory_mib: 64, max_instructions: Some(200_000_000), quantum: 5_000, ..Default::default() };
    let (mut m, _) = xen_machine(
        xenstore::xenstore_guest().unwrap(),
        config,
        XenConfig::default().with_pv_rings(),
        Cpu::Interp,
        |_| {},
    );
    m.set_door(Box::new(ScriptDoor::new(vec![(3_000_000, Input::Console(b"typed\n".to_vec()))])));
    let mut rounds = 0u64;
    let mut checked = 0;
    loop {
        let stop = m.run_round().unwrap();
        rounds += 1;
        if rounds % 150 == 1 || stop.is_some() {
            let d = m.digest();
            assert_eq!(d.components, reference_components(&m), "round {rounds}");
            assert_eq!(d.icount, m.retired_instructions());
            let whole = rmp_serde::to_vec(&(&d.components, &d.ram)).unwrap();
            assert_eq!(d.hash(), *blake3::hash(&whole).as_bytes());
            checked += 1;
        }
        if stop.is_some() {
            break;
        }
    }
    assert!(checked >= 3, "{checked} digests checked");
    assert!(m.mem.overlays().next().is_some(), "the guest mapped overlay pages");
}
