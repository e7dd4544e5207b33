//! Access to hypercall arguments: guest-virtual addresses translated through
//! the calling vCPU's page tables (as Xen's copy_from_guest does for HVM
//! guests). A translation failure or an address with no RAM or overlay page
//! behind it is -EFAULT.

use sim_core::paging::{self, Access, PagingMode};
use sim_core::vcpu::Vcpu;
use sim_core::GuestMemory;

use crate::errno::{Errno, EFAULT};

/// The calling vCPU's view of guest memory, for one hypercall.
pub struct GuestVirt<'a> {
    mem: &'a GuestMemory,
    paging: PagingMode,
}

impl<'a> GuestVirt<'a> {
    /// Capture `vcpu`'s translation registers once for the whole call.
    pub fn new(mem: &'a GuestMemory, vcpu: &dyn Vcpu) -> Self {
        GuestVirt { mem, paging: vcpu.state().paging() }
    }

    /// A view with explicit translation registers (tests, fuzzing).
    pub fn with_paging(mem: &'a GuestMemory, paging: PagingMode) -> Self {
        GuestVirt { mem, paging }
    }

    pub fn mem(&self) -> &GuestMemory {
        self.mem
    }

    fn gpa(&self, gva: u64, write: bool) -> Result<u64, Errno> {
        let access = if write { Access::WRITE } else { Access::READ };
        paging::translate(self.mem, &self.paging, gva, access, true).map(|t| t.gpa).map_err(|_| Errno(EFAULT))
    }

    /// Copy `buf.len()` bytes from guest-virtual `gva` (any alignment, any
    /// number of pages).
    pub fn read(&self, gva: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.chunks(gva, buf.len(), false, |gpa, off, len| {
            self.mem.read(gpa, &mut buf[off..off + len]).map_err(|_| Errno(EFAULT))
        })
    }

    /// Copy `buf` to guest-virtual `gva`.
    pub fn write(&self, gva: u64, buf: &[u8]) -> Result<(), Errno> {
        self.chunks(gva, buf.len(), true, |gpa, off, len| {
            self.mem.write(gpa, &buf[off..off + len]).map_err(|_| Errno(EFAULT))
        })
    }

    fn chunks(
        &self,
        gva: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let mut off = 0usize;
        while off < len {
            let va = gva.wrapping_add(off as u64);
            let n = ((4096 - (va & 0xfff)) as usize).min(len - off);
            f(self.gpa(va, write)?, off, n)?;
            off += n;
        }
        Ok(())
    }

    pub fn read_u16(&self, gva: u64) -> Result<u16, Errno> {
        let mut b = [0; 2];
        self.read(gva, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub fn read_u32(&self, gva: u64) -> Result<u32, Errno> {
        let mut b = [0; 4];
        self.read(gva, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn read_u64(&self, gva: u64) -> Result<u64, Errno> {
        let mut b = [0; 8];
        self.read(gva, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    pub fn write_u16(&self, gva: u64, v: u16) -> Result<(), Errno> {
        self.write(gva, &v.to_le_bytes())
    }
    pub fn write_u32(&self, gva: u64, v: u32) -> Result<(), Errno> {
        self.write(gva, &v.to_le_bytes())
    }
    pub fn write_u64(&self, gva: u64, v: u64) -> Result<(), Errno> {
        self.write(gva, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_core::state::{cr0, cr4, efer};

    #[test]
    fn copies_across_pages_and_faults_on_unmapped() {
        let mem = GuestMemory::new(4).unwrap();
        // Long mode: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000;
        // VA 0x0 -> PA 0x10000, VA 0x1000 -> PA 0x20000, VA 0x2000 unmapped.
        mem.write_u64(0x1000, 0x2003).unwrap();
        mem.write_u64(0x2000, 0x3003).unwrap();
        mem.write_u64(0x3000, 0x4003).unwrap();
        mem.write_u64(0x4000, 0x10003).unwrap();
        mem.write_u64(0x4008, 0x20003).unwrap();
        let paging = PagingMode::from_regs(cr0::PE | cr0::PG, 0x1000, cr4::PAE, efer::LME | efer::LMA);
        let g = GuestVirt::with_paging(&mem, paging);
        g.write(0xffe, &[1, 2, 3, 4]).unwrap();
        assert_eq!(mem.read_u16(0x10ffe).unwrap(), 0x0201);
        assert_eq!(mem.read_u16(0x20000).unwrap(), 0x0403);
        assert_eq!(g.read_u32(0xffe).unwrap(), 0x0403_0201);
        assert_eq!(g.read_u64(0x1ffc), Err(Errno(EFAULT)), "crosses into an unmapped page");
        assert_eq!(Errno(EFAULT).result(), -14);
    }
}
