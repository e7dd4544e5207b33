//! System instructions: control/debug registers, descriptor-table
//! registers, MSRs, CPUID, TSC, port I/O, HLT, CLI/STI, SYSCALL/SYSRET,
//! SYSENTER/SYSEXIT, SWAPGS, LAR/LSL/VERR/VERW, VMCALL/VMMCALL.
//! Debug registers are stored but breakpoints are not raised.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};
use sim_core::memory::GuestMemory;
use sim_core::msr::{self, MsrOwner};
use sim_core::state::{cr0, cr4, efer, gpr, rflags, seg_attr, sreg, Segment};
use sim_core::VcpuExit;

use crate::fault::{gp0, ud, R};
use crate::interp::Interpreter;
use crate::operands::mask;
use crate::segments::desc_attr;

const CR4_ALLOWED: u64 = cr4::VME
    | cr4::PVI
    | cr4::TSD
    | cr4::DE
    | cr4::PSE
    | cr4::PAE
    | cr4::MCE
    | cr4::PGE
    | cr4::PCE
    | cr4::OSFXSR
    | cr4::OSXMMEXCPT;
const EFER_ALLOWED: u64 = efer::SCE | efer::LME | efer::LMA | efer::NXE;

impl Interpreter {
    fn need_cpl0(&self) -> R<()> {
        if self.cpl != 0 {
            Err(gp0())
        } else {
            Ok(())
        }
    }

    /// Port access permission: CPL <= IOPL in protected mode (no TSS bitmap).
    pub(crate) fn io_allowed(&self) -> R<()> {
        let iopl = ((self.s.rflags & rflags::IOPL) >> rflags::IOPL_SHIFT) as u8;
        if !self.real && self.cpl > iopl {
            return Err(gp0());
        }
        if self.s.rflags & rflags::VM != 0 && iopl < 3 {
            return Err(gp0());
        }
        Ok(())
    }

    pub(crate) fn read_cr(&self, r: Register) -> R<u64> {
        self.need_cpl0()?;
        Ok(match r {
            Register::CR0 => self.s.cr0,
            Register::CR2 => self.s.cr2,
            Register::CR3 => self.s.cr3,
            Register::CR4 => self.s.cr4,
            Register::CR8 => self.s.cr8,
            _ => return Err(ud()),
        })
    }

    pub(crate) fn write_cr(&mut self, r: Register, v: u64) -> R<()> {
        self.need_cpl0()?;
        match r {
            Register::CR0 => self.set_cr0(v),
            Register::CR2 => {
                self.s.cr2 = v;
                Ok(())
            }
            Register::CR3 => {
                self.s.cr3 = v;
                self.flush_tlb_non_global();
                Ok(())
            }
            Register::CR4 => {
                if v & !CR4_ALLOWED != 0 || (self.s.efer & efer::LMA != 0 && v & cr4::PAE == 0) {
                    return Err(gp0());
                }
                let changed = self.s.cr4 ^ v;
                self.s.cr4 = v;
                if changed & (cr4::PGE | cr4::PAE | cr4::PSE) != 0 {
                    self.flush_tlb();
                }
                Ok(())
            }
            Register::CR8 => {
                if v & !0xf != 0 {
                    return Err(gp0());
                }
                self.s.cr8 = v;
                Ok(())
            }
            _ => Err(ud()),
        }
    }

    fn set_cr0(&mut self, v: u64) -> R<()> {
        let v = v | cr0::ET;
        if v >> 32 != 0 || (v & cr0::PG != 0 && v & cr0::PE == 0) || (v & cr0::NW != 0 && v & cr0::CD == 0) {
            return Err(gp0());
        }
        let old = self.s.cr0;
        let mut new_efer = self.s.efer;
        if v & cr0::PG != 0 && old & cr0::PG == 0 && self.s.efer & efer::LME != 0 {
            if self.s.cr4 & cr4::PAE == 0 {
                return Err(gp0());
            }
            new_efer |= efer::LMA;
        }
        if v & cr0::PG == 0 && old & cr0::PG != 0 && self.s.efer & efer::LMA != 0 {
            if self.long64 {
                return Err(gp0());
            }
            new_efer &= !efer::LMA;
        }
        self.s.cr0 = v;
        self.s.efer = new_efer;
        if (old ^ v) & (cr0::PG | cr0::PE | cr0::WP) != 0 {
            self.flush_tlb();
        }
        self.refresh_mode();
        Ok(())
    }

