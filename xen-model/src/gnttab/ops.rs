//! GNTTABOP_* from the guest (Xen's do_grant_table_op), for an HVM/PVH
//! (auto-translated) guest: frame numbers are guest frames, and the guest's
//! own map_grant_ref cannot succeed (see `map_one`).

use sim_core::GuestMemory;

use super::abi::{
    gntmap, grant_to_status_frames, gtf, layout as l, op, st, GNTTABOP_CMD_MASK, GNTTAB_CACHE_CLEAN,
    GNTTAB_CACHE_INVAL, NR_RESERVED_ENTRIES,
};
use super::entry::EntryV2;
use super::GrantTable;
use crate::errno::{Errno, XenResult, EBUSY, EINVAL, ENOSYS, EOPNOTSUPP, EPERM, ERANGE, ESRCH};
use crate::guest::GuestVirt;
use crate::{DOM0, DOMID_SELF, GUEST_DOMID};

/// Xen's EILSEQ (xen/include/public/errno.h).
const EILSEQ: i64 = 84;

/// What a domid in an argument names, as Xen's rcu_lock_domain_by_any_id
/// would find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dom {
    /// The calling guest (DOMID_SELF or its own id).
    Guest,
    /// dom0 exists, but the guest may not act on it (XSM_TARGET) and it has
    /// no grant table in this model.
    Dom0,
    Missing,
}

pub(super) fn lookup(domid: u16) -> Dom {
    match domid {
        DOMID_SELF | GUEST_DOMID => Dom::Guest,
        DOM0 => Dom::Dom0,
        _ => Dom::Missing,
    }
}

/// Little-endian fields of an op structure copied from the guest.
pub(super) struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b = [0u8; N];
        if let Some(s) = self.0.get(off..off + N) {
            b.copy_from_slice(s);
        }
        b
    }
    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes(off))
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes(off))
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes(off))
    }
}

impl GrantTable {
    /// GNTTABOP `cmd` on `count` structures at guest-virtual `uop`. Per-op
    /// results go to each structure's status field; the return value is
    /// do_grant_table_op's (0, or a negative errno as `Err`).
    pub fn hypercall(&mut self, g: &GuestVirt, mem: &GuestMemory, cmd: u32, uop: u64, count: u32) -> XenResult<i64> {
        self.hypercall_abi(g, mem, cmd, uop, count, false)
    }

