//! The one architectural state type shared by every CPU backend, so that a
//! snapshot taken on one backend restores on the other.

use serde::{Deserialize, Serialize};

/// General-purpose register indices in x86 encoding order.
pub mod gpr {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
    pub const R8: usize = 8;
    pub const R9: usize = 9;
    pub const R10: usize = 10;
    pub const R11: usize = 11;
    pub const R12: usize = 12;
    pub const R13: usize = 13;
    pub const R14: usize = 14;
    pub const R15: usize = 15;
}

/// Segment register indices in x86 encoding order (`seg` array).
pub mod sreg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

pub mod rflags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL_SHIFT: u32 = 12;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
}

pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
}

pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// A segment register with its hidden part. `attr` uses the packed 12-bit
/// descriptor-attribute layout (as AMD's VMCB does): bits 0-3 type, 4 S,
/// 5-6 DPL, 7 P, 8 AVL, 9 L, 10 D/B, 11 G. A segment with P clear is
/// unusable (a null selector loaded in protected mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    /// Byte-granular limit (already expanded when G is set).
    pub limit: u32,
    pub attr: u16,
}

pub mod seg_attr {
    pub const TYPE_MASK: u16 = 0xf;
    /// Code/data type bit 0: accessed.
    pub const ACCESSED: u16 = 1 << 0;
    /// Data: writable; code: readable.
    pub const RW: u16 = 1 << 1;
    /// Data: expand-down; code: conforming.
    pub const DC: u16 = 1 << 2;
    pub const CODE: u16 = 1 << 3;
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const DPL_MASK: u16 = 3 << 5;
    pub const P: u16 = 1 << 7;
    pub const AVL: u16 = 1 << 8;
    pub const L: u16 = 1 << 9;
    pub const DB: u16 = 1 << 10;
    pub const G: u16 = 1 << 11;
}

impl Segment {
    /// A real-mode segment for `selector` (base = selector << 4, 64 KiB limit).
    pub fn real_mode(selector: u16, code: bool) -> Self {
        let ty =
            if code { seg_attr::CODE | seg_attr::RW | seg_attr::ACCESSED } else { seg_attr::RW | seg_attr::ACCESSED };
        Segment { selector, base: (selector as u64) << 4, limit: 0xffff, attr: ty | seg_attr::S | seg_attr::P }
    }

    /// A flat 4 GiB 32-bit segment at DPL 0.
    pub fn flat32(selector: u16, code: bool) -> Self {
        let ty =
            if code { seg_attr::CODE | seg_attr::RW | seg_attr::ACCESSED } else { seg_attr::RW | seg_attr::ACCESSED };
        Segment {
            selector,
            base: 0,
            limit: 0xffff_ffff,
            attr: ty | seg_attr::S | seg_attr::P | seg_attr::DB | seg_attr::G,
        }
    }

    pub fn present(&self) -> bool {
        self.attr & seg_attr::P != 0
    }
    pub fn dpl(&self) -> u8 {
        ((self.attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8
    }
    pub fn is_code(&self) -> bool {
        self.attr & seg_attr::CODE != 0
    }
    pub fn long(&self) -> bool {
        self.attr & seg_attr::L != 0
    }
    pub fn default_big(&self) -> bool {
        self.attr & seg_attr::DB != 0
    }

    /// Decode an 8-byte GDT/LDT descriptor's hidden part (system descriptors
    /// in long mode carry 32 more base bits, passed as `base_hi`).
    pub fn from_descriptor(selector: u16, desc: u64, base_hi: u32) -> Self {
        let limit_raw = (desc & 0xffff) as u32 | (((desc >> 48) & 0xf) as u32) << 16;
        let base = ((desc >> 16) & 0xff_ffff) | ((desc >> 56) & 0xff) << 24;
        let access = ((desc >> 40) & 0xff) as u16;
        let flags = ((desc >> 52) & 0xf) as u16;
        let attr = access | flags << 8;
        let limit = if attr & seg_attr::G != 0 { (limit_raw << 12) | 0xfff } else { limit_raw };
        let system = attr & seg_attr::S == 0;
        let base = if system { base | (base_hi as u64) << 32 } else { base };
        Segment { selector, base, limit, attr }
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Model-specific registers that the CPU itself owns (everything else is
/// routed by the MSR policy in `crate::msr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Msrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub pat: u64,
    pub tsc_aux: u64,
    pub misc_enable: u64,
    pub tsc_adjust: u64,
    pub spec_ctrl: u64,
}

/// Power-on PAT value (Intel SDM vol. 3, 11.12.4).
pub const PAT_POWER_ON: u64 = 0x0007_0406_0007_0406;

/// x87, MMX and SSE state in FXSAVE terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FpuState {
    pub fcw: u16,
    pub fsw: u16,
    /// Abridged tag word as FXSAVE stores it (bit i set = ST(i) physical
    /// register i is valid).
    pub ftw: u8,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    /// The eight 80-bit registers (R0..R7, physical order), low 10 bytes used.
    pub st: [[u8; 16]; 8],
    pub xmm: [u128; 16],
    pub mxcsr: u32,
}

impl Default for FpuState {
    fn default() -> Self {
        // FNINIT / power-on values.
        FpuState { fcw: 0x037f, fsw: 0, ftw: 0, fop: 0, fip: 0, fdp: 0, st: [[0; 16]; 8], xmm: [0; 16], mxcsr: 0x1f80 }
    }
}

/// An exception that has been raised but not yet delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PendingException {
    pub vector: u8,
    pub error_code: Option<u32>,
}

/// Events in flight at an instruction boundary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Events {
    /// STI or MOV SS/POP SS shadow: interrupts blocked for one instruction.
    pub interrupt_shadow: bool,
    pub nmi_pending: bool,
    /// NMIs blocked until the next IRET.
    pub nmi_masked: bool,
    pub exception: Option<PendingException>,
    /// External interrupt accepted by the CPU but not yet delivered.
    pub interrupt: Option<u8>,
    /// Halted by HLT, waiting for an interrupt.
    pub halted: bool,
}

/// The full architectural state of one vCPU.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArchState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS (see `sreg`).
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    /// DR0-DR3, DR6, DR7.
    pub dr: [u64; 6],
    pub msrs: Msrs,
    pub fpu: FpuState,
    pub events: Events,
    pub tsc: u64,
}

