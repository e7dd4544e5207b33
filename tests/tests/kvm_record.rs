//! Record on KVM, replay on the interpreter. KVM's time follows the host
//! clock and it cannot count instructions, so a KVM run is timed by its
//! exits: each exit's kind, data and guest TSC go through the door into the
//! log, and the interpreter replays by running to each recorded exit and
//! taking the recorded TSC as its own. For guests whose asynchronous events
//! arrive at exits (they block or halt until a timer or an event) the replay
//! reproduces console output and the final state hash; a guest that reads
//! the TSC between exits, or takes an interrupt where KVM preempted it,
//! is reported as a divergence. Skipped, with the reason printed, when
//! /dev/kvm cannot be used.

use std::path::Path;
use std::sync::Arc;

use iced_x86::code_asm::*;
use kvm_backend::KvmVm;
use replay::{Header, Hypercalls, Log, LogWriter, Record, Replayed};
use sim_core::boot::{BootConfig, BootImage, BootInfo};
use sim_core::clock::TimeSource;
use sim_core::door::{ClosedDoor, Input};
use sim_core::machine::{Machine, MachineConfig, StopReason, VcpuFactory};
use sim_core::vcpu::VcpuExit;
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xen::{self, HypercallEntry};
use xensim::guest::{Boot, GuestError, GuestProgram, Mode};
use xensim_tests::lapic::{apic_write, counting_timer_prologue};
use xensim_tests::{log_header, Capture};

fn kvm(test: &str) -> Option<Arc<KvmVm>> {
    KvmVm::new().map_err(|e| eprintln!("skipping {test}: {e}")).ok()
}

fn config(cpus: u32) -> MachineConfig {
    MachineConfig { cpus, memory_mib: 16, ..Default::default() }
}

/// A machine with the Xen platform whose hypercall page `hypercalls`
/// needs, `kernel` booted, console captured.
fn xen_machine(
    kernel: &[u8],
    cpus: u32,
    hypercalls: &Hypercalls,
    factory: &mut VcpuFactory<'_>,
) -> (Machine, Capture, BootInfo) {
    let xen = XenConfig { hypercall_gate: xensim::hypercalls::gate(hypercalls), ..Default::default() };
    let platform = XenPlatform::new(xen, cpus);
    let mut m = Machine::with_platform(config(cpus), Some(Box::new(platform)), factory).expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    let info = m
        .boot(BootConfig {
            kernel: BootImage { name: "guest".into(), bytes: kernel.to_vec() },
            modules: Vec::new(),
            cmdline: String::new(),
            rsdp: 0,
            reserved: Vec::new(),
        })
        .expect("boot");
    (m, cap, info)
}

fn header(kernel: &[u8], cpus: u32, hypercalls: Hypercalls) -> Header {
    Header { hypercalls, ..log_header(&config(cpus), kernel, 10) }
}

struct Recorded {
    stop: StopReason,
    output: String,
    log: Log,
}

/// Record `kernel` on KVM with the host's hypercall interception (the
/// kernel's own VMCALL sites armed, as `xensim run` does); the log's header
/// says which.
fn record_on_kvm(vm: &Arc<KvmVm>, kernel: &[u8], cpus: u32, path: &Path) -> Recorded {
    record_on_kvm_with(vm, kernel, cpus, path, Box::new(ClosedDoor))
}

