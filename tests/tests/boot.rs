//! Boot guest programs through PVH (32- and 64-bit) and Multiboot (ELF and
//! a.out kludge) on the interpreter and compare their whole console
//! transcripts with what the boot protocols say they must have been given.
//!
//! On KVM: kvm_boot.rs boots the same guests (RAM above 4 GiB included).
//! Interpreter only, as KVM cannot have them: identical instruction counts
//! and final state from the same inputs (KVM's time follows the host; on
//! KVM that is record/replay's job, kvm_record.rs) and the instruction limit
//! (KVM counts no instructions; the CLI refuses `--max-instructions` there).

use sim_core::machine::{MachineConfig, StopReason};
use xensim::guest::programs::{self, MultibootInputs, PvhInputs};
use xensim::guest::Boot;
use xensim_tests::{boot, Run};

/// isa-debug-exit status for a guest that wrote 0: (0 << 1) | 1.
const GUEST_EXIT_OK: StopReason = StopReason::DebugExit(1);

fn with_modules() -> Run {
    Run {
        cmdline: "console=hvc0 root=/dev/xvda quiet".into(),
        modules: vec![("initrd.img".into(), vec![0x5a; 10_000]), ("extra.bin".into(), vec![1, 2, 3])],
        ..Run::default()
    }
}

#[test]
fn demo_guest_prints_its_checked_result_and_halts() {
    let out = boot(programs::demo().unwrap(), &Run::default());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(out.output, programs::demo_expected());
    // The sieve's count and sum, computed independently here.
    let primes: Vec<u64> = (2..10_000u64).filter(|&n| (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0)).collect();
    assert!(out.output.contains(&format!("{}, sum {}", primes.len(), primes.iter().sum::<u64>())));
}

#[test]
fn pvh32_guest_reads_hvm_start_info() {
    let out = boot(programs::pvh32_basics().unwrap(), &with_modules());
    assert_eq!(out.stop, GUEST_EXIT_OK, "output: {}", out.output);
    let inputs = PvhInputs::xensim(&out.machine.mem, &out.config, out.boot.kernel_end);
    assert_eq!(out.output, programs::pvh32_basics_expected(&inputs));
    assert!(out.output.contains("0x336ec578"), "PVH magic from the ABI");
}

#[test]
fn pvh64_guest_reads_start_info_from_long_mode() {
    let out = boot(programs::pvh64_start_info().unwrap(), &with_modules());
    assert_eq!(out.stop, GUEST_EXIT_OK, "output: {}", out.output);
    let inputs = PvhInputs::xensim(&out.machine.mem, &out.config, out.boot.kernel_end);
    assert_eq!(out.output, programs::pvh64_start_info_expected(&inputs));
    assert!(out.output.contains("console=hvc0 root=/dev/xvda quiet"));
    assert!(out.output.contains("initrd.img"));
}

#[test]
fn multiboot_elf_and_aout_kernels_get_the_info_structure() {
    for kind in [Boot::Multiboot, Boot::MultibootAout] {
        let out = boot(programs::multiboot_info(kind).unwrap(), &with_modules());
        assert_eq!(out.stop, GUEST_EXIT_OK, "{kind:?} output: {}", out.output);
        let inputs = MultibootInputs::xensim(&out.machine.mem, &out.config);
        assert_eq!(out.output, programs::multiboot_info_expected(&inputs), "{kind:?}");
        // EAX = 0x2BADB002 is what the guest checks before printing anything else.
        assert!(!out.output.contains("bad magic"));
    }
}

#[test]
fn more_memory_moves_ram_above_4g_into_the_map() {
    let run = Run {
        config: MachineConfig { memory_mib: 3584, max_instructions: Some(50_000_000), ..Default::default() },
        ..with_modules()
    };
    let out = boot(programs::pvh64_start_info().unwrap(), &run);
    assert_eq!(out.stop, GUEST_EXIT_OK, "output: {}", out.output);
    let inputs = PvhInputs::xensim(&out.machine.mem, &out.config, out.boot.kernel_end);
    assert!(inputs.memmap.iter().any(|e| e.0 == 0x1_0000_0000 && e.2 == 1), "RAM above 4 GiB listed");
    assert_eq!(out.output, programs::pvh64_start_info_expected(&inputs));
}

#[test]
fn benchmark_guests_compute_their_known_results() {
    let out = boot(programs::bench_alu(20_000).unwrap(), &Run::default());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(out.output, programs::bench_alu_expected(20_000));
    let out = boot(programs::bench_memcpy(8192, 3).unwrap(), &Run::default());
    assert_eq!(out.stop, StopReason::Halted);
    assert_eq!(out.output, programs::bench_memcpy_expected(8192, 3));
}

#[test]
fn same_inputs_give_the_same_final_state() {
    let a = boot(programs::demo().unwrap(), &with_modules());
    let b = boot(programs::demo().unwrap(), &with_modules());
    assert_eq!(a.instructions, b.instructions);
    assert_eq!(a.machine.vcpu(0).state(), b.machine.vcpu(0).state());
    assert_eq!(a.machine.now_ns(), b.machine.now_ns());
    let (mut ra, mut rb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for base in (0..64u64 << 20).step_by(1 << 20) {
        a.machine.mem.read(base, &mut ra).unwrap();
        b.machine.mem.read(base, &mut rb).unwrap();
        assert!(ra == rb, "RAM differs in the MiB at {base:#x}");
    }
}

#[test]
fn instruction_limit_stops_a_running_guest() {
    let run = Run { config: MachineConfig { max_instructions: Some(10_000), ..Default::default() }, ..Run::default() };
    let out = boot(programs::bench_alu(1_000_000).unwrap(), &run);
    assert_eq!(out.stop, StopReason::InstructionLimit);
    assert_eq!(out.instructions, 10_000);
}
