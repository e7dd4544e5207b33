//! The KVM capabilities the backend probes (KVM_CHECK_EXTENSION on the VM
//! fd), kept so they can be reported with `-v` and in test output.

use kvm_bindings::{
    KVM_CAP_EXIT_HYPERCALL, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_NR_MEMSLOTS, KVM_CAP_SET_GUEST_DEBUG, KVM_CAP_TSC_CONTROL,
    KVM_CAP_X86_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR, KVM_CAP_XCRS, KVM_CAP_XEN_HVM, KVM_CAP_XSAVE,
};
use kvm_ioctls::VmFd;

/// Raw KVM_CHECK_EXTENSION answers (0 = absent; some are bit masks or counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmCaps {
    /// KVM_CAP_XEN_HVM: bit mask of KVM_XEN_HVM_CONFIG_* flags.
    pub xen_hvm: i32,
    /// KVM_CAP_X86_USER_SPACE_MSR (1 when available).
    pub user_space_msr: i32,
    pub msr_filter: i32,
    pub tsc_control: i32,
    pub xsave: i32,
    pub xcrs: i32,
    pub immediate_exit: i32,
    pub set_guest_debug: i32,
    /// KVM_CAP_EXIT_HYPERCALL: mask of hypercalls KVM can forward (not Xen's).
    pub exit_hypercall: i32,
    pub nr_memslots: i32,
}

impl KvmCaps {
    /// Probe every capability the backend cares about on `vm`.
    pub(crate) fn probe(vm: &VmFd) -> Self {
        let c = |cap: u32| vm.check_extension_raw(cap as libc::c_ulong);
        KvmCaps {
            xen_hvm: c(KVM_CAP_XEN_HVM),
            user_space_msr: c(KVM_CAP_X86_USER_SPACE_MSR),
            msr_filter: c(KVM_CAP_X86_MSR_FILTER),
            tsc_control: c(KVM_CAP_TSC_CONTROL),
            xsave: c(KVM_CAP_XSAVE),
            xcrs: c(KVM_CAP_XCRS),
            immediate_exit: c(KVM_CAP_IMMEDIATE_EXIT),
            set_guest_debug: c(KVM_CAP_SET_GUEST_DEBUG),
            exit_hypercall: c(KVM_CAP_EXIT_HYPERCALL),
            nr_memslots: c(KVM_CAP_NR_MEMSLOTS),
        }
    }
}

impl std::fmt::Display for KvmCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "XEN_HVM={:#x} X86_USER_SPACE_MSR={:#x} X86_MSR_FILTER={} TSC_CONTROL={} XSAVE={} XCRS={} \
             IMMEDIATE_EXIT={} SET_GUEST_DEBUG={} EXIT_HYPERCALL={:#x} NR_MEMSLOTS={}",
            self.xen_hvm,
            self.user_space_msr,
            self.msr_filter,
            self.tsc_control,
            self.xsave,
            self.xcrs,
            self.immediate_exit,
            self.set_guest_debug,
            self.exit_hypercall,
            self.nr_memslots
        )
    }
}