/// `record_on_kvm` with outside inputs from `door`.
fn record_on_kvm_with(
    vm: &Arc<KvmVm>,
    kernel: &[u8],
    cpus: u32,
    path: &Path,
    door: Box<dyn sim_core::door::Door>,
) -> Recorded {
    let page_only = xensim::hypercalls::recorded(Some(vm.hypercall_strategy()), None);
    let (mut m, cap, info) = xen_machine(kernel, cpus, &page_only, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    assert_eq!(m.time_source(), TimeSource::Exits, "KVM runs on exit time");
    let armed = vm.arm_direct_calls(&m.mem, &info.exec_segments, m.cpuid().vendor());
    assert!(!armed.is_loss(), "{armed}");
    let hypercalls = xensim::hypercalls::recorded(Some(vm.hypercall_strategy()), Some(&armed));
    let mut w = LogWriter::create(path, &header(kernel, cpus, hypercalls)).unwrap();
    let stop = replay::record(&mut m, door, &mut w, 10).unwrap();
    w.finish().unwrap();
    Recorded { stop, output: cap.text(), log: Log::read(path).unwrap() }
}

/// Replay `log` on the interpreter, built as its header says the recording
/// host delivered hypercalls.
fn replay_on_interp(kernel: &[u8], cpus: u32, log: &Log) -> (Replayed, String, Machine) {
    let h = log.header.hypercalls.clone();
    let (mut m, cap, _) = xen_machine(kernel, cpus, &h, &mut |id, n, cpuid| {
        Ok(Box::new(xensim::hypercalls::interpreter(&h, id, n, cpuid)))
    });
    let r = replay::replay(&mut m, log, None, &mut |_| {}).unwrap();
    (r, cap.text(), m)
}

fn end_hash(log: &Log) -> [u8; 32] {
    match log.records.last() {
        Some(Record::End { digest, .. }) => digest.hash(),
        other => panic!("log ends with {other:?}"),
    }
}

fn exits(log: &Log) -> Vec<VcpuExit> {
    log.records
        .iter()
        .filter_map(|r| match r {
            Record::Answered { input: Input::KvmExit(seen), .. } => Some(seen.exit),
            _ => None,
        })
        .collect()
}

/// Recordings a test makes before it gives up on one that replays.
const ATTEMPTS: usize = 3;

/// Record `kernel` on KVM and replay it on the interpreter: the same exits,
/// output and final state hash. A host under load may stop the guest where
/// a replay cannot follow (seen: an interrupt delivered at a preemption
/// between `STI` and `HLT`; one vCPU preempted while the other wrote what
/// it polls for): replay reports such a recording as diverged, and the test
/// records again, up to `ATTEMPTS` times; a flaw in the machine fails every
/// attempt. Returns the log that replayed.
fn expect_identical(name: &str, kernel: &[u8], cpus: u32, expected_output: &str, expected_stop: StopReason) -> Log {
    let mut failures = Vec::new();
    for _ in 0..ATTEMPTS {
        // A VM per machine: vCPU ids are per VM.
        let vm = KvmVm::new().expect("KVM");
        let dir = tempfile::tempdir().unwrap();
        let rec = record_on_kvm(&vm, kernel, cpus, &dir.path().join("kvm.log"));
        assert_eq!(rec.output, expected_output, "{name} on KVM");
        assert_eq!(rec.stop, expected_stop, "{name} on KVM");
        assert_eq!(replay::drive::time_source(&rec.log), TimeSource::Exits);
        // Every exit is logged, down to the guest's last: its isa-debug-exit write.
        assert_eq!(
            exits(&rec.log).last(),
            Some(&VcpuExit::IoOut { port: 0xf4, size: 1, data: 0 }),
            "{name}: the last exit logged"
        );
        let (replayed, output, m) = replay_on_interp(kernel, cpus, &rec.log);
        if let Replayed::Diverged(d) = &replayed {
            eprintln!("{name}: recording not replayable, recording again: {d}");
            failures.push(d.to_string());
            continue;
        }
        assert!(matches!(replayed, Replayed::Identical { stop, .. } if stop == rec.stop), "{name}: {replayed:?}");
        assert_eq!(output, rec.output, "{name}: the replay prints what KVM printed");
        assert_eq!(m.digest().hash(), end_hash(&rec.log), "{name}: the final state hash");
        return rec.log;
    }
    panic!("{name}: no recording out of {ATTEMPTS} replayed:\n{}", failures.join("\n"));
}

#[test]
fn xen_events_recorded_on_kvm_replay_on_the_interpreter() {
    if kvm("xen_events_recorded_on_kvm_replay_on_the_interpreter").is_none() {
        return;
    }
    // Upcalls by vector and LAPIC, a singleshot timer and SCHEDOP_block;
    // the deadline from shared_info's system_time (written at exits).
    let kernel = xen::xen_events_without_rdtsc(HypercallEntry::Page).unwrap();
    let log = expect_identical("xen_events", &kernel, 1, xen::XEN_EVENTS_EXPECTED, StopReason::DebugExit(1));
    // This host's interception is in the header: strategy 2 without Xen
    // support (port stubs; the guest has no VMCALL of its own), else 1.
    let vm = KvmVm::new().unwrap();
    let expected = match vm.hypercall_strategy() {
        kvm_backend::HypercallStrategy::PortStub => Hypercalls::PortStub { port: 0xe8, sites: vec![] },
        kvm_backend::HypercallStrategy::XenHvm => Hypercalls::Vmcall,
    };
    assert_eq!(log.header.hypercalls, expected);
}

/// Strategy 3: the guest's one VMCALL (a function, as Linux's
/// xen_hypercall_intel) had a hardware breakpoint on KVM; the log names the
/// site, and the replay takes a VMCALL there, and only there, as a
/// hypercall. On a host with KVM_CAP_XEN_HVM every VMCALL is one (strategy 1).
#[test]
fn xen_events_through_a_breakpointed_vmcall_replay_on_the_interpreter() {
    let Some(vm) = kvm("xen_events_through_a_breakpointed_vmcall_replay_on_the_interpreter") else { return };
    let kernel = xen::xen_events_without_rdtsc(HypercallEntry::Function).unwrap();
    let log = expect_identical("xen_events (VMCALL)", &kernel, 1, xen::XEN_EVENTS_EXPECTED, StopReason::DebugExit(1));
    if vm.hypercall_strategy() == kvm_backend::HypercallStrategy::XenHvm {
        assert_eq!(log.header.hypercalls, Hypercalls::Vmcall);
        return;
    }
    let Hypercalls::PortStub { port: 0xe8, sites } = &log.header.hypercalls else { panic!("{:?}", log.header) };
    // The function's VMCALL, where the guest runs it (its link and load
    // addresses are one: a guest loaded identity-mapped).
    let (m, _, _) = xen_machine(&kernel, 1, &Hypercalls::Vmcall, &mut |id, n, cpuid| {
        Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
    });
    let vmcall = sites.iter().all(|&a| {
        let mut b = [0u8; 3];
        m.mem.read(a, &mut b).is_ok() && b == kvm_backend::guest_debug::VMCALL
    });
    assert!(!sites.is_empty() && vmcall, "{sites:#x?}");
    // Without the sites, the replay lets KVM's handler answer that VMCALL
    // (-ENOSYS): the guest goes another way.
    let mut wrong = log.clone();
    wrong.header.hypercalls = Hypercalls::PortStub { port: 0xe8, sites: vec![] };
    let (replayed, _, _) = replay_on_interp(&kernel, 1, &wrong);
    assert!(matches!(replayed, Replayed::Diverged(_)), "{replayed:?}");
}

#[test]
fn xen_events_computing_time_with_rdtsc_is_reported_as_a_divergence() {
    let Some(vm) = kvm("xen_events_computing_time_with_rdtsc_is_reported_as_a_divergence") else { return };
    // The stock guest computes "now" from the pvclock and RDTSC between
    // exits: the deadline it writes into its hypercall arguments differs.
    let kernel = xen::xen_events_via(HypercallEntry::Page).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = record_on_kvm(&vm, &kernel, 1, &dir.path().join("kvm.log"));
    assert_eq!(rec.output, xen::XEN_EVENTS_EXPECTED);
    let (replayed, output, _) = replay_on_interp(&kernel, 1, &rec.log);
    // Where it shows depends on the host's timing: in RAM at the end (the
    // arguments), or in an exit (the timer fired at a different moment).
    let Replayed::Diverged(_) = replayed else { panic!("not detected: {replayed:?}") };
    assert!(rec.output.starts_with(&output), "the replay printed only what KVM printed: {output:?}");
}

const VECTOR: u32 = 0x40;

/// A LAPIC periodic timer, an IDT handler counting ticks, and a main loop
/// that waits with HLT until `ticks` have come; with `rdtsc`, it then prints
/// the TSC it reads (a value that exists only between exits).
fn hlt_loop_guest(ticks: u32, rdtsc: bool) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let count = counting_timer_prologue(&mut g, VECTOR)?;
    apic_write(&mut g, 0x320, VECTOR | 1 << 17)?; // periodic
    apic_write(&mut g, 0x380, 500_000)?; // 0.5 ms at 1 GHz
    let (mut top, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.set_label(&mut top)?;
    g.a.cli()?;
    g.a.cmp(dword_ptr(count), ticks)?;
    g.a.jae(done)?;
    g.a.sti()?;
    g.a.hlt()?; // in STI's shadow: no interrupt is lost in between
    g.a.jmp(top)?;
    g.a.set_label(&mut done)?;
    apic_write(&mut g, 0x380, 0)?; // stop the timer
    g.print(&format!("{ticks} ticks\n"))?;
    if rdtsc {
        g.a.rdtsc()?;
        g.a.shl(rdx, 32)?;
        g.a.or(rax, rdx)?;
        g.print("tsc ")?;
        g.print_hex()?;
        g.print("\n")?;
    }
    g.exit(0)?;
    g.build(Boot::Pvh)
}

#[test]
fn a_lapic_timer_hlt_loop_recorded_on_kvm_replays_on_the_interpreter() {
    if kvm("a_lapic_timer_hlt_loop_recorded_on_kvm_replays_on_the_interpreter").is_none() {
        return;
    }
    let kernel = hlt_loop_guest(5, false).unwrap();
    expect_identical("hlt loop", &kernel, 1, "5 ticks\n", StopReason::DebugExit(1));
}

#[test]
fn a_guest_printing_its_tsc_is_reported_as_a_divergence() {
    let Some(vm) = kvm("a_guest_printing_its_tsc_is_reported_as_a_divergence") else { return };
    let kernel = hlt_loop_guest(2, true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = record_on_kvm(&vm, &kernel, 1, &dir.path().join("kvm.log"));
    assert!(rec.output.starts_with("2 ticks\ntsc "), "{}", rec.output);
    let (replayed, _, _) = replay_on_interp(&kernel, 1, &rec.log);
    let Replayed::Diverged(d) = replayed else { panic!("not detected: {replayed:?}") };
    // The TSC the interpreter reads between exits is its own: the first
    // digit printed differently is an exit (a port write) the log does not
    // have.
    let text = d.differences.join("\n");
    assert!(text.contains("IoOut"), "names the differing exit: {d}");
    assert!(text.contains("the recorded run exited with"), "{d}");
}

#[test]
fn two_vcpus_recorded_on_kvm_replay_on_the_interpreter() {
    if kvm("two_vcpus_recorded_on_kvm_replay_on_the_interpreter").is_none() {
        return;
    }
    // vCPU 0 starts vCPU 1 (VCPUOP_initialise, VCPUOP_up); they meet
    // through shared memory and hypercalls.
    let kernel = xen::xen_two_vcpus_via(HypercallEntry::Page).unwrap();
    expect_identical("two vcpus", &kernel, 2, xen::XEN_TWO_VCPUS_EXPECTED, StopReason::DebugExit(1));
}

#[test]
fn an_interrupt_taken_where_kvm_preempted_the_guest_is_reported() {
    let Some(vm) = kvm("an_interrupt_taken_where_kvm_preempted_the_guest_is_reported") else { return };
    let kernel = hlt_loop_guest(2, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut log = record_on_kvm(&vm, &kernel, 1, &dir.path().join("kvm.log")).log;
    // Make the log say that KVM preempted the guest where it had halted,
    // and then delivered the timer's interrupt there: an interrupt at a
    // point between exits, which no replay can place.
    let ready_after = |records: &[Record], k: usize| {
        records[k + 1..]
            .iter()
            .take_while(|r| !matches!(r, Record::Answered { input: Input::KvmExit(_), .. }))
            .any(|r| matches!(r, Record::Answered { input: Input::KvmReady { ready: true, .. }, .. }))
    };
    let k = (0..log.records.len())
        .find(|&k| {
            matches!(&log.records[k], Record::Answered { input: Input::KvmExit(s), .. } if s.exit == VcpuExit::Halt)
                && ready_after(&log.records, k)
        })
        .expect("a halt the timer's interrupt ended");
    if let Record::Answered { input: Input::KvmExit(s), .. } = &mut log.records[k] {
        s.exit = VcpuExit::BudgetExhausted;
    }
    // A recording takes no checkpoint while a vCPU is preempted.
    let mut n = 0;
    log.records.retain(|r| {
        n += 1;
        n <= k || !matches!(r, Record::Checkpoint(_))
    });
    let (replayed, _, _) = replay_on_interp(&kernel, 1, &log);
    let Replayed::Diverged(d) = replayed else { panic!("not detected: {replayed:?}") };
    // Found where the replay reaches the halt the log no longer has.
    assert!(d.differences.iter().any(|l| l.contains("delivered an interrupt before this exit")), "{d}");
}

/// Prints, computes for `iterations` loop passes (two instructions each, no
/// exit), prints again and exits.
fn compute_guest(iterations: u32) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    g.print("a")?;
    let mut top = g.a.create_label();
    g.a.mov(ecx, iterations)?;
    g.a.set_label(&mut top)?;
    g.a.dec(ecx)?;
    g.a.jnz(top)?;
    g.print("b")?;
    g.exit(0)?;
    g.build(Boot::Pvh)
}

#[test]
fn a_tampered_exit_tsc_is_reported_within_the_tsc_bound() {
    let Some(vm) = kvm("a_tampered_exit_tsc_is_reported_within_the_tsc_bound") else { return };
    use sim_core::machine::{EXIT_SEARCH_LIMIT, MAX_INSNS_PER_TICK};
    // 300,000 instructions between the two prints: more than the floor.
    let iterations = 150_000;
    let kernel = compute_guest(iterations).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = record_on_kvm(&vm, &kernel, 1, &dir.path().join("kvm.log"));
    assert_eq!(rec.output, "ab");
    // Untampered, the TSC the loop took on KVM is room enough.
    let (replayed, output, _) = replay_on_interp(&kernel, 1, &rec.log);
    assert!(matches!(replayed, Replayed::Identical { .. }), "{replayed:?}");
    assert_eq!(output, "ab");
    // Make the log say the loop took 100 TSC ticks: no CPU retires 300,000 instructions in that, so the replay gives
    // up after the floor.
    let mut log = rec.log.clone();
    let out = |c: u8| VcpuExit::IoOut { port: 0xe9, size: 1, data: c as u32 };
    let exit_at = |log: &Log, k: usize| match &log.records[k] {
        Record::Answered { input: Input::KvmExit(s), .. } => Some(*s),
        _ => None,
    };
    let a = (0..log.records.len()).find(|&k| exit_at(&log, k).is_some_and(|s| s.exit == out(b'a'))).expect("a");
    let b = (a..log.records.len()).find(|&k| exit_at(&log, k).is_some_and(|s| s.exit == out(b'b'))).expect("b");
    // KVM's preemptions in the loop move into those 100 ticks too, and so
    // do the stamps that name their times (machine time is the TSC seen).
    let a_tsc = exit_at(&log, a).unwrap().tsc;
    let mut moved = std::collections::HashMap::new();
    let mut n = 0;
    for r in &mut log.records[a + 1..=b] {
        if let Record::Answered { input: Input::KvmExit(s), .. } = r {
            n += 1;
            let tsc = a_tsc + n.min(99);
            moved.insert(s.tsc, tsc);
            s.tsc = tsc;
        }
    }
    if let Record::Answered { input: Input::KvmExit(s), .. } = &mut log.records[b] {
        s.tsc = a_tsc + 100;
    }
    for r in &mut log.records[a + 1..=b] {
        if let Record::Answered { at, .. } | Record::Polled { at, .. } = r {
            at.now_ns = moved.get(&at.now_ns).copied().unwrap_or(at.now_ns);
        }
    }
    assert!(100 * MAX_INSNS_PER_TICK < EXIT_SEARCH_LIMIT && EXIT_SEARCH_LIMIT < 2 * iterations as u64);
    let (replayed, output, m) = replay_on_interp(&kernel, 1, &log);
    let Replayed::Diverged(d) = replayed else { panic!("not detected: {replayed:?}") };
    assert_eq!(output, "a");
    let text = d.differences.join("\n");
    assert!(text.contains(&format!("no exit within {EXIT_SEARCH_LIMIT} instructions")), "{d}");
    // The replay ran the floor's worth of instructions past the first
    // print, and no more: at most what the whole guest takes with one pass
    // of its loop on top.
    let whole = xensim_tests::boot(compute_guest(1).unwrap(), &Default::default());
    assert_eq!(whole.output, "ab");
    let retired = m.vcpu(0).retired_instructions().unwrap();
    assert!((EXIT_SEARCH_LIMIT..EXIT_SEARCH_LIMIT + whole.instructions).contains(&retired), "retired {retired}");
}

/// replay.rs's recorded serial input, on KVM: the input the guest polled
/// for (one exit a poll) is in the log, and the interpreter replays the
/// run from the log alone.
#[test]
fn serial_input_recorded_on_kvm_replays_without_the_input_present() {
    let Some(vm) = kvm("serial_input_recorded_on_kvm_replays_without_the_input_present") else { return };
    let kernel = xensim::guest::programs::serial_echo().unwrap();
    let inputs = vec![(40, Input::Serial(b"kvm ".to_vec())), (200, Input::Serial(b"echo.".to_vec()))];
    let dir = tempfile::tempdir().unwrap();
    let door = Box::new(sim_core::door::ScriptDoor::new(inputs));
    let rec = record_on_kvm_with(&vm, &kernel, 1, &dir.path().join("kvm.log"), door);
    assert_eq!(rec.output, xensim::guest::programs::serial_echo_expected(b"kvm echo."));
    assert!(rec.log.records.iter().any(|r| matches!(r, Record::Polled { input: Input::Serial(_), .. })));
    let (replayed, output, m) = replay_on_interp(&kernel, 1, &rec.log);
    assert!(matches!(replayed, Replayed::Identical { stop, .. } if stop == rec.stop), "{replayed:?}");
    assert_eq!(output, rec.output);
    assert_eq!(m.digest().hash(), end_hash(&rec.log));
}
