//! Replaying a run recorded on KVM without Xen support (hypercall
//! strategies 2 and 3): there a VMCALL/VMMCALL reached the Xen platform only
//! at the sites the recording host had hardware breakpoints on; anywhere
//! else KVM's own paravirtual hypercall handler answered it in the kernel,
//! unseen by the recording. `kvm_answer` gives that answer, from
//! `kvm_emulate_hypercall` (arch/x86/kvm/x86.c) and
//! Documentation/virt/kvm/x86/hypercalls.rst.

/// The hypercall numbers KVM knows (hypercalls.rst, include/uapi/linux/kvm_para.h).
const KVM_HC_VAPIC_POLL_IRQ: u64 = 1;
const KVM_HC_KICK_CPU: u64 = 5;
const KVM_HC_CLOCK_PAIRING: u64 = 9;
const KVM_HC_SEND_IPI: u64 = 10;
const KVM_HC_SCHED_YIELD: u64 = 11;
/// KVM's error numbers (include/uapi/linux/kvm_para.h).
const KVM_ENOSYS: i64 = 1000;
const KVM_EPERM: i64 = 1;

/// What KVM did with a VMCALL/VMMCALL it handled itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KvmAnswer {
    /// RAX becomes this and the instruction retires.
    Rax(u64),
    /// A call with effects beyond RAX (waking or interrupting another vCPU,
    /// writing guest memory) that is not modelled: the interpreter reports
    /// it as a hypercall exit, which the log does not have there, so the
    /// replay reports a divergence instead of silently differing.
    NotModelled,
}

/// KVM's answer to hypercall `rax` at privilege `cpl`; `long64` is 64-bit
/// mode (else the number and the result are 32 bits wide).
pub(crate) fn kvm_answer(rax: u64, cpl: u8, long64: bool) -> KvmAnswer {
    let nr = if long64 { rax } else { rax & 0xffff_ffff };
    let ret: i64 = if cpl != 0 {
        -KVM_EPERM
    } else {
        match nr {
            KVM_HC_VAPIC_POLL_IRQ | KVM_HC_SCHED_YIELD => 0,
            KVM_HC_KICK_CPU | KVM_HC_CLOCK_PAIRING | KVM_HC_SEND_IPI => return KvmAnswer::NotModelled,
            _ => -KVM_ENOSYS,
        }
    };
    KvmAnswer::Rax(if long64 { ret as u64 } else { ret as u32 as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_kvm_emulate_hypercall() {
        // A Xen hypercall number (console_io, 18) is unknown to KVM: -KVM_ENOSYS.
        assert_eq!(kvm_answer(18, 0, true), KvmAnswer::Rax(0xffff_ffff_ffff_fc18));
        // Outside 64-bit mode the result is truncated to 32 bits (x86.c: `ret = (u32)ret`).
        assert_eq!(kvm_answer(18, 0, false), KvmAnswer::Rax(0xffff_fc18));
        // CPL > 0 is refused before the number is looked at.
        assert_eq!(kvm_answer(1, 3, true), KvmAnswer::Rax(u64::MAX));
        assert_eq!(kvm_answer(18, 3, false), KvmAnswer::Rax(0xffff_ffff));
        // VAPIC_POLL_IRQ and SCHED_YIELD succeed with nothing for the guest to see.
        assert_eq!(kvm_answer(1, 0, true), KvmAnswer::Rax(0));
        assert_eq!(kvm_answer(11, 0, false), KvmAnswer::Rax(0));
        // Outside 64-bit mode only EAX is the number.
        assert_eq!(kvm_answer(0x1_0000_0001, 0, false), KvmAnswer::Rax(0));
        assert_eq!(kvm_answer(0x1_0000_0001, 0, true), KvmAnswer::Rax(0xffff_ffff_ffff_fc18));
        for nr in [5, 9, 10] {
            assert_eq!(kvm_answer(nr, 0, true), KvmAnswer::NotModelled, "{nr}");
        }
    }
}
