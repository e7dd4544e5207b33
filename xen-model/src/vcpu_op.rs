//! HYPERVISOR_vcpu_op (xen/include/public/vcpu.h, hvm/hvm_vcpu.h).

use sim_core::memory::Backing;
use sim_core::platform::{PlatformCtx, PlatformEffect, ShutdownReason, SliceEvent};
use sim_core::state::{efer, sreg, ArchState, Segment};

use crate::errno::{Errno, XenResult, EBUSY, EEXIST, EINVAL, ENOENT, ENOSYS, ENXIO, ETIME};
use crate::evtchn::Delivery;
use crate::hypercall::Args;
use crate::platform::{timer, XenPlatform};
use crate::shared_info::{VcpuInfoAt, VCPU_INFO_SIZE};
use crate::time::runstate;

pub mod op {
    pub const INITIALISE: u32 = 0;
    pub const UP: u32 = 1;
    pub const DOWN: u32 = 2;
    pub const IS_UP: u32 = 3;
    pub const GET_RUNSTATE_INFO: u32 = 4;
    pub const REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
    pub const SET_PERIODIC_TIMER: u32 = 6;
    pub const STOP_PERIODIC_TIMER: u32 = 7;
    pub const SET_SINGLESHOT_TIMER: u32 = 8;
    pub const STOP_SINGLESHOT_TIMER: u32 = 9;
    pub const REGISTER_VCPU_INFO: u32 = 10;
    pub const REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
}

/// VCPU_SSHOTTMR_future: fail with -ETIME if the deadline has passed.
pub const SSHOTTMR_FUTURE: u32 = 1;
/// Shortest periodic timer (1 ms) and the longest (STIME_DELTA_MAX,
/// `~0ull >> 2` in xen/include/xen/time.h).
pub const PERIODIC_MIN_NS: u64 = 1_000_000;
pub const PERIODIC_MAX_NS: u64 = (1 << 62) - 1;

/// VCPU_HVM_MODE_*.
pub const HVM_MODE_32B: u32 = 0;
pub const HVM_MODE_64B: u32 = 1;

