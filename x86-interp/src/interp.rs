//! The interpreter: state, the run loop, instruction fetch through the
//! decoded-instruction cache, and the `Vcpu` implementation.
//!
//! Instructions commit architectural state only after all their memory
//! accesses succeeded, so an exception or an exit restarts the instruction
//! cleanly. Exits (port I/O, MMIO, MSRs the CPU does not own) park the exit
//! and unwind; the answer lands in `io_log`, and the re-executed instruction
//! takes logged answers in order instead of exiting again (a logged write is
//! skipped). The log is cleared when the instruction retires or faults.
//!
//! Instruction counting: every retired instruction counts one, and each
//! iteration of a REP string instruction counts one (the instruction
//! restarts per element, as the architecture allows).

use std::collections::HashSet;
use std::sync::Arc;

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
use sim_core::clock::TSC_PER_INSN;
use sim_core::cpuid::CpuidTable;
use sim_core::memory::GuestMemory;
use sim_core::state::{cr0, efer, rflags, sreg, ArchState};
use sim_core::{Completion, Vcpu, VcpuError, VcpuExit};

use crate::code_cache::{Cached, CodeCache, Decoded, PAGE};
use crate::fault::{exc, gp0, vector, Stop, R};
use crate::lazy_flags::Lazy;
use crate::tlb::Tlb;

/// An answer to an exit, kept until the instruction retires.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Logged {
    Value(u64),
    Fault,
}

pub struct Interpreter {
    pub(crate) s: ArchState,
    pub(crate) id: u32,
    pub(crate) vcpu_count: u32,
    pub(crate) cpuid: Arc<CpuidTable>,
    pub(crate) retired: u64,
    tsc_offset: u64,
    pub(crate) tlb: Tlb,
    pub(crate) code: CodeCache,
    /// Current fetch page: linear page tag and code-cache slot.
    fetch_tag: u64,
    fetch_slot: Option<u32>,
    io_log: Vec<Logged>,
    io_pos: usize,
    /// Exit to report (set by the access that needs the machine, or by
    /// HLT/VMCALL after they retire).
    pub(crate) exit: Option<VcpuExit>,
    awaiting: Option<VcpuExit>,
    window: bool,
    attention: bool,
    pub(crate) shutdown: bool,
    mem_gen: u64,
    /// `GuestMemory::dirty_epoch` when the write TLB entries were made.
    dirty_epoch: u64,
    warned: HashSet<Mnemonic>,
    // Mode cache, refreshed by `refresh_mode`.
    pub(crate) bits: u32,
    /// RIP wrap mask for the code size (0xffff, 0xffffffff or all ones).
    ip_mask: u64,
    /// Highest RIP an instruction may reach: the CS limit, or all ones in
    /// 64-bit mode (no limit check).
    fetch_limit: u64,
    pub(crate) long64: bool,
    pub(crate) real: bool,
    pub(crate) cpl: u8,
    /// RIP of the next instruction (branches overwrite it).
    pub(crate) next_rip: u64,
    /// `retired` value at which the current `run` stops (for REP bulk runs).
    pub(crate) run_target: u64,
    /// L0: linear RIP -> decoded instruction, valid while `gen == l0_gen`.
    /// Saves the page/offset look-up chain on every hit; any event that can
    /// change what a linear address decodes to bumps `l0_gen`.
    /// Lent to the run loop while it runs, so handlers can borrow an entry
    /// while holding `&mut self`.
    l0: Option<Box<L0>>,
    l0_gen: u64,
    /// Status flags not yet computed (see lazy_flags.rs).
    pub(crate) lazy: Lazy,
    /// A byte OUT to this port is a hypercall (see `set_hypercall_port`).
    pub(crate) hypercall_port: Option<u16>,
    /// VMCALL/VMMCALL is a hypercall only at these linear addresses (see
    /// `set_hypercall_sites`); None: everywhere.
    pub(crate) hypercall_sites: Option<Vec<u64>>,
}

