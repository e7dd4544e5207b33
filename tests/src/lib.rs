//! Harness for the integration tests: boot a guest image on a machine and
//! collect what it printed and why it stopped.

pub mod lapic;

use std::io::Write;
use std::sync::{Arc, Mutex};

use sim_core::boot::{BootConfig, BootImage, BootInfo};
use sim_core::door::{Input, ScriptDoor};
use sim_core::machine::{Machine, MachineConfig, StopReason, VcpuFactory};

/// A console sink that keeps everything written to it.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The outcome of one guest run; the machine stays for inspection.
pub struct Outcome {
    pub stop: StopReason,
    pub output: String,
    pub instructions: u64,
    pub boot: BootInfo,
    /// What was loaded (kernel named "guest", modules as given).
    pub config: BootConfig,
    pub machine: Machine,
}

/// Options for `boot`.
#[derive(Clone, Debug)]
pub struct Run {
    pub config: MachineConfig,
    pub cmdline: String,
    pub modules: Vec<(String, Vec<u8>)>,
    /// Outside inputs, each delivered at the first round boundary at or
    /// after its instruction count (through a `ScriptDoor`).
    pub inputs: Vec<(u64, Input)>,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            config: MachineConfig { memory_mib: 64, max_instructions: Some(50_000_000), ..Default::default() },
            cmdline: String::new(),
            modules: Vec::new(),
            inputs: Vec::new(),
        }
    }
}

/// The boot configuration `machine` uses for `kernel` and `run`.
pub fn boot_config(kernel: Vec<u8>, run: &Run) -> BootConfig {
    let modules = run.modules.iter().map(|(n, b)| BootImage { name: n.clone(), bytes: b.clone() }).collect();
    BootConfig {
        kernel: BootImage { name: "guest".into(), bytes: kernel },
        modules,
        cmdline: run.cmdline.clone(),
        rsdp: 0,
        reserved: Vec::new(),
    }
}

/// The header `xensim run --record` writes for `kernel` (named "guest",
/// as `boot_config` names it) under `config`: no command line, hypercalls
/// by VMCALL. Callers override the rest with struct update syntax.
pub fn log_header(config: &MachineConfig, kernel: &[u8], checkpoint_every: u64) -> replay::Header {
    replay::Header {
        xensim_version: env!("CARGO_PKG_VERSION").into(),
        config: replay::LogConfig::of(config),
        cmdline: String::new(),
        images: vec![replay::ImageHash::of("guest", kernel)],
        checkpoint_every,
        hypercalls: replay::Hypercalls::Vmcall,
    }
}

/// A machine on the interpreter with `kernel` loaded, console captured.
pub fn machine(kernel: Vec<u8>, run: &Run) -> (Machine, Capture, BootInfo) {
    machine_on(kernel, run, &mut |id, n, cpuid| Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid))))
}

/// A machine whose vCPUs come from `factory` (e.g. KVM), `kernel` loaded.
pub fn machine_on(kernel: Vec<u8>, run: &Run, factory: &mut VcpuFactory<'_>) -> (Machine, Capture, BootInfo) {
    let mut m = Machine::new(run.config.clone(), factory).expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    m.set_door(Box::new(ScriptDoor::new(run.inputs.clone())));
    let info = m.boot(boot_config(kernel, run)).expect("boot");
    (m, cap, info)
}

/// Boot `kernel` on the interpreter and run it to the end.
pub fn boot(kernel: Vec<u8>, run: &Run) -> Outcome {
    boot_on(kernel, run, &mut |id, n, cpuid| Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid))))
}

/// Boot `kernel` on vCPUs from `factory` and run it to the end.
pub fn boot_on(kernel: Vec<u8>, run: &Run, factory: &mut VcpuFactory<'_>) -> Outcome {
    let mut config = boot_config(kernel.clone(), run);
    let (mut m, cap, boot) = machine_on(kernel, run, factory);
    config.rsdp = m.rsdp();
    let stop = m.run().expect("machine run");
    Outcome { stop, output: cap.text(), instructions: m.retired_instructions(), boot, config, machine: m }
}

/// The CPU backend of a Xen guest test.
#[derive(Clone, Copy)]
pub enum Cpu<'a> {
    Interp,
    Kvm(&'a Arc<kvm_backend::KvmVm>),
}

/// KVM's VM, or None after printing why `test` is skipped.
pub fn kvm_or_skip(test: &str) -> Option<Arc<kvm_backend::KvmVm>> {
    kvm_backend::KvmVm::new().map_err(|e| eprintln!("skipping {test}: {e}")).ok()
}

/// The hypercall page's gate for `cpu`: native VMCALL on the interpreter
/// and where KVM intercepts it (KVM_EXIT_XEN), port I/O on other KVM hosts.
pub fn hypercall_gate(cpu: Cpu<'_>) -> xen_model::hypercall_page::HypercallGate {
    use kvm_backend::HypercallStrategy;
    use xen_model::hypercall_page::HypercallGate;
    match cpu {
        Cpu::Kvm(vm) if vm.hypercall_strategy() == HypercallStrategy::PortStub => {
            HypercallGate::Port(sim_core::layout::HYPERCALL_PORT as u8)
        }
        _ => HypercallGate::Native,
    }
}

/// A machine on `cpu` with the Xen platform of `xen` (gate set for `cpu`,
/// then `setup` applied) and `kernel` booted, console captured. On KVM the
/// kernel's own VMCALL/VMMCALL sites get hardware breakpoints when KVM
/// does not intercept them itself; the test fails if they cannot.
pub fn xen_machine(
    kernel: Vec<u8>,
    config: MachineConfig,
    xen: xen_model::XenConfig,
    cpu: Cpu<'_>,
    setup: impl FnOnce(&mut xen_model::XenPlatform),
) -> (Machine, Capture) {
    let xen = xen_model::XenConfig { hypercall_gate: hypercall_gate(cpu), ..xen };
    let mut platform = xen_model::XenPlatform::new(xen, config.cpus);
    setup(&mut platform);
    let platform: Option<Box<dyn sim_core::platform::Platform>> = Some(Box::new(platform));
    let mut m = match cpu {
        Cpu::Interp => Machine::with_platform(config, platform, &mut |id, n, cpuid| {
            Ok(Box::new(x86_interp::Interpreter::new(id, n, cpuid)))
        }),
        Cpu::Kvm(vm) => Machine::with_platform(config, platform, &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid)),
    }
    .expect("machine");
    let cap = Capture::default();
    m.set_console(Box::new(cap.clone()));
    let funcs = sim_core::boot::kernel_symbols(&kernel, &kvm_backend::guest_debug::LINUX_HYPERCALL_FUNCTIONS);
    let info = m.boot(boot_config(kernel, &Run::default())).expect("boot");
    if let Cpu::Kvm(vm) = cpu {
        let code = kvm_backend::guest_debug::hypercall_code(&info.exec_segments, &funcs);
        let armed = vm.arm_direct_calls(&m.mem, &code, m.cpuid().vendor());
        assert!(!armed.is_loss(), "{armed}");
    }
    (m, cap)
}
