//! TEMPORARY ADAPTER — delete after merging the "gnttab" branch.
//!
//! Stands in for `crate::gnttab::GrantTable` (the contract in the task
//! brief) until the real grant tables land: grant_table_op is -ENOSYS and
//! add_to_physmap(grant_table) is -EINVAL, as the brief prescribes.

use sim_core::{GuestMemory, OverlayPage};

use crate::errno::{Errno, XenResult, EINVAL, ENOSYS};
use crate::guest::GuestVirt;

pub struct GrantTable;

impl GrantTable {
    pub fn new(_max_frames: u32) -> Self {
        GrantTable
    }
    pub fn hypercall(
        &mut self,
        _g: &GuestVirt,
        _mem: &GuestMemory,
        _cmd: u32,
        _uop: u64,
        _count: u32,
    ) -> XenResult<i64> {
        Err(Errno(ENOSYS))
    }
    pub fn frame(&mut self, _idx: u32, _status: bool) -> Result<OverlayPage, Errno> {
        Err(Errno(EINVAL))
    }
    pub fn version(&self) -> u32 {
        1
    }
    pub fn reset(&mut self) {}
    pub fn seed_reserved(&mut self, _console_gfn: Option<u64>, _xenstore_gfn: Option<u64>) {}
}
