//! `hypercall`: a sequence of hypercalls with arguments and guest-memory
//! contents against a `XenPlatform` over 2 MiB of guest RAM, without a CPU,
//! reset between inputs to the state the toolstack leaves before the guest
//! runs (see `warm`). Besides hypercalls, a step may be what a guest or dom0 does between
//! them (write memory, handle an upcall, mask a port, fill a grant entry, a
//! backend mapping grants or signalling). After every step the platform's
//! invariants are checked (`check`).

use arbitrary::Arbitrary;
use sim_core::state::efer;

use sim_core::devices::lapic::Lapic;
use sim_core::irq::GsiLines;
use sim_core::platform::{Platform, PlatformEffect, TimerKey};
use sim_core::state::ArchState;
use sim_core::timer_queue::TimerQueue;

use crate::gnttab::abi::gtf;
use crate::gnttab::MapHandle;
use crate::hvm::Callback;
use crate::hypercall::nr;
use crate::shared_info::{vcpu_info, VcpuInfoAt};
use crate::testing::{FakeVcpu, Rig};
use crate::{Ring, XenConfig};

/// Guest-physical window that pointer arguments and pokes land in.
pub const WINDOW: u64 = 0x10000;
pub const WINDOW_LEN: u64 = 0x10000;
/// Ring frames when `rings` is set (the toolstack's store and console).
const STORE_PFN: u64 = 0x30;
const CONSOLE_PFN: u64 = 0x31;

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// 1..=4 vCPUs.
    pub vcpus: u8,
    /// A 32-bit (compat) caller.
    pub compat: bool,
    /// Toolstack rings configured (store port 1, console port 2).
    pub rings: bool,
    pub steps: Vec<Step>,
}

/// A hypercall argument.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Arg {
    /// A pointer into the window: `WINDOW + off % WINDOW_LEN`.
    Ptr(u16),
    /// A small number (a port, a count, a vCPU).
    Imm(u8),
    Raw(u64),
}

