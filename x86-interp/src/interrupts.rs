//! Event delivery through the IVT/IDT (SDM vol. 3, chapter 6): real mode,
//! protected mode with interrupt/trap gates and TSS stack switches, long
//! mode with 64-bit gates, IST and stack alignment; the double-fault rule
//! and triple fault; IRET and far RET to the same or an outer privilege.
//! Task gates, task switches and virtual-8086 mode are not modelled (#GP).

use sim_core::memory::GuestMemory;
use sim_core::state::{efer, gpr, rflags, seg_attr, sreg, Segment};

use crate::fault::{class, exc_code, gp, gp0, vector, Class, R};
use crate::interp::Interpreter;
use crate::segments::{desc_attr, sel_err};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An external interrupt or NMI.
    External,
    /// An exception raised by the CPU.
    Exception,
    /// INT n, INT3, INTO: gate DPL is checked against CPL.
    Software,
}

/// A stack being built before it is committed.
pub(crate) struct Stack {
    pub seg: Segment,
    pub sp: u64,
    pub mask: u64,
    pub long: bool,
    pub user: bool,
}

/// RFLAGS bits any IRET/POPF may change (IF, IOPL, VM, VIF, VIP are
/// privilege-dependent).
pub const FLAGS_COMMON: u64 = rflags::CF
    | rflags::PF
    | rflags::AF
    | rflags::ZF
    | rflags::SF
    | rflags::TF
    | rflags::DF
    | rflags::OF
    | rflags::NT
    | rflags::RF
    | rflags::AC
    | rflags::ID;

impl Interpreter {
    pub(crate) fn push_on(&mut self, m: &GuestMemory, st: &mut Stack, v: u64, size: usize) -> R<()> {
        st.sp = st.sp.wrapping_sub(size as u64) & st.mask;
        let la = if st.long {
            if ((st.sp as i64) << 16 >> 16) as u64 != st.sp {
                return Err(exc_code(vector::SS, 0));
            }
            st.sp
        } else {
            if st.sp.wrapping_add(size as u64 - 1) > st.seg.limit as u64 {
                return Err(exc_code(vector::SS, sel_err(st.seg.selector)));
            }
            st.seg.base.wrapping_add(st.sp) & 0xffff_ffff
        };
        self.write_la(m, la, size, v, st.user)
    }

    /// Deliver an exception from the run loop, applying the double-fault
    /// rule; a fault while delivering #DF shuts the CPU down.
    pub(crate) fn raise(&mut self, m: &GuestMemory, vec: u8, code: Option<u32>) {
        // The exception frame saves RFLAGS.
        self.materialise_flags();
        let mut cur = (vec, code);
        loop {
            let rip = self.s.rip;
            match self.deliver(m, cur.0, cur.1, Source::Exception, rip) {
                Ok(()) => return,
                Err(e) if e.fault().is_some() => {
                    let (v2, c2) = e.fault().unwrap_or((0, None));
                    if cur.0 == vector::DF {
                        self.shutdown = true;
                        return;
                    }
                    let (a, b) = (class(cur.0), class(v2));
                    let double = (a == Class::Contributory && b == Class::Contributory)
                        || (a == Class::PageFault && b != Class::Benign);
                    cur = if double { (vector::DF, Some(0)) } else { (v2, c2) };
                }
                Err(_) => {
                    // The handler's stack or IDT is in MMIO: not modelled.
                    tracing::warn!("x86-interp: event delivery touched MMIO; shutting down");
                    self.exit = None;
                    self.shutdown = true;
                    return;
                }
            }
        }
    }

    /// Deliver `vec` with return address `ret_rip`. Commits nothing unless it
    /// succeeds.
    pub(crate) fn deliver(&mut self, m: &GuestMemory, vec: u8, code: Option<u32>, src: Source, ret_rip: u64) -> R<()> {
        if self.s.cr0 & sim_core::state::cr0::PE == 0 {
            self.deliver_real(m, vec, ret_rip)?;
        } else if self.s.rflags & rflags::VM != 0 {
            return Err(gp0());
        } else if self.s.efer & efer::LMA != 0 {
            self.deliver_long(m, vec, code, src, ret_rip)?;
        } else {
            self.deliver_prot(m, vec, code, src, ret_rip)?;
        }
        self.s.events.interrupt_shadow = false;
        self.next_rip = self.s.rip;
        Ok(())
    }

