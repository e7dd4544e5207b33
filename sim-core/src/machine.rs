//! The machine: vCPUs, memory, bus, LAPICs, one timer queue, virtual time and
//! the run loop.
//!
//! Scheduling is deterministic: vCPUs run in rounds, each for at most one
//! quantum of instructions, in index order. A round never crosses the next
//! timer deadline, so timers fire at the same instruction on every run.
//! Machine time advances by the round's length; each vCPU's TSC is set to
//! machine time at the start of its slice and then advances with its retired
//! instructions (see `clock`).
//!
//! Backends that cannot count instructions (KVM) run on exit time
//! (`clock::TimeSource::Exits`): each `run` of a vCPU ends at an exit, which
//! the machine passes through the door with the guest TSC there; machine
//! time is the latest such TSC, the instruction count counts exits, and
//! whether a vCPU can take an interrupt is asked of the door too (KVM
//! decides it). A replay feeds the recorded exits to the interpreter
//! (`follow_exits`, `next_exit`), which reproduces the run for guests whose
//! outside events arrive at exits; where it cannot (a TSC read between
//! exits, an interrupt where KVM preempted the vCPU) the replay reports a
//! divergence.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use crate::acpi::{self, AcpiConfig, IoApicEntry};
use crate::boot::{self, BootConfig, BootError, BootInfo};
use crate::bus::{Bus, DeviceCtx, ExitRequest};
use crate::clock;
use crate::clock::TimeSource;
use crate::cpuid::{CpuidTable, Vendor};
use crate::devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT};
use crate::devices::debugcon::{Debugcon, DEBUGCON_PORT};
use crate::devices::ioapic::{IoApic, IoApicDelivery, IoApicMessage, IOAPIC_MMIO_SIZE, XEN_IOAPIC_PINS};
use crate::devices::lapic::Lapic;
use crate::devices::lapic::{DeliveryMode, Ipi, LapicAction};
use crate::devices::pci::{PciHost, CONFIG_ADDRESS, PCI_PORT_COUNT};
use crate::devices::pic8259::Pic8259Pair;
use crate::devices::uart16550::{Uart16550, COM1_BASE};
use crate::door::{ClosedDoor, Door, DoorError, ExitSeen, Input, Query, Stamp};
use crate::irq::{source, GsiLines};
use crate::layout::IOAPIC_BASE;
use crate::memory::{GuestMemory, MemoryError, PAGE_SIZE};
use crate::msr;
use crate::platform::{Platform, PlatformCtx, PlatformEffect, ShutdownReason, SliceEvent, TimerKey};
use crate::state::{rflags, sreg, ArchState, Segment};
use crate::timer_queue::TimerQueue;
use crate::vcpu::{Completion, Vcpu, VcpuError, VcpuExit};

/// Instructions a vCPU runs before the next one gets its turn.
pub const DEFAULT_QUANTUM: u64 = 100_000;
/// The ISA IRQ (and GSI, identity-mapped) of COM1.
pub const COM1_GSI: u32 = 4;

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
        MachineConfig {
            cpus: 1,
            memory_mib: 128,
            max_instructions: None,
            quantum: DEFAULT_QUANTUM,
            vendor: Vendor::Intel,
        }
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
    /// The door could not answer (on replay: the run left the log's path).
    #[error("input at {at}: {source}")]
    Door { at: Stamp, source: DoorError },
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
    /// The guest asked the platform to shut down (SCHEDOP_shutdown).
    GuestShutdown(ShutdownReason),
}

/// What a vCPU is doing between rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RunState {
    Running,
    Halted,
    /// An application processor waiting for INIT-SIPI.
    WaitForSipi,
    /// Blocked in the platform (SCHEDOP_block/poll) until it says wake.
    Blocked,
    /// Taken offline by the platform (VCPUOP_down) until started again.
    Down,
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
    console_input: VecDeque<u8>,
    sink: Box<dyn Write + Send>,
    rsdp: u64,
    platform: Option<Box<dyn Platform>>,
    effects: Vec<PlatformEffect>,
    gsi: GsiLines,
    ioapic: IoApic,
    pic: Pic8259Pair,
    /// vCPUs sent an ExtINT message by the IOAPIC, owed an 8259 INTA.
    extint_pending: Vec<bool>,
    /// Every outside value comes through here (see `door`).
    door: Box<dyn Door>,
    /// RAM hashes by region from the last state digest, with what updates
    /// them from the pages written since (see `ram_hash`).
    ram_hashes: std::sync::Mutex<ram_hash::RamHashes>,
    /// Wall-clock time at power-on (asked of the door before the first round).
    wall_clock_ns: Option<u64>,
    /// Where time comes from (see `clock::TimeSource` and `exits`).
    time: TimeSource,
    /// Exit time: each vCPU's TSC at its last exit, as the door gave it.
    tsc_seen: Vec<u64>,
    /// Exit time: vCPUs whose last run ended by preemption.
    preempted: Vec<bool>,
    /// Exit time on replay: why the run cannot follow its log (an interrupt
    /// the recorded run took at a preemption); reported at the round's end.
    unplaceable: Option<String>,
    /// Exit time on replay: the exit a counting CPU ran ahead to where the
    /// recorded vCPU was preempted, handled once the log reaches it.
    ahead: Vec<Option<VcpuExit>>,
}

/// How far a CPU that counts instructions runs, replaying exit time, to
/// find the exit the log has next before the replay is declared diverged:
/// as many instructions as the recorded vCPU could have retired in the TSC
/// ticks it took to get there (`MAX_INSNS_PER_TICK` a tick), and at least
/// this floor. The floor only matters where the TSC says next to nothing
/// (under 1 µs between two exits, less than a VM exit's round trip) or
/// nothing (a guest that set its TSC back), so a tampered or diverged log
/// is reported after a fraction of a second, not after 2^28 instructions.
pub const EXIT_SEARCH_LIMIT: u64 = 1 << 16;
/// More instructions than a vCPU can retire per guest TSC tick: no x86 core
/// retires more than 8 instructions a cycle or clocks above 8 GHz, and a KVM
/// guest's TSC ticks at 1 GHz or more (`clock::TSC_HZ` where the host scales
/// it, else the host's nominal rate).
pub const MAX_INSNS_PER_TICK: u64 = 64;

/// A `PlatformCtx` from the machine's fields (a macro so the borrows stay
/// disjoint from `self.platform` and `self.vcpus`).
macro_rules! platform_ctx {
    ($m:ident, $now:expr) => {
        PlatformCtx {
            mem: &mut $m.mem,
            now_ns: $now,
            timers: &mut $m.timers,
            lapics: &mut $m.lapics,
            gsi: &mut $m.gsi,
            console: &mut $m.console,
            console_input: &mut $m.console_input,
            effects: &mut $m.effects,
        }
    };
}

mod ram_hash;
pub mod snapshot;

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("config", &self.config).field("now_ns", &self.now_ns).finish()
    }
}

/// Builds one vCPU: (index, count, CPUID table).
/// Builds one vCPU: (index, count, CPUID table). Fallible: a backend such as
/// KVM may fail to create it.
pub type VcpuFactory<'a> = dyn FnMut(u32, u32, Arc<CpuidTable>) -> Result<Box<dyn Vcpu>, VcpuError> + 'a;

impl Machine {
    /// A machine with no hypervisor interface (hypercalls get -ENOSYS).
    pub fn new(config: MachineConfig, make_vcpu: &mut VcpuFactory<'_>) -> Result<Machine, MachineError> {
        Self::with_platform(config, None, make_vcpu)
    }

