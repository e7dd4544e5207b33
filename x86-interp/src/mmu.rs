//! Segmentation and the linear-address path: segment checks, then the
//! software TLB on top of `sim_core::paging::translate`, then host memory or
//! an MMIO exit. Accesses that cross a page are split so each part is
//! translated (and faults) on its own; writes translate every part before
//! storing anything, so a #PF leaves memory untouched.

use sim_core::memory::GuestMemory;
use sim_core::paging::{self, Access};
use sim_core::state::{seg_attr, sreg};
use sim_core::VcpuExit;

use crate::fault::{exc_code, gp0, ss0, vector, R};
use crate::interp::Interpreter;
use crate::tlb::Kind;

/// Where a linear address landed.
#[derive(Clone, Copy)]
enum Target {
    Host(usize, u64),
    Mmio(u64),
}

#[inline(always)]
fn canonical(la: u64) -> bool {
    ((la as i64) << 16 >> 16) as u64 == la
}

#[inline(always)]
unsafe fn load(p: usize, size: usize) -> u64 {
    // SAFETY (caller): p..p+size lies inside one guest page whose host
    // mapping stays valid while the `&GuestMemory` of this run is held.
    let p = p as *const u8;
    match size {
        1 => *p as u64,
        2 => (p as *const u16).read_unaligned() as u64,
        4 => (p as *const u32).read_unaligned() as u64,
        _ => (p as *const u64).read_unaligned(),
    }
}

#[inline(always)]
unsafe fn store(p: usize, size: usize, v: u64) {
    // SAFETY: as for `load`.
    let p = p as *mut u8;
    match size {
        1 => *p = v as u8,
        2 => (p as *mut u16).write_unaligned(v as u16),
        4 => (p as *mut u32).write_unaligned(v as u32),
        _ => (p as *mut u64).write_unaligned(v),
    }
}

impl Interpreter {
    /// Segment check and linear address for `size` bytes at `seg:off`.
    #[inline(always)]
    pub(crate) fn lin(&self, seg: usize, off: u64, size: usize, write: bool) -> R<u64> {
        let fault = || if seg == sreg::SS { ss0() } else { gp0() };
        let Some(d) = self.s.seg.get(seg) else { return Err(gp0()) };
        if self.long64 {
            let la = if seg >= sreg::FS { d.base.wrapping_add(off) } else { off };
            return if canonical(la) { Ok(la) } else { Err(fault()) };
        }
        let last = off.wrapping_add((size as u64).saturating_sub(1));
        if !self.real {
            if !d.present() {
                return Err(fault());
            }
            let code = d.attr & seg_attr::CODE != 0;
            let rw = d.attr & seg_attr::RW != 0;
            let denied = if write { code || !rw } else { code && !rw };
            if denied {
                return Err(fault());
            }
            if !code && d.attr & seg_attr::DC != 0 {
                // Expand-down: valid offsets are limit+1 ..= 0xffff or 0xffffffff.
                let top = if d.default_big() { 0xffff_ffff } else { 0xffff };
                if off <= d.limit as u64 || last > top || last < off {
                    return Err(fault());
                }
                return Ok(d.base.wrapping_add(off) & 0xffff_ffff);
            }
        }
        if last > d.limit as u64 || last < off {
            return Err(fault());
        }
        Ok(d.base.wrapping_add(off) & 0xffff_ffff)
    }

