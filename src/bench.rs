//! `xensim bench`: speed on built-in workloads. Prints one `name: value unit`
//! line per figure. Wall time is read here, outside any guest, and never
//! reaches guest-visible state.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{MachineConfig, StopReason};
use xen_model::xenstore::bench as xs_bench;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// CPU backend for the guest-loop figures.
    #[arg(long, value_enum, default_value_t = crate::Backend::Interp)]
    backend: crate::Backend,
    /// Only run benchmarks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Scale the work of every benchmark (1 = about a second each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    scale: u64,
    /// Divide the guest-loop work by this (profiling under valgrind/perf).
    #[arg(long, hide = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    divide: u64,
}

/// One figure: its name, unit, and how to measure it at a given scale.
struct Bench {
    name: &'static str,
    unit: &'static str,
    /// Arguments: the CPUs, the scale and the work divisor.
    measure: fn(&crate::Cpus, u64, u64) -> Result<f64, String>,
}

/// Guest-loop work per unit of --scale: about a second on the interpreter.
/// KVM on a host that emulates it runs near 1.5 M insn/s, so its loops are
/// a hundredth of that (the figure is a rate either way).
fn work(cpus: &crate::Cpus, n: u64, divide: u64) -> u64 {
    let n = (n / divide.max(1)).max(1);
    match cpus {
        crate::Cpus::Interp => n,
        crate::Cpus::Kvm => (n / 100).max(1),
    }
}

const INTERP_BENCHES: &[Bench] = &[
    Bench {
        name: "interp-alu-mips",
        unit: "M insn/s",
        measure: |c, s, d| guest_mips(c, xensim::guest::programs::bench_alu(work(c, 15_000_000 * s, d))),
    },
    Bench {
        name: "interp-memcpy-mips",
        unit: "M insn/s",
        measure: |c, s, d| guest_mips(c, xensim::guest::programs::bench_memcpy(1 << 20, work(c, 40 * s, d))),
    },
];

const KVM_BENCHES: &[Bench] = &[
    Bench {
        name: "kvm-alu-mips",
        unit: "M insn/s",
        measure: |c, s, d| guest_mips(c, xensim::guest::programs::bench_alu(work(c, 15_000_000 * s, d))),
    },
    Bench {
        name: "kvm-memcpy-mips",
        unit: "M insn/s",
        measure: |c, s, d| guest_mips(c, xensim::guest::programs::bench_memcpy(64 << 10, work(c, 4000 * s, d))),
    },
    Bench {
        name: "kvm-exit-rtt-us",
        unit: "us",
        measure: |_, s, _| kvm_backend::measure::pio_exit_rtt_us(2000 * s as u32).map_err(|e| e.to_string()),
    },
    Bench {
        name: "kvm-hypercall-rtt-us",
        unit: "us",
        measure: |_, s, _| kvm_backend::measure::hypercall_rtt_us(2000 * s as u32).map_err(|e| e.to_string()),
    },
];

/// Record/replay and snapshot figures (interpreter only): the CPU-bound ALU
/// guest run plainly, recorded and replayed in one process.
const REPLAY_BENCHES: &[Bench] = &[
    Bench {
        name: "record-overhead-pct",
        unit: "%",
        measure: |_, s, _| replay_figures(s).map(|f| f.record_overhead_pct),
    },
    Bench {
        name: "log-bytes-per-minsn",
        unit: "bytes/M insn",
        measure: |_, s, _| replay_figures(s).map(|f| f.log_bytes_per_minsn),
    },
    Bench { name: "replay-speed-ratio", unit: "x", measure: |_, s, _| replay_figures(s).map(|f| f.replay_speed_ratio) },
    Bench { name: "snapshot-restore-ms", unit: "ms", measure: |_, s, _| snapshot_restore_ms(s) },
];

