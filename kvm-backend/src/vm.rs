//! `KvmVm`: one KVM virtual machine (the VM fd), shared by a machine's vCPUs.
//! It owns the memory-slot table and the VM-wide setup: TSS address, the
//! user-space MSR exits and the MSR filter.

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_enable_cap, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER, KVM_MSR_EXIT_REASON_INVAL,
    KVM_MSR_EXIT_REASON_UNKNOWN,
};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};
use sim_core::boot::ExecSegment;
use sim_core::cpuid::{CpuidTable, Vendor};
use sim_core::memory::GuestMemory;
use sim_core::msr::{self, MsrOwner};
use sim_core::vcpu::{Vcpu, VcpuError};

use crate::caps::KvmCaps;
use crate::dirty;
use crate::error::KvmError;
use crate::guest_debug::{self, Armed};
use crate::hypercall::{DirectCalls, HypercallStrategy};
use crate::slots::{self, SlotTable};
use crate::vcpu::KvmVcpu;
use crate::xen_exit;

/// Where KVM puts the real-mode TSS on Intel hosts without unrestricted
/// guest (three pages, in the MMIO hole below the BIOS, as QEMU does).
const TSS_ADDR: usize = 0xfffb_d000;

/// The MSR ranges whose CPU-owned members the filter lets KVM handle
/// in-kernel; every other MSR is denied and so exits to user space.
const FILTER_RANGES: [(u32, u32); 2] = [(0, 0x300), (0xc000_0080, 0x84)];

pub struct KvmVm {
    pub(crate) vm: VmFd,
    caps: KvmCaps,
    msr_exits: bool,
    strategy: HypercallStrategy,
    memory: Mutex<MemorySync>,
    /// VMCALL/VMMCALL sites with a hardware breakpoint (strategy 3) and a
    /// generation the vCPUs compare to apply changes before their next run.
    hypercall_sites: Mutex<(u64, Arc<Vec<u64>>)>,
}

#[derive(Default)]
struct MemorySync {
    /// (GuestMemory address, generation) last mirrored into the slots.
    synced: Option<(usize, u64)>,
    table: SlotTable,
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm").field("caps", &self.caps).finish()
    }
}

impl KvmVm {
    /// Open /dev/kvm and create a VM with a user-space irqchip (no
    /// KVM_CREATE_IRQCHIP: sim-core's LAPIC model delivers interrupts).
    pub fn new() -> Result<Arc<KvmVm>, KvmError> {
        // open("/dev/kvm") + KVM_GET_API_VERSION.
        let kvm = Kvm::new().map_err(|e| KvmError::ioctl("open /dev/kvm", e))?;
        // KVM_CREATE_VM.
        let vm = kvm.create_vm().map_err(|e| KvmError::ioctl("KVM_CREATE_VM", e))?;
        // KVM_SET_TSS_ADDR: required before the first KVM_RUN on VMX.
        vm.set_tss_address(TSS_ADDR).map_err(|e| KvmError::ioctl("KVM_SET_TSS_ADDR", e))?;
        let caps = KvmCaps::probe(&vm);
        let msr_exits = Self::setup_msr_exits(&vm, &caps)?;
        let strategy = HypercallStrategy::detect(&caps);
        if strategy == HypercallStrategy::XenHvm {
            xen_exit::configure(&vm, xen_exit::XEN_HYPERCALL_MSR)?;
        }
        Ok(Arc::new(KvmVm {
            vm,
            caps,
            msr_exits,
            strategy,
            memory: Mutex::new(MemorySync::default()),
            hypercall_sites: Mutex::new((0, Arc::new(Vec::new()))),
        }))
    }

    /// Put a hardware breakpoint on each of `sites` (linear addresses of
    /// VMCALL/VMMCALL instructions, see `guest_debug::find_sites`) in every
    /// vCPU before its next run, so those calls reach the platform. No-op
    /// under `XenHvm`, where every VMCALL exits anyway.
    pub fn set_hypercall_sites(&self, sites: &[u64]) -> Result<(), guest_debug::TooManySites> {
        guest_debug::guest_debug(sites)?;
        if self.strategy == HypercallStrategy::XenHvm {
            return Ok(());
        }
        let mut s = self.hypercall_sites.lock().unwrap_or_else(|p| p.into_inner());
        *s = (s.0 + 1, Arc::new(sites.to_vec()));
        Ok(())
    }

