//! `XenPlatform`: the Xen hypervisor interface of one HVM/PVH guest
//! (domid 1), attached to sim-core's machine through the `Platform` trait.
//! Hypercalls are dispatched in `hypercall.rs`; this file holds the state
//! and what crosses the seam: CPUID, the hypercall-page MSR, timers, upcall
//! delivery (callback vector, per-vCPU vector, GSI / PCI INTx), block/poll
//! and wake-ups.

use std::collections::{BTreeMap, BTreeSet};

use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::irq::source;
use sim_core::paging::PagingMode;
use sim_core::platform::{Platform, PlatformCtx, PlatformEffect, SliceEvent, TimerKey};
use sim_core::vcpu::Vcpu;
use sim_core::GuestMemory;

use crate::evtchn::{Delivery, EventChannels, VIRQ_TIMER};
use crate::gnttab::GrantTable;
use crate::guest::GuestVirt;
use crate::hvm::{Callback, HVM_NR_PARAMS};
use crate::shared_info::{vcpu_info, SharedInfo, VcpuInfoAt, LEGACY_MAX_VCPUS};
use crate::time::{self, runstate, Runstate};
use crate::DOM0;

/// The hypercall-page MSR (CPUID 0x40000002 EBX).
pub const HYPERCALL_MSR: u32 = 0x4000_0000;

/// A toolstack-provided ring: its guest frame and event channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    pub pfn: u64,
    pub evtchn: u32,
}

#[derive(Clone, Debug)]
pub struct XenConfig {
    /// Xen version the guest sees (major, minor).
    pub version: (u16, u16),
    pub extraversion: String,
    /// The simulator's wall-clock epoch: Unix time in ns at power-on. The
    /// host clock must reach the guest through the nondeterminism door, so
    /// it is a configuration value here.
    pub wallclock_epoch_ns: u64,
    /// The xenstore ring (HVM_PARAM_STORE_PFN/EVTCHN).
    pub store: Option<Ring>,
    /// The PV console ring (HVM_PARAM_CONSOLE_PFN/EVTCHN).
    pub console: Option<Ring>,
    /// XENMEM_memory_map: (address, size, E820 type); empty = the E820 map
    /// of guest RAM, as the toolstack would set it.
    pub memory_map: Vec<(u64, u64, u32)>,
    /// XENVER_guest_handle.
    pub handle: [u8; 16],
    pub max_grant_frames: u32,
    /// Offer PIRQs (XENFEAT_hvm_pirqs, PHYSDEVOP_*): HVM guests with the
    /// emulated-PIRQ option; PVH guests have none.
    pub pirqs: bool,
    /// How hypercall-page stubs enter the hypervisor (VMCALL, or a port exit
    /// on backends that cannot intercept VMCALL).
    pub hypercall_gate: crate::hypercall_page::HypercallGate,
}

impl Default for XenConfig {
    fn default() -> Self {
        XenConfig {
            version: (4, 17),
            extraversion: ".0".into(),
            wallclock_epoch_ns: 1_700_000_000_000_000_000,
            store: None,
            console: None,
            memory_map: Vec::new(),
            handle: [0; 16],
            max_grant_frames: 64,
            pirqs: false,
            hypercall_gate: Default::default(),
        }
    }
}

impl XenConfig {
    /// The E820 map of `mem` as the toolstack would set it.
    pub fn with_memory_map_of(mut self, mem: &GuestMemory) -> Self {
        self.memory_map = sim_core::boot::e820_map(mem).iter().map(|e| (e.addr, e.size, e.kind.code())).collect();
        self
    }
}

/// Why a vCPU is blocked in the platform.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Blocked {
    /// SCHEDOP_block: until an event is delivered to it.
    Block,
    /// SCHEDOP_poll: until one of `ports` is pending or the timeout passes.
    Poll { ports: Vec<u32> },
}

/// Per-vCPU Xen state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct VcpuXen {
    /// HVMOP_set_evtchn_upcall_vector (0: none).
    pub upcall_vector: u8,
    /// VCPUOP_register_vcpu_time_memory_area: guest virtual address and
    /// the translation in force when it was registered.
    pub time_area: Option<(u64, PagingMode)>,
    pub runstate_area: Option<(u64, PagingMode)>,
    pub runstate: Runstate,
    pub time_version: u32,
    pub periodic_ns: Option<u64>,
    /// When the periodic timer last sent VIRQ_TIMER (periodic_last_event).
    pub periodic_last: u64,
    pub blocked: Option<Blocked>,
    pub up: bool,
    pub initialised: bool,
}

