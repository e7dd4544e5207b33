//! The Xen platform's whole state as data, for snapshots and state hashes:
//! event channels, shared_info (contents, frame, layout), where each
//! vcpu_info is, per-vCPU Xen state, the callback, HVM params, the grant
//! table with its frames and where they are mapped. Restoring re-creates
//! the overlay pages and maps them into guest memory where the guest had
//! them. Timers are the machine's (its queue is in its own state).
//!
//! A `Checkpoint` is the same state kept in memory, for callers that reset
//! one platform many times (the fuzz targets): restoring it skips encoding,
//! and both restores write into the overlay pages the platform already has
//! instead of allocating new ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sim_core::platform::{PlatformCtx, PlatformEffect};
use sim_core::OverlayPage;

use super::{VcpuXen, XenPlatform};
use crate::evtchn::EventChannels;
use crate::gnttab::GrantTableState;
use crate::hvm::{Callback, HVM_NR_PARAMS};
use crate::shared_info::VcpuInfoAt;

#[derive(Clone, Serialize, Deserialize)]
struct XenState {
    nr_vcpus: u32,
    dom0: crate::dom0::Dom0State,
    #[serde(with = "serde_bytes")]
    shinfo_page: Vec<u8>,
    shinfo_gfn: Option<u64>,
    shinfo_compat: bool,
    evtchn: EventChannels,
    vi: Vec<VcpuInfoAt>,
    vcpus: Vec<VcpuXen>,
    callback: Callback,
    callback_gsi_high: Option<u32>,
    params: Vec<u64>,
    gnttab: GrantTableState,
    grant_maps: BTreeMap<u64, (u32, bool)>,
    warned: BTreeSet<(u32, u32)>,
    shutdown_code: Option<u32>,
    vm_assist: u64,
    pirq_gsi: BTreeMap<u32, u32>,
    pirq_level: BTreeMap<u32, bool>,
    soft_resets: u32,
    pending_start: BTreeMap<u32, Box<sim_core::ArchState>>,
}

/// The platform's state held in memory (see the module comment), with a
/// number no other checkpoint has.
#[derive(Clone)]
pub struct Checkpoint {
    state: XenState,
    id: u64,
}

static NEXT_CHECKPOINT: AtomicU64 = AtomicU64::new(0);

impl XenPlatform {
    pub(super) fn save_snapshot(&self) -> Vec<u8> {
        // Room for the usual state (a few pages and the store) up front:
        // every checkpoint saves, and growing by doubling copies it all.
        let mut out = Vec::with_capacity(64 << 10);
        match rmp_serde::encode::write(&mut out, &self.state()) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    pub(super) fn restore_snapshot(&mut self, ctx: &mut PlatformCtx, data: &[u8]) -> Result<(), String> {
        let s: XenState = rmp_serde::from_slice(data).map_err(|e| format!("undecodable Xen state ({e})"))?;
        self.restore_state(ctx, &s, None)
    }

    /// The whole state, as `Platform::save` has it, without encoding.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint { state: self.state(), id: NEXT_CHECKPOINT.fetch_add(1, Ordering::Relaxed) }
    }

    /// Back to `cp`, exactly as `Platform::restore` of the same state would
    /// do: every overlay in guest memory is dropped and the platform's pages
    /// are mapped again where `cp` had them. Guest RAM is the caller's.
    pub fn restore_checkpoint(&mut self, ctx: &mut PlatformCtx, cp: &Checkpoint) -> Result<(), String> {
        self.restore_state(ctx, &cp.state, Some(cp.id))
    }