type L0 = [L0Entry; L0_ENTRIES];

const L0_ENTRIES: usize = 512;

#[derive(Clone, Copy)]
struct L0Entry {
    la: u64,
    gen: u64,
    c: Cached,
}

impl Interpreter {
    /// Treat a byte OUT to `port` as a hypercall: it retires and `run`
    /// returns `VcpuExit::Hypercall`, as KVM reports the hypercall-page
    /// stubs that end in `out port, al` (sim_core::layout::HYPERCALL_PORT).
    /// A run recorded on KVM replays on the interpreter with this set.
    pub fn set_hypercall_port(&mut self, port: Option<u16>) {
        self.hypercall_port = port;
    }

    /// Make VMCALL/VMMCALL a hypercall exit only at `sites` (linear
    /// addresses), as on a KVM host without Xen support whose hardware
    /// breakpoints caught the kernel's own hypercall instructions there
    /// (strategy 3; no sites under strategy 2). Elsewhere the instruction
    /// gets the answer KVM's own hypercall handler gave (see kvm_calls.rs).
    /// None (the default): a hypercall wherever it runs.
    pub fn set_hypercall_sites(&mut self, sites: Option<Vec<u64>>) {
        self.hypercall_sites = sites;
    }

    pub fn new(id: u32, vcpu_count: u32, cpuid: Arc<CpuidTable>) -> Interpreter {
        let mut i = Interpreter {
            s: ArchState::reset(),
            id,
            vcpu_count,
            cpuid,
            retired: 0,
            tsc_offset: 0,
            tlb: Tlb::default(),
            code: CodeCache::default(),
            fetch_tag: 0,
            fetch_slot: None,
            io_log: Vec::new(),
            io_pos: 0,
            ip_mask: 0xffff,
            fetch_limit: 0xffff,
            exit: None,
            awaiting: None,
            window: false,
            attention: false,
            shutdown: false,
            mem_gen: u64::MAX,
            dirty_epoch: u64::MAX,
            warned: HashSet::new(),
            bits: 16,
            long64: false,
            real: true,
            cpl: 0,
            next_rip: 0,
            run_target: 0,
            l0: Some(Box::new([L0Entry { la: 0, gen: 0, c: Cached::new(Instruction::default(), 64) }; L0_ENTRIES])),
            l0_gen: 1,
            hypercall_port: None,
            hypercall_sites: None,
            lazy: Lazy::default(),
        };
        i.refresh_mode();
        i
    }

    /// Drop decoded code for guest-physical `[start, end)`. Writes by this
    /// vCPU and any write between `run` calls are detected anyway (see
    /// code_cache.rs); this is for callers that want the cost paid now.
    pub fn invalidate_code(&mut self, gpa_range: std::ops::Range<u64>) {
        let mut gfn = gpa_range.start >> 12;
        while gfn << 12 < gpa_range.end {
            self.code_written(gfn);
            gfn += 1;
        }
    }

    /// Page `gfn` was written: forget its decoded instructions.
    pub(crate) fn code_written(&mut self, gfn: u64) {
        if self.code.invalidate(gfn).is_some() {
            // L0 may hold instructions of this page even when it is not the
            // current fetch page.
            self.forget_fetch();
        }
    }

    /// Drop the current fetch page and every L0 entry (O(1)).
    pub(crate) fn forget_fetch(&mut self) {
        self.fetch_slot = None;
        self.l0_gen = self.l0_gen.wrapping_add(1);
    }