/// Timer kinds in `TimerKey::Platform(kind << 32 | vcpu)`.
pub(crate) mod timer {
    pub const SINGLESHOT: u64 = 1;
    pub const PERIODIC: u64 = 2;
    pub const POLL: u64 = 3;
    pub fn key(kind: u64, vcpu: u32) -> sim_core::platform::TimerKey {
        sim_core::platform::TimerKey::Platform(kind << 32 | vcpu as u64)
    }
}

pub struct XenPlatform {
    pub(crate) cfg: XenConfig,
    pub(crate) vendor: Vendor,
    pub(crate) nr_vcpus: u32,
    pub(crate) shinfo: SharedInfo,
    pub(crate) evtchn: EventChannels,
    /// Where each vCPU's vcpu_info is (a slice for `Delivery`).
    pub(crate) vi: Vec<VcpuInfoAt>,
    pub(crate) vcpus: Vec<VcpuXen>,
    pub(crate) callback: Callback,
    /// The GSI the callback holds high, if any.
    pub(crate) callback_gsi_high: Option<u32>,
    pub(crate) params: [u64; HVM_NR_PARAMS as usize],
    pub(crate) gnttab: GrantTable,
    /// Grant frames mapped by add_to_physmap: gfn -> (idx, status).
    pub(crate) grant_maps: BTreeMap<u64, (u32, bool)>,
    /// (hypercall, sub-op) pairs already warned about.
    pub(crate) warned: BTreeSet<(u32, u32)>,
    pub(crate) shutdown_code: Option<u32>,
    pub(crate) vm_assist: u64,
    /// PHYSDEVOP_map_pirq: pirq -> GSI, and the GSI levels seen last.
    pub(crate) pirq_gsi: BTreeMap<u32, u32>,
    pub(crate) pirq_level: BTreeMap<u32, bool>,
    pub(crate) soft_resets: u32,
    /// VCPUOP_initialise contexts waiting for VCPUOP_up.
    pub(crate) pending_start: BTreeMap<u32, Box<sim_core::ArchState>>,
    /// The effect the current hypercall asks of the machine.
    pub(crate) effect: PlatformEffect,
    /// dom0's backends: xenstore (ring and socket) and the primary console.
    pub(crate) dom0: crate::dom0::Dom0,
}

impl XenPlatform {
    /// A platform for `vcpus` vCPUs (the machine's count; `configure_cpuid`
    /// confirms it).
    pub fn new(cfg: XenConfig, vcpus: u32) -> Self {
        let vcpus = vcpus.max(1);
        let gnttab = GrantTable::new(cfg.max_grant_frames);
        let mut p = XenPlatform {
            cfg,
            vendor: Vendor::Intel,
            nr_vcpus: vcpus,
            shinfo: SharedInfo::new(),
            evtchn: EventChannels::new(vcpus),
            vi: Vec::new(),
            vcpus: Vec::new(),
            callback: Callback::None,
            callback_gsi_high: None,
            params: [0; HVM_NR_PARAMS as usize],
            gnttab,
            grant_maps: BTreeMap::new(),
            warned: BTreeSet::new(),
            shutdown_code: None,
            vm_assist: 0,
            pirq_gsi: BTreeMap::new(),
            pirq_level: BTreeMap::new(),
            soft_resets: 0,
            pending_start: BTreeMap::new(),
            effect: PlatformEffect::None,
            dom0: crate::dom0::Dom0::new(),
        };
        p.reset_domain_state();
        p
    }

