//! `xensim`: the command-line program.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use kvm_backend::{guest_debug, HypercallStrategy};
use sim_core::boot::{BootConfig, BootImage};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use sim_core::platform::ShutdownReason;
use xen_model::hypercall_page::HypercallGate;
use xen_model::platform::{XenConfig, XenPlatform};
use xen_model::xenstore::socket_door::{SharedSocket, SocketDoor};

mod bench;
mod progress;
use xensim::snapshots;

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
    /// `replay`: the replay left the recorded run (a report is printed).
    pub const DIVERGED: u8 = 14;
    /// `replay`/`inspect`: the log is unreadable, of another version, or
    /// its images do not match.
    pub const BAD_LOG: u8 = 16;
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
    /// Re-run a recorded guest from its log and check every checkpoint.
    Replay(ReplayArgs),
    /// Print a log's header and records.
    Inspect(InspectArgs),
    /// Replay fuzz inputs (files saved by cargo fuzz, or a corpus directory)
    /// through a fuzz target on stable Rust; prints each decoded operation
    /// sequence and whether an invariant broke. Exit status 1 if one did.
    FuzzRepro(FuzzReproArgs),
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// The log `xensim run --record` wrote.
    log: PathBuf,
    /// Compare the state hash at every checkpoint and at the end (always on;
    /// accepted for scripts that spell it out).
    #[arg(long)]
    verify: bool,
    /// Stop at the first round boundary at or past this instruction count.
    #[arg(long)]
    until: Option<u64>,
    /// The kernel, if not at the path the log names.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Write a snapshot every this many instructions (LOG.ICOUNT.snap), for
    /// later seeks with --until.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Where snapshots are written and looked for (default: the log's directory).
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct InspectArgs {
    log: PathBuf,
    /// Only inputs of this kind (serial, console, wall-clock, ...); checkpoints are always shown.
    #[arg(long)]
    kind: Option<String>,
    /// Only records at or after this instruction count.
    #[arg(long)]
    from: Option<u64>,
    /// Only records at or before this instruction count.
    #[arg(long)]
    to: Option<u64>,
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
    /// Record the run into this log (never overwrites an existing file).
    #[arg(long)]
    record: Option<PathBuf>,
    /// With --record: a state-hash checkpoint every this many instructions
    /// (on KVM, exits: it cannot count instructions).
    #[arg(long, default_value_t = 10_000_000)]
    checkpoint_every: u64,
    /// Bytes for COM1's receiver, from this file or "-" for stdin, as they arrive.
    /// Without "-", stdin feeds the guest's PV console (hvc0).
    #[arg(long)]
    serial_input: Option<PathBuf>,
    /// Serve the guest's xenstore on this Unix socket (mode 0600) while it runs, for
    /// host tools (`XENSTORED_PATH=PATH xenstore-ls`); clients are dom0.
    #[arg(long)]
    xenstore_socket: Option<PathBuf>,
    /// Write a snapshot at the first round boundary at or past this
    /// instruction count (repeatable).
    #[arg(long)]
    snapshot_at: Vec<u64>,
    /// Write a snapshot every this many instructions.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Where snapshots go (default: the log's directory with --record, else
    /// the current directory). Files are never overwritten.
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Continue from this snapshot (taken with the same kernel, modules and
    /// machine options) instead of from power-on.
    #[arg(long)]
    restore: Option<PathBuf>,
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
                tracing::info!(
                    "KVM hypercall interception: {:?}: {}; {}",
                    vm.hypercall_strategy(),
                    vm.hypercall_strategy().describe(),
                    vm.direct_calls().describe()
                );
                Ok(Cpus::Kvm)
            }
        }
    }

    /// How the Xen platform's hypercall page must enter the hypervisor on
    /// `vm` (None: the interpreter).
    fn hypercall_gate(vm: Option<&kvm_backend::KvmVm>) -> HypercallGate {
        match vm.map(|vm| vm.hypercall_strategy()) {
            None | Some(HypercallStrategy::XenHvm) => HypercallGate::Native,
            Some(HypercallStrategy::PortStub) => HypercallGate::Port(sim_core::layout::HYPERCALL_PORT as u8),
        }
    }

    /// A machine of `config` on this backend with the Xen platform attached.
    pub fn machine(&self, config: MachineConfig) -> Result<Machine, String> {
        self.machine_with(config, None)
    }

    /// As `machine`, with xenstore socket clients' replies going to `sink`. The toolstack's
    /// rings (xenstore, primary console) are always there.
    pub fn machine_with(
        &self,
        config: MachineConfig,
        sink: Option<Box<dyn xen_model::dom0::XenstoreSink>>,
    ) -> Result<Machine, String> {
        self.machine_and_vm(config, sink).map(|(m, _)| m)
    }

    /// As `machine_with`, also returning the KVM VM (None on the interpreter).
    fn machine_and_vm(
        &self,
        config: MachineConfig,
        sink: Option<Box<dyn xen_model::dom0::XenstoreSink>>,
    ) -> Result<(Machine, Option<Arc<kvm_backend::KvmVm>>), String> {
        let vm = match self {
            Cpus::Interp => None,
            Cpus::Kvm => Some(kvm_backend::KvmVm::new().map_err(|e| e.to_string())?),
        };
        let gate = Self::hypercall_gate(vm.as_deref());
        let xen = XenConfig { hypercall_gate: gate, ..Default::default() }.with_pv_rings();
        let mut xen = XenPlatform::new(xen, config.cpus);
        if let Some(sink) = sink {
            xen.set_xenstore_sink(sink);
        }
        let platform: Option<Box<dyn sim_core::platform::Platform>> = Some(Box::new(xen));
        let m = match &vm {
            None => Machine::with_platform(config, platform, &mut |id, n, cpuid| {
                Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
            }),
            Some(vm) => Machine::with_platform(config, platform, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid)),
        };
        m.map(|m| (m, vm)).map_err(|e| e.to_string())
    }
}