    /// `hypercall` for a 64-bit (`compat` false) or 32-bit caller, whose
    /// structures use the compat layouts (see `compat`).
    pub fn hypercall_abi(
        &mut self,
        g: &GuestVirt,
        mem: &GuestMemory,
        cmd: u32,
        uop: u64,
        count: u32,
        compat: bool,
    ) -> XenResult<i64> {
        if (count as i32) < 0 {
            return Err(Errno(EINVAL));
        }
        let opaque = cmd & !GNTTABOP_CMD_MASK;
        let cmd = cmd & GNTTABOP_CMD_MASK;
        if cmd != op::CACHE_FLUSH && opaque != 0 {
            return Err(Errno(EINVAL));
        }
        if compat {
            use super::compat::{copy_to_native, layout as c, transfer_to_native};
            match cmd {
                op::SETUP_TABLE => return self.setup_table_compat(g, mem, uop, count),
                op::GET_STATUS_FRAMES => return self.get_status_frames_compat(g, mem, uop, count),
                op::TRANSFER => {
                    return self.each_op_xlat(
                        g,
                        uop,
                        count,
                        c::TRANSFER_SIZE,
                        c::TRANSFER_STATUS,
                        transfer_to_native,
                        |_, f| transfer_one(mem, f),
                    )
                }
                op::COPY => {
                    return self.each_op_xlat(g, uop, count, c::COPY_SIZE, c::COPY_STATUS, copy_to_native, |t, f| {
                        t.copy_one(mem, f)
                    })
                }
                _ => {}
            }
        }
        match cmd {
            op::MAP_GRANT_REF => self.each_op(g, uop, count, l::MAP_SIZE, l::MAP_STATUS, |t, f| t.map_one(mem, f)),
            // The guest never holds a mapping (map_one), so no handle is live.
            op::UNMAP_GRANT_REF => self.each_op(g, uop, count, l::UNMAP_SIZE, l::UNMAP_STATUS, |_, _| st::BAD_HANDLE),
            op::UNMAP_AND_REPLACE => {
                self.each_op(g, uop, count, l::UNMAP_REPLACE_SIZE, l::UNMAP_REPLACE_STATUS, |_, _| st::BAD_HANDLE)
            }
            op::SETUP_TABLE => self.setup_table(g, mem, uop, count),
            op::TRANSFER => {
                self.each_op(g, uop, count, l::TRANSFER_SIZE, l::TRANSFER_STATUS, |_, f| transfer_one(mem, f))
            }
            op::COPY => self.each_op(g, uop, count, l::COPY_SIZE, l::COPY_STATUS, |t, f| t.copy_one(mem, f)),
            op::QUERY_SIZE => self.query_size(g, uop, count),
            op::SET_VERSION => {
                let r = self.set_version_op(g, uop);
                // Only frames still in the physmap need the platform's attention.
                self.released.retain(|p| mem.overlays().any(|(_, q)| q.same_page(p)));
                r
            }
            op::GET_STATUS_FRAMES => self.get_status_frames(g, mem, uop, count),
            op::GET_VERSION => self.get_version(g, uop),
            op::SWAP_GRANT_REF => self.each_op(g, uop, count, l::SWAP_SIZE, l::SWAP_STATUS, |t, f| t.swap_one(f)),
            op::CACHE_FLUSH => cache_flush(g, mem, uop, count, opaque),
            // Includes dump_table, which Xen no longer implements.
            _ => Err(Errno(ENOSYS)),
        }
    }

    /// The loop shared by the batched ops: copy each structure in, run `f`,
    /// write its status field back. A fault stops the batch with -EFAULT.
    fn each_op(
        &mut self,
        g: &GuestVirt,
        uop: u64,
        count: u32,
        size: u64,
        status_off: u64,
        f: impl FnMut(&mut Self, &Fields) -> i16,
    ) -> XenResult<i64> {
        self.each_op_xlat(g, uop, count, size, status_off, |b| b.to_vec(), f)
    }

    /// `each_op` over structures of another layout, each translated to the
    /// native one by `xlat` before `f` sees it.
    #[allow(clippy::too_many_arguments)]
    fn each_op_xlat(
        &mut self,
        g: &GuestVirt,
        uop: u64,
        count: u32,
        size: u64,
        status_off: u64,
        xlat: impl Fn(&[u8]) -> Vec<u8>,
        mut f: impl FnMut(&mut Self, &Fields) -> i16,
    ) -> XenResult<i64> {
        let mut buf = vec![0u8; size as usize];
        for i in 0..count as u64 {
            let at = uop.wrapping_add(i.wrapping_mul(size));
            g.read(at, &mut buf)?;
            let status = f(self, &Fields(&xlat(&buf)));
            g.write_u16(at.wrapping_add(status_off), status as u16)?;
        }
        Ok(0)
    }

