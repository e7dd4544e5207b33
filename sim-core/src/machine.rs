//! The machine: vCPUs, memory, bus, LAPICs, one timer queue, virtual time and
//! the run loop.
//!
//! Scheduling is deterministic: vCPUs run in rounds, each for at most one
//! quantum of instructions, in index order. A round never crosses the next
//! timer deadline, so timers fire at the same instruction on every run.
//! Machine time advances by the round's length; each vCPU's TSC is set to
//! machine time at the start of its slice and then advances with its retired
//! instructions (see `clock`).

use std::io::Write;
use std::sync::Arc;

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, BootConfig, BootError, BootInfo};
use crate::bus::{Bus, DeviceCtx, ExitRequest};
use crate::clock;
use crate::cpuid::{CpuidTable, Vendor};
use crate::devices::{debug_exit::DebugExit, debugcon::DebugCon, lapic::Lapic, uart16550::Uart16550};
use crate::devices::lapic::{DeliveryMode, Ipi, LapicAction};
use crate::devices::timer_queue::TimerQueue;
use crate::layout::LAPIC_BASE;
use crate::memory::{GuestMemory, MemoryError, PAGE_SIZE};
use crate::msr;
use crate::state::{rflags, sreg, ArchState, Segment};
use crate::vcpu::{Completion, Vcpu, VcpuError, VcpuExit};

/// Instructions a vCPU runs before the next one gets its turn.
pub const DEFAULT_QUANTUM: u64 = 100_000;

#[derive(Clone, Debug)]
pub struct MachineConfig {
    pub cpus: u32,
    pub memory_mib: u64,
    /// Stop after this many instructions retired by all vCPUs together.
    pub max_instructions: Option<u64>,
    pub quantum: u64,
    pub vendor: Vendor,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig { cpus: 1, memory_mib: 128, max_instructions: None, quantum: DEFAULT_QUANTUM, vendor: Vendor::Intel }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("--cpus must be between 1 and 255, got {0}")]
    BadCpuCount(u32),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("vCPU {vcpu}: {source}")]
    Vcpu { vcpu: u32, source: VcpuError },
}

/// Why the machine stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote to isa-debug-exit; the status QEMU would exit with.
    DebugExit(i32),
    /// Every vCPU is halted and nothing can wake it (no interrupt pending,
    /// no timer armed): the guest is done.
    Halted,
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u32, rip: u64 },
    /// The instruction budget (`max_instructions`) is spent.
    InstructionLimit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Halted,
    /// An application processor waiting for INIT-SIPI.
    WaitForSipi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum TimerKey {
    Lapic(u32),
}

pub struct Machine {
    pub mem: GuestMemory,
    pub bus: Bus,
    vcpus: Vec<Box<dyn Vcpu>>,
    run_state: Vec<RunState>,
    lapics: Vec<Lapic>,
    timers: TimerQueue<TimerKey>,
    cpuid: Arc<CpuidTable>,
    config: MachineConfig,
    /// Machine time in virtual nanoseconds.
    now_ns: u64,
    retired: u64,
    console: Vec<u8>,
    sink: Box<dyn Write + Send>,
    rsdp: u64,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("config", &self.config).field("now_ns", &self.now_ns).finish()
    }
}

/// Builds one vCPU: (index, count, CPUID table).
pub type VcpuFactory<'a> = dyn FnMut(u32, u32, Arc<CpuidTable>) -> Box<dyn Vcpu> + 'a;

impl Machine {
    pub fn new(config: MachineConfig, make_vcpu: &mut VcpuFactory<'_>) -> Result<Machine, MachineError> {
        if config.cpus == 0 || config.cpus > 255 {
            return Err(MachineError::BadCpuCount(config.cpus));
        }
        let mem = GuestMemory::new(config.memory_mib)?;
        let cpuid = Arc::new(CpuidTable::baseline(config.vendor));
        let mut bus = Bus::new();
        // Fixed, non-overlapping port ranges: registration cannot fail.
        bus.add_ports(0xe9, 1, Box::new(DebugCon::new())).expect("debugcon port free");
        bus.add_ports(0xf4, 4, Box::new(DebugExit::new())).expect("debug-exit ports free");
        bus.add_ports(0x3f8, 8, Box::new(Uart16550::new())).expect("COM1 ports free");
        let rsdp = acpi::write_tables(&mem, &AcpiConfig { cpus: config.cpus, ..Default::default() })?;
        let vcpus: Vec<Box<dyn Vcpu>> = (0..config.cpus).map(|i| make_vcpu(i, config.cpus, cpuid.clone())).collect();
        let lapics = (0..config.cpus).map(|i| Lapic::new(i, i == 0)).collect();
        let run_state = (0..config.cpus).map(|i| if i == 0 { RunState::Running } else { RunState::WaitForSipi }).collect();
        Ok(Machine {
            mem,
            bus,
            vcpus,
            run_state,
            lapics,
            timers: TimerQueue::new(),
            cpuid,
            config,
            now_ns: 0,
            retired: 0,
            console: Vec::new(),
            sink: Box::new(std::io::stdout()),
            rsdp,
        })
    }