    fn deliver_real(&mut self, m: &GuestMemory, vec: u8, ret_rip: u64) -> R<()> {
        let off = vec as u64 * 4;
        if off + 3 > self.s.idtr.limit as u64 {
            return Err(gp0());
        }
        let ent = self.read_la(m, self.s.idtr.base.wrapping_add(off) & 0xffff_ffff, 4, false)?;
        let mut st = Stack {
            seg: self.s.seg[sreg::SS],
            sp: self.s.gpr[gpr::RSP] & 0xffff,
            mask: 0xffff,
            long: false,
            user: false,
        };
        let cs = self.s.seg[sreg::CS].selector as u64;
        self.push_on(m, &mut st, self.s.rflags & 0xffff, 2)?;
        self.push_on(m, &mut st, cs, 2)?;
        self.push_on(m, &mut st, ret_rip & 0xffff, 2)?;
        self.s.gpr[gpr::RSP] = (self.s.gpr[gpr::RSP] & !0xffff) | st.sp;
        self.s.rflags &= !(rflags::IF | rflags::TF | rflags::AC | rflags::RF);
        let sel = (ent >> 16) as u16;
        let d = &mut self.s.seg[sreg::CS];
        d.selector = sel;
        d.base = (sel as u64) << 4;
        self.s.rip = ent & 0xffff;
        self.refresh_mode();
        Ok(())
    }

    /// Read an IDT gate and check it; returns (gate, target selector, code descriptor, new CPL).
    fn idt_gate(&mut self, m: &GuestMemory, vec: u8, src: Source, long: bool) -> R<(u64, u64, u16, u64, u8)> {
        let ext = if src == Source::Software { 0 } else { 1 };
        let idt_err = (vec as u32) << 3 | 2 | ext;
        let size = if long { 16 } else { 8 };
        let off = vec as u64 * size;
        if off + size - 1 > self.s.idtr.limit as u64 {
            return Err(gp(idt_err));
        }
        let base = self.s.idtr.base.wrapping_add(off);
        let base = if long { base } else { base & 0xffff_ffff };
        let lo = self.read_la(m, base, 8, false)?;
        let hi = if long { self.read_la(m, base + 8, 8, false)? } else { 0 };
        let ty = ((lo >> 40) & 0x1f) as u8;
        let ok = if long { matches!(ty, 0xe | 0xf) } else { matches!(ty, 0x6 | 0x7 | 0xe | 0xf) };
        if !ok {
            // Task gates and anything else: not modelled or invalid.
            return Err(gp(idt_err));
        }
        let gate_dpl = ((lo >> 45) & 3) as u8;
        if src == Source::Software && gate_dpl < self.cpl {
            return Err(gp(idt_err));
        }
        if lo & (1 << 47) == 0 {
            return Err(exc_code(vector::NP, idt_err));
        }
        let sel = (lo >> 16) as u16;
        if sel & !3 == 0 {
            return Err(gp(ext));
        }
        let desc = self.read_desc(m, sel, vector::GP).map_err(|_| gp(sel_err(sel) | ext))?;
        let attr = desc_attr(desc);
        let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        if attr & seg_attr::S == 0 || attr & seg_attr::CODE == 0 || dpl > self.cpl {
            return Err(gp(sel_err(sel) | ext));
        }
        if long && (attr & seg_attr::L == 0 || attr & seg_attr::DB != 0) {
            return Err(gp(sel_err(sel) | ext));
        }
        if attr & seg_attr::P == 0 {
            return Err(exc_code(vector::NP, sel_err(sel) | ext));
        }
        let new_cpl = if attr & seg_attr::DC != 0 { self.cpl } else { dpl };
        Ok((lo, hi, sel, desc, new_cpl))
    }

    /// Read `size` bytes of the current TSS at `off` (checks the TSS limit).
    pub(crate) fn tss_read(&mut self, m: &GuestMemory, off: u64, size: usize) -> R<u64> {
        let tr = self.s.tr;
        if !tr.present() || off + size as u64 - 1 > tr.limit as u64 {
            return Err(exc_code(vector::TS, sel_err(tr.selector)));
        }
        let la = tr.base.wrapping_add(off);
        let la = if self.s.efer & efer::LMA != 0 { la } else { la & 0xffff_ffff };
        self.read_la(m, la, size, false)
    }

