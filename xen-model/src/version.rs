//! HYPERVISOR_xen_version (xen/include/public/version.h).

use sim_core::platform::PlatformCtx;

use crate::errno::{Errno, XenResult, EINVAL, ENOSYS, EPERM};
use crate::hypercall::Args;
use crate::platform::XenPlatform;

pub mod op {
    pub const VERSION: u32 = 0;
    pub const EXTRAVERSION: u32 = 1;
    pub const COMPILE_INFO: u32 = 2;
    pub const CAPABILITIES: u32 = 3;
    pub const CHANGESET: u32 = 4;
    pub const PLATFORM_PARAMETERS: u32 = 5;
    pub const GET_FEATURES: u32 = 6;
    pub const PAGESIZE: u32 = 7;
    pub const GUEST_HANDLE: u32 = 8;
    pub const COMMANDLINE: u32 = 9;
    pub const BUILD_ID: u32 = 10;
}

/// XENFEAT_* bits of submap 0.
pub mod feat {
    pub const WRITABLE_PAGE_TABLES: u32 = 0;
    pub const AUTO_TRANSLATED_PHYSMAP: u32 = 2;
    pub const HVM_CALLBACK_VECTOR: u32 = 8;
    pub const HVM_SAFE_PVCLOCK: u32 = 9;
    pub const HVM_PIRQS: u32 = 10;
    pub const MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
    pub const NOT_DIRECT_MAPPED: u32 = 16;
}

/// XENVER_capabilities of an x86 Xen built without PV support
/// (arch_get_xen_caps: one "hvm-3.0-<arch> " per HVM guest kind, in this
/// order, each with its trailing space). The list is the host's, not the
/// guest's.
pub const CAPABILITIES: &str = "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ";

/// What XSM's default policy lets an unprivileged guest read of
/// XENVER_commandline (xen_deny()).
pub const DENIED: &str = "<denied>";

/// XENVER_compile_info fields (compiler[64], compile_by[16],
/// compile_domain[32], compile_date[32]): free text in Xen, fixed here so
/// runs are reproducible.
pub const COMPILER: &str = "rustc (xensim)";
pub const COMPILE_BY: &str = "xensim";
pub const COMPILE_DOMAIN: &str = "xensim.invalid";
pub const COMPILE_DATE: &str = "Thu Jan  1 00:00:00 UTC 1970";

/// HYPERVISOR_VIRT_START for 64-bit guests.
const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;

/// A NUL-padded fixed-size string field.
fn fixed(s: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let n = s.len().min(len - 1);
    v[..n].copy_from_slice(&s.as_bytes()[..n]);
    v
}

impl XenPlatform {
    /// XENFEAT submap 0 for an HVM/PVH guest (xen/common/kernel.c: a
    /// translated, not direct-mapped, non-hardware domain).
    pub fn features(&self) -> u32 {
        use feat::*;
        let mut f = 1 << WRITABLE_PAGE_TABLES
            | 1 << AUTO_TRANSLATED_PHYSMAP
            | 1 << HVM_CALLBACK_VECTOR
            | 1 << HVM_SAFE_PVCLOCK
            | 1 << MEMORY_OP_VNODE_SUPPORTED
            | 1 << NOT_DIRECT_MAPPED;
        if self.cfg.pirqs {
            f |= 1 << HVM_PIRQS;
        }
        f
    }

    pub(crate) fn xen_version(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        let (cmd, arg) = (a.arg(0) as u32, a.arg(1));
        let g = a.guest(ctx.mem);
        let (major, minor) = self.cfg.version;
        match cmd {
            op::VERSION => return Ok(((major as i64) << 16) | minor as i64),
            op::EXTRAVERSION => g.write(arg, &fixed(&self.cfg.extraversion, 16))?,
            op::COMPILE_INFO => {
                let mut b = fixed(COMPILER, 64);
                b.extend(fixed(COMPILE_BY, 16));
                b.extend(fixed(COMPILE_DOMAIN, 32));
                b.extend(fixed(COMPILE_DATE, 32));
                g.write(arg, &b)?;
            }
            op::CAPABILITIES => g.write(arg, &fixed(CAPABILITIES, 1024))?,
            op::CHANGESET => g.write(arg, &fixed("xensim", 64))?,
            op::PLATFORM_PARAMETERS => {
                if a.compat {
                    // HYPERVISOR_COMPAT_VIRT_START(d): hv_compat_vstart,
                    // which only 32-bit PV domains set; 0 for HVM.
                    g.write_u32(arg, 0)?;
                } else {
                    g.write_u64(arg, HYPERVISOR_VIRT_START)?;
                }
            }
            op::GET_FEATURES => {
                if g.read_u32(arg)? != 0 {
                    return Err(Errno(EINVAL));
                }
                g.write_u32(arg + 4, self.features())?;
            }
            // Xen refuses a non-null handle.
            op::PAGESIZE => return if arg != 0 { Err(Errno(EINVAL)) } else { Ok(4096) },
            op::GUEST_HANDLE => g.write(arg, &self.cfg.handle)?,
            // XSM denies both to an unprivileged guest: the command line
            // reads as "<denied>", build_id fails.
            op::COMMANDLINE => g.write(arg, &fixed(DENIED, DENIED.len() + 1))?,
            op::BUILD_ID => return Err(Errno(EPERM)),
            _ => return Err(Errno(ENOSYS)),
        }
        Ok(0)
    }
}
