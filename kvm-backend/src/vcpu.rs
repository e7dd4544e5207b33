//! `KvmVcpu`: `sim_core::Vcpu` on a KVM vCPU fd with a user-space irqchip.
//!
//! Exits that need an answer keep KVM's exit open until `complete` writes
//! the answer into kvm_run; KVM finishes the instruction on the next
//! KVM_RUN. String I/O (INS/OUTS, count > 1 in one KVM exit) is reported as
//! consecutive single-item exits without re-entering KVM in between.
//! The budget is wall time (KVM cannot count instructions): see `kick`. The
//! backend never reads the clock: the kick timer says how much of a slice
//! is left, and the machine takes the guest TSC at each exit through its
//! nondeterminism door.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_msr_entry, kvm_xcrs, CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
    KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_IN,
    KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR,
    KVM_INTERNAL_ERROR_EMULATION,
};
use kvm_ioctls::VcpuFd;
use sim_core::clock;
use sim_core::cpuid::CpuidTable;
use sim_core::layout::HYPERCALL_PORT;
use sim_core::memory::GuestMemory;
use sim_core::msr;
use sim_core::paging::{self, Access, PageFault};
use sim_core::state::{rflags, ArchState};
use sim_core::vcpu::{Completion, Vcpu, VcpuError, VcpuExit};

use crate::convert;
use crate::error::KvmError;
use crate::kick::Kick;
use crate::vm::KvmVm;
use crate::xsave;

mod direct;

/// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt): queue an
/// external interrupt (user-space irqchip only). kvm-ioctls has no wrapper.
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;
/// Bounds of one time slice: shorter ones spend more on timer signals than
/// they gain, longer ones starve the other vCPUs and the timer queue.
const MIN_SLICE: Duration = Duration::from_millis(1);
const MAX_SLICE: Duration = Duration::from_millis(100);

/// An exit that is waiting for `complete`.
#[derive(Clone, Copy, Debug)]
enum Awaiting {
    /// Item `index` of a port I/O exit of `count` items.
    Pio {
        port: u16,
        size: u8,
        count: u32,
        index: u32,
        input: bool,
        data_offset: u64,
    },
    Mmio {
        read: bool,
        len: u32,
    },
    Msr {
        read: bool,
    },
}

pub struct KvmVcpu {
    vm: Arc<KvmVm>,
    fd: VcpuFd,
    id: u32,
    awaiting: Option<Awaiting>,
    /// An I/O item was answered and more items of the same exit remain.
    pio_next: Option<Awaiting>,
    /// An exit was answered: KVM must be re-entered to finish the instruction.
    cui_pending: bool,
    halted: bool,
    window: bool,
    /// KVM's ready_for_interrupt_injection && IF at the last exit.
    ready: bool,
    /// What is left of the current time slice (None: no slice under way).
    slice_left: Option<Duration>,
    kick: Option<Kick>,
    tsc_scaled: bool,
    /// A failure in a method that cannot return one; reported by `run`.
    deferred: RefCell<Option<KvmError>>,
    /// Hypercalls stopped on their VMCALL (strategies 1 and 3).
    direct: direct::Direct,
}

impl std::fmt::Debug for KvmVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVcpu").field("id", &self.id).field("awaiting", &self.awaiting).finish()
    }
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::ioctl(what, e)
}