    pub(crate) fn read_dr(&self, r: Register) -> R<u64> {
        self.need_cpl0()?;
        let n = r as usize - Register::DR0 as usize;
        let idx = self.dr_index(n)?;
        Ok(self.s.dr[idx])
    }

    pub(crate) fn write_dr(&mut self, r: Register, v: u64) -> R<()> {
        self.need_cpl0()?;
        let n = r as usize - Register::DR0 as usize;
        let idx = self.dr_index(n)?;
        if idx >= 4 && v >> 32 != 0 {
            return Err(gp0());
        }
        self.s.dr[idx] = match idx {
            4 => v | 0xffff_0ff0,
            5 => (v | 0x400) & !0x1000,
            _ => v,
        };
        Ok(())
    }

    /// DR4/DR5 alias DR6/DR7 unless CR4.DE is set.
    fn dr_index(&self, n: usize) -> R<usize> {
        match n {
            0..=3 => Ok(n),
            4 | 5 if self.s.cr4 & cr4::DE != 0 => Err(ud()),
            4 | 6 => Ok(4),
            5 | 7 => Ok(5),
            _ => Err(ud()),
        }
    }

    fn write_efer(&mut self, v: u64) -> R<()> {
        if v & !EFER_ALLOWED != 0 {
            return Err(gp0());
        }
        let paging = self.s.cr0 & cr0::PG != 0;
        if paging && (v ^ self.s.efer) & efer::LME != 0 {
            return Err(gp0());
        }
        let v = (v & !efer::LMA) | (self.s.efer & efer::LMA);
        if v != self.s.efer {
            self.s.efer = v;
            self.flush_tlb();
            self.refresh_mode();
        }
        Ok(())
    }

    fn rdmsr_cpu(&self, idx: u32) -> R<u64> {
        let s = &self.s;
        Ok(match idx {
            msr::IA32_TSC => sim_core::Vcpu::tsc(self),
            msr::IA32_SPEC_CTRL => s.msrs.spec_ctrl,
            msr::IA32_TSC_ADJUST => s.msrs.tsc_adjust,
            msr::IA32_MTRRCAP => 0,
            msr::IA32_SYSENTER_CS => s.msrs.sysenter_cs,
            msr::IA32_SYSENTER_ESP => s.msrs.sysenter_esp,
            msr::IA32_SYSENTER_EIP => s.msrs.sysenter_eip,
            msr::IA32_MISC_ENABLE => s.msrs.misc_enable,
            msr::IA32_PAT => s.msrs.pat,
            msr::IA32_MTRR_DEF_TYPE => 0,
            msr::IA32_EFER => s.efer,
            msr::IA32_STAR => s.msrs.star,
            msr::IA32_LSTAR => s.msrs.lstar,
            msr::IA32_CSTAR => s.msrs.cstar,
            msr::IA32_FMASK => s.msrs.sfmask,
            msr::IA32_FS_BASE => s.seg[sreg::FS].base,
            msr::IA32_GS_BASE => s.seg[sreg::GS].base,
            msr::IA32_KERNEL_GS_BASE => s.msrs.kernel_gs_base,
            msr::IA32_TSC_AUX => s.msrs.tsc_aux,
            _ => return Err(gp0()),
        })
    }