    /// Recompute the cached mode after CS, CR0, EFER or RFLAGS.VM changed.
    pub(crate) fn refresh_mode(&mut self) {
        let (old_bits, old_cpl) = (self.bits, self.cpl);
        let cs = self.s.seg[sreg::CS];
        let pe = self.s.cr0 & cr0::PE != 0;
        let vm = self.s.rflags & rflags::VM != 0;
        self.real = !pe || vm;
        self.long64 = pe && self.s.efer & efer::LMA != 0 && cs.long();
        self.bits = if self.long64 {
            64
        } else if pe && !vm && cs.default_big() {
            32
        } else {
            16
        };
        self.cpl = self.s.cpl();
        self.ip_mask = match self.bits {
            64 => u64::MAX,
            32 => 0xffff_ffff,
            _ => 0xffff,
        };
        self.fetch_limit = if self.long64 { u64::MAX } else { cs.limit as u64 };
        self.fetch_slot = None;
        if old_bits != self.bits || old_cpl != self.cpl {
            // L0 entries were decoded for, and permission-checked at, the old mode.
            self.forget_fetch();
        }
    }

    /// Flush translations (CR0/CR4/EFER changes).
    pub(crate) fn flush_tlb(&mut self) {
        self.tlb.flush_all();
        self.forget_fetch();
    }

    pub(crate) fn flush_tlb_non_global(&mut self) {
        self.tlb.flush_non_global();
        self.forget_fetch();
    }

    pub(crate) fn flush_tlb_page(&mut self, la: u64) {
        self.tlb.flush_page(la);
        self.forget_fetch();
    }

    fn update_attention(&mut self) {
        let e = &self.s.events;
        self.attention =
            self.window || e.interrupt.is_some() || e.exception.is_some() || (e.nmi_pending && !e.nmi_masked);
    }

    pub(crate) fn warn_once(&mut self, ins: &Instruction) {
        if self.warned.insert(ins.mnemonic()) {
            tracing::warn!("x86-interp: {:?} ({:?}) is not implemented; raising #UD", ins.mnemonic(), ins.code());
        }
    }

    // Exits.

    fn next_logged(&mut self) -> Option<Logged> {
        let e = self.io_log.get(self.io_pos).copied();
        if e.is_some() {
            self.io_pos += 1;
        }
        e
    }

    /// An access answered by the machine: the logged answer, or an exit.
    pub(crate) fn exit_read(&mut self, exit: VcpuExit, size: usize) -> R<u64> {
        match self.next_logged() {
            Some(Logged::Value(v)) => Ok(v & crate::operands::mask(size)),
            Some(Logged::Fault) => Err(gp0()),
            None => {
                self.exit = Some(exit);
                Err(Stop::EXIT)
            }
        }
    }

    /// A write performed by the machine: skipped if already done.
    pub(crate) fn exit_write(&mut self, exit: VcpuExit) -> R<()> {
        self.exit_read(exit, 8).map(|_| ())
    }

    // Fetch.

    /// Linear address of RIP.
    #[inline(always)]
    pub(crate) fn rip_la(&self) -> u64 {
        if self.long64 {
            self.s.rip
        } else {
            self.s.seg[sreg::CS].base.wrapping_add(self.s.rip) & 0xffff_ffff
        }
    }

    /// The decoded instruction at linear `la` if it is in the current fetch page.
    #[inline(always)]
    fn fetch_fast(&self, la: u64) -> Option<&Cached> {
        if la & !0xfff != self.fetch_tag {
            return None;
        }
        self.code.page(self.fetch_slot?)?.cached((la & 0xfff) as usize)
    }

    fn fetch_miss(&mut self, m: &GuestMemory, la: u64) -> R<(Cached, bool)> {
        match self.fetch_fast(la) {
            Some(c) => Ok((*c, true)),
            None => self.fetch_slow(m, la),
        }
    }

