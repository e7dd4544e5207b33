//! Operand facts derived once per decoded instruction, so the hot handlers
//! read plain fields instead of re-deriving register numbers, sizes and
//! effective-address shapes from iced's `Instruction` on every execution.

use iced_x86::{Instruction, OpKind, Register};

use crate::operands::{mask, sreg_index};

/// "No register" in `base`/`index`.
pub const NO_REG: u8 = 16;
/// RIP-relative base (`disp` is then relative to the next RIP).
pub const RIP_REG: u8 = 17;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pre {
    /// Instruction length in bytes.
    pub len: u8,
    /// GPR numbers of register operands 0 and 1 (valid only where the
    /// handler was chosen for a register form; see `gpr`).
    pub r0: u8,
    pub r1: u8,
    /// Memory operand: base and index GPR numbers (or NO_REG/RIP_REG),
    /// index scale as a shift, segment index.
    pub base: u8,
    pub index: u8,
    pub scale: u8,
    pub seg: u8,
    /// Immediate of the last immediate operand (sign-extended as iced does),
    /// or the signed displacement of a near branch from the next RIP.
    pub imm: u64,
    /// Memory displacement (relative to the next RIP for RIP-relative).
    pub disp: u64,
    /// Effective-address mask for the address size; for near branches the
    /// mask of the branch's operand size.
    pub amask: u64,
}

/// A register's GPR number and size when it is a whole or low-byte GPR
/// (AH..BH, which live in bits 8..15, give None).
pub fn gpr(r: Register) -> Option<(u8, usize)> {
    let n = r as usize;
    let (idx, size) = match n {
        1..=4 => (n - 1, 1),
        9..=20 => (n - 5, 1),
        21..=36 => (n - 21, 2),
        37..=52 => (n - 37, 4),
        53..=68 => (n - 53, 8),
        _ => return None,
    };
    Some((idx as u8, size))
}

fn addr_reg(r: Register) -> (u8, usize) {
    let n = r as usize;
    match n {
        21..=36 => ((n - 21) as u8, 2),
        37..=52 => ((n - 37) as u8, 4),
        53..=68 => ((n - 53) as u8, 8),
        69 => (RIP_REG, 4),
        70 => (RIP_REG, 8),
        _ => (NO_REG, 0),
    }
}

fn is_imm(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

impl Pre {
    /// Facts for `ins` decoded at `bitness` (16, 32 or 64).
    pub fn new(ins: &Instruction, bitness: u32) -> Pre {
        let reg = |i: u32| {
            if i < ins.op_count() && ins.op_kind(i) == OpKind::Register {
                gpr(ins.op_register(i)).map_or(NO_REG, |g| g.0)
            } else {
                NO_REG
            }
        };
        let mut p = Pre { len: ins.len() as u8, r0: reg(0), r1: reg(1), ..Pre::default() };
        if let Some(i) = (0..ins.op_count()).rev().find(|&i| is_imm(ins.op_kind(i))) {
            p.imm = ins.immediate(i);
        }
        let has_mem = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
        if has_mem {
            let (base, bsz) = addr_reg(ins.memory_base());
            let (index, isz) = addr_reg(ins.memory_index());
            let mut asz = bsz | isz;
            if asz == 0 {
                asz = match ins.memory_displ_size() {
                    d @ (2 | 4 | 8) => d as usize,
                    _ => (bitness / 8) as usize,
                };
            }
            p.base = base;
            p.index = index;
            p.scale = ins.memory_index_scale().trailing_zeros() as u8;
            p.seg = sreg_index(ins.memory_segment()) as u8;
            p.amask = mask(asz);
            p.disp = ins.memory_displacement64();
            if base == RIP_REG {
                // iced resolved the target against the decode IP.
                p.disp = p.disp.wrapping_sub(ins.next_ip());
            }
        } else {
            p.base = NO_REG;
            p.index = NO_REG;
        }
        let nip = ins.next_ip();
        match ins.op_kind(0) {
            OpKind::NearBranch16 => {
                p.imm = ins.near_branch16().wrapping_sub(nip as u16) as i16 as u64;
                p.amask = 0xffff;
            }
            OpKind::NearBranch32 => {
                p.imm = ins.near_branch32().wrapping_sub(nip as u32) as i32 as u64;
                p.amask = 0xffff_ffff;
            }
            OpKind::NearBranch64 => {
                p.imm = ins.near_branch64().wrapping_sub(nip);
                p.amask = u64::MAX;
            }
            _ => {}
        }
        p
    }
}
