//! GNTTABOP_copy (Xen's gnttab_copy_one): copy bytes between guest frames
//! (DOMID_SELF only) and granted references, pinning each grant for the
//! duration of the copy.

use sim_core::memory::{Backing, PAGE_SIZE};
use sim_core::GuestMemory;

use super::abi::{st, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use super::ops::{lookup, Dom, Fields};
use super::GrantTable;
use crate::{DOMID_SELF, GUEST_DOMID};

/// One side of a copy as the guest described it.
struct Side {
    /// grant_ref_t (low 32 bits) or xen_pfn_t.
    u: u64,
    domid: u16,
    offset: u32,
    is_gref: bool,
}

/// A side made accessible: the frame and the byte range it may touch.
struct Claim {
    gfn: u64,
    start: u32,
    len: u32,
    /// The pinned reference and whether the pin is read-only.
    grant: Option<(u32, bool)>,
}

/// Xen's gnttab_copy_lock_domain.
fn lock_domain(side: &Side) -> Result<(), i16> {
    if side.domid != DOMID_SELF && !side.is_gref {
        return Err(st::PERMISSION_DENIED);
    }
    match lookup(side.domid) {
        Dom::Guest => Ok(()),
        // dom0 grants nothing in this model: it has no table.
        Dom::Dom0 | Dom::Missing => Err(st::BAD_DOMAIN),
    }
}

impl GrantTable {
    pub(super) fn copy_one(&mut self, mem: &GuestMemory, f: &Fields) -> i16 {
        let flags = f.u16(34);
        let len = f.u16(32) as u32;
        let side = |base: usize, flag: u16| Side {
            u: f.u64(base),
            domid: f.u16(base + 8),
            offset: f.u16(base + 10) as u32,
            is_gref: flags & flag != 0,
        };
        let (src, dst) = (side(0, GNTCOPY_SOURCE_GREF), side(16, GNTCOPY_DEST_GREF));
        if let Err(s) = lock_domain(&src).and_then(|()| lock_domain(&dst)) {
            return s;
        }
        let s = match self.claim(mem, &src, true) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let d = match self.claim(mem, &dst, false) {
            Ok(c) => c,
            Err(e) => {
                self.unclaim(&s);
                return e;
            }
        };
        let rc = copy_bytes(mem, len, &src, &s, &dst, &d);
        self.unclaim(&d);
        self.unclaim(&s);
        rc
    }

    /// Xen's gnttab_copy_claim_buf: pin the grant, or check the frame.
    fn claim(&mut self, mem: &GuestMemory, side: &Side, readonly: bool) -> Result<Claim, i16> {
        if side.is_gref {
            let gref = side.u as u32;
            let pin = self.acquire(mem, gref, GUEST_DOMID, readonly, false).map_err(|e| e.gntst())?;
            return Ok(Claim {
                gfn: pin.gfn,
                start: pin.start as u32,
                len: pin.length as u32,
                grant: Some((gref, readonly)),
            });
        }
        let backed = side.u.checked_mul(PAGE_SIZE).is_some_and(|gpa| mem.backing(gpa) != Backing::Mmio);
        if !backed {
            return Err(st::BAD_PAGE);
        }
        Ok(Claim { gfn: side.u, start: 0, len: PAGE_SIZE as u32, grant: None })
    }

    fn unclaim(&mut self, c: &Claim) {
        if let Some((gref, readonly)) = c.grant {
            self.release(gref, readonly);
        }
    }
}

/// Xen's gnttab_copy_buf: bounds, then the copy itself.
fn copy_bytes(mem: &GuestMemory, len: u32, src: &Side, s: &Claim, dst: &Side, d: &Claim) -> i16 {
    let page = PAGE_SIZE as u32;
    if src.offset + len > page || dst.offset + len > page {
        return st::BAD_COPY_ARG;
    }
    let outside = |side: &Side, c: &Claim| side.offset < c.start || side.offset + len > c.start.saturating_add(c.len);
    if outside(src, s) || outside(dst, d) {
        return st::GENERAL_ERROR;
    }
    let mut buf = vec![0u8; len as usize];
    // Both frames were checked to be backed, and the ranges lie in one page.
    let from = s.gfn.wrapping_mul(PAGE_SIZE).wrapping_add(src.offset as u64);
    let to = d.gfn.wrapping_mul(PAGE_SIZE).wrapping_add(dst.offset as u64);
    if mem.read(from, &mut buf).is_err() || mem.write(to, &buf).is_err() {
        return st::GENERAL_ERROR;
    }
    st::OKAY
}
