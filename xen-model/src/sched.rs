//! HYPERVISOR_sched_op and set_timer_op (xen/include/public/sched.h):
//! yield, block, poll, shutdown (incl. soft reset), single-shot timer.

use sim_core::platform::{PlatformCtx, PlatformEffect, ShutdownReason};

use crate::errno::{Errno, XenResult, EINVAL, ENOSYS};
use crate::hypercall::Args;
use crate::platform::{timer, Blocked, XenPlatform};
use crate::shared_info::vcpu_info;
use crate::time::runstate;

pub mod op {
    pub const YIELD: u32 = 0;
    pub const BLOCK: u32 = 1;
    pub const SHUTDOWN: u32 = 2;
    pub const POLL: u32 = 3;
    pub const SHUTDOWN_CODE: u32 = 5;
}

pub mod reason {
    pub const POWEROFF: u32 = 0;
    pub const REBOOT: u32 = 1;
    pub const SUSPEND: u32 = 2;
    pub const CRASH: u32 = 3;
    pub const WATCHDOG: u32 = 4;
    pub const SOFT_RESET: u32 = 5;
}

/// Most ports one SCHEDOP_poll may name.
pub const POLL_MAX_PORTS: u32 = 128;

impl XenPlatform {
    pub(crate) fn sched_op(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        let (cmd, arg, v) = (a.arg(0) as u32, a.arg(1), a.vcpu);
        match cmd {
            op::YIELD => {
                self.effect = PlatformEffect::Yield;
                Ok(0)
            }
            op::BLOCK => {
                // vcpu_block_enable_events: unmask, then block unless an
                // event is already waiting.
                let at = self.vi[v as usize];
                self.shinfo.vi_write(ctx.mem, at, vcpu_info::UPCALL_MASK, &[0]);
                let lapic = ctx.lapics.get(v as usize).is_some_and(|l| l.pending_interrupt().is_some());
                if !self.shinfo.upcall_pending(ctx.mem, at) && !lapic {
                    self.block(ctx, v, Blocked::Block);
                }
                Ok(0)
            }
            op::POLL => {
                let g = a.guest(ctx.mem);
                let (ports, nr, timeout) = if a.compat {
                    (g.read_u32(arg)? as u64, g.read_u32(arg + 4)?, g.read_u64(arg + 8)?)
                } else {
                    (g.read_u64(arg)?, g.read_u32(arg + 8)?, g.read_u64(arg + 16)?)
                };
                if nr > POLL_MAX_PORTS {
                    return Err(Errno(EINVAL));
                }
                let max = self.shinfo.word_bits() * self.shinfo.word_bits();
                let mut list = Vec::with_capacity(nr as usize);
                for i in 0..nr as u64 {
                    let port = g.read_u32(ports + i * 4)?;
                    if port >= max {
                        return Err(Errno(EINVAL));
                    }
                    if self.shinfo.port_pending(port) {
                        return Ok(0);
                    }
                    list.push(port);
                }
                if timeout != 0 {
                    ctx.timers.schedule(timer::key(timer::POLL, v), timeout);
                }
                self.block(ctx, v, Blocked::Poll { ports: list });
                Ok(0)
            }
            op::SHUTDOWN => {
                let r = a.guest(ctx.mem).read_u32(arg)?;
                let r = self.shutdown_code.unwrap_or(r);
                if r == reason::SOFT_RESET {
                    self.soft_reset(ctx);
                    return Ok(0);
                }
                self.effect = PlatformEffect::Shutdown(shutdown_reason(r));
                Ok(0)
            }
            op::SHUTDOWN_CODE => {
                self.shutdown_code = Some(a.guest(ctx.mem).read_u32(arg)?);
                Ok(0)
            }
            _ => Err(Errno(ENOSYS)),
        }
    }

    fn block(&mut self, ctx: &mut PlatformCtx, v: u32, how: Blocked) {
        self.vcpus[v as usize].blocked = Some(how);
        self.set_runstate(ctx.mem, v, runstate::BLOCKED, ctx.now_ns);
        self.effect = PlatformEffect::Block;
    }

    /// do_set_timer_op: arm (or with 0, stop) the single-shot timer at an
    /// absolute system time; a time in the past fires at once.
    pub(crate) fn set_timer_op(&mut self, ctx: &mut PlatformCtx, v: u32, timeout: u64) {
        let key = timer::key(timer::SINGLESHOT, v);
        if timeout == 0 {
            ctx.timers.cancel(key);
        } else {
            ctx.timers.schedule(key, timeout.max(ctx.now_ns));
        }
    }

    /// SCHEDOP_shutdown(soft_reset): the domain starts over in place: ports,
    /// callback, vCPU areas, timers, shared_info and grant frames all go;
    /// the toolstack's xenstore and console ports are offered again.
    pub(crate) fn soft_reset(&mut self, ctx: &mut PlatformCtx) {
        if let Some(g) = self.shinfo.gfn.take() {
            ctx.mem.unmap_overlay(g);
        }
        for gfn in std::mem::take(&mut self.grant_maps).into_keys() {
            ctx.mem.unmap_overlay(gfn);
        }
        self.set_callback(ctx, crate::hvm::Callback::None);
        for v in 0..self.nr_vcpus {
            for kind in [timer::SINGLESHOT, timer::PERIODIC, timer::POLL] {
                ctx.timers.cancel(timer::key(kind, v));
            }
            self.unblock(ctx, v);
        }
        self.reset_domain_state();
        self.soft_resets += 1;
    }
}

fn shutdown_reason(r: u32) -> ShutdownReason {
    match r {
        reason::POWEROFF => ShutdownReason::Poweroff,
        reason::REBOOT => ShutdownReason::Reboot,
        reason::SUSPEND => ShutdownReason::Suspend,
        reason::WATCHDOG => ShutdownReason::Watchdog,
        reason::CRASH => ShutdownReason::Crash,
        other => {
            tracing::warn!(reason = other, "SCHEDOP_shutdown with an unknown reason: treated as a crash");
            ShutdownReason::Crash
        }
    }
}