    /// map_grant_ref from the guest. Only its own table exists here, and an
    /// HVM guest mapping its own grant would need the granted frame aliased
    /// at `host_addr` in its physmap, which guest memory cannot express. So
    /// after all of Xen's checks (each with Xen's status), the mapping step
    /// fails as Xen's create_grant_p2m_mapping failure does: general_error,
    /// with the pin and flags undone.
    fn map_one(&mut self, mem: &GuestMemory, f: &Fields) -> i16 {
        let flags = f.u32(l::MAP_FLAGS as usize);
        let gref = f.u32(l::MAP_REF as usize);
        let dom = f.u16(l::MAP_DOM as usize);
        if flags & (gntmap::DEVICE_MAP | gntmap::HOST_MAP) == 0 {
            return st::BAD_GNTREF;
        }
        if flags & (gntmap::DEVICE_MAP | gntmap::APPLICATION_MAP | gntmap::CONTAINS_PTE) != 0 {
            return st::GENERAL_ERROR;
        }
        // rcu_lock_domain_by_id: DOMID_SELF is not accepted; dom0 has no table here.
        if dom != GUEST_DOMID {
            return st::BAD_DOMAIN;
        }
        let readonly = flags & gntmap::READONLY != 0;
        match self.acquire(mem, gref, GUEST_DOMID, readonly, true) {
            Err(e) => e.gntst(),
            Ok(_) => {
                self.release(gref, readonly);
                st::GENERAL_ERROR
            }
        }
    }

    fn setup_table(&mut self, g: &GuestVirt, mem: &GuestMemory, uop: u64, count: u32) -> XenResult<i64> {
        if count != 1 {
            return Err(Errno(EINVAL));
        }
        let mut b = [0u8; l::SETUP_SIZE];
        g.read(uop, &mut b)?;
        let f = Fields(&b);
        let (dom, nr, list) = (f.u16(0), f.u32(4), f.u64(16));
        let status = match self.setup_frames(mem, dom, nr) {
            Err(s) => s,
            Ok(frames) => {
                let mut status = st::OKAY;
                for (i, gfn) in frames.into_iter().enumerate() {
                    if g.write_u64(list.wrapping_add(8 * i as u64), gfn).is_err() {
                        status = st::BAD_VIRT_ADDR;
                    }
                }
                status
            }
        };
        g.write_u16(uop.wrapping_add(l::SETUP_STATUS), status as u16)?;
        Ok(0)
    }

    /// setup_table's work for both ABIs: grow the table to `nr` frames and
    /// list their GFNs (INVALID_GFN for a frame the auto-translated guest
    /// has not placed with add_to_physmap), or the op's error status.
    pub(super) fn setup_frames(&mut self, mem: &GuestMemory, dom: u16, nr: u32) -> Result<Vec<u64>, i16> {
        match lookup(dom) {
            Dom::Missing => Err(st::BAD_DOMAIN),
            Dom::Dom0 => Err(st::PERMISSION_DENIED),
            Dom::Guest if nr > self.max_frames => Err(st::GENERAL_ERROR),
            Dom::Guest => {
                let short_of_status = self.version == 2 && grant_to_status_frames(nr) > self.nr_status_frames();
                if nr > self.nr_frames() || short_of_status {
                    self.grow(nr);
                }
                Ok(self.shared.iter().take(nr as usize).map(|p| Self::gfn_of(mem, p)).collect())
            }
        }
    }

    fn query_size(&self, g: &GuestVirt, uop: u64, count: u32) -> XenResult<i64> {
        if count != 1 {
            return Err(Errno(EINVAL));
        }
        let mut b = [0u8; l::QUERY_SIZE];
        g.read(uop, &mut b)?;
        let status = match lookup(Fields(&b).u16(0)) {
            Dom::Missing => st::BAD_DOMAIN,
            Dom::Dom0 => st::PERMISSION_DENIED,
            Dom::Guest => {
                b[4..8].copy_from_slice(&self.nr_frames().to_le_bytes());
                b[8..12].copy_from_slice(&self.max_frames.to_le_bytes());
                st::OKAY
            }
        };
        b[12..14].copy_from_slice(&status.to_le_bytes());
        g.write(uop, &b)?;
        Ok(0)
    }

    fn set_version_op(&mut self, g: &GuestVirt, uop: u64) -> XenResult<i64> {
        let requested = g.read_u32(uop)?;
        let res = self.set_version(requested);
        // The version in force goes back to the guest whatever happened.
        g.write_u32(uop, self.version)?;
        res.map(|()| 0)
    }