impl Arg {
    pub fn value(self) -> u64 {
        match self {
            Arg::Ptr(o) => WINDOW + u64::from(o) % WINDOW_LEN,
            Arg::Imm(v) => u64::from(v),
            Arg::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Hypercall {
    SetTimerOp,
    MemoryOp,
    XenVersion,
    ConsoleIo,
    GrantTableOp,
    VmAssist,
    VcpuOp,
    SchedOp,
    EventChannelOp,
    PhysdevOp,
    HvmOp,
    Other(u64),
}

impl Hypercall {
    pub fn number(self) -> u64 {
        u64::from(match self {
            Hypercall::SetTimerOp => nr::SET_TIMER_OP,
            Hypercall::MemoryOp => nr::MEMORY_OP,
            Hypercall::XenVersion => nr::XEN_VERSION,
            Hypercall::ConsoleIo => nr::CONSOLE_IO,
            Hypercall::GrantTableOp => nr::GRANT_TABLE_OP,
            Hypercall::VmAssist => nr::VM_ASSIST,
            Hypercall::VcpuOp => nr::VCPU_OP,
            Hypercall::SchedOp => nr::SCHED_OP,
            Hypercall::EventChannelOp => nr::EVENT_CHANNEL_OP,
            Hypercall::PhysdevOp => nr::PHYSDEV_OP,
            Hypercall::HvmOp => nr::HVM_OP,
            Hypercall::Other(n) => return n,
        })
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// `hc(sub, args...)` from vCPU `vcpu % vcpus`.
    Call {
        vcpu: u8,
        hc: Hypercall,
        sub: u8,
        args: [Arg; 3],
    },
    /// The guest writes `bytes` at `WINDOW + at` (RAM only: bytes that would
    /// land on an overlay page are dropped, see `check`).
    Poke {
        at: u16,
        bytes: Vec<u8>,
    },
    /// A platform timer fires (singleshot 1, periodic 2, poll 3).
    Timer {
        kind: u8,
        vcpu: u8,
    },
    /// Machine time advances.
    Advance(u32),
    Wake(u8),
    Sync,
    /// The guest's upcall handler on `vcpu` (Linux's 2-level loop): clear
    /// upcall_pending, take the selector, consume pending unmasked ports.
    Ack(u8),
    /// The guest masks a port, or unmasks it as Linux does (EVTCHNOP_unmask
    /// if it is pending, else clear the bit).
    Mask {
        port: u16,
        masked: bool,
    },
    /// The guest writes grant entry `gref` (its access bits are Xen's and
    /// stay as they are).
    Grant {
        gref: u8,
        flags: u16,
        domid: u16,
        frame: u32,
    },
    BackendBind(u16),
    BackendAllocUnbound,
    BackendNotify(u16),
    BackendPending(u16),
    BackendUnbind(u16),
    BackendMap {
        refs: Vec<u8>,
        writable: bool,
    },
    BackendUnmap(u8),
}

/// Execute one input on the platform for its configuration, reset to the
/// state it had when built (see `warm`): the same outcome as on a platform
/// built for this input alone (`run_fresh`), at a fraction of the cost.
pub fn run(input: &Input) -> Result<(), String> {
    let (vcpus, rings) = shape(input);
    warm::with_rig(vcpus, rings, |r| execute(r, input, None))
}

/// Execute one input on a platform built for it alone: the reference that
/// the reset in `run` must match.
pub fn run_fresh(input: &Input) -> Result<(), String> {
    let (vcpus, rings) = shape(input);
    execute(&mut fresh_rig(vcpus, rings), input, None)
}

/// As `run` (`fresh`: `run_fresh`), also recording what the input did and
/// the state it left: two runs of one input must give equal traces.
pub fn run_traced(input: &Input, fresh: bool) -> (Result<(), String>, Trace) {
    let (vcpus, rings) = shape(input);
    let mut t = Trace::default();
    let result = if fresh {
        let mut r = fresh_rig(vcpus, rings);
        let res = execute(&mut r, input, Some(&mut t));
        t.finish(&r);
        res
    } else {
        warm::with_rig(vcpus, rings, |r| {
            let res = execute(r, input, Some(&mut t));
            t.finish(r);
            res
        })
    };
    (result, t)
}

/// What one input did: every hypercall's result and effect, then the whole
/// machine state it left (platform state, every RAM page, overlays, the
/// machine parts the platform drives).
#[derive(Debug, Default, PartialEq)]
pub struct Trace {
    pub calls: Vec<(i64, PlatformEffect)>,
    pub platform: Vec<u8>,
    /// Every RAM page's contents, as one hash per page.
    pub ram: Vec<u64>,
    pub overlays: Vec<(u64, Vec<u8>)>,
    pub timers: Option<TimerQueue<TimerKey>>,
    pub lapics: Vec<Lapic>,
    pub gsi: Option<GsiLines>,
    pub console: Vec<u8>,
    pub effects: Vec<PlatformEffect>,
    pub now: u64,
    pub cpu: Option<Box<ArchState>>,
}

impl Trace {
    fn finish(&mut self, r: &Rig) {
        use std::hash::{Hash, Hasher};
        self.platform = r.p.save();
        let mut page = vec![0u8; 4096];
        for &(base, len) in r.mem.ram_ranges() {
            for gpa in (base..base.saturating_add(len)).step_by(4096) {
                let _ = r.mem.read(gpa, &mut page);
                let mut h = std::collections::hash_map::DefaultHasher::new();
                page.hash(&mut h);
                self.ram.push(h.finish());
            }
        }
        self.overlays = r
            .mem
            .overlays()
            .map(|(g, p)| {
                p.read(0, &mut page);
                (g, page.clone())
            })
            .collect();
        self.timers = Some(r.timers.clone());
        self.lapics = r.lapics.clone();
        self.gsi = Some(r.gsi.clone());
        self.console = r.console.clone();
        self.effects = r.effects.clone();
        self.now = r.now;
        self.cpu = Some(Box::new(r.cpu.s.clone()));
    }
}

/// vCPUs and whether the toolstack rings exist: what a platform is built for.
fn shape(input: &Input) -> (u32, bool) {
    (u32::from(input.vcpus % 4) + 1, input.rings)
}

/// A new platform as the toolstack leaves it before the guest runs: the
/// initial xenstore tree written and the rings mapped (the first `sync`).
fn fresh_rig(vcpus: u32, rings: bool) -> Rig {
    let mut cfg = XenConfig::default();
    if rings {
        cfg.store = Some(Ring { pfn: STORE_PFN, evtchn: 1 });
        cfg.console = Some(Ring { pfn: CONSOLE_PFN, evtchn: 2 });
    }
    let mut r = Rig::with_memory(cfg, vcpus, 2);
    r.sync();
    r
}

fn execute(r: &mut Rig, input: &Input, mut trace: Option<&mut Trace>) -> Result<(), String> {
    let vcpus = r.p.nr_vcpus;
    if input.compat {
        r.cpu = FakeVcpu::prot32();
    }
    let mut handles = Vec::new();
    let compat0 = r.p.shinfo.compat();
    let mut tainted = false;
    for (i, step) in input.steps.iter().take(super::MAX_STEPS).enumerate() {
        let call = apply(r, step, vcpus, &mut handles);
        if let (Some(t), Some(c)) = (trace.as_deref_mut(), call) {
            t.calls.push(c);
        }
        // Once the guest can reach shared_info or a vcpu_info through memory
        // (or switched layouts), it may legitimately clear bits Xen set.
        tainted |= r.p.shinfo.gfn.is_some()
            || r.p.vi.iter().any(|v| matches!(v, VcpuInfoAt::Guest(_)))
            || r.p.shinfo.compat() != compat0;
        check(r, tainted, Checks::after(step)).map_err(|e| format!("after step {i} ({step:?}): {e}"))?;
    }
    check(r, tainted, Checks::ALL).map_err(|e| format!("at the end: {e}"))
}

/// One platform per shape, built once per thread and reset before each
/// input: the platform from a `Checkpoint` taken when it was built, guest
/// RAM by rewriting only the pages written since (the dirty bitmap), the
/// machine parts from copies. Nothing of an earlier input survives: the
/// traced tests compare against `run_fresh`.
mod warm {
    use std::cell::RefCell;

    use sim_core::devices::lapic::Lapic;
    use sim_core::irq::GsiLines;
    use sim_core::platform::TimerKey;
    use sim_core::timer_queue::TimerQueue;

    use crate::platform::Checkpoint;
    use crate::testing::{FakeVcpu, Rig};

    struct Warm {
        rig: Rig,
        platform: Checkpoint,
        /// RAM pages the build wrote, with their contents (others are zero).
        ram: Vec<(u64, Box<[u8]>)>,
        timers: TimerQueue<TimerKey>,
        lapics: Vec<Lapic>,
        gsi: GsiLines,
        now: u64,
    }

    thread_local! {
        /// By shape: (vcpus - 1) * 2 + rings.
        static RIGS: RefCell<Vec<Option<Warm>>> = RefCell::new((0..8).map(|_| None).collect());
    }

    pub(super) fn with_rig<T>(vcpus: u32, rings: bool, f: impl FnOnce(&mut Rig) -> T) -> T {
        RIGS.with(|rigs| {
            let mut rigs = rigs.borrow_mut();
            let slot = &mut rigs[(vcpus.clamp(1, 4) as usize - 1) * 2 + usize::from(rings)];
            let w = slot.get_or_insert_with(|| build(vcpus, rings));
            reset(w);
            f(&mut w.rig)
        })
    }

    fn build(vcpus: u32, rings: bool) -> Warm {
        let mut rig = super::fresh_rig(vcpus, rings);
        let mut ram = Vec::new();
        for gfn in rig.mem.take_dirty() {
            let mut page = vec![0u8; 4096].into_boxed_slice();
            let _ = rig.mem.read(gfn << 12, &mut page);
            ram.push((gfn, page));
        }
        Warm {
            platform: rig.p.checkpoint(),
            ram,
            timers: rig.timers.clone(),
            lapics: rig.lapics.clone(),
            gsi: rig.gsi.clone(),
            now: rig.now,
            rig,
        }
    }

    /// Everything back to the state `build` left; done before each input,
    /// so an input that panicked half-way leaves nothing behind either.
    fn reset(w: &mut Warm) {
        let r = &mut w.rig;
        const ZERO: [u8; 4096] = [0; 4096];
        for gfn in r.mem.take_dirty() {
            let page = w.ram.iter().find(|(g, _)| *g == gfn).map_or(&ZERO[..], |(_, p)| &p[..]);
            let _ = r.mem.write(gfn << 12, page);
        }
        // The rewrites above marked their pages again.
        r.mem.take_dirty();
        r.timers.clone_from(&w.timers);
        r.lapics.clone_from(&w.lapics);
        r.gsi.clone_from(&w.gsi);
        r.console.clear();
        r.input.clear();
        r.effects.clear();
        r.now = w.now;
        r.cpu = FakeVcpu::long();
        if let Err(e) = r.p.restore_checkpoint(crate::rig_ctx!(r), &w.platform) {
            // A checkpoint of this very platform always restores; if it did
            // not, no later outcome could be trusted.
            panic!("fuzz rig: restoring its own checkpoint failed: {e}");
        }
    }
}

/// One step; a hypercall's RAX and effect.
fn apply(r: &mut Rig, step: &Step, vcpus: u32, handles: &mut Vec<MapHandle>) -> Option<(i64, PlatformEffect)> {
    match step {
        Step::Call { vcpu, hc, sub, args } => {
            let v = u32::from(*vcpu) % vcpus;
            let mut a = [u64::from(*sub), args[0].value(), args[1].value(), args[2].value()];
            // The batch count (grant_table_op's third argument, console_io's
            // second, in bytes): more than 64 only repeats the same
            // per-entry work and slows every execution (Xen would preempt
            // such a batch with a continuation). Negative counts stay (the
            // EINVAL path).
            let count = match hc {
                Hypercall::GrantTableOp => Some(2),
                Hypercall::ConsoleIo => Some(1),
                _ => None,
            };
            if let Some(c) = count.filter(|&c| (a[c] as i32) >= 0) {
                a[c] %= 65;
            }
            return Some(r.call_on(v, hc.number(), &a));
        }
        Step::Poke { at, bytes } => {
            for (i, b) in bytes.iter().enumerate() {
                let gpa = WINDOW + (u64::from(*at) + i as u64) % WINDOW_LEN;
                if r.mem.overlay_at(gpa >> 12).is_none() {
                    let _ = r.mem.write_u8(gpa, *b);
                }
            }
        }
        Step::Timer { kind, vcpu } => {
            let key = u64::from(*kind % 4) << 32 | u64::from(u32::from(*vcpu) % vcpus);
            r.fire_timer(key);
        }
        Step::Advance(ns) => r.now = r.now.saturating_add(u64::from(*ns)),
        Step::Wake(v) => {
            r.wake(u32::from(*v) % vcpus);
        }
        Step::Sync => r.sync(),
        Step::Ack(v) => guest_ack(r, u32::from(*v) % vcpus),
        Step::Mask { port, masked } => {
            let port = u32::from(*port) % 4096;
            let sh = &r.p.shinfo;
            if *masked {
                sh.set_mask(port);
            } else if sh.port_pending(port) {
                let _ = r.mem.write_u32(WINDOW, port);
                let arg = [u64::from(crate::evtchn::op::UNMASK), WINDOW];
                r.call_on(0, nr::EVENT_CHANNEL_OP, &arg);
            } else {
                sh.test_and_clear_mask(port);
            }
        }
        Step::Grant { gref, flags, domid, frame } => guest_grant(r, u32::from(*gref), *flags, *domid, *frame),
        Step::BackendBind(p) => {
            let _ = r.p.backend_bind(u32::from(*p));
        }
        Step::BackendAllocUnbound => {
            r.p.backend_alloc_unbound();
        }
        Step::BackendNotify(p) => {
            let _ = r.p.backend_notify(&r.mem, u32::from(*p));
            r.sync();
        }
        Step::BackendPending(p) => {
            r.p.backend_pending(u32::from(*p));
        }
        Step::BackendUnbind(p) => {
            let _ = r.p.backend_unbind(u32::from(*p));
        }
        Step::BackendMap { refs, writable } => {
            let refs: Vec<u32> = refs.iter().take(8).map(|&g| u32::from(g)).collect();
            if let Ok(h) = r.p.gnttab.map(&r.mem, &refs, *writable) {
                handles.push(h);
            }
        }
        Step::BackendUnmap(i) => {
            if !handles.is_empty() {
                let h = handles.remove(usize::from(*i) % handles.len());
                let _ = r.p.gnttab.unmap(h);
            }
        }
    }
    None
}

/// Linux's 2-level upcall loop on `v`, run to completion.
fn guest_ack(r: &mut Rig, v: u32) {
    let sh = &r.p.shinfo;
    let at = r.p.vi[v as usize];
    let (sel_off, sel_len) = if sh.compat() { (vcpu_info::PENDING_SEL_32, 4) } else { (vcpu_info::PENDING_SEL_64, 8) };
    sh.vi_write(&r.mem, at, vcpu_info::UPCALL_PENDING, &[0]);
    let mut sel = [0u8; 8];
    sh.vi_read(&r.mem, at, sel_off, &mut sel[..sel_len]);
    sh.vi_write(&r.mem, at, sel_off, &[0u8; 8][..sel_len]);
    let bits = sh.word_bits();
    for word in 0..bits {
        if sel[(word / 8) as usize] & (1 << (word % 8)) == 0 {
            continue;
        }
        for port in word * bits..(word + 1) * bits {
            if sh.port_pending(port) && !sh.port_masked(port) {
                sh.clear_pending(port);
            }
        }
    }
    r.sync();
}

/// Write grant entry `gref` in the current version's layout, keeping the
/// access bits (GTF_reading/writing) as Xen left them.
fn guest_grant(r: &mut Rig, gref: u32, flags: u16, domid: u16, frame: u32) {
    let access = gtf::READING | gtf::WRITING;
    let v2 = r.p.gnttab.version() == 2;
    let size = if v2 { 16 } else { 8 };
    let (idx, off) = (gref * size / 4096, (gref * size % 4096) as usize);
    let Some(page) = r.p.gnttab.frame_page(idx, false) else { return };
    let mut old = [0u8; 2];
    page.read(off, &mut old);
    let keep = if v2 { 0 } else { u16::from_le_bytes(old) & access };
    let flags = flags & !access | keep;
    let mut e = [0u8; 16];
    e[0..2].copy_from_slice(&flags.to_le_bytes());
    e[2..4].copy_from_slice(&domid.to_le_bytes());
    if v2 {
        e[8..12].copy_from_slice(&frame.to_le_bytes());
    } else {
        e[4..8].copy_from_slice(&frame.to_le_bytes());
    }
    // Flags last, as a guest publishes an entry.
    page.write(off + 2, &e[2..size as usize]);
    page.write(off, &e[0..2]);
}

/// Which invariants to check: after a step, those over the state the step
/// can change (the rest cannot have broken); at the end, all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Event-channel tables and the 2-level delivery chain.
    pub evtchn: bool,
    /// Grant-table bookkeeping; `full` also scans every entry (slow).
    pub gnttab: bool,
    pub full: bool,
    /// Overlays, the callback, Xen's registers.
    pub platform: bool,
}

impl Checks {
    pub const ALL: Checks = Checks { evtchn: true, gnttab: true, full: true, platform: true };

    /// What `step` can reach. A hypercall, a platform call (`sync` and
    /// everything that calls it) or a timer can change anything; the rest
    /// touch one model each, or only guest RAM and the clock (a guest RAM
    /// write can break no invariant: overlay pages are not written, and
    /// once event bits live in guest RAM the delivery check is off).
    pub fn after(step: &Step) -> Checks {
        let none = Checks { evtchn: false, gnttab: false, full: false, platform: false };
        match step {
            Step::Poke { .. } | Step::Advance(_) => none,
            Step::Grant { .. } | Step::BackendMap { .. } | Step::BackendUnmap(_) => Checks { gnttab: true, ..none },
            Step::Mask { masked: true, .. }
            | Step::BackendBind(_)
            | Step::BackendAllocUnbound
            | Step::BackendPending(_)
            | Step::BackendUnbind(_) => Checks { evtchn: true, ..none },
            _ => Checks { full: false, ..Checks::ALL },
        }
    }
}

/// The platform's invariants (those `which` names). `tainted`: the guest
/// could have edited the event-channel bits directly, so only structural
/// checks apply to them.
pub fn check(r: &Rig, tainted: bool, which: Checks) -> Result<(), String> {
    let p = &r.p;
    if which.evtchn {
        p.evtchn.check_invariants()?;
        if !tainted {
            check_delivery(r)?;
        }
    }
    if which.gnttab && p.grant_maps.is_empty() {
        // No table frame is in the guest's physmap, so nobody but Xen wrote
        // the access bits.
        p.gnttab.check_invariants(which.full)?;
    }
    if which.platform {
        check_overlays(r)?;
        if let Callback::Vector(v) = p.callback {
            if v < 0x10 {
                return Err(format!("callback vector {v:#x} below 0x10"));
            }
        }
    }
    if r.cpu.s.efer & efer::LMA == 0 && r.cpu.s.gpr[0] >> 32 != 0 {
        return Err(format!("32-bit caller got RAX {:#x}", r.cpu.s.gpr[0]));
    }
    Ok(())
}

/// The 2-level delivery chain: a pending unmasked port has its selector bit
/// set on some vCPU, and a vCPU with selector bits has upcall_pending.
fn check_delivery(r: &Rig) -> Result<(), String> {
    let sh = &r.p.shinfo;
    let bits = sh.word_bits() as usize;
    let (sel_off, sel_len) = if sh.compat() { (vcpu_info::PENDING_SEL_32, 4) } else { (vcpu_info::PENDING_SEL_64, 8) };
    let mut any_sel = 0u64;
    for (v, &at) in r.p.vi.iter().enumerate() {
        let mut sel = [0u8; 8];
        sh.vi_read(&r.mem, at, sel_off, &mut sel[..sel_len]);
        let sel = u64::from_le_bytes(sel);
        if sel != 0 && !sh.upcall_pending(&r.mem, at) {
            return Err(format!("vCPU {v} has selector {sel:#x} without upcall_pending"));
        }
        any_sel |= sel;
    }
    // The bit arrays in one read each (bit n = bit n % 8 of byte n / 8), as
    // 64-bit words of pending & !mask. Fixed-size loops with no comparison
    // in them: under coverage tracing every comparison is a call.
    let n = bits * bits / 8;
    let (mut pending, mut mask) = ([0u8; 512], [0u8; 512]);
    sh.page().read(crate::shared_info::layout::EVTCHN_PENDING as usize, &mut pending[..n]);
    sh.page().read(sh.mask_offset() as usize, &mut mask[..n]);
    let mut live = [0u64; 64];
    for ((l, p), m) in live.iter_mut().zip(pending.chunks_exact(8)).zip(mask.chunks_exact(8)) {
        let word = |b: &[u8]| b.iter().rev().fold(0u64, |w, &x| w << 8 | u64::from(x));
        *l = word(p) & !word(m);
    }
    if live.iter().fold(0, |a, &l| a | l) == 0 {
        return Ok(());
    }
    // Bit w: selector word w (64 or 32 ports) has a pending unmasked port.
    let nz = |x: u64| (x | x.wrapping_neg()) >> 63;
    let mut live_words = 0u64;
    for (i, &l) in live.iter().take(n / 8).enumerate() {
        live_words |= if bits == 64 { nz(l) << i } else { (nz(l & 0xffff_ffff) | nz(l >> 32) << 1) << (2 * i) };
    }
    let missing = live_words & !any_sel;
    if missing != 0 {
        let w = missing.trailing_zeros() as usize;
        let port = (0..bits * bits).find(|&p| p / bits == w && live[p / 64] >> (p % 64) & 1 != 0).unwrap_or(0);
        return Err(format!("port {port} pending and unmasked, selector bit {w} clear on every vCPU"));
    }
    Ok(())
}

/// Every overlay mapped in guest-physical space is shared_info, a grant
/// frame or a dom0 ring page where the platform put it, each page at one
/// place only.
fn check_overlays(r: &Rig) -> Result<(), String> {
    let p = &r.p;
    let overlays: Vec<_> = r.mem.overlays().collect();
    for (i, (gfn, page)) in overlays.iter().enumerate() {
        if let Some((other, _)) = overlays[i + 1..].iter().find(|(_, q)| q.same_page(page)) {
            return Err(format!("one page mapped at gfns {gfn:#x} and {other:#x}"));
        }
        let expected = if p.shinfo.gfn == Some(*gfn) {
            Some(p.shinfo.page())
        } else if let Some(&(idx, status)) = p.grant_maps.get(gfn) {
            match p.gnttab.frame_page(idx, status) {
                Some(f) => Some(f),
                None => {
                    return Err(format!(
                        "gfn {gfn:#x} still maps grant {} frame {idx}, which the table no longer has",
                        if status { "status" } else { "shared" }
                    ))
                }
            }
        } else {
            // dom0's ring pages, where the toolstack put them.
            p.ring_pages().find(|q| q.same_page(page))
        };
        match expected {
            Some(want) if want.same_page(page) => {}
            Some(_) => return Err(format!("gfn {gfn:#x} maps a different page than the platform recorded")),
            None => return Err(format!("gfn {gfn:#x} maps an overlay the platform does not account for")),
        }
    }
    if let Some(g) = p.shinfo.gfn {
        if !r.mem.overlay_at(g).is_some_and(|q| q.same_page(p.shinfo.page())) {
            return Err(format!("shared_info recorded at gfn {g:#x} but not mapped there"));
        }
    }
    for &gfn in p.grant_maps.keys() {
        if r.mem.overlay_at(gfn).is_none() {
            return Err(format!("grant frame recorded at gfn {gfn:#x} but nothing is mapped there"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2-level chain by the ABI: port p is in selector word p / bits.
    #[test]
    fn delivery_check_finds_a_pending_port_without_its_selector_bit() {
        for (compat, port, word) in [(false, 70u32, 1u32), (false, 4095, 63), (true, 40, 1), (true, 1023, 31)] {
            let mut r = fresh_rig(2, false);
            r.p.shinfo.set_compat(compat);
            assert_eq!(check_delivery(&r), Ok(()), "a fresh platform has nothing pending");
            r.p.shinfo.test_and_set_pending(port);
            let want = format!("port {port} pending and unmasked, selector bit {word} clear on every vCPU");
            assert_eq!(check_delivery(&r), Err(want));
            // Masked: nothing to deliver.
            r.p.shinfo.set_mask(port);
            assert_eq!(check_delivery(&r), Ok(()));
            r.p.shinfo.test_and_clear_mask(port);
            // The selector bit on vCPU 1 (with its upcall_pending) completes the chain.
            let at = r.p.vi[1];
            r.p.shinfo.test_and_set_sel(&r.mem, at, word);
            assert!(check_delivery(&r).is_err_and(|e| e.contains("without upcall_pending")));
            r.p.shinfo.test_and_set_upcall_pending(&r.mem, at);
            assert_eq!(check_delivery(&r), Ok(()));
        }
    }
}