impl XenPlatform {
    pub(crate) fn vcpu_op(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        let (cmd, target, arg) = (a.arg(0) as u32, a.arg(1) as u32, a.arg(2));
        if target >= self.nr_vcpus {
            return Err(Errno(ENOENT));
        }
        let t = target as usize;
        match cmd {
            op::INITIALISE => {
                if self.vi[t] == VcpuInfoAt::Nowhere {
                    return Err(Errno(EINVAL));
                }
                let mut ctxbuf = [0u8; 128];
                a.guest(ctx.mem).read(arg, &mut ctxbuf)?;
                if self.vcpus[t].initialised {
                    return Err(Errno(EEXIST));
                }
                let state = hvm_context_to_state(&ctxbuf)?;
                self.vcpus[t].initialised = true;
                self.pending_start.insert(target, Box::new(state));
                Ok(0)
            }
            op::UP => {
                let vx = &mut self.vcpus[t];
                if !vx.initialised {
                    return Err(Errno(EINVAL));
                }
                if !vx.up {
                    vx.up = true;
                    let state = self.pending_start.remove(&target).unwrap_or_else(|| Box::new(ArchState::reset()));
                    ctx.effects.push(PlatformEffect::StartVcpu { vcpu: target, state });
                    self.set_runstate(ctx.mem, target, runstate::RUNNING, ctx.now_ns);
                }
                Ok(0)
            }
            op::DOWN => {
                if !self.vcpus.iter().enumerate().any(|(i, v)| i != t && v.up) {
                    // The last vCPU going down takes the domain with it.
                    self.effect = PlatformEffect::Shutdown(ShutdownReason::Poweroff);
                    return Ok(0);
                }
                if self.vcpus[t].up {
                    self.vcpus[t].up = false;
                    self.vcpus[t].blocked = None;
                    for kind in [timer::SINGLESHOT, timer::PERIODIC, timer::POLL] {
                        ctx.timers.cancel(timer::key(kind, target));
                    }
                    self.set_runstate(ctx.mem, target, runstate::OFFLINE, ctx.now_ns);
                    ctx.effects.push(PlatformEffect::StopVcpu { vcpu: target });
                }
                Ok(0)
            }
            op::IS_UP => Ok(self.vcpus[t].up as i64),
            op::GET_RUNSTATE_INFO => {
                let mut r = self.vcpus[t].runstate;
                r.change(r.state, ctx.now_ns.max(r.entry_time));
                a.guest(ctx.mem).write(arg, &r.encode(a.compat, false))?;
                Ok(0)
            }
            op::REGISTER_RUNSTATE_MEMORY_AREA => {
                let gva = a.guest(ctx.mem).read_u64(arg)?;
                let gva = if a.compat { gva & 0xffff_ffff } else { gva };
                self.vcpus[t].runstate_area = Some((gva, a.paging));
                self.publish_runstate(ctx.mem, target);
                Ok(0)
            }
            op::REGISTER_VCPU_TIME_MEMORY_AREA => {
                let gva = a.guest(ctx.mem).read_u64(arg)?;
                let gva = if a.compat { gva & 0xffff_ffff } else { gva };
                self.vcpus[t].time_area = Some((gva, a.paging));
                self.update_time(ctx.mem, target, ctx.now_ns);
                Ok(0)
            }
            op::SET_PERIODIC_TIMER => {
                let period = a.guest(ctx.mem).read_u64(arg)?;
                if !(PERIODIC_MIN_NS..=PERIODIC_MAX_NS).contains(&period) {
                    return Err(Errno(EINVAL));
                }
                self.vcpus[t].periodic_ns = Some(period);
                self.periodic_work(ctx, target);
                Ok(0)
            }
            op::STOP_PERIODIC_TIMER => {
                // vcpu_set_periodic_timer(v, 0): the last event time stays.
                self.vcpus[t].periodic_ns = None;
                ctx.timers.cancel(timer::key(timer::PERIODIC, target));
                Ok(0)
            }
            op::SET_SINGLESHOT_TIMER => {
                if target != a.vcpu {
                    return Err(Errno(EINVAL));
                }
                let g = a.guest(ctx.mem);
                let (deadline, flags) = (g.read_u64(arg)?, g.read_u32(arg + 8)?);
                if flags & SSHOTTMR_FUTURE != 0 && deadline < ctx.now_ns {
                    return Err(Errno(ETIME));
                }
                ctx.timers.schedule(timer::key(timer::SINGLESHOT, target), deadline.max(ctx.now_ns));
                Ok(0)
            }
            op::STOP_SINGLESHOT_TIMER => {
                if target != a.vcpu {
                    return Err(Errno(EINVAL));
                }
                ctx.timers.cancel(timer::key(timer::SINGLESHOT, target));
                Ok(0)
            }
            op::REGISTER_VCPU_INFO => {
                let g = a.guest(ctx.mem);
                let (mfn, offset) = (g.read_u64(arg)?, g.read_u32(arg + 8)? as u64);
                self.register_vcpu_info(ctx, a.vcpu, target, mfn, offset)?;
                Ok(0)
            }
            _ => Err(Errno(ENOSYS)),
        }
    }

    /// Xen's periodic timer work (vcpu_periodic_timer_work_locked): send
    /// VIRQ_TIMER now if a period has passed since the last one, then arm
    /// the timer for the next period.
    fn periodic_work(&mut self, ctx: &mut PlatformCtx, v: u32) {
        let Some(vx) = self.vcpus.get(v as usize) else { return };
        let Some(period) = vx.periodic_ns else { return };
        let mut next = vx.periodic_last.saturating_add(period);
        if ctx.now_ns >= next {
            self.vcpus[v as usize].periodic_last = ctx.now_ns;
            next = ctx.now_ns.saturating_add(period);
            self.timer_vcpu_time(ctx, v);
        }
        ctx.timers.schedule(timer::key(timer::PERIODIC, v), next);
    }

    pub(crate) fn periodic_fired(&mut self, ctx: &mut PlatformCtx, v: u32) {
        self.periodic_work(ctx, v);
    }

