//! Where things may go: checks of image ranges against guest RAM, module
//! placement, and the bump allocator of the boot-data area.

use super::{BootError, BootImage, MODULE_LIMIT};
use crate::layout::{BOOT_DATA_BASE, BOOT_DATA_END, HIGH_MEMORY_BASE};
use crate::memory::PAGE_SIZE;
use crate::GuestMemory;

/// The RAM ranges of a machine, for range checks.
pub struct Ram {
    ranges: Vec<(u64, u64)>,
}

impl Ram {
    pub fn new(mem: &GuestMemory) -> Self {
        Ram { ranges: mem.ram_ranges().to_vec() }
    }

    /// The end of the RAM range that holds all of `[addr, addr + size)`.
    fn containing_end(&self, addr: u64, size: u64) -> Option<u64> {
        let end = addr.checked_add(size)?;
        self.ranges.iter().map(|&(s, l)| (s, s + l)).find(|&(s, e)| addr >= s && end <= e).map(|(_, e)| e)
    }

    /// Check that a kernel range is in RAM and above the low 1 MiB (which
    /// holds the boot data, the legacy area and the ACPI tables). Returns
    /// the range's end.
    pub fn check_image_range(&self, file: &str, what: &'static str, addr: u64, size: u64) -> Result<u64, BootError> {
        let outside = || BootError::OutsideRam { file: file.to_string(), what, addr, size };
        let end = addr.checked_add(size).ok_or_else(outside)?;
        if addr < HIGH_MEMORY_BASE {
            return Err(BootError::InLowMemory { file: file.to_string(), what, addr, size });
        }
        self.containing_end(addr, size).ok_or_else(outside)?;
        Ok(end)
    }

    /// RAM below 1 GiB that is contiguous from `from`; the module limit.
    fn module_limit(&self, from: u64) -> u64 {
        self.containing_end(from, 0).unwrap_or(0).min(MODULE_LIMIT)
    }
}

/// A module placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedModule {
    pub addr: u64,
    pub size: u64,
}

/// Copy `modules` page-aligned one after another from `kernel_end` up.
pub fn place_modules(
    mem: &GuestMemory,
    ram: &Ram,
    kernel_end: u64,
    modules: &[BootImage],
) -> Result<Vec<PlacedModule>, BootError> {
    let mut next = align_up(kernel_end, PAGE_SIZE).unwrap_or(u64::MAX);
    let mut placed = Vec::with_capacity(modules.len());
    for m in modules {
        let size = m.bytes.len() as u64;
        let limit = ram.module_limit(next);
        let fits = next.checked_add(size).is_some_and(|end| end <= limit);
        if !fits {
            return Err(BootError::ModuleDoesNotFit { file: m.name.clone(), size, limit });
        }
        mem.write(next, &m.bytes).map_err(|err| BootError::Memory { file: m.name.clone(), err })?;
        placed.push(PlacedModule { addr: next, size });
        next = align_up(next + size, PAGE_SIZE).unwrap_or(u64::MAX);
    }
    Ok(placed)
}

pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Bump allocator over the boot-data area; everything it hands out is
/// 8-byte aligned and written at once.
pub struct BootData<'m> {
    mem: &'m GuestMemory,
    file: String,
    next: u64,
}

impl<'m> BootData<'m> {
    pub fn new(mem: &'m GuestMemory, file: &str) -> Self {
        BootData { mem, file: file.to_string(), next: BOOT_DATA_BASE }
    }

    /// Reserve `len` bytes and return their address.
    pub fn alloc(&mut self, len: u64, what: &'static str) -> Result<u64, BootError> {
        let addr = align_up(self.next, 8).unwrap_or(u64::MAX);
        match addr.checked_add(len) {
            Some(end) if end <= BOOT_DATA_END => {
                self.next = end;
                Ok(addr)
            }
            _ => {
                Err(BootError::BootDataFull { file: self.file.clone(), what, base: BOOT_DATA_BASE, end: BOOT_DATA_END })
            }
        }
    }

    /// Allocate and write `bytes`.
    pub fn put(&mut self, bytes: &[u8], what: &'static str) -> Result<u64, BootError> {
        let addr = self.alloc(bytes.len() as u64, what)?;
        self.write(addr, bytes)?;
        Ok(addr)
    }

    /// Allocate and write `s` with a terminating NUL.
    pub fn put_cstr(&mut self, s: &str, what: &'static str) -> Result<u64, BootError> {
        let mut bytes = Vec::with_capacity(s.len() + 1);
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
        self.put(&bytes, what)
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
        self.mem.write(addr, bytes).map_err(|err| BootError::Memory { file: self.file.clone(), err })
    }
}

/// A little-endian structure image built field by field.
pub struct Record(pub Vec<u8>);

impl Record {
    pub fn new(len: usize) -> Self {
        Record(vec![0; len])
    }
    pub fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
}
