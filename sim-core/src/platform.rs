//! The seam between the machine and a hypervisor model (xen-model's
//! `XenPlatform`). The machine calls the platform on hypercall exits, on MSRs
//! and timers it owns, and when it looks for interrupts to deliver; the
//! platform never sees which CPU backend runs.

use std::collections::VecDeque;

use crate::cpuid::CpuidTable;
use crate::devices::lapic::Lapic;
use crate::irq::GsiLines;
use crate::memory::GuestMemory;
use crate::timer_queue::TimerQueue;
use crate::vcpu::Vcpu;

/// Timers on the machine's one queue. Platform timers carry the platform's
/// own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum TimerKey {
    Lapic(u32),
    Platform(u64),
}

/// How the guest asked to stop (SCHEDOP_shutdown reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
}

/// What the machine must do after a platform call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformEffect {
    /// Carry on.
    None,
    /// End the calling vCPU's slice.
    Yield,
    /// Block the calling vCPU until `Platform::wake` says it may run (or an
    /// interrupt is delivered to it).
    Block,
    /// Stop the machine.
    Shutdown(ShutdownReason),
    /// Start vCPU `vcpu` with `state` (VCPUOP_initialise + VCPUOP_up).
    StartVcpu { vcpu: u32, state: Box<crate::ArchState> },
    /// Take vCPU `vcpu` offline (VCPUOP_down).
    StopVcpu { vcpu: u32 },
    /// Wake a blocked vCPU (an event arrived for it).
    Wake { vcpu: u32 },
}

/// Where a vCPU's scheduling slice ended (`Platform::vcpu_slice`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceEvent {
    /// The vCPU starts running.
    Start,
    /// Its slice ended but it stays runnable (waits for its next turn).
    Preempted,
    /// It executed HLT and waits for an interrupt.
    Halted,
}

/// What the platform may touch during a call.
pub struct PlatformCtx<'a> {
    pub mem: &'a mut GuestMemory,
    /// Machine time, virtual nanoseconds.
    pub now_ns: u64,
    pub timers: &'a mut TimerQueue<TimerKey>,
    pub lapics: &'a mut [Lapic],
    /// Level-triggered GSI lines (the machine forwards changes to the IOAPIC).
    pub gsi: &'a mut GsiLines,
    /// Guest console output (the simulator's stdout).
    pub console: &'a mut Vec<u8>,
    /// Console input not yet consumed by the guest.
    pub console_input: &'a mut VecDeque<u8>,
    /// Effects beyond the calling vCPU (wake-ups of others, ...).
    pub effects: &'a mut Vec<PlatformEffect>,
}

/// A hypervisor model attached to the machine.
pub trait Platform: Send {
    /// Ranges outside RAM the platform places pages in, to be listed as
    /// reserved in the boot memory map.
    fn reserved_ranges(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }

    /// Once, before the vCPUs exist: add CPUID leaves.
    fn configure_cpuid(&mut self, cpuid: &mut CpuidTable, vcpus: u32);

    /// A hypercall exit from vCPU `vcpu_index`: read arguments from and
    /// write the result to `vcpu`'s registers.
    fn hypercall(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32, vcpu: &mut dyn Vcpu) -> PlatformEffect;

    /// RDMSR of an MSR the CPU does not own: `None` if not the platform's.
    fn msr_read(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32, msr: u32) -> Option<Result<u64, ()>>;
    /// WRMSR likewise; `Some(Err(()))` raises #GP.
    fn msr_write(
        &mut self,
        ctx: &mut PlatformCtx,
        vcpu_index: u32,
        vcpu: &mut dyn Vcpu,
        msr: u32,
        value: u64,
    ) -> Option<Result<(), ()>>;

    /// A platform timer expired.
    fn timer_fired(&mut self, ctx: &mut PlatformCtx, key: u64);

    /// A vector to inject into `vcpu_index` directly, bypassing the LAPIC
    /// (Xen's HVM callback vector while evtchn_upcall_pending is set).
    fn pending_vector(&mut self, mem: &GuestMemory, vcpu_index: u32) -> Option<u8>;

    /// Whether blocked vCPU `vcpu_index` may run again.
    fn wake(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32) -> bool;

    /// Called after every exit the machine handles: re-evaluate level
    /// lines that depend on guest memory (e.g. deassert the callback GSI
    /// once upcall_pending is seen clear).
    fn sync(&mut self, ctx: &mut PlatformCtx);

    /// The machine changed vCPU `vcpu`'s online state by itself: an INIT
    /// IPI took an application processor offline (`false`), a SIPI started
    /// it (`true`). Platform-started vCPUs (`StartVcpu`) are not reported.
    fn vcpu_online(&mut self, _ctx: &mut PlatformCtx, _vcpu: u32, _online: bool) {}

    /// vCPU `vcpu`'s scheduling slice started or ended (for runstate
    /// accounting).
    fn vcpu_slice(&mut self, _ctx: &mut PlatformCtx, _vcpu: u32, _event: SliceEvent) {}

    /// A value from outside arrived through the machine's door (xenstore
    /// socket traffic, disk completions, the wall clock at power-on, console
    /// input after it was queued on `ctx.console_input`). Called at round
    /// boundaries only.
    fn input(&mut self, ctx: &mut PlatformCtx, input: &crate::door::Input) {
        let _ = (ctx, input);
    }

    /// The platform's whole state (every sub-model, the xenstore tree) for
    /// snapshots and state hashes. A platform with state must override this
    /// and `restore`; the defaults describe a stateless one.
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Take back what `save` produced. Overlay pages the platform owns are
    /// its to re-create and map again through `ctx.mem`; the machine restores
    /// their contents afterwards.
    fn restore(&mut self, ctx: &mut PlatformCtx, data: &[u8]) -> Result<(), String> {
        let _ = ctx;
        if data.is_empty() {
            Ok(())
        } else {
            Err(format!("{} bytes of platform state for a platform that keeps none", data.len()))
        }
    }
}
