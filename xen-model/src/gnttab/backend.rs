//! dom0's side: backends map batches of the guest's grant references and
//! access the granted pages through guest memory. A reference is pinned once
//! per mapping that names it (Xen's active entry is the cache: a second map
//! of the same reference reuses the frame captured by the first and only
//! counts up), and the access flags stay set until its last mapping goes.

use sim_core::memory::PAGE_SIZE;
use sim_core::GuestMemory;

use super::pin::PinError;
use super::GrantTable;
use crate::DOM0;

/// A live batch mapping made by `GrantTable::map`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapHandle(pub u32);

/// What a backend did wrong (or what the guest refused it). Never fatal.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant reference {0} is beyond the guest's grant table")]
    BadRef(u32),
    #[error("grant reference {0} does not permit dom0 access to a whole page")]
    NotGranted(u32),
    #[error("grant reference {0} is read-only; a writable mapping was asked for")]
    ReadOnlyGrant(u32),
    #[error("grant reference {0} is transitive, which dom0 cannot map")]
    Transitive(u32),
    #[error("grant reference {0} names a frame that is not guest memory")]
    BadFrame(u32),
    #[error("grant reference {0} is mapped too many times")]
    TooManyMappings(u32),
    #[error("an empty batch of grant references")]
    EmptyBatch,
    #[error("no live mapping with handle {0:?}")]
    UnknownHandle(MapHandle),
    #[error("mapping {handle:?} has no page {index}")]
    BadIndex { handle: MapHandle, index: usize },
    #[error("{len} bytes at offset {offset} run past the end of the page")]
    OutOfPage { offset: usize, len: usize },
    #[error("mapping {0:?} is read-only")]
    NotWritable(MapHandle),
    #[error("grant reference {0} is not mapped by dom0")]
    NotMapped(u32),
    #[error("granted frame {0:#x} is no longer backed by guest memory")]
    Unbacked(u64),
}

impl GrantError {
    fn from_pin(e: PinError, gref: u32) -> Self {
        match e {
            PinError::BadRef => GrantError::BadRef(gref),
            PinError::Denied => GrantError::NotGranted(gref),
            PinError::ReadOnly => GrantError::ReadOnlyGrant(gref),
            PinError::Transitive => GrantError::Transitive(gref),
            PinError::BadPage => GrantError::BadFrame(gref),
            PinError::Overflow => GrantError::TooManyMappings(gref),
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Mapping {
    refs: Vec<u32>,
    writable: bool,
}

impl GrantTable {
    /// Map the guest's `refs` for dom0, read-only or writable, all or
    /// nothing: if one reference is refused, the ones before it are
    /// released again and the error names the refused one.
    pub fn map(&mut self, mem: &GuestMemory, refs: &[u32], writable: bool) -> Result<MapHandle, GrantError> {
        if refs.is_empty() {
            return Err(GrantError::EmptyBatch);
        }
        for (i, &gref) in refs.iter().enumerate() {
            if let Err(e) = self.acquire(mem, gref, DOM0, !writable, true) {
                for &done in &refs[..i] {
                    self.release(done, !writable);
                }
                return Err(GrantError::from_pin(e, gref));
            }
        }
        // Lowest free handle at or after the last one given: deterministic.
        let mut h = self.next_handle;
        while self.maps.contains_key(&h) {
            h = h.wrapping_add(1);
        }
        self.next_handle = h.wrapping_add(1);
        self.maps.insert(h, Mapping { refs: refs.to_vec(), writable });
        Ok(MapHandle(h))
    }

    /// (readers, writers) dom0's live mappings hold on each reference.
    pub(super) fn dom0_pins(&self) -> std::collections::BTreeMap<u32, (u32, u32)> {
        let mut pins = std::collections::BTreeMap::new();
        for m in self.maps.values() {
            for &gref in &m.refs {
                let e: &mut (u32, u32) = pins.entry(gref).or_default();
                if m.writable {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
            }
        }
        pins
    }

    /// Drop a mapping; references whose last mapping this was lose their
    /// access flags.
    pub fn unmap(&mut self, handle: MapHandle) -> Result<(), GrantError> {
        let m = self.maps.remove(&handle.0).ok_or(GrantError::UnknownHandle(handle))?;
        for gref in m.refs {
            self.release(gref, !m.writable);
        }
        Ok(())
    }

    /// The references a live mapping covers, in page order.
    pub fn mapping_refs(&self, handle: MapHandle) -> Result<&[u32], GrantError> {
        self.maps.get(&handle.0).map(|m| m.refs.as_slice()).ok_or(GrantError::UnknownHandle(handle))
    }

    /// The guest frame behind page `index` of a mapping (the frame captured
    /// when the reference was first mapped).
    pub fn mapped_gfn(&self, handle: MapHandle, index: usize) -> Result<u64, GrantError> {
        let m = self.maps.get(&handle.0).ok_or(GrantError::UnknownHandle(handle))?;
        let gref = *m.refs.get(index).ok_or(GrantError::BadIndex { handle, index })?;
        self.ref_gfn(gref, false)
    }

    /// Read from page `index` of a mapping.
    pub fn read(
        &self,
        mem: &GuestMemory,
        handle: MapHandle,
        index: usize,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), GrantError> {
        let gpa = self.page_gpa(self.mapped_gfn(handle, index)?, offset, buf.len())?;
        mem.read(gpa, buf).map_err(|_| GrantError::Unbacked(gpa >> 12))
    }

    /// Write to page `index` of a writable mapping.
    pub fn write(
        &self,
        mem: &GuestMemory,
        handle: MapHandle,
        index: usize,
        offset: usize,
        buf: &[u8],
    ) -> Result<(), GrantError> {
        let m = self.maps.get(&handle.0).ok_or(GrantError::UnknownHandle(handle))?;
        if !m.writable {
            return Err(GrantError::NotWritable(handle));
        }
        let gpa = self.page_gpa(self.mapped_gfn(handle, index)?, offset, buf.len())?;
        mem.write(gpa, buf).map_err(|_| GrantError::Unbacked(gpa >> 12))
    }

    /// Read a granted page by reference; the reference must be mapped by dom0.
    pub fn read_ref(&self, mem: &GuestMemory, gref: u32, offset: usize, buf: &mut [u8]) -> Result<(), GrantError> {
        let gpa = self.page_gpa(self.ref_gfn(gref, false)?, offset, buf.len())?;
        mem.read(gpa, buf).map_err(|_| GrantError::Unbacked(gpa >> 12))
    }

    /// Write a granted page by reference; dom0 must hold a writable mapping of it.
    pub fn write_ref(&self, mem: &GuestMemory, gref: u32, offset: usize, buf: &[u8]) -> Result<(), GrantError> {
        let gpa = self.page_gpa(self.ref_gfn(gref, true)?, offset, buf.len())?;
        mem.write(gpa, buf).map_err(|_| GrantError::Unbacked(gpa >> 12))
    }

    fn ref_gfn(&self, gref: u32, write: bool) -> Result<u64, GrantError> {
        match self.active.get(&gref) {
            Some(a) if a.domid == DOM0 && (!write || a.writers > 0) => Ok(a.gfn),
            _ => Err(GrantError::NotMapped(gref)),
        }
    }

    fn page_gpa(&self, gfn: u64, offset: usize, len: usize) -> Result<u64, GrantError> {
        if offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE as usize) {
            return Err(GrantError::OutOfPage { offset, len });
        }
        let base = gfn.checked_mul(PAGE_SIZE).ok_or(GrantError::Unbacked(gfn))?;
        Ok(base + offset as u64)
    }
}
