//! Dirty tracking on KVM: RAM slots log the pages the guest writes and the
//! machine folds that log into its dirty bitmap at snapshots and state
//! digests, so snapshots on KVM store only the pages written since the last
//! one and state digests rehash only those. The interpreter (which marks
//! its own stores) is the second implementation the KVM results are
//! checked against. Skipped, with the reason printed, when /dev/kvm cannot
//! be used.

use std::sync::Arc;

use iced_x86::code_asm::*;
use kvm_backend::KvmVm;
use sim_core::machine::snapshot::{hash_bytes, RamImage, RAM_REGION};
use sim_core::machine::{Machine, MachineConfig, StopReason, VcpuFactory};
use xensim::guest::asm::{DATA_BASE, PML4, STACK_TOP};
use xensim::guest::programs;
use xensim::guest::{Boot, GuestError, GuestProgram, Mode};
use xensim_tests::{machine_on, Run};

fn kvm(test: &str) -> Option<Arc<KvmVm>> {
    KvmVm::new().map_err(|e| eprintln!("skipping {test}: {e}")).ok()
}

fn run() -> Run {
    Run { config: MachineConfig { memory_mib: 16, quantum: 5_000, ..Default::default() }, ..Run::default() }
}

/// Pages the guest writes, far from its image, stack and page tables.
const PAGES: [u64; 3] = [0x80_0000, 0x80_5000, 0x9f_f000];
const VALUE: u64 = 0x1122_3344_5566_7788;

fn writer() -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    g.a.mov(rax, VALUE)?;
    for (k, p) in PAGES.iter().enumerate() {
        g.a.mov(qword_ptr(*p + 8 * k as u64), rax)?;
    }
    g.exit(0)?;
    g.build(Boot::Pvh)
}

/// Boot `writer`, start dirty tracking after the loader's writes, run to
/// the end; the dirty frames and the delta snapshot that follows.
fn written_by(factory: &mut VcpuFactory<'_>) -> (Vec<u64>, RamImage) {
    let (mut m, _, _) = machine_on(writer().unwrap(), &run(), factory);
    let full = m.snapshot_ram(false);
    assert!(full.full);
    assert_eq!(m.run().unwrap(), StopReason::DebugExit(1));
    let frames = m.dirty_frames();
    let delta = m.snapshot_ram(true);
    (frames, delta)
}

#[test]
fn kvm_writes_are_dirty_and_snapshots_store_only_them() {
    let Some(vm) = kvm("kvm_writes_are_dirty_and_snapshots_store_only_them") else { return };
    let (kvm_frames, kvm_delta) = written_by(&mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    let (frames, delta) = written_by(&mut |id, n, cpuid| Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid))));
    for p in PAGES {
        assert!(kvm_frames.contains(&(p >> 12)), "page {p:#x} written on KVM is dirty: {kvm_frames:x?}");
    }
    // Besides those, only the guest's own page tables (its entry code
    // builds PML4, PDPT and four page directories; the CPU sets accessed
    // and dirty bits in them), its GDT's page (the CPU sets descriptors'
    // accessed bits) and its stack: the same pages on both backends.
    let tables = (PML4 >> 12)..(PML4 >> 12) + 6;
    let known = [DATA_BASE >> 12, (STACK_TOP - 0x1000) >> 12];
    let others: Vec<u64> = kvm_frames.iter().copied().filter(|f| !PAGES.contains(&(f << 12))).collect();
    assert!(others.iter().all(|f| tables.contains(f) || known.contains(f)), "{others:x?}");
    assert_eq!(kvm_frames, frames, "KVM and the interpreter dirty the same pages");
    assert!(!kvm_delta.full, "exact tracking on KVM: a delta, not a full image");
    assert_eq!(kvm_delta, delta, "the same delta snapshot on both backends");
    for (k, p) in PAGES.iter().enumerate() {
        let page = kvm_delta.pages.iter().find(|(gfn, _)| *gfn == p >> 12).expect("in the delta");
        let at = 8 * k;
        assert_eq!(page.1[at..at + 8], VALUE.to_le_bytes(), "page {p:#x} as the guest wrote it");
    }
}

/// RAM hashed region by region straight from memory.
fn region_hashes(m: &Machine) -> Vec<(u64, [u8; 32])> {
    let mut out = Vec::new();
    for &(start, len) in m.mem.ram_ranges() {
        let mut gpa = start;
        while gpa < start + len {
            let n = RAM_REGION.min(start + len - gpa);
            let mut b = vec![0; n as usize];
            m.mem.read(gpa, &mut b).unwrap();
            out.push((gpa, hash_bytes(&b)));
            gpa += n;
        }
    }
    out
}

#[test]
fn incremental_digests_on_kvm_see_every_write() {
    let Some(vm) = kvm("incremental_digests_on_kvm_see_every_write") else { return };
    let image = programs::bench_memcpy(64 << 10, 4).unwrap();
    let (mut m, cap, _) = machine_on(image, &run(), &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    let mut rounds = 0;
    while m.run_round().unwrap().is_none() {
        let _ = m.digest();
        rounds += 1;
    }
    assert_eq!(cap.text(), programs::bench_memcpy_expected(64 << 10, 4));
    assert!(rounds > 3, "the guest ran for {rounds} rounds");
    assert_eq!(m.digest().ram, region_hashes(&m), "incremental hashes equal a full pass over RAM");
}