    /// Switch versions as Xen's gnttab_set_version does: refused (EBUSY)
    /// while any non-reserved entry is pinned; the reserved entries 0..8 are
    /// converted (ERANGE if a v2 one cannot be expressed in v1), all others
    /// cleared; v2 status frames come and go with v2.
    pub fn set_version(&mut self, version: u32) -> Result<(), Errno> {
        if version != 1 && version != 2 {
            return Err(Errno(EINVAL));
        }
        if version == self.version {
            return Ok(());
        }
        if self.active.range(NR_RESERVED_ENTRIES..).next().is_some() {
            return Err(Errno(EBUSY));
        }
        // The reserved entries in v1 form: (flags incl. access bits, domid, frame).
        let mut reserved = [(0u16, 0u16, 0u32); NR_RESERVED_ENTRIES as usize];
        if self.version == 2 {
            for gref in 0..NR_RESERVED_ENTRIES {
                let e = self.entry_v2(gref);
                match e.flags & gtf::TYPE_MASK {
                    gtf::PERMIT_ACCESS if e.frame >> 32 != 0 => return Err(Errno(ERANGE)),
                    gtf::TRANSITIVE => return Err(Errno(ERANGE)),
                    _ => {}
                }
            }
            for (gref, r) in (0..).zip(reserved.iter_mut()) {
                let e = self.entry_v2(gref);
                if e.flags & gtf::TYPE_MASK == gtf::PERMIT_ACCESS {
                    *r = (e.flags | self.status_word(gref), e.domid, e.frame as u32);
                }
            }
            self.released.append(&mut self.status);
        } else {
            for (gref, r) in (0..).zip(reserved.iter_mut()) {
                let (flags, domid) = self.header(gref);
                *r = (flags, domid, self.frame_v1(gref));
            }
        }
        for p in &self.shared {
            p.write(0, &[0u8; 4096]);
        }
        self.version = version;
        if version == 2 {
            self.populate_status();
        }
        let access = gtf::READING | gtf::WRITING;
        for (gref, &(flags, domid, frame)) in (0..).zip(reserved.iter()) {
            if version == 1 {
                self.write_v1(gref, flags, domid, frame);
            } else {
                self.set_status_word(gref, flags & access);
                self.write_v2_full(gref, flags & !access, domid, frame as u64);
            }
        }
        Ok(())
    }

    fn get_status_frames(&self, g: &GuestVirt, mem: &GuestMemory, uop: u64, count: u32) -> XenResult<i64> {
        if count != 1 {
            return Err(Errno(EINVAL));
        }
        let mut b = [0u8; l::STATUS_FRAMES_SIZE];
        g.read(uop, &mut b)?;
        let f = Fields(&b);
        let (nr, dom, list) = (f.u32(0), f.u16(4), f.u64(8));
        let status = self.write_status_frames(g, mem, dom, nr, list);
        g.write_u16(uop.wrapping_add(l::STATUS_FRAMES_STATUS), status as u16)?;
        Ok(0)
    }

    /// get_status_frames for both ABIs: the first `nr` status frames' GFNs
    /// (uint64_t each) to `list`; the op's status.
    pub(super) fn write_status_frames(&self, g: &GuestVirt, mem: &GuestMemory, dom: u16, nr: u32, list: u64) -> i16 {
        match lookup(dom) {
            Dom::Missing => st::BAD_DOMAIN,
            Dom::Dom0 => st::PERMISSION_DENIED,
            Dom::Guest if nr > self.nr_status_frames() => st::GENERAL_ERROR,
            Dom::Guest => {
                let mut status = st::OKAY;
                for (i, page) in self.status.iter().take(nr as usize).enumerate() {
                    if g.write_u64(list.wrapping_add(8 * i as u64), Self::gfn_of(mem, page)).is_err() {
                        status = st::BAD_VIRT_ADDR;
                    }
                }
                status
            }
        }
    }

