//! The x86 page walk (Intel SDM vol. 3, chapter 4): 2-level (with PSE and
//! PSE-36), PAE 3-level and 4-level paging, with accessed/dirty updates, NX,
//! WP and U/S checks. Shared by every backend so that hypercall arguments and
//! the interpreter translate the same way; the interpreter's TLB sits on top.

use crate::memory::GuestMemory;
use crate::state::{cr0, cr4, efer};

/// Physical-address width the CPUID table reports (leaf 0x80000008).
pub const MAX_PHYS_BITS: u32 = 40;
const PHYS_MASK: u64 = ((1u64 << MAX_PHYS_BITS) - 1) & !0xfff;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const XD: u64 = 1 << 63;

/// Page-fault error code bits.
pub mod pf {
    pub const PRESENT: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const USER: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const FETCH: u32 = 1 << 4;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PagingKind {
    /// CR0.PG clear: linear = physical.
    Off,
    /// 32-bit paging.
    TwoLevel,
    /// PAE paging (3 levels).
    Pae,
    /// 4-level paging (IA-32e).
    FourLevel,
}

/// The registers that determine translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PagingMode {
    pub kind: PagingKind,
    pub cr3: u64,
    pub wp: bool,
    pub nxe: bool,
    pub pse: bool,
    pub pge: bool,
}

impl PagingMode {
    pub fn from_regs(cr0v: u64, cr3: u64, cr4v: u64, eferv: u64) -> Self {
        let kind = if cr0v & cr0::PG == 0 || cr0v & cr0::PE == 0 {
            PagingKind::Off
        } else if cr4v & cr4::PAE == 0 {
            PagingKind::TwoLevel
        } else if eferv & efer::LMA != 0 {
            PagingKind::FourLevel
        } else {
            PagingKind::Pae
        };
        PagingMode {
            kind,
            cr3,
            wp: cr0v & cr0::WP != 0,
            nxe: eferv & efer::NXE != 0,
            pse: cr4v & cr4::PSE != 0,
            pge: cr4v & cr4::PGE != 0,
        }
    }
}

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    /// CPL 3 (a user-mode access).
    pub user: bool,
    pub fetch: bool,
}

impl Access {
    pub const READ: Access = Access { write: false, user: false, fetch: false };
    pub const WRITE: Access = Access { write: true, user: false, fetch: false };
    pub const FETCH: Access = Access { write: false, user: false, fetch: true };
}

/// A successful translation and the effective permissions of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    /// 4 KiB, 2 MiB, 4 MiB or 1 GiB.
    pub page_size: u64,
    pub writable: bool,
    pub user: bool,
    pub executable: bool,
    pub global: bool,
    /// The dirty bit is set in the final entry (always true when the walk
    /// was a write with `set_ad`).
    pub dirty: bool,
}

/// A #PF: the faulting linear address (for CR2) and the error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    pub addr: u64,
    pub error_code: u32,
}