    /// The machine took vCPU `v` offline (INIT) or started it (SIPI), as
    /// Xen's vlapic INIT/SIPI handling sets and clears _VPF_down.
    pub(crate) fn machine_set_online(&mut self, ctx: &mut PlatformCtx, v: u32, online: bool) {
        let Some(vx) = self.vcpus.get_mut(v as usize) else { return };
        if online {
            vx.up = true;
            vx.initialised = true;
            self.pending_start.remove(&v);
            self.set_runstate(ctx.mem, v, runstate::RUNNABLE, ctx.now_ns);
        } else if vx.up {
            vx.up = false;
            vx.blocked = None;
            for kind in [timer::SINGLESHOT, timer::PERIODIC, timer::POLL] {
                ctx.timers.cancel(timer::key(kind, v));
            }
            self.set_runstate(ctx.mem, v, runstate::OFFLINE, ctx.now_ns);
        }
    }

    /// Runstate accounting from the machine's round-robin: running during
    /// its slice, runnable while it waits for the next one, blocked in HLT.
    pub(crate) fn slice_event(&mut self, ctx: &mut PlatformCtx, v: u32, event: SliceEvent) {
        let Some(vx) = self.vcpus.get(v as usize) else { return };
        if !vx.up || vx.blocked.is_some() {
            return;
        }
        let state = match event {
            SliceEvent::Start => runstate::RUNNING,
            SliceEvent::Preempted => runstate::RUNNABLE,
            SliceEvent::Halted => runstate::BLOCKED,
        };
        self.set_runstate(ctx.mem, v, state, ctx.now_ns);
    }

    /// VCPUOP_register_vcpu_info: move vCPU `target`'s vcpu_info to guest
    /// frame `gfn` + `offset`, carrying its contents over, then mark every
    /// selector bit and the upcall pending so nothing is lost (the guest
    /// sees one spurious upcall). The checks and their errors follow the
    /// configured Xen version: map_vcpu_info up to 4.17, map_guest_area
    /// from 4.18.
    fn register_vcpu_info(
        &mut self,
        ctx: &mut PlatformCtx,
        caller: u32,
        target: u32,
        gfn: u64,
        offset: u64,
    ) -> XenResult<()> {
        let t = target as usize;
        // alignof(vcpu_info) follows xen_ulong_t: 8, or 4 with a 32-bit shared_info.
        let align = if self.shinfo.compat() { 4 } else { 8 };
        let registered = matches!(self.vi[t], VcpuInfoAt::Guest(_));
        if self.cfg.version >= (4, 18) {
            let gpa = gfn.checked_mul(4096).and_then(|b| b.checked_add(offset)).ok_or(Errno(EINVAL))?;
            if gpa == u64::MAX || gpa >> 12 != gfn {
                return Err(Errno(EINVAL));
            }
            if registered {
                return Err(Errno(EBUSY));
            }
            if offset % 4096 + VCPU_INFO_SIZE > 4096 || offset % align != 0 {
                return Err(Errno(ENXIO));
            }
        } else {
            if offset > 4096 - VCPU_INFO_SIZE || offset % align != 0 {
                return Err(Errno(ENXIO));
            }
            if registered || (caller != target && self.vcpus[t].up) {
                return Err(Errno(EINVAL));
            }
        }
        let gpa = gfn.checked_mul(4096).and_then(|b| b.checked_add(offset)).ok_or(Errno(EINVAL))?;
        if ctx.mem.backing(gpa) == Backing::Mmio || gfn >> 52 != 0 {
            return Err(Errno(EINVAL));
        }
        let mut old = [0u8; VCPU_INFO_SIZE as usize];
        self.shinfo.vi_read(ctx.mem, self.vi[t], 0, &mut old);
        let new = VcpuInfoAt::Guest(gpa);
        self.shinfo.vi_write(ctx.mem, new, 0, &old);
        self.vi[t] = new;
        self.shinfo.set_all_sel(ctx.mem, new);
        let dl = Delivery { shinfo: &self.shinfo, mem: ctx.mem, vcpu_info: &self.vi };
        self.evtchn.mark_upcall(&dl, target);
        self.update_time(ctx.mem, target, ctx.now_ns);
        Ok(())
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).unwrap_or(0)
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u32_at(b, off) as u64 | (u32_at(b, off + 4) as u64) << 32
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).unwrap_or(0)
}