    fn get_version(&self, g: &GuestVirt, uop: u64) -> XenResult<i64> {
        let mut b = [0u8; l::GET_VERSION_SIZE];
        g.read(uop, &mut b)?;
        match lookup(Fields(&b).u16(0)) {
            Dom::Missing => Err(Errno(ESRCH)),
            Dom::Dom0 => Err(Errno(EPERM)),
            Dom::Guest => {
                g.write_u32(uop.wrapping_add(l::GET_VERSION_VERSION), self.version)?;
                Ok(0)
            }
        }
    }

    /// swap_grant_ref: exchange two unpinned entries (and v2 status words).
    fn swap_one(&mut self, f: &Fields) -> i16 {
        let (a, b) = (f.u32(0), f.u32(4));
        let nr = self.nr_entries();
        if a >= nr || b >= nr {
            return st::BAD_GNTREF;
        }
        if a == b {
            return st::OKAY;
        }
        if self.is_pinned(a) || self.is_pinned(b) {
            return st::EAGAIN;
        }
        if self.version == 1 {
            let ((fa, da), ra) = (self.header(a), self.frame_v1(a));
            let ((fb, db), rb) = (self.header(b), self.frame_v1(b));
            self.write_v1(a, fb, db, rb);
            self.write_v1(b, fa, da, ra);
        } else {
            let (ea, sa): (EntryV2, u16) = (self.entry_v2(a), self.status_word(a));
            let (eb, sb) = (self.entry_v2(b), self.status_word(b));
            self.write_v2(a, &eb);
            self.set_status_word(a, sb);
            self.write_v2(b, &ea);
            self.set_status_word(b, sa);
        }
        st::OKAY
    }
}

/// transfer: an HVM guest cannot give pages away (x86 steal_page refuses
/// external-paging domains), after the frame itself is checked.
fn transfer_one(mem: &GuestMemory, f: &Fields) -> i16 {
    let gfn = f.u64(0);
    match gfn.checked_mul(4096).map(|gpa| mem.backing(gpa)) {
        Some(sim_core::memory::Backing::Ram | sim_core::memory::Backing::Overlay) => st::GENERAL_ERROR,
        _ => st::BAD_PAGE,
    }
}

/// cache_flush on x86: the arguments are validated as Xen does; the address
/// must be guest memory (the guest owns all of it, so no grant lookup);
/// clean (with or without invalidate) succeeds, invalidate alone is
/// EOPNOTSUPP. `opaque` is the continuation index from the command's high bits.
fn cache_flush(g: &GuestVirt, mem: &GuestMemory, uop: u64, count: u32, opaque: u32) -> XenResult<i64> {
    let mut cur_ref = opaque;
    let mut b = [0u8; l::CACHE_FLUSH_SIZE as usize];
    for i in 0..count as u64 {
        g.read(uop.wrapping_add(i.wrapping_mul(l::CACHE_FLUSH_SIZE)), &mut b)?;
        let f = Fields(&b);
        let (addr, offset, length, op) = (f.u64(0), f.u16(8) as u32, f.u16(10) as u32, f.u32(12));
        if offset >= 4096
            || length > 4096
            || offset + length > 4096
            || op & !(GNTTAB_CACHE_INVAL | GNTTAB_CACHE_CLEAN) != 0
        {
            return Err(Errno(EINVAL));
        }
        if length == 0 || op == 0 {
            if cur_ref != 0 {
                return Err(Errno(EILSEQ));
            }
        } else {
            if mem.backing(addr) == sim_core::memory::Backing::Mmio {
                return Err(Errno(EINVAL));
            }
            if op == GNTTAB_CACHE_INVAL {
                return Err(Errno(EOPNOTSUPP));
            }
        }
        cur_ref = 0;
    }
    Ok(0)
}