    /// Find the VMCALL/VMMCALL sites in a loaded kernel's `code` and arm a
    /// breakpoint on each (strategy 3). With more than four, only the
    /// instruction of the guest's CPU `vendor` is kept (Linux picks its
    /// hypercall function by vendor).
    pub fn arm_direct_calls(&self, mem: &GuestMemory, code: &[ExecSegment], vendor: Vendor) -> Armed {
        if self.direct_calls() == DirectCalls::Intercepted {
            return Armed::NotNeeded;
        }
        let mut sites = guest_debug::find_sites(mem, code, &guest_debug::BOTH);
        if sites.len() > guest_debug::MAX_SITES {
            let own = if vendor == Vendor::Amd { guest_debug::VMMCALL } else { guest_debug::VMCALL };
            sites = guest_debug::find_sites(mem, code, &[own]);
        }
        if sites.is_empty() {
            return Armed::NoSites;
        }
        if self.direct_calls() == DirectCalls::Lost {
            return Armed::NoGuestDebug(sites.len());
        }
        match self.set_hypercall_sites(&sites) {
            Ok(()) => Armed::Sites(sites),
            Err(e) => Armed::TooMany(e.0),
        }
    }

    /// The breakpoint sites and their generation.
    pub(crate) fn hypercall_sites(&self) -> (u64, Arc<Vec<u64>>) {
        self.hypercall_sites.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Route the machine's MSRs to user space: KVM_ENABLE_CAP
    /// (KVM_CAP_X86_USER_SPACE_MSR) so filtered and unknown MSRs exit, and
    /// KVM_X86_SET_MSR_FILTER denying (in-kernel) every MSR that
    /// `sim_core::msr::owner` gives to the machine. Returns whether MSR
    /// exits are on; without them the machine's MSRs are handled (or #GP'd)
    /// by KVM itself.
    fn setup_msr_exits(vm: &VmFd, caps: &KvmCaps) -> Result<bool, KvmError> {
        let want = KVM_MSR_EXIT_REASON_FILTER | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL;
        if caps.user_space_msr <= 0 || caps.msr_filter <= 0 {
            return Ok(false);
        }
        let mut cap = kvm_enable_cap { cap: KVM_CAP_X86_USER_SPACE_MSR, ..Default::default() };
        cap.args[0] = want as u64;
        vm.enable_cap(&cap).map_err(|e| KvmError::ioctl("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)", e))?;
        let bitmaps: Vec<Vec<u8>> = FILTER_RANGES.iter().map(|&(base, n)| filter_bitmap(base, n)).collect();
        let ranges: Vec<MsrFilterRange<'_>> = FILTER_RANGES
            .iter()
            .zip(&bitmaps)
            .map(|(&(base, n), bitmap)| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count: n,
                bitmap,
            })
            .collect();
        vm.set_msr_filter(MsrFilterDefaultAction::DENY, &ranges)
            .map_err(|e| KvmError::ioctl("KVM_X86_SET_MSR_FILTER", e))?;
        Ok(true)
    }

    /// What KVM_CHECK_EXTENSION reported for this VM.
    pub fn caps(&self) -> &KvmCaps {
        &self.caps
    }

    /// True when MSRs the machine owns exit to user space (see `setup_msr_exits`).
    pub fn msr_exits(&self) -> bool {
        self.msr_exits
    }

    /// The hypercall interception this VM uses (the best the host offers).
    pub fn hypercall_strategy(&self) -> HypercallStrategy {
        self.strategy
    }

    /// What happens to VMCALL/VMMCALL in the guest's own code on this VM.
    pub fn direct_calls(&self) -> DirectCalls {
        DirectCalls::detect(&self.caps)
    }

    /// Create vCPU `id` of `count` with CPUID from `cpuid`; the shape the
    /// machine's vCPU factory wants.
    pub fn create_vcpu(
        self: &Arc<Self>,
        id: u32,
        count: u32,
        cpuid: Arc<CpuidTable>,
    ) -> Result<Box<dyn Vcpu>, VcpuError> {
        Ok(Box::new(KvmVcpu::new(self.clone(), id, count, &cpuid)?))
    }