    /// Walk the page tables (setting A/D) and fill the TLB for RAM pages.
    fn xlate(&mut self, m: &GuestMemory, la: u64, kind: Kind, user: bool) -> R<Target> {
        let access = Access { write: kind == Kind::Write, user, fetch: kind == Kind::Fetch };
        let t = match paging::translate(m, &self.s.paging(), la, access, true) {
            Ok(t) => t,
            Err(pf) => {
                self.s.cr2 = pf.addr;
                return Err(exc_code(vector::PF, pf.error_code));
            }
        };
        let page = t.gpa & !0xfff;
        let Some(host) = m.page_host_ptr(page) else { return Ok(Target::Mmio(t.gpa)) };
        if kind == Kind::Write {
            self.code_written(page >> 12);
            // The only place a store path learns a host pointer: later stores
            // through the write TLB entry need no marking (see dirty_epoch).
            m.mark_dirty(page);
        }
        // Write entries must never point at code pages (see code_cache.rs).
        if kind != Kind::Write || !self.code.contains(page >> 12) {
            self.tlb.insert(kind, la, user, host as usize, page, t.global);
        }
        Ok(Target::Host(host as usize + (la & 0xfff) as usize, t.gpa))
    }

    /// Host address of a fetchable page (for the code cache); None for MMIO.
    pub(crate) fn xlate_fetch(&mut self, m: &GuestMemory, la: u64) -> R<(Option<usize>, u64)> {
        let user = self.cpl == 3;
        if let Some((h, gpa)) = self.tlb.lookup_gpa(Kind::Fetch, la, user) {
            return Ok((Some(h), gpa));
        }
        match self.xlate(m, la, Kind::Fetch, user)? {
            Target::Host(h, gpa) => Ok((Some(h), gpa)),
            Target::Mmio(g) => Ok((None, g)),
        }
    }

    #[inline(always)]
    pub(crate) fn read_la(&mut self, m: &GuestMemory, la: u64, size: usize, user: bool) -> R<u64> {
        if (la & 0xfff) as usize + size <= 4096 {
            if let Some(h) = self.tlb.lookup(Kind::Read, la, user) {
                // SAFETY: h..h+size is inside one mapped guest page.
                return Ok(unsafe { load(h, size) });
            }
        }
        self.read_la_slow(m, la, size, user)
    }

    #[cold]
    fn read_la_slow(&mut self, m: &GuestMemory, la: u64, size: usize, user: bool) -> R<u64> {
        let first = (4096 - (la & 0xfff) as usize).min(size);
        let lo = self.read_part(m, la, first, user)?;
        if first == size {
            return Ok(lo);
        }
        let hi = self.read_part(m, la.wrapping_add(first as u64), size - first, user)?;
        Ok(lo | hi << (first * 8))
    }

    fn read_part(&mut self, m: &GuestMemory, la: u64, n: usize, user: bool) -> R<u64> {
        match self.xlate(m, la, Kind::Read, user)? {
            // SAFETY: n bytes from h stay within the page (split by the caller).
            Target::Host(h, _) => Ok(unsafe { load_n(h, n) }),
            Target::Mmio(gpa) => self.exit_read(VcpuExit::MmioRead { gpa, size: n as u8 }, n),
        }
    }

    #[inline(always)]
    pub(crate) fn write_la(&mut self, m: &GuestMemory, la: u64, size: usize, v: u64, user: bool) -> R<()> {
        if (la & 0xfff) as usize + size <= 4096 {
            if let Some(h) = self.tlb.lookup(Kind::Write, la, user) {
                // SAFETY: h..h+size is inside one mapped guest page.
                unsafe { store(h, size, v) };
                return Ok(());
            }
        }
        self.write_la_slow(m, la, size, v, user)
    }

    #[cold]
    fn write_la_slow(&mut self, m: &GuestMemory, la: u64, size: usize, v: u64, user: bool) -> R<()> {
        let first = (4096 - (la & 0xfff) as usize).min(size);
        let t1 = self.xlate(m, la, Kind::Write, user)?;
        let la2 = la.wrapping_add(first as u64);
        let t2 = if first < size { Some(self.xlate(m, la2, Kind::Write, user)?) } else { None };
        self.write_part(t1, first, v)?;
        if let Some(t2) = t2 {
            self.write_part(t2, size - first, v >> (first * 8))?;
        }
        Ok(())
    }

