//! Hypercall entry (xen/arch/x86/hvm/hypercall.c): register conventions,
//! the CPL check, dispatch by number, tracing of every call.

use sim_core::paging::PagingMode;
use sim_core::platform::PlatformCtx;
use sim_core::state::{gpr, CpuMode};
use sim_core::vcpu::Vcpu;
use sim_core::GuestMemory;

use crate::errno::{Errno, XenResult, EINVAL, ENOSYS, EPERM};
use crate::evtchn::Delivery;
use crate::guest::GuestVirt;
use crate::platform::XenPlatform;

/// __HYPERVISOR_* numbers.
pub mod nr {
    pub const SET_TIMER_OP: u32 = 15;
    pub const MEMORY_OP: u32 = 12;
    pub const XEN_VERSION: u32 = 17;
    pub const CONSOLE_IO: u32 = 18;
    pub const GRANT_TABLE_OP: u32 = 20;
    pub const VM_ASSIST: u32 = 21;
    pub const VCPU_OP: u32 = 24;
    pub const SCHED_OP: u32 = 29;
    pub const CALLBACK_OP: u32 = 30;
    pub const EVENT_CHANNEL_OP: u32 = 32;
    pub const PHYSDEV_OP: u32 = 33;
    pub const HVM_OP: u32 = 34;
}

pub const VMASST_CMD_ENABLE: u64 = 0;
pub const VMASST_CMD_DISABLE: u64 = 1;
pub const VMASST_RUNSTATE_UPDATE_FLAG: u32 = 5;
/// VM assists an HVM guest may use (HVM_VM_ASSIST_MASK).
const HVM_VM_ASSIST_MASK: u64 = 1 << VMASST_RUNSTATE_UPDATE_FLAG;

pub fn name(n: u32) -> &'static str {
    match n {
        nr::SET_TIMER_OP => "set_timer_op",
        nr::MEMORY_OP => "memory_op",
        nr::XEN_VERSION => "xen_version",
        nr::CONSOLE_IO => "console_io",
        nr::GRANT_TABLE_OP => "grant_table_op",
        nr::VM_ASSIST => "vm_assist",
        nr::VCPU_OP => "vcpu_op",
        nr::SCHED_OP => "sched_op",
        nr::CALLBACK_OP => "callback_op",
        nr::EVENT_CHANNEL_OP => "event_channel_op",
        nr::PHYSDEV_OP => "physdev_op",
        nr::HVM_OP => "hvm_op",
        _ => "unknown",
    }
}

/// One call's arguments and the caller's view of memory.
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub nr: u32,
    pub args: [u64; 6],
    /// 32-bit caller: arguments are 32 bits, structures use compat layouts.
    pub compat: bool,
    pub paging: PagingMode,
    pub vcpu: u32,
}

impl Args {
    pub fn arg(&self, i: usize) -> u64 {
        self.args.get(i).copied().unwrap_or(0)
    }
    pub fn guest<'a>(&self, mem: &'a GuestMemory) -> GuestVirt<'a> {
        GuestVirt::with_paging(mem, self.paging)
    }
    /// A guest pointer or xen_ulong_t field inside a structure.
    pub fn read_ulong(&self, g: &GuestVirt, gva: u64) -> Result<u64, Errno> {
        if self.compat {
            g.read_u32(gva).map(u64::from)
        } else {
            g.read_u64(gva)
        }
    }
    pub fn ulong_size(&self) -> u64 {
        if self.compat {
            4
        } else {
            8
        }
    }
}

/// Decode the registers of a hypercall exit, run it, write RAX.
pub(crate) fn dispatch(p: &mut XenPlatform, ctx: &mut PlatformCtx, v: u32, vcpu: &mut dyn Vcpu) {
    let st = vcpu.state();
    let mut regs = vcpu.gprs();
    let mode = st.mode();
    let compat = mode != CpuMode::Long64;
    let nr = if compat { regs[gpr::RAX] as u32 } else { regs[gpr::RAX].min(u32::MAX as u64) as u32 };
    let args = if compat {
        [gpr::RBX, gpr::RCX, gpr::RDX, gpr::RSI, gpr::RDI, gpr::RBP].map(|r| regs[r] & 0xffff_ffff)
    } else {
        [gpr::RDI, gpr::RSI, gpr::RDX, gpr::R10, gpr::R8, gpr::R9].map(|r| regs[r])
    };
    let a = Args { nr, args, compat, paging: st.paging(), vcpu: v };
    let result = if mode == CpuMode::Virtual8086 || (mode != CpuMode::Real && st.cpl() > 0) {
        Err(Errno(EPERM))
    } else {
        call(p, ctx, &a)
    };
    let ret = match result {
        Ok(r) => r,
        Err(e) => {
            if e.0 == ENOSYS {
                let sub = if matches!(nr, nr::SET_TIMER_OP | nr::CALLBACK_OP) { 0 } else { a.arg(0) as u32 };
                let sub = if nr == nr::MEMORY_OP { sub & 0x3f } else { sub };
                if p.warned.insert((nr, sub)) {
                    tracing::warn!(
                        hypercall = nr,
                        name = name(nr),
                        sub_op = sub,
                        "hypercall or sub-op not implemented: -ENOSYS"
                    );
                }
            }
            e.result()
        }
    };
    if tracing::enabled!(target: "xensim::hypercall", tracing::Level::INFO) {
        tracing::info!(target: "xensim::hypercall", "vcpu {v}: {}", crate::trace::line(nr, &a.args, compat, ret));
    }
    regs[gpr::RAX] = if compat { ret as u32 as u64 } else { ret as u64 };
    vcpu.set_gprs(&regs);
}

fn call(p: &mut XenPlatform, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
    match a.nr {
        nr::XEN_VERSION => p.xen_version(ctx, a),
        nr::MEMORY_OP => p.memory_op(ctx, a),
        nr::HVM_OP => p.hvm_op(ctx, a),
        nr::VCPU_OP => p.vcpu_op(ctx, a),
        nr::SCHED_OP => p.sched_op(ctx, a),
        nr::SET_TIMER_OP => {
            let t = if a.compat { a.arg(0) | a.arg(1) << 32 } else { a.arg(0) };
            p.set_timer_op(ctx, a.vcpu, t);
            Ok(0)
        }
        nr::CONSOLE_IO => p.console_io(ctx, a),
        nr::VM_ASSIST => {
            let (cmd, ty) = (a.arg(0), a.arg(1));
            if ty >= 64 || HVM_VM_ASSIST_MASK & (1 << ty) == 0 {
                return Err(Errno(EINVAL));
            }
            match cmd {
                VMASST_CMD_ENABLE => p.vm_assist |= 1 << ty,
                VMASST_CMD_DISABLE => p.vm_assist &= !(1 << ty),
                _ => return Err(Errno(ENOSYS)),
            }
            Ok(0)
        }
        nr::EVENT_CHANNEL_OP => {
            let g = a.guest(ctx.mem);
            let dl = Delivery { shinfo: &p.shinfo, mem: ctx.mem, vcpu_info: &p.vi };
            p.evtchn.hypercall(&g, &dl, a.arg(0) as u32, a.arg(1))
        }
        nr::GRANT_TABLE_OP => {
            let g = a.guest(ctx.mem);
            p.gnttab.hypercall_abi(&g, ctx.mem, a.arg(0) as u32, a.arg(1), a.arg(2) as u32, a.compat)
        }
        nr::PHYSDEV_OP => p.physdev_op(ctx, a),
        _ => Err(Errno(ENOSYS)),
    }
}