    /// Mirror `mem`'s address map into KVM memory slots if it changed since
    /// the last call (a different `GuestMemory` or a new generation).
    pub(crate) fn sync_memory(&self, mem: &GuestMemory) -> Result<(), KvmError> {
        let key = (mem as *const GuestMemory as usize, mem.generation());
        let mut sync = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if sync.synced == Some(key) {
            return Ok(());
        }
        // The slots are `mem`'s (not a previous GuestMemory's): their dirty
        // logs belong to it.
        let same_memory = sync.synced.is_some_and(|(addr, _)| addr == key.0);
        let diff = sync.table.diff(&slots::layout(mem));
        for (slot, m) in diff.remove {
            if m.ram && same_memory {
                // The log goes with the slot: take it first.
                self.fold_dirty_log(mem, slot, &m)?;
            }
            // KVM_SET_USER_MEMORY_REGION with size 0 deletes the slot.
            let region = m.region(slot, true);
            // SAFETY: deleting a slot makes KVM forget the host range.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(|e| KvmError::ioctl("KVM_SET_USER_MEMORY_REGION (delete)", e))?;
        }
        for (slot, m) in diff.add {
            let region = m.region(slot, false);
            // SAFETY: the host range belongs to `mem` (RAM or an overlay
            // page) and stays mapped while it is in the map; the slot is
            // deleted or replaced as soon as the map changes, before the
            // next KVM_RUN. The caller keeps `mem` alive across `run`.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(|e| KvmError::ioctl("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        sync.synced = Some(key);
        Ok(())
    }

    /// Mark in `mem` the RAM pages the guest wrote since the last call
    /// (KVM_GET_DIRTY_LOG on every RAM slot). Nothing to do for a memory
    /// that was never mirrored into the slots: KVM has not run on it.
    pub(crate) fn sync_dirty(&self, mem: &GuestMemory) -> Result<(), KvmError> {
        let sync = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if sync.synced.map(|(addr, _)| addr) != Some(mem as *const GuestMemory as usize) {
            return Ok(());
        }
        for (slot, m) in sync.table.ram_slots() {
            self.fold_dirty_log(mem, slot, &m)?;
        }
        Ok(())
    }

    fn fold_dirty_log(&self, mem: &GuestMemory, slot: u32, m: &slots::SlotMap) -> Result<(), KvmError> {
        let bitmap =
            self.vm.get_dirty_log(slot, m.len as usize).map_err(|e| KvmError::ioctl("KVM_GET_DIRTY_LOG", e))?;
        dirty::fold(mem, m.gpa, m.len, &bitmap);
        Ok(())
    }
}

/// Filter bitmap for `n` MSRs from `base`: bit set = KVM handles the MSR
/// in-kernel (the CPU owns it); clear = denied, so it exits to user space.
fn filter_bitmap(base: u32, n: u32) -> Vec<u8> {
    let mut bits = vec![0u8; n.div_ceil(8) as usize];
    for i in 0..n {
        if msr::owner(base.wrapping_add(i)) == MsrOwner::Cpu {
            bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_allows_exactly_the_cpu_owned_msrs() {
        let low = filter_bitmap(0, 0x300);
        let bit = |b: &[u8], i: u32| b[(i / 8) as usize] >> (i % 8) & 1 == 1;
        assert!(bit(&low, msr::IA32_TSC));
        assert!(bit(&low, msr::IA32_PAT));
        assert!(bit(&low, msr::IA32_SYSENTER_EIP));
        assert!(!bit(&low, msr::IA32_APIC_BASE));
        assert!(!bit(&low, 0x200)); // MTRR physbase0: not owned by the CPU model
        let high = filter_bitmap(0xc000_0080, 0x84);
        assert!(bit(&high, 0)); // EFER
        assert!(bit(&high, 0x83)); // TSC_AUX = 0xc0000103
        assert!(!bit(&high, 0x5)); // 0xc0000085 is not an MSR the CPU owns
                                   // Every CPU-owned MSR lies inside one of the allowed ranges.
        for m in [msr::IA32_EFER, msr::IA32_KERNEL_GS_BASE, msr::IA32_MTRR_DEF_TYPE, msr::IA32_SPEC_CTRL] {
            assert!(FILTER_RANGES.iter().any(|&(b, n)| m >= b && m - b < n), "{m:#x}");
        }
    }
}