    fn deliver_prot(&mut self, m: &GuestMemory, vec: u8, code: Option<u32>, src: Source, ret_rip: u64) -> R<()> {
        let (gate, _, sel, desc, new_cpl) = self.idt_gate(m, vec, src, false)?;
        let ty = ((gate >> 40) & 0xf) as u8;
        let big = ty & 8 != 0;
        let size = if big { 4 } else { 2 };
        let target = if big { (gate & 0xffff) | ((gate >> 48) << 16) } else { gate & 0xffff };
        let old_ss = self.s.seg[sreg::SS];
        let old_sp = self.s.gpr[gpr::RSP];
        let mut st;
        let mut new_ss = None;
        if new_cpl < self.cpl {
            // Inner-privilege stack from the TSS (32-bit TSS: ESPn at 4+8n).
            let tss32 = self.s.tr.attr & 8 != 0;
            let (sp, ss) = if tss32 {
                (self.tss_read(m, 4 + new_cpl as u64 * 8, 4)?, self.tss_read(m, 8 + new_cpl as u64 * 8, 2)? as u16)
            } else {
                (self.tss_read(m, 2 + new_cpl as u64 * 4, 2)?, self.tss_read(m, 4 + new_cpl as u64 * 4, 2)? as u16)
            };
            let ssd = self.check_stack_seg(m, ss, new_cpl, vector::TS)?;
            let seg = Segment::from_descriptor(ss, ssd | 1 << 40, 0);
            let mask = if seg.default_big() { 0xffff_ffff } else { 0xffff };
            st = Stack { seg, sp: sp & mask, mask, long: false, user: new_cpl == 3 };
            self.push_on(m, &mut st, old_ss.selector as u64, size)?;
            self.push_on(m, &mut st, old_sp & mask_of(size), size)?;
            new_ss = Some((ss, ssd));
        } else {
            let mask = self.sp_mask();
            st = Stack { seg: old_ss, sp: old_sp & mask, mask, long: false, user: self.cpl == 3 };
        }
        let cs = self.s.seg[sreg::CS].selector as u64;
        self.push_on(m, &mut st, self.s.rflags & mask_of(size), size)?;
        self.push_on(m, &mut st, cs, size)?;
        self.push_on(m, &mut st, ret_rip & mask_of(size), size)?;
        if let Some(c) = code {
            self.push_on(m, &mut st, c as u64, size)?;
        }
        // Everything that can fault happens before the first commit.
        self.set_desc_accessed(m, sel, desc)?;
        let desc = desc | 1 << 40;
        if let Some((ss, ssd)) = new_ss {
            self.set_desc_accessed(m, ss, ssd)?;
            self.s.seg[sreg::SS] = Segment::from_descriptor(ss, ssd | 1 << 40, 0);
            self.s.gpr[gpr::RSP] = st.sp;
        } else {
            self.s.gpr[gpr::RSP] = (old_sp & !st.mask) | st.sp;
        }
        self.finish_gate(m, ty & 1 == 0, sel, desc, new_cpl, target)
    }

    fn finish_gate(&mut self, m: &GuestMemory, interrupt_gate: bool, sel: u16, desc: u64, cpl: u8, rip: u64) -> R<()> {
        self.s.rflags &= !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
        if interrupt_gate {
            self.s.rflags &= !rflags::IF;
        }
        self.set_cs(m, sel, desc, cpl)?;
        self.s.rip = rip;
        Ok(())
    }

    fn deliver_long(&mut self, m: &GuestMemory, vec: u8, code: Option<u32>, src: Source, ret_rip: u64) -> R<()> {
        let (lo, hi, sel, desc, new_cpl) = self.idt_gate(m, vec, src, true)?;
        let target = (lo & 0xffff) | ((lo >> 48) << 16) | ((hi & 0xffff_ffff) << 32);
        let ist = (lo >> 32) & 7;
        let old_ss = self.s.seg[sreg::SS];
        let old_sp = self.s.gpr[gpr::RSP];
        let sp = if ist != 0 {
            self.tss_read(m, 0x24 + (ist - 1) * 8, 8)?
        } else if new_cpl < self.cpl {
            self.tss_read(m, 4 + new_cpl as u64 * 8, 8)?
        } else {
            old_sp
        };
        let mut st = Stack { seg: old_ss, sp: sp & !0xf, mask: u64::MAX, long: true, user: new_cpl == 3 };
        let cs = self.s.seg[sreg::CS].selector as u64;
        self.push_on(m, &mut st, old_ss.selector as u64, 8)?;
        self.push_on(m, &mut st, old_sp, 8)?;
        self.push_on(m, &mut st, self.s.rflags, 8)?;
        self.push_on(m, &mut st, cs, 8)?;
        self.push_on(m, &mut st, ret_rip, 8)?;
        if let Some(c) = code {
            self.push_on(m, &mut st, c as u64, 8)?;
        }
        self.set_desc_accessed(m, sel, desc)?;
        let desc = desc | 1 << 40;
        if new_cpl < self.cpl {
            // SS becomes a null selector with RPL = new CPL.
            self.s.seg[sreg::SS] = Segment { selector: new_cpl as u16, base: 0, limit: 0, attr: (new_cpl as u16) << 5 };
        }
        self.s.gpr[gpr::RSP] = st.sp;
        self.finish_gate(m, lo & (1 << 40) == 0, sel, desc, new_cpl, target)
    }

