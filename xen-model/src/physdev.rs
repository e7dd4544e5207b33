//! HYPERVISOR_physdev_op for an HVM guest with emulated PIRQs
//! (xen/include/public/physdev.h; hvm_physdev_op): GSIs of the guest's own
//! devices mapped to PIRQs that event channels can bind.

use sim_core::platform::PlatformCtx;

use crate::errno::{Errno, XenResult, EINVAL, ENOSPC, ENOSYS, EPERM, ESRCH};
use crate::evtchn::{Delivery, NR_PIRQS};
use crate::hvm::NR_GSIS;
use crate::hypercall::Args;
use crate::platform::XenPlatform;
use crate::{DOM0, DOMID_SELF, GUEST_DOMID};

pub mod op {
    pub const IRQ_STATUS_QUERY: u32 = 5;
    pub const EOI: u32 = 12;
    pub const MAP_PIRQ: u32 = 13;
    pub const UNMAP_PIRQ: u32 = 14;
    pub const GET_FREE_PIRQ: u32 = 23;
}

pub const MAP_PIRQ_TYPE_MSI: u32 = 0;
pub const MAP_PIRQ_TYPE_GSI: u32 = 1;
/// ISA IRQs are edge-triggered: an EOI never re-raises them.
const NR_ISAIRQS: u32 = 16;

/// Only DOMID_SELF may map its own GSIs; naming a domain (even itself)
/// needs device-model privilege.
fn check_domid(dom: u16) -> Result<(), Errno> {
    match dom {
        DOMID_SELF => Ok(()),
        GUEST_DOMID | DOM0 => Err(Errno(EPERM)),
        _ => Err(Errno(ESRCH)),
    }
}

impl XenPlatform {
    /// get_free_pirq: GSIs take the lowest free PIRQ from 16, MSIs the
    /// highest above the GSI range.
    fn free_pirq(&self, ty: u32) -> XenResult<u32> {
        let free = |p: &u32| !self.pirq_gsi.contains_key(p);
        let found = if ty == MAP_PIRQ_TYPE_GSI {
            (NR_ISAIRQS..NR_GSIS).find(free)
        } else {
            (NR_GSIS..NR_PIRQS).rev().find(free)
        };
        found.ok_or(Errno(ENOSPC))
    }

    pub(crate) fn physdev_op(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        if !self.cfg.pirqs {
            return Err(Errno(ENOSYS));
        }
        let (cmd, arg) = (a.arg(0) as u32, a.arg(1));
        let g = a.guest(ctx.mem);
        match cmd {
            op::MAP_PIRQ => {
                check_domid(g.read_u16(arg)?)?;
                let (ty, index) = (g.read_u32(arg + 4)?, g.read_u32(arg + 8)? as i32);
                if ty != MAP_PIRQ_TYPE_GSI {
                    return Err(Errno(EINVAL));
                }
                if index < 0 || index as u32 >= NR_GSIS {
                    return Err(Errno(EINVAL));
                }
                let gsi = index as u32;
                let pirq = match self.pirq_gsi.iter().find(|(_, &g)| g == gsi) {
                    Some((&p, _)) => p,
                    None => self.free_pirq(MAP_PIRQ_TYPE_GSI)?,
                };
                g.write_u32(arg + 12, pirq)?;
                self.pirq_gsi.insert(pirq, gsi);
                self.pirq_level.insert(pirq, ctx.gsi.level(gsi));
                Ok(0)
            }
            op::UNMAP_PIRQ => {
                check_domid(g.read_u16(arg)?)?;
                let pirq = g.read_u32(arg + 4)?;
                self.pirq_gsi.remove(&pirq).ok_or(Errno(EINVAL))?;
                self.pirq_level.remove(&pirq);
                Ok(0)
            }
            op::EOI => {
                let pirq = g.read_u32(arg)?;
                if pirq >= NR_PIRQS {
                    return Err(Errno(EINVAL));
                }
                // A level-triggered GSI still asserted raises the PIRQ again.
                if let Some(&gsi) = self.pirq_gsi.get(&pirq) {
                    if gsi >= NR_ISAIRQS && ctx.gsi.level(gsi) {
                        let dl = Delivery { shinfo: &self.shinfo, mem: ctx.mem, vcpu_info: &self.vi };
                        self.evtchn.send_pirq(&dl, pirq);
                    }
                }
                Ok(0)
            }
            op::IRQ_STATUS_QUERY => {
                let pirq = g.read_u32(arg)?;
                if pirq >= NR_PIRQS || !self.pirq_gsi.contains_key(&pirq) {
                    return Err(Errno(EINVAL));
                }
                g.write_u32(arg + 4, 0)?;
                Ok(0)
            }
            op::GET_FREE_PIRQ => {
                let ty = g.read_u32(arg)?;
                let pirq = self.free_pirq(ty)?;
                g.write_u32(arg + 4, pirq)?;
                Ok(0)
            }
            _ => Err(Errno(ENOSYS)),
        }
    }
}
