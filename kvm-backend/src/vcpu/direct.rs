//! The vCPU side of hypercall strategies 1 and 3: exits that stop *on* a
//! VMCALL/VMMCALL (KVM_EXIT_XEN, or KVM_EXIT_DEBUG at a breakpoint site).
//! Unlike the port stub, the instruction has not completed when the
//! platform runs the call; `set_gprs` completes it (KVM writes RAX from the
//! exit and steps over it, or we step RIP over the 3 bytes).

use std::sync::Arc;

use kvm_bindings::{KVM_EXIT_DEBUG, KVM_EXIT_XEN};
use sim_core::state::gpr;
use sim_core::vcpu::VcpuExit;

use super::{ioctl, KvmVcpu};
use crate::error::KvmError;
use crate::guest_debug;
use crate::xen_exit::{self, XenHcall};

/// A hypercall whose instruction is still to be completed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Pending {
    Xen(XenHcall),
    Breakpoint,
}

/// Per-vCPU state of strategies 1 and 3.
#[derive(Debug, Default)]
pub(super) struct Direct {
    pub(super) pending: Option<Pending>,
    /// Generation of the VM's site list last given to KVM_SET_GUEST_DEBUG.
    generation: u64,
    sites: Arc<Vec<u64>>,
}

/// -ENOSYS, KVM's answer if the platform never writes RAX.
const ENOSYS: u64 = (-38i64) as u64;

impl KvmVcpu {
    /// Apply the VM's breakpoint sites if they changed since the last run.
    pub(super) fn sync_guest_debug(&mut self) -> Result<(), KvmError> {
        let (generation, sites) = self.vm.hypercall_sites();
        if generation == self.direct.generation {
            return Ok(());
        }
        let dbg = guest_debug::guest_debug(&sites).map_err(|e| KvmError::Unsupported(e.to_string()))?;
        self.fd.set_guest_debug(&dbg).map_err(ioctl("KVM_SET_GUEST_DEBUG"))?;
        self.direct.generation = generation;
        self.direct.sites = sites;
        Ok(())
    }

    /// KVM_EXIT_XEN and KVM_EXIT_DEBUG; None for other exit reasons.
    pub(super) fn direct_exit(&mut self, reason: u32) -> Option<Result<Option<VcpuExit>, KvmError>> {
        let run = self.fd.get_kvm_run();
        match reason {
            KVM_EXIT_XEN => {
                // SAFETY: exit_reason says the `xen` member is the live one.
                let x = unsafe { &mut run.__bindgen_anon_1.xen };
                let Some(h) = XenHcall::from_exit(x) else {
                    return Some(Err(KvmError::Unsupported(format!("KVM_EXIT_XEN of unknown type {}", x.type_))));
                };
                xen_exit::set_result(x, ENOSYS);
                self.direct.pending = Some(Pending::Xen(h));
            }
            KVM_EXIT_DEBUG => {
                // SAFETY: exit_reason says the `debug` member is the live one.
                let d = unsafe { run.__bindgen_anon_1.debug.arch };
                if !guest_debug::is_site_hit(&self.direct.sites, d.exception, d.pc, d.dr6) {
                    // The guest's own #DB (single step, its own breakpoints)
                    // or #BP, intercepted because guest debugging is on.
                    return Some(self.reinject(d.exception, d.dr6).map(|()| None));
                }
                self.direct.pending = Some(Pending::Breakpoint);
            }
            _ => return None,
        }
        self.ready = false;
        Some(Ok(Some(VcpuExit::Hypercall)))
    }

    /// Deliver exception `vector` that KVM intercepted for guest debugging
    /// back to the guest, with DR6 as the hardware set it for a #DB.
    fn reinject(&mut self, vector: u32, dr6: u64) -> Result<(), KvmError> {
        if vector == 1 {
            let mut d = self.fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?;
            d.dr6 = dr6;
            self.fd.set_debug_regs(&d).map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        }
        let mut ev = self.fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 1;
        ev.exception.nr = vector as u8;
        ev.exception.has_error_code = 0;
        self.fd.set_vcpu_events(&ev).map_err(ioctl("KVM_SET_VCPU_EVENTS"))
    }

    /// The registers as the platform's hypercall entry should see them.
    pub(super) fn direct_gprs(&self, regs: [u64; 16]) -> [u64; 16] {
        match self.direct.pending {
            Some(Pending::Xen(h)) => h.registers(&regs),
            _ => regs,
        }
    }

    /// Complete a pending call with the platform's registers `g` (RAX is
    /// the result); Ok(false) if none was pending.
    pub(super) fn finish_direct(&mut self, g: &[u64; 16]) -> Result<bool, KvmError> {
        match self.direct.pending.take() {
            None => Ok(false),
            Some(Pending::Xen(_)) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the live exit is still the KVM_EXIT_XEN being answered.
                xen_exit::set_result(unsafe { &mut run.__bindgen_anon_1.xen }, g[gpr::RAX]);
                // KVM writes RAX and steps over the VMCALL now, so that the
                // state is at an instruction boundary, then the other registers.
                self.cui_pending = true;
                self.settle()?;
                self.write_gprs(g)?;
                Ok(true)
            }
            Some(Pending::Breakpoint) => {
                let mut r = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
                r.rip = r.rip.wrapping_add(guest_debug::INSN_LEN);
                self.fd.set_regs(&crate::convert::regs_of(g, r.rip, r.rflags)).map_err(ioctl("KVM_SET_REGS"))?;
                Ok(true)
            }
        }
    }

    /// Before re-entering: a call the platform never answered completes
    /// with the registers as they are (RAX -ENOSYS from KVM's side).
    pub(super) fn finish_unanswered(&mut self) -> Result<(), KvmError> {
        if self.direct.pending.is_none() {
            return Ok(());
        }
        let regs = self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?;
        let mut g = crate::convert::gprs_of(&regs);
        g[gpr::RAX] = ENOSYS;
        self.finish_direct(&g).map(|_| ())
    }
}