    /// A machine whose hypercalls, platform MSRs and timers go to `platform`.
    pub fn with_platform(
        config: MachineConfig,
        mut platform: Option<Box<dyn Platform>>,
        make_vcpu: &mut VcpuFactory<'_>,
    ) -> Result<Machine, MachineError> {
        if config.cpus == 0 || config.cpus > 255 {
            return Err(MachineError::BadCpuCount(config.cpus));
        }
        let mem = GuestMemory::new(config.memory_mib)?;
        let mut table = CpuidTable::baseline(config.vendor);
        if let Some(p) = platform.as_mut() {
            p.configure_cpuid(&mut table, config.cpus);
        }
        let cpuid = Arc::new(table);
        let mut bus = Bus::new();
        // Fixed, non-overlapping port ranges: registration cannot fail.
        bus.add_ports(DEBUGCON_PORT, 1, Box::new(Debugcon)).expect("debugcon port free");
        bus.add_ports(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT, Box::new(DebugExit)).expect("debug-exit ports free");
        bus.add_ports(COM1_BASE, 8, Box::new(Uart16550::new(COM1_BASE))).expect("COM1 ports free");
        bus.add_ports(CONFIG_ADDRESS, PCI_PORT_COUNT, Box::new(PciHost::new())).expect("PCI ports free");
        // The IOAPIC's ID follows the APIC IDs 0..cpus, within its 4-bit field.
        let ioapic_id = (config.cpus & 0xf) as u8;
        // No interrupt source overrides: there is no PIT (IRQ0 -> GSI 2) and
        // the hardware-reduced FADT has no SCI; ISA IRQs are GSIs 0-15.
        let acpi = AcpiConfig {
            cpus: config.cpus,
            ioapic: Some(IoApicEntry { id: ioapic_id, addr: IOAPIC_BASE as u32, gsi_base: 0 }),
            interrupt_overrides: Vec::new(),
        };
        let rsdp = acpi::write_tables(&mem, &acpi)?;
        let vcpus = (0..config.cpus)
            .map(|i| make_vcpu(i, config.cpus, cpuid.clone()).map_err(|source| MachineError::Vcpu { vcpu: i, source }))
            .collect::<Result<Vec<Box<dyn Vcpu>>, _>>()?;
        // Power-on: every TSC starts at machine time 0.
        let mut vcpus = vcpus;
        for v in &mut vcpus {
            v.set_tsc(0);
        }
        let lapics = (0..config.cpus).map(|i| Lapic::new(i, i == 0)).collect();
        let run_state =
            (0..config.cpus).map(|i| if i == 0 { RunState::Running } else { RunState::WaitForSipi }).collect();
        let extint_pending = vec![false; config.cpus as usize];
        // Backends that cannot count instructions (KVM) run on exit time.
        let time = if vcpus.iter().all(|v| v.retired_instructions().is_some()) {
            TimeSource::Instructions
        } else {
            TimeSource::Exits
        };
        let n = config.cpus as usize;
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
            console_input: VecDeque::new(),
            sink: Box::new(std::io::stdout()),
            rsdp,
            platform,
            effects: Vec::new(),
            gsi: GsiLines::new(),
            ioapic: IoApic::new(ioapic_id, XEN_IOAPIC_PINS),
            pic: Pic8259Pair::new(),
            extint_pending,
            door: Box::new(ClosedDoor),
            ram_hashes: std::sync::Mutex::new(ram_hash::RamHashes::default()),
            wall_clock_ns: None,
            time,
            tsc_seen: vec![0; n],
            preempted: vec![false; n],
            unplaceable: None,
            ahead: vec![None; n],
        })
    }

    /// Where machine time comes from.
    pub fn time_source(&self) -> TimeSource {
        self.time
    }

    /// Take time from the exits the door reports instead of from retired
    /// instructions: for replaying on the interpreter a run recorded on KVM.
    /// Each run then goes on to the vCPU's next exit, and the recorded
    /// exit's kind, data and TSC replace what the interpreter's clock says.
    pub fn follow_exits(&mut self) {
        self.time = TimeSource::Exits;
    }

    /// Whether every vCPU is at a point a replay can name: always on
    /// instruction time; on exit time, when no vCPU's last run ended by
    /// preemption (KVM stopped it at an instruction nobody counted, so its
    /// registers there cannot be reproduced). Checkpoints go only here.
    pub fn settled(&self) -> bool {
        self.time == TimeSource::Instructions || !self.preempted.iter().any(|&p| p)
    }

    /// Whether the machine's state is the recorded run's at this point:
    /// false only while replaying exit time with a vCPU run ahead of where
    /// the recorded run preempted it. Snapshots are taken only here (one
    /// taken on KVM itself holds KVM's real registers wherever it stopped).
    pub fn state_is_recorded(&self) -> bool {
        self.settled() || !(0..self.vcpus.len()).any(|i| self.replaying_exits(i))
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
        if let Some(p) = self.platform.as_ref() {
            cfg.reserved.extend(p.reserved_ranges());
        }
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

    /// Where outside values come from (a live source, a script, a replay
    /// log); a closed door (no input, wall clock 0) by default.
    pub fn set_door(&mut self, door: Box<dyn Door>) {
        self.door = door;
    }

    /// Wall-clock time at power-on in nanoseconds since the Unix epoch, once
    /// the machine has started running.
    pub fn wall_clock_ns(&self) -> Option<u64> {
        self.wall_clock_ns
    }

    /// The point the machine is at, as inputs are stamped.
    pub fn stamp(&self) -> Stamp {
        Stamp { icount: self.retired, now_ns: self.now_ns, vcpu: 0 }
    }

    /// Ask the door for a value now (for backends: a KVM host-clock reading).
    pub fn query_door(&mut self, q: Query) -> Result<Input, MachineError> {
        let at = self.stamp();
        self.door.query(at, q).map_err(|source| MachineError::Door { at, source })
    }

    pub fn uart_mut(&mut self) -> Option<&mut Uart16550> {
        self.bus.port_device_mut::<Uart16550>(COM1_BASE)
    }

    /// Run until the guest stops.
    pub fn run(&mut self) -> Result<StopReason, MachineError> {
        loop {
            if let Some(stop) = self.run_round()? {
                return Ok(stop);
            }
        }
    }

    /// One scheduling round: inputs from the door are delivered, every
    /// runnable vCPU runs up to the round's length; then time advances and
    /// due timers fire. Round boundaries are the deterministic points where
    /// a recorder may take checkpoints; `run` is this in a loop.
    pub fn run_round(&mut self) -> Result<Option<StopReason>, MachineError> {
        let r = self.round();
        // Output is on the console by the end of every round, however it ended.
        self.flush_console();
        r
    }

    fn round(&mut self) -> Result<Option<StopReason>, MachineError> {
        let r = self.round_inner();
        match self.unplaceable.take() {
            Some(why) => Err(MachineError::Door { at: self.stamp(), source: DoorError(why) }),
            None => r,
        }
    }

    fn round_inner(&mut self) -> Result<Option<StopReason>, MachineError> {
        let input_stop = self.take_inputs()?;
        // Input delivered to the UART may raise IRQ4.
        self.sync_irqs();
        if input_stop.is_some() {
            return Ok(input_stop);
        }
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
            if self.run_state[i] == RunState::Blocked {
                let now = self.now_ns;
                if let Some(p) = self.platform.as_mut() {
                    if p.wake(&mut platform_ctx!(self, now), i as u32) {
                        self.run_state[i] = RunState::Running;
                    }
                }
                self.sync_irqs();
                if let Some(stop) = self.apply_effects(None) {
                    return Ok(Some(stop));
                }
            }
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
            match self.time {
                // Every vCPU ran the whole round.
                TimeSource::Instructions => self.now_ns += round * clock::NS_PER_INSN,
                // vCPUs may have stopped early (HLT, an exit) and their TSC
                // runs with the host: machine time follows the furthest
                // vCPU's TSC at its last exit, or a timer would fire before
                // the guest's own TSC reached its deadline.
                TimeSource::Exits => {
                    let seen = self.tsc_seen.iter().map(|&t| clock::tsc_to_ns(t)).max().unwrap_or(0);
                    self.now_ns = self.now_ns.max(seen);
                }
            }
        } else {
            // Everyone is halted: skip to the next timer, or stop for good.
            match self.timers.next_deadline() {
                Some(d) => {
                    self.now_ns = self.now_ns.max(d);
                    if self.time == TimeSource::Exits {
                        // A skip is a jump of virtual time on every backend:
                        // TSCs that the machine last saw behind it move to it.
                        let tsc = clock::ns_to_tsc(self.now_ns);
                        for (v, seen) in self.vcpus.iter_mut().zip(&mut self.tsc_seen) {
                            if *seen < tsc {
                                v.set_tsc(tsc);
                                *seen = tsc;
                            }
                        }
                        self.wait_for_tscs(tsc);
                    }
                }
                None => {
                    // Nothing inside can wake the guest; input from outside
                    // still can, while the door has a live source and some
                    // vCPU would take it (blocked, or halted with IF set).
                    let at = self.stamp();
                    if self.wakeable() && self.door.live(at) {
                        self.door.wait();
                        return Ok(None);
                    }
                    return Ok(Some(StopReason::Halted));
                }
            }
        }
        let stop = self.fire_timers();
        self.flush_console();
        Ok(stop)
    }

    /// Whether an interrupt or event could still wake some vCPU: it is
    /// blocked in the platform, or halted with interrupts enabled.
    fn wakeable(&self) -> bool {
        self.run_state.iter().zip(&self.vcpus).any(|(st, v)| match st {
            RunState::Blocked => true,
            RunState::Halted => v.state().rflags & rflags::IF != 0,
            _ => false,
        })
    }

    /// Some KVM hosts ignore writes to the guest TSC (it stays the host's):
    /// a skip cannot jump it, so let host time pass (through the door)
    /// until every such vCPU's TSC has reached `tsc`, or timers would fire
    /// before the guest's own TSC says their deadline has come. Returns at
    /// once on backends that honoured `set_tsc` and on instruction-counting
    /// ones. The TSCs read here only decide how long to wait: the value the
    /// guest's time is taken from is read at its next exit, through the door.
    fn wait_for_tscs(&mut self, tsc: u64) {
        loop {
            let behind = self
                .vcpus
                .iter()
                .filter(|v| v.retired_instructions().is_none())
                .map(|v| tsc.saturating_sub(v.tsc()))
                .max()
                .unwrap_or(0);
            if behind == 0 {
                return;
            }
            // At most 1 ms at a time: the host TSC rate is not known here.
            self.door.pause(std::time::Duration::from_nanos(clock::tsc_to_ns(behind).min(1_000_000)));
        }
    }

    /// Run vCPU `i` for up to `budget` instructions, handling its exits.
    fn run_slice(&mut self, i: usize, budget: u64) -> Result<Option<StopReason>, MachineError> {
        let start = self.now_ns;
        // On instruction time the TSC is derived from machine time and the
        // instructions retired in this slice (see `clock`).
        if self.time == TimeSource::Instructions {
            self.vcpus[i].set_tsc(clock::ns_to_tsc(start));
        }
        self.notify_slice(i, SliceEvent::Start, start);
        let mut left = budget;
        while left > 0 {
            let (exit, now) = match self.time {
                TimeSource::Instructions => {
                    let before = self.vcpus[i].retired_instructions().unwrap_or(0);
                    let exit = self.vcpus[i]
                        .run(&self.mem, left)
                        .map_err(|source| MachineError::Vcpu { vcpu: i as u32, source })?;
                    let ran = self.vcpus[i].retired_instructions().unwrap_or(0).wrapping_sub(before);
                    left = left.saturating_sub(ran);
                    self.retired += ran;
                    (exit, start + (budget - left) * clock::NS_PER_INSN)
                }
                // The guest's TSC has moved on since the slice began; a
                // device programmed now (a LAPIC timer) must count from the
                // guest's present, not the slice start.
                TimeSource::Exits => {
                    let exit = self.next_exit(i, left)?;
                    (exit, start.max(clock::tsc_to_ns(self.tsc_seen[i])))
                }
            };
            let mut end_slice = false;
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
                    self.set_window(i, false);
                    self.offer_interrupt(i);
                }
                VcpuExit::IoIn { port, size } => {
                    let v = self.pio_read(port, size, now);
                    self.vcpus[i].complete(Completion::Data(v.0 as u64));
                    if let Some(stop) = v.1 {
                        return Ok(Some(stop));
                    }
                }
                VcpuExit::IoOut { port, size, data } => {
                    let v = self.pio_write(port, size, data, now);
                    self.vcpus[i].complete(Completion::Done);
                    if let Some(stop) = v.1 {
                        self.finish_out(i)?;
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
                VcpuExit::Hypercall => match self.platform.as_mut() {
                    Some(p) => {
                        let effect = p.hypercall(&mut platform_ctx!(self, now), i as u32, self.vcpus[i].as_mut());
                        self.effects.push(effect);
                    }
                    None => {
                        // No hypervisor interface is attached: every
                        // hypercall is unknown, and Xen answers those -ENOSYS.
                        let mut g = self.vcpus[i].gprs();
                        g[0] = (-38i64) as u64;
                        self.vcpus[i].set_gprs(&g);
                    }
                },
            }
            if let Some(p) = self.platform.as_mut() {
                p.sync(&mut platform_ctx!(self, now));
            }
            self.sync_irqs();
            if let Some(stop) = self.apply_effects(Some((i, &mut end_slice))) {
                return Ok(Some(stop));
            }
            if end_slice || self.run_state[i] != RunState::Running {
                break;
            }
            // A device may have raised an interrupt for this vCPU.
            self.offer_interrupt(i);
        }
        let end = match self.time {
            TimeSource::Instructions => start + (budget - left) * clock::NS_PER_INSN,
            TimeSource::Exits => start.max(clock::tsc_to_ns(self.tsc_seen[i])),
        };
        match self.run_state[i] {
            RunState::Running => self.notify_slice(i, SliceEvent::Preempted, end),
            RunState::Halted => self.notify_slice(i, SliceEvent::Halted, end),
            _ => {}
        }
        Ok(None)
    }

    /// Exit time: run vCPU `i` to its next exit and pass what was seen
    /// there (exit, TSC, readiness) through the door, which records it or,
    /// on replay, answers with the recorded exit; that answer is what the
    /// machine goes on with. A CPU that counts instructions (the
    /// interpreter replaying a KVM run) does not run where the log says
    /// the recorded vCPU was preempted, runs on to its own next exit
    /// otherwise, and takes the recorded TSC as its own. A different exit
    /// is a divergence.
    ///
    /// Where the log says the recorded vCPU was preempted, a counting CPU
    /// cannot stop at the same instruction: it runs ahead to its next exit
    /// and keeps it for when the log gets there. What the machine does at
    /// the preemption (timers, inputs, the platform reading guest memory)
    /// then sees the guest as it is at that next exit: the same as KVM saw
    /// as long as the guest changes nothing the machine looks at between
    /// its exits. Interrupts that KVM took there are reported (see
    /// `offer_interrupt`); anything else shows as a different exit later.
    fn next_exit(&mut self, i: usize, budget: u64) -> Result<VcpuExit, MachineError> {
        let at = Stamp { icount: self.retired, now_ns: self.now_ns, vcpu: i as u32 };
        let counting = self.vcpus[i].retired_instructions().is_some();
        let next = if counting { self.door.next_exit(at) } else { None };
        let next_exit = next.map(|n| n.exit);
        let exit = if !counting {
            self.vcpus[i].run(&self.mem, budget).map_err(|source| MachineError::Vcpu { vcpu: i as u32, source })?
        } else if next_exit == Some(VcpuExit::BudgetExhausted) {
            if self.ahead[i].is_none() {
                self.vcpus[i].request_interrupt_window(false);
                let limit = self.search_limit(i, self.door.next_stop_tsc(i as u32));
                self.ahead[i] = Some(self.run_to_exit(i, limit)?);
            }
            VcpuExit::BudgetExhausted
        } else {
            let limit = self.search_limit(i, next.map(|n| n.tsc));
            match (self.ahead[i].take(), next) {
                (Some(exit), _) => exit,
                // KVM reports a window when it notices one, not at the
                // first boundary where it opens: look for it where KVM
                // reported it.
                (None, Some(n)) if n.exit == VcpuExit::InterruptWindow => self.run_to_window(i, n.rip, limit)?,
                (None, _) => {
                    self.vcpus[i].request_interrupt_window(false);
                    self.run_to_exit(i, limit)?
                }
            }
        };
        let seen = ExitSeen { exit, tsc: self.vcpus[i].tsc(), rip: self.vcpus[i].rip() };
        let door_err = |why: String| MachineError::Door { at, source: DoorError(why) };
        let logged = match self.door.query(at, Query::KvmExit(seen)) {
            Ok(Input::KvmExit(logged)) => logged,
            Ok(other) => return Err(door_err(format!("asked for vCPU {i}'s exit, got {other:?}"))),
            Err(source) => return Err(MachineError::Door { at, source }),
        };
        // KVM reports OUTs past the instruction and the interpreter at it,
        // so RIPs are compared only where no instruction is in flight.
        let window_moved = exit == VcpuExit::InterruptWindow && seen.rip != logged.rip;
        if logged.exit != exit || window_moved {
            let replayed = if counting && exit == VcpuExit::BudgetExhausted {
                format!("no exit within {} instructions", self.search_limit(i, Some(logged.tsc)))
            } else {
                format!("{exit:?} at RIP {:#x}", seen.rip)
            };
            return Err(door_err(format!(
                "vCPU {i}: the recorded run exited with {:?} at RIP {:#x} here, the replay with {replayed}",
                logged.exit, logged.rip
            )));
        }
        if counting {
            // The guest's clock is the recorded one from here on.
            self.vcpus[i].set_tsc(logged.tsc);
        }
        self.tsc_seen[i] = logged.tsc;
        self.preempted[i] = logged.exit == VcpuExit::BudgetExhausted;
        self.retired += 1;
        Ok(exit)
    }

    /// KVM retires an OUT before it reports it (RIP is past it at the exit);
    /// the interpreter finishes it when it runs again. A machine that stops
    /// at an OUT (isa-debug-exit) while replaying exit time lets the
    /// interpreter finish it, so its final state is KVM's.
    fn finish_out(&mut self, i: usize) -> Result<(), MachineError> {
        if self.time == TimeSource::Exits && self.vcpus[i].retired_instructions().is_some() {
            let exit =
                self.vcpus[i].run(&self.mem, 1).map_err(|source| MachineError::Vcpu { vcpu: i as u32, source })?;
            if exit != VcpuExit::BudgetExhausted {
                tracing::debug!(vcpu = i, ?exit, "finishing the last OUT led to another exit");
            }
        }
        Ok(())
    }

    /// Run a counting vCPU until its interrupt window is open at `rip` (or
    /// another exit comes first): stepping over open windows elsewhere.
    /// KVM's window exits land at the first VM exit after the window
    /// opened; in a guest that polls with interrupts on, that is some
    /// later pass of its loop, which the loop's RIP names well enough (a
    /// loop whose registers change between passes shows in the state hash).
    fn run_to_window(&mut self, i: usize, rip: u64, limit: u64) -> Result<VcpuExit, MachineError> {
        let err = |source| MachineError::Vcpu { vcpu: i as u32, source };
        let mut ran = 0u64;
        loop {
            self.vcpus[i].request_interrupt_window(true);
            let exit = self.run_to_exit(i, limit.saturating_sub(ran))?;
            if exit != VcpuExit::InterruptWindow || self.vcpus[i].rip() == rip || ran >= limit {
                return Ok(exit);
            }
            // Not there yet: one instruction with the window shut.
            self.vcpus[i].request_interrupt_window(false);
            let exit = self.vcpus[i].run(&self.mem, 1).map_err(err)?;
            ran += 1;
            if exit != VcpuExit::BudgetExhausted {
                return Ok(exit);
            }
        }
    }

    /// Run a counting vCPU to its next exit (`BudgetExhausted` if none
    /// comes within `limit` instructions).
    fn run_to_exit(&mut self, i: usize, limit: u64) -> Result<VcpuExit, MachineError> {
        let mut ran = 0u64;
        loop {
            // Never past the limit: a divergence is reported after exactly that many.
            let chunk = self.config.quantum.min(limit.saturating_sub(ran)).max(1);
            let exit =
                self.vcpus[i].run(&self.mem, chunk).map_err(|source| MachineError::Vcpu { vcpu: i as u32, source })?;
            ran = ran.saturating_add(chunk);
            if exit != VcpuExit::BudgetExhausted || ran >= limit {
                return Ok(exit);
            }
        }
    }

    /// How far vCPU `i` may run to find an exit the recorded run reached
    /// at TSC `to` (see `EXIT_SEARCH_LIMIT`).
    fn search_limit(&self, i: usize, to: Option<u64>) -> u64 {
        let took = to.map_or(0, |t| t.saturating_sub(self.tsc_seen[i]));
        took.saturating_mul(MAX_INSNS_PER_TICK).max(EXIT_SEARCH_LIMIT)
    }

    fn notify_slice(&mut self, i: usize, event: SliceEvent, now: u64) {
        if let Some(p) = self.platform.as_mut() {
            p.vcpu_slice(&mut platform_ctx!(self, now), i as u32, event);
        }
    }

    /// Tell the platform that the machine itself took vCPU `j` offline
    /// (INIT) or started it (SIPI).
    fn notify_online(&mut self, j: usize, online: bool) {
        let now = self.now_ns;
        if let Some(p) = self.platform.as_mut() {
            p.vcpu_online(&mut platform_ctx!(self, now), j as u32, online);
        }
    }

    /// Carry out the platform's queued effects. `caller` is the vCPU whose
    /// call produced them, if any, and a flag to end its slice.
    fn apply_effects(&mut self, mut caller: Option<(usize, &mut bool)>) -> Option<StopReason> {
        let effects = std::mem::take(&mut self.effects);
        let mut stop = None;
        for e in effects {
            match e {
                PlatformEffect::None => {}
                PlatformEffect::Yield => {
                    if let Some((_, end)) = caller.as_mut() {
                        **end = true;
                    }
                }
                PlatformEffect::Block => {
                    if let Some((i, end)) = caller.as_mut() {
                        self.run_state[*i] = RunState::Blocked;
                        **end = true;
                    }
                }
                PlatformEffect::Shutdown(reason) => stop = stop.or(Some(StopReason::GuestShutdown(reason))),
                PlatformEffect::StartVcpu { vcpu, state } => {
                    if let Some(v) = self.vcpus.get_mut(vcpu as usize) {
                        v.set_state(&state);
                        self.run_state[vcpu as usize] = RunState::Running;
                    }
                }
                PlatformEffect::StopVcpu { vcpu } => {
                    if let Some(st) = self.run_state.get_mut(vcpu as usize) {
                        *st = RunState::Down;
                    }
                    if let Some((i, end)) = caller.as_mut() {
                        if *i == vcpu as usize {
                            **end = true;
                        }
                    }
                }
                PlatformEffect::Wake { vcpu } => {
                    if let Some(st) = self.run_state.get_mut(vcpu as usize) {
                        if *st == RunState::Blocked {
                            *st = RunState::Running;
                        }
                    }
                }
            }
        }
        stop
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

    /// Offset into vCPU `i`'s xAPIC register page, if `gpa` falls in it.
    fn lapic_page(&self, i: usize, gpa: u64) -> Option<u32> {
        let base = self.lapics[i].mmio_base()?;
        (gpa >= base && gpa < base + PAGE_SIZE).then(|| (gpa - base) as u32)
    }

    /// Offset into the IOAPIC's page, if `gpa` falls in it.
    fn ioapic_page(gpa: u64) -> Option<u64> {
        gpa.checked_sub(IOAPIC_BASE).filter(|&off| off < IOAPIC_MMIO_SIZE)
    }

    fn mmio_read(&mut self, i: usize, gpa: u64, size: u8, now: u64) -> u64 {
        if let Some(off) = self.lapic_page(i, gpa) {
            // LAPIC registers are 32 bits wide at 16-byte strides.
            let reg = self.lapics[i].mmio_read(off & !3, now) as u64;
            return (reg >> ((off & 3) * 8)) & size_mask(size);
        }
        if let Some(off) = Self::ioapic_page(gpa) {
            return self.ioapic.mmio_read(off, size);
        }
        self.with_ctx(now, |bus, ctx| bus.mmio_read(gpa, size, ctx)).0
    }

    fn mmio_write(&mut self, i: usize, gpa: u64, size: u8, data: u64, now: u64) -> Option<StopReason> {
        if let Some(off) = self.lapic_page(i, gpa) {
            let action = self.lapics[i].mmio_write(off & !3, data as u32, now);
            self.after_lapic_access(i, action);
            return None;
        }
        if let Some(off) = Self::ioapic_page(gpa) {
            let messages = self.ioapic.mmio_write(off, size, data);
            self.deliver_ioapic(messages);
            return None;
        }
        self.with_ctx(now, |bus, ctx| bus.mmio_write(gpa, size, data, ctx)).1
    }

    /// Port read: the 8259 pair is the machine's own (its output feeds
    /// interrupt delivery); everything else is on the bus. A wide access to
    /// the 8259 ports is split into byte cycles, as the ISA bus does.
    fn pio_read(&mut self, port: u16, size: u8, now: u64) -> (u32, Option<StopReason>) {
        if Pic8259Pair::claims(port) {
            let v = (0..u16::from(size.min(4))).rev().fold(0u32, |acc, k| {
                let byte = self.pic.read(port.wrapping_add(k)).unwrap_or(0xff);
                (acc << 8) | u32::from(byte)
            });
            return (v, None);
        }
        self.with_ctx(now, |bus, ctx| bus.pio_read(port, size, ctx))
    }

    fn pio_write(&mut self, port: u16, size: u8, data: u32, now: u64) -> ((), Option<StopReason>) {
        if Pic8259Pair::claims(port) {
            for k in 0..u16::from(size.min(4)) {
                self.pic.write(port.wrapping_add(k), (data >> (8 * k)) as u8);
            }
            // An unmask or EOI may let the 8259 interrupt the BSP.
            self.offer_interrupt(0);
            return ((), None);
        }
        self.with_ctx(now, |bus, ctx| bus.pio_write(port, size, data, ctx))
    }

    /// Bring interrupt lines up to date: COM1's level onto its GSI, then
    /// every GSI whose level changed to the 8259s (ISA IRQs 0-15) and the
    /// IOAPIC, whose messages go to the LAPICs.
    fn sync_irqs(&mut self) {
        if let Some(uart) = self.bus.port_device_mut::<Uart16550>(COM1_BASE) {
            let level = uart.interrupt_pending();
            self.gsi.set(COM1_GSI, source::UART, level);
        }
        let changed = self.gsi.take_changed();
        if changed.is_empty() {
            return;
        }
        for (gsi, level) in changed {
            self.pic.set_irq(gsi, level);
            let messages = self.ioapic.set_level(gsi, level);
            self.deliver_ioapic(messages);
        }
        self.offer_interrupt(0);
    }

    /// Deliver IOAPIC messages to the LAPICs their destinations name.
    fn deliver_ioapic(&mut self, messages: Vec<IoApicMessage>) {
        // The IOAPIC is no LAPIC: no ID can match a self-relative shorthand.
        const NO_SENDER: u32 = u32::MAX;
        for m in messages {
            let targets: Vec<usize> =
                (0..self.lapics.len()).filter(|&j| self.lapics[j].matches_destination(&m.dest, NO_SENDER)).collect();
            match m.delivery {
                IoApicDelivery::Fixed => {
                    for j in targets {
                        self.lapics[j].accept_interrupt(m.vector, m.level_triggered);
                        self.offer_interrupt(j);
                    }
                }
                IoApicDelivery::LowestPriority => {
                    // The lowest processor priority wins, then the lowest index
                    // (deterministic; the SDM leaves the tie-break to the chipset).
                    let pick = targets
                        .into_iter()
                        .filter(|&j| self.lapics[j].software_enabled())
                        .min_by_key(|&j| (self.lapics[j].ppr() & 0xf0, j));
                    if let Some(j) = pick {
                        self.lapics[j].accept_interrupt(m.vector, m.level_triggered);
                        self.offer_interrupt(j);
                    }
                }
                IoApicDelivery::ExtInt => {
                    for j in targets {
                        self.extint_pending[j] = true;
                        self.offer_interrupt(j);
                    }
                }
                IoApicDelivery::Init => {
                    for j in targets {
                        if j != 0 {
                            self.run_state[j] = RunState::WaitForSipi;
                            self.notify_online(j, false);
                        }
                    }
                }
                IoApicDelivery::Nmi | IoApicDelivery::Smi => {
                    tracing::warn!(pin_vector = m.vector, mode = ?m.delivery, "IOAPIC delivery mode not modelled; dropped");
                }
            }
        }
    }

    fn is_lapic_msr(msr: u32) -> bool {
        msr == msr::IA32_APIC_BASE
            || msr == msr::IA32_TSC_DEADLINE
            || (msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&msr)
    }

    fn msr_read(&mut self, i: usize, msr: u32, now: u64) -> Option<u64> {
        if Self::is_lapic_msr(msr) {
            return self.lapics[i].msr_read(msr, now).ok();
        }
        if let Some(p) = self.platform.as_mut() {
            if let Some(r) = p.msr_read(&mut platform_ctx!(self, now), i as u32, msr) {
                return r.ok();
            }
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
        if let Some(p) = self.platform.as_mut() {
            if let Some(r) = p.msr_write(&mut platform_ctx!(self, now), i as u32, self.vcpus[i].as_mut(), msr, value) {
                return r.is_ok();
            }
        }
        tracing::debug!(vcpu = i, msr = format_args!("{msr:#x}"), value, "wrmsr of an unknown MSR: #GP");
        false
    }

    /// Keep the timer queue in step with LAPIC `i` and route any IPI.
    fn after_lapic_access(&mut self, i: usize, action: LapicAction) {
        self.reschedule_lapic_timer(i);
        match action {
            LapicAction::None => {}
            LapicAction::Ipi(ipi) => self.send_ipi(i, ipi),
            // The EOI broadcast: the IOAPIC may deliver a still-asserted level pin again.
            LapicAction::Eoi { vector, level_triggered: true } => {
                // Let level sources that follow guest memory (Xen's callback
                // GSI drops once upcall_pending is clear) settle first, as
                // Xen does at EOI, so a handled line is not delivered again.
                let now = self.now_ns;
                if let Some(p) = self.platform.as_mut() {
                    p.sync(&mut platform_ctx!(self, now));
                }
                self.sync_irqs();
                let messages = self.ioapic.eoi(vector);
                self.deliver_ioapic(messages);
            }
            LapicAction::Eoi { level_triggered: false, .. } => {}
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
                        self.notify_online(j, false);
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
                        self.notify_online(j, true);
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
    /// The platform's direct vector (Xen's callback vector) comes first, as
    /// in Xen's hvm_vcpu_has_pending_irq; it bypasses the LAPIC entirely.
    /// Then the 8259's ExtINT (through LINT0 on the BSP, or an IOAPIC ExtINT
    /// message), then the LAPIC's highest pending vector.
    fn offer_interrupt(&mut self, i: usize) {
        if matches!(self.run_state[i], RunState::WaitForSipi | RunState::Down) {
            return;
        }
        let direct = self.platform.as_mut().and_then(|p| p.pending_vector(&self.mem, i as u32));
        let extint =
            self.extint_pending[i] || (i == 0 && self.lapics[0].accepts_pic_interrupt() && self.pic.interrupt_output());
        if direct.is_none() && !extint && self.lapics[i].pending_interrupt().is_none() {
            return;
        }
        // A vCPU preempted on exit time stopped at an instruction nobody
        // counted: an interrupt taken there cannot be placed on replay.
        let ready = self.interrupt_ready(i);
        let replaying = self.replaying_exits(i);
        if ready && self.preempted[i] {
            let why = format!(
                "vCPU {i} took an interrupt where the recorded run had preempted it (between exits, at an \
                 instruction the log cannot name): a run on KVM replays only while interrupts arrive at exits"
            );
            if replaying {
                self.unplaceable.get_or_insert(why);
                return;
            }
            tracing::debug!("{why}");
        }
        if ready {
            let vector = match direct {
                Some(d) => Some(d),
                None if extint => {
                    self.extint_pending[i] = false;
                    Some(self.pic.acknowledge())
                }
                None => self.lapics[i].acknowledge(),
            };
            if let Some(vector) = vector {
                self.vcpus[i].inject_interrupt(vector);
                self.run_state[i] = RunState::Running;
            }
        } else if self.run_state[i] == RunState::Running {
            self.set_window(i, true);
        } else if self.vcpus[i].state().rflags & rflags::IF != 0 {
            // Halted with IF set but in a shadow cannot happen after HLT;
            // wake it so the window logic takes over.
            self.run_state[i] = RunState::Running;
            self.set_window(i, true);
        }
    }

    /// Whether the machine replays exit time on a CPU that counts
    /// instructions (vCPU `i`'s exits come from the log).
    fn replaying_exits(&self, i: usize) -> bool {
        self.time == TimeSource::Exits && self.vcpus[i].retired_instructions().is_some()
    }

    /// Whether vCPU `i` can take an interrupt now. On exit time KVM decides
    /// (its answer depends on where the host stopped it), so the answer
    /// goes through the door; a door that cannot answer ends the round
    /// with a divergence.
    fn interrupt_ready(&mut self, i: usize) -> bool {
        let ready = self.vcpus[i].interrupt_ready();
        if self.time == TimeSource::Instructions {
            return ready;
        }
        let at = Stamp { icount: self.retired, now_ns: self.now_ns, vcpu: i as u32 };
        match self.door.query(at, Query::KvmReady { vcpu: i as u32, ready }) {
            Ok(Input::KvmReady { ready, .. }) => ready,
            Ok(other) => {
                self.unplaceable.get_or_insert(format!("asked whether vCPU {i} is ready, got {other:?}"));
                false
            }
            Err(e) => {
                self.unplaceable.get_or_insert(e.0);
                false
            }
        }
    }

    /// Ask vCPU `i` for an interrupt window (or stop asking). Replaying exit
    /// time, windows follow the log instead (see `next_exit`).
    fn set_window(&mut self, i: usize, on: bool) {
        if !self.replaying_exits(i) {
            self.vcpus[i].request_interrupt_window(on);
        }
    }

    fn fire_timers(&mut self) -> Option<StopReason> {
        let mut stop = None;
        while let Some((key, _)) = self.timers.pop_expired(self.now_ns) {
            match key {
                TimerKey::Lapic(i) => {
                    let i = i as usize;
                    self.lapics[i].timer_expired(self.now_ns);
                    self.reschedule_lapic_timer(i);
                    self.offer_interrupt(i);
                }
                TimerKey::Platform(k) => {
                    let now = self.now_ns;
                    if let Some(p) = self.platform.as_mut() {
                        p.timer_fired(&mut platform_ctx!(self, now), k);
                    }
                    self.sync_irqs();
                    stop = stop.or(self.apply_effects(None));
                }
            }
        }
        for i in 0..self.vcpus.len() {
            self.offer_interrupt(i);
        }
        stop
    }

    /// Deliver what the door has for this round boundary; at power-on, ask
    /// it for the wall clock first.
    /// Returns the stop a platform asked for while taking an input.
    fn take_inputs(&mut self) -> Result<Option<StopReason>, MachineError> {
        let at = self.stamp();
        let mut stop = None;
        if self.wall_clock_ns.is_none() {
            let input = self.door.query(at, Query::WallClock).map_err(|source| MachineError::Door { at, source })?;
            stop = stop.or(self.deliver(input));
        }
        let inputs = self.door.poll(at).map_err(|source| MachineError::Door { at, source })?;
        for input in inputs {
            stop = stop.or(self.deliver(input));
        }
        Ok(stop)
    }

    /// Hand one outside value to whatever models its source.
    fn deliver(&mut self, input: Input) -> Option<StopReason> {
        match &input {
            Input::Serial(bytes) => {
                if let Some(uart) = self.bus.port_device_mut::<Uart16550>(COM1_BASE) {
                    uart.push_input(bytes);
                }
                return None;
            }
            Input::Console(bytes) => self.console_input.extend(bytes.iter().copied()),
            Input::WallClock { epoch_ns } => self.wall_clock_ns = Some(*epoch_ns),
            _ => {}
        }
        // The platform models the rest (xenstore clients, disks) and may
        // want to see console input and the wall clock arrive.
        let now = self.now_ns;
        if let Some(p) = self.platform.as_mut() {
            p.input(&mut platform_ctx!(self, now), &input);
        }
        self.apply_effects(None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// One scripted step: retire `insns` instructions, then exit with `exit`.
    #[derive(Clone, Copy)]
    struct Step {
        insns: u64,
        exit: VcpuExit,
        /// RFLAGS.IF while this step's exit is reported.
        if_set: bool,
    }

    #[derive(Default)]
    struct Log {
        completions: Vec<Completion>,
        injected: Vec<u8>,
        tsc_sets: Vec<u64>,
    }

    /// A vCPU that replays a script of exits, for testing the run loop
    /// without a CPU model.
    struct ScriptVcpu {
        script: VecDeque<Step>,
        retired: u64,
        if_set: bool,
        gpr: [u64; 16],
        window: bool,
        log: Arc<Mutex<Log>>,
    }

    impl ScriptVcpu {
        fn boxed(script: &[Step], gpr: [u64; 16], log: &Arc<Mutex<Log>>) -> Box<dyn Vcpu> {
            Box::new(ScriptVcpu {
                script: script.iter().copied().collect(),
                retired: 0,
                if_set: false,
                gpr,
                window: false,
                log: log.clone(),
            })
        }
    }

    impl Vcpu for ScriptVcpu {
        fn id(&self) -> u32 {
            0
        }
        fn run(&mut self, _mem: &GuestMemory, budget: u64) -> Result<VcpuExit, VcpuError> {
            if self.window && self.if_set {
                return Ok(VcpuExit::InterruptWindow);
            }
            let Some(step) = self.script.front_mut() else {
                // Out of script: spin until the budget is spent.
                self.retired += budget;
                return Ok(VcpuExit::BudgetExhausted);
            };
            if step.insns > budget {
                step.insns -= budget;
                self.retired += budget;
                return Ok(VcpuExit::BudgetExhausted);
            }
            let step = self.script.pop_front().unwrap();
            self.retired += step.insns;
            self.if_set = step.if_set;
            Ok(step.exit)
        }
        fn complete(&mut self, c: Completion) {
            self.log.lock().unwrap().completions.push(c);
        }
        fn state(&self) -> ArchState {
            let mut s = ArchState::reset();
            s.rflags = rflags::FIXED1 | if self.if_set { rflags::IF } else { 0 };
            s.gpr = self.gpr;
            s
        }
        fn set_state(&mut self, _s: &ArchState) {}
        fn gprs(&self) -> [u64; 16] {
            self.gpr
        }
        fn set_gprs(&mut self, g: &[u64; 16]) {
            self.gpr = *g;
        }
        fn interrupt_ready(&self) -> bool {
            self.if_set
        }
        fn inject_interrupt(&mut self, vector: u8) {
            self.log.lock().unwrap().injected.push(vector);
        }
        fn request_interrupt_window(&mut self, on: bool) {
            self.window = on;
        }
        fn retired_instructions(&self) -> Option<u64> {
            Some(self.retired)
        }
        fn tsc(&self) -> u64 {
            0
        }
        fn set_tsc(&mut self, tsc: u64) {
            self.log.lock().unwrap().tsc_sets.push(tsc);
        }
    }

    fn step(insns: u64, exit: VcpuExit) -> Step {
        Step { insns, exit, if_set: false }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn machine(script: Vec<Step>, config: MachineConfig) -> (Machine, Arc<Mutex<Log>>, Sink) {
        let log = Arc::new(Mutex::new(Log::default()));
        let l2 = log.clone();
        let mut m = Machine::new(config, &mut |_, _, _| Ok(ScriptVcpu::boxed(&script, [0; 16], &l2))).unwrap();
        let sink = Sink::default();
        m.set_console(Box::new(sink.clone()));
        (m, log, sink)
    }

    #[test]
    fn debugcon_output_and_clean_halt() {
        let out = |b: u8| step(3, VcpuExit::IoOut { port: 0xe9, size: 1, data: b as u32 });
        let (mut m, log, sink) = machine(vec![out(b'h'), out(b'i'), step(1, VcpuExit::Halt)], Default::default());
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert_eq!(m.retired_instructions(), 7);
        assert_eq!(log.lock().unwrap().completions, vec![Completion::Done, Completion::Done]);
    }

    #[test]
    fn isa_debug_exit_status_is_qemus() {
        let (mut m, _, _) =
            machine(vec![step(1, VcpuExit::IoOut { port: 0xf4, size: 4, data: 3 })], Default::default());
        assert_eq!(m.run().unwrap(), StopReason::DebugExit(7));
    }

    #[test]
    fn absent_ports_read_all_ones_and_unknown_msrs_fault() {
        let script = vec![
            step(1, VcpuExit::IoIn { port: 0x80, size: 1 }),
            step(1, VcpuExit::IoIn { port: 0x80, size: 2 }),
            step(1, VcpuExit::MsrRead { msr: 0x1234 }),
            step(1, VcpuExit::MsrWrite { msr: 0x1234, value: 1 }),
            step(1, VcpuExit::MsrRead { msr: msr::IA32_APIC_BASE }),
            step(1, VcpuExit::Halt),
        ];
        let (mut m, log, _) = machine(script, Default::default());
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        let c = &log.lock().unwrap().completions;
        assert_eq!(c[0], Completion::Data(0xff));
        assert_eq!(c[1], Completion::Data(0xffff));
        assert_eq!(c[2], Completion::Fault);
        assert_eq!(c[3], Completion::Fault);
        // BSP, xAPIC enabled, at 0xFEE00000 (SDM: IA32_APIC_BASE reset value).
        assert_eq!(c[4], Completion::Data(0xfee0_0000 | (1 << 11) | (1 << 8)));
    }

    #[test]
    fn hypercalls_without_a_platform_get_enosys() {
        let (mut m, _, _) = machine(vec![step(1, VcpuExit::Hypercall), step(1, VcpuExit::Halt)], Default::default());
        m.run().unwrap();
        assert_eq!(m.vcpu(0).gprs()[0] as i64, -38);
    }

    #[test]
    fn lapic_timer_wakes_a_halted_vcpu_at_its_deadline() {
        let wr = |msr: u32, value: u64| step(10, VcpuExit::MsrWrite { msr, value });
        let script = vec![
            // x2APIC on: APIC_BASE = base | EN | EXTD | BSP.
            wr(msr::IA32_APIC_BASE, 0xfee0_0000 | (1 << 11) | (1 << 10) | (1 << 8)),
            wr(0x80f, 0x1ff),   // SVR: software enable
            wr(0x83e, 0xb),     // divide by 1
            wr(0x832, 0x40),    // LVT timer: one-shot, vector 0x40
            wr(0x838, 100_000), // initial count: 100 us at 1 GHz
            Step { insns: 1, exit: VcpuExit::Halt, if_set: true },
            // After the interrupt: halt for good with IF clear.
            step(1, VcpuExit::Halt),
        ];
        let (mut m, log, _) = machine(script, MachineConfig { quantum: 1000, ..Default::default() });
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(log.lock().unwrap().injected, vec![0x40]);
        // The count was written after 50 instructions (50 ns) and expires
        // 100 us later: the halted machine skips straight to that instant,
        // and the woken vCPU's slice starts there.
        assert_eq!(log.lock().unwrap().tsc_sets.last(), Some(&clock::ns_to_tsc(50 + 100_000)));
    }

    #[test]
    fn triple_fault_and_instruction_limit_stop_the_machine() {
        let (mut m, _, _) = machine(vec![step(5, VcpuExit::Shutdown)], Default::default());
        assert!(matches!(m.run().unwrap(), StopReason::TripleFault { vcpu: 0, .. }));
        let (mut m, _, _) = machine(vec![], MachineConfig { max_instructions: Some(12_345), ..Default::default() });
        assert_eq!(m.run().unwrap(), StopReason::InstructionLimit);
        assert_eq!(m.retired_instructions(), 12_345);
    }

    #[test]
    fn tsc_follows_machine_time_at_each_slice() {
        let (mut m, log, _) =
            machine(vec![], MachineConfig { max_instructions: Some(2500), quantum: 1000, ..Default::default() });
        m.run().unwrap();
        // Power-on sets every TSC to 0; then each slice starts at machine time.
        assert_eq!(log.lock().unwrap().tsc_sets, vec![0, 0, 1000, 2000]);
    }

    /// The do-nothing answers of the `Platform` methods a test fake does
    /// not care about, by name.
    macro_rules! inert_platform {
        ($($method:ident),*) => { $(inert_platform!(@ $method);)* };
        (@configure_cpuid) => { fn configure_cpuid(&mut self, _: &mut CpuidTable, _: u32) {} };
        (@hypercall) => {
            fn hypercall(&mut self, _: &mut PlatformCtx, _: u32, _: &mut dyn Vcpu) -> PlatformEffect {
                PlatformEffect::None
            }
        };
        (@msr_read) => {
            fn msr_read(&mut self, _: &mut PlatformCtx, _: u32, _: u32) -> Option<Result<u64, ()>> {
                None
            }
        };
        (@msr_write) => {
            fn msr_write(&mut self, _: &mut PlatformCtx, _: u32, _: &mut dyn Vcpu, _: u32, _: u64) -> Option<Result<(), ()>> {
                None
            }
        };
        (@timer_fired) => { fn timer_fired(&mut self, _: &mut PlatformCtx, _: u64) {} };
        (@pending_vector) => {
            fn pending_vector(&mut self, _: &GuestMemory, _: u32) -> Option<u8> {
                None
            }
        };
        (@wake) => {
            fn wake(&mut self, _: &mut PlatformCtx, _: u32) -> bool {
                true
            }
        };
        (@sync) => { fn sync(&mut self, _: &mut PlatformCtx) {} };
    }

    /// A platform that blocks the caller on every hypercall, wakes it with a
    /// timer 5 us later, and then offers its callback vector once.
    #[derive(Default)]
    struct TimerPlatform {
        calls: u32,
        vector_armed: bool,
    }

    impl Platform for TimerPlatform {
        fn configure_cpuid(&mut self, cpuid: &mut CpuidTable, _vcpus: u32) {
            cpuid.set(0x4000_0000, 0, crate::cpuid::CpuidResult { eax: 0x4000_0001, ..Default::default() });
        }
        fn hypercall(&mut self, ctx: &mut PlatformCtx, _i: u32, vcpu: &mut dyn Vcpu) -> PlatformEffect {
            self.calls += 1;
            let mut g = vcpu.gprs();
            g[0] = 0;
            vcpu.set_gprs(&g);
            ctx.timers.schedule(TimerKey::Platform(7), ctx.now_ns + 5000);
            PlatformEffect::Block
        }
        fn msr_read(&mut self, _: &mut PlatformCtx, _: u32, msr: u32) -> Option<Result<u64, ()>> {
            (msr == 0x4000_0000).then_some(Ok(0x1234))
        }
        fn msr_write(
            &mut self,
            _: &mut PlatformCtx,
            _: u32,
            _: &mut dyn Vcpu,
            _: u32,
            _: u64,
        ) -> Option<Result<(), ()>> {
            None
        }
        fn timer_fired(&mut self, ctx: &mut PlatformCtx, key: u64) {
            assert_eq!(key, 7);
            ctx.effects.push(PlatformEffect::Wake { vcpu: 0 });
            self.vector_armed = true;
        }
        fn pending_vector(&mut self, _: &GuestMemory, _: u32) -> Option<u8> {
            // Like Xen's callback vector: offered while "upcall_pending".
            self.vector_armed.then_some(0xf3)
        }
        fn wake(&mut self, _: &mut PlatformCtx, _: u32) -> bool {
            false
        }
        fn sync(&mut self, _: &mut PlatformCtx) {}
    }

    #[test]
    fn platform_block_timer_wake_and_direct_vector() {
        let script = vec![
            step(100, VcpuExit::Hypercall),
            Step { insns: 10, exit: VcpuExit::MsrRead { msr: 0x4000_0000 }, if_set: true },
            step(1, VcpuExit::Halt),
        ];
        let log = Arc::new(Mutex::new(Log::default()));
        let l2 = log.clone();
        let platform = TimerPlatform::default();
        let mut m = Machine::with_platform(
            MachineConfig { quantum: 1000, ..Default::default() },
            Some(Box::new(platform)),
            &mut |_, _, _| Ok(ScriptVcpu::boxed(&script, [u64::MAX; 16], &l2)),
        )
        .unwrap();
        assert_eq!(m.cpuid().lookup(0, 1, 0x4000_0000, 0).eax, 0x4000_0001, "platform CPUID leaves installed");
        m.set_console(Box::new(Sink::default()));
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(m.vcpu(0).gprs()[0], 0, "hypercall result written");
        let log = log.lock().unwrap();
        // Blocked at 100 ns; the timer at 5100 ns wakes it and the next slice starts there.
        assert!(log.tsc_sets.contains(&clock::ns_to_tsc(5100)), "{:?}", log.tsc_sets);
        assert_eq!(log.completions, vec![Completion::Data(0x1234)]);
        assert_eq!(log.injected.first(), Some(&0xf3));
    }

    /// A platform whose every hypercall toggles its callback GSI.
    struct GsiPlatform {
        gsi: u32,
        level: bool,
    }

    impl Platform for GsiPlatform {
        inert_platform!(configure_cpuid, msr_read, msr_write, timer_fired, pending_vector, wake, sync);
        fn hypercall(&mut self, ctx: &mut PlatformCtx, _: u32, _: &mut dyn Vcpu) -> PlatformEffect {
            self.level = !self.level;
            ctx.gsi.set(self.gsi, crate::irq::source::XEN_CALLBACK, self.level);
            PlatformEffect::None
        }
    }

    fn gsi_machine(script: Vec<Step>, gsi: u32) -> (Machine, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let l2 = log.clone();
        let mut m = Machine::with_platform(
            MachineConfig { quantum: 1000, ..Default::default() },
            Some(Box::new(GsiPlatform { gsi, level: false })),
            &mut |_, _, _| Ok(ScriptVcpu::boxed(&script, [0; 16], &l2)),
        )
        .unwrap();
        m.set_console(Box::new(Sink::default()));
        (m, log)
    }

    /// An MMIO write with interrupts enabled at the exit.
    fn mmio_w(gpa: u64, data: u64) -> Step {
        Step { insns: 1, exit: VcpuExit::MmioWrite { gpa, size: 4, data }, if_set: true }
    }

    fn out(port: u16, size: u8, data: u32) -> Step {
        Step { insns: 1, exit: VcpuExit::IoOut { port, size, data }, if_set: true }
    }

    fn hypercall_if() -> Step {
        Step { insns: 1, exit: VcpuExit::Hypercall, if_set: true }
    }

    /// A platform that records the machine's online and slice reports.
    #[derive(Default)]
    struct RecordingPlatform {
        events: Arc<Mutex<Vec<(u32, String)>>>,
    }

    impl Platform for RecordingPlatform {
        inert_platform!(configure_cpuid, hypercall, msr_read, msr_write, timer_fired, pending_vector, wake, sync);
        fn vcpu_online(&mut self, ctx: &mut PlatformCtx, vcpu: u32, online: bool) {
            self.events.lock().unwrap().push((vcpu, format!("online {online} at {}", ctx.now_ns)));
        }
        fn vcpu_slice(&mut self, ctx: &mut PlatformCtx, vcpu: u32, event: SliceEvent) {
            self.events.lock().unwrap().push((vcpu, format!("{event:?} at {}", ctx.now_ns)));
        }
    }

    #[test]
    fn init_sipi_and_slices_are_reported_to_the_platform() {
        const ICR_HI: u64 = 0xfee0_0310;
        const ICR_LO: u64 = 0xfee0_0300;
        // INIT (delivery mode 5, level assert) then SIPI (mode 6, vector 8) to APIC ID 1.
        let bsp = vec![
            mmio_w(ICR_HI, 1 << 24),
            mmio_w(ICR_LO, 0x4500),
            mmio_w(ICR_HI, 1 << 24),
            mmio_w(ICR_LO, 0x4608),
            step(10, VcpuExit::Halt),
        ];
        let ap = vec![step(7, VcpuExit::Halt)];
        let log = Arc::new(Mutex::new(Log::default()));
        let platform = RecordingPlatform::default();
        let events = platform.events.clone();
        let mut m = Machine::with_platform(
            MachineConfig { cpus: 2, quantum: 1000, ..Default::default() },
            Some(Box::new(platform)),
            &mut |id, _, _| Ok(ScriptVcpu::boxed(if id == 0 { &bsp } else { &ap }, [0; 16], &log)),
        )
        .unwrap();
        m.set_console(Box::new(Sink::default()));
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        let events = events.lock().unwrap().clone();
        let ns = clock::NS_PER_INSN;
        let want: Vec<(u32, String)> = vec![
            (0, "Start at 0".into()),
            (1, "online false at 0".into()),
            (1, "online true at 0".into()),
            (0, format!("Halted at {}", 14 * ns)),
            // The AP's first slice starts with the round, as the BSP's did.
            (1, "Start at 0".into()),
            (1, format!("Halted at {}", 7 * ns)),
        ];
        assert_eq!(events, want);
    }

    const SVR: u64 = 0xfee0_00f0;
    const EOI: u64 = 0xfee0_00b0;
    const LINT0: u64 = 0xfee0_0350;
    const IOREGSEL: u64 = 0xfec0_0000;
    const IOWIN: u64 = 0xfec0_0010;

    /// Program IOAPIC pin `pin`: destination APIC ID 0, low word `low`.
    fn program_pin(pin: u64, low: u64) -> Vec<Step> {
        vec![mmio_w(IOREGSEL, 0x11 + 2 * pin), mmio_w(IOWIN, 0), mmio_w(IOREGSEL, 0x10 + 2 * pin), mmio_w(IOWIN, low)]
    }

    #[test]
    fn level_gsi_reaches_the_lapic_and_is_redelivered_after_eoi_while_asserted() {
        // Pin 28 (the platform device's INTA): level, active low, vector 0x51.
        let mut script = vec![mmio_w(SVR, 0x1ff)];
        script.extend(program_pin(28, 0x51 | (1 << 15) | (1 << 13)));
        script.extend([
            hypercall_if(), // assert: delivered and taken at once
            mmio_w(EOI, 0), // still asserted: delivered again
            hypercall_if(), // deassert
            mmio_w(EOI, 0), // remote IRR clears; nothing more
            step(1, VcpuExit::Halt),
        ]);
        let (mut m, log) = gsi_machine(script, crate::devices::pci::intx_gsi(3, 0));
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(log.lock().unwrap().injected, vec![0x51, 0x51]);
        assert_eq!(m.ioapic.redirection_entry(28).map(|e| e & (1 << 14)), Some(0), "remote IRR clear");
    }

    #[test]
    fn masked_pin_delivers_nothing_until_unmasked() {
        let mut script = vec![mmio_w(SVR, 0x1ff)];
        script.extend(program_pin(20, 0x62 | (1 << 15) | (1 << 16)));
        script.push(hypercall_if()); // assert while masked
        script.push(step(1, VcpuExit::MmioRead { gpa: 0xfee0_0200 + 0x30, size: 4 })); // IRR 0x60-0x7f
        script.extend(program_pin(20, 0x62 | (1 << 15))); // unmask
        script.push(step(1, VcpuExit::Halt));
        let (mut m, log) = gsi_machine(script, 20);
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        let log = log.lock().unwrap();
        let irr = log.completions.iter().find(|c| matches!(c, Completion::Data(_)));
        assert_eq!(irr, Some(&Completion::Data(0)), "nothing requested while masked");
        assert_eq!(log.injected, vec![0x62]);
    }

    #[test]
    fn edge_pin_is_not_redelivered_by_eoi() {
        let mut script = vec![mmio_w(SVR, 0x1ff)];
        script.extend(program_pin(10, 0x45));
        script.extend([hypercall_if(), mmio_w(EOI, 0), mmio_w(EOI, 0), step(1, VcpuExit::Halt)]);
        let (mut m, log) = gsi_machine(script, 10);
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(log.lock().unwrap().injected, vec![0x45]);
    }

    #[test]
    fn uart_interrupt_reaches_the_ioapic_on_irq4() {
        let mut script = vec![mmio_w(SVR, 0x1ff)];
        script.extend(program_pin(4, 0x34));
        // OUT2 gates the 16550's interrupt onto the ISA bus; then enable
        // the THR-empty interrupt, which is pending at once (THR is empty).
        script.extend([out(0x3fc, 1, 0x08), out(0x3f9, 1, 0x02), step(1, VcpuExit::Halt)]);
        let (mut m, log, _) = machine(script, MachineConfig { quantum: 1000, ..Default::default() });
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(log.lock().unwrap().injected, vec![0x34]);
        assert!(m.gsi.source_level(COM1_GSI, crate::irq::source::UART));
    }

    #[test]
    fn pic_delivers_extint_through_lint0() {
        let mut script = vec![mmio_w(SVR, 0x1ff), mmio_w(LINT0, 0x700)];
        // init_8259A-style initialisation: vectors 0x30 (master), 0x38 (slave).
        for (port, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01)] {
            script.push(out(port, 1, v));
        }
        for (port, v) in [(0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01)] {
            script.push(out(port, 1, v));
        }
        script.push(out(0x21, 1, 0xef)); // OCW1: only IRQ4 unmasked
        script.extend([out(0x3fc, 1, 0x08), out(0x3f9, 1, 0x02)]);
        script.push(out(0x20, 1, 0x0b)); // OCW3: read ISR
        script.push(step(1, VcpuExit::IoIn { port: 0x20, size: 1 }));
        script.push(step(1, VcpuExit::Halt));
        let (mut m, log, _) = machine(script, MachineConfig { quantum: 1000, ..Default::default() });
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        let log = log.lock().unwrap();
        assert_eq!(log.injected, vec![0x34], "IRQ4 = master base + 4; the IOAPIC pin is masked");
        assert_eq!(log.completions.last(), Some(&Completion::Data(0x10)), "IR4 in service");
    }

    #[test]
    fn pic_is_silent_while_lint0_is_masked() {
        let mut script = vec![mmio_w(SVR, 0x1ff)];
        for (port, v) in [(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01)] {
            script.push(out(port, 1, v));
        }
        script.extend([out(0x3fc, 1, 0x08), out(0x3f9, 1, 0x02), step(1, VcpuExit::Halt)]);
        let (mut m, log, _) = machine(script, MachineConfig { quantum: 1000, ..Default::default() });
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert!(log.lock().unwrap().injected.is_empty());
    }

    #[test]
    fn xen_platform_pci_config_through_ports() {
        let cfg = |reg: u32| 0x8000_0000 | (3 << 11) | reg;
        let script = vec![
            step(1, VcpuExit::IoOut { port: 0xcf8, size: 4, data: cfg(0) }),
            step(1, VcpuExit::IoIn { port: 0xcfc, size: 4 }),
            step(1, VcpuExit::IoIn { port: 0xcfe, size: 2 }),
            step(1, VcpuExit::IoOut { port: 0xcf8, size: 4, data: cfg(0x3c) }),
            step(1, VcpuExit::IoIn { port: 0xcfc, size: 1 }),
            step(1, VcpuExit::IoIn { port: 0xcfd, size: 1 }),
            step(1, VcpuExit::IoOut { port: 0xcf8, size: 4, data: cfg(0x10) }),
            step(1, VcpuExit::IoOut { port: 0xcfc, size: 4, data: u32::MAX }),
            step(1, VcpuExit::IoIn { port: 0xcfc, size: 4 }),
            step(1, VcpuExit::IoOut { port: 0xcf8, size: 4, data: 0x8000_0000 | (4 << 11) }),
            step(1, VcpuExit::IoIn { port: 0xcfc, size: 4 }),
            step(1, VcpuExit::Halt),
        ];
        let (mut m, log, _) = machine(script, Default::default());
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        let data: Vec<Completion> =
            log.lock().unwrap().completions.iter().copied().filter(|c| matches!(c, Completion::Data(_))).collect();
        assert_eq!(
            data,
            vec![
                Completion::Data(0x0001_5853), // vendor 5853, device 0001
                Completion::Data(0x0001),      // device ID alone
                Completion::Data(28),          // interrupt line: GSI of 00:03 INTA
                Completion::Data(1),           // interrupt pin: INTA
                Completion::Data(0xffff_ff01), // BAR0 sized: 256 bytes of I/O
                Completion::Data(0xffff_ffff), // 00:04.0 is absent
            ]
        );
    }

    #[test]
    fn madt_lists_the_ioapic() {
        let (m, _, _) = machine(vec![], MachineConfig { cpus: 2, ..Default::default() });
        // Find the MADT ("APIC") through the XSDT the RSDP points to (ACPI 6.0, 5.2.5-5.2.12).
        let rd = |gpa: u64, n: usize| {
            let mut b = vec![0; n];
            m.mem.read(gpa, &mut b).unwrap();
            b
        };
        let rsdp = rd(m.rsdp(), 36);
        let xsdt = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt_len = u32::from_le_bytes(rd(xsdt + 4, 4).try_into().unwrap()) as u64;
        let madt = (36..xsdt_len)
            .step_by(8)
            .map(|o| u64::from_le_bytes(rd(xsdt + o, 8).try_into().unwrap()))
            .find(|&t| rd(t, 4) == b"APIC")
            .expect("MADT in the XSDT");
        let len = u32::from_le_bytes(rd(madt + 4, 4).try_into().unwrap()) as usize;
        let body = rd(madt, len);
        let mut o = 44;
        let mut ioapics = Vec::new();
        while o + 2 <= len {
            let (ty, l) = (body[o], body[o + 1] as usize);
            if ty == 1 {
                ioapics.push((body[o + 2], u32::from_le_bytes(body[o + 4..o + 8].try_into().unwrap())));
            }
            o += l.max(2);
        }
        assert_eq!(ioapics, vec![(2, 0xfec0_0000)], "IOAPIC ID = vCPU count, at IOAPIC_BASE");
    }

    #[test]
    fn serial_input_enters_through_the_door_at_a_round_boundary() {
        use crate::door::{Input, ScriptDoor};
        let script = vec![
            step(1, VcpuExit::IoIn { port: 0x3fd, size: 1 }), // icount 1: LSR, nothing received
            step(1500, VcpuExit::IoIn { port: 0x3fd, size: 1 }), // icount 1501: after the 1000 boundary
            step(1, VcpuExit::IoIn { port: 0x3f8, size: 1 }),
            step(1, VcpuExit::IoIn { port: 0x3f8, size: 1 }),
            step(1, VcpuExit::Halt),
        ];
        let (mut m, log, _) = machine(script, MachineConfig { quantum: 1000, ..Default::default() });
        m.set_door(Box::new(ScriptDoor::new(vec![(1000, Input::Serial(b"x".to_vec()))])));
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(m.wall_clock_ns(), Some(0), "the script door's wall clock is the epoch");
        let c = &log.lock().unwrap().completions;
        // LSR: THRE|TEMT always; DR once the byte is in (PC16550D LSR bits 0, 5, 6).
        let lsr = crate::devices::uart16550::LSR_THRE | crate::devices::uart16550::LSR_TEMT;
        assert_eq!(c[0], Completion::Data(lsr as u64));
        assert_eq!(c[1], Completion::Data((lsr | crate::devices::uart16550::LSR_DR) as u64));
        assert_eq!(c[2], Completion::Data(b'x' as u64));
        assert_eq!(c[3], Completion::Data(0), "receiver empty again");
    }

    /// A platform that remembers the inputs the door gave it.
    #[derive(Default)]
    struct InputPlatform(Arc<Mutex<Vec<(crate::door::Input, usize)>>>);

    impl Platform for InputPlatform {
        inert_platform!(configure_cpuid, hypercall, msr_read, msr_write, timer_fired, pending_vector, wake, sync);
        fn input(&mut self, ctx: &mut PlatformCtx, input: &crate::door::Input) {
            self.0.lock().unwrap().push((input.clone(), ctx.console_input.len()));
            if matches!(input, crate::door::Input::XenstoreClient { connected: false, .. }) {
                ctx.effects.push(PlatformEffect::Shutdown(ShutdownReason::Poweroff));
            }
        }
    }

    #[test]
    fn platform_gets_wall_clock_console_and_xenstore_inputs() {
        use crate::door::{Input, ScriptDoor};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut m = Machine::with_platform(
            MachineConfig { quantum: 1000, ..Default::default() },
            Some(Box::new(InputPlatform(seen.clone()))),
            &mut |_, _, _| {
                Ok(Box::new(ScriptVcpu {
                    script: VecDeque::new(),
                    retired: 0,
                    if_set: false,
                    gpr: [0; 16],
                    window: false,
                    log: Arc::new(Mutex::new(Log::default())),
                }))
            },
        )
        .unwrap();
        m.set_console(Box::new(Sink::default()));
        m.set_door(Box::new(ScriptDoor::new(vec![
            (0, Input::Console(b"ls\n".to_vec())),
            (2500, Input::XenstoreSocket { client: 1, bytes: vec![1, 2] }),
            (2500, Input::XenstoreClient { client: 1, connected: false }),
        ])));
        assert_eq!(m.run().unwrap(), StopReason::GuestShutdown(ShutdownReason::Poweroff));
        assert_eq!(m.retired_instructions(), 3000, "stopped at the boundary where the input arrived");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (Input::WallClock { epoch_ns: 0 }, 0),
                (Input::Console(b"ls\n".to_vec()), 3), // already queued for the PV console
                (Input::XenstoreSocket { client: 1, bytes: vec![1, 2] }, 3),
                (Input::XenstoreClient { client: 1, connected: false }, 3),
            ]
        );
    }

    /// A live door whose one input arrives after a few idle waits.
    struct TrickleDoor {
        waits: Arc<Mutex<u32>>,
        delivered: bool,
    }

    impl Door for TrickleDoor {
        fn poll(&mut self, _at: Stamp) -> Result<Vec<Input>, DoorError> {
            if !self.delivered && *self.waits.lock().unwrap() >= 3 {
                self.delivered = true;
                return Ok(vec![Input::Console(b"x".to_vec())]);
            }
            Ok(Vec::new())
        }
        fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError> {
            ClosedDoor.query(at, q)
        }
        fn live(&self, _at: Stamp) -> bool {
            !self.delivered
        }
        fn wait(&mut self) {
            *self.waits.lock().unwrap() += 1;
        }
    }

    /// Offers its callback vector once console input has arrived.
    #[derive(Default)]
    struct WakeOnInputPlatform {
        armed: bool,
    }

    impl Platform for WakeOnInputPlatform {
        inert_platform!(configure_cpuid, hypercall, msr_read, msr_write, timer_fired, sync);
        fn pending_vector(&mut self, _: &GuestMemory, _: u32) -> Option<u8> {
            std::mem::take(&mut self.armed).then_some(0x40)
        }
        fn wake(&mut self, _: &mut PlatformCtx, _: u32) -> bool {
            false
        }
        fn input(&mut self, _: &mut PlatformCtx, input: &Input) {
            self.armed |= matches!(input, Input::Console(_));
        }
    }

    fn idle_machine(if_set: bool) -> (Machine, Arc<Mutex<Log>>, Arc<Mutex<u32>>) {
        let script = vec![Step { insns: 10, exit: VcpuExit::Halt, if_set }, step(1, VcpuExit::Halt)];
        let log = Arc::new(Mutex::new(Log::default()));
        let l2 = log.clone();
        let mut m = Machine::with_platform(
            MachineConfig::default(),
            Some(Box::new(WakeOnInputPlatform::default())),
            &mut |_, _, _| Ok(ScriptVcpu::boxed(&script, [0; 16], &l2)),
        )
        .unwrap();
        m.set_console(Box::new(Sink::default()));
        let waits = Arc::new(Mutex::new(0));
        m.set_door(Box::new(TrickleDoor { waits: waits.clone(), delivered: false }));
        (m, log, waits)
    }

    #[test]
    fn an_idle_guest_waits_for_live_input_instead_of_stopping() {
        let (mut m, log, waits) = idle_machine(true);
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(*waits.lock().unwrap(), 3, "waited until the input came");
        assert_eq!(log.lock().unwrap().injected, vec![0x40], "and the input woke the guest");
    }

    #[test]
    fn a_guest_halted_with_interrupts_off_stops_even_with_live_input() {
        let (mut m, log, waits) = idle_machine(false);
        assert_eq!(m.run().unwrap(), StopReason::Halted);
        assert_eq!(*waits.lock().unwrap(), 0, "nothing could wake it: no wait");
        assert!(log.lock().unwrap().injected.is_empty());
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        let r = Machine::new(MachineConfig { cpus: 0, ..Default::default() }, &mut |_, _, _| unreachable!());
        assert!(matches!(r, Err(MachineError::BadCpuCount(0))));
    }
}