/// Walk the page tables for `la`. With `set_ad`, accessed bits are set on
/// every entry used and the dirty bit on the final entry of a write, as the
/// CPU does; without it the walk leaves memory untouched (debug look-ups).
pub fn translate(
    mem: &GuestMemory,
    mode: &PagingMode,
    la: u64,
    access: Access,
    set_ad: bool,
) -> Result<Translation, PageFault> {
    let fault = |bits: u32| PageFault {
        addr: la,
        error_code: bits
            | if access.write { pf::WRITE } else { 0 }
            | if access.user { pf::USER } else { 0 }
            | if access.fetch && (mode.nxe || mode.kind == PagingKind::TwoLevel) { pf::FETCH } else { 0 },
    };
    // Entries that cannot be read (outside RAM) read as not present.
    let read = |gpa: u64, wide: bool| -> u64 {
        if wide {
            mem.read_u64(gpa).unwrap_or(0)
        } else {
            mem.read_u32(gpa).map(u64::from).unwrap_or(0)
        }
    };

    // (entry address, entry value, is 64-bit entry) of each level walked.
    let mut path: [(u64, u64, bool); 4] = [(0, 0, false); 4];
    let mut depth = 0usize;
    let (base, page_size, leaf);

    match mode.kind {
        PagingKind::Off => {
            return Ok(Translation {
                gpa: la,
                page_size: 4096,
                writable: true,
                user: true,
                executable: true,
                global: false,
                dirty: true,
            })
        }
        PagingKind::TwoLevel => {
            let la = la & 0xffff_ffff;
            let pde_addr = (mode.cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4;
            let pde = read(pde_addr, false);
            if pde & P == 0 {
                return Err(fault(0));
            }
            path[0] = (pde_addr, pde, false);
            depth = 1;
            if pde & PS != 0 && mode.pse {
                // PSE-36: PDE bits 20:13 are physical bits 39:32.
                if pde & (1 << 21) != 0 {
                    return Err(fault(pf::PRESENT | pf::RSVD));
                }
                let hi = ((pde >> 13) & 0xff) << 32;
                base = (pde & 0xffc0_0000) | hi;
                page_size = 4 << 20;
                leaf = pde;
            } else {
                let pte_addr = (pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4;
                let pte = read(pte_addr, false);
                if pte & P == 0 {
                    return Err(fault(0));
                }
                path[1] = (pte_addr, pte, false);
                depth = 2;
                base = pte & 0xffff_f000;
                page_size = 4096;
                leaf = pte;
            }
        }
        PagingKind::Pae | PagingKind::FourLevel => {
            let rsvd_nx = if mode.nxe { 0 } else { XD };
            let mut table;
            let mut level;
            if mode.kind == PagingKind::Pae {
                let la32 = la & 0xffff_ffff;
                let pdpte_addr = (mode.cr3 & 0xffff_ffe0) + ((la32 >> 30) & 3) * 8;
                let pdpte = read(pdpte_addr, true);
                if pdpte & P == 0 {
                    return Err(fault(0));
                }
                // PDPTEs have no R/W, U/S, A or NX bits (they are reserved).
                if pdpte & (0x1e6 | !((1u64 << MAX_PHYS_BITS) - 1)) != 0 {
                    return Err(fault(pf::PRESENT | pf::RSVD));
                }
                table = pdpte & PHYS_MASK;
                level = 2;
            } else {
                table = mode.cr3 & PHYS_MASK;
                level = 4;
            }
            let la_w = if mode.kind == PagingKind::Pae { la & 0xffff_ffff } else { la };
            loop {
                let idx = (la_w >> (12 + 9 * (level - 1))) & 0x1ff;
                let e_addr = table + idx * 8;
                let e = read(e_addr, true);
                if e & P == 0 {
                    return Err(fault(0));
                }
                let mut rsvd = (e & !XD & !((1u64 << MAX_PHYS_BITS) - 1) & 0x000f_ffff_ffff_ffff) | (e & rsvd_nx);
                if level == 4 && e & PS != 0 {
                    rsvd |= PS;
                }
                let large = (level == 2 || level == 3) && e & PS != 0;
                if large {
                    // Bits between 12 and the page offset must be zero (bit 12 is PAT).
                    let off_bits = if level == 3 { 30 } else { 21 };
                    rsvd |= e & (((1u64 << off_bits) - 1) & !0x1fff);
                }
                if rsvd != 0 {
                    return Err(fault(pf::PRESENT | pf::RSVD));
                }
                path[depth] = (e_addr, e, true);
                depth += 1;
                if large {
                    let size = 1u64 << (12 + 9 * (level - 1));
                    base = e & PHYS_MASK & !(size - 1);
                    page_size = size;
                    leaf = e;
                    break;
                }
                if level == 1 {
                    base = e & PHYS_MASK;
                    page_size = 4096;
                    leaf = e;
                    break;
                }
                table = e & PHYS_MASK;
                level -= 1;
            }
        }
    }

    let entries = &path[..depth];
    let writable = entries.iter().all(|e| e.1 & RW != 0);
    let user = entries.iter().all(|e| e.1 & US != 0);
    let executable = !(mode.nxe && entries.iter().any(|e| e.2 && e.1 & XD != 0));

    if access.user && !user {
        return Err(fault(pf::PRESENT));
    }
    if access.write && !writable && (access.user || mode.wp) {
        return Err(fault(pf::PRESENT));
    }
    if access.fetch && !executable {
        return Err(fault(pf::PRESENT));
    }

    let mut dirty = leaf & D != 0;
    if set_ad {
        let last = depth - 1;
        for (i, &(addr, e, wide)) in entries.iter().enumerate() {
            let mut new = e | A;
            if i == last && access.write {
                new |= D;
                dirty = true;
            }
            if new != e {
                let _ = if wide { mem.write_u64(addr, new) } else { mem.write_u32(addr, new as u32) };
            }
        }
    }

    Ok(Translation {
        gpa: base | (la & (page_size - 1)),
        page_size,
        writable,
        user,
        executable,
        global: mode.pge && leaf & G != 0,
        dirty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::new(8).unwrap()
    }

    fn long_mode(cr3: u64) -> PagingMode {
        PagingMode::from_regs(cr0::PE | cr0::PG | cr0::WP, cr3, cr4::PAE | cr4::PGE, efer::LME | efer::LMA | efer::NXE)
    }

    #[test]
    fn four_level_4k_page_and_ad_bits() {
        let m = mem();
        // PML4 @0x1000 -> PDPT @0x2000 -> PD @0x3000 -> PT @0x4000 -> page 0x7000.
        let la = 0x0000_7f12_3456_7abc_u64 & 0x0000_ffff_ffff_ffff;
        let (i4, i3, i2, i1) = ((la >> 39) & 511, (la >> 30) & 511, (la >> 21) & 511, (la >> 12) & 511);
        m.write_u64(0x1000 + i4 * 8, 0x2000 | P | RW | US).unwrap();
        m.write_u64(0x2000 + i3 * 8, 0x3000 | P | RW | US).unwrap();
        m.write_u64(0x3000 + i2 * 8, 0x4000 | P | RW | US).unwrap();
        m.write_u64(0x4000 + i1 * 8, 0x7000 | P | RW | G).unwrap();
        let t = translate(&m, &long_mode(0x1000), la, Access::WRITE, true).unwrap();
        assert_eq!(t.gpa, 0x7000 | (la & 0xfff));
        assert!(t.global && t.writable && !t.user && t.dirty);
        assert_eq!(m.read_u64(0x4000 + i1 * 8).unwrap(), 0x7000 | P | RW | G | A | D);
        assert_eq!(m.read_u64(0x1000 + i4 * 8).unwrap() & (A | D), A, "D is set only in the leaf");
        // A user access to the supervisor page faults with P|U.
        let e = translate(&m, &long_mode(0x1000), la, Access { user: true, ..Access::READ }, true).unwrap_err();
        assert_eq!(e, PageFault { addr: la, error_code: pf::PRESENT | pf::USER });
    }

    #[test]
    fn two_mib_page_nx_and_not_present() {
        let m = mem();
        m.write_u64(0x1000, 0x2000 | P | RW).unwrap();
        m.write_u64(0x2000, 0x3000 | P | RW).unwrap();
        m.write_u64(0x3000 + 8, 0x0020_0000 | P | PS | XD).unwrap();
        let mode = long_mode(0x1000);
        let t = translate(&m, &mode, 0x0020_1234, Access::READ, false).unwrap();
        assert_eq!((t.gpa, t.page_size, t.writable, t.executable), (0x20_1234, 2 << 20, false, false));
        let e = translate(&m, &mode, 0x0020_1234, Access::FETCH, false).unwrap_err();
        assert_eq!(e.error_code, pf::PRESENT | pf::FETCH);
        let e = translate(&m, &mode, 0x0020_1234, Access::WRITE, false).unwrap_err();
        assert_eq!(e.error_code, pf::PRESENT | pf::WRITE, "WP makes read-only apply to ring 0");
        let e = translate(&m, &mode, 0x0040_0000, Access::READ, false).unwrap_err();
        assert_eq!(e.error_code, 0);
        // XD without EFER.NXE is a reserved bit.
        let no_nx = PagingMode { nxe: false, ..mode };
        let e = translate(&m, &no_nx, 0x0020_1234, Access::READ, false).unwrap_err();
        assert_eq!(e.error_code, pf::PRESENT | pf::RSVD);
    }

    #[test]
    fn two_level_with_pse_36_and_wp_off() {
        let m = mem();
        // 4 MiB page at physical 0x1_0040_0000 (PSE-36 bit 13 = phys bit 32).
        m.write_u32(0x1000 + 4, (0x0040_0000 | (1 << 13) | P | PS) as u32).unwrap();
        m.write_u32(0x1000 + 8, (0x5000 | P | US) as u32).unwrap();
        m.write_u32(0x5000 + 3 * 4, (0x9000 | P | US) as u32).unwrap();
        let mode = PagingMode::from_regs(cr0::PE | cr0::PG, 0x1000, cr4::PSE, 0);
        assert_eq!(mode.kind, PagingKind::TwoLevel);
        let t = translate(&m, &mode, 0x0041_2345, Access::READ, false).unwrap();
        assert_eq!(t.gpa, 0x1_0041_2345);
        // Supervisor write to a read-only user page succeeds with WP clear.
        let t = translate(&m, &mode, 0x0080_3010, Access::WRITE, true).unwrap();
        assert_eq!(t.gpa, 0x9010);
        let e = translate(&m, &mode, 0x0080_3010, Access { write: true, user: true, fetch: false }, true).unwrap_err();
        assert_eq!(e.error_code, pf::PRESENT | pf::WRITE | pf::USER);
    }

    #[test]
    fn pae_three_level() {
        let m = mem();
        // CR3 -> PDPT at 0x1020 (32-byte aligned), entry 1 -> PD 0x2000 -> PT 0x3000.
        m.write_u64(0x1020 + 8, 0x2000 | P).unwrap();
        m.write_u64(0x2000 + 5 * 8, 0x3000 | P | RW).unwrap();
        m.write_u64(0x3000 + 7 * 8, 0xabc000 | P | RW).unwrap();
        let mode = PagingMode::from_regs(cr0::PE | cr0::PG, 0x1020, cr4::PAE, 0);
        assert_eq!(mode.kind, PagingKind::Pae);
        let la = (1u64 << 30) | (5 << 21) | (7 << 12) | 0x123;
        assert_eq!(translate(&m, &mode, la, Access::READ, false).unwrap().gpa, 0xabc123);
        // A PDPTE with R/W set has a reserved bit set.
        m.write_u64(0x1020 + 8, 0x2000 | P | RW).unwrap();
        assert_eq!(translate(&m, &mode, la, Access::READ, false).unwrap_err().error_code, pf::PRESENT | pf::RSVD);
    }

    #[test]
    fn paging_off_is_identity() {
        let m = mem();
        let mode = PagingMode::from_regs(cr0::PE, 0, 0, 0);
        assert_eq!(translate(&m, &mode, 0x12345, Access::WRITE, true).unwrap().gpa, 0x12345);
    }
}
