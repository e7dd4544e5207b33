//! `xensim bench`: interpreter speed on built-in guest loops. Prints one
//! `name: value unit` line per figure. Wall time is read here, outside the
//! guest, and never reaches guest-visible state.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{Machine, MachineConfig, StopReason};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only run benchmarks whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Scale the work of every benchmark (1 = about a second each at 150 MIPS).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    scale: u64,
}

struct Bench {
    name: &'static str,
    image: fn(u64) -> Result<Vec<u8>, xensim::guest::GuestError>,
}

const BENCHES: &[Bench] = &[
    Bench { name: "interp-alu-mips", image: |s| xensim::guest::programs::bench_alu(15_000_000 * s) },
    Bench { name: "interp-memcpy-mips", image: |s| xensim::guest::programs::bench_memcpy(1 << 20, 40 * s) },
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
        let result = measure(b, args.scale);
        progress.finish_and_clear();
        match result {
            Ok((insns, elapsed)) => {
                println!("{}: {:.1} M insn/s", b.name, insns as f64 / elapsed.as_secs_f64() / 1e6);
                println!("{}-instructions: {} insn", b.name.trim_end_matches("-mips"), insns);
            }
            Err(e) => {
                eprintln!("xensim: benchmark {}: {e}", b.name);
                return ExitCode::from(crate::status::INTERNAL);
            }
        }
    }
    ExitCode::SUCCESS
}

fn measure(b: &Bench, scale: u64) -> Result<(u64, Duration), String> {
    let mut m = Machine::new(MachineConfig { memory_mib: 64, ..Default::default() }, &mut |id, n, cpuid| {
        Box::new(x86_interp::Interpreter::new(id, n, cpuid))
    })
    .map_err(|e| e.to_string())?;
    m.set_console(Box::new(std::io::sink()));
    let kernel = BootImage { name: b.name.into(), bytes: (b.image)(scale).map_err(|e| e.to_string())? };
    m.boot(BootConfig { kernel, modules: vec![], cmdline: String::new(), rsdp: 0 }).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let stop = m.run().map_err(|e| e.to_string())?;
    let elapsed = t0.elapsed();
    if stop != StopReason::Halted {
        return Err(format!("guest stopped with {stop:?} instead of halting"));
    }
    Ok((m.retired_instructions(), elapsed))
}