impl KvmVcpu {
    /// KVM_CREATE_VCPU, then KVM_SET_CPUID2 from `cpuid` as vCPU `id` of
    /// `count` sees it, and KVM_SET_TSC_KHZ to the virtual TSC rate when the
    /// host can scale the TSC.
    pub fn new(vm: Arc<KvmVm>, id: u32, count: u32, cpuid: &CpuidTable) -> Result<KvmVcpu, KvmError> {
        let fd = vm.vm.create_vcpu(id as u64).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let entries: Vec<kvm_cpuid_entry2> = cpuid
            .entries()
            .map(|(leaf, sub, _)| {
                let r = cpuid.lookup(id, count, leaf, sub);
                let indexed = cpuid.is_indexed(leaf);
                kvm_cpuid_entry2 {
                    function: leaf,
                    index: if indexed { sub } else { 0 },
                    flags: if indexed { KVM_CPUID_FLAG_SIGNIFCANT_INDEX } else { 0 },
                    eax: r.eax,
                    ebx: r.ebx,
                    ecx: r.ecx,
                    edx: r.edx,
                    ..Default::default()
                }
            })
            .collect();
        let cpuid2 = CpuId::from_entries(&entries)
            .map_err(|e| KvmError::Unsupported(format!("CPUID table too large for KVM_SET_CPUID2: {e:?}")))?;
        fd.set_cpuid2(&cpuid2).map_err(ioctl("KVM_SET_CPUID2"))?;
        let tsc_scaled = vm.caps().tsc_control > 0 && fd.set_tsc_khz((clock::TSC_HZ / 1000) as u32).is_ok();
        Ok(KvmVcpu {
            vm,
            fd,
            id,
            awaiting: None,
            pio_next: None,
            cui_pending: false,
            halted: false,
            window: false,
            ready: false,
            slice_left: None,
            kick: None,
            tsc_scaled,
            deferred: RefCell::new(None),
            direct: direct::Direct::default(),
        })
    }

    /// True when KVM_SET_TSC_KHZ set the guest TSC to `clock::TSC_HZ`.
    pub fn tsc_scaled(&self) -> bool {
        self.tsc_scaled
    }

    fn defer(&self, e: KvmError) {
        self.deferred.borrow_mut().get_or_insert(e);
    }