/// The operating mode that determines instruction and hypercall conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuMode {
    Real,
    Virtual8086,
    Protected16,
    Protected32,
    Compat16,
    Compat32,
    Long64,
}

impl ArchState {
    /// The state at RESET (Intel SDM vol. 3, table 9-1): real mode at
    /// F000:FFF0 with CS base 0xFFFF0000.
    pub fn reset() -> Self {
        let mut s = ArchState { rflags: rflags::FIXED1, cr0: cr0::ET | cr0::CD | cr0::NW, ..Default::default() };
        for (i, seg) in s.seg.iter_mut().enumerate() {
            *seg = Segment::real_mode(0, i == sreg::CS);
        }
        s.seg[sreg::CS].selector = 0xf000;
        s.seg[sreg::CS].base = 0xffff_0000;
        s.rip = 0xfff0;
        s.gdtr.limit = 0xffff;
        s.idtr.limit = 0xffff;
        s.ldtr = Segment { attr: 0x2 | seg_attr::P, limit: 0xffff, ..Default::default() };
        s.tr = Segment { attr: 0xb | seg_attr::P, limit: 0xffff, ..Default::default() };
        s.dr[4] = 0xffff_0ff0;
        s.dr[5] = 0x400;
        s.msrs.pat = PAT_POWER_ON;
        s.xcr0 = 1;
        s.gpr[gpr::RDX] = 0x600; // family/model/stepping signature
        s
    }

    /// The PVH entry state (Xen's docs/misc/pvh.pandoc): 32-bit protected
    /// mode, paging off, flat 4 GiB CS/DS/ES/SS, EBX = start_info.
    pub fn pvh_entry(entry: u64, start_info: u64) -> Self {
        let mut s = ArchState::reset();
        s.cr0 = cr0::PE | cr0::ET;
        s.cr4 = 0;
        s.rip = entry;
        s.rflags = rflags::FIXED1;
        s.gpr = [0; 16];
        s.gpr[gpr::RBX] = start_info;
        for (i, seg) in s.seg.iter_mut().enumerate() {
            *seg = Segment::flat32(if i == sreg::CS { 0x8 } else { 0x10 }, i == sreg::CS);
        }
        s.tr = Segment { selector: 0x18, base: 0, limit: 0x67, attr: 0xb | seg_attr::P };
        s.ldtr = Segment { attr: 0x2, ..Default::default() };
        s
    }

    pub fn cpl(&self) -> u8 {
        if self.cr0 & cr0::PE == 0 {
            0
        } else if self.rflags & rflags::VM != 0 {
            3
        } else {
            (self.seg[sreg::CS].selector & 3) as u8
        }
    }

    pub fn mode(&self) -> CpuMode {
        let cs = &self.seg[sreg::CS];
        if self.cr0 & cr0::PE == 0 {
            CpuMode::Real
        } else if self.efer & efer::LMA != 0 {
            if cs.long() {
                CpuMode::Long64
            } else if cs.default_big() {
                CpuMode::Compat32
            } else {
                CpuMode::Compat16
            }
        } else if self.rflags & rflags::VM != 0 {
            CpuMode::Virtual8086
        } else if cs.default_big() {
            CpuMode::Protected32
        } else {
            CpuMode::Protected16
        }
    }

    /// The translation-relevant registers.
    pub fn paging(&self) -> crate::paging::PagingMode {
        crate::paging::PagingMode::from_regs(self.cr0, self.cr3, self.cr4, self.efer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_decoding_matches_the_sdm_layout() {
        // Flat 4 GiB ring-0 code, 64-bit: 0x00af9a000000ffff (Linux's __KERNEL_CS).
        let s = Segment::from_descriptor(0x10, 0x00af_9a00_0000_ffff, 0);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xffff_ffff);
        assert!(s.is_code() && s.long() && s.present());
        assert_eq!(s.dpl(), 0);
        // Ring-3 data with base 0x12345678, byte-granular limit 0xabcde.
        let d: u64 = 0x120a_f234_5678_bcde;
        let s = Segment::from_descriptor(0x2b, d, 0);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
        assert_eq!(s.dpl(), 3);
        assert!(!s.is_code());
    }

    #[test]
    fn modes() {
        assert_eq!(ArchState::reset().mode(), CpuMode::Real);
        let s = ArchState::pvh_entry(0x100000, 0x5000);
        assert_eq!(s.mode(), CpuMode::Protected32);
        assert_eq!(s.cpl(), 0);
        assert_eq!(s.gpr[gpr::RBX], 0x5000);
    }
}
