//! Grant tables (xen/common/grant_table.c semantics) for the guest, domid 1:
//! the shared frames the guest writes its entries into (v1 and v2, with v2
//! status frames), the guest's GNTTABOP_* hypercalls, and the dom0 side that
//! backends use to map granted pages (the mapping cache).
//!
//! Entries live in guest-visible overlay pages, so every operation reads them
//! afresh; Xen's private "active entry" (pin counts and the frame captured at
//! the first pin) is kept here in `active`.

pub mod abi;
mod backend;
pub mod compat;
mod copy;
mod entry;
mod ops;
mod pin;
mod snapshot;

use std::collections::BTreeMap;

use sim_core::{GuestMemory, OverlayPage};

use crate::errno::{Errno, EINVAL};
use crate::DOM0;
use abi::{grant_to_status_frames, gtf, INITIAL_NR_GRANT_FRAMES, RESERVED_CONSOLE, RESERVED_XENSTORE, STATUS_PER_PAGE};
use backend::Mapping;
pub use backend::{GrantError, MapHandle};
use pin::Active;
pub use snapshot::GrantTableState;

/// The guest's grant table.
#[derive(Debug)]
pub struct GrantTable {
    version: u32,
    max_frames: u32,
    shared: Vec<OverlayPage>,
    /// v2 only: one u16 of GTF_reading/GTF_writing per entry.
    status: Vec<OverlayPage>,
    /// Pinned entries (Xen's active grant table), by grant reference.
    active: BTreeMap<u32, Active>,
    /// dom0's live mappings, by handle.
    maps: BTreeMap<u32, Mapping>,
    next_handle: u32,
    /// Frames the table gave up (v2 status frames on a switch to v1 or a
    /// reset) that may still be in the guest's physmap.
    released: Vec<OverlayPage>,
}

impl GrantTable {
    /// A version-1 table of `INITIAL_NR_GRANT_FRAMES` frames that may grow to
    /// `max_frames` (at least 1: Xen refuses smaller limits).
    pub fn new(max_frames: u32) -> Self {
        let mut t = GrantTable {
            version: 1,
            max_frames: max_frames.max(INITIAL_NR_GRANT_FRAMES),
            shared: Vec::new(),
            status: Vec::new(),
            active: BTreeMap::new(),
            maps: BTreeMap::new(),
            next_handle: 0,
            released: Vec::new(),
        };
        t.grow(INITIAL_NR_GRANT_FRAMES);
        t
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn max_frames(&self) -> u32 {
        self.max_frames
    }

    /// Shared frames currently allocated.
    pub fn nr_frames(&self) -> u32 {
        self.shared.len() as u32
    }

    /// v2 status frames currently allocated (0 in v1).
    pub fn nr_status_frames(&self) -> u32 {
        self.status.len() as u32
    }

    /// The overlay page backing shared frame `idx` (or status frame `idx`
    /// when `status`, v2 only), growing the table as Xen's gnttab_map_frame
    /// does. EINVAL beyond `max_frames` and for status frames in v1.
    pub fn frame(&mut self, idx: u32, status: bool) -> Result<OverlayPage, Errno> {
        if status {
            if self.version != 2 {
                return Err(Errno(EINVAL));
            }
            if idx >= self.nr_status_frames() {
                // The shared frames whose status entries fill idx+1 status frames.
                let want = idx
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(STATUS_PER_PAGE / abi::V2_PER_PAGE))
                    .ok_or(Errno(EINVAL))?;
                if want <= self.max_frames {
                    self.grow(want);
                }
            }
            return self.status.get(idx as usize).cloned().ok_or(Errno(EINVAL));
        }
        if idx >= self.nr_frames() {
            let want = idx.checked_add(1).ok_or(Errno(EINVAL))?;
            if want <= self.max_frames {
                self.grow(want);
            }
        }
        self.shared.get(idx as usize).cloned().ok_or(Errno(EINVAL))
    }

    /// The page backing shared (or v2 status) frame `idx`, if allocated;
    /// unlike `frame`, never grows the table.
    pub fn frame_page(&self, idx: u32, status: bool) -> Option<&OverlayPage> {
        if status {
            self.status.get(idx as usize)
        } else {
            self.shared.get(idx as usize)
        }
    }