    /// Everything a fresh domain (or a soft reset) starts with.
    pub(crate) fn reset_domain_state(&mut self) {
        let n = self.nr_vcpus;
        self.shinfo.clear();
        let skip_free = self.evtchn.skip_free;
        self.evtchn = EventChannels::new(n);
        self.evtchn.skip_free = skip_free;
        self.vi =
            (0..n).map(|i| if i < LEGACY_MAX_VCPUS { VcpuInfoAt::Shared(i) } else { VcpuInfoAt::Nowhere }).collect();
        let old_up: Vec<(bool, bool)> = self.vcpus.iter().map(|v| (v.up, v.initialised)).collect();
        self.vcpus = (0..n)
            .map(|i| {
                let (up, initialised) = old_up.get(i as usize).copied().unwrap_or((i == 0, i == 0));
                VcpuXen {
                    upcall_vector: 0,
                    time_area: None,
                    runstate_area: None,
                    runstate: Runstate::new(if up { runstate::RUNNING } else { runstate::OFFLINE }, 0),
                    time_version: 0,
                    periodic_ns: None,
                    periodic_last: 0,
                    blocked: None,
                    up,
                    initialised,
                }
            })
            .collect();
        self.callback = Callback::None;
        self.params = [0; HVM_NR_PARAMS as usize];
        self.gnttab.reset();
        self.grant_maps.clear();
        self.pirq_gsi.clear();
        self.pirq_level.clear();
        self.shutdown_code = None;
        // The toolstack's rings: params and unbound-to-dom0 ports.
        let (store, console) = (self.cfg.store, self.cfg.console);
        for (ring, pfn_param, evtchn_param) in [
            (store, crate::hvm::param::STORE_PFN, crate::hvm::param::STORE_EVTCHN),
            (console, crate::hvm::param::CONSOLE_PFN, crate::hvm::param::CONSOLE_EVTCHN),
        ] {
            if let Some(r) = ring {
                self.params[pfn_param as usize] = r.pfn;
                if self.evtchn.reserve_unbound(&self.shinfo, r.evtchn, DOM0).is_ok() {
                    self.params[evtchn_param as usize] = r.evtchn as u64;
                }
            }
        }
        self.gnttab.seed_reserved(console.map(|r| r.pfn), store.map(|r| r.pfn));
    }

    pub fn config(&self) -> &XenConfig {
        &self.cfg
    }