    fn wrmsr_cpu(&mut self, idx: u32, v: u64) -> R<()> {
        let canon = ((v as i64) << 16 >> 16) as u64 == v;
        let s = &mut self.s;
        match idx {
            msr::IA32_TSC => sim_core::Vcpu::set_tsc(self, v),
            msr::IA32_SPEC_CTRL => s.msrs.spec_ctrl = v,
            msr::IA32_TSC_ADJUST => s.msrs.tsc_adjust = v,
            msr::IA32_SYSENTER_CS => s.msrs.sysenter_cs = v & 0xffff,
            msr::IA32_SYSENTER_ESP
            | msr::IA32_SYSENTER_EIP
            | msr::IA32_LSTAR
            | msr::IA32_CSTAR
            | msr::IA32_FS_BASE
            | msr::IA32_GS_BASE
            | msr::IA32_KERNEL_GS_BASE
                if !canon =>
            {
                return Err(gp0())
            }
            msr::IA32_SYSENTER_ESP => s.msrs.sysenter_esp = v,
            msr::IA32_SYSENTER_EIP => s.msrs.sysenter_eip = v,
            msr::IA32_MISC_ENABLE => s.msrs.misc_enable = v,
            msr::IA32_PAT => {
                // Each byte must be a valid memory type (0,1,4,5,6,7).
                if (0..8).any(|i| matches!((v >> (i * 8)) & 0xff, 2 | 3 | 8..=255)) {
                    return Err(gp0());
                }
                s.msrs.pat = v;
            }
            msr::IA32_EFER => return self.write_efer(v),
            msr::IA32_STAR => s.msrs.star = v,
            msr::IA32_LSTAR => s.msrs.lstar = v,
            msr::IA32_CSTAR => s.msrs.cstar = v,
            msr::IA32_FMASK => s.msrs.sfmask = v & 0xffff_ffff,
            msr::IA32_FS_BASE => s.seg[sreg::FS].base = v,
            msr::IA32_GS_BASE => s.seg[sreg::GS].base = v,
            msr::IA32_KERNEL_GS_BASE => s.msrs.kernel_gs_base = v,
            msr::IA32_TSC_AUX => s.msrs.tsc_aux = v & 0xffff_ffff,
            // MTRRCAP is read-only; MTRR_DEF_TYPE is accepted as 0 only.
            msr::IA32_MTRR_DEF_TYPE if v == 0 => {}
            _ => return Err(gp0()),
        }
        Ok(())
    }

    fn set_edx_eax(&mut self, v: u64) {
        self.s.gpr[gpr::RAX] = v & 0xffff_ffff;
        self.s.gpr[gpr::RDX] = v >> 32;
    }

