//! `xensim`: the command-line program.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use sim_core::platform::ShutdownReason;
use xen_model::hypercall_page::HypercallGate;
use xen_model::platform::{XenConfig, XenPlatform};

mod bench;

/// Exit statuses of `xensim run` besides the guest's own isa-debug-exit
/// status (which is always odd, as QEMU makes it).
pub mod status {
    /// Bad user input: a missing or malformed file, a bad option value.
    pub const USER_ERROR: u8 = 4;
    /// The guest triple-faulted.
    pub const TRIPLE_FAULT: u8 = 6;
    /// --max-instructions ran out before the guest stopped.
    pub const INSTRUCTION_LIMIT: u8 = 8;
    /// The simulator itself failed (a backend error).
    pub const INTERNAL: u8 = 10;
    /// The guest shut down reporting a crash (SCHEDOP_shutdown crash or watchdog).
    pub const GUEST_CRASH: u8 = 12;
}

#[derive(Parser, Debug)]
#[command(name = "xensim", version, about = "Deterministic full-system x86 simulator for Xen guests")]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest (PVH ELF or Multiboot kernel); with no --kernel, the built-in demo guest.
    Run(RunArgs),
    /// Measure speed on built-in workloads; prints `name: value unit` lines.
    Bench(bench::BenchArgs),
    /// Serve a stand-alone xenstore (no guest) on a Unix socket, for host tools
    /// (`XENSTORED_PATH=PATH xenstore-ls`).
    Xenstore(XenstoreArgs),
    /// Replay fuzz inputs (files saved by cargo fuzz, or a corpus directory)
    /// through a fuzz target on stable Rust; prints each decoded operation
    /// sequence and whether an invariant broke. Exit status 1 if one did.
    FuzzRepro(FuzzReproArgs),
}

#[derive(clap::Args, Debug)]
struct FuzzReproArgs {
    /// hypercall, xenstore_wire, evtchn, gnttab or interp.
    target: String,
    /// Input files or directories of them.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Print only failures (not every decoded input).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct XenstoreArgs {
    /// Path of the Unix socket to create (mode 0600). An existing file that is
    /// not a socket is never replaced.
    #[arg(long)]
    socket: PathBuf,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kernel image: an ELF with a Xen PVH entry note, or a Multiboot v1 kernel.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Module files; for Multiboot kernels a comma-separated list, as QEMU takes it.
    #[arg(long)]
    initrd: Option<String>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..=1 << 20))]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    cpus: u32,
    /// CPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Interp)]
    backend: Backend,
    /// Stop after this many instructions (all vCPUs together; interpreter only).
    #[arg(long)]
    max_instructions: Option<u64>,
    /// Log every hypercall with its decoded arguments and result (to stderr).
    #[arg(long)]
    trace_hypercalls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The software x86 interpreter (deterministic, exact instruction counts).
    Interp,
    /// The host's KVM (/dev/kvm): real speed on hardware virtualization.
    Kvm,
}

/// The vCPU backend, ready to build machines.
pub enum Cpus {
    Interp,
    /// KVM: each machine gets a VM of its own (vCPU ids are per VM).
    Kvm,
}

impl Cpus {
    /// Check the backend is usable (for KVM: /dev/kvm opens and a VM can be
    /// created), reporting what it found.
    pub fn open(backend: Backend) -> Result<Cpus, String> {
        match backend {
            Backend::Interp => Ok(Cpus::Interp),
            Backend::Kvm => {
                let vm = kvm_backend::KvmVm::new().map_err(|e| e.to_string())?;
                tracing::info!(caps = ?vm.caps(), "KVM");
                tracing::info!("KVM hypercall interception: {}", vm.hypercall_strategy().describe());
                Ok(Cpus::Kvm)
            }
        }
    }

    /// How the Xen platform's hypercall page must enter the hypervisor.
    pub fn hypercall_gate(&self) -> HypercallGate {
        match self {
            Cpus::Interp => HypercallGate::Native,
            Cpus::Kvm => HypercallGate::Port(sim_core::layout::HYPERCALL_PORT as u8),
        }
    }

    /// A machine of `config` on this backend with the Xen platform attached.
    pub fn machine(&self, config: MachineConfig) -> Result<Machine, String> {
        let xen = XenConfig { hypercall_gate: self.hypercall_gate(), ..Default::default() };
        let platform: Option<Box<dyn sim_core::platform::Platform>> =
            Some(Box::new(XenPlatform::new(xen, config.cpus)));
        let m = match self {
            Cpus::Interp => Machine::with_platform(config, platform, &mut |id, n, cpuid| {
                Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
            }),
            Cpus::Kvm => {
                let vm = kvm_backend::KvmVm::new().map_err(|e| e.to_string())?;
                Machine::with_platform(config, platform, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid))
            }
        };
        m.map_err(|e| e.to_string())
    }
}

/// Where hypercall traces are logged (xen-model's dispatcher).
const HYPERCALL_TARGET: &str = "xensim::hypercall";

