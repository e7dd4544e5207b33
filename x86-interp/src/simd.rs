//! Glue for SSE/SSE2 (semantics in `sse`), MXCSR, FXSAVE/FXRSTOR and the
//! x87 control instructions that kernels use (FNINIT, FNSTCW, FLDCW,
//! FNSTSW, FNCLEX, FWAIT). Other x87 arithmetic raises #UD (logged once).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use sim_core::memory::GuestMemory;
use sim_core::state::{cr0, cr4, FpuState};

use crate::fault::{exc, gp0, ud, vector, R};
use crate::interp::Interpreter;
use crate::sse::{self, SimdError};

/// MXCSR bits that may be set (SSE2 with DAZ).
const MXCSR_MASK: u32 = sse::mxcsr::MASK;

impl Interpreter {
    /// #UD without OSFXSR or with EM; #NM with TS.
    fn sse_usable(&self) -> R<()> {
        if self.s.cr0 & cr0::EM != 0 || self.s.cr4 & cr4::OSFXSR == 0 {
            return Err(ud());
        }
        if self.s.cr0 & cr0::TS != 0 {
            return Err(exc(vector::NM));
        }
        Ok(())
    }

    /// x87 instructions: #NM with EM or TS.
    fn x87_usable(&self) -> R<()> {
        if self.s.cr0 & (cr0::EM | cr0::TS) != 0 {
            return Err(exc(vector::NM));
        }
        Ok(())
    }

    pub(crate) fn exec_simd(&mut self, m: &GuestMemory, ins: &Instruction) -> Option<R<()>> {
        use Mnemonic as M;
        let r = match ins.mnemonic() {
            M::Ldmxcsr => self.sse_usable().and_then(|_| {
                let (s, o) = self.ea(ins);
                let v = self.rd_mem(m, s, o, 4)? as u32;
                if v & !MXCSR_MASK != 0 {
                    return Err(gp0());
                }
                self.s.fpu.mxcsr = v;
                Ok(())
            }),
            M::Stmxcsr => self.sse_usable().and_then(|_| {
                let (s, o) = self.ea(ins);
                self.wr_mem(m, s, o, 4, self.s.fpu.mxcsr as u64)
            }),
            M::Fxsave | M::Fxsave64 => self.fxsave(m, ins),
            M::Fxrstor | M::Fxrstor64 => self.fxrstor(m, ins),
            M::Fninit => self.x87_usable().map(|_| {
                let f = &mut self.s.fpu;
                let d = FpuState::default();
                f.fcw = d.fcw;
                f.fsw = 0;
                f.ftw = 0;
                f.fop = 0;
                f.fip = 0;
                f.fdp = 0;
            }),
            M::Fnstcw => self.x87_usable().and_then(|_| {
                let (s, o) = self.ea(ins);
                self.wr_mem(m, s, o, 2, self.s.fpu.fcw as u64)
            }),
            M::Fldcw => self.x87_usable().and_then(|_| {
                let (s, o) = self.ea(ins);
                self.s.fpu.fcw = self.rd_mem(m, s, o, 2)? as u16;
                Ok(())
            }),
            M::Fnstsw => self.x87_usable().and_then(|_| {
                let v = self.s.fpu.fsw as u64;
                if ins.op_kind(0) == OpKind::Register {
                    self.set_reg(Register::AX, v);
                    Ok(())
                } else {
                    let (s, o) = self.ea(ins);
                    self.wr_mem(m, s, o, 2, v)
                }
            }),
            M::Fnclex => self.x87_usable().map(|_| self.s.fpu.fsw &= 0x7f00),
            M::Wait => {
                if self.s.cr0 & (cr0::TS | cr0::MP) == (cr0::TS | cr0::MP) {
                    Err(exc(vector::NM))
                } else {
                    Ok(())
                }
            }
            M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd => self.comis(m, ins),
            _ if sse::supports(ins.code()) => self.sse_exec(m, ins),
            _ => return None,
        };
        Some(r)
    }