    pub(crate) fn exec_system(&mut self, m: &GuestMemory, ins: &Instruction) -> Option<R<()>> {
        use Mnemonic as M;
        Some(match ins.mnemonic() {
            M::Cli | M::Sti => self.cli_sti(ins.mnemonic() == M::Sti),
            M::Hlt => self.need_cpl0().map(|_| {
                self.s.events.halted = true;
                self.exit = Some(VcpuExit::Halt);
            }),
            M::In => self.port_in(ins),
            M::Out => self.port_out(ins),
            M::Cpuid => {
                let (a, c) = (self.s.gpr[gpr::RAX] as u32, self.s.gpr[gpr::RCX] as u32);
                let r = self.cpuid.lookup(self.id, self.vcpu_count, a, c);
                self.s.gpr[gpr::RAX] = r.eax as u64;
                self.s.gpr[gpr::RBX] = r.ebx as u64;
                self.s.gpr[gpr::RCX] = r.ecx as u64;
                self.s.gpr[gpr::RDX] = r.edx as u64;
                Ok(())
            }
            M::Rdtsc | M::Rdtscp => {
                if self.s.cr4 & cr4::TSD != 0 && self.cpl != 0 {
                    return Some(Err(gp0()));
                }
                let t = sim_core::Vcpu::tsc(self);
                self.set_edx_eax(t);
                if ins.mnemonic() == M::Rdtscp {
                    self.s.gpr[gpr::RCX] = self.s.msrs.tsc_aux & 0xffff_ffff;
                }
                Ok(())
            }
            M::Rdmsr => self.rdmsr(),
            M::Wrmsr => self.wrmsr(),
            M::Lgdt | M::Lidt => self.load_dtr(m, ins),
            M::Sgdt | M::Sidt => self.store_dtr(m, ins),
            M::Lldt => self.lldt(m, ins),
            M::Ltr => self.ltr(m, ins),
            M::Sldt | M::Str => {
                if self.real {
                    return Some(Err(ud()));
                }
                let sel = if ins.mnemonic() == M::Sldt { self.s.ldtr.selector } else { self.s.tr.selector };
                let size = self.op_size(ins, 0);
                self.wr(m, ins, 0, size, sel as u64)
            }
            M::Smsw => {
                let size = self.op_size(ins, 0);
                let v = self.s.cr0 & mask(size.min(4));
                self.wr(m, ins, 0, size, v)
            }
            M::Lmsw => self.need_cpl0().and_then(|_| {
                let v = self.rd(m, ins, 0, 2)?;
                // PE can be set but not cleared; MP, EM, TS are loaded.
                let new = (self.s.cr0 & !0xe) | (v & 0xf) | (self.s.cr0 & cr0::PE);
                self.set_cr0(new)
            }),
            M::Clts => self.need_cpl0().map(|_| self.s.cr0 &= !cr0::TS),
            M::Invlpg => self.need_cpl0().map(|_| {
                let (s, o) = self.ea(ins);
                let la = if self.long64 && s < sreg::FS { o } else { self.s.seg[s].base.wrapping_add(o) };
                self.flush_tlb_page(la);
            }),
            M::Swapgs => {
                if !self.long64 {
                    return Some(Err(ud()));
                }
                self.need_cpl0().map(|_| {
                    std::mem::swap(&mut self.s.seg[sreg::GS].base, &mut self.s.msrs.kernel_gs_base);
                })
            }
            M::Syscall => self.syscall(),
            M::Sysret | M::Sysretq => self.sysret(ins.code() == Code::Sysretq),
            M::Sysenter => self.sysenter(),
            M::Sysexit | M::Sysexitq => self.sysexit(ins.code() == Code::Sysexitq),
            M::Lar | M::Lsl | M::Verr | M::Verw => self.lar_lsl(m, ins),
            M::Vmcall | M::Vmmcall => {
                self.vmcall();
                Ok(())
            }
            M::Arpl => Err(ud()),
            _ => return None,
        })
    }

    /// A hypercall exit, unless a KVM replay says this site was not one.
    fn vmcall(&mut self) {
        use crate::kvm_calls::{kvm_answer, KvmAnswer};
        if self.hypercall_sites.as_ref().is_some_and(|s| !s.contains(&self.rip_la())) {
            if let KvmAnswer::Rax(v) = kvm_answer(self.s.gpr[gpr::RAX], self.cpl, self.long64) {
                self.s.gpr[gpr::RAX] = v;
                return;
            }
        }
        self.exit = Some(VcpuExit::Hypercall);
    }

    fn cli_sti(&mut self, sti: bool) -> R<()> {
        let iopl = ((self.s.rflags & rflags::IOPL) >> rflags::IOPL_SHIFT) as u8;
        if !self.real && self.cpl > iopl {
            return Err(gp0());
        }
        if sti {
            if self.s.rflags & rflags::IF == 0 {
                self.s.events.interrupt_shadow = true;
            }
            self.s.rflags |= rflags::IF;
        } else {
            self.s.rflags &= !rflags::IF;
        }
        Ok(())
    }

    fn port_in(&mut self, ins: &Instruction) -> R<()> {
        self.io_allowed()?;
        let r = ins.op_register(0);
        let size = r.size();
        let port =
            if ins.op_kind(1) == OpKind::Register { self.s.gpr[gpr::RDX] as u16 } else { ins.immediate8() as u16 };
        let v = self.exit_read(VcpuExit::IoIn { port, size: size as u8 }, size)?;
        self.set_reg(r, v);
        Ok(())
    }

    fn port_out(&mut self, ins: &Instruction) -> R<()> {
        self.io_allowed()?;
        let r = ins.op_register(1);
        let size = r.size();
        let port =
            if ins.op_kind(0) == OpKind::Register { self.s.gpr[gpr::RDX] as u16 } else { ins.immediate8() as u16 };
        let data = self.reg(r) as u32;
        if size == 1 && self.hypercall_port == Some(port) {
            // Retires like VMCALL; the machine then handles the hypercall.
            self.exit = Some(VcpuExit::Hypercall);
            return Ok(());
        }
        self.exit_write(VcpuExit::IoOut { port, size: size as u8, data })
    }