    /// The event channels (for backends and tests).
    /// Test-only: make this a deliberately different Xen model, whose
    /// event-channel allocations pass over the lowest free port, so tests can
    /// check that replaying a log on a different model is reported as a
    /// divergence in the platform. Nothing outside tests calls it.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn testing_skew_event_channels(&mut self) {
        self.evtchn.skip_free = 1;
    }

    pub fn evtchn(&self) -> &EventChannels {
        &self.evtchn
    }

    pub fn shared_info(&self) -> &SharedInfo {
        &self.shinfo
    }

    /// Times the guest did SCHEDOP_shutdown(soft_reset): backends
    /// (xenstore, console) watch it to reconnect.
    pub fn soft_resets(&self) -> u32 {
        self.soft_resets
    }

    pub fn hvm_param(&self, index: u32) -> Option<u64> {
        self.params.get(index as usize).copied()
    }

    // ---- dom0 backend API ----

    /// Bind dom0 to guest port `guest_port` (unbound to dom0); dom0's port
    /// has the same number.
    pub fn backend_bind(&mut self, guest_port: u32) -> Result<u32, crate::errno::Errno> {
        self.evtchn.backend_bind(guest_port)
    }

    /// A dom0 port the guest can bind_interdomain to.
    pub fn backend_alloc_unbound(&mut self) -> u32 {
        self.evtchn.backend_alloc_unbound()
    }

    /// Signal the guest through dom0 port `local`. Delivery (vector, LAPIC,
    /// GSI, wake-up) happens at the machine's next platform call.
    pub fn backend_notify(&mut self, mem: &GuestMemory, local: u32) -> Result<(), crate::errno::Errno> {
        let dl = Delivery { shinfo: &self.shinfo, mem, vcpu_info: &self.vi };
        self.evtchn.backend_notify(&dl, local)
    }

    /// Whether the guest signalled dom0 port `local` (consumes the flag).
    pub fn backend_pending(&mut self, local: u32) -> bool {
        self.evtchn.backend_pending(local)
    }

    pub fn backend_mask(&mut self, local: u32, masked: bool) -> Result<(), crate::errno::Errno> {
        self.evtchn.backend_mask(local, masked)
    }

    pub fn backend_unbind(&mut self, local: u32) -> Result<(), crate::errno::Errno> {
        self.evtchn.backend_unbind(local)
    }

    // ---- time ----

    /// Write vCPU `v`'s vcpu_time_info (and its registered copy) for `now`,
    /// with the version protocol (odd while updating).
    pub(crate) fn update_time(&mut self, mem: &GuestMemory, v: u32, now: u64) {
        let Some(vx) = self.vcpus.get_mut(v as usize) else { return };
        let at = self.vi[v as usize];
        let ver = vx.time_version.wrapping_add(2);
        vx.time_version = ver;
        let body = time::time_info(ver, now);
        self.shinfo.vi_write(mem, at, vcpu_info::TIME, &ver.wrapping_sub(1).to_le_bytes());
        self.shinfo.vi_write(mem, at, vcpu_info::TIME + 4, &body[4..]);
        self.shinfo.vi_write(mem, at, vcpu_info::TIME, &body[..4]);
        if let Some((gva, paging)) = vx.time_area {
            let g = GuestVirt::with_paging(mem, paging);
            let _ = g.write(gva, &ver.wrapping_sub(1).to_le_bytes());
            let _ = g.write(gva + 4, &body[4..]);
            let _ = g.write(gva, &body[..4]);
        }
    }

    /// shared_info's wallclock: the time of day at system time 0.
    pub(crate) fn write_wallclock(&mut self) {
        let off = self.shinfo.wc_offset();
        let ns = self.cfg.wallclock_epoch_ns;
        let (sec, nsec) = (ns / 1_000_000_000, (ns % 1_000_000_000) as u32);
        let ver = self.shinfo.read_u32(off).wrapping_add(2) & !1;
        self.shinfo.write_bytes(off, &(ver | 1).to_le_bytes());
        self.shinfo.write_bytes(off + 4, &(sec as u32).to_le_bytes());
        self.shinfo.write_bytes(off + 8, &nsec.to_le_bytes());
        if !self.shinfo.compat() {
            self.shinfo.write_bytes(off + 12, &((sec >> 32) as u32).to_le_bytes());
        }
        self.shinfo.write_bytes(off, &ver.to_le_bytes());
    }

    /// Change vCPU `v`'s runstate and publish it.
    pub(crate) fn set_runstate(&mut self, mem: &GuestMemory, v: u32, state: u32, now: u64) {
        let Some(vx) = self.vcpus.get_mut(v as usize) else { return };
        if vx.runstate.state == state {
            return;
        }
        // A vCPU's slice may start at the round's start, before the moment
        // it was woken: runstate time never runs backwards.
        vx.runstate.change(state, now.max(vx.runstate.entry_time));
        self.publish_runstate(mem, v);
    }

    pub(crate) fn publish_runstate(&self, mem: &GuestMemory, v: u32) {
        let Some(vx) = self.vcpus.get(v as usize) else { return };
        let Some((gva, paging)) = vx.runstate_area else { return };
        let g = GuestVirt::with_paging(mem, paging);
        let compat = self.shinfo.compat();
        let flag = self.vm_assist & (1 << crate::hypercall::VMASST_RUNSTATE_UPDATE_FLAG) != 0;
        let entry_off = if compat { 4 } else { 8 };
        if flag {
            // Mark the record as being updated, write it, then clear the mark.
            let _ = g.write(gva, &vx.runstate.encode(compat, true));
            let _ = g.write(gva + entry_off, &vx.runstate.entry_time.to_le_bytes());
        } else {
            let _ = g.write(gva, &vx.runstate.encode(compat, false));
        }
    }

    // ---- upcalls and wake-ups ----

    /// Deliver every upcall the event channels queued.
    pub(crate) fn flush_upcalls(&mut self, ctx: &mut PlatformCtx) {
        let queued = std::mem::take(&mut self.evtchn.upcalls);
        for v in queued {
            self.deliver_upcall(ctx, v);
        }
        self.check_pollers(ctx);
    }

    /// hvm_assert_evtchn_irq: vCPU `v`'s upcall_pending went 0 -> 1.
    pub(crate) fn deliver_upcall(&mut self, ctx: &mut PlatformCtx, v: u32) {
        let Some(vx) = self.vcpus.get(v as usize) else { return };
        if vx.upcall_vector != 0 {
            if let Some(l) = ctx.lapics.get_mut(v as usize) {
                l.accept_interrupt(vx.upcall_vector, false);
            }
        } else if v == 0 {
            if let Some(gsi) = self.callback.gsi() {
                if self.shinfo.upcall_pending(ctx.mem, self.vi[0]) {
                    ctx.gsi.set(gsi, source::XEN_CALLBACK, true);
                    self.callback_gsi_high = Some(gsi);
                }
            }
        }
        // vcpu_kick: a blocked or polling vCPU runs again.
        self.unblock(ctx, v);
    }

    /// Let vCPU `v` run again if it is blocked in the platform.
    pub(crate) fn unblock(&mut self, ctx: &mut PlatformCtx, v: u32) {
        let Some(vx) = self.vcpus.get_mut(v as usize) else { return };
        if vx.blocked.take().is_none() {
            return;
        }
        ctx.timers.cancel(timer::key(timer::POLL, v));
        self.update_time(ctx.mem, v, ctx.now_ns);
        // vcpu_wake: runnable until its next slice starts (`vcpu_slice`).
        self.set_runstate(ctx.mem, v, runstate::RUNNABLE, ctx.now_ns);
        ctx.effects.push(PlatformEffect::Wake { vcpu: v });
    }

    /// Wake pollers one of whose ports is pending.
    fn check_pollers(&mut self, ctx: &mut PlatformCtx) {
        for v in 0..self.nr_vcpus {
            let ready = match &self.vcpus[v as usize].blocked {
                Some(Blocked::Poll { ports }) => ports.iter().any(|&p| self.shinfo.port_pending(p)),
                _ => false,
            };
            if ready {
                self.unblock(ctx, v);
            }
        }
    }

    /// Whether blocked vCPU `v` has something to wake for.
    fn wake_condition(&self, ctx: &PlatformCtx, v: u32) -> bool {
        let pending = self.shinfo.upcall_pending(ctx.mem, self.vi[v as usize]);
        let lapic = ctx.lapics.get(v as usize).is_some_and(|l| l.pending_interrupt().is_some());
        match &self.vcpus[v as usize].blocked {
            None => true,
            Some(Blocked::Block) => pending || lapic,
            Some(Blocked::Poll { ports }) => ports.iter().any(|&p| self.shinfo.port_pending(p)),
        }
    }

    /// Raise VIRQ `virq` for vCPU `v` and deliver.
    pub(crate) fn send_virq(&mut self, ctx: &mut PlatformCtx, virq: u32, v: u32) {
        let dl = Delivery { shinfo: &self.shinfo, mem: ctx.mem, vcpu_info: &self.vi };
        self.evtchn.send_virq(&dl, virq, v);
        self.flush_upcalls(ctx);
    }

    /// GSIs mapped to PIRQs: a rising level raises the bound port (Xen's
    /// emulated-PIRQ path for an HVM guest's own devices).
    fn sync_pirqs(&mut self, ctx: &mut PlatformCtx) {
        let mut fire = Vec::new();
        for (&pirq, &gsi) in &self.pirq_gsi {
            let level = ctx.gsi.level(gsi);
            let was = self.pirq_level.insert(pirq, level).unwrap_or(false);
            if level && !was {
                fire.push(pirq);
            }
        }
        for pirq in fire {
            let dl = Delivery { shinfo: &self.shinfo, mem: ctx.mem, vcpu_info: &self.vi };
            self.evtchn.send_pirq(&dl, pirq);
        }
    }

    pub(crate) fn timer_vcpu_time(&mut self, ctx: &mut PlatformCtx, v: u32) {
        self.update_time(ctx.mem, v, ctx.now_ns);
        self.send_virq(ctx, VIRQ_TIMER, v);
    }
}