const XENSTORE_BENCHES: &[Bench] = &[
    Bench {
        name: "xenstore-ops-per-s",
        unit: "ops/s",
        measure: |_, s, _| Ok(xs_bench::bench_ops(1_000_000 * s as usize).ops_per_s()),
    },
    Bench {
        name: "xenstore-socket-rtt-us",
        unit: "us",
        measure: |_, s, _| {
            xs_bench::bench_socket_rtt(20_000 * s as usize).map(|d| d.as_secs_f64() * 1e6).map_err(|e| e.to_string())
        },
    },
];

pub fn run(args: BenchArgs) -> ExitCode {
    let cpus = match crate::Cpus::open(args.backend) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xensim: {e}");
            return ExitCode::from(crate::status::USER_ERROR);
        }
    };
    let (guest_loops, replay_figures): (&[Bench], &[Bench]) = match cpus {
        crate::Cpus::Interp => (INTERP_BENCHES, REPLAY_BENCHES),
        crate::Cpus::Kvm => (KVM_BENCHES, &[]),
    };
    let selected: Vec<&Bench> = guest_loops
        .iter()
        .chain(replay_figures)
        .chain(XENSTORE_BENCHES)
        .filter(|b| args.filter.as_deref().is_none_or(|f| b.name.contains(f)))
        .collect();
    if selected.is_empty() {
        eprintln!("xensim: no benchmark matches --filter {:?}", args.filter.unwrap_or_default());
        return ExitCode::from(crate::status::USER_ERROR);
    }
    if cfg!(debug_assertions) {
        eprintln!("xensim: note: this is a debug build; measure with `cargo run --release -- bench`");
    }
    PROFILING.store(args.divide > 1, std::sync::atomic::Ordering::Relaxed);
    for b in selected {
        let progress = indicatif::ProgressBar::new_spinner().with_message(b.name);
        progress.enable_steady_tick(Duration::from_millis(100));
        let result = (b.measure)(&cpus, args.scale, args.divide);
        progress.finish_and_clear();
        match result {
            Ok(v) => println!("{}: {v:.1} {}", b.name, b.unit),
            Err(e) => {
                eprintln!("xensim: benchmark {}: {e}", b.name);
                return ExitCode::from(crate::status::INTERNAL);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Millions of guest instructions per second of wall time for a guest that
/// computes and then halts. Backends that cannot count instructions (KVM)
/// are credited with the count the interpreter retires for the same guest,
/// which is deterministic.
fn guest_mips(cpus: &crate::Cpus, image: Result<Vec<u8>, xensim::guest::GuestError>) -> Result<f64, String> {
    let image = image.map_err(|e| e.to_string())?;
    let (insns, elapsed) = run_to_halt(cpus, &image)?;
    let insns = match insns {
        Some(n) => n,
        None => run_to_halt(&crate::Cpus::Interp, &image)?.0.unwrap_or(0),
    };
    if PROFILING.load(std::sync::atomic::Ordering::Relaxed) {
        // Profilers divide host instructions by this count.
        eprintln!("xensim: guest instructions retired: {insns}");
    }
    Ok(insns as f64 / elapsed.as_secs_f64() / 1e6)
}

/// Set by the hidden `--divide` option: report retired counts for profilers.
static PROFILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn run_to_halt(cpus: &crate::Cpus, image: &[u8]) -> Result<(Option<u64>, Duration), String> {
    let kernel = BootImage { name: "benchmark guest".into(), bytes: image.to_vec() };
    let mut m = cpus.machine(MachineConfig { memory_mib: 64, ..Default::default() })?;
    m.set_console(Box::new(std::io::sink()));
    m.boot(BootConfig { kernel, modules: vec![], cmdline: String::new(), rsdp: 0, reserved: Vec::new() })
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let stop = m.run().map_err(|e| e.to_string())?;
    let elapsed = t0.elapsed();
    if stop != StopReason::Halted {
        return Err(format!("guest stopped with {stop:?} instead of halting"));
    }
    let counted = m.vcpu(0).retired_instructions().map(|_| m.retired_instructions());
    Ok((counted, elapsed))
}

struct ReplayFigures {
    record_overhead_pct: f64,
    log_bytes_per_minsn: f64,
    replay_speed_ratio: f64,
}

/// Plain run, recorded run and replay of the same CPU-bound guest, measured
/// once per process and shared by the three figures.
fn replay_figures(scale: u64) -> Result<ReplayFigures, String> {
    static FIGURES: std::sync::OnceLock<Result<(f64, f64, f64), String>> = std::sync::OnceLock::new();
    let r = FIGURES.get_or_init(|| measure_replay(scale)).clone()?;
    Ok(ReplayFigures { record_overhead_pct: r.0, log_bytes_per_minsn: r.1, replay_speed_ratio: r.2 })
}

fn bench_machine(image: &[u8]) -> Result<sim_core::machine::Machine, String> {
    let mut m = crate::Cpus::Interp.machine(MachineConfig { memory_mib: 64, ..Default::default() })?;
    m.set_console(Box::new(std::io::sink()));
    let kernel = BootImage { name: "benchmark guest".into(), bytes: image.to_vec() };
    m.boot(BootConfig { kernel, modules: vec![], cmdline: String::new(), rsdp: 0, reserved: Vec::new() })
        .map_err(|e| e.to_string())?;
    Ok(m)
}

fn measure_replay(scale: u64) -> Result<(f64, f64, f64), String> {
    let image = xensim::guest::programs::bench_alu(5_000_000 * scale).map_err(|e| e.to_string())?;
    // Plain.
    let mut m = bench_machine(&image)?;
    let t0 = Instant::now();
    m.run().map_err(|e| e.to_string())?;
    let plain = t0.elapsed();
    let insns = m.retired_instructions();
    // Recorded, with the CLI's default checkpoint interval.
    let path = std::env::temp_dir().join(format!("xensim-bench-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = MachineConfig { memory_mib: 64, ..Default::default() };
    let header = replay::Header {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: replay::LogConfig {
            cpus: c.cpus,
            memory_mib: c.memory_mib,
            quantum: c.quantum,
            max_instructions: c.max_instructions,
            vendor: c.vendor,
        },
        cmdline: String::new(),
        images: vec![replay::ImageHash::of("benchmark guest", &image)],
        checkpoint_every: 10_000_000,
        hypercalls: replay::Hypercalls::Vmcall,
    };
    let mut m = bench_machine(&image)?;
    let mut log = replay::LogWriter::create(&path, &header).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    replay::record(&mut m, Box::new(sim_core::door::ClosedDoor), &mut log, header.checkpoint_every)
        .map_err(|e| e.to_string())?;
    log.finish().map_err(|e| e.to_string())?;
    let recorded = t0.elapsed();
    let bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    // Replayed.
    let log = replay::Log::read(&path).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&path);
    let log = log?;
    let mut m = bench_machine(&image)?;
    let t0 = Instant::now();
    let outcome = replay::replay(&mut m, &log, None, &mut |_| {}).map_err(|e| e.to_string())?;
    let replayed = t0.elapsed();
    if !matches!(outcome, replay::Replayed::Identical { .. }) {
        return Err("the benchmark's replay was not identical".into());
    }
    let overhead = (recorded.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0;
    Ok((overhead, bytes as f64 / (insns as f64 / 1e6), plain.as_secs_f64() / replayed.as_secs_f64()))
}

/// Restore a 64 MiB machine to a snapshot taken a few thousand instructions
/// earlier (few pages dirty since), through the in-memory snapshot store.
fn snapshot_restore_ms(scale: u64) -> Result<f64, String> {
    let image = xensim::guest::programs::bench_alu(1_000_000).map_err(|e| e.to_string())?;
    let mut m = bench_machine(&image)?;
    let mut store = replay::SnapshotStore::new();
    let rounds = 20 * scale;
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        for _ in 0..3 {
            m.run_round().map_err(|e| e.to_string())?;
        }
        store.observe(&mut m, 0);
        let j = store.len() - 1;
        m.run_round().map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        store.restore(&mut m, j)?;
        total += t0.elapsed();
    }
    Ok(total.as_secs_f64() * 1e3 / rounds as f64)
}
