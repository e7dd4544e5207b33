//! `xensim bench`: speed on built-in workloads. Prints one `name: value unit`
//! line per figure. Wall time is read here, outside any guest, and never
//! reaches guest-visible state.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::xenstore::bench as xs_bench;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only run benchmarks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Scale the work of every benchmark (1 = about a second each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    scale: u64,
}

/// One figure: its name, unit, and how to measure it at a given scale.
struct Bench {
    name: &'static str,
    unit: &'static str,
    measure: fn(u64) -> Result<f64, String>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "interp-alu-mips",
        unit: "M insn/s",
        measure: |s| guest_mips(xensim::guest::programs::bench_alu(15_000_000 * s)),
    },
    Bench {
        name: "interp-memcpy-mips",
        unit: "M insn/s",
        measure: |s| guest_mips(xensim::guest::programs::bench_memcpy(1 << 20, 40 * s)),
    },
    Bench {
        name: "xenstore-ops-per-s",
        unit: "ops/s",
        measure: |s| Ok(xs_bench::bench_ops(1_000_000 * s as usize).ops_per_s()),
    },
    Bench {
        name: "xenstore-socket-rtt-us",
        unit: "us",
        measure: |s| {
            xs_bench::bench_socket_rtt(20_000 * s as usize).map(|d| d.as_secs_f64() * 1e6).map_err(|e| e.to_string())
        },
    },
];

pub fn run(args: BenchArgs) -> ExitCode {
    let selected: Vec<&Bench> =
        BENCHES.iter().filter(|b| args.filter.as_deref().is_none_or(|f| b.name.contains(f))).collect();
    if selected.is_empty() {
        eprintln!("xensim: no benchmark matches --filter {:?}", args.filter.unwrap_or_default());
        return ExitCode::from(crate::status::USER_ERROR);
    }
    if cfg!(debug_assertions) {
        eprintln!("xensim: note: this is a debug build; measure with `cargo run --release -- bench`");
    }
    for b in selected {
        let progress = indicatif::ProgressBar::new_spinner().with_message(b.name);
        progress.enable_steady_tick(Duration::from_millis(100));
        let result = (b.measure)(args.scale);
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
/// computes and then halts.
fn guest_mips(image: Result<Vec<u8>, xensim::guest::GuestError>) -> Result<f64, String> {
    let kernel = BootImage { name: "benchmark guest".into(), bytes: image.map_err(|e| e.to_string())? };
    let mut m = Machine::new(MachineConfig { memory_mib: 64, ..Default::default() }, &mut |id, n, cpuid| {
        Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
    })
    .map_err(|e| e.to_string())?;
    m.set_console(Box::new(std::io::sink()));
    m.boot(BootConfig { kernel, modules: vec![], cmdline: String::new(), rsdp: 0 }).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let stop = m.run().map_err(|e| e.to_string())?;
    let elapsed: Duration = t0.elapsed();
    if stop != StopReason::Halted {
        return Err(format!("guest stopped with {stop:?} instead of halting"));
    }
    Ok(m.retired_instructions() as f64 / elapsed.as_secs_f64() / 1e6)
}