    fn rdmsr(&mut self) -> R<()> {
        self.need_cpl0()?;
        let idx = self.s.gpr[gpr::RCX] as u32;
        let v = match msr::owner(idx) {
            MsrOwner::Cpu => self.rdmsr_cpu(idx)?,
            MsrOwner::Machine => self.exit_read(VcpuExit::MsrRead { msr: idx }, 8)?,
        };
        self.set_edx_eax(v);
        Ok(())
    }

    fn wrmsr(&mut self) -> R<()> {
        self.need_cpl0()?;
        let idx = self.s.gpr[gpr::RCX] as u32;
        let v = (self.s.gpr[gpr::RDX] << 32) | (self.s.gpr[gpr::RAX] & 0xffff_ffff);
        match msr::owner(idx) {
            MsrOwner::Cpu => self.wrmsr_cpu(idx, v),
            MsrOwner::Machine => self.exit_write(VcpuExit::MsrWrite { msr: idx, value: v }),
        }
    }

    fn load_dtr(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        self.need_cpl0()?;
        let (s, o) = self.ea(ins);
        let am = mask(self.ea_size(ins));
        let limit = self.rd_mem(m, s, o, 2)? as u16;
        let base = if self.long64 {
            self.rd_mem(m, s, o.wrapping_add(2) & am, 8)?
        } else {
            let b = self.rd_mem(m, s, o.wrapping_add(2) & am, 4)?;
            // A 16-bit operand size loads 24 bits of base.
            if ins.code() == Code::Lgdt_m1632_16 || ins.code() == Code::Lidt_m1632_16 {
                b & 0xff_ffff
            } else {
                b
            }
        };
        let t = if ins.mnemonic() == Mnemonic::Lgdt { &mut self.s.gdtr } else { &mut self.s.idtr };
        t.base = base;
        t.limit = limit;
        Ok(())
    }

    fn store_dtr(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        let t = if ins.mnemonic() == Mnemonic::Sgdt { self.s.gdtr } else { self.s.idtr };
        let (s, o) = self.ea(ins);
        let am = mask(self.ea_size(ins));
        let bsize = if self.long64 { 8 } else { 4 };
        let la = self.lin(s, o, 2 + bsize, true)?;
        self.probe_write(m, la, 2 + bsize, self.cpl == 3)?;
        self.wr_mem(m, s, o, 2, t.limit as u64)?;
        self.wr_mem(m, s, o.wrapping_add(2) & am, bsize, t.base & mask(bsize))
    }

    fn lldt(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        if self.real {
            return Err(ud());
        }
        self.need_cpl0()?;
        let sel = self.rd(m, ins, 0, 2)? as u16;
        if sel & !3 == 0 {
            self.s.ldtr = Segment { selector: sel, base: 0, limit: 0, attr: 0 };
            return Ok(());
        }
        if sel & 4 != 0 {
            return Err(crate::fault::gp(crate::segments::sel_err(sel)));
        }
        let desc = self.read_desc(m, sel, crate::fault::vector::GP)?;
        let attr = desc_attr(desc);
        if attr & 0x1f != 2 {
            return Err(crate::fault::gp(crate::segments::sel_err(sel)));
        }
        if attr & seg_attr::P == 0 {
            return Err(crate::fault::exc_code(crate::fault::vector::NP, crate::segments::sel_err(sel)));
        }
        let hi = if self.s.efer & efer::LMA != 0 { self.read_desc_hi(m, sel)? as u32 } else { 0 };
        self.s.ldtr = Segment::from_descriptor(sel, desc, hi);
        Ok(())
    }

