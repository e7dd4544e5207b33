//! ArchState <-> KVM's register structures. Pure functions, so they are
//! unit-tested without /dev/kvm.

use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events};
use kvm_bindings::{KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW};
use sim_core::msr;
use sim_core::state::{seg_attr, ArchState, DescriptorTable, Events, FpuState, Msrs, PendingException, Segment};

/// KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI.
const SHADOW_STI: u8 = 1;

pub fn regs_from(s: &ArchState) -> kvm_regs {
    regs_of(&s.gpr, s.rip, s.rflags)
}

pub fn regs_of(g: &[u64; 16], rip: u64, rflags: u64) -> kvm_regs {
    kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip,
        rflags,
    }
}

pub fn gprs_of(r: &kvm_regs) -> [u64; 16] {
    [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
}

pub fn segment_to_kvm(s: &Segment) -> kvm_segment {
    let a = s.attr;
    let bit = |m: u16| u8::from(a & m != 0);
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (a & seg_attr::TYPE_MASK) as u8,
        present: bit(seg_attr::P),
        dpl: ((a & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8,
        db: bit(seg_attr::DB),
        s: bit(seg_attr::S),
        l: bit(seg_attr::L),
        g: bit(seg_attr::G),
        avl: bit(seg_attr::AVL),
        unusable: u8::from(!s.present()),
        padding: 0,
    }
}

pub fn segment_from_kvm(k: &kvm_segment) -> Segment {
    let flag = |v: u8, m: u16| if v != 0 { m } else { 0 };
    // KVM reports an unusable segment with `unusable` set; the packed
    // layout has no such bit, P clear says the same.
    let present = k.present != 0 && k.unusable == 0;
    let attr = (k.type_ as u16 & seg_attr::TYPE_MASK)
        | flag(k.s, seg_attr::S)
        | ((k.dpl as u16 & 3) << seg_attr::DPL_SHIFT)
        | flag(u8::from(present), seg_attr::P)
        | flag(k.avl, seg_attr::AVL)
        | flag(k.l, seg_attr::L)
        | flag(k.db, seg_attr::DB)
        | flag(k.g, seg_attr::G);
    Segment { selector: k.selector, base: k.base, limit: k.limit, attr }
}

fn dtable_to(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable { base: d.base, limit: d.limit, padding: [0; 3] }
}

fn dtable_from(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable { base: d.base, limit: d.limit }
}

/// Fill `k` (as read from KVM, so apic_base and the interrupt bitmap keep
/// KVM's values) from `s`.
pub fn sregs_into(s: &ArchState, k: &mut kvm_sregs) {
    k.es = segment_to_kvm(&s.seg[0]);
    k.cs = segment_to_kvm(&s.seg[1]);
    k.ss = segment_to_kvm(&s.seg[2]);
    k.ds = segment_to_kvm(&s.seg[3]);
    k.fs = segment_to_kvm(&s.seg[4]);
    k.gs = segment_to_kvm(&s.seg[5]);
    k.ldt = segment_to_kvm(&s.ldtr);
    k.tr = segment_to_kvm(&s.tr);
    k.gdt = dtable_to(&s.gdtr);
    k.idt = dtable_to(&s.idtr);
    k.cr0 = s.cr0;
    k.cr2 = s.cr2;
    k.cr3 = s.cr3;
    k.cr4 = s.cr4;
    k.cr8 = s.cr8;
    k.efer = s.efer;
    // A pending external interrupt travels in kvm_vcpu_events instead.
    k.interrupt_bitmap = [0; 4];
}

pub fn sregs_to_state(k: &kvm_sregs, s: &mut ArchState) {
    s.seg = [k.es, k.cs, k.ss, k.ds, k.fs, k.gs].map(|x| segment_from_kvm(&x));
    s.ldtr = segment_from_kvm(&k.ldt);
    s.tr = segment_from_kvm(&k.tr);
    s.gdtr = dtable_from(&k.gdt);
    s.idtr = dtable_from(&k.idt);
    s.cr0 = k.cr0;
    s.cr2 = k.cr2;
    s.cr3 = k.cr3;
    s.cr4 = k.cr4;
    s.cr8 = k.cr8;
    s.efer = k.efer;
}

/// TOP of the x87 stack from the status word.
fn fpu_top(fsw: u16) -> usize {
    ((fsw >> 11) & 7) as usize
}

/// KVM's kvm_fpu holds the FXSAVE image, whose register area is in stack
/// order (ST0..ST7); ArchState keeps physical order (R0..R7): ST(i) is
/// R((TOP + i) mod 8).
pub fn fpu_to_kvm(f: &FpuState) -> kvm_fpu {
    let top = fpu_top(f.fsw);
    let mut fpr = [[0u8; 16]; 8];
    for (i, st) in fpr.iter_mut().enumerate() {
        let mut r = f.st[(top + i) & 7];
        r[10..].fill(0);
        *st = r;
    }
    kvm_fpu {
        fpr,
        fcw: f.fcw,
        fsw: f.fsw,
        ftwx: f.ftw,
        pad1: 0,
        last_opcode: f.fop,
        last_ip: f.fip,
        last_dp: f.fdp,
        xmm: f.xmm.map(|x| x.to_le_bytes()),
        mxcsr: f.mxcsr,
        pad2: 0,
    }
}

pub fn fpu_from_kvm(k: &kvm_fpu) -> FpuState {
    let top = fpu_top(k.fsw);
    let mut st = [[0u8; 16]; 8];
    for (i, r) in k.fpr.iter().enumerate() {
        let mut v = *r;
        v[10..].fill(0);
        st[(top + i) & 7] = v;
    }
    FpuState {
        fcw: k.fcw,
        fsw: k.fsw,
        ftw: k.ftwx,
        fop: k.last_opcode,
        fip: k.last_ip,
        fdp: k.last_dp,
        st,
        xmm: k.xmm.map(u128::from_le_bytes),
        mxcsr: k.mxcsr,
    }
}

pub fn events_to_kvm(e: &Events) -> kvm_vcpu_events {
    let mut k = kvm_vcpu_events::default();
    if let Some(x) = e.exception {
        k.exception.injected = 1;
        k.exception.nr = x.vector;
        k.exception.has_error_code = u8::from(x.error_code.is_some());
        k.exception.error_code = x.error_code.unwrap_or(0);
    }
    if let Some(v) = e.interrupt {
        k.interrupt.injected = 1;
        k.interrupt.nr = v;
    }
    k.interrupt.shadow = if e.interrupt_shadow { SHADOW_STI } else { 0 };
    k.nmi.pending = u8::from(e.nmi_pending);
    k.nmi.masked = u8::from(e.nmi_masked);
    k.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
    k
}

/// Events from KVM; `halted` is the backend's own (KVM reports HLT as an
/// exit, it does not keep a halted state with a user-space irqchip).
pub fn events_from_kvm(k: &kvm_vcpu_events, halted: bool) -> Events {
    let exception = (k.exception.injected != 0 || k.exception.pending != 0).then_some(PendingException {
        vector: k.exception.nr,
        error_code: (k.exception.has_error_code != 0).then_some(k.exception.error_code),
    });
    Events {
        interrupt_shadow: k.interrupt.shadow != 0,
        // An NMI KVM has started injecting is still undelivered to the guest.
        nmi_pending: k.nmi.pending != 0 || k.nmi.injected != 0,
        nmi_masked: k.nmi.masked != 0,
        exception,
        interrupt: (k.interrupt.injected != 0 && k.interrupt.soft == 0).then_some(k.interrupt.nr),
        halted,
    }
}

/// The CPU-owned MSRs kept in `ArchState::msrs`, in the order KVM is asked
/// for them. The optional ones (which KVM refuses unless the guest's CPUID
/// has the feature) come last.
pub const STATE_MSRS: [u32; 13] = [
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_PAT,
    msr::IA32_MISC_ENABLE,
    msr::IA32_TSC_AUX,
    msr::IA32_TSC_ADJUST,
    msr::IA32_SPEC_CTRL,
];

/// The field of `m` that holds MSR `index` (one of `STATE_MSRS`).
pub fn msr_field(m: &mut Msrs, index: u32) -> Option<&mut u64> {
    Some(match index {
        msr::IA32_SYSENTER_CS => &mut m.sysenter_cs,
        msr::IA32_SYSENTER_ESP => &mut m.sysenter_esp,
        msr::IA32_SYSENTER_EIP => &mut m.sysenter_eip,
        msr::IA32_STAR => &mut m.star,
        msr::IA32_LSTAR => &mut m.lstar,
        msr::IA32_CSTAR => &mut m.cstar,
        msr::IA32_FMASK => &mut m.sfmask,
        msr::IA32_KERNEL_GS_BASE => &mut m.kernel_gs_base,
        msr::IA32_PAT => &mut m.pat,
        msr::IA32_MISC_ENABLE => &mut m.misc_enable,
        msr::IA32_TSC_AUX => &mut m.tsc_aux,
        msr::IA32_TSC_ADJUST => &mut m.tsc_adjust,
        msr::IA32_SPEC_CTRL => &mut m.spec_ctrl,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::state::sreg;

    #[test]
    fn segments_round_trip_through_kvm_layout() {
        let s = ArchState::pvh_entry(0x100000, 0x5000);
        for seg in s.seg.iter().chain([&s.tr, &s.ldtr]) {
            assert_eq!(segment_from_kvm(&segment_to_kvm(seg)), *seg);
        }
        // Flat 32-bit code as the SDM defines it: type 0xb, S, P, D, G.
        let k = segment_to_kvm(&s.seg[sreg::CS]);
        assert_eq!((k.type_, k.s, k.present, k.db, k.g, k.l, k.unusable), (0xb, 1, 1, 1, 1, 0, 0));
        // The PVH LDTR is not present: KVM must see it unusable.
        assert_eq!(segment_to_kvm(&s.ldtr).unusable, 1);
    }

    #[test]
    fn fpu_registers_are_rotated_by_top() {
        let mut f = FpuState { fsw: 6 << 11, ..Default::default() };
        for (i, r) in f.st.iter_mut().enumerate() {
            r[0] = i as u8 + 1; // R0 = 1, ..., R7 = 8
        }
        let k = fpu_to_kvm(&f);
        // TOP = 6: ST0 = R6, ST1 = R7, ST2 = R0.
        assert_eq!((k.fpr[0][0], k.fpr[1][0], k.fpr[2][0]), (7, 8, 1));
        assert_eq!(fpu_from_kvm(&k), f);
    }

    #[test]
    fn events_round_trip() {
        let e = Events {
            interrupt_shadow: true,
            nmi_pending: true,
            nmi_masked: false,
            exception: Some(PendingException { vector: 14, error_code: Some(2) }),
            interrupt: None,
            halted: false,
        };
        assert_eq!(events_from_kvm(&events_to_kvm(&e), false), e);
        let e = Events { interrupt: Some(0x30), nmi_masked: true, ..Default::default() };
        assert_eq!(events_from_kvm(&events_to_kvm(&e), true), Events { halted: true, ..e });
    }

    #[test]
    fn every_state_msr_has_a_field() {
        let mut m = Msrs::default();
        for i in STATE_MSRS {
            assert!(msr_field(&mut m, i).is_some(), "{i:#x}");
            assert_eq!(msr::owner(i), msr::MsrOwner::Cpu);
        }
    }
}