    /// Consistency of pins, dom0 mappings and the guest-visible access flags
    /// (for fuzzing and tests; assumes the guest has not edited the access
    /// bits behind Xen's back): every pinned entry has GTF_reading, and
    /// GTF_writing exactly while it has writers; unpinned entries have
    /// neither; dom0's pins are exactly what its live mappings account for.
    /// `scan_unpinned` also reads every unpinned entry (slow on big tables).
    pub fn check_invariants(&self, scan_unpinned: bool) -> Result<(), String> {
        let dom0 = self.dom0_pins();
        for (&gref, a) in &self.active {
            if gref >= self.nr_entries() {
                return Err(format!("pinned gref {gref} beyond the table ({} entries)", self.nr_entries()));
            }
            if a.readers == 0 && a.writers == 0 {
                return Err(format!("gref {gref} active with no pins"));
            }
            let f = self.access_flags(gref);
            let want = gtf::READING | if a.writers > 0 { gtf::WRITING } else { 0 };
            if f != want {
                return Err(format!("gref {gref} pinned {a:?} has access flags {f:#x}, want {want:#x}"));
            }
            if a.domid == DOM0 && dom0.get(&gref) != Some(&(a.readers, a.writers)) {
                return Err(format!("gref {gref} dom0 pins {a:?}, mappings account for {:?}", dom0.get(&gref)));
            }
        }
        for (&gref, &pins) in &dom0 {
            if self.pins(gref, DOM0) != pins {
                return Err(format!("dom0 maps gref {gref} {pins:?} times but it is not pinned so"));
            }
        }
        if scan_unpinned {
            // Page by page: the access bits live in the entries (v1) or the
            // status frames (v2), one u16 per entry at `stride` bytes.
            let (pages, stride) = if self.version == 2 { (&self.status, 2) } else { (&self.shared, 8) };
            let mut buf = [0u8; 4096];
            for (i, page) in pages.iter().enumerate() {
                page.read(0, &mut buf);
                for (j, e) in buf.chunks_exact(stride).enumerate() {
                    let gref = (i * 4096 / stride + j) as u32;
                    let bits = u16::from_le_bytes([e[0], e[1]]) & (gtf::READING | gtf::WRITING);
                    if bits != 0 && gref < self.nr_entries() && !self.active.contains_key(&gref) {
                        return Err(format!("unpinned gref {gref} has access flags {bits:#x}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Soft reset: back to v1 with every entry cleared and every dom0
    /// mapping dropped. Shared frames stay allocated (and mapped where the
    /// guest put them); v2 status frames are released.
    pub fn reset(&mut self) {
        self.maps.clear();
        self.active.clear();
        self.released.append(&mut self.status);
        self.version = 1;
        for p in &self.shared {
            p.write(0, &[0u8; 4096]);
        }
    }

    /// Entries 0 (console) and 1 (xenstore) permit dom0 access to the ring
    /// frames, as the toolstack seeds them; `None` leaves an entry alone.
    pub fn seed_reserved(&mut self, console_gfn: Option<u64>, xenstore_gfn: Option<u64>) {
        for (gref, gfn) in [(RESERVED_CONSOLE, console_gfn), (RESERVED_XENSTORE, xenstore_gfn)] {
            let Some(gfn) = gfn else { continue };
            if !self.write_permit(gref, DOM0, gfn) {
                tracing::warn!(gref, gfn, "grant table: reserved frame not representable in v{}", self.version);
            }
        }
    }

    /// Drain the frames the table has given up and return every guest frame
    /// where one of them is still mapped. Xen removes such frames from the
    /// guest's physmap; the platform must unmap these overlays.
    pub fn take_released_gfns(&mut self, mem: &GuestMemory) -> Vec<u64> {
        let released = std::mem::take(&mut self.released);
        mem.overlays().filter(|(_, p)| released.iter().any(|r| r.same_page(p))).map(|(gfn, _)| gfn).collect()
    }

    /// Grow to `frames` shared frames (and the status frames v2 needs).
    /// Callers check `frames <= max_frames`.
    fn grow(&mut self, frames: u32) {
        let frames = frames.max(INITIAL_NR_GRANT_FRAMES).min(self.max_frames);
        while self.nr_frames() < frames {
            self.shared.push(OverlayPage::new());
        }
        if self.version == 2 {
            self.populate_status();
        }
    }

    /// Allocate the status frames covering every current shared frame.
    fn populate_status(&mut self) {
        while self.nr_status_frames() < grant_to_status_frames(self.nr_frames()) {
            self.status.push(OverlayPage::new());
        }
    }

    /// The guest frame where `page` is mapped (the lowest if several), or
    /// INVALID_GFN: what Xen's M2P lookup gives for a table frame.
    fn gfn_of(mem: &GuestMemory, page: &OverlayPage) -> u64 {
        mem.overlays().find(|(_, p)| p.same_page(page)).map(|(gfn, _)| gfn).unwrap_or(abi::INVALID_GFN)
    }

    /// Write a full-page permit_access entry in the current version's layout;
    /// false when the frame does not fit (v1 frames are 32 bits).
    fn write_permit(&mut self, gref: u32, domid: u16, gfn: u64) -> bool {
        if gref >= self.nr_entries() {
            return false;
        }
        if self.version == 1 {
            let Ok(frame) = u32::try_from(gfn) else { return false };
            self.write_v1(gref, gtf::PERMIT_ACCESS, domid, frame);
        } else {
            self.write_v2_full(gref, gtf::PERMIT_ACCESS, domid, gfn);
            self.set_status_word(gref, 0);
        }
        true
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