    /// Let KVM finish an answered instruction now (KVM_RUN with
    /// immediate_exit set runs the pending completion and returns EINTR
    /// without entering the guest), so that the state is at a boundary.
    fn settle(&mut self) -> Result<(), KvmError> {
        if !std::mem::take(&mut self.cui_pending) {
            return Ok(());
        }
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(KvmError::ioctl("KVM_RUN (immediate_exit)", e)),
            Ok(()) => Err(KvmError::Unsupported("KVM_RUN with immediate_exit entered the guest".into())),
        }
    }

    fn slice(budget: u64) -> Duration {
        Duration::from_nanos(budget.saturating_mul(clock::NS_PER_INSN)).clamp(MIN_SLICE, MAX_SLICE)
    }

    /// One KVM_RUN with the kick timer armed for what is left of the slice,
    /// which it updates. Ok(false): interrupted (signal or EAGAIN), no exit
    /// to report.
    fn enter(&mut self, left: Duration) -> Result<bool, KvmError> {
        if !self.kick.as_ref().is_some_and(Kick::on_this_thread) {
            self.kick = Some(Kick::new().map_err(|e| KvmError::Unsupported(format!("timer_create: {e}")))?);
        }
        let run = self.fd.get_kvm_run();
        run.request_interrupt_window = u8::from(self.window);
        run.immediate_exit = 0;
        if let Some(k) = &self.kick {
            k.arm(left);
        }
        let r = self.fd.run().map(|_| ());
        self.slice_left = Some(self.kick.as_ref().map_or(Duration::ZERO, Kick::disarm));
        self.cui_pending = false;
        let run = self.fd.get_kvm_run();
        self.ready = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(false),
            Err(e) => Err(KvmError::ioctl("KVM_RUN", e)),
        }
    }

    /// Turn the exit in kvm_run into a `VcpuExit` (None: nothing to report).
    fn decode_exit(&mut self) -> Result<Option<VcpuExit>, KvmError> {
        let reason = self.fd.get_kvm_run().exit_reason;
        if let Some(r) = self.direct_exit(reason) {
            return r;
        }
        let run = self.fd.get_kvm_run();
        Ok(Some(match reason {
            KVM_EXIT_IO => {
                // SAFETY: exit_reason says the `io` member is the live one.
                let io = unsafe { run.__bindgen_anon_1.io };
                let input = io.direction as u32 == KVM_EXIT_IO_IN;
                if !input && io.port == HYPERCALL_PORT && io.size == 1 && io.count == 1 {
                    // A hypercall-page stub: finish the OUT now so that the
                    // handler sees the state after the instruction.
                    self.cui_pending = true;
                    self.settle()?;
                    self.ready = false;
                    return Ok(Some(VcpuExit::Hypercall));
                }
                if io.count == 0 {
                    return Ok(None);
                }
                let a = Awaiting::Pio {
                    port: io.port,
                    size: io.size,
                    count: io.count,
                    index: 0,
                    input,
                    data_offset: io.data_offset,
                };
                return Ok(Some(self.pio_exit(a)));
            }
            KVM_EXIT_MMIO => {
                // SAFETY: exit_reason says the `mmio` member is the live one.
                let m = unsafe { run.__bindgen_anon_1.mmio };
                let len = m.len.min(8);
                self.awaiting = Some(Awaiting::Mmio { read: m.is_write == 0, len });
                if m.is_write != 0 {
                    let mut b = [0u8; 8];
                    b[..len as usize].copy_from_slice(&m.data[..len as usize]);
                    VcpuExit::MmioWrite { gpa: m.phys_addr, size: len as u8, data: u64::from_le_bytes(b) }
                } else {
                    VcpuExit::MmioRead { gpa: m.phys_addr, size: len as u8 }
                }
            }
            KVM_EXIT_X86_RDMSR | KVM_EXIT_X86_WRMSR => {
                // SAFETY: exit_reason says the `msr` member is the live one.
                let m = unsafe { run.__bindgen_anon_1.msr };
                let read = reason == KVM_EXIT_X86_RDMSR;
                self.awaiting = Some(Awaiting::Msr { read });
                if read {
                    VcpuExit::MsrRead { msr: m.index }
                } else {
                    VcpuExit::MsrWrite { msr: m.index, value: m.data }
                }
            }
            KVM_EXIT_HLT => {
                self.halted = true;
                self.slice_left = None;
                VcpuExit::Halt
            }
            KVM_EXIT_IRQ_WINDOW_OPEN => VcpuExit::InterruptWindow,
            KVM_EXIT_SHUTDOWN => {
                self.slice_left = None;
                VcpuExit::Shutdown
            }
            KVM_EXIT_INTR => return Ok(None),
            KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: exit_reason says the `internal` member is the live one.
                let i = unsafe { run.__bindgen_anon_1.internal };
                let n = (i.ndata as usize).min(i.data.len());
                if i.suberror == KVM_INTERNAL_ERROR_EMULATION {
                    let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                    return Err(KvmError::Emulation { rip, bytes: emulation_bytes(i.ndata, &i.data) });
                }
                return Err(KvmError::Unsupported(format!(
                    "KVM_EXIT_INTERNAL_ERROR suberror {} data {:x?}",
                    i.suberror,
                    &i.data[..n]
                )));
            }
            KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: exit_reason says the `fail_entry` member is the live one.
                let f = unsafe { run.__bindgen_anon_1.fail_entry };
                return Err(KvmError::Unsupported(format!(
                    "KVM_EXIT_FAIL_ENTRY hardware reason {:#x} on host cpu {}",
                    f.hardware_entry_failure_reason, f.cpu
                )));
            }
            other => return Err(KvmError::Unsupported(format!("unexpected KVM exit reason {other}"))),
        }))
    }

    /// The `VcpuExit` for the current item of a port I/O exit.
    fn pio_exit(&mut self, a: Awaiting) -> VcpuExit {
        let Awaiting::Pio { port, size, index, input, data_offset, .. } = a else {
            return VcpuExit::BudgetExhausted;
        };
        self.awaiting = Some(a);
        if input {
            return VcpuExit::IoIn { port, size };
        }
        let mut b = [0u8; 4];
        let n = (size as usize).min(4);
        let off = data_offset as usize + index as usize * size as usize;
        let base = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *const u8;
        // SAFETY: KVM puts `count` items of `size` bytes at data_offset
        // inside the kvm_run mapping, which lives as long as the fd.
        unsafe { std::ptr::copy_nonoverlapping(base.add(off), b.as_mut_ptr(), n) };
        VcpuExit::IoOut { port, size, data: u32::from_le_bytes(b) }
    }

    fn complete_pio(&mut self, a: Awaiting, value: u64) {
        let Awaiting::Pio { port, size, count, index, input, data_offset } = a else { return };
        if input {
            let n = (size as usize).min(4);
            let off = data_offset as usize + index as usize * size as usize;
            let base = self.fd.get_kvm_run() as *mut kvm_bindings::kvm_run as *mut u8;
            // SAFETY: as in `pio_exit`; KVM reads the items on re-entry.
            unsafe { std::ptr::copy_nonoverlapping(value.to_le_bytes().as_ptr(), base.add(off), n) };
        }
        if index + 1 < count {
            self.pio_next = Some(Awaiting::Pio { port, size, count, index: index + 1, input, data_offset });
        } else {
            self.cui_pending = true;
        }
    }

    fn write_gprs(&self, gpr: &[u64; 16]) -> Result<(), KvmError> {
        let r = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        self.fd.set_regs(&convert::regs_of(gpr, r.rip, r.rflags)).map_err(ioctl("KVM_SET_REGS"))
    }

    fn get_msrs(&self, indices: &[u32]) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut start = 0;
        // KVM stops at the first MSR it refuses; skip it and go on.
        while start < indices.len() {
            let entries: Vec<kvm_msr_entry> =
                indices[start..].iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
            let Ok(mut msrs) = Msrs::from_entries(&entries) else { break };
            let n = match self.fd.get_msrs(&mut msrs) {
                Ok(n) => n,
                Err(e) => {
                    self.defer(KvmError::ioctl("KVM_GET_MSRS", e));
                    break;
                }
            };
            out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
            start += n + 1;
        }
        out
    }

    fn set_msrs(&self, values: &[(u32, u64)]) {
        let mut start = 0;
        while start < values.len() {
            let entries: Vec<kvm_msr_entry> = values[start..]
                .iter()
                .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
                .collect();
            let Ok(msrs) = Msrs::from_entries(&entries) else { break };
            match self.fd.set_msrs(&msrs) {
                Ok(n) => start += n + 1,
                Err(e) => {
                    self.defer(KvmError::ioctl("KVM_SET_MSRS", e));
                    break;
                }
            }
        }
    }

    fn try_state(&self) -> Result<ArchState, KvmError> {
        let mut s = ArchState::default();
        let regs = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        s.gpr = convert::gprs_of(&regs);
        s.rip = regs.rip;
        s.rflags = regs.rflags;
        let sregs = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        convert::sregs_to_state(&sregs, &mut s);
        s.fpu = if self.vm.caps().xsave > 0 {
            xsave::fpu_from_xsave(&self.fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?)
        } else {
            convert::fpu_from_kvm(&self.fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))?)
        };
        s.xcr0 = 1;
        if self.vm.caps().xcrs > 0 {
            let x = self.fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?;
            let n = (x.nr_xcrs as usize).min(x.xcrs.len());
            if let Some(x0) = x.xcrs[..n].iter().find(|x| x.xcr == 0) {
                s.xcr0 = x0.value;
            }
        }
        let d = self.fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?;
        s.dr = [d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7];
        for (index, value) in self.get_msrs(&convert::STATE_MSRS) {
            if let Some(f) = convert::msr_field(&mut s.msrs, index) {
                *f = value;
            }
        }
        let ev = self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        s.events = convert::events_from_kvm(&ev, self.halted);
        s.tsc = self.tsc();
        Ok(s)
    }

    fn try_set_state(&mut self, s: &ArchState) -> Result<(), KvmError> {
        self.finish_unanswered()?;
        self.settle()?;
        self.awaiting = None;
        self.pio_next = None;
        let mut sregs = self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        convert::sregs_into(s, &mut sregs);
        self.fd.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        self.fd.set_regs(&convert::regs_from(s)).map_err(ioctl("KVM_SET_REGS"))?;
        // XCR0 first: it says which XSAVE components the guest has enabled.
        if self.vm.caps().xcrs > 0 && s.xcr0 & 1 != 0 {
            let mut x = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
            x.xcrs[0].xcr = 0;
            x.xcrs[0].value = s.xcr0;
            self.fd.set_xcrs(&x).map_err(ioctl("KVM_SET_XCRS"))?;
        }
        if self.vm.caps().xsave > 0 {
            let mut x = self.fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
            xsave::fpu_into_xsave(&s.fpu, &mut x);
            // SAFETY: KVM_CAP_XSAVE2 is never enabled (no dynamic XSAVE
            // features are requested), so KVM reads exactly the 4 KiB of
            // `kvm_xsave`.
            unsafe { self.fd.set_xsave(&x) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        } else {
            self.fd.set_fpu(&convert::fpu_to_kvm(&s.fpu)).map_err(ioctl("KVM_SET_FPU"))?;
        }
        let d = kvm_debugregs {
            db: [s.dr[0], s.dr[1], s.dr[2], s.dr[3]],
            dr6: s.dr[4],
            dr7: s.dr[5],
            ..Default::default()
        };
        self.fd.set_debug_regs(&d).map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        let mut m = s.msrs;
        let values: Vec<(u32, u64)> =
            convert::STATE_MSRS.iter().filter_map(|&i| convert::msr_field(&mut m, i).map(|f| (i, *f))).collect();
        self.set_msrs(&values);
        self.fd.set_vcpu_events(&convert::events_to_kvm(&s.events)).map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        self.set_tsc(s.tsc);
        self.halted = s.events.halted;
        let e = &s.events;
        self.ready =
            s.rflags & rflags::IF != 0 && !e.interrupt_shadow && e.interrupt.is_none() && e.exception.is_none();
        Ok(())
    }
}

