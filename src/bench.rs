//! `xensim bench`: speed on built-in workloads. Prints one `name: value unit`
//! line per figure. Wall time is read here, outside any guest, and never
//! reaches guest-visible state.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{MachineConfig, StopReason};
use xen_model::xenstore::bench as xs_bench;

mod lockstep;
use lockstep::{lockstep, Job, Stopwatch};
use std::sync::atomic::Ordering;

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
    measure: fn(&crate::Cpus, u64, u64) -> Result<Sampled, String>,
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
        measure: |c, s, d| one(guest_mips(c, xensim::guest::programs::bench_alu(work(c, 15_000_000 * s, d)))),
    },
    Bench {
        name: "interp-memcpy-mips",
        unit: "M insn/s",
        measure: |c, s, d| one(guest_mips(c, xensim::guest::programs::bench_memcpy(1 << 20, work(c, 40 * s, d)))),
    },
];

const KVM_BENCHES: &[Bench] = &[
    Bench {
        name: "kvm-alu-mips",
        unit: "M insn/s",
        measure: |c, s, d| one(guest_mips(c, xensim::guest::programs::bench_alu(work(c, 15_000_000 * s, d)))),
    },
    Bench {
        name: "kvm-memcpy-mips",
        unit: "M insn/s",
        measure: |c, s, d| one(guest_mips(c, xensim::guest::programs::bench_memcpy(64 << 10, work(c, 4000 * s, d)))),
    },
    Bench {
        name: "kvm-exit-rtt-us",
        unit: "us",
        measure: |_, s, _| one(kvm_backend::measure::pio_exit_rtt_us(2000 * s as u32).map_err(|e| e.to_string())),
    },
    Bench {
        name: "kvm-hypercall-rtt-us",
        unit: "us",
        measure: |_, s, _| one(kvm_backend::measure::hypercall_rtt_us(2000 * s as u32).map_err(|e| e.to_string())),
    },
];

/// Record/replay and snapshot figures (interpreter only): the CPU-bound ALU
/// guest run plainly, recorded and replayed in one process.
const REPLAY_BENCHES: &[Bench] = &[
    Bench {
        name: "record-overhead-pct",
        unit: "%",
        measure: |_, s, d| replay_figures(s, d).map(|f| f.record_overhead_pct),
    },
    Bench {
        name: "log-bytes-per-minsn",
        unit: "bytes/M insn",
        measure: |_, s, d| one(replay_figures(s, d).map(|f| f.log_bytes_per_minsn)),
    },
    Bench {
        name: "replay-speed-ratio",
        unit: "x",
        measure: |_, s, d| replay_figures(s, d).map(|f| f.replay_speed_ratio),
    },
    Bench { name: "snapshot-restore-ms", unit: "ms", measure: |c, s, _| one(snapshot_restore_ms(c, s)) },
    Bench { name: "seek-ms", unit: "ms", measure: |_, _, _| one(seek_ms()) },
];

/// Recording and snapshot figures on KVM. A KVM log replays on the
/// interpreter, so a replay-speed ratio would compare two CPUs; it is not
/// given. Checkpoints on KVM count exits, of which the CPU-bound guest has
/// few: the overhead is what recording costs such a guest there.
const KVM_REPLAY_BENCHES: &[Bench] = &[
    Bench { name: "kvm-record-overhead-pct", unit: "%", measure: |c, s, d| kvm_record_overhead_pct(c, s, d) },
    Bench { name: "kvm-snapshot-restore-ms", unit: "ms", measure: |c, s, _| one(snapshot_restore_ms(c, s)) },
];