    fn simd_reg(&self, r: Register) -> u128 {
        if r.is_xmm() {
            self.s.fpu.xmm[r.number() & 15]
        } else if r.is_mm() {
            let st = &self.s.fpu.st[r.number() & 7];
            u64::from_le_bytes([st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]]) as u128
        } else {
            self.reg(r) as u128
        }
    }

    fn set_simd_reg(&mut self, r: Register, v: u128) {
        if r.is_xmm() {
            self.s.fpu.xmm[r.number() & 15] = v;
        } else if r.is_mm() {
            // MMX writes set the exponent field to all ones and tag all valid.
            let st = &mut self.s.fpu.st[r.number() & 7];
            st[..8].copy_from_slice(&(v as u64).to_le_bytes());
            st[8] = 0xff;
            st[9] = 0xff;
            self.s.fpu.ftw = 0xff;
            self.s.fpu.fsw &= !0x3800;
        } else {
            self.set_reg(r, v as u64);
        }
    }

    fn sse_mem_la(&mut self, ins: &Instruction, size: usize, write: bool) -> R<(usize, u64)> {
        let (s, o) = self.ea(ins);
        let la = self.lin(s, o, size.max(1), write)?;
        if sse::needs_alignment(ins.code()) && la & 15 != 0 {
            return Err(gp0());
        }
        Ok((s, o))
    }

    fn read_u128(&mut self, m: &GuestMemory, s: usize, o: u64, size: usize) -> R<u128> {
        let la = self.lin(s, o, size.max(1), false)?;
        let mut b = [0u8; 16];
        let n = size.min(16);
        self.read_bytes(m, la, &mut b[..n], self.cpl == 3)?;
        Ok(u128::from_le_bytes(b))
    }

    fn sse_exec(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        self.sse_usable()?;
        let code = ins.code();
        let msize = ins.memory_size().size();
        let mut imm = 0u8;
        for i in 0..ins.op_count() {
            if matches!(ins.op_kind(i), OpKind::Immediate8 | OpKind::Immediate8_2nd) {
                imm = ins.immediate(i) as u8;
            }
        }
        let dst_kind = ins.op_kind(0);
        let dst = match dst_kind {
            OpKind::Register => self.simd_reg(ins.op_register(0)),
            _ => {
                // SSE/SSE2 memory destinations are stores of exactly the
                // operand size: the old contents are never merged, so they
                // are not read (no spurious MMIO read).
                self.sse_mem_la(ins, msize, true)?;
                0
            }
        };
        let src = if ins.op_count() >= 2 {
            match ins.op_kind(1) {
                OpKind::Register => self.simd_reg(ins.op_register(1)),
                OpKind::Memory => {
                    let (s, o) = self.sse_mem_la(ins, msize, false)?;
                    self.read_u128(m, s, o, msize)?
                }
                _ => 0,
            }
        } else {
            0
        };
        let mut mxcsr = self.s.fpu.mxcsr;
        let src_is_mem = ins.op_count() >= 2 && ins.op_kind(1) == OpKind::Memory;
        let r = match sse::exec_src(code, dst, src, src_is_mem, imm, &mut mxcsr) {
            Ok(r) => r,
            Err(e) => return Err(self.simd_error(e, mxcsr, ins)),
        };
        match dst_kind {
            OpKind::Register => self.set_simd_reg(ins.op_register(0), r),
            _ => {
                let (s, o) = self.ea(ins);
                let la = self.lin(s, o, msize.max(1), true)?;
                let bytes = r.to_le_bytes();
                self.write_bytes(m, la, &bytes[..msize.min(16)], self.cpl == 3)?;
            }
        }
        self.s.fpu.mxcsr = mxcsr;
        Ok(())
    }

    fn simd_error(&mut self, e: SimdError, mxcsr: u32, ins: &Instruction) -> crate::fault::Stop {
        match e {
            SimdError::Exception => {
                self.s.fpu.mxcsr = mxcsr;
                if self.s.cr4 & cr4::OSXMMEXCPT != 0 {
                    exc(vector::XM)
                } else {
                    ud()
                }
            }
            SimdError::Unsupported => {
                self.warn_once(ins);
                ud()
            }
        }
    }

    /// COMISS/UCOMISS/COMISD/UCOMISD: ZF, PF, CF from the compare; OF, SF, AF cleared.
    fn comis(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        self.sse_usable()?;
        let a = self.simd_reg(ins.op_register(0));
        let b = match ins.op_kind(1) {
            OpKind::Register => self.simd_reg(ins.op_register(1)),
            _ => {
                let size = ins.memory_size().size();
                let (s, o) = self.ea(ins);
                self.read_u128(m, s, o, size)?
            }
        };
        let mut mxcsr = self.s.fpu.mxcsr;
        let f = sse::comis(ins.code(), a, b, &mut mxcsr).map_err(|e| self.simd_error(e, mxcsr, ins))?;
        self.s.fpu.mxcsr = mxcsr;
        let all = sim_core::state::rflags::CF
            | sim_core::state::rflags::PF
            | sim_core::state::rflags::AF
            | sim_core::state::rflags::ZF
            | sim_core::state::rflags::SF
            | sim_core::state::rflags::OF;
        self.s.rflags = (self.s.rflags & !all) | (f & all);
        Ok(())
    }

    fn fxsave(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        self.x87_usable()?;
        let (s, o) = self.ea(ins);
        let la = self.lin(s, o, 512, true)?;
        if la & 15 != 0 {
            return Err(gp0());
        }
        let wide = ins.mnemonic() == Mnemonic::Fxsave64;
        let mut img = sse::fxsave(&self.s.fpu, wide);
        let mut len = sse::fxsave_len(wide);
        if self.long64 && !wide {
            // Without REX.W, 64-bit mode still saves XMM8-15 (32-bit FIP/FDP format).
            for i in 8..16 {
                img[160 + i * 16..176 + i * 16].copy_from_slice(&self.s.fpu.xmm[i].to_le_bytes());
            }
            len = sse::fxsave_len(true);
        }
        self.write_bytes(m, la, &img[..len], self.cpl == 3)
    }

    fn fxrstor(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        self.x87_usable()?;
        let (s, o) = self.ea(ins);
        let la = self.lin(s, o, 512, false)?;
        if la & 15 != 0 {
            return Err(gp0());
        }
        let mut img = [0u8; 512];
        self.read_bytes(m, la, &mut img, self.cpl == 3)?;
        let wide = ins.mnemonic() == Mnemonic::Fxrstor64;
        let mut st = sse::fxrstor(&img, wide).map_err(|_| gp0())?;
        if !self.long64 {
            // Outside 64-bit mode XMM8-15 do not exist and are left alone.
            st.xmm[8..].copy_from_slice(&self.s.fpu.xmm[8..]);
        } else if !wide {
            for i in 8..16 {
                let mut b = [0u8; 16];
                b.copy_from_slice(&img[160 + i * 16..176 + i * 16]);
                st.xmm[i] = u128::from_le_bytes(b);
            }
        }
        self.s.fpu = st;
        Ok(())
    }
}