    #[cold]
    fn fetch_slow(&mut self, m: &GuestMemory, la: u64) -> R<(Cached, bool)> {
        self.fetch_slot = None;
        let (host, gpa) = self.xlate_fetch(m, la)?;
        let Some(host) = host else {
            // Executing from MMIO is not modelled.
            return Err(exc(vector::UD));
        };
        let page_base = (host - (la & 0xfff) as usize) as *const [u8; PAGE];
        // SAFETY: `host` points into a mapped guest page that stays valid
        // while this run holds `&GuestMemory`; the page is 4 KiB.
        let bytes = unsafe { &*page_base };
        let clears = self.code.clears;
        let (slot, created) = self.code.enter(gpa >> 12, bytes, self.bits);
        if clears != self.code.clears {
            // Copies of instructions from dropped pages are no longer guarded.
            self.forget_fetch();
        }
        if created {
            self.tlb.drop_writes_to(gpa);
        }
        self.fetch_tag = la & !0xfff;
        self.fetch_slot = Some(slot);
        let off = (la & 0xfff) as usize;
        let cached = match self.code.page_mut(slot) {
            Some(p) => p.get(off),
            None => Decoded::CrossesPage,
        };
        match cached {
            Decoded::Hit(c) => Ok((c, true)),
            Decoded::CrossesPage => {
                let mut buf = [0u8; 15];
                let n = 15.min(PAGE - off);
                buf[..n].copy_from_slice(&bytes[off..off + n]);
                let next_page = la.wrapping_add(n as u64);
                let next_page = if self.long64 { next_page } else { next_page & 0xffff_ffff };
                self.fetch_bytes(m, next_page, &mut buf[n..])?;
                let mut dec = Decoder::with_ip(self.bits, &buf, off as u64, DecoderOptions::NONE);
                Ok((Cached::new(dec.decode(), self.bits), false))
            }
        }
    }

    // The loop.

    #[inline(always)]
    fn step(&mut self, m: &GuestMemory, l0: &mut L0) -> R<()> {
        let la = self.rip_la();
        let slot = (la as usize) & (L0_ENTRIES - 1);
        let e = &l0[slot];
        let uncached;
        let c: &Cached = if e.la == la && e.gen == self.l0_gen {
            &l0[slot].c
        } else {
            let (c, cacheable) = self.fetch_miss(m, la)?;
            if cacheable {
                l0[slot] = L0Entry { la, gen: self.l0_gen, c };
                &l0[slot].c
            } else {
                uncached = c;
                &uncached
            }
        };
        let len = c.pre.len as u64;
        let next = self.s.rip.wrapping_add(len);
        self.next_rip = next & self.ip_mask;
        if self.s.rip.wrapping_add(len.saturating_sub(1)) > self.fetch_limit {
            return Err(gp0());
        }
        (c.run)(self, m, c)?;
        self.s.rip = self.next_rip;
        Ok(())
    }

    /// Work at an instruction boundary: pending events and the window.
    #[cold]
    fn boundary(&mut self, m: &GuestMemory) -> Option<VcpuExit> {
        if let Some(e) = self.s.events.exception.take() {
            self.raise(m, e.vector, e.error_code);
        } else if self.s.events.nmi_pending && !self.s.events.nmi_masked && !self.s.events.interrupt_shadow {
            self.s.events.nmi_pending = false;
            self.s.events.nmi_masked = true;
            self.s.events.halted = false;
            self.deliver_external(m, vector::NMI);
        } else if let Some(v) = self.s.events.interrupt.take() {
            self.s.events.halted = false;
            self.deliver_external(m, v);
        }
        self.update_attention();
        if self.shutdown {
            return Some(VcpuExit::Shutdown);
        }
        if self.window && self.interrupt_ready() {
            return Some(VcpuExit::InterruptWindow);
        }
        None
    }

    fn deliver_external(&mut self, m: &GuestMemory, v: u8) {
        let rip = self.s.rip;
        if let Err(e) = self.deliver(m, v, None, crate::interrupts::Source::External, rip) {
            if let Some((vector, code)) = e.fault() {
                self.raise(m, vector, code);
            } else {
                self.shutdown = true;
            }
        }
    }