    /// RFLAGS after IRET/POPF loads `v` (operand size `size`) at the current
    /// privilege (SDM IRET and POPF pseudocode).
    pub(crate) fn merge_flags(&self, v: u64, size: usize, allow_vm: bool) -> u64 {
        let iopl = ((self.s.rflags & rflags::IOPL) >> rflags::IOPL_SHIFT) as u8;
        let mut mask = FLAGS_COMMON;
        if self.cpl == 0 {
            mask |= rflags::IOPL | rflags::IF;
            if allow_vm {
                mask |= rflags::VIF | rflags::VIP | rflags::VM;
            }
        } else if self.cpl <= iopl {
            mask |= rflags::IF;
        }
        mask &= mask_of(size);
        (self.s.rflags & !mask) | (v & mask) | rflags::FIXED1
    }

    /// IRET/IRETD/IRETQ with operand size `size`.
    pub(crate) fn iret(&mut self, m: &GuestMemory, size: usize) -> R<()> {
        if self.s.cr0 & sim_core::state::cr0::PE == 0 {
            let ip = self.peek(m, 0, size)?;
            let cs = self.peek(m, size as u64, size)? as u16;
            let fl = self.peek(m, 2 * size as u64, size)?;
            if ip > self.s.seg[sreg::CS].limit as u64 {
                return Err(gp0());
            }
            self.s.gpr[gpr::RSP] = self.sp_after(3 * size as u64);
            let keep = rflags::VM | rflags::VIF | rflags::VIP;
            // SDM IRET, real-address mode: tempEFLAGS AND 257FD5H (the
            // reserved bits 3, 5, 15 and 22-63 never load; bit 1 reads 1).
            let fl = if size == 2 { (self.s.rflags & !0xffff) | (fl & 0x7fd5) } else { fl & 0x25_7fd5 };
            self.s.rflags = (fl & !keep) | (self.s.rflags & keep) | rflags::FIXED1;
            let d = &mut self.s.seg[sreg::CS];
            d.selector = cs;
            d.base = (cs as u64) << 4;
            self.next_rip = ip;
            self.s.events.nmi_masked = false;
            self.refresh_mode();
            return Ok(());
        }
        if self.s.rflags & (rflags::NT | rflags::VM) != 0 {
            // Task return and virtual-8086 mode are not modelled.
            return Err(gp0());
        }
        let long = self.s.efer & efer::LMA != 0;
        let sz = size as u64;
        let ip = self.peek(m, 0, size)?;
        let cs = self.peek(m, sz, size)? as u16;
        let fl = self.peek(m, 2 * sz, size)?;
        let rpl = (cs & 3) as u8;
        if cs & !3 == 0 || rpl < self.cpl {
            return Err(gp(sel_err(cs)));
        }
        let desc = self.read_desc(m, cs, vector::GP)?;
        let attr = desc_attr(desc);
        let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        let conforming = attr & seg_attr::DC != 0;
        if attr & seg_attr::S == 0
            || attr & seg_attr::CODE == 0
            || (conforming && dpl > rpl)
            || (!conforming && dpl != rpl)
        {
            return Err(gp(sel_err(cs)));
        }
        if attr & seg_attr::P == 0 {
            return Err(exc_code(vector::NP, sel_err(cs)));
        }
        let to_long = long && attr & seg_attr::L != 0;
        let outer = rpl > self.cpl;
        let pops_stack = outer || self.long64;
        let mut new_stack = None;
        if pops_stack {
            let sp = self.peek(m, 3 * sz, size)?;
            let ss = self.peek(m, 4 * sz, size)? as u16;
            let ss_desc = if ss & !3 == 0 && long && to_long && rpl < 3 {
                if (ss & 3) as u8 != rpl {
                    return Err(gp(0));
                }
                None
            } else {
                Some(self.check_stack_seg(m, ss, rpl, vector::GP)?)
            };
            new_stack = Some((sp, ss, ss_desc));
        }
        let rip_mask = if to_long {
            u64::MAX
        } else if attr & seg_attr::DB != 0 {
            0xffff_ffff
        } else {
            0xffff
        };
        let ip = ip & rip_mask;
        if to_long && ((ip as i64) << 16 >> 16) as u64 != ip {
            return Err(gp0());
        }
        let new_flags = self.merge_flags(fl, size, !long);
        // Commit (CS first: its accessed-bit write is the last thing that can fault).
        let popped = if pops_stack { 5 * sz } else { 3 * sz };
        let new_rsp = self.sp_after(popped);
        self.set_cs(m, cs, desc, rpl)?;
        self.s.gpr[gpr::RSP] = new_rsp;
        self.s.rflags = new_flags;
        self.refresh_mode();
        if let Some((sp, ss, ss_desc)) = new_stack {
            self.s.seg[sreg::SS] = match ss_desc {
                Some(d) => Segment::from_descriptor(ss, d | 1 << 40, 0),
                None => Segment { selector: ss, base: 0, limit: 0, attr: (rpl as u16) << 5 },
            };
            let mask = if self.long64 || size == 8 { u64::MAX } else { mask_of(size) };
            self.s.gpr[gpr::RSP] = if size == 8 { sp } else { (self.s.gpr[gpr::RSP] & !mask) | (sp & mask) };
        }
        if outer {
            self.null_inaccessible_segments();
        }
        self.next_rip = ip;
        self.s.events.nmi_masked = false;
        self.refresh_mode();
        Ok(())
    }

