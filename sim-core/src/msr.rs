//! One MSR policy for every backend: which MSRs the CPU keeps in its own
//! state (`ArchState::msrs` and friends) and which exit to the machine (the
//! LAPIC's, the platform's). Unknown MSRs #GP, as on hardware.

pub const IA32_TSC: u32 = 0x10;
pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_SPEC_CTRL: u32 = 0x48;
pub const IA32_TSC_ADJUST: u32 = 0x3b;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
pub const X2APIC_FIRST: u32 = 0x800;
pub const X2APIC_LAST: u32 = 0x8ff;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_STAR: u32 = 0xc000_0081;
pub const IA32_LSTAR: u32 = 0xc000_0082;
pub const IA32_CSTAR: u32 = 0xc000_0083;
pub const IA32_FMASK: u32 = 0xc000_0084;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const IA32_TSC_AUX: u32 = 0xc000_0103;

/// Who answers an MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrOwner {
    /// The CPU backend, from its architectural state.
    Cpu,
    /// The machine: the LAPIC (APIC base, x2APIC range, TSC deadline) or the
    /// platform (e.g. Xen's hypercall-page MSR). Reached through an exit.
    Machine,
}

/// MSRs the CPU keeps itself. Everything else exits; the machine answers or
/// raises #GP.
pub fn owner(msr: u32) -> MsrOwner {
    match msr {
        IA32_TSC | IA32_SPEC_CTRL | IA32_TSC_ADJUST | IA32_MTRRCAP | IA32_SYSENTER_CS | IA32_SYSENTER_ESP
        | IA32_SYSENTER_EIP | IA32_MISC_ENABLE | IA32_PAT | IA32_MTRR_DEF_TYPE | IA32_EFER | IA32_STAR | IA32_LSTAR
        | IA32_CSTAR | IA32_FMASK | IA32_FS_BASE | IA32_GS_BASE | IA32_KERNEL_GS_BASE | IA32_TSC_AUX => MsrOwner::Cpu,
        _ => MsrOwner::Machine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_and_platform_msrs_exit() {
        assert_eq!(owner(IA32_APIC_BASE), MsrOwner::Machine);
        assert_eq!(owner(0x80b), MsrOwner::Machine); // x2APIC EOI
        assert_eq!(owner(IA32_TSC_DEADLINE), MsrOwner::Machine);
        assert_eq!(owner(0x4000_0000), MsrOwner::Machine); // Xen hypercall page
        assert_eq!(owner(IA32_LSTAR), MsrOwner::Cpu);
        assert_eq!(owner(IA32_EFER), MsrOwner::Cpu);
    }
}