    fn run_loop(&mut self, m: &GuestMemory, budget: u64, l0: &mut L0) -> VcpuExit {
        let target = self.retired.saturating_add(budget);
        self.run_target = target;
        if self.shutdown {
            return VcpuExit::Shutdown;
        }
        loop {
            // Boundaries and non-simple instructions use `s.rflags` directly.
            self.materialise_flags();
            if self.attention {
                if let Some(exit) = self.boundary(m) {
                    return exit;
                }
                if self.shutdown {
                    return VcpuExit::Shutdown;
                }
            }
            // HLT returns through `exit`; a halted vCPU only gets here on entry.
            if self.s.events.halted {
                return VcpuExit::Halt;
            }
            if self.retired >= target {
                return VcpuExit::BudgetExhausted;
            }
            let shadow = self.s.events.interrupt_shadow;
            let single_step = self.s.rflags & rflags::TF != 0;
            let r = match self.step(m, l0) {
                Ok(()) => {
                    self.retired += 1;
                    if shadow {
                        self.s.events.interrupt_shadow = false;
                    }
                    if !self.io_log.is_empty() {
                        self.io_log.clear();
                        self.io_pos = 0;
                    }
                    if self.exit.is_some() {
                        if let Some(e) = self.exit.take() {
                            return e;
                        }
                    }
                    if single_step {
                        // Single-step trap after the instruction (DR6.BS);
                        // not after HLT/VMCALL, which returned above.
                        self.s.dr[4] |= 1 << 14;
                        self.raise(m, vector::DB, None);
                        if self.shutdown {
                            return VcpuExit::Shutdown;
                        }
                        continue;
                    }
                    // Nothing needs boundary work (no event, shadow or trap
                    // flag, which simple instructions cannot change): run
                    // simple instructions back to back.
                    if self.attention
                        || self.s.events.halted
                        || self.s.events.interrupt_shadow
                        || self.s.rflags & rflags::TF != 0
                    {
                        continue;
                    }
                    if self.long64 {
                        self.run_simple::<true>(m, l0)
                    } else {
                        self.run_simple::<false>(m, l0)
                    }
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => {}
                Err(e) if e.fault().is_some() => {
                    let (vector, code) = e.fault().unwrap_or((0, None));
                    self.io_log.clear();
                    self.io_pos = 0;
                    self.raise(m, vector, code);
                    if self.shutdown {
                        return VcpuExit::Shutdown;
                    }
                }
                Err(_) => {
                    // The instruction restarts and replays the log from the top.
                    self.io_pos = 0;
                    let e = self.exit.take().unwrap_or(VcpuExit::Shutdown);
                    self.awaiting = Some(e);
                    return e;
                }
            }
        }
    }

    /// Run cached simple instructions (see fast.rs) until the budget is
    /// spent, an instruction is not cached in L0 or not simple, or one
    /// stops. Simple instructions never touch events, the shadow, TF, the
    /// mode or the I/O log, so none of the checks of `run_loop` can change
    /// between them. Nor do they read RIP or the retired count, which stay
    /// in locals here (no store-to-load round trip per instruction) and are
    /// written back on the way out.
    #[inline(always)]
    fn run_simple<const LONG: bool>(&mut self, m: &GuestMemory, l0: &mut L0) -> R<()> {
        let mut rip = self.s.rip;
        let mut retired = self.retired;
        let target = self.run_target;
        let r = loop {
            if retired >= target {
                break Ok(());
            }
            let la = if LONG { rip } else { self.s.seg[sreg::CS].base.wrapping_add(rip) & 0xffff_ffff };
            let e = &l0[(la as usize) & (L0_ENTRIES - 1)];
            if e.la != la || e.gen != self.l0_gen || !e.c.simple {
                break Ok(());
            }
            let c = &e.c;
            let len = c.pre.len as u64;
            let next = if LONG {
                // 64-bit mode: no RIP wrap, no CS limit.
                rip.wrapping_add(len)
            } else {
                if rip.wrapping_add(len.saturating_sub(1)) > self.fetch_limit {
                    break Err(gp0());
                }
                rip.wrapping_add(len) & self.ip_mask
            };
            self.next_rip = next;
            if let Err(e) = (c.run)(self, m, c) {
                break Err(e);
            }
            rip = if c.branch { self.next_rip } else { next };
            retired += 1;
        };
        self.s.rip = rip;
        self.retired = retired;
        r
    }
}

fn exit_name(e: &VcpuExit) -> &'static str {
    match e {
        VcpuExit::IoIn { .. } => "IoIn",
        VcpuExit::IoOut { .. } => "IoOut",
        VcpuExit::MmioRead { .. } => "MmioRead",
        VcpuExit::MmioWrite { .. } => "MmioWrite",
        VcpuExit::MsrRead { .. } => "MsrRead",
        VcpuExit::MsrWrite { .. } => "MsrWrite",
        _ => "exit",
    }
}

