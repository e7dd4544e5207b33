//! Reading and writing grant entries in the shared (and v2 status) frames.
//! Every accessor tolerates an out-of-range reference (reads 0, writes
//! nothing) so that no guest value can make the host panic; callers check
//! `gref < nr_entries()` first where the ABI has an error for it.

use sim_core::OverlayPage;

use super::abi::{gtf, STATUS_ENTRY_SIZE, STATUS_PER_PAGE, V1_ENTRY_SIZE, V1_PER_PAGE, V2_ENTRY_SIZE, V2_PER_PAGE};
use super::GrantTable;

fn rd<const N: usize>(p: &OverlayPage, off: usize) -> [u8; N] {
    let mut b = [0u8; N];
    p.read(off, &mut b);
    b
}

/// A v2 entry as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EntryV2 {
    pub flags: u16,
    pub domid: u16,
    /// sub_page.page_off, or transitive.trans_domid.
    pub word4: u16,
    /// sub_page.length.
    pub word6: u16,
    /// full_page.frame / sub_page.frame; transitive.gref in the low half.
    pub frame: u64,
}

impl GrantTable {
    /// Entries in the current version.
    pub(super) fn nr_entries(&self) -> u32 {
        let per_page = if self.version == 2 { V2_PER_PAGE } else { V1_PER_PAGE };
        self.nr_frames().saturating_mul(per_page)
    }

    /// The shared page and byte offset of `gref`'s entry.
    fn slot(&self, gref: u32) -> Option<(&OverlayPage, usize)> {
        let (per_page, size) =
            if self.version == 2 { (V2_PER_PAGE, V2_ENTRY_SIZE) } else { (V1_PER_PAGE, V1_ENTRY_SIZE) };
        let page = self.shared.get((gref / per_page) as usize)?;
        Some((page, (gref % per_page) as usize * size))
    }

    /// (flags, domid): the header shared by v1 and v2 entries.
    pub(super) fn header(&self, gref: u32) -> (u16, u16) {
        match self.slot(gref) {
            Some((p, off)) => {
                let b: [u8; 4] = rd(p, off);
                (u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]]))
            }
            None => (0, 0),
        }
    }

    /// The v1 entry's frame.
    pub(super) fn frame_v1(&self, gref: u32) -> u32 {
        self.slot(gref).map(|(p, off)| u32::from_le_bytes(rd(p, off + 4))).unwrap_or(0)
    }

    pub(super) fn entry_v2(&self, gref: u32) -> EntryV2 {
        let Some((p, off)) = self.slot(gref) else {
            return EntryV2 { flags: 0, domid: 0, word4: 0, word6: 0, frame: 0 };
        };
        let b: [u8; 16] = rd(p, off);
        let w = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let mut f = [0u8; 8];
        f.copy_from_slice(&b[8..16]);
        EntryV2 { flags: w(0), domid: w(2), word4: w(4), word6: w(6), frame: u64::from_le_bytes(f) }
    }

    pub(super) fn write_v1(&self, gref: u32, flags: u16, domid: u16, frame: u32) {
        if let Some((p, off)) = self.slot(gref) {
            let mut b = [0u8; 8];
            b[0..2].copy_from_slice(&flags.to_le_bytes());
            b[2..4].copy_from_slice(&domid.to_le_bytes());
            b[4..8].copy_from_slice(&frame.to_le_bytes());
            p.write(off, &b);
        }
    }

    /// A v2 full_page entry (the pad word cleared).
    pub(super) fn write_v2_full(&self, gref: u32, flags: u16, domid: u16, frame: u64) {
        self.write_v2(gref, &EntryV2 { flags, domid, word4: 0, word6: 0, frame });
    }

    pub(super) fn write_v2(&self, gref: u32, e: &EntryV2) {
        if let Some((p, off)) = self.slot(gref) {
            let mut b = [0u8; 16];
            b[0..2].copy_from_slice(&e.flags.to_le_bytes());
            b[2..4].copy_from_slice(&e.domid.to_le_bytes());
            b[4..6].copy_from_slice(&e.word4.to_le_bytes());
            b[6..8].copy_from_slice(&e.word6.to_le_bytes());
            b[8..16].copy_from_slice(&e.frame.to_le_bytes());
            p.write(off, &b);
        }
    }

    fn set_flags_word(&self, gref: u32, flags: u16) {
        if let Some((p, off)) = self.slot(gref) {
            p.write(off, &flags.to_le_bytes());
        }
    }

    fn status_slot(&self, gref: u32) -> Option<(&OverlayPage, usize)> {
        let page = self.status.get((gref / STATUS_PER_PAGE) as usize)?;
        Some((page, (gref % STATUS_PER_PAGE) as usize * STATUS_ENTRY_SIZE))
    }

    /// The v2 status word of `gref`.
    pub(super) fn status_word(&self, gref: u32) -> u16 {
        self.status_slot(gref).map(|(p, off)| u16::from_le_bytes(rd(p, off))).unwrap_or(0)
    }

    pub(super) fn set_status_word(&self, gref: u32, v: u16) {
        if let Some((p, off)) = self.status_slot(gref) {
            p.write(off, &v.to_le_bytes());
        }
    }

    /// GTF_reading/GTF_writing as the guest sees them: in the entry's flags
    /// (v1) or the status frame (v2).
    pub fn access_flags(&self, gref: u32) -> u16 {
        let raw = if self.version == 2 { self.status_word(gref) } else { self.header(gref).0 };
        raw & (gtf::READING | gtf::WRITING)
    }

    /// Set `bits` in the place the version keeps access flags.
    pub(super) fn set_access(&self, gref: u32, bits: u16) {
        if self.version == 2 {
            self.set_status_word(gref, self.status_word(gref) | bits);
        } else {
            self.set_flags_word(gref, self.header(gref).0 | bits);
        }
    }

    /// Clear `bits` (Xen's gnttab_clear_flags: only these bits change).
    pub(super) fn clear_access(&self, gref: u32, bits: u16) {
        if bits == 0 {
            return;
        }
        if self.version == 2 {
            self.set_status_word(gref, self.status_word(gref) & !bits);
        } else {
            self.set_flags_word(gref, self.header(gref).0 & !bits);
        }
    }
}
