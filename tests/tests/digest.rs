//! The state digest hashes RAM incrementally on the interpreter (only regions
//! written since the last digest are read again). A machine digested at every
//! round must end with the same hashes as a twin digested once, from scratch.
//!
//! On KVM (dirty log): kvm_dirty.rs.

use sim_core::machine::MachineConfig;
use xensim::guest::programs;
use xensim_tests::{machine, Run};

#[test]
fn incremental_ram_hashes_match_a_full_hash() {
    let run = Run { config: MachineConfig { memory_mib: 16, quantum: 5_000, ..Default::default() }, ..Run::default() };
    let image = programs::bench_memcpy(64 << 10, 4).unwrap();
    let (mut every, _, _) = machine(image.clone(), &run);
    let (mut once, _, _) = machine(image, &run);
    let mut rounds = 0;
    while every.run_round().unwrap().is_none() {
        let _ = every.digest();
        rounds += 1;
    }
    while once.run_round().unwrap().is_none() {}
    assert!(rounds > 10, "the guest ran for {rounds} rounds");
    let (a, b) = (every.digest(), once.digest());
    assert_eq!(a.differences(&b), Vec::<String>::new());
    assert_eq!(a.hash(), b.hash());
}