    fn state(&self) -> XenState {
        // Destructured so that a new field fails to compile until it is
        // saved here (or named as configuration / transient).
        let XenPlatform {
            cfg: _,    // configuration: the machine is rebuilt with it
            vendor: _, // from the CPUID table, configuration too
            nr_vcpus,
            shinfo,
            evtchn,
            vi,
            vcpus,
            callback,
            callback_gsi_high,
            params,
            gnttab,
            grant_maps,
            warned,
            shutdown_code,
            vm_assist,
            pirq_gsi,
            pirq_level,
            soft_resets,
            pending_start,
            effect: _, // only set during a hypercall; none at round boundaries
            dom0,
        } = self;
        let mut shinfo_page = vec![0u8; 4096];
        shinfo.page().read(0, &mut shinfo_page);
        XenState {
            nr_vcpus: *nr_vcpus,
            dom0: dom0.save_state(),
            shinfo_page,
            shinfo_gfn: shinfo.gfn,
            shinfo_compat: shinfo.compat(),
            evtchn: evtchn.clone(),
            vi: vi.clone(),
            vcpus: vcpus.clone(),
            callback: *callback,
            callback_gsi_high: *callback_gsi_high,
            params: params.to_vec(),
            gnttab: gnttab.save_state(),
            grant_maps: grant_maps.clone(),
            warned: warned.clone(),
            shutdown_code: *shutdown_code,
            vm_assist: *vm_assist,
            pirq_gsi: pirq_gsi.clone(),
            pirq_level: pirq_level.clone(),
            soft_resets: *soft_resets,
            pending_start: pending_start.clone(),
        }
    }

    fn restore_state(&mut self, ctx: &mut PlatformCtx, s: &XenState, checkpoint: Option<u64>) -> Result<(), String> {
        let n = self.nr_vcpus;
        if s.nr_vcpus != n || s.vi.len() != n as usize || s.vcpus.len() != n as usize {
            return Err(format!("Xen state for {} vCPUs, this platform has {n}", s.nr_vcpus));
        }
        if s.shinfo_page.len() != 4096 || s.params.len() != HVM_NR_PARAMS as usize {
            return Err("Xen state: malformed shared_info page or HVM params".into());
        }
        self.gnttab.restore_state(&s.gnttab)?;
        // Every overlay in guest memory is the platform's: drop them all and
        // map the restored pages where the guest had them.
        let mapped: Vec<u64> = ctx.mem.overlays().map(|(g, _)| g).collect();
        for g in mapped {
            ctx.mem.unmap_overlay(g);
        }
        self.shinfo.page().write(0, &s.shinfo_page);
        self.shinfo.gfn = s.shinfo_gfn;
        self.shinfo.set_compat(s.shinfo_compat);
        if let Some(g) = s.shinfo_gfn {
            ctx.mem.map_overlay(g, self.shinfo.page().clone());
        }
        for (&gfn, &(idx, status)) in &s.grant_maps {
            // A v2 status frame released by a switch to v1 stays mapped
            // until the guest moves it; the machine restores its contents.
            let page = self.gnttab.existing_frame(idx, status).cloned().unwrap_or_else(OverlayPage::new);
            ctx.mem.map_overlay(gfn, page);
        }
        self.dom0.restore_state(&s.dom0, ctx.mem, checkpoint)?;
        // The test-only skew is the model's, not the state's: it stays.
        let skip_free = self.evtchn.skip_free;
        self.evtchn.clone_from(&s.evtchn);
        self.evtchn.skip_free = skip_free;
        self.vi.clone_from(&s.vi);
        self.vcpus.clone_from(&s.vcpus);
        self.callback = s.callback;
        self.callback_gsi_high = s.callback_gsi_high;
        self.params.copy_from_slice(&s.params);
        self.grant_maps.clone_from(&s.grant_maps);
        self.warned.clone_from(&s.warned);
        self.shutdown_code = s.shutdown_code;
        self.vm_assist = s.vm_assist;
        self.pirq_gsi.clone_from(&s.pirq_gsi);
        self.pirq_level.clone_from(&s.pirq_level);
        self.soft_resets = s.soft_resets;
        self.pending_start.clone_from(&s.pending_start);
        self.effect = PlatformEffect::None;
        Ok(())
    }
}
