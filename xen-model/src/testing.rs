//! Test support: a `XenPlatform` driven without a CPU. `FakeVcpu` supplies
//! registers and a paging-off translation (guest virtual = physical); `Rig`
//! owns everything a `PlatformCtx` borrows, so unit tests, the fuzz targets
//! and `xensim fuzz-repro` make hypercalls the same way.

use std::collections::VecDeque;

use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::devices::lapic::Lapic;
use sim_core::irq::GsiLines;
use sim_core::platform::{Platform, PlatformCtx, PlatformEffect, TimerKey};
use sim_core::state::{cr0, efer, gpr, seg_attr, sreg, ArchState};
use sim_core::timer_queue::TimerQueue;
use sim_core::vcpu::{Completion, Vcpu, VcpuError, VcpuExit};
use sim_core::GuestMemory;

use crate::{XenConfig, XenPlatform};

/// A register-only vCPU: hypercalls read arguments from `s` and write RAX.
pub struct FakeVcpu {
    pub s: ArchState,
}

impl FakeVcpu {
    /// CPL 0, 64-bit code segment, paging off so arguments are physical.
    pub fn long() -> Self {
        let mut s = ArchState::reset();
        s.cr0 = cr0::PE;
        s.efer = efer::LME | efer::LMA;
        s.seg[sreg::CS].selector = 0x08;
        s.seg[sreg::CS].attr = seg_attr::P | seg_attr::S | seg_attr::CODE | seg_attr::L;
        FakeVcpu { s }
    }

    /// CPL 0, 32-bit protected mode, paging off.
    pub fn prot32() -> Self {
        let mut s = ArchState::reset();
        s.cr0 = cr0::PE;
        s.seg[sreg::CS].selector = 0x08;
        s.seg[sreg::CS].attr = seg_attr::P | seg_attr::S | seg_attr::CODE | seg_attr::DB;
        FakeVcpu { s }
    }

    /// Whether hypercalls from this vCPU use the 32-bit convention.
    pub fn compat(&self) -> bool {
        self.s.efer & efer::LMA == 0
    }
}

impl Vcpu for FakeVcpu {
    fn id(&self) -> u32 {
        0
    }
    fn run(&mut self, _: &GuestMemory, _: u64) -> Result<VcpuExit, VcpuError> {
        Ok(VcpuExit::BudgetExhausted)
    }
    fn complete(&mut self, _: Completion) {}
    fn state(&self) -> ArchState {
        self.s.clone()
    }
    fn set_state(&mut self, s: &ArchState) {
        self.s = s.clone();
    }
    fn gprs(&self) -> [u64; 16] {
        self.s.gpr
    }
    fn set_gprs(&mut self, g: &[u64; 16]) {
        self.s.gpr = *g;
    }
    fn interrupt_ready(&self) -> bool {
        true
    }
    fn inject_interrupt(&mut self, _: u8) {}
    fn request_interrupt_window(&mut self, _: bool) {}
    fn retired_instructions(&self) -> Option<u64> {
        None
    }
    fn tsc(&self) -> u64 {
        0
    }
    fn set_tsc(&mut self, _: u64) {}
}

/// A platform with the machine parts a `PlatformCtx` borrows.
pub struct Rig {
    pub mem: GuestMemory,
    pub timers: TimerQueue<TimerKey>,
    pub lapics: Vec<Lapic>,
    pub gsi: GsiLines,
    pub console: Vec<u8>,
    pub input: VecDeque<u8>,
    pub effects: Vec<PlatformEffect>,
    pub now: u64,
    pub p: XenPlatform,
    pub cpu: FakeVcpu,
}

/// Borrow a `Rig`'s machine parts as a `&mut PlatformCtx` (a macro so the
/// platform and the vCPU stay borrowable beside it).
#[macro_export]
macro_rules! rig_ctx {
    ($r:expr) => {
        &mut sim_core::platform::PlatformCtx {
            mem: &mut $r.mem,
            now_ns: $r.now,
            timers: &mut $r.timers,
            lapics: &mut $r.lapics,
            gsi: &mut $r.gsi,
            console: &mut $r.console,
            console_input: &mut $r.input,
            effects: &mut $r.effects,
        }
    };
}

impl Rig {
    /// A fresh platform with `vcpus` vCPUs over 4 MiB of guest RAM, an Intel
    /// CPUID table and a 64-bit vCPU.
    pub fn new(cfg: XenConfig, vcpus: u32) -> Rig {
        Self::with_memory(cfg, vcpus, 4)
    }

    /// As `new`, with `mib` MiB of guest RAM.
    pub fn with_memory(cfg: XenConfig, vcpus: u32, mib: u64) -> Rig {
        let mut p = XenPlatform::new(cfg, vcpus);
        let mut t = CpuidTable::baseline(Vendor::Intel);
        p.configure_cpuid(&mut t, vcpus);
        let mem = GuestMemory::new(mib.max(2)).unwrap_or_else(|e| panic!("test rig: guest memory: {e}"));
        Rig {
            mem,
            timers: TimerQueue::new(),
            lapics: (0..vcpus.max(1)).map(|i| Lapic::new(i, i == 0)).collect(),
            gsi: GsiLines::new(),
            console: Vec::new(),
            input: VecDeque::new(),
            effects: Vec::new(),
            now: 1_000_000,
            p,
            cpu: FakeVcpu::long(),
        }
    }

    /// Make hypercall `nr` from vCPU `v` with 64-bit (or, on a 32-bit vCPU,
    /// 32-bit) arguments; returns RAX sign-extended and the effect.
    pub fn call_on(&mut self, v: u32, nr: impl Into<u64>, args: &[u64]) -> (i64, PlatformEffect) {
        let compat = self.cpu.compat();
        let regs = if compat {
            [gpr::RBX, gpr::RCX, gpr::RDX, gpr::RSI, gpr::RDI, gpr::RBP]
        } else {
            [gpr::RDI, gpr::RSI, gpr::RDX, gpr::R10, gpr::R8, gpr::R9]
        };
        self.cpu.s.gpr[gpr::RAX] = nr.into();
        for (r, a) in regs.iter().zip(args) {
            self.cpu.s.gpr[*r] = *a;
        }
        let e = self.p.hypercall(rig_ctx!(self), v, &mut self.cpu);
        let rax = self.cpu.s.gpr[gpr::RAX];
        (if compat { rax as u32 as i32 as i64 } else { rax as i64 }, e)
    }

    /// Hypercall from vCPU 0; returns RAX.
    pub fn call(&mut self, nr: impl Into<u64>, args: &[u64]) -> i64 {
        self.call_on(0, nr, args).0
    }

    /// The machine's post-exit platform call.
    pub fn sync(&mut self) {
        self.p.sync(rig_ctx!(self));
    }

    /// Fire platform timer `key` (a `TimerKey::Platform` payload).
    pub fn fire_timer(&mut self, key: u64) {
        self.p.timer_fired(rig_ctx!(self), key);
    }

    /// Ask whether blocked vCPU `v` may run.
    pub fn wake(&mut self, v: u32) -> bool {
        self.p.wake(rig_ctx!(self), v)
    }

    pub fn ctx(&mut self) -> PlatformCtx<'_> {
        PlatformCtx {
            mem: &mut self.mem,
            now_ns: self.now,
            timers: &mut self.timers,
            lapics: &mut self.lapics,
            gsi: &mut self.gsi,
            console: &mut self.console,
            console_input: &mut self.input,
            effects: &mut self.effects,
        }
    }
}
