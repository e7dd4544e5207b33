//! Pinning grant entries (Xen's acquire_grant_for_copy / map_grant_ref and
//! their release): validate the entry for the accessing domain, set
//! GTF_reading/GTF_writing, capture the frame at the first pin, and clear the
//! flags again when the last reader/writer goes.

use sim_core::memory::{Backing, PAGE_SHIFT};
use sim_core::GuestMemory;

use super::abi::{gtf, st};
use super::GrantTable;

/// Xen's active grant entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Active {
    /// The domain the pins belong to.
    pub domid: u16,
    pub readers: u32,
    pub writers: u32,
    /// Frame captured at the first pin; later edits of the entry do not move it.
    pub gfn: u64,
    pub start: u16,
    pub length: u16,
    pub sub_page: bool,
}

impl Active {
    fn pins(&self) -> u32 {
        self.readers.saturating_add(self.writers)
    }
}

/// The part of a frame a pin grants access to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pin {
    pub gfn: u64,
    pub start: u16,
    pub length: u16,
}

/// Why a pin was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PinError {
    /// Reference beyond the table.
    BadRef,
    /// Wrong type (not permit_access, or sub-page for a map), wrong domid,
    /// or already pinned by another domain.
    Denied,
    /// Write access to a GTF_readonly grant.
    ReadOnly,
    /// A transitive grant: its chain always ends here (see `acquire`).
    Transitive,
    /// The entry's frame is not guest memory.
    BadPage,
    /// A pin counter would overflow.
    Overflow,
}

impl PinError {
    /// The GNTST code Xen reports for it.
    pub fn gntst(self) -> i16 {
        match self {
            PinError::BadRef => st::BAD_GNTREF,
            PinError::BadPage => st::BAD_PAGE,
            _ => st::GENERAL_ERROR,
        }
    }
}

/// Xen's get_paged_frame for our guest: the frame must be RAM or an overlay.
fn check_frame(mem: &GuestMemory, gfn: u64) -> Result<(), PinError> {
    let gpa = gfn.checked_mul(1 << PAGE_SHIFT).ok_or(PinError::BadPage)?;
    match mem.backing(gpa) {
        Backing::Ram | Backing::Overlay => Ok(()),
        Backing::Mmio => Err(PinError::BadPage),
    }
}

impl GrantTable {
    /// Pin `gref` for domain `ldom`, read-only or writable. `map` applies
    /// the stricter mapping rules (no sub-page or transitive grants, whole
    /// page). On error nothing changes, flags included.
    pub(super) fn acquire(
        &mut self,
        mem: &GuestMemory,
        gref: u32,
        ldom: u16,
        readonly: bool,
        map: bool,
    ) -> Result<Pin, PinError> {
        if gref >= self.nr_entries() {
            return Err(PinError::BadRef);
        }
        let act = self.active.get(&gref).copied();
        if let Some(a) = act {
            if a.domid != ldom || (map && a.sub_page) {
                return Err(PinError::Denied);
            }
            if a.pins() == u32::MAX {
                return Err(PinError::Overflow);
            }
        }
        let upgrading = !readonly && act.is_some_and(|a| a.writers == 0);
        let first = act.is_none() || upgrading;
        // Xen looks at the entry's type only when it (re)validates the entry:
        // a map on the first pin, a copy on the first pin or an upgrade.
        // Later pins of a pinned entry just count, whatever it says now.
        let transitive = self.version == 2 && self.header(gref).0 & gtf::TYPE_MASK == gtf::TRANSITIVE;
        if transitive && (act.is_none() || (!map && first)) {
            // Xen follows the chain into trans_domid's table. Self-reference
            // is refused and no other domain here has a table, so the chain
            // always fails, after which Xen clears the flags it set. Maps
            // refuse transitive grants outright (mapflag in _set_status).
            if map {
                return Err(PinError::Transitive);
            }
            if first {
                self.set_status(gref, readonly, map, ldom, act.is_some(), true)?;
            }
            self.undo_status(gref, readonly);
            return Err(PinError::Transitive);
        }
        if first {
            self.set_status(gref, readonly, map, ldom, act.is_some(), false)?;
            let (fresh, sub_page) = self.entry_frame(gref, map);
            if act.is_none() {
                // The frame is looked up (and captured) at the first pin
                // only; an upgrade keeps the captured one.
                if let Err(e) = check_frame(mem, fresh.gfn) {
                    self.undo_status(gref, readonly);
                    return Err(e);
                }
                let a = Active {
                    domid: ldom,
                    readers: 0,
                    writers: 0,
                    gfn: fresh.gfn,
                    start: fresh.start,
                    length: fresh.length,
                    sub_page,
                };
                self.active.insert(gref, a);
            }
        }
        let Some(a) = self.active.get_mut(&gref) else { return Err(PinError::Denied) };
        if readonly {
            a.readers += 1;
        } else {
            a.writers += 1;
        }
        Ok(Pin { gfn: a.gfn, start: a.start, length: a.length })
    }