    /// Where guest console output (port 0xE9, the UART) goes; stdout by default.
    pub fn set_console(&mut self, sink: Box<dyn Write + Send>) {
        self.sink = sink;
    }

    /// Guest-physical address of the ACPI RSDP.
    pub fn rsdp(&self) -> u64 {
        self.rsdp
    }

    pub fn cpuid(&self) -> &Arc<CpuidTable> {
        &self.cpuid
    }

    /// Load a kernel (PVH or Multiboot) and point the boot vCPU at it.
    pub fn boot(&mut self, mut cfg: BootConfig) -> Result<BootInfo, MachineError> {
        cfg.rsdp = self.rsdp;
        let info = boot::load(&self.mem, &cfg)?;
        self.vcpus[0].set_state(&info.entry);
        Ok(info)
    }

    /// Instructions retired by all vCPUs.
    pub fn retired_instructions(&self) -> u64 {
        self.retired
    }

    /// Virtual time since power-on, in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn vcpu(&self, i: usize) -> &dyn Vcpu {
        self.vcpus[i].as_ref()
    }

    pub fn vcpu_mut(&mut self, i: usize) -> &mut dyn Vcpu {
        self.vcpus[i].as_mut()
    }

    pub fn uart_mut(&mut self) -> Option<&mut Uart16550> {
        self.bus.port_device_mut::<Uart16550>(0x3f8)
    }

    /// Run until the guest stops.
    pub fn run(&mut self) -> Result<StopReason, MachineError> {
        loop {
            if let Some(stop) = self.run_round()? {
                self.flush_console();
                return Ok(stop);
            }
        }
    }

    /// One scheduling round: every runnable vCPU runs up to the round's
    /// length; then time advances and due timers fire.
    fn run_round(&mut self) -> Result<Option<StopReason>, MachineError> {
        let n = self.vcpus.len();
        let mut round = self.config.quantum.max(1);
        if let Some(deadline) = self.timers.next_deadline() {
            round = round.min(deadline.saturating_sub(self.now_ns).max(1));
        }
        if let Some(max) = self.config.max_instructions {
            if self.retired >= max {
                return Ok(Some(StopReason::InstructionLimit));
            }
            round = round.min(max - self.retired);
        }

        let mut any_ran = false;
        for i in 0..n {
            self.offer_interrupt(i);
            if self.run_state[i] != RunState::Running {
                continue;
            }
            any_ran = true;
            if let Some(stop) = self.run_slice(i, round)? {
                return Ok(Some(stop));
            }
        }

        if any_ran {
            self.now_ns += round * clock::NS_PER_INSN;
        } else {
            // Everyone is halted: skip to the next timer, or stop for good.
            match self.timers.next_deadline() {
                Some(d) => self.now_ns = self.now_ns.max(d),
                None => return Ok(Some(StopReason::Halted)),
            }
        }
        self.fire_timers();
        self.flush_console();
        Ok(None)
    }

    /// Run vCPU `i` for up to `budget` instructions, handling its exits.
    fn run_slice(&mut self, i: usize, budget: u64) -> Result<Option<StopReason>, MachineError> {
        let start = self.now_ns;
        self.vcpus[i].set_tsc(clock::ns_to_tsc(start));
        let mut left = budget;
        while left > 0 {
            let before = self.vcpus[i].retired_instructions().unwrap_or(0);
            let exit = self.vcpus[i]
                .run(&self.mem, left)
                .map_err(|source| MachineError::Vcpu { vcpu: i as u32, source })?;
            let ran = self.vcpus[i].retired_instructions().unwrap_or(0) - before;
            left = left.saturating_sub(ran);
            self.retired += ran;
            let now = start + (budget - left) * clock::NS_PER_INSN;
            match exit {
                VcpuExit::BudgetExhausted => break,
                VcpuExit::Halt => {
                    self.run_state[i] = RunState::Halted;
                    self.offer_interrupt(i);
                    if self.run_state[i] != RunState::Running {
                        break;
                    }
                }
                VcpuExit::Shutdown => {
                    let rip = self.vcpus[i].state().rip;
                    return Ok(Some(StopReason::TripleFault { vcpu: i as u32, rip }));
                }
                VcpuExit::InterruptWindow => {
                    self.vcpus[i].request_interrupt_window(false);
                    self.offer_interrupt(i);
                }
                VcpuExit::IoIn { port, size } => {
                    let v = self.with_ctx(now, |bus, ctx| bus.pio_read(port, size, ctx));
                    self.vcpus[i].complete(Completion::Data(v.0 as u64));
                    if let Some(stop) = v.1 {
                        return Ok(Some(stop));
                    }
                }
                VcpuExit::IoOut { port, size, data } => {
                    let v = self.with_ctx(now, |bus, ctx| bus.pio_write(port, size, data, ctx));
                    self.vcpus[i].complete(Completion::Done);
                    if let Some(stop) = v.1 {
                        return Ok(Some(stop));
                    }
                }
                VcpuExit::MmioRead { gpa, size } => {
                    let v = self.mmio_read(i, gpa, size, now);
                    self.vcpus[i].complete(Completion::Data(v));
                }
                VcpuExit::MmioWrite { gpa, size, data } => {
                    let stop = self.mmio_write(i, gpa, size, data, now);
                    self.vcpus[i].complete(Completion::Done);
                    if let Some(stop) = stop {
                        return Ok(Some(stop));
                    }
                }
                VcpuExit::MsrRead { msr } => {
                    let c = match self.msr_read(i, msr, now) {
                        Some(v) => Completion::Data(v),
                        None => Completion::Fault,
                    };
                    self.vcpus[i].complete(c);
                }
                VcpuExit::MsrWrite { msr, value } => {
                    let c = if self.msr_write(i, msr, value, now) { Completion::Done } else { Completion::Fault };
                    self.vcpus[i].complete(c);
                }
                VcpuExit::Hypercall => {
                    // No hypervisor interface is attached: every hypercall
                    // is unknown, and Xen answers unknown ones with -ENOSYS.
                    let mut g = self.vcpus[i].gprs();
                    g[0] = (-38i64) as u64;
                    self.vcpus[i].set_gprs(&g);
                }
            }
            // A device may have raised an interrupt for this vCPU.
            self.offer_interrupt(i);
        }
        Ok(None)
    }

    /// Run a bus access with a device context at time `now`; returns the
    /// access's value and the stop it requested, if any.
    fn with_ctx<T>(&mut self, now: u64, f: impl FnOnce(&mut Bus, &mut DeviceCtx) -> T) -> (T, Option<StopReason>) {
        let mut exit = None;
        let mut ctx = DeviceCtx { now_ns: now, console: &mut self.console, exit: &mut exit };
        let v = f(&mut self.bus, &mut ctx);
        let stop = exit.map(|e| match e {
            ExitRequest::DebugExit { status } => StopReason::DebugExit(status),
        });
        (v, stop)
    }

    fn lapic_page(&self, i: usize, gpa: u64) -> Option<u32> {
        let base = LAPIC_BASE;
        (gpa >= base && gpa < base + PAGE_SIZE && self.lapics[i].xapic_mmio_enabled()).then(|| (gpa - base) as u32)
    }

    fn mmio_read(&mut self, i: usize, gpa: u64, size: u8, now: u64) -> u64 {
        if let Some(off) = self.lapic_page(i, gpa) {
            // LAPIC registers are 32 bits wide at 16-byte strides.
            let reg = self.lapics[i].mmio_read(off & !3, now) as u64;
            return (reg >> ((off & 3) * 8)) & size_mask(size);
        }
        self.with_ctx(now, |bus, ctx| bus.mmio_read(gpa, size, ctx)).0
    }

    fn mmio_write(&mut self, i: usize, gpa: u64, size: u8, data: u64, now: u64) -> Option<StopReason> {
        if let Some(off) = self.lapic_page(i, gpa) {
            let action = self.lapics[i].mmio_write(off & !3, data as u32, now);
            self.after_lapic_access(i, action);
            return None;
        }
        self.with_ctx(now, |bus, ctx| bus.mmio_write(gpa, size, data, ctx)).1
    }

    fn is_lapic_msr(msr: u32) -> bool {
        msr == msr::IA32_APIC_BASE || msr == msr::IA32_TSC_DEADLINE || (msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&msr)
    }

    fn msr_read(&mut self, i: usize, msr: u32, now: u64) -> Option<u64> {
        if Self::is_lapic_msr(msr) {
            return self.lapics[i].msr_read(msr, now).ok();
        }
        tracing::debug!(vcpu = i, msr = format_args!("{msr:#x}"), "rdmsr of an unknown MSR: #GP");
        None
    }

    fn msr_write(&mut self, i: usize, msr: u32, value: u64, now: u64) -> bool {
        if Self::is_lapic_msr(msr) {
            return match self.lapics[i].msr_write(msr, value, now) {
                Ok(action) => {
                    self.after_lapic_access(i, action);
                    true
                }
                Err(()) => false,
            };
        }
        tracing::debug!(vcpu = i, msr = format_args!("{msr:#x}"), value, "wrmsr of an unknown MSR: #GP");
        false
    }

    /// Keep the timer queue in step with LAPIC `i` and route any IPI.
    fn after_lapic_access(&mut self, i: usize, action: LapicAction) {
        self.reschedule_lapic_timer(i);
        if let LapicAction::Ipi(ipi) = action {
            self.send_ipi(i, ipi);
        }
    }

    fn reschedule_lapic_timer(&mut self, i: usize) {
        match self.lapics[i].timer_deadline() {
            Some(d) => self.timers.schedule(TimerKey::Lapic(i as u32), d),
            None => self.timers.cancel(TimerKey::Lapic(i as u32)),
        }
    }

    fn send_ipi(&mut self, from: usize, ipi: Ipi) {
        let sender = self.lapics[from].apic_id();
        for j in 0..self.lapics.len() {
            if !self.lapics[j].matches_destination(&ipi.dest, sender) {
                continue;
            }
            match ipi.delivery {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    self.lapics[j].accept_interrupt(ipi.vector, ipi.trigger_level);
                    self.offer_interrupt(j);
                }
                DeliveryMode::Init => {
                    if j != 0 {
                        self.run_state[j] = RunState::WaitForSipi;
                    }
                }
                DeliveryMode::StartUp => {
                    if self.run_state[j] == RunState::WaitForSipi {
                        // SIPI: real mode at vector << 12 (CS = vector << 8, IP = 0).
                        let mut s = ArchState::reset();
                        s.seg[sreg::CS] = Segment::real_mode((ipi.vector as u16) << 8, true);
                        s.rip = 0;
                        self.vcpus[j].set_state(&s);
                        self.run_state[j] = RunState::Running;
                    }
                }
                DeliveryMode::Nmi | DeliveryMode::Smi => {
                    tracing::warn!(from, to = j, mode = ?ipi.delivery, "IPI delivery mode not modelled; dropped");
                }
            }
        }
    }

    /// Hand LAPIC `i`'s highest pending interrupt to its vCPU if it can take
    /// it now, or ask for an interrupt window.
    fn offer_interrupt(&mut self, i: usize) {
        if self.run_state[i] == RunState::WaitForSipi || self.lapics[i].pending_interrupt().is_none() {
            return;
        }
        let v = &mut self.vcpus[i];
        if v.interrupt_ready() {
            if let Some(vector) = self.lapics[i].acknowledge() {
                v.inject_interrupt(vector);
                self.run_state[i] = RunState::Running;
            }
        } else if self.run_state[i] == RunState::Running {
            v.request_interrupt_window(true);
        } else if v.state().rflags & rflags::IF != 0 {
            // Halted with IF set but in a shadow cannot happen after HLT;
            // wake it so the window logic takes over.
            self.run_state[i] = RunState::Running;
            v.request_interrupt_window(true);
        }
    }

    fn fire_timers(&mut self) {
        while let Some((key, _)) = self.timers.pop_expired(self.now_ns) {
            match key {
                TimerKey::Lapic(i) => {
                    let i = i as usize;
                    self.lapics[i].timer_expired(self.now_ns);
                    self.reschedule_lapic_timer(i);
                    self.offer_interrupt(i);
                }
            }
        }
    }

    fn flush_console(&mut self) {
        if self.console.is_empty() {
            return;
        }
        // Console output is best effort: a closed stdout must not stop the guest.
        let _ = self.sink.write_all(&self.console);
        let _ = self.sink.flush();
        self.console.clear();
    }
}

fn size_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size as u32 * 8)) - 1
    }
}
