//! HYPERVISOR_memory_op (xen/include/public/memory.h): placing shared_info
//! and grant frames in the guest's physical map (as overlay pages, so every
//! memory listener sees them), and the E820 map.

use sim_core::paging::MAX_PHYS_BITS;
use sim_core::platform::PlatformCtx;

use crate::errno::{Errno, XenResult, EINVAL, ENOSYS};
use crate::evtchn::check_self;
use crate::hypercall::Args;
use crate::platform::XenPlatform;

pub mod op {
    pub const ADD_TO_PHYSMAP: u32 = 7;
    pub const MEMORY_MAP: u32 = 9;
    pub const ADD_TO_PHYSMAP_BATCH: u32 = 23;
}

pub mod space {
    pub const SHARED_INFO: u32 = 0;
    pub const GRANT_TABLE: u32 = 1;
    pub const GMFN: u32 = 2;
    pub const GMFN_RANGE: u32 = 3;
}

/// XENMAPIDX_grant_table_status: idx names a v2 status frame.
pub const GRANT_TABLE_STATUS: u64 = 0x8000_0000;
const MEMOP_CMD_MASK: u32 = 0x3f;

impl XenPlatform {
    pub(crate) fn memory_op(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        let (cmd, arg) = (a.arg(0) as u32 & MEMOP_CMD_MASK, a.arg(1));
        match cmd {
            op::ADD_TO_PHYSMAP => {
                let g = a.guest(ctx.mem);
                check_self(g.read_u16(arg)?)?;
                let space = g.read_u32(arg + 4)?;
                let (idx, gpfn) = if a.compat {
                    (g.read_u32(arg + 8)? as u64, g.read_u32(arg + 12)? as u64)
                } else {
                    (g.read_u64(arg + 8)?, g.read_u64(arg + 16)?)
                };
                self.add_to_physmap(ctx, space, idx, gpfn)?;
                Ok(0)
            }
            op::ADD_TO_PHYSMAP_BATCH => {
                let (space, size, idxs, gpfns, errs) = {
                    let g = a.guest(ctx.mem);
                    check_self(g.read_u16(arg)?)?;
                    let space = g.read_u16(arg + 2)? as u32;
                    let size = g.read_u16(arg + 4)?;
                    let (idxs, gpfns, errs) = if a.compat {
                        (g.read_u32(arg + 8)? as u64, g.read_u32(arg + 12)? as u64, g.read_u32(arg + 16)? as u64)
                    } else {
                        (g.read_u64(arg + 8)?, g.read_u64(arg + 16)?, g.read_u64(arg + 24)?)
                    };
                    (space, size, idxs, gpfns, errs)
                };
                if space == space::GMFN_RANGE {
                    return Err(Errno(EINVAL));
                }
                let w = a.ulong_size();
                for i in 0..size as u64 {
                    let (idx, gpfn) = {
                        let g = a.guest(ctx.mem);
                        (a.read_ulong(&g, idxs + i * w)?, a.read_ulong(&g, gpfns + i * w)?)
                    };
                    let rc = match self.add_to_physmap(ctx, space, idx, gpfn) {
                        Ok(()) => 0,
                        Err(e) => e.result() as i32,
                    };
                    a.guest(ctx.mem).write_u32(errs + i * 4, rc as u32)?;
                }
                Ok(0)
            }
            op::MEMORY_MAP => {
                let g = a.guest(ctx.mem);
                // With no map configured, answer what a toolstack would have
                // set (XENMEM_set_memory_map): the E820 map of guest RAM.
                let derived;
                let map = if self.cfg.memory_map.is_empty() {
                    // The same map the boot loader gave the guest, special pages included.
                    let m =
                        sim_core::boot::e820_map_with(ctx.mem, &sim_core::platform::Platform::reserved_ranges(self))
                            .iter()
                            .map(|e| (e.addr, e.size, e.kind.code()))
                            .collect::<Vec<_>>();
                    derived = m;
                    &derived
                } else {
                    &self.cfg.memory_map
                };
                let nr = g.read_u32(arg)?;
                let buf = a.read_ulong(&g, arg + a.ulong_size())?;
                let n = (nr as usize).min(map.len());
                let mut out = Vec::with_capacity(n * 20);
                for &(addr, size, ty) in &map[..n] {
                    out.extend_from_slice(&addr.to_le_bytes());
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(&ty.to_le_bytes());
                }
                g.write(buf, &out)?;
                g.write_u32(arg, n as u32)?;
                Ok(0)
            }
            _ => Err(Errno(ENOSYS)),
        }
    }

    /// Map the frame `space`/`idx` at guest frame `gpfn`, removing it from
    /// where it was (xenmem_add_to_physmap_one).
    pub(crate) fn add_to_physmap(&mut self, ctx: &mut PlatformCtx, space: u32, idx: u64, gpfn: u64) -> XenResult<()> {
        if gpfn >> (MAX_PHYS_BITS - 12) != 0 {
            return Err(Errno(EINVAL));
        }
        let page = match space {
            space::SHARED_INFO => {
                if idx != 0 {
                    return Err(Errno(EINVAL));
                }
                self.shinfo.page().clone()
            }
            space::GRANT_TABLE => {
                let status = idx & GRANT_TABLE_STATUS != 0;
                let frame = (idx & !GRANT_TABLE_STATUS) as u32;
                if idx >> 32 != 0 {
                    return Err(Errno(EINVAL));
                }
                self.gnttab.frame(frame, status)?
            }
            space::GMFN | space::GMFN_RANGE => return Err(Errno(ENOSYS)),
            _ => return Err(Errno(EINVAL)),
        };
        // Whatever was at gpfn goes away.
        if self.shinfo.gfn == Some(gpfn) {
            self.shinfo.gfn = None;
        }
        self.grant_maps.remove(&gpfn);
        // The frame leaves its old place.
        let old = match space {
            space::SHARED_INFO => self.shinfo.gfn.take(),
            _ => {
                let key = ((idx & !GRANT_TABLE_STATUS) as u32, idx & GRANT_TABLE_STATUS != 0);
                let old = self.grant_maps.iter().find(|(_, v)| **v == key).map(|(g, _)| *g);
                if let Some(o) = old {
                    self.grant_maps.remove(&o);
                }
                old
            }
        };
        if let Some(o) = old {
            ctx.mem.unmap_overlay(o);
        }
        ctx.mem.map_overlay(gpfn, page);
        if space == space::SHARED_INFO {
            self.shinfo.gfn = Some(gpfn);
            self.write_wallclock();
            for v in 0..self.nr_vcpus {
                self.update_time(ctx.mem, v, ctx.now_ns);
            }
        } else {
            self.grant_maps.insert(gpfn, ((idx & !GRANT_TABLE_STATUS) as u32, idx & GRANT_TABLE_STATUS != 0));
        }
        Ok(())
    }
}
