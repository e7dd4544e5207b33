//! The grant-table ABI: xen/include/public/grant_table.h (x86_64 layouts).

/// GNTTABOP_* sub-ops.
pub mod op {
    pub const MAP_GRANT_REF: u32 = 0;
    pub const UNMAP_GRANT_REF: u32 = 1;
    pub const SETUP_TABLE: u32 = 2;
    pub const DUMP_TABLE: u32 = 3;
    pub const TRANSFER: u32 = 4;
    pub const COPY: u32 = 5;
    pub const QUERY_SIZE: u32 = 6;
    pub const UNMAP_AND_REPLACE: u32 = 7;
    pub const SET_VERSION: u32 = 8;
    pub const GET_STATUS_FRAMES: u32 = 9;
    pub const GET_VERSION: u32 = 10;
    pub const SWAP_GRANT_REF: u32 = 11;
    pub const CACHE_FLUSH: u32 = 12;
}

/// Per-op status codes (GNTST_*).
pub mod st {
    pub const OKAY: i16 = 0;
    pub const GENERAL_ERROR: i16 = -1;
    pub const BAD_DOMAIN: i16 = -2;
    pub const BAD_GNTREF: i16 = -3;
    pub const BAD_HANDLE: i16 = -4;
    pub const BAD_VIRT_ADDR: i16 = -5;
    pub const BAD_DEV_ADDR: i16 = -6;
    pub const NO_DEVICE_SPACE: i16 = -7;
    pub const PERMISSION_DENIED: i16 = -8;
    pub const BAD_PAGE: i16 = -9;
    pub const BAD_COPY_ARG: i16 = -10;
    pub const ADDRESS_TOO_BIG: i16 = -11;
    pub const EAGAIN: i16 = -12;
    pub const NO_SPACE: i16 = -13;
}

/// Grant entry flags (GTF_*).
pub mod gtf {
    pub const INVALID: u16 = 0;
    pub const PERMIT_ACCESS: u16 = 1;
    pub const ACCEPT_TRANSFER: u16 = 2;
    pub const TRANSITIVE: u16 = 3;
    pub const TYPE_MASK: u16 = 3;
    pub const READONLY: u16 = 1 << 2;
    pub const READING: u16 = 1 << 3;
    pub const WRITING: u16 = 1 << 4;
    pub const PWT: u16 = 1 << 5;
    pub const PCD: u16 = 1 << 6;
    pub const PAT: u16 = 1 << 7;
    pub const SUB_PAGE: u16 = 1 << 8;
}

/// gnttab_map_grant_ref.flags (GNTMAP_*).
pub mod gntmap {
    pub const DEVICE_MAP: u32 = 1 << 0;
    pub const HOST_MAP: u32 = 1 << 1;
    pub const READONLY: u32 = 1 << 2;
    pub const APPLICATION_MAP: u32 = 1 << 3;
    pub const CONTAINS_PTE: u32 = 1 << 4;
}

/// gnttab_copy.flags.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// gnttab_cache_flush.op.
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;
pub const GNTTAB_CACHE_SOURCE_GREF: u32 = 1 << 31;

/// Xen keeps a continuation argument above the low 12 bits of `cmd`.
pub const GNTTABOP_CMD_MASK: u32 = (1 << 12) - 1;

/// Entries 0..8 belong to the toolstack (0 console, 1 xenstore) and survive
/// a version switch.
pub const NR_RESERVED_ENTRIES: u32 = 8;
pub const RESERVED_CONSOLE: u32 = 0;
pub const RESERVED_XENSTORE: u32 = 1;

/// Xen creates every table with this many frames (x86 INITIAL_NR_GRANT_FRAMES).
pub const INITIAL_NR_GRANT_FRAMES: u32 = 1;

pub const V1_ENTRY_SIZE: usize = 8;
pub const V2_ENTRY_SIZE: usize = 16;
pub const STATUS_ENTRY_SIZE: usize = 2;
pub const V1_PER_PAGE: u32 = 4096 / V1_ENTRY_SIZE as u32;
pub const V2_PER_PAGE: u32 = 4096 / V2_ENTRY_SIZE as u32;
pub const STATUS_PER_PAGE: u32 = 4096 / STATUS_ENTRY_SIZE as u32;

/// Returned as the frame of a table page that is not in the guest's physmap.
pub const INVALID_GFN: u64 = u64::MAX;

/// Status frames needed for `grant_frames` v2 shared frames (Xen's
/// grant_to_status_frames).
pub fn grant_to_status_frames(grant_frames: u32) -> u32 {
    (grant_frames as u64 * V2_PER_PAGE as u64).div_ceil(STATUS_PER_PAGE as u64) as u32
}

/// Field offsets and sizes of the op structures (x86_64).
pub mod layout {
    /// gnttab_map_grant_ref: host_addr u64, flags u32, ref u32, dom u16, status i16, handle u32, dev_bus_addr u64.
    pub const MAP_SIZE: u64 = 32;
    pub const MAP_FLAGS: u64 = 8;
    pub const MAP_REF: u64 = 12;
    pub const MAP_DOM: u64 = 16;
    pub const MAP_STATUS: u64 = 18;
    /// gnttab_unmap_grant_ref: host_addr, dev_bus_addr, handle u32, status i16.
    pub const UNMAP_SIZE: u64 = 24;
    pub const UNMAP_HANDLE: u64 = 16;
    pub const UNMAP_STATUS: u64 = 20;
    /// gnttab_unmap_and_replace: host_addr, new_addr, handle u32, status i16.
    pub const UNMAP_REPLACE_SIZE: u64 = 24;
    pub const UNMAP_REPLACE_HANDLE: u64 = 16;
    pub const UNMAP_REPLACE_STATUS: u64 = 20;
    /// gnttab_setup_table: dom u16, nr_frames u32 @4, status i16 @8, frame_list @16.
    pub const SETUP_SIZE: usize = 24;
    pub const SETUP_STATUS: u64 = 8;
    /// gnttab_transfer: mfn u64, domid u16 @8, ref u32 @12, status i16 @16.
    pub const TRANSFER_SIZE: u64 = 24;
    pub const TRANSFER_STATUS: u64 = 16;
    /// gnttab_copy: source {u @0, domid @8, offset @10}, dest {@16, @24, @26}, len @32, flags @34, status @36.
    pub const COPY_SIZE: u64 = 40;
    pub const COPY_STATUS: u64 = 36;
    /// gnttab_query_size: dom u16, nr_frames u32 @4, max_nr_frames u32 @8, status i16 @12.
    pub const QUERY_SIZE: usize = 16;
    /// gnttab_get_status_frames: nr_frames u32, dom u16 @4, status i16 @6, frame_list @8.
    pub const STATUS_FRAMES_SIZE: usize = 16;
    pub const STATUS_FRAMES_STATUS: u64 = 6;
    /// gnttab_get_version: dom u16, pad, version u32 @4.
    pub const GET_VERSION_SIZE: usize = 8;
    pub const GET_VERSION_VERSION: u64 = 4;
    /// gnttab_swap_grant_ref: ref_a u32, ref_b u32, status i16 @8.
    pub const SWAP_SIZE: u64 = 12;
    pub const SWAP_STATUS: u64 = 8;
    /// gnttab_cache_flush: a u64, offset u16 @8, length u16 @10, op u32 @12.
    pub const CACHE_FLUSH_SIZE: u64 = 16;
}