/// struct vcpu_hvm_context -> the vCPU's starting state
/// (arch_set_info_hvm_guest). 64-bit mode gets flat segments; 32-bit mode
/// takes the segments from the context (attributes in VMX "ar" form, the
/// same packing as `Segment::attr`).
pub fn hvm_context_to_state(b: &[u8; 128]) -> XenResult<ArchState> {
    use sim_core::state::{cr0, cr4, seg_attr as sa};
    let mode = u32_at(b, 0);
    let r = &b[8..];
    let mut s = ArchState::reset();
    match mode {
        HVM_MODE_64B => {
            // rax rcx rdx rbx rsp rbp rsi rdi: the register file's order.
            for i in 0..8 {
                s.gpr[i] = u64_at(r, i * 8);
            }
            s.rip = u64_at(r, 64);
            s.rflags = u64_at(r, 72) | 2;
            s.cr0 = u64_at(r, 80);
            s.cr3 = u64_at(r, 88);
            s.cr4 = u64_at(r, 96);
            s.efer = u64_at(r, 104);
            if s.cr0 & (cr0::PE | cr0::PG) != cr0::PE | cr0::PG || s.cr4 & cr4::PAE == 0 || s.efer & efer::LME == 0 {
                return Err(Errno(EINVAL));
            }
            s.efer |= efer::LMA;
            let flat = |attr: u16| Segment { selector: 0, base: 0, limit: 0xffff_ffff, attr };
            s.seg[sreg::CS] = flat(0xa9b);
            for i in [sreg::DS, sreg::ES, sreg::SS] {
                s.seg[i] = flat(0xc93);
            }
            s.tr = Segment { selector: 0, base: 0, limit: 0x67, attr: 0x8b };
        }
        HVM_MODE_32B => {
            for i in 0..8 {
                s.gpr[i] = u32_at(r, i * 4) as u64;
            }
            s.rip = u32_at(r, 32) as u64;
            s.rflags = u32_at(r, 36) as u64 | 2;
            s.cr0 = u32_at(r, 40) as u64;
            s.cr3 = u32_at(r, 44) as u64;
            s.cr4 = u32_at(r, 48) as u64;
            s.efer = u64_at(r, 56);
            if s.cr0 & cr0::PE == 0 || s.efer & efer::LME != 0 {
                return Err(Errno(EINVAL));
            }
            let seg = |i: usize| Segment {
                selector: 0,
                base: u32_at(r, 64 + i * 4) as u64,
                limit: u32_at(r, 84 + i * 4),
                attr: u16_at(r, 104 + i * 2) & 0xfff,
            };
            // Context order: cs, ds, ss, es, tr.
            let (cs, ds, ss, es, mut tr) = (seg(0), seg(1), seg(2), seg(3), seg(4));
            let ok_cs = cs.attr & (sa::P | sa::S | sa::CODE) == sa::P | sa::S | sa::CODE;
            let ok_ss = ss.attr & (sa::P | sa::S | sa::CODE | sa::RW) == sa::P | sa::S | sa::RW;
            let ok_data = |d: &Segment| d.attr == 0 || d.attr & (sa::P | sa::S) == sa::P | sa::S;
            if !ok_cs || !ok_ss || !ok_data(&ds) || !ok_data(&es) {
                return Err(Errno(EINVAL));
            }
            if tr.attr == 0 {
                tr = Segment { selector: 0, base: 0, limit: 0x67, attr: 0x8b };
            } else if tr.attr & (sa::P | sa::S) != sa::P {
                return Err(Errno(EINVAL));
            }
            s.seg[sreg::CS] = cs;
            s.seg[sreg::DS] = ds;
            s.seg[sreg::SS] = ss;
            s.seg[sreg::ES] = es;
            s.tr = tr;
        }
        _ => return Err(Errno(EINVAL)),
    }
    Ok(s)
}
