//! GNTTABOP_* from 32-bit callers (xen/common/compat/grant_table.c). Most
//! op structures have the same layout in both ABIs (Xen CHECKs map, unmap,
//! unmap_and_replace, query_size, set/get_version, swap_grant_ref and
//! cache_flush); four are translated because xen_pfn_t and guest handles
//! are 32 bits wide there: setup_table, transfer, copy, get_status_frames.

use sim_core::GuestMemory;

use super::abi::{layout as native, st};
use super::ops::Fields;
use super::GrantTable;
use crate::errno::{Errno, XenResult, EINVAL};
use crate::guest::GuestVirt;

/// Compat structure layouts (xen/include/compat/grant_table.h).
pub mod layout {
    /// gnttab_setup_table: dom u16, nr_frames u32 @4, status i16 @8, frame_list handle u32 @12.
    pub const SETUP_SIZE: usize = 16;
    pub const SETUP_STATUS: u64 = 8;
    pub const SETUP_LIST: usize = 12;
    /// gnttab_transfer: mfn u32, domid u16 @4, ref u32 @8, status i16 @12.
    pub const TRANSFER_SIZE: u64 = 16;
    pub const TRANSFER_STATUS: u64 = 12;
    /// gnttab_copy: source {u u32 @0, domid @4, offset @6}, dest {@8, @12, @14}, len @16, flags @18, status @20.
    pub const COPY_SIZE: u64 = 24;
    pub const COPY_STATUS: u64 = 20;
    /// gnttab_get_status_frames: nr_frames u32, dom u16 @4, status i16 @6, frame_list handle u32 @8.
    pub const STATUS_FRAMES_SIZE: usize = 12;
    pub const STATUS_FRAMES_STATUS: u64 = 6;
}

/// XLAT_gnttab_transfer: a compat structure in the native layout.
pub fn transfer_to_native(c: &[u8]) -> Vec<u8> {
    let f = Fields(c);
    let mut n = vec![0u8; native::TRANSFER_SIZE as usize];
    n[0..8].copy_from_slice(&(f.u32(0) as u64).to_le_bytes());
    n[8..10].copy_from_slice(&f.u16(4).to_le_bytes());
    n[12..16].copy_from_slice(&f.u32(8).to_le_bytes());
    n
}

/// XLAT_gnttab_copy: both sides' 32-bit ref/gmfn widen to xen_pfn_t.
pub fn copy_to_native(c: &[u8]) -> Vec<u8> {
    let f = Fields(c);
    let mut n = vec![0u8; native::COPY_SIZE as usize];
    for (cs, ns) in [(0usize, 0usize), (8, 16)] {
        n[ns..ns + 8].copy_from_slice(&(f.u32(cs) as u64).to_le_bytes());
        n[ns + 8..ns + 10].copy_from_slice(&f.u16(cs + 4).to_le_bytes());
        n[ns + 10..ns + 12].copy_from_slice(&f.u16(cs + 6).to_le_bytes());
    }
    n[32..34].copy_from_slice(&f.u16(16).to_le_bytes());
    n[34..36].copy_from_slice(&f.u16(18).to_le_bytes());
    n
}

impl GrantTable {
    /// compat setup_table: the native op, then each frame narrowed to a
    /// compat_pfn_t; one that does not fit (a frame not in the physmap is
    /// INVALID_GFN) ends the list with GNTST_address_too_big.
    pub(super) fn setup_table_compat(
        &mut self,
        g: &GuestVirt,
        mem: &GuestMemory,
        uop: u64,
        count: u32,
    ) -> XenResult<i64> {
        // The compat loop runs `count` times: 0 does nothing, more is EINVAL.
        match count {
            0 => return Ok(0),
            1 => {}
            _ => return Err(Errno(EINVAL)),
        }
        let mut b = [0u8; layout::SETUP_SIZE];
        g.read(uop, &mut b)?;
        let f = Fields(&b);
        let (dom, nr, list) = (f.u16(0), f.u32(4), f.u32(layout::SETUP_LIST) as u64);
        let status = match self.setup_frames(mem, dom, nr) {
            Err(s) => s,
            Ok(frames) => {
                let mut status = st::OKAY;
                for (i, gfn) in frames.into_iter().enumerate() {
                    let Ok(frame) = u32::try_from(gfn) else {
                        status = st::ADDRESS_TOO_BIG;
                        break;
                    };
                    if g.write_u32(list.wrapping_add(4 * i as u64), frame).is_err() {
                        status = st::BAD_VIRT_ADDR;
                        break;
                    }
                }
                status
            }
        };
        g.write_u16(uop.wrapping_add(layout::SETUP_STATUS), status as u16)?;
        Ok(0)
    }

    /// compat get_status_frames: the list handle is 32 bits, the frames
    /// stay uint64_t.
    pub(super) fn get_status_frames_compat(
        &self,
        g: &GuestVirt,
        mem: &GuestMemory,
        uop: u64,
        count: u32,
    ) -> XenResult<i64> {
        if count != 1 {
            return Err(Errno(EINVAL));
        }
        let mut b = [0u8; layout::STATUS_FRAMES_SIZE];
        g.read(uop, &mut b)?;
        let f = Fields(&b);
        let (nr, dom, list) = (f.u32(0), f.u16(4), f.u32(8) as u64);
        let status = self.write_status_frames(g, mem, dom, nr, list);
        g.write_u16(uop.wrapping_add(layout::STATUS_FRAMES_STATUS), status as u16)?;
        Ok(0)
    }
}
