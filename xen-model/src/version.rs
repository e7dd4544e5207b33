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
}

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
    /// XENFEAT submap 0 for an HVM/PVH guest.
    pub fn features(&self) -> u32 {
        use feat::*;
        let mut f = 1 << WRITABLE_PAGE_TABLES
            | 1 << AUTO_TRANSLATED_PHYSMAP
            | 1 << HVM_CALLBACK_VECTOR
            | 1 << HVM_SAFE_PVCLOCK
            | 1 << MEMORY_OP_VNODE_SUPPORTED;
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
                let mut b = fixed("rustc (xensim)", 64);
                b.extend(fixed("xensim", 16));
                b.extend(fixed("xensim.invalid", 32));
                b.extend(fixed("Thu Jan  1 00:00:00 UTC 1970", 32));
                g.write(arg, &b)?;
            }
            op::CAPABILITIES => g.write(arg, &fixed("hvm-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p", 1024))?,
            op::CHANGESET => g.write(arg, &fixed("xensim", 64))?,
            op::PLATFORM_PARAMETERS => {
                if a.compat {
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
            op::PAGESIZE => return Ok(4096),
            op::GUEST_HANDLE => g.write(arg, &self.cfg.handle)?,
            op::COMMANDLINE | op::BUILD_ID => return Err(Errno(EPERM)),
            _ => return Err(Errno(ENOSYS)),
        }
        Ok(0)
    }
}