fn init_tracing(verbose: u8, trace_hypercalls: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if trace_hypercalls {
        if let Ok(d) = format!("{HYPERCALL_TARGET}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let trace_hypercalls = matches!(&cli.command, Command::Run(a) if a.trace_hypercalls);
    init_tracing(cli.verbose, trace_hypercalls);
    match cli.command {
        Command::Run(args) => run(args),
        Command::Bench(args) => bench::run(args),
        Command::Xenstore(args) => xenstore(args),
        Command::FuzzRepro(args) => fuzz_repro(args),
    }
}

fn fuzz_repro(args: FuzzReproArgs) -> ExitCode {
    if !xensim::fuzz::TARGETS.contains(&args.target.as_str()) {
        return fail(2, format!("no fuzz target {:?} (targets: {})", args.target, xensim::fuzz::TARGETS.join(", ")));
    }
    let mut files = Vec::new();
    for p in &args.inputs {
        match std::fs::read_dir(p) {
            Ok(dir) => {
                let mut v: Vec<PathBuf> =
                    dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
                v.sort();
                files.extend(v);
            }
            Err(_) => files.push(p.clone()),
        }
    }
    let mut failed = 0;
    for f in &files {
        let data = match std::fs::read(f) {
            Ok(d) => d,
            Err(e) => return fail(status::USER_ERROR, format!("{}: {}", f.display(), io_reason(&e))),
        };
        let Some(r) = xensim::fuzz::run(&args.target, &data) else { return ExitCode::from(2) };
        if !args.quiet || r.result.is_err() {
            println!("== {} ({} bytes)\n{}", f.display(), data.len(), r.decoded);
        }
        match r.result {
            Ok(()) => {
                if !args.quiet {
                    println!("ok");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAILED: {e}");
            }
        }
    }
    println!("{} input(s), {failed} failed", files.len());
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn xenstore(args: XenstoreArgs) -> ExitCode {
    tracing::info!(socket = %args.socket.display(), "xenstore serving");
    match xen_model::xenstore::socket::serve_forever(&args.socket, xen_model::xenstore::Store::new()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(status::USER_ERROR, e),
    }
}

/// One-line error to stderr and the given status.
fn fail(status: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("xensim: {msg}");
    ExitCode::from(status)
}

fn read_image(path: &Path) -> Result<BootImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {}", path.display(), io_reason(&e)))?;
    Ok(BootImage { name: path.display().to_string(), bytes })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ if e.raw_os_error() == Some(21) => "is a directory".into(),
        _ => e.to_string(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let kernel = match &args.kernel {
        Some(p) => match read_image(p) {
            Ok(img) => img,
            Err(e) => return fail(status::USER_ERROR, e),
        },
        None => match xensim::guest::programs::demo() {
            Ok(bytes) => BootImage { name: "built-in demo guest".into(), bytes },
            Err(e) => return fail(status::INTERNAL, format_args!("building the demo guest: {e}")),
        },
    };
    let mut modules = Vec::new();
    for name in args.initrd.iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()) {
        match read_image(Path::new(name)) {
            Ok(img) => modules.push(img),
            Err(e) => return fail(status::USER_ERROR, e),
        }
    }
    let config = MachineConfig {
        cpus: args.cpus,
        memory_mib: args.memory,
        max_instructions: args.max_instructions,
        ..Default::default()
    };
    if args.backend == Backend::Kvm && args.max_instructions.is_some() {
        return fail(status::USER_ERROR, "--max-instructions needs --backend interp: KVM cannot count instructions");
    }
    let cpus = match Cpus::open(args.backend) {
        Ok(c) => c,
        Err(e) => return fail(status::USER_ERROR, e),
    };
    let mut machine = match cpus.machine(config) {
        Ok(m) => m,
        Err(e) => return fail(status::USER_ERROR, e),
    };
    let boot = BootConfig { kernel, modules, cmdline: args.append.clone(), rsdp: 0 };
    match machine.boot(boot) {
        Ok(info) => tracing::info!(protocol = ?info.protocol, "kernel loaded"),
        Err(e) => return fail(status::USER_ERROR, e),
    }
    let stop = match machine.run() {
        Ok(s) => s,
        Err(e) => return fail(status::INTERNAL, e),
    };
    tracing::info!(
        instructions = machine.retired_instructions(),
        virtual_ns = machine.now_ns(),
        ?stop,
        "guest stopped"
    );
    match stop {
        StopReason::DebugExit(code) => ExitCode::from(code as u8),
        StopReason::Halted => ExitCode::SUCCESS,
        StopReason::TripleFault { vcpu, rip } => {
            fail(status::TRIPLE_FAULT, format_args!("guest triple fault on vCPU {vcpu} at RIP {rip:#x}"))
        }
        StopReason::GuestShutdown(reason) => match reason {
            ShutdownReason::Crash | ShutdownReason::Watchdog => {
                fail(status::GUEST_CRASH, format_args!("guest shut down: {reason:?}"))
            }
            ShutdownReason::Poweroff | ShutdownReason::Reboot | ShutdownReason::Suspend => {
                tracing::info!(?reason, "guest shut down");
                ExitCode::SUCCESS
            }
        },
        StopReason::InstructionLimit => fail(
            status::INSTRUCTION_LIMIT,
            format_args!("instruction limit reached after {} instructions", machine.retired_instructions()),
        ),
    }
}