    /// Drop one pin taken by `acquire`.
    pub(super) fn release(&mut self, gref: u32, readonly: bool) {
        let Some(a) = self.active.get_mut(&gref) else { return };
        let mut clear = 0;
        if readonly {
            a.readers = a.readers.saturating_sub(1);
        } else {
            a.writers = a.writers.saturating_sub(1);
            if a.writers == 0 {
                clear |= gtf::WRITING;
            }
        }
        if a.pins() == 0 {
            clear |= gtf::READING;
            self.active.remove(&gref);
        }
        self.clear_access(gref, clear);
    }

    /// Xen's _set_status_v1/_v2: check the entry (only its readonly bit if
    /// already pinned) and set the access flags.
    fn set_status(
        &self,
        gref: u32,
        readonly: bool,
        map: bool,
        ldom: u16,
        pinned: bool,
        transitive_ok: bool,
    ) -> Result<(), PinError> {
        let (flags, domid) = self.header(gref);
        let mask = if map { gtf::TYPE_MASK | gtf::SUB_PAGE } else { gtf::TYPE_MASK };
        let ty = flags & mask;
        let type_ok = ty == gtf::PERMIT_ACCESS || (transitive_ok && ty == gtf::TRANSITIVE);
        if !pinned && (!type_ok || domid != ldom) {
            return Err(PinError::Denied);
        }
        if !readonly && flags & gtf::READONLY != 0 {
            return Err(PinError::ReadOnly);
        }
        self.set_access(gref, if readonly { gtf::READING } else { gtf::READING | gtf::WRITING });
        Ok(())
    }

    /// After a failed first pin or upgrade: clear what `set_status` set
    /// beyond what the remaining pins justify.
    fn undo_status(&self, gref: u32, readonly: bool) {
        let act = self.active.get(&gref);
        let mut clear = 0;
        if !readonly && act.is_none_or(|a| a.writers == 0) {
            clear |= gtf::WRITING;
        }
        if act.is_none_or(|a| a.pins() == 0) {
            clear |= gtf::READING;
        }
        self.clear_access(gref, clear);
    }

    /// The frame and byte range the entry grants now: v1 frame, v2
    /// full_page, or (copy only) v2 sub_page; and whether it is a sub-page.
    fn entry_frame(&self, gref: u32, map: bool) -> (Pin, bool) {
        if self.version == 1 {
            return (Pin { gfn: self.frame_v1(gref) as u64, start: 0, length: 4096 }, false);
        }
        let e = self.entry_v2(gref);
        if !map && e.flags & gtf::SUB_PAGE != 0 {
            (Pin { gfn: e.frame, start: e.word4, length: e.word6 }, true)
        } else {
            (Pin { gfn: e.frame, start: 0, length: 4096 }, false)
        }
    }

    /// (readers, writers) pinned by `domid` on `gref`.
    pub fn pins(&self, gref: u32, domid: u16) -> (u32, u32) {
        self.active.get(&gref).filter(|a| a.domid == domid).map(|a| (a.readers, a.writers)).unwrap_or((0, 0))
    }

    /// Whether any domain has `gref` pinned.
    pub(super) fn is_pinned(&self, gref: u32) -> bool {
        self.active.contains_key(&gref)
    }
}
