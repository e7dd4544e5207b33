//! The state digest hashes RAM incrementally on the interpreter: it starts
//! from the hashes of zeroed regions and reads again only regions written
//! since the last digest. Whether digested at every round or once at the
//! end, the RAM hashes must equal BLAKE3 computed here over every region.

use sim_core::machine::snapshot::RAM_REGION;
use sim_core::machine::{Machine, MachineConfig};
use xensim::guest::programs;
use xensim_tests::{machine, Run};

/// (region start, BLAKE3) of every `RAM_REGION` piece of each RAM range,
/// read in one piece each.
fn full_ram_hashes(m: &Machine) -> Vec<(u64, [u8; 32])> {
    let mut out = Vec::new();
    for &(start, len) in m.mem.ram_ranges() {
        let mut off = 0;
        while off < len {
            let n = RAM_REGION.min(len - off);
            let mut buf = vec![0u8; n as usize];
            m.mem.read(start + off, &mut buf).unwrap();
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