    fn ltr(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        if self.real {
            return Err(ud());
        }
        self.need_cpl0()?;
        let sel = self.rd(m, ins, 0, 2)? as u16;
        let err = crate::fault::gp(crate::segments::sel_err(sel));
        if sel & !3 == 0 || sel & 4 != 0 {
            return Err(if sel & !3 == 0 { gp0() } else { err });
        }
        let desc = self.read_desc(m, sel, crate::fault::vector::GP)?;
        let attr = desc_attr(desc);
        let long = self.s.efer & efer::LMA != 0;
        let ty = attr & 0x1f;
        if !(ty == 9 || (!long && ty == 1)) {
            return Err(err);
        }
        if attr & seg_attr::P == 0 {
            return Err(crate::fault::exc_code(crate::fault::vector::NP, crate::segments::sel_err(sel)));
        }
        let hi = if long { self.read_desc_hi(m, sel)? as u32 } else { 0 };
        // Mark the descriptor busy.
        let busy = desc | (2 << 40);
        let la = self.s.gdtr.base.wrapping_add((sel & !7) as u64);
        self.write_la(m, la, 8, busy, false)?;
        self.s.tr = Segment::from_descriptor(sel, busy, hi);
        Ok(())
    }

    fn flat_seg(sel: u16, code: bool, long: bool, dpl: u16) -> Segment {
        let ty =
            if code { seg_attr::CODE | seg_attr::RW | seg_attr::ACCESSED } else { seg_attr::RW | seg_attr::ACCESSED };
        let size = if code && long { seg_attr::L } else { seg_attr::DB };
        Segment {
            selector: sel,
            base: 0,
            limit: 0xffff_ffff,
            attr: ty | seg_attr::S | seg_attr::P | seg_attr::G | size | (dpl << seg_attr::DPL_SHIFT),
        }
    }

    fn syscall(&mut self) -> R<()> {
        if self.s.efer & efer::SCE == 0 || self.s.efer & efer::LMA == 0 {
            // Legacy-mode SYSCALL (AMD only) is not modelled.
            return Err(ud());
        }
        let star = self.s.msrs.star;
        let cs = ((star >> 32) & 0xfffc) as u16;
        let target = if self.long64 { self.s.msrs.lstar } else { self.s.msrs.cstar };
        self.s.gpr[gpr::RCX] = self.next_rip;
        self.s.gpr[gpr::R11] = self.s.rflags & !rflags::RF;
        self.s.rflags = (self.s.rflags & !(self.s.msrs.sfmask | rflags::RF)) | rflags::FIXED1;
        self.s.seg[sreg::CS] = Self::flat_seg(cs, true, true, 0);
        self.s.seg[sreg::SS] = Self::flat_seg(cs.wrapping_add(8), false, true, 0);
        self.refresh_mode();
        self.next_rip = target;
        Ok(())
    }

    fn sysret(&mut self, q: bool) -> R<()> {
        if self.s.efer & efer::SCE == 0 {
            return Err(ud());
        }
        if !self.long64 || self.cpl != 0 {
            return Err(if self.long64 { gp0() } else { ud() });
        }
        let base = ((self.s.msrs.star >> 48) & 0xffff) as u16;
        let rcx = self.s.gpr[gpr::RCX];
        if q && ((rcx as i64) << 16 >> 16) as u64 != rcx {
            return Err(gp0());
        }
        let (cs, rip) = if q { (base.wrapping_add(16) | 3, rcx) } else { (base | 3, rcx & 0xffff_ffff) };
        self.s.rflags = (self.s.gpr[gpr::R11] & 0x3c_7fd7) | rflags::FIXED1;
        self.s.seg[sreg::CS] = Self::flat_seg(cs, true, q, 3);
        // SS keeps the flat hidden part with the new selector and DPL 3.
        self.s.seg[sreg::SS] = Self::flat_seg(base.wrapping_add(8) | 3, false, false, 3);
        self.refresh_mode();
        self.next_rip = rip;
        Ok(())
    }