const XENSTORE_BENCHES: &[Bench] = &[
    Bench {
        name: "xenstore-ops-per-s",
        unit: "ops/s",
        measure: |_, s, _| Ok(Sampled::of(vec![xs_bench::bench_ops(1_000_000 * s as usize).ops_per_s()])),
    },
    Bench {
        name: "xenstore-socket-rtt-us",
        unit: "us",
        measure: |_, s, _| {
            one(xs_bench::bench_socket_rtt(20_000 * s as usize)
                .map(|d| d.as_secs_f64() * 1e6)
                .map_err(|e| e.to_string()))
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
        crate::Cpus::Kvm => (KVM_BENCHES, KVM_REPLAY_BENCHES),
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
            // Ratios near 1 need two decimals to say which side they are on.
            Ok(v) => {
                let p = if b.unit == "x" { 2 } else { 1 };
                print!("{}: {:.p$} {}", b.name, v.value, b.unit);
                if v.lockstep {
                    print!(" (median of {} runs in lockstep; range {:.p$} .. {:.p$})", v.n, v.min, v.max);
                } else if v.n > 1 {
                    print!(
                        " (best of {} runs; per-run median {:.p$}, range {:.p$} .. {:.p$})",
                        v.n, v.median, v.min, v.max
                    );
                }
                println!();
            }
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

/// Repetitions of the runs a figure compares, each timed by its thread's
/// CPU time. On the interpreter the plain, recorded and replayed runs of a
/// repetition go in lockstep (see `lockstep`) and a figure is the median of
/// the repetitions' ratios. On KVM, which cannot count instructions to take
/// turns by, the runs alternate whole and a figure compares the least time
/// of each kind: load from elsewhere only ever adds time, so the least is
/// the nearest to a kind's own cost.
const REPS: usize = 8;

/// A figure, and the median and range of the samples it comes from.
#[derive(Clone, Copy, Debug)]
struct Sampled {
    value: f64,
    median: f64,
    min: f64,
    max: f64,
    /// How many samples.
    n: usize,
    /// `value` is the median of runs in lockstep (see `lockstep`), not the
    /// best.
    lockstep: bool,
}

impl Sampled {
    fn of(mut samples: Vec<f64>) -> Sampled {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => samples[n / 2],
            _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
        };
        let (min, max) = (samples.first().copied(), samples.last().copied());
        Sampled {
            value: median,
            median,
            min: min.unwrap_or(f64::NAN),
            max: max.unwrap_or(f64::NAN),
            n,
            lockstep: false,
        }
    }

    /// `value`, with the median and range of `samples`.
    fn with_samples(value: f64, samples: Vec<f64>) -> Sampled {
        Sampled { value, ..Sampled::of(samples) }
    }

    /// The median of `samples` from runs in lockstep, with their range.
    fn lockstep(samples: Vec<f64>) -> Sampled {
        Sampled { lockstep: true, ..Sampled::of(samples) }
    }
}

/// A figure measured once.
fn one(v: Result<f64, String>) -> Result<Sampled, String> {
    v.map(|v| Sampled::of(vec![v]))
}

#[derive(Clone)]
struct ReplayFigures {
    record_overhead_pct: Sampled,
    log_bytes_per_minsn: f64,
    replay_speed_ratio: Sampled,
}

/// Plain run, recorded run and replay of the same CPU-bound guest, measured
/// once per process and shared by the three figures.
fn replay_figures(scale: u64, divide: u64) -> Result<ReplayFigures, String> {
    static FIGURES: std::sync::OnceLock<Result<ReplayFigures, String>> = std::sync::OnceLock::new();
    FIGURES.get_or_init(|| measure_replay(scale, divide)).clone()
}

fn bench_machine(image: &[u8]) -> Result<sim_core::machine::Machine, String> {
    bench_machine_on(&crate::Cpus::Interp, image)
}

fn bench_machine_on(cpus: &crate::Cpus, image: &[u8]) -> Result<sim_core::machine::Machine, String> {
    let mut m = cpus.machine(MachineConfig { memory_mib: 64, ..Default::default() })?;
    m.set_console(Box::new(std::io::sink()));
    let kernel = BootImage { name: "benchmark guest".into(), bytes: image.to_vec() };
    m.boot(BootConfig { kernel, modules: vec![], cmdline: String::new(), rsdp: 0, reserved: Vec::new() })
        .map_err(|e| e.to_string())?;
    Ok(m)
}

/// The header `xensim run --record` would write for the benchmark guest.
fn bench_header(image: &[u8], checkpoint_every: u64) -> replay::Header {
    let c = MachineConfig { memory_mib: 64, ..Default::default() };
    replay::Header {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: replay::LogConfig::of(&c),
        cmdline: String::new(),
        images: vec![replay::ImageHash::of("benchmark guest", image)],
        checkpoint_every,
        hypercalls: replay::Hypercalls::Vmcall,
    }
}

/// A temporary file removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("xensim-bench-{}-{what}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// CPU time this thread has used (user and system). The record/replay
/// figures compare runs on one thread by it, so time the host gives to
/// other processes while a run waits does not count.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Record `image` to `path` on `cpus`, timed by `watch`.
fn timed_record(
    cpus: &crate::Cpus,
    image: &[u8],
    path: &std::path::Path,
    checkpoint_every: u64,
    watch: &mut Stopwatch,
) -> Result<(), String> {
    let header = bench_header(image, checkpoint_every);
    let mut m = bench_machine_on(cpus, image)?;
    // Logs are never overwritten: this one is the benchmark's own.
    let _ = std::fs::remove_file(path);
    let mut log = replay::LogWriter::create(path, &header).map_err(|e| e.to_string())?;
    watch.begin();
    let door = Box::new(sim_core::door::ClosedDoor);
    replay::record_with(&mut m, door, &mut log, checkpoint_every, &mut |m, _| {
        watch.boundary(m.retired_instructions());
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    log.finish().map(|_| ()).map_err(|e| e.to_string())
}

/// A plain run of `image` on `cpus`, timed by `watch`: the instructions
/// it retired.
fn timed_plain(cpus: &crate::Cpus, image: &[u8], watch: &mut Stopwatch) -> Result<u64, String> {
    let mut m = bench_machine_on(cpus, image)?;
    watch.begin();
    // `Machine::run`, with the round boundaries seen.
    while m.run_round().map_err(|e| e.to_string())?.is_none() {
        watch.boundary(m.retired_instructions());
    }
    Ok(m.retired_instructions())
}

/// A replay of `log` on a fresh machine, timed by `watch`.
fn timed_replay(image: &[u8], log: &replay::Log, watch: &mut Stopwatch) -> Result<(), String> {
    let mut m = bench_machine(image)?;
    watch.begin();
    let outcome = replay::replay(&mut m, log, None, &mut |icount| watch.boundary(icount)).map_err(|e| e.to_string())?;
    if !matches!(outcome, replay::Replayed::Identical { .. }) {
        return Err("the benchmark's replay was not identical".into());
    }
    Ok(())
}

/// One run timed on its own: its thread CPU time.
fn alone(f: impl FnOnce(&mut Stopwatch) -> Result<(), String>) -> Result<Duration, String> {
    let mut watch = Stopwatch::new();
    f(&mut watch)?;
    Ok(watch.stop())
}

/// How much longer `recorded` took than `plain`, in percent.
fn overhead_pct(recorded: Duration, plain: Duration) -> f64 {
    (recorded.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0
}

/// The CLI's default checkpoint interval.
const CHECKPOINT_EVERY: u64 = 10_000_000;

fn measure_replay(scale: u64, divide: u64) -> Result<ReplayFigures, String> {
    let interp = &crate::Cpus::Interp;
    let image =
        xensim::guest::programs::bench_alu(work(interp, 5_000_000 * scale, divide)).map_err(|e| e.to_string())?;
    // An untimed recording first: the log every replay reads, and a warm-up.
    let first = TempFile::new("first.log");
    alone(|w| timed_record(interp, &image, &first.0, CHECKPOINT_EVERY, w))?;
    let bytes = std::fs::metadata(&first.0).map_err(|e| e.to_string())?.len();
    let log = replay::Log::read(&first.0).map_err(|e| e.to_string())?;
    let again = TempFile::new("again.log");
    let insns = std::sync::atomic::AtomicU64::new(0);
    let (mut overhead, mut speed) = (Vec::new(), Vec::new());
    for rep in 0..REPS {
        // The three kinds in lockstep. Turns go round in a cycle, so the
        // order alternates between the two cycles of three (each kind then
        // follows each other kind equally often) and rotates which goes
        // first.
        let first = rep / 2 % 3;
        let step = if rep % 2 == 0 { 1 } else { 2 };
        let order: Vec<usize> = (0..3).map(|k| (first + k * step) % 3).collect();
        let (image, log, again, insns) = (&image, &log, &again, &insns);
        let jobs: Vec<Job> = order
            .iter()
            .map(|&kind| -> Job {
                Box::new(move |w: &mut Stopwatch| {
                    let _spacer = lockstep::spacer(rep * 3 + kind);
                    match kind {
                        0 => timed_plain(interp, image, w).map(|n| insns.store(n, Ordering::Relaxed)),
                        1 => timed_record(interp, image, &again.0, CHECKPOINT_EVERY, w),
                        _ => timed_replay(image, log, w),
                    }
                })
            })
            .collect();
        let mut t = [Duration::ZERO; 3];
        for (kind, time) in order.into_iter().zip(lockstep(jobs)?) {
            t[kind] = time;
        }
        overhead.push(overhead_pct(t[1], t[0]));
        speed.push(t[0].as_secs_f64() / t[2].as_secs_f64());
    }
    let insns = insns.load(Ordering::Relaxed);
    Ok(ReplayFigures {
        record_overhead_pct: Sampled::lockstep(overhead),
        log_bytes_per_minsn: bytes as f64 / (insns as f64 / 1e6),
        replay_speed_ratio: Sampled::lockstep(speed),
    })
}

/// Plain and recorded runs of the CPU-bound guest on `cpus`, interleaved
/// `REPS` times and compared best against best whole run (KVM cannot count
/// instructions, so its runs have no segments).
fn kvm_record_overhead_pct(cpus: &crate::Cpus, scale: u64, divide: u64) -> Result<Sampled, String> {
    let image = xensim::guest::programs::bench_alu(work(cpus, 5_000_000 * scale, divide)).map_err(|e| e.to_string())?;
    let log = TempFile::new("kvm.log");
    let (mut best, mut samples) = ([Duration::MAX; 2], Vec::new());
    for rep in 0..REPS {
        let mut t = [Duration::ZERO; 2];
        for k in 0..2 {
            let kind = (rep + k) % 2;
            t[kind] = match kind {
                0 => alone(|w| timed_plain(cpus, &image, w).map(|_| ()))?,
                _ => alone(|w| timed_record(cpus, &image, &log.0, CHECKPOINT_EVERY, w))?,
            };
            best[kind] = best[kind].min(t[kind]);
        }
        samples.push(overhead_pct(t[1], t[0]));
    }
    Ok(Sampled::with_samples(overhead_pct(best[1], best[0]), samples))
}

/// Restore a 64 MiB machine to a snapshot taken a few thousand instructions
/// earlier (few pages dirty since), through the in-memory snapshot store.
fn snapshot_restore_ms(cpus: &crate::Cpus, scale: u64) -> Result<f64, String> {
    let image = xensim::guest::programs::bench_alu(work(cpus, 1_000_000, 1)).map_err(|e| e.to_string())?;
    let mut m = bench_machine_on(cpus, &image)?;
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

/// A temporary directory removed (with its files) when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!("xensim-bench-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Instructions between the snapshots `seek-ms` seeks from.
const SEEK_SNAPSHOT_EVERY: u64 = 100_000_000;

/// `xensim replay LOG --until N` in process, as the CLI does it: read the
/// log, build the machine, restore the nearest earlier snapshot file, replay
/// forward to N. Returns the time taken and the icount reached.
fn timed_seek(image: &[u8], log_path: &std::path::Path, dir: &std::path::Path, until: u64) -> Result<Duration, String> {
    let t0 = Instant::now();
    let log = replay::Log::read(log_path).map_err(|e| e.to_string())?;
    let mut m = bench_machine(image)?;
    let stem = crate::file_stem(log_path);
    let start = xensim::snapshots::seek(&mut m, dir, &stem, until, &log.header.config, &log.header.images)?
        .map(|(_, start)| start);
    if start.is_none() {
        return Err(format!("no snapshot to seek from for icount {until}"));
    }
    let r = replay::replay_from(&mut m, &log, start, Some(until), &mut |_| {}, &mut |_, _| Ok(()))
        .map_err(|e| e.to_string())?;
    let elapsed = t0.elapsed();
    match r {
        replay::Replayed::Reached { icount, .. } if icount >= until => Ok(elapsed),
        other => Err(format!("seek to {until} ended with {other:?}")),
    }
}

/// The slowest of a few seeks in a recorded run of about 10^9 instructions
/// with snapshots every 10^8 (written by a replay, as `replay
/// --snapshot-every` does). The worst case is just before a snapshot: a
/// whole interval to replay after the restore.
fn seek_ms() -> Result<f64, String> {
    // 20 instructions a loop iteration: 10^9 instructions.
    let image = xensim::guest::programs::bench_alu(50_000_000).map_err(|e| e.to_string())?;
    let dir = TempDir::new("seek")?;
    let log_path = dir.0.join("seek.log");
    alone(|w| timed_record(&crate::Cpus::Interp, &image, &log_path, CHECKPOINT_EVERY, w))?;
    let log = replay::Log::read(&log_path).map_err(|e| e.to_string())?;
    let mut m = bench_machine(&image)?;
    let base = replay::SnapHeader {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: log.header.config.clone(),
        cmdline: String::new(),
        images: log.header.images.clone(),
        icount: 0,
        now_ns: 0,
        inputs_consumed: None,
        parent: None,
    };
    let stem = crate::file_stem(&log_path);
    let mut snapper =
        xensim::snapshots::Snapshotter::new(dir.0.clone(), stem, Some(SEEK_SNAPSHOT_EVERY), Vec::new(), base, 0);
    replay::replay_from(&mut m, &log, None, None, &mut |_| {}, &mut |m, n| {
        snapper.as_mut().map_or(Ok(()), |s| s.round(m, Some(n)))
    })
    .map_err(|e| e.to_string())?;
    let total = m.retired_instructions();
    // Snapshots land on the first round boundary at or past each multiple.
    let mut targets = vec![total / 2 + 12_345];
    for k in [3, 6, 9] {
        let snap = k * SEEK_SNAPSHOT_EVERY;
        if snap < total {
            targets.push(snap - 1);
        }
    }
    let mut worst = Duration::ZERO;
    for until in targets {
        worst = worst.max(timed_seek(&image, &log_path, &dir.0, until)?);
    }
    Ok(worst.as_secs_f64() * 1e3)
}