impl Platform for XenPlatform {
    fn reserved_ranges(&self) -> Vec<(u64, u64)> {
        // The toolstack's special pages (xenstore and console rings).
        if self.cfg.store.is_some() || self.cfg.console.is_some() {
            vec![crate::dom0::SPECIAL_REGION]
        } else {
            Vec::new()
        }
    }

    fn configure_cpuid(&mut self, cpuid: &mut CpuidTable, vcpus: u32) {
        self.vendor = cpuid.vendor();
        if vcpus.max(1) != self.nr_vcpus {
            self.nr_vcpus = vcpus.max(1);
            self.vcpus.clear();
            self.reset_domain_state();
        }
        crate::cpuid::install(cpuid, self.cfg.version);
    }

    fn hypercall(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32, vcpu: &mut dyn Vcpu) -> PlatformEffect {
        self.effect = PlatformEffect::None;
        crate::hypercall::dispatch(self, ctx, vcpu_index, vcpu);
        self.flush_upcalls(ctx);
        std::mem::replace(&mut self.effect, PlatformEffect::None)
    }

    fn msr_read(&mut self, _ctx: &mut PlatformCtx, _vcpu_index: u32, msr: u32) -> Option<Result<u64, ()>> {
        // The hypercall-page MSR reads as zero (guest_rdmsr_xen).
        (msr == HYPERCALL_MSR).then_some(Ok(0))
    }