    fn sysenter(&mut self) -> R<()> {
        let cs = (self.s.msrs.sysenter_cs & 0xfffc) as u16;
        if self.real || cs == 0 {
            return Err(gp0());
        }
        let long = self.s.efer & efer::LMA != 0;
        self.s.rflags &= !(rflags::VM | rflags::IF | rflags::RF);
        self.s.seg[sreg::CS] = Self::flat_seg(cs, true, long, 0);
        self.s.seg[sreg::SS] = Self::flat_seg(cs.wrapping_add(8), false, long, 0);
        let (esp, eip) = (self.s.msrs.sysenter_esp, self.s.msrs.sysenter_eip);
        self.s.gpr[gpr::RSP] = if long { esp } else { esp & 0xffff_ffff };
        self.refresh_mode();
        self.next_rip = if long { eip } else { eip & 0xffff_ffff };
        Ok(())
    }

    fn sysexit(&mut self, q: bool) -> R<()> {
        let base = (self.s.msrs.sysenter_cs & 0xfffc) as u16;
        if self.real || base == 0 || self.cpl != 0 {
            return Err(gp0());
        }
        let (cs, ss) = if q {
            (base.wrapping_add(32) | 3, base.wrapping_add(40) | 3)
        } else {
            (base.wrapping_add(16) | 3, base.wrapping_add(24) | 3)
        };
        let (rip, rsp) = (self.s.gpr[gpr::RDX], self.s.gpr[gpr::RCX]);
        if q && (((rip as i64) << 16 >> 16) as u64 != rip || ((rsp as i64) << 16 >> 16) as u64 != rsp) {
            return Err(gp0());
        }
        self.s.seg[sreg::CS] = Self::flat_seg(cs, true, q, 3);
        self.s.seg[sreg::SS] = Self::flat_seg(ss, false, false, 3);
        self.s.gpr[gpr::RSP] = if q { rsp } else { rsp & 0xffff_ffff };
        self.refresh_mode();
        self.next_rip = if q { rip } else { rip & 0xffff_ffff };
        Ok(())
    }

    /// LAR, LSL, VERR, VERW: ZF tells whether the selector passes.
    fn lar_lsl(&mut self, m: &GuestMemory, ins: &Instruction) -> R<()> {
        use Mnemonic as M;
        if self.real {
            return Err(ud());
        }
        let mn = ins.mnemonic();
        let src = if matches!(mn, M::Verr | M::Verw) { 0 } else { 1 };
        let sel = self.rd(m, ins, src, 2)? as u16;
        let long = self.s.efer & efer::LMA != 0;
        let desc = if sel & !3 == 0 { None } else { self.read_desc(m, sel, crate::fault::vector::GP).ok() };
        let ok = desc.map(|d| {
            let attr = desc_attr(d);
            let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
            let rpl = (sel & 3) as u8;
            let code = attr & seg_attr::S != 0 && attr & seg_attr::CODE != 0;
            let conforming = code && attr & seg_attr::DC != 0;
            let priv_ok = conforming || (dpl >= self.cpl && dpl >= rpl);
            let ty = attr & 0xf;
            let type_ok = if attr & seg_attr::S != 0 {
                match mn {
                    M::Verr => !code || attr & seg_attr::RW != 0,
                    M::Verw => !code && attr & seg_attr::RW != 0,
                    _ => true,
                }
            } else {
                match mn {
                    M::Lsl if long => matches!(ty, 2 | 9 | 0xb),
                    M::Lsl => matches!(ty, 1 | 2 | 3 | 9 | 0xb),
                    M::Lar if long => matches!(ty, 2 | 9 | 0xb | 0xc),
                    M::Lar => matches!(ty, 1..=5 | 9 | 0xb | 0xc),
                    _ => false,
                }
            };
            (type_ok && priv_ok, d)
        });
        match ok {
            Some((true, d)) => {
                self.s.rflags |= rflags::ZF;
                match mn {
                    M::Lar => {
                        let r = ins.op_register(0);
                        let v = (d >> 32) & if r.size() == 2 { 0xff00 } else { 0x00ff_ff00 };
                        self.set_reg(r, v);
                    }
                    M::Lsl => {
                        let r = ins.op_register(0);
                        let v = Segment::from_descriptor(sel, d, 0).limit as u64;
                        self.set_reg(r, v & mask(r.size()));
                    }
                    _ => {}
                }
            }
            _ => self.s.rflags &= !rflags::ZF,
        }
        Ok(())
    }
}
