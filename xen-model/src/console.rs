//! HYPERVISOR_console_io: Xen's own console (earlyprintk=xen, XTF).

use sim_core::platform::PlatformCtx;

use crate::errno::{Errno, XenResult, ENOSYS};
use crate::hypercall::Args;
use crate::platform::XenPlatform;

pub const CONSOLEIO_WRITE: u64 = 0;
pub const CONSOLEIO_READ: u64 = 1;

impl XenPlatform {
    pub(crate) fn console_io(&mut self, ctx: &mut PlatformCtx, a: &Args) -> XenResult<i64> {
        let (cmd, count, buf) = (a.arg(0), a.arg(1) as u32 as usize, a.arg(2));
        let g = a.guest(ctx.mem);
        match cmd {
            CONSOLEIO_WRITE => {
                let mut off = 0usize;
                let mut chunk = [0u8; 256];
                while off < count {
                    let n = (count - off).min(chunk.len());
                    g.read(buf.wrapping_add(off as u64), &mut chunk[..n])?;
                    ctx.console.extend_from_slice(&chunk[..n]);
                    off += n;
                }
                Ok(0)
            }
            CONSOLEIO_READ => {
                let n = count.min(ctx.console_input.len());
                let bytes: Vec<u8> = ctx.console_input.iter().take(n).copied().collect();
                g.write(buf, &bytes)?;
                ctx.console_input.drain(..n);
                Ok(n as i64)
            }
            _ => Err(Errno(ENOSYS)),
        }
    }
}