impl Vcpu for Interpreter {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self, mem: &GuestMemory, budget: u64) -> Result<VcpuExit, VcpuError> {
        if let Some(e) = &self.awaiting {
            return Err(VcpuError::MissingCompletion(exit_name(e)));
        }
        if mem.generation() != self.mem_gen {
            // Host pointers are stale after a map change.
            self.flush_tlb();
            self.code.clear();
            self.mem_gen = mem.generation();
        }
        if mem.dirty_epoch() != self.dirty_epoch {
            // Pages are marked dirty when a write entry is made, so a new
            // dirty epoch needs new entries.
            self.flush_tlb();
            self.dirty_epoch = mem.dirty_epoch();
        }
        self.code.new_epoch();
        self.forget_fetch();
        let mut l0 = self.l0.take().unwrap_or_else(|| {
            Box::new([L0Entry { la: 0, gen: 0, c: Cached::new(Instruction::default(), 64) }; L0_ENTRIES])
        });
        let exit = self.run_loop(mem, budget, &mut l0);
        self.materialise_flags();
        self.l0 = Some(l0);
        Ok(exit)
    }

    fn complete(&mut self, completion: Completion) {
        let Some(exit) = self.awaiting.take() else { return };
        let entry = match (exit, completion) {
            (_, Completion::Fault) => Logged::Fault,
            (_, Completion::Data(v)) => Logged::Value(v),
            (_, Completion::Done) => Logged::Value(0),
        };
        self.io_log.push(entry);
    }

    fn state(&self) -> ArchState {
        let mut s = self.s.clone();
        s.tsc = self.tsc();
        s
    }

    fn set_state(&mut self, state: &ArchState) {
        self.s = state.clone();
        self.lazy = Lazy::default();
        self.set_tsc(state.tsc);
        self.io_log.clear();
        self.io_pos = 0;
        self.awaiting = None;
        self.exit = None;
        self.shutdown = false;
        self.flush_tlb();
        self.refresh_mode();
        self.update_attention();
    }

    fn rip(&self) -> u64 {
        self.s.rip
    }

    fn gprs(&self) -> [u64; 16] {
        self.s.gpr
    }

    fn set_gprs(&mut self, gpr: &[u64; 16]) {
        self.s.gpr = *gpr;
    }

    fn interrupt_ready(&self) -> bool {
        let e = &self.s.events;
        self.s.rflags & rflags::IF != 0
            && !e.interrupt_shadow
            && e.interrupt.is_none()
            && e.exception.is_none()
            && !self.shutdown
            && self.awaiting.is_none()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.s.events.interrupt = Some(vector);
        self.s.events.halted = false;
        self.update_attention();
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.window = on;
        self.update_attention();
    }

    fn retired_instructions(&self) -> Option<u64> {
        Some(self.retired)
    }

    fn tsc(&self) -> u64 {
        self.tsc_offset.wrapping_add(self.retired.wrapping_mul(TSC_PER_INSN))
    }

    fn set_tsc(&mut self, tsc: u64) {
        self.tsc_offset = tsc.wrapping_sub(self.retired.wrapping_mul(TSC_PER_INSN));
    }

    fn translate_gva(
        &self,
        mem: &GuestMemory,
        gva: u64,
        access: sim_core::paging::Access,
    ) -> Result<u64, sim_core::paging::PageFault> {
        sim_core::paging::translate(mem, &self.s.paging(), gva, access, false).map(|t| t.gpa)
    }
}