/// The instruction bytes of an emulation failure: with
/// KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES in data[0], data[1..]
/// hold insn_size (one byte) then up to 15 instruction bytes.
fn emulation_bytes(ndata: u32, data: &[u64]) -> Vec<u8> {
    let flags = data.first().copied().unwrap_or(0);
    if ndata < 2 || flags & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0 {
        return Vec::new();
    }
    let raw: Vec<u8> = data.iter().skip(1).take(2).flat_map(|w| w.to_le_bytes()).collect();
    let len = usize::from(raw[0]).min(15);
    raw[1..=len].to_vec()
}

fn exit_name(a: &Awaiting) -> &'static str {
    match a {
        Awaiting::Pio { input: true, .. } => "IoIn",
        Awaiting::Pio { input: false, .. } => "IoOut",
        Awaiting::Mmio { read: true, .. } => "MmioRead",
        Awaiting::Mmio { read: false, .. } => "MmioWrite",
        Awaiting::Msr { read: true } => "MsrRead",
        Awaiting::Msr { read: false } => "MsrWrite",
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self, mem: &GuestMemory, budget: u64) -> Result<VcpuExit, VcpuError> {
        if let Some(e) = self.deferred.borrow_mut().take() {
            return Err(e.into());
        }
        if let Some(a) = &self.awaiting {
            return Err(VcpuError::MissingCompletion(exit_name(a)));
        }
        if let Some(next) = self.pio_next.take() {
            return Ok(self.pio_exit(next));
        }
        self.vm.sync_memory(mem)?;
        self.finish_unanswered()?;
        self.sync_guest_debug()?;
        if self.halted {
            return Ok(VcpuExit::Halt);
        }
        loop {
            let left = *self.slice_left.get_or_insert(Self::slice(budget));
            if left.is_zero() {
                self.slice_left = None;
                return Ok(VcpuExit::BudgetExhausted);
            }
            if !self.enter(left)? {
                continue;
            }
            if let Some(exit) = self.decode_exit()? {
                return Ok(exit);
            }
        }
    }

    fn complete(&mut self, completion: Completion) {
        let Some(a) = self.awaiting.take() else { return };
        let value = match completion {
            Completion::Data(v) => v,
            _ => 0,
        };
        match a {
            Awaiting::Pio { .. } => self.complete_pio(a, value),
            Awaiting::Mmio { read, len } => {
                if read {
                    let run = self.fd.get_kvm_run();
                    let n = (len as usize).min(8);
                    // SAFETY: the live exit is an MMIO exit (we are answering it).
                    unsafe { run.__bindgen_anon_1.mmio.data[..n].copy_from_slice(&value.to_le_bytes()[..n]) };
                }
                self.cui_pending = true;
            }
            Awaiting::Msr { read } => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the live exit is an MSR exit (we are answering it).
                let m = unsafe { &mut run.__bindgen_anon_1.msr };
                // error = 1 makes KVM inject #GP(0) on re-entry.
                m.error = u8::from(completion == Completion::Fault);
                if read {
                    m.data = value;
                }
                self.cui_pending = true;
            }
        }
    }

    fn state(&self) -> ArchState {
        match self.try_state() {
            Ok(s) => s,
            Err(e) => {
                self.defer(e);
                ArchState::default()
            }
        }
    }

    fn set_state(&mut self, state: &ArchState) {
        if let Err(e) = self.try_set_state(state) {
            self.defer(e);
        }
    }

    fn rip(&self) -> u64 {
        match self.fd.get_regs() {
            Ok(r) => r.rip,
            Err(e) => {
                self.defer(KvmError::ioctl("KVM_GET_REGS", e));
                0
            }
        }
    }

    fn gprs(&self) -> [u64; 16] {
        match self.fd.get_regs() {
            Ok(r) => self.direct_gprs(convert::gprs_of(&r)),
            Err(e) => {
                self.defer(KvmError::ioctl("KVM_GET_REGS", e));
                [0; 16]
            }
        }
    }

    fn set_gprs(&mut self, gpr: &[u64; 16]) {
        let r = match self.finish_direct(gpr) {
            Ok(true) => Ok(()),
            Ok(false) => self.write_gprs(gpr),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.defer(e);
        }
    }

    fn interrupt_ready(&self) -> bool {
        self.ready && self.awaiting.is_none() && self.pio_next.is_none()
    }

    fn inject_interrupt(&mut self, vector: u8) {
        let irq = kvm_bindings::kvm_interrupt { irq: vector as u32 };
        // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_INTERRUPT as _, &irq) };
        if r != 0 {
            self.defer(KvmError::Ioctl { what: "KVM_INTERRUPT", source: std::io::Error::last_os_error() });
        }
        self.halted = false;
        self.ready = false;
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.window = on;
    }

    fn retired_instructions(&self) -> Option<u64> {
        None
    }

    fn tsc(&self) -> u64 {
        self.get_msrs(&[msr::IA32_TSC]).first().map(|&(_, v)| v).unwrap_or(0)
    }

    fn set_tsc(&mut self, tsc: u64) {
        self.set_msrs(&[(msr::IA32_TSC, tsc)]);
    }

    fn sync_dirty(&self, mem: &GuestMemory) -> bool {
        match self.vm.sync_dirty(mem) {
            Ok(()) => true,
            Err(e) => {
                self.defer(e);
                false
            }
        }
    }

    fn translate_gva(&self, mem: &GuestMemory, gva: u64, access: Access) -> Result<u64, PageFault> {
        // Only the paging registers matter: one KVM_GET_SREGS, not the
        // whole state.
        let mut s = ArchState::default();
        match self.fd.get_sregs() {
            Ok(k) => convert::sregs_to_state(&k, &mut s),
            Err(e) => self.defer(KvmError::ioctl("KVM_GET_SREGS", e)),
        }
        paging::translate(mem, &s.paging(), gva, access, false).map(|t| t.gpa)
    }
}

#[cfg(test)]
mod tests {
    use super::emulation_bytes;

    #[test]
    fn emulation_failure_bytes_are_decoded() {
        // As this host reported STMXCSR [0x4000]; HLT: flags 1, then
        // insn_size 15 and the bytes 0f ae 1d 00 40 00 00 f4 ...
        let data = [1, 0x4000_1dae_0f0f, 0xf4, 0x1000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = emulation_bytes(4, &data);
        assert_eq!(b.len(), 15);
        assert_eq!(&b[..8], &[0x0f, 0xae, 0x1d, 0x00, 0x40, 0x00, 0x00, 0xf4]);
        // Without the instruction-bytes flag nothing is claimed.
        assert!(emulation_bytes(4, &[0, 0x4000_1dae_0f0f]).is_empty());
        assert!(emulation_bytes(1, &[1]).is_empty());
    }
}
