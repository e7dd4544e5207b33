//! The guest programs boot on KVM through the same Machine and print the
//! same transcripts as on the interpreter (whose own tests check them
//! against the boot protocols). Skipped, with the reason printed, when
//! /dev/kvm cannot be used.

use std::sync::Arc;

use kvm_backend::KvmVm;
use sim_core::door::Input;
use sim_core::machine::{MachineConfig, StopReason};
use xensim::guest::programs::{self, MultibootInputs, PvhInputs};
use xensim::guest::Boot;
use xensim_tests::{boot_on, machine_on, Outcome, Run};

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

#[test]
fn more_memory_moves_ram_above_4g_into_the_map_on_kvm() {
    let Some(vm) = kvm("more_memory_moves_ram_above_4g_into_the_map_on_kvm") else { return };
    let run = Run { config: MachineConfig { memory_mib: 3584, ..Default::default() }, ..with_modules() };
    let out = boot_kvm(&vm, programs::pvh64_start_info().unwrap(), &run);
    assert_eq!(out.stop, GUEST_EXIT_OK, "output: {}", out.output);
    let inputs = PvhInputs::xensim(&out.machine.mem, &out.config, out.boot.kernel_end);
    assert!(inputs.memmap.iter().any(|e| e.0 == 0x1_0000_0000 && e.2 == 1), "RAM above 4 GiB listed");
    assert_eq!(out.output, programs::pvh64_start_info_expected(&inputs));
}

/// door.rs's echo on KVM: scripted input arrives at round boundaries,
/// which KVM counts in exits (the guest polls the UART, one exit a poll).
#[test]
fn serial_input_is_echoed_by_the_guest_on_kvm() {
    let Some(vm) = kvm("serial_input_is_echoed_by_the_guest_on_kvm") else { return };
    let inputs = vec![(50, Input::Serial(b"hello, ".to_vec())), (300, Input::Serial(b"World 42.".to_vec()))];
    let run = Run { config: MachineConfig { memory_mib: 16, ..Default::default() }, inputs, ..Run::default() };
    let out = boot_kvm(&vm, programs::serial_echo().unwrap(), &run);
    assert_eq!(out.stop, StopReason::Halted, "output: {}", out.output);
    assert_eq!(out.output, programs::serial_echo_expected(b"hello, World 42."));
}

/// snapshot.rs's mid-run snapshots on KVM: taken between exits, restored
/// into a machine on a fresh VM, the guest ends with the same output and
/// registers as the uninterrupted run.
#[test]
fn demo_guest_snapshots_on_kvm_restore_to_the_same_end() {
    let Some(vm) = kvm("demo_guest_snapshots_on_kvm_restore_to_the_same_end") else { return };
    let kernel = programs::demo().unwrap();
    let run = Run { config: MachineConfig { memory_mib: 16, ..Default::default() }, ..Run::default() };
    let whole = boot_kvm(&vm, kernel.clone(), &run);
    assert_eq!(whole.output, programs::demo_expected());
    let exits = whole.instructions;
    assert!(exits > 4, "{exits} exits");
    for point in [1, exits / 2] {
        let vm = KvmVm::new().unwrap();
        let (mut m, cap, _) = machine_on(kernel.clone(), &run, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
        while m.retired_instructions() < point {
            assert_eq!(m.run_round().unwrap(), None, "stopped before exit {point}");
        }
        let (state, ram) = (m.save_state(), m.save_ram());
        let printed = cap.text();
        let vm = KvmVm::new().unwrap();
        let (mut r, cap2, _) = machine_on(kernel.clone(), &run, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
        r.restore_state(&state).unwrap();
        r.restore_ram(&ram).unwrap();
        assert_eq!(r.run().unwrap(), StopReason::Halted);
        assert_eq!(printed + &cap2.text(), programs::demo_expected(), "snapshot at exit {point}");
        assert_eq!(r.vcpu(0).gprs(), whole.machine.vcpu(0).gprs(), "snapshot at exit {point}");
    }
}

#[test]
fn a_snapshot_does_not_restore_into_a_different_machine_on_kvm() {
    let Some(vm) = kvm("a_snapshot_does_not_restore_into_a_different_machine_on_kvm") else { return };
    let run = Run { config: MachineConfig { memory_mib: 64, ..Default::default() }, ..Run::default() };
    let (m, _, _) = machine_on(programs::demo().unwrap(), &run, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    let state = m.save_state();
    let other = Run { config: MachineConfig { memory_mib: 32, ..run.config.clone() }, ..run };
    let vm = KvmVm::new().unwrap();
    let (mut r, _, _) = machine_on(programs::demo().unwrap(), &other, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    let err = r.restore_state(&state).unwrap_err();
    assert!(err.contains("64 MiB") && err.contains("32 MiB"), "{err}");
}
