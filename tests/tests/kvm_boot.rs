//! The guest programs boot on KVM through the same Machine and print the
//! same transcripts as on the interpreter (whose own tests check them
//! against the boot protocols). Skipped, with the reason printed, when
//! /dev/kvm cannot be used.

use std::sync::Arc;

use kvm_backend::KvmVm;
use sim_core::machine::StopReason;
use xensim::guest::programs::{self, MultibootInputs, PvhInputs};
use xensim::guest::Boot;
use xensim_tests::{boot_on, Outcome, Run};

const GUEST_EXIT_OK: StopReason = StopReason::DebugExit(1);

fn kvm(test: &str) -> Option<Arc<KvmVm>> {
    KvmVm::new().map_err(|e| eprintln!("skipping {test}: {e}")).ok()
}

fn boot_kvm(vm: &Arc<KvmVm>, kernel: Vec<u8>, run: &Run) -> Outcome {
    boot_on(kernel, run, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid))
}

fn with_modules() -> Run {
    Run {
        cmdline: "console=hvc0 root=/dev/xvda quiet".into(),
        modules: vec![("initrd.img".into(), vec![0x5a; 10_000]), ("extra.bin".into(), vec![1, 2, 3])],
        ..Run::default()
    }
}

#[test]
fn demo_on_kvm() {
    let Some(vm) = kvm("demo_on_kvm") else { return };
    let out = boot_kvm(&vm, programs::demo().unwrap(), &Run::default());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(out.output, programs::demo_expected());
}

#[test]
fn pvh32_on_kvm() {
    let Some(vm) = kvm("pvh32_on_kvm") else { return };
    let out = boot_kvm(&vm, programs::pvh32_basics().unwrap(), &with_modules());
    assert_eq!(out.stop, GUEST_EXIT_OK, "output: {}", out.output);
    let inputs = PvhInputs::xensim(&out.machine.mem, &out.config, out.boot.kernel_end);
    assert_eq!(out.output, programs::pvh32_basics_expected(&inputs));
}

#[test]
fn pvh64_on_kvm() {
    let Some(vm) = kvm("pvh64_on_kvm") else { return };
    let out = boot_kvm(&vm, programs::pvh64_start_info().unwrap(), &with_modules());
    assert_eq!(out.stop, GUEST_EXIT_OK, "output: {}", out.output);
    let inputs = PvhInputs::xensim(&out.machine.mem, &out.config, out.boot.kernel_end);
    assert_eq!(out.output, programs::pvh64_start_info_expected(&inputs));
}

#[test]
fn multiboot_on_kvm() {
    for kind in [Boot::Multiboot, Boot::MultibootAout] {
        let Some(vm) = kvm("multiboot_on_kvm") else { return };
        let out = boot_kvm(&vm, programs::multiboot_info(kind).unwrap(), &with_modules());
        assert_eq!(out.stop, GUEST_EXIT_OK, "{kind:?} output: {}", out.output);
        let inputs = MultibootInputs::xensim(&out.machine.mem, &out.config);
        assert_eq!(out.output, programs::multiboot_info_expected(&inputs), "{kind:?}");
    }
}

#[test]
fn small_benchmarks_on_kvm() {
    let Some(vm) = kvm("small_benchmarks_on_kvm") else { return };
    let out = boot_kvm(&vm, programs::bench_alu(2_000).unwrap(), &Run::default());
    assert_eq!(out.output, programs::bench_alu_expected(2_000));
    let vm = KvmVm::new().unwrap();
    let out = boot_kvm(&vm, programs::bench_memcpy(4096, 4).unwrap(), &Run::default());
    assert_eq!(out.output, programs::bench_memcpy_expected(4096, 4));
}