    fn msr_write(
        &mut self,
        ctx: &mut PlatformCtx,
        _vcpu_index: u32,
        vcpu: &mut dyn Vcpu,
        msr: u32,
        value: u64,
    ) -> Option<Result<(), ()>> {
        (msr == HYPERCALL_MSR).then(|| {
            // hvm_init_hypercall_page latches the shared_info layout.
            self.latch_compat(vcpu.state().mode() != sim_core::state::CpuMode::Long64);
            if crate::hypercall_page::write(ctx.mem, self.vendor, self.cfg.hypercall_gate, value) {
                Ok(())
            } else {
                Err(())
            }
        })
    }

    fn timer_fired(&mut self, ctx: &mut PlatformCtx, key: u64) {
        let (kind, v) = (key >> 32, key as u32);
        if v >= self.nr_vcpus {
            return;
        }
        match kind {
            timer::SINGLESHOT => self.timer_vcpu_time(ctx, v),
            timer::PERIODIC => self.periodic_fired(ctx, v),
            timer::POLL => {
                if matches!(self.vcpus[v as usize].blocked, Some(Blocked::Poll { .. })) {
                    self.unblock(ctx, v);
                }
            }

            _ => {}
        }
    }

    fn pending_vector(&mut self, mem: &GuestMemory, vcpu_index: u32) -> Option<u8> {
        // hvm_vcpu_has_pending_irq: the global callback vector is offered
        // while upcall_pending is set, unless the vCPU has its own vector.
        let Callback::Vector(vector) = self.callback else { return None };
        let vx = self.vcpus.get(vcpu_index as usize)?;
        if vx.upcall_vector != 0 || !self.shinfo.upcall_pending(mem, self.vi[vcpu_index as usize]) {
            return None;
        }
        Some(vector)
    }

    fn wake(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32) -> bool {
        self.flush_upcalls(ctx);
        if vcpu_index >= self.nr_vcpus {
            return true;
        }
        if self.vcpus[vcpu_index as usize].blocked.is_none() {
            // Unblocked already (its Wake effect may be queued).
            return true;
        }
        if self.wake_condition(ctx, vcpu_index) {
            self.vcpus[vcpu_index as usize].blocked = Some(Blocked::Block);
            self.unblock(ctx, vcpu_index);
            // `unblock` queued a Wake; the answer says the same.
            ctx.effects.retain(|e| *e != PlatformEffect::Wake { vcpu: vcpu_index });
            return true;
        }
        false
    }

    fn input(&mut self, ctx: &mut PlatformCtx, input: &sim_core::door::Input) {
        self.host_input(ctx, input);
    }

    fn sync(&mut self, ctx: &mut PlatformCtx) {
        self.service_backends(ctx);
        self.sync_pirqs(ctx);
        self.flush_upcalls(ctx);
        // hvm_maybe_deassert_evtchn_irq: drop the callback line once vCPU
        // 0's upcall_pending is seen clear.
        if let Some(gsi) = self.callback_gsi_high {
            if !self.shinfo.upcall_pending(ctx.mem, self.vi[0]) {
                ctx.gsi.set(gsi, source::XEN_CALLBACK, false);
                self.callback_gsi_high = None;
            }
        }
    }

    fn vcpu_online(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32, online: bool) {
        self.machine_set_online(ctx, vcpu_index, online);
    }

    fn vcpu_slice(&mut self, ctx: &mut PlatformCtx, vcpu_index: u32, event: SliceEvent) {
        self.slice_event(ctx, vcpu_index, event);
    }

    // Snapshots and state hashes: platform/snapshot.rs.
    fn save(&self) -> Vec<u8> {
        self.save_snapshot()
    }

    fn restore(&mut self, ctx: &mut PlatformCtx, data: &[u8]) -> Result<(), String> {
        self.restore_snapshot(ctx, data)
    }
}

/// Keys of platform timers, for tests.
pub fn timer_key_singleshot(vcpu: u32) -> TimerKey {
    timer::key(timer::SINGLESHOT, vcpu)
}

mod snapshot;
pub use snapshot::Checkpoint;
#[cfg(test)]
mod tests;