/// The interpreter as a run recorded on KVM had its CPU, for replaying it:
/// the hypercall page the recording host's interception needed, and the
/// same instructions taken as hypercalls (`xensim::hypercalls`).
fn interp_as_kvm(config: MachineConfig, hypercalls: &replay::Hypercalls) -> Result<Machine, String> {
    let gate = xensim::hypercalls::gate(hypercalls);
    let xen = XenConfig { hypercall_gate: gate, ..Default::default() }.with_pv_rings();
    let platform: Option<Box<dyn sim_core::platform::Platform>> = Some(Box::new(XenPlatform::new(xen, config.cpus)));
    Machine::with_platform(config, platform, &mut |id, n, cpuid| {
        Ok(Box::new(xensim::hypercalls::interpreter(hypercalls, id, n, cpuid)))
    })
    .map_err(|e| e.to_string())
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
        Command::Replay(args) => replay_cmd(args),
        Command::Inspect(args) => inspect(args),
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

/// A machine with `kernel` and `modules` booted on `cpus`, and how its
/// hypercalls reach the platform (for a recording's header).
fn build_machine(
    config: MachineConfig,
    cpus: &Cpus,
    kernel: BootImage,
    modules: Vec<BootImage>,
    cmdline: String,
    sink: Option<Box<dyn xen_model::dom0::XenstoreSink>>,
) -> Result<(Machine, replay::Hypercalls), String> {
    let (mut machine, vm) = cpus.machine_and_vm(config, sink)?;
    let funcs = match vm {
        Some(_) => sim_core::boot::kernel_symbols(&kernel.bytes, &guest_debug::LINUX_HYPERCALL_FUNCTIONS),
        None => Vec::new(),
    };
    let boot = BootConfig { kernel, modules, cmdline, rsdp: 0, reserved: Vec::new() };
    let info = machine.boot(boot).map_err(|e| e.to_string())?;
    tracing::info!(protocol = ?info.protocol, "kernel loaded");
    let mut hypercalls = xensim::hypercalls::recorded(None, None);
    if let Some(vm) = vm {
        // Strategy 3: the kernel's own VMCALL/VMMCALL sites, if any.
        let code = guest_debug::hypercall_code(&info.exec_segments, &funcs);
        let armed = vm.arm_direct_calls(&machine.mem, &code, machine.cpuid().vendor());
        if armed.is_loss() {
            tracing::warn!("KVM: {armed}");
        } else {
            tracing::info!("KVM: {armed}");
        }
        hypercalls = xensim::hypercalls::recorded(Some(vm.hypercall_strategy()), Some(&armed));
    }
    Ok((machine, hypercalls))
}

const DEMO_NAME: &str = "built-in demo guest";

fn run(args: RunArgs) -> ExitCode {
    let kernel = match &args.kernel {
        Some(p) => match read_image(p) {
            Ok(img) => img,
            Err(e) => return fail(status::USER_ERROR, e),
        },
        None => match xensim::guest::programs::demo() {
            Ok(bytes) => BootImage { name: DEMO_NAME.into(), bytes },
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
    let mut door = sim_core::door::LiveDoor::new();
    match args.serial_input.as_deref() {
        Some(p) if p == Path::new("-") => door.add_stdin(sim_core::door::Target::Serial),
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => door.add_stream(sim_core::door::Target::Serial, Box::new(f)),
            Err(e) => return fail(status::USER_ERROR, format_args!("{}: {}", p.display(), io_reason(&e))),
        },
        None => {}
    }
    if args.serial_input.as_deref() != Some(Path::new("-")) {
        door.add_stdin(sim_core::door::Target::Console);
    }
    let socket = match args.xenstore_socket.as_deref().map(SharedSocket::bind) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return fail(status::USER_ERROR, format_args!("--xenstore-socket: {e}")),
        None => None,
    };
    let door: Box<dyn sim_core::door::Door> = match &socket {
        Some(s) => Box::new(SocketDoor::new(Box::new(door), s.clone())),
        None => Box::new(door),
    };
    if args.record.is_some() && args.restore.is_some() {
        return fail(status::USER_ERROR, "--record starts from power-on; it cannot be combined with --restore");
    }
    let log_config = replay::LogConfig::of(&config);
    let images: Vec<replay::ImageHash> =
        std::iter::once(&kernel).chain(&modules).map(|i| replay::ImageHash::of(&i.name, &i.bytes)).collect();
    let mut header = args.record.as_ref().map(|_| replay::Header {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: log_config.clone(),
        cmdline: args.append.clone(),
        images: images.clone(),
        checkpoint_every: args.checkpoint_every,
        hypercalls: replay::Hypercalls::Vmcall,
    });
    let kernel_name = kernel.name.clone();
    let sink = socket.map(|s| Box::new(s) as Box<dyn xen_model::dom0::XenstoreSink>);
    let mut machine = match build_machine(config, &cpus, kernel, modules, args.append.clone(), sink) {
        Ok((m, hypercalls)) => {
            if let Some(h) = header.as_mut() {
                h.hypercalls = hypercalls;
            }
            m
        }
        Err(e) => return fail(status::USER_ERROR, e),
    };
    if let Some(path) = &args.restore {
        let restored = replay::snapfile::read_chain(path).map_err(|e| e.to_string()).and_then(|s| {
            s.check_fits(&log_config, &images)
                .and_then(|_| s.restore_into(&mut machine))
                .map_err(|e| format!("{}: {e}", path.display()))
        });
        if let Err(e) = restored {
            return fail(status::USER_ERROR, e);
        }
        tracing::info!(icount = machine.retired_instructions(), "restored {}", path.display());
    }
    let stem = match (&args.record, &args.restore) {
        (Some(p), _) => file_stem(p),
        (None, Some(p)) => file_stem(p).split('.').next().unwrap_or("snapshot").to_string(),
        _ if kernel_name == DEMO_NAME => "demo".into(),
        _ => file_stem(Path::new(&kernel_name)),
    };
    let snap_dir = args.snapshot_dir.clone().unwrap_or_else(|| match &args.record {
        Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        None => PathBuf::from("."),
    });
    let snap_base = replay::SnapHeader {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: log_config,
        cmdline: args.append.clone(),
        images,
        icount: 0,
        now_ns: 0,
        inputs_consumed: None,
        parent: None,
    };
    let start = machine.retired_instructions();
    let mut snapper =
        snapshots::Snapshotter::new(snap_dir, stem, args.snapshot_every, args.snapshot_at.clone(), snap_base, start);
    let stop = match (&args.record, header) {
        (Some(path), Some(header)) => {
            let mut log = match replay::LogWriter::create(path, &header) {
                Ok(l) => l,
                Err(e) => return fail(status::USER_ERROR, e),
            };
            let stop = replay::record_with(&mut machine, door, &mut log, args.checkpoint_every, &mut |m, n| {
                snapper.as_mut().map_or(Ok(()), |s| s.round(m, Some(n)).map_err(|e| e + SNAPSHOT_ERROR_TAG))
            });
            if let Err(e) = log.finish() {
                return fail(status::INTERNAL, e);
            }
            stop.map_err(|e| e.to_string())
        }
        _ => {
            machine.set_door(door);
            run_with_snapshots(&mut machine, snapper.as_mut())
        }
    };
    let stop = match stop {
        Ok(s) => s,
        // A snapshot that could not be written (an existing file is never replaced).
        Err(e) if e.ends_with(SNAPSHOT_ERROR_TAG) => {
            return fail(status::USER_ERROR, e.trim_end_matches(SNAPSHOT_ERROR_TAG))
        }
        Err(e) => return fail(status::INTERNAL, e),
    };
    // The final state hash (as replay logs compare it) costs a pass over
    // RAM: only when it is shown.
    let state_hash = tracing::enabled!(tracing::Level::INFO)
        .then(|| sim_core::machine::snapshot::hex(&machine.digest().hash(), 32))
        .unwrap_or_default();
    tracing::info!(
        instructions = machine.retired_instructions(),
        virtual_ns = machine.now_ns(),
        ?stop,
        state_hash,
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

/// Marks a run error as a snapshot-writing failure (bad user input: an
/// existing file, a missing directory), not a simulator failure.
const SNAPSHOT_ERROR_TAG: &str = " (snapshot not written)";

/// The file name of `p` (for naming snapshots after it).
pub(crate) fn file_stem(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "snapshot".into())
}

/// `Machine::run`, writing snapshots at round boundaries when asked.
fn run_with_snapshots(
    machine: &mut Machine,
    mut snapper: Option<&mut snapshots::Snapshotter>,
) -> Result<StopReason, String> {
    loop {
        if let Some(stop) = machine.run_round().map_err(|e| e.to_string())? {
            return Ok(stop);
        }
        if let Some(s) = snapper.as_deref_mut() {
            s.round(machine, None).map_err(|e| e + SNAPSHOT_ERROR_TAG)?;
        }
    }
}

/// Read the images a log names and check them against its hashes.
fn log_images(header: &replay::Header, kernel: Option<&Path>) -> Result<(BootImage, Vec<BootImage>), String> {
    let mut images = Vec::new();
    for (n, want) in header.images.iter().enumerate() {
        let img = match (n, kernel) {
            (0, Some(p)) => read_image(p)?,
            _ if want.name == DEMO_NAME => BootImage {
                name: DEMO_NAME.into(),
                bytes: xensim::guest::programs::demo().map_err(|e| format!("building the demo guest: {e}"))?,
            },
            _ => read_image(Path::new(&want.name))?,
        };
        let got = replay::ImageHash::of(&want.name, &img.bytes);
        if got.blake3 != want.blake3 || got.len != want.len {
            return Err(format!(
                "{}: image differs from the one recorded (recorded {} bytes, BLAKE3 {}…; found {} bytes, {}…)",
                img.name,
                want.len,
                sim_core::machine::snapshot::hex(&want.blake3, 6),
                got.len,
                sim_core::machine::snapshot::hex(&got.blake3, 6)
            ));
        }
        images.push(img);
    }
    if images.is_empty() {
        return Err("log names no kernel image".into());
    }
    let kernel = images.remove(0);
    Ok((kernel, images))
}

fn replay_cmd(args: ReplayArgs) -> ExitCode {
    let _ = args.verify;
    let log = match replay::Log::read(&args.log) {
        Ok(l) => l,
        Err(e) => return fail(status::BAD_LOG, e),
    };
    if let Some(at) = log.torn_at {
        eprintln!(
            "xensim: {}: log is torn at byte {at} (a crashed recording); replaying what precedes it",
            args.log.display()
        );
    }
    let (kernel, modules) = match log_images(&log.header, args.kernel.as_deref()) {
        Ok(i) => i,
        Err(e) => return fail(status::BAD_LOG, e),
    };
    let c = &log.header.config;
    let config = MachineConfig {
        cpus: c.cpus,
        memory_mib: c.memory_mib,
        quantum: c.quantum,
        max_instructions: c.max_instructions,
        vendor: c.vendor,
    };
    let images: Vec<replay::ImageHash> =
        std::iter::once(&kernel).chain(&modules).map(|i| replay::ImageHash::of(&i.name, &i.bytes)).collect();
    // A run recorded on KVM replays on the interpreter, following its exits.
    let cmdline = log.header.cmdline.clone();
    let built = match replay::drive::time_source(&log) {
        sim_core::clock::TimeSource::Instructions => {
            build_machine(config, &Cpus::Interp, kernel, modules, cmdline, None).map(|(m, _)| m)
        }
        sim_core::clock::TimeSource::Exits => interp_as_kvm(config, &log.header.hypercalls).and_then(|mut m| {
            let boot = BootConfig { kernel, modules, cmdline, rsdp: 0, reserved: Vec::new() };
            m.boot(boot).map_err(|e| e.to_string())?;
            Ok(m)
        }),
    };
    let mut machine = match built {
        Ok(m) => m,
        Err(e) => return fail(status::BAD_LOG, e),
    };
    let stem = file_stem(&args.log);
    let snap_dir =
        args.snapshot_dir.clone().unwrap_or_else(|| args.log.parent().map(Path::to_path_buf).unwrap_or_default());
    // Seek: start from the nearest earlier snapshot of this log, if any.
    let mut start = None;
    if let Some(until) = args.until {
        match snapshots::seek(&mut machine, &snap_dir, &stem, until, &log.header.config, &images) {
            Ok(Some((path, s))) => {
                eprintln!("xensim: seeking from {} (icount {})", path.display(), s.icount);
                start = Some(s);
            }
            Ok(None) => {}
            Err(e) => return fail(status::USER_ERROR, e),
        }
    }
    let snap_base = replay::SnapHeader {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: log.header.config.clone(),
        cmdline: log.header.cmdline.clone(),
        images,
        icount: 0,
        now_ns: 0,
        inputs_consumed: None,
        parent: None,
    };
    let mut snapper = snapshots::Snapshotter::new(
        snap_dir,
        stem,
        args.snapshot_every,
        Vec::new(),
        snap_base,
        machine.retired_instructions(),
    );
    let total = log.records.last().map(|r| r.icount()).unwrap_or(0);
    let mut bar = progress::Progress::new(args.until.unwrap_or(total).min(total.max(1)));
    let result =
        replay::drive::replay_from(&mut machine, &log, start, args.until, &mut |i| bar.update(i), &mut |m, n| {
            snapper.as_mut().map_or(Ok(()), |s| s.round(m, Some(n)))
        });
    bar.finish();
    match result {
        Ok(replay::Replayed::Identical { stop, checkpoints }) => {
            eprintln!("xensim: replay identical: {checkpoints} checkpoints and the end ({stop:?}) match");
            ExitCode::SUCCESS
        }
        Ok(replay::Replayed::Reached { icount, checkpoints }) => {
            eprintln!("xensim: reached icount {icount}; {checkpoints} checkpoints matched");
            ExitCode::SUCCESS
        }
        Ok(replay::Replayed::LogEnded { icount, checkpoints }) => {
            eprintln!("xensim: log ends at icount {icount}; {checkpoints} checkpoints matched");
            ExitCode::SUCCESS
        }
        Ok(replay::Replayed::Diverged(d)) => {
            eprint!("{d}");
            if replay::drive::time_source(&log) == sim_core::clock::TimeSource::Exits {
                eprintln!(
                    "  note: recorded on KVM; such a run replays only while the guest reads no TSC between \
                     exits and takes interrupts only at exits (README: Recording on KVM)"
                );
            }
            ExitCode::from(status::DIVERGED)
        }
        Err(e) => fail(status::INTERNAL, e),
    }
}

fn inspect(args: InspectArgs) -> ExitCode {
    let log = match replay::Log::read(&args.log) {
        Ok(l) => l,
        Err(e) => return fail(status::BAD_LOG, e),
    };
    let kind = match args.kind.as_deref().map(|k| (k, sim_core::door::InputKind::from_name(k))) {
        Some((k, None)) => {
            let names: Vec<&str> = sim_core::door::InputKind::ALL.iter().map(|k| k.name()).collect();
            return fail(status::USER_ERROR, format_args!("--kind {k}: not one of {}", names.join(", ")));
        }
        Some((_, Some(k))) => Some(k),
        None => None,
    };
    let h = &log.header;
    println!("xensim log, format {}, written by xensim {}", replay::log::FORMAT_VERSION, h.xensim_version);
    println!(
        "machine: {} vCPU(s), {} MiB, quantum {}, {:?}, instruction limit {:?}",
        h.config.cpus, h.config.memory_mib, h.config.quantum, h.config.vendor, h.config.max_instructions
    );
    println!("command line: {:?}", h.cmdline);
    for i in &h.images {
        println!("image: {} ({} bytes, BLAKE3 {})", i.name, i.len, sim_core::machine::snapshot::hex(&i.blake3, 32));
    }
    println!("checkpoint every {} instructions", h.checkpoint_every);
    match &h.hypercalls {
        replay::Hypercalls::Vmcall => println!("hypercalls: VMCALL/VMMCALL (hypercall page and direct)"),
        replay::Hypercalls::PortStub { port, sites } => {
            let sites: Vec<String> = sites.iter().map(|a| format!("{a:#x}")).collect();
            let sites = if sites.is_empty() { "none".to_string() } else { sites.join(", ") };
            println!("hypercalls: hypercall-page stubs write port {port:#x}; VMCALL/VMMCALL at {sites}")
        }
    }
    for r in &log.records {
        let icount = r.icount();
        if args.from.is_some_and(|f| icount < f) || args.to.is_some_and(|t| icount > t) {
            continue;
        }
        let input_kind = match r {
            replay::Record::Polled { input, .. } | replay::Record::Answered { input, .. } => Some(input.kind()),
            _ => None,
        };
        if kind.is_some() && input_kind.is_some() && input_kind != kind {
            continue;
        }
        println!("{}", replay::drive::describe(r));
    }
    if let Some(at) = log.torn_at {
        println!("(log torn at byte {at}: a crashed recording)");
    }
    ExitCode::SUCCESS
}