    /// Far RET (RETF [imm16]) with operand size `size`.
    pub(crate) fn far_ret(&mut self, m: &GuestMemory, size: usize, imm: u64) -> R<()> {
        let sz = size as u64;
        let ip = self.peek(m, 0, size)?;
        let cs = self.peek(m, sz, size)? as u16;
        if self.real {
            self.s.gpr[gpr::RSP] = self.sp_after(2 * sz + imm);
            let d = &mut self.s.seg[sreg::CS];
            d.selector = cs;
            d.base = (cs as u64) << 4;
            self.next_rip = ip & 0xffff_ffff;
            return Ok(());
        }
        let rpl = (cs & 3) as u8;
        if cs & !3 == 0 || rpl < self.cpl {
            return Err(gp(sel_err(cs)));
        }
        let desc = self.read_desc(m, cs, vector::GP)?;
        let attr = desc_attr(desc);
        let dpl = ((attr & seg_attr::DPL_MASK) >> seg_attr::DPL_SHIFT) as u8;
        let conforming = attr & seg_attr::DC != 0;
        if attr & seg_attr::S == 0
            || attr & seg_attr::CODE == 0
            || (conforming && dpl > rpl)
            || (!conforming && dpl != rpl)
        {
            return Err(gp(sel_err(cs)));
        }
        if attr & seg_attr::P == 0 {
            return Err(exc_code(vector::NP, sel_err(cs)));
        }
        let outer = rpl > self.cpl;
        let mut new_stack = None;
        if outer {
            let sp = self.peek(m, 2 * sz + imm, size)?;
            let ss = self.peek(m, 3 * sz + imm, size)? as u16;
            let d = self.check_stack_seg(m, ss, rpl, vector::GP)?;
            new_stack = Some((sp, ss, d));
        }
        let new_rsp = self.sp_after(2 * sz + imm);
        self.set_cs(m, cs, desc, rpl)?;
        self.s.gpr[gpr::RSP] = new_rsp;
        if let Some((sp, ss, d)) = new_stack {
            let seg = Segment::from_descriptor(ss, d | 1 << 40, 0);
            self.s.seg[sreg::SS] = seg;
            let mask = if self.long64 {
                u64::MAX
            } else if seg.default_big() {
                0xffff_ffff
            } else {
                0xffff
            };
            self.s.gpr[gpr::RSP] = (sp.wrapping_add(imm)) & mask;
            self.null_inaccessible_segments();
        }
        self.next_rip = if self.long64 { ip } else { ip & 0xffff_ffff };
        Ok(())
    }
}

pub fn mask_of(size: usize) -> u64 {
    crate::operands::mask(size)
}