    fn write_part(&mut self, t: Target, n: usize, v: u64) -> R<()> {
        match t {
            Target::Host(h, _) => {
                // SAFETY: n bytes from h stay within the page.
                unsafe { store_n(h, n, v) };
                Ok(())
            }
            Target::Mmio(gpa) => {
                let data = if n >= 8 { v } else { v & ((1u64 << (n * 8)) - 1) };
                self.exit_write(VcpuExit::MmioWrite { gpa, size: n as u8, data })
            }
        }
    }

    /// Check that `len` bytes at `la` are writable (faulting like a write)
    /// without writing: multi-part stores call it first.
    pub(crate) fn probe_write(&mut self, m: &GuestMemory, la: u64, len: usize, user: bool) -> R<()> {
        let mut off = 0usize;
        while off < len {
            let a = la.wrapping_add(off as u64);
            if self.tlb.lookup(Kind::Write, a, user).is_none() {
                self.xlate(m, a, Kind::Write, user)?;
            }
            off += 4096 - (a & 0xfff) as usize;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes (any length) at linear `la`.
    pub(crate) fn read_bytes(&mut self, m: &GuestMemory, la: u64, buf: &mut [u8], user: bool) -> R<()> {
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let v = self.read_la(m, la.wrapping_add(i as u64 * 8), chunk.len(), user)?;
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }

    /// Write `buf` at linear `la`, all-or-nothing with respect to faults.
    pub(crate) fn write_bytes(&mut self, m: &GuestMemory, la: u64, buf: &[u8], user: bool) -> R<()> {
        self.probe_write(m, la, buf.len(), user)?;
        for (i, chunk) in buf.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_la(m, la.wrapping_add(i as u64 * 8), chunk.len(), u64::from_le_bytes(b), user)?;
        }
        Ok(())
    }

    // Segmented accesses at the current privilege.

    #[inline(always)]
    pub(crate) fn rd_mem(&mut self, m: &GuestMemory, seg: usize, off: u64, size: usize) -> R<u64> {
        // Scalar accesses are 1..=8 bytes; odd operand sizes never reach
        // here, but keep the host access in bounds regardless.
        let size = size.clamp(1, 8);
        let la = self.lin(seg, off, size, false)?;
        self.read_la(m, la, size, self.cpl == 3)
    }

    #[inline(always)]
    pub(crate) fn wr_mem(&mut self, m: &GuestMemory, seg: usize, off: u64, size: usize, v: u64) -> R<()> {
        let size = size.clamp(1, 8);
        let la = self.lin(seg, off, size, true)?;
        self.write_la(m, la, size, v, self.cpl == 3)
    }

    /// Fetch bytes for decoding an instruction that crosses a page.
    pub(crate) fn fetch_bytes(&mut self, m: &GuestMemory, la: u64, buf: &mut [u8]) -> R<()> {
        let user = self.cpl == 3;
        let mut off = 0usize;
        while off < buf.len() {
            let a = la.wrapping_add(off as u64);
            let n = (4096 - (a & 0xfff) as usize).min(buf.len() - off);
            match self.xlate(m, a, Kind::Fetch, user)? {
                Target::Host(h, _) => {
                    // SAFETY: n bytes from h stay within the page.
                    let src = unsafe { std::slice::from_raw_parts(h as *const u8, n) };
                    if let Some(dst) = buf.get_mut(off..off + n) {
                        dst.copy_from_slice(src);
                    }
                }
                Target::Mmio(_) => return Err(crate::fault::ud()),
            }
            off += n;
        }
        Ok(())
    }
}

/// Load `n` (1..=8) bytes little-endian.
unsafe fn load_n(p: usize, n: usize) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY (caller): p..p+n is mapped.
    std::ptr::copy_nonoverlapping(p as *const u8, b.as_mut_ptr(), n.min(8));
    u64::from_le_bytes(b)
}

unsafe fn store_n(p: usize, n: usize, v: u64) {
    let b = v.to_le_bytes();
    // SAFETY (caller): p..p+n is mapped.
    std::ptr::copy_nonoverlapping(b.as_ptr(), p as *mut u8, n.min(8));
}
