//! Unit tests against grant_table.h / grant_table.c semantics. The guest's
//! side is played through guest memory directly (entries written at the
//! frame's guest address, op structures laid out by hand from the header).

use sim_core::paging::PagingMode;
use sim_core::state::cr0;
use sim_core::GuestMemory;

use super::abi::*;
use super::{GrantError, GrantTable, MapHandle};
use crate::errno::*;
use crate::guest::GuestVirt;
use crate::{DOMID_SELF, GUEST_DOMID};

/// Where the test guest puts shared frame 0 and status frame 0 (above RAM,
/// as Linux does with unbacked addresses).
const GT_GFN: u64 = 0x10000;
const ST_GFN: u64 = 0x10100;
const OP: u64 = 0x1000; // op structures
const LIST: u64 = 0x2000; // frame lists
const DATA: u64 = 0x40; // a RAM frame granted in tests
const MMIO_GFN: u64 = 0xF0000;

struct Env {
    mem: GuestMemory,
    t: GrantTable,
}

fn env(max_frames: u32) -> Env {
    let mut mem = GuestMemory::new(16).unwrap();
    let mut t = GrantTable::new(max_frames);
    mem.map_overlay(GT_GFN, t.frame(0, false).unwrap());
    Env { mem, t }
}

impl Env {
    fn call(&mut self, cmd: u32, uop: u64, count: u32) -> XenResult<i64> {
        let g = GuestVirt::with_paging(&self.mem, PagingMode::from_regs(cr0::PE, 0, 0, 0));
        self.t.hypercall(&g, &self.mem, cmd, uop, count)
    }
    fn put(&self, gpa: u64, b: &[u8]) {
        self.mem.write(gpa, b).unwrap();
    }
    fn u16(&self, gpa: u64) -> u16 {
        self.mem.read_u16(gpa).unwrap()
    }
    fn i16(&self, gpa: u64) -> i16 {
        self.u16(gpa) as i16
    }
    /// The guest writes a v1 entry.
    fn grant_v1(&self, gref: u64, flags: u16, domid: u16, frame: u32) {
        let a = (GT_GFN << 12) + gref * 8;
        self.mem.write_u16(a, flags).unwrap();
        self.mem.write_u16(a + 2, domid).unwrap();
        self.mem.write_u32(a + 4, frame).unwrap();
    }
    /// The guest writes a v2 entry (word4/word6: sub_page offset/length).
    fn grant_v2(&self, gref: u64, flags: u16, domid: u16, w4: u16, w6: u16, frame: u64) {
        let a = (GT_GFN << 12) + gref * 16;
        self.mem.write_u16(a, flags).unwrap();
        self.mem.write_u16(a + 2, domid).unwrap();
        self.mem.write_u16(a + 4, w4).unwrap();
        self.mem.write_u16(a + 6, w6).unwrap();
        self.mem.write_u64(a + 8, frame).unwrap();
    }
    fn flags_v1(&self, gref: u64) -> u16 {
        self.u16((GT_GFN << 12) + gref * 8)
    }
    fn status_v2(&self, gref: u64) -> u16 {
        self.u16((ST_GFN << 12) + gref * 2)
    }
    fn set_version(&mut self, v: u32) -> XenResult<i64> {
        self.mem.write_u32(OP, v).unwrap();
        self.call(op::SET_VERSION, OP, 1)
    }
    /// Switch to v2 and map status frame 0 at ST_GFN.
    fn v2(&mut self) {
        assert_eq!(self.set_version(2), Ok(0));
        self.mem.map_overlay(ST_GFN, self.t.frame(0, true).unwrap());
    }
}

const RW: u16 = gtf::READING | gtf::WRITING;

// ---- hypercall-level guards -------------------------------------------------

#[test]
fn guards_and_unknown_ops() {
    let mut e = env(4);
    assert_eq!(e.call(op::QUERY_SIZE, OP, 0x8000_0000), Err(Errno(EINVAL)), "count negative as int");
    assert_eq!(e.call(op::QUERY_SIZE | (1 << 12), OP, 1), Err(Errno(EINVAL)), "continuation bits");
    assert_eq!(e.call(op::DUMP_TABLE, OP, 1), Err(Errno(ENOSYS)));
    assert_eq!(e.call(13, OP, 1), Err(Errno(ENOSYS)));
    assert_eq!(e.call(op::COPY, 0xdead_0000_0000, 1), Err(Errno(EFAULT)), "unbacked op array");
    assert_eq!(e.call(op::COPY, OP, 0), Ok(0), "an empty batch does nothing");
}

#[test]
fn query_size() {
    let mut e = env(4);
    e.put(OP, &[0xf0, 0x7f, 0, 0, 0xaa, 0xaa, 0xaa, 0xaa, 0, 0, 0, 0, 0x55, 0x55]);
    assert_eq!(e.call(op::QUERY_SIZE, OP, 1), Ok(0));
    // Xen starts every table with one frame.
    assert_eq!(e.mem.read_u32(OP + 4).unwrap(), 1);
    assert_eq!(e.mem.read_u32(OP + 8).unwrap(), 4);
    assert_eq!(e.i16(OP + 12), st::OKAY);
    for (dom, want) in [(GUEST_DOMID, st::OKAY), (0, st::PERMISSION_DENIED), (5, st::BAD_DOMAIN)] {
        e.mem.write_u16(OP, dom).unwrap();
        assert_eq!(e.call(op::QUERY_SIZE, OP, 1), Ok(0));
        assert_eq!(e.i16(OP + 12), want, "dom {dom}");
    }
    assert_eq!(e.call(op::QUERY_SIZE, OP, 2), Err(Errno(EINVAL)));
    assert_eq!(e.call(op::QUERY_SIZE, MMIO_GFN << 12, 1), Err(Errno(EFAULT)));
}

#[test]
fn get_and_set_version() {
    let mut e = env(4);
    e.mem.write_u16(OP, DOMID_SELF).unwrap();
    assert_eq!(e.call(op::GET_VERSION, OP, 1), Ok(0));
    assert_eq!(e.mem.read_u32(OP + 4).unwrap(), 1);
    e.mem.write_u16(OP, 0).unwrap();
    assert_eq!(e.call(op::GET_VERSION, OP, 1), Err(Errno(EPERM)));
    e.mem.write_u16(OP, 9).unwrap();
    assert_eq!(e.call(op::GET_VERSION, OP, 1), Err(Errno(ESRCH)));

    assert_eq!(e.set_version(2), Ok(0));
    assert_eq!(e.t.version(), 2);
    assert_eq!(e.set_version(3), Err(Errno(EINVAL)));
    assert_eq!(e.mem.read_u32(OP).unwrap(), 2, "the version in force is written back");
    assert_eq!(e.set_version(0), Err(Errno(EINVAL)));
    assert_eq!(e.set_version(2), Ok(0), "same version: no-op");
    assert_eq!(e.call(op::SET_VERSION, MMIO_GFN << 12, 1), Err(Errno(EFAULT)));
}

#[test]
fn setup_table_returns_gfns_and_grows() {
    let mut e = env(4);
    let setup = |e: &mut Env, dom: u16, nr: u32, list: u64| {
        e.put(OP, &[0; 24]);
        e.mem.write_u16(OP, dom).unwrap();
        e.mem.write_u32(OP + 4, nr).unwrap();
        e.mem.write_u64(OP + 16, list).unwrap();
        let r = e.call(op::SETUP_TABLE, OP, 1);
        (r, e.i16(OP + 8))
    };
    assert_eq!(setup(&mut e, DOMID_SELF, 2, LIST), (Ok(0), st::OKAY));
    assert_eq!(e.t.nr_frames(), 2);
    // Frame 0 is where the guest put it; frame 1 is not in the physmap.
    assert_eq!(e.mem.read_u64(LIST).unwrap(), GT_GFN);
    assert_eq!(e.mem.read_u64(LIST + 8).unwrap(), u64::MAX);
    assert_eq!(setup(&mut e, DOMID_SELF, 5, LIST), (Ok(0), st::GENERAL_ERROR), "beyond max_frames");
    assert_eq!(e.t.nr_frames(), 2);
    assert_eq!(setup(&mut e, 0, 1, LIST), (Ok(0), st::PERMISSION_DENIED));
    assert_eq!(setup(&mut e, 3, 1, LIST), (Ok(0), st::BAD_DOMAIN));
    assert_eq!(setup(&mut e, DOMID_SELF, 1, MMIO_GFN << 12), (Ok(0), st::BAD_VIRT_ADDR));
    assert_eq!(e.call(op::SETUP_TABLE, OP, 2), Err(Errno(EINVAL)));
}

#[test]
fn frames_grow_to_the_limit() {
    let mut e = env(4);
    assert!(e.t.frame(3, false).is_ok());
    assert_eq!(e.t.nr_frames(), 4);
    assert_eq!(e.t.frame(4, false).unwrap_err(), Errno(EINVAL));
    assert_eq!(e.t.frame(u32::MAX, false).unwrap_err(), Errno(EINVAL));
    assert_eq!(e.t.frame(0, true).unwrap_err(), Errno(EINVAL), "no status frames in v1");
    // v2: 4 shared frames need ceil(4*256/2048) = 1 status frame; status
    // frame 1 would need 16 shared frames, beyond the limit.
    e.v2();
    assert_eq!(e.t.nr_status_frames(), 1);
    assert_eq!(e.t.frame(1, true).unwrap_err(), Errno(EINVAL));

    let mut big = env(32);
    big.v2();
    assert!(big.t.frame(1, true).is_ok());
    assert_eq!(big.t.nr_frames(), 16, "status frame 1 covers entries of shared frames 8..16");
    assert_eq!(big.t.nr_status_frames(), 2);
}

#[test]
fn get_status_frames() {
    let mut e = env(4);
    let get = |e: &mut Env, nr: u32, dom: u16| {
        e.put(OP, &[0; 16]);
        e.mem.write_u32(OP, nr).unwrap();
        e.mem.write_u16(OP + 4, dom).unwrap();
        e.mem.write_u64(OP + 8, LIST).unwrap();
        let r = e.call(op::GET_STATUS_FRAMES, OP, 1);
        (r, e.i16(OP + 6))
    };
    assert_eq!(get(&mut e, 0, DOMID_SELF), (Ok(0), st::OKAY));
    assert_eq!(get(&mut e, 1, DOMID_SELF), (Ok(0), st::GENERAL_ERROR), "v1 has none");
    e.v2();
    assert_eq!(get(&mut e, 1, DOMID_SELF), (Ok(0), st::OKAY));
    assert_eq!(e.mem.read_u64(LIST).unwrap(), ST_GFN);
    assert_eq!(get(&mut e, 2, DOMID_SELF), (Ok(0), st::GENERAL_ERROR));
    assert_eq!(get(&mut e, 1, 0), (Ok(0), st::PERMISSION_DENIED));
    assert_eq!(get(&mut e, 1, 77), (Ok(0), st::BAD_DOMAIN));
    assert_eq!(e.call(op::GET_STATUS_FRAMES, OP, 0), Err(Errno(EINVAL)));
}

// ---- version switching ------------------------------------------------------

#[test]
fn switching_keeps_reserved_entries_and_clears_the_rest() {
    let mut e = env(4);
    e.t.seed_reserved(Some(0x123), Some(0x456));
    e.grant_v1(2, gtf::PERMIT_ACCESS | gtf::READONLY, 0, 0x789);
    e.grant_v1(10, gtf::PERMIT_ACCESS, 0, DATA as u32);
    let h = e.t.map(&e.mem, &[1], false).unwrap();
    e.v2();
    let v2 = |e: &Env, gref: u64| {
        let a = (GT_GFN << 12) + gref * 16;
        (e.u16(a), e.u16(a + 2), e.mem.read_u64(a + 8).unwrap())
    };
    assert_eq!(v2(&e, 0), (gtf::PERMIT_ACCESS, 0, 0x123));
    assert_eq!(v2(&e, 1), (gtf::PERMIT_ACCESS, 0, 0x456), "access bits move to the status frame");
    assert_eq!(e.status_v2(1), gtf::READING);
    assert_eq!(v2(&e, 2), (gtf::PERMIT_ACCESS | gtf::READONLY, 0, 0x789));
    // v1 entry 10 occupied bytes 80..88, which are v2 entry 5: cleared.
    assert_eq!(v2(&e, 5), (0, 0, 0));
    assert_eq!(v2(&e, 10), (0, 0, 0));

    // Back to v1: status frames are released and must leave the physmap.
    e.t.unmap(h).unwrap();
    assert_eq!(e.status_v2(1), 0);
    e.grant_v2(3, gtf::ACCEPT_TRANSFER, 0, 0, 0, 0x99);
    assert_eq!(e.set_version(1), Ok(0));
    assert_eq!(e.t.take_released_gfns(&e.mem), vec![ST_GFN]);
    assert_eq!(e.t.nr_status_frames(), 0);
    assert_eq!((e.flags_v1(1), e.mem.read_u32((GT_GFN << 12) + 12).unwrap()), (gtf::PERMIT_ACCESS, 0x456));
    assert_eq!(e.flags_v1(3), 0, "only permit_access entries survive v2 -> v1");
}

#[test]
fn v2_to_v1_refuses_unrepresentable_reserved_entries() {
    let mut e = env(4);
    e.v2();
    e.grant_v2(4, gtf::PERMIT_ACCESS, 0, 0, 0, 1 << 32);
    assert_eq!(e.set_version(1), Err(Errno(ERANGE)));
    assert_eq!(e.mem.read_u32(OP).unwrap(), 2);
    e.grant_v2(4, gtf::TRANSITIVE, 0, 0, 0, 0);
    assert_eq!(e.set_version(1), Err(Errno(ERANGE)));
    // Beyond the reserved entries nothing needs to be representable.
    e.grant_v2(4, 0, 0, 0, 0, 0);
    e.grant_v2(20, gtf::PERMIT_ACCESS, 0, 0, 0, 1 << 40);
    assert_eq!(e.set_version(1), Ok(0));
}

#[test]
fn switching_is_busy_while_a_non_reserved_entry_is_mapped() {
    let mut e = env(4);
    e.grant_v1(9, gtf::PERMIT_ACCESS, 0, DATA as u32);
    let h = e.t.map(&e.mem, &[9], true).unwrap();
    assert_eq!(e.set_version(2), Err(Errno(EBUSY)));
    assert_eq!(e.t.version(), 1);
    assert_eq!(e.mem.read_u32(OP).unwrap(), 1);
    e.t.unmap(h).unwrap();
    assert_eq!(e.set_version(2), Ok(0));
}

// ---- backend mapping cache --------------------------------------------------

#[test]
fn mapping_sets_and_clears_access_flags_v1() {
    let mut e = env(4);
    e.grant_v1(10, gtf::PERMIT_ACCESS, 0, DATA as u32);
    let r1 = e.t.map(&e.mem, &[10], false).unwrap();
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS | gtf::READING);
    let r2 = e.t.map(&e.mem, &[10], false).unwrap();
    assert_eq!(e.t.mapped_gfn(r1, 0), e.t.mapped_gfn(r2, 0), "the cached frame is reused");
    assert_eq!(e.t.pins(10, 0), (2, 0));
    let w = e.t.map(&e.mem, &[10], true).unwrap();
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS | RW);
    e.t.unmap(w).unwrap();
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS | gtf::READING, "writing goes with the last writer");
    e.t.unmap(r1).unwrap();
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS | gtf::READING);
    e.t.unmap(r2).unwrap();
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS, "reading goes with the last mapping");
    assert_eq!(e.t.unmap(r2), Err(GrantError::UnknownHandle(r2)));
    assert_eq!(e.t.unmap(MapHandle(999)), Err(GrantError::UnknownHandle(MapHandle(999))));
}

#[test]
fn mapping_uses_the_status_frame_in_v2() {
    let mut e = env(4);
    e.v2();
    e.grant_v2(12, gtf::PERMIT_ACCESS, 0, 0, 0, DATA);
    let h = e.t.map(&e.mem, &[12], true).unwrap();
    assert_eq!(e.status_v2(12), RW);
    assert_eq!(e.u16((GT_GFN << 12) + 12 * 16), gtf::PERMIT_ACCESS, "entry flags untouched");
    e.t.unmap(h).unwrap();
    assert_eq!(e.status_v2(12), 0);
    // Sub-page and transitive grants cannot be mapped.
    e.grant_v2(13, gtf::PERMIT_ACCESS | gtf::SUB_PAGE, 0, 0, 64, DATA);
    assert_eq!(e.t.map(&e.mem, &[13], false), Err(GrantError::NotGranted(13)));
    e.grant_v2(14, gtf::TRANSITIVE, 0, 1, 0, 12);
    assert_eq!(e.t.map(&e.mem, &[14], false), Err(GrantError::Transitive(14)));
    assert_eq!((e.status_v2(13), e.status_v2(14)), (0, 0));
}

#[test]
fn further_pins_of_a_pinned_entry_do_not_revalidate_it() {
    // Found by the gnttab fuzz target. Xen's map_grant_ref calls _set_status
    // (type and domid check) only for the first pin or a first writable pin,
    // and then checks only GTF_readonly; the frame is captured at the first
    // pin. So once pinned, an entry the guest rewrote still maps.
    let mut e = env(4);
    e.v2();
    e.grant_v2(12, gtf::PERMIT_ACCESS, 0, 0, 0, DATA);
    let h1 = e.t.map(&e.mem, &[12], false).unwrap();
    // The guest turns it transitive and points it at MMIO.
    e.grant_v2(12, gtf::TRANSITIVE, 0, 1, 0, MMIO_GFN);
    let h2 = e.t.map(&e.mem, &[12], false).expect("a further read-only pin just counts");
    let h3 = e.t.map(&e.mem, &[12], true).expect("an upgrade checks only GTF_readonly");
    assert_eq!(e.t.mapped_gfn(h3, 0), Ok(DATA), "the frame captured at the first pin");
    assert_eq!(e.status_v2(12), RW);
    for h in [h1, h2, h3] {
        e.t.unmap(h).unwrap();
    }
    assert_eq!(e.status_v2(12), 0);
    // A fresh pin validates again.
    assert_eq!(e.t.map(&e.mem, &[12], false), Err(GrantError::Transitive(12)));
}

#[test]
fn refused_mappings_change_nothing() {
    let mut e = env(4);
    e.grant_v1(10, gtf::PERMIT_ACCESS | gtf::READONLY, 0, DATA as u32);
    e.grant_v1(11, gtf::PERMIT_ACCESS, 5, DATA as u32);
    e.grant_v1(12, gtf::ACCEPT_TRANSFER, 0, DATA as u32);
    e.grant_v1(13, gtf::PERMIT_ACCESS, 0, MMIO_GFN as u32);
    e.grant_v1(14, gtf::PERMIT_ACCESS, 0, DATA as u32);
    assert_eq!(e.t.map(&e.mem, &[10], true), Err(GrantError::ReadOnlyGrant(10)));
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS | gtf::READONLY);
    assert!(e.t.map(&e.mem, &[10], false).is_ok(), "a read-only grant maps read-only");
    assert_eq!(e.t.map(&e.mem, &[11], false), Err(GrantError::NotGranted(11)), "granted to dom5");
    assert_eq!(e.t.map(&e.mem, &[12], false), Err(GrantError::NotGranted(12)));
    assert_eq!(e.t.map(&e.mem, &[13], false), Err(GrantError::BadFrame(13)));
    assert_eq!(e.flags_v1(13), gtf::PERMIT_ACCESS);
    assert_eq!(e.t.map(&e.mem, &[512], false), Err(GrantError::BadRef(512)), "one v1 frame = 512 entries");
    assert_eq!(e.t.map(&e.mem, &[], false), Err(GrantError::EmptyBatch));
    // All or nothing: 14 is released again when 11 is refused.
    assert_eq!(e.t.map(&e.mem, &[14, 11], true), Err(GrantError::NotGranted(11)));
    assert_eq!((e.flags_v1(14), e.t.pins(14, 0)), (gtf::PERMIT_ACCESS, (0, 0)));
}

#[test]
fn backend_reads_and_writes_the_granted_frame() {
    let mut e = env(4);
    e.grant_v1(10, gtf::PERMIT_ACCESS, 0, DATA as u32);
    e.grant_v1(11, gtf::PERMIT_ACCESS, 0, DATA as u32 + 1);
    e.put((DATA + 1) << 12, b"ring");
    let h = e.t.map(&e.mem, &[10, 11], true).unwrap();
    e.t.write(&e.mem, h, 0, 100, b"hello").unwrap();
    let mut b = [0u8; 5];
    e.mem.read((DATA << 12) + 100, &mut b).unwrap();
    assert_eq!(&b, b"hello");
    let mut r = [0u8; 4];
    e.t.read(&e.mem, h, 1, 0, &mut r).unwrap();
    assert_eq!(&r, b"ring");
    e.t.read_ref(&e.mem, 11, 0, &mut r).unwrap();
    assert_eq!(&r, b"ring");
    assert_eq!(e.t.read(&e.mem, h, 2, 0, &mut r), Err(GrantError::BadIndex { handle: h, index: 2 }));
    assert_eq!(e.t.read(&e.mem, h, 0, 4094, &mut r), Err(GrantError::OutOfPage { offset: 4094, len: 4 }));
    assert_eq!(e.t.read_ref(&e.mem, 12, 0, &mut r), Err(GrantError::NotMapped(12)));
    // The frame was captured at map time: the guest moving the entry does not move it.
    e.grant_v1(10, gtf::PERMIT_ACCESS | RW, 0, 0x77);
    assert_eq!(e.t.mapped_gfn(h, 0), Ok(DATA));
    e.t.unmap(h).unwrap();
    assert_eq!(e.t.read(&e.mem, h, 0, 0, &mut r), Err(GrantError::UnknownHandle(h)));

    e.grant_v1(10, gtf::PERMIT_ACCESS, 0, DATA as u32);
    let ro = e.t.map(&e.mem, &[10], false).unwrap();
    assert_eq!(e.t.write(&e.mem, ro, 0, 0, b"x"), Err(GrantError::NotWritable(ro)));
    assert_eq!(e.t.write_ref(&e.mem, 10, 0, b"x"), Err(GrantError::NotMapped(10)), "no writable mapping");
}

#[test]
fn seeded_reserved_entries_are_mappable_by_dom0() {
    let mut e = env(4);
    e.t.seed_reserved(Some(DATA), Some(DATA + 1));
    assert_eq!((e.flags_v1(0), e.u16((GT_GFN << 12) + 2)), (gtf::PERMIT_ACCESS, 0));
    assert_eq!(e.mem.read_u32((GT_GFN << 12) + 12).unwrap(), DATA as u32 + 1);
    let h = e.t.map(&e.mem, &[RESERVED_CONSOLE, RESERVED_XENSTORE], true).unwrap();
    assert_eq!(e.t.mapped_gfn(h, 1), Ok(DATA + 1));
}

#[test]
fn reset_returns_to_v1_and_drops_mappings() {
    let mut e = env(4);
    e.v2();
    e.grant_v2(1, gtf::PERMIT_ACCESS, 0, 0, 0, DATA);
    let h = e.t.map(&e.mem, &[1], true).unwrap();
    e.t.reset();
    assert_eq!(e.t.version(), 1);
    assert_eq!(e.t.unmap(h), Err(GrantError::UnknownHandle(h)));
    assert_eq!(e.t.take_released_gfns(&e.mem), vec![ST_GFN]);
    assert_eq!(e.mem.read_u64((GT_GFN << 12) + 16).unwrap(), 0, "entries cleared");
    e.t.seed_reserved(None, Some(DATA));
    assert_eq!(e.flags_v1(0), 0, "None leaves the entry alone");
    assert_eq!(e.flags_v1(1), gtf::PERMIT_ACCESS);
}

// ---- guest ops on grants ----------------------------------------------------

/// Lay out one gnttab_copy at `at`.
#[allow(clippy::too_many_arguments)]
fn put_copy(e: &Env, at: u64, src: (u64, u16, u16), dst: (u64, u16, u16), len: u16, flags: u16) {
    e.put(at, &[0; 40]);
    e.mem.write_u64(at, src.0).unwrap();
    e.mem.write_u16(at + 8, src.1).unwrap();
    e.mem.write_u16(at + 10, src.2).unwrap();
    e.mem.write_u64(at + 16, dst.0).unwrap();
    e.mem.write_u16(at + 24, dst.1).unwrap();
    e.mem.write_u16(at + 26, dst.2).unwrap();
    e.mem.write_u16(at + 32, len).unwrap();
    e.mem.write_u16(at + 34, flags).unwrap();
}

fn copy(e: &mut Env, src: (u64, u16, u16), dst: (u64, u16, u16), len: u16, flags: u16) -> i16 {
    put_copy(e, OP, src, dst, len, flags);
    assert_eq!(e.call(op::COPY, OP, 1), Ok(0));
    e.i16(OP + 36)
}

#[test]
fn copy_between_frames_and_grants() {
    let mut e = env(4);
    let (a, b) = (DATA, DATA + 1);
    e.put((a << 12) + 10, b"grant copy");
    let me = DOMID_SELF;
    assert_eq!(copy(&mut e, (a, me, 10), (b, me, 20), 10, 0), st::OKAY);
    let mut buf = [0u8; 10];
    e.mem.read((b << 12) + 20, &mut buf).unwrap();
    assert_eq!(&buf, b"grant copy");
    assert_eq!(copy(&mut e, (a, GUEST_DOMID, 0), (b, me, 0), 1, 0), st::PERMISSION_DENIED, "frames need DOMID_SELF");
    assert_eq!(copy(&mut e, (a, me, 4000), (b, me, 0), 100, 0), st::BAD_COPY_ARG);
    assert_eq!(copy(&mut e, (MMIO_GFN, me, 0), (b, me, 0), 1, 0), st::BAD_PAGE);

    // A grant the guest gives itself.
    e.grant_v1(20, gtf::PERMIT_ACCESS, GUEST_DOMID, a as u32);
    e.put(b << 12, b"into the grant");
    assert_eq!(copy(&mut e, (b, me, 0), (20, GUEST_DOMID, 200), 14, GNTCOPY_DEST_GREF), st::OKAY);
    let mut buf = [0u8; 14];
    e.mem.read((a << 12) + 200, &mut buf).unwrap();
    assert_eq!(&buf, b"into the grant");
    assert_eq!(e.flags_v1(20), gtf::PERMIT_ACCESS, "flags released after the copy");
    assert_eq!(copy(&mut e, (20, me, 0), (20, me, 8), 8, GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF), st::OKAY);

    // Refusals.
    e.grant_v1(21, gtf::PERMIT_ACCESS | gtf::READONLY, GUEST_DOMID, a as u32);
    e.grant_v1(22, gtf::PERMIT_ACCESS, 0, a as u32);
    assert_eq!(copy(&mut e, (21, me, 0), (b, me, 0), 8, GNTCOPY_SOURCE_GREF), st::OKAY);
    assert_eq!(copy(&mut e, (b, me, 0), (21, me, 0), 8, GNTCOPY_DEST_GREF), st::GENERAL_ERROR, "read-only");
    assert_eq!(copy(&mut e, (22, me, 0), (b, me, 0), 8, GNTCOPY_SOURCE_GREF), st::GENERAL_ERROR, "granted to dom0");
    assert_eq!(copy(&mut e, (600, me, 0), (b, me, 0), 8, GNTCOPY_SOURCE_GREF), st::BAD_GNTREF);
    assert_eq!(copy(&mut e, (600, me, 4000), (b, me, 0), 800, GNTCOPY_SOURCE_GREF), st::BAD_GNTREF, "ref first");
    assert_eq!(copy(&mut e, (22, 0, 0), (b, me, 0), 8, GNTCOPY_SOURCE_GREF), st::BAD_DOMAIN, "dom0 has no table");
    assert_eq!(copy(&mut e, (22, 9, 0), (b, me, 0), 8, GNTCOPY_SOURCE_GREF), st::BAD_DOMAIN);
    assert_eq!(e.flags_v1(21), gtf::PERMIT_ACCESS | gtf::READONLY);

    // A ref pinned by dom0 cannot be pinned by the guest at the same time.
    e.grant_v1(23, gtf::PERMIT_ACCESS, 0, a as u32);
    let _h = e.t.map(&e.mem, &[23], false).unwrap();
    e.grant_v1(23, gtf::PERMIT_ACCESS | gtf::READING, GUEST_DOMID, a as u32);
    assert_eq!(copy(&mut e, (23, me, 0), (b, me, 0), 8, GNTCOPY_SOURCE_GREF), st::GENERAL_ERROR);
    assert_eq!(e.flags_v1(23), gtf::PERMIT_ACCESS | gtf::READING, "dom0's pin keeps reading set");
}

#[test]
fn copy_batches_report_per_op_status() {
    let mut e = env(4);
    let me = DOMID_SELF;
    put_copy(&e, OP, (DATA, me, 0), (DATA + 1, me, 0), 4, 0);
    put_copy(&e, OP + 40, (DATA, me, 0), (MMIO_GFN, me, 0), 4, 0);
    put_copy(&e, OP + 80, (DATA, me, 4095), (DATA + 1, me, 0), 2, 0);
    assert_eq!(e.call(op::COPY, OP, 3), Ok(0));
    assert_eq!([e.i16(OP + 36), e.i16(OP + 76), e.i16(OP + 116)], [st::OKAY, st::BAD_PAGE, st::BAD_COPY_ARG]);
}

#[test]
fn copy_respects_v2_sub_page_bounds() {
    let mut e = env(4);
    e.v2();
    let me = DOMID_SELF;
    e.grant_v2(30, gtf::PERMIT_ACCESS | gtf::SUB_PAGE, GUEST_DOMID, 256, 64, DATA);
    assert_eq!(copy(&mut e, (30, me, 256), (DATA + 1, me, 0), 64, GNTCOPY_SOURCE_GREF), st::OKAY);
    assert_eq!(copy(&mut e, (30, me, 255), (DATA + 1, me, 0), 8, GNTCOPY_SOURCE_GREF), st::GENERAL_ERROR);
    assert_eq!(copy(&mut e, (30, me, 300), (DATA + 1, me, 0), 21, GNTCOPY_SOURCE_GREF), st::GENERAL_ERROR);
    assert_eq!(e.status_v2(30), 0);
    // A transitive grant's chain cannot be followed to any table here.
    e.grant_v2(31, gtf::TRANSITIVE, GUEST_DOMID, 0, 0, 30);
    assert_eq!(copy(&mut e, (31, me, 0), (DATA + 1, me, 0), 8, GNTCOPY_SOURCE_GREF), st::GENERAL_ERROR);
    assert_eq!(e.status_v2(31), 0);
}

#[test]
fn guest_map_and_unmap() {
    let mut e = env(4);
    e.grant_v1(10, gtf::PERMIT_ACCESS, GUEST_DOMID, DATA as u32);
    let map = |e: &mut Env, flags: u32, gref: u32, dom: u16| {
        e.put(OP, &[0; 32]);
        e.mem.write_u64(OP, 0x5000).unwrap();
        e.mem.write_u32(OP + 8, flags).unwrap();
        e.mem.write_u32(OP + 12, gref).unwrap();
        e.mem.write_u16(OP + 16, dom).unwrap();
        assert_eq!(e.call(op::MAP_GRANT_REF, OP, 1), Ok(0));
        e.i16(OP + 18)
    };
    assert_eq!(map(&mut e, 0, 10, GUEST_DOMID), st::BAD_GNTREF, "neither host nor device map");
    assert_eq!(map(&mut e, gntmap::DEVICE_MAP, 10, GUEST_DOMID), st::GENERAL_ERROR, "no device maps in HVM");
    assert_eq!(map(&mut e, gntmap::HOST_MAP, 10, DOMID_SELF), st::BAD_DOMAIN, "by_id refuses DOMID_SELF");
    assert_eq!(map(&mut e, gntmap::HOST_MAP, 10, 0), st::BAD_DOMAIN);
    assert_eq!(map(&mut e, gntmap::HOST_MAP, 9999, GUEST_DOMID), st::BAD_GNTREF);
    assert_eq!(map(&mut e, gntmap::HOST_MAP, 11, GUEST_DOMID), st::GENERAL_ERROR, "entry invalid");
    assert_eq!(map(&mut e, gntmap::HOST_MAP, 10, GUEST_DOMID), st::GENERAL_ERROR, "self-map cannot be aliased");
    assert_eq!(e.flags_v1(10), gtf::PERMIT_ACCESS);

    e.put(OP, &[0; 48]);
    assert_eq!(e.call(op::UNMAP_GRANT_REF, OP, 2), Ok(0));
    assert_eq!((e.i16(OP + 20), e.i16(OP + 44)), (st::BAD_HANDLE, st::BAD_HANDLE));
    assert_eq!(e.call(op::UNMAP_AND_REPLACE, OP, 1), Ok(0));
    assert_eq!(e.i16(OP + 20), st::BAD_HANDLE);
}

#[test]
fn swap_grant_ref() {
    let mut e = env(4);
    e.grant_v1(10, gtf::PERMIT_ACCESS, 0, 0x10);
    e.grant_v1(11, gtf::PERMIT_ACCESS | gtf::READONLY, 3, 0x11);
    let swap = |e: &mut Env, a: u32, b: u32| {
        e.put(OP, &[0; 12]);
        e.mem.write_u32(OP, a).unwrap();
        e.mem.write_u32(OP + 4, b).unwrap();
        assert_eq!(e.call(op::SWAP_GRANT_REF, OP, 1), Ok(0));
        e.i16(OP + 8)
    };
    assert_eq!(swap(&mut e, 10, 11), st::OKAY);
    assert_eq!(e.mem.read_u64((GT_GFN << 12) + 80).unwrap(), 0x11_0003_0005);
    assert_eq!(e.mem.read_u64((GT_GFN << 12) + 88).unwrap(), 0x10_0000_0001);
    assert_eq!(swap(&mut e, 10, 10), st::OKAY);
    assert_eq!(swap(&mut e, 10, 512), st::BAD_GNTREF);
    let _h = e.t.map(&e.mem, &[11], false).unwrap();
    assert_eq!(swap(&mut e, 10, 11), st::EAGAIN);
}

#[test]
fn transfer_is_refused_for_hvm_guests() {
    let mut e = env(4);
    e.put(OP, &[0; 48]);
    e.mem.write_u64(OP, DATA).unwrap();
    e.mem.write_u64(OP + 24, MMIO_GFN).unwrap();
    assert_eq!(e.call(op::TRANSFER, OP, 2), Ok(0));
    assert_eq!((e.i16(OP + 16), e.i16(OP + 40)), (st::GENERAL_ERROR, st::BAD_PAGE));
}

#[test]
fn cache_flush_validates_its_arguments() {
    let mut e = env(4);
    let flush = |e: &mut Env, cmd: u32, addr: u64, offset: u16, length: u16, op: u32| {
        e.put(OP, &[0; 16]);
        e.mem.write_u64(OP, addr).unwrap();
        e.mem.write_u16(OP + 8, offset).unwrap();
        e.mem.write_u16(OP + 10, length).unwrap();
        e.mem.write_u32(OP + 12, op).unwrap();
        e.call(cmd, OP, 1)
    };
    let cf = op::CACHE_FLUSH;
    assert_eq!(flush(&mut e, cf, DATA << 12, 0, 64, GNTTAB_CACHE_CLEAN), Ok(0));
    assert_eq!(flush(&mut e, cf, DATA << 12, 0, 64, GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL), Ok(0));
    assert_eq!(flush(&mut e, cf, DATA << 12, 0, 64, GNTTAB_CACHE_INVAL), Err(Errno(EOPNOTSUPP)));
    assert_eq!(flush(&mut e, cf, DATA << 12, 4096, 0, GNTTAB_CACHE_CLEAN), Err(Errno(EINVAL)));
    assert_eq!(flush(&mut e, cf, DATA << 12, 4000, 200, GNTTAB_CACHE_CLEAN), Err(Errno(EINVAL)));
    assert_eq!(flush(&mut e, cf, DATA << 12, 0, 64, GNTTAB_CACHE_SOURCE_GREF), Err(Errno(EINVAL)));
    assert_eq!(flush(&mut e, cf, MMIO_GFN << 12, 0, 64, GNTTAB_CACHE_CLEAN), Err(Errno(EINVAL)));
    assert_eq!(flush(&mut e, cf, MMIO_GFN << 12, 0, 0, GNTTAB_CACHE_CLEAN), Ok(0), "nothing to flush");
    assert_eq!(flush(&mut e, cf | (1 << 12), DATA << 12, 0, 0, 0), Err(Errno(84)), "EILSEQ on a continuation");
}

// ---- 32-bit callers (compat layouts) ------------------------------------------

impl Env {
    fn call32(&mut self, cmd: u32, uop: u64, count: u32) -> XenResult<i64> {
        let g = GuestVirt::with_paging(&self.mem, PagingMode::from_regs(cr0::PE, 0, 0, 0));
        self.t.hypercall_abi(&g, &self.mem, cmd, uop, count, true)
    }
}

#[test]
fn compat_setup_table_lists_32_bit_frames() {
    let mut e = env(4);
    // compat gnttab_setup_table: dom u16 @0, nr_frames u32 @4, status i16 @8, frame_list u32 @12 (16 bytes).
    let setup = |e: &mut Env, nr: u32| {
        e.put(OP, &[0; 16]);
        e.put(LIST, &[0xaa; 16]);
        e.mem.write_u16(OP, DOMID_SELF).unwrap();
        e.mem.write_u32(OP + 4, nr).unwrap();
        e.mem.write_u32(OP + 12, LIST as u32).unwrap();
        let r = e.call32(op::SETUP_TABLE, OP, 1);
        (r, e.i16(OP + 8))
    };
    assert_eq!(setup(&mut e, 1), (Ok(0), st::OKAY));
    assert_eq!(e.mem.read_u32(LIST).unwrap() as u64, GT_GFN, "a compat_pfn_t");
    assert_eq!(e.mem.read_u32(LIST + 4).unwrap(), 0xaaaa_aaaa, "nothing beyond the 32-bit entry");
    // Frame 1 is not in the physmap: INVALID_GFN does not fit a compat_pfn_t.
    assert_eq!(setup(&mut e, 2), (Ok(0), st::ADDRESS_TOO_BIG));
    assert_eq!(e.mem.read_u32(LIST).unwrap() as u64, GT_GFN, "frames before it are written");
    assert_eq!(e.mem.read_u32(LIST + 4).unwrap(), 0xaaaa_aaaa);
    assert_eq!(e.call32(op::SETUP_TABLE, OP, 0), Ok(0), "compat loop runs zero times");
    assert_eq!(e.call32(op::SETUP_TABLE, OP, 2), Err(Errno(EINVAL)));
}

#[test]
fn compat_get_status_frames_has_a_32_bit_handle_and_64_bit_frames() {
    let mut e = env(4);
    e.v2();
    // compat gnttab_get_status_frames: nr u32 @0, dom u16 @4, status i16 @6, frame_list u32 @8 (12 bytes).
    e.put(OP, &[0; 16]);
    e.mem.write_u32(OP, 1).unwrap();
    e.mem.write_u16(OP + 4, DOMID_SELF).unwrap();
    e.mem.write_u32(OP + 8, LIST as u32).unwrap();
    e.mem.write_u32(OP + 12, 0xdead_beef).unwrap(); // would be the native handle's high half
    assert_eq!(e.call32(op::GET_STATUS_FRAMES, OP, 1), Ok(0));
    assert_eq!(e.i16(OP + 6), st::OKAY);
    assert_eq!(e.mem.read_u64(LIST).unwrap(), ST_GFN, "frames stay uint64_t");
}

#[test]
fn compat_copy_and_transfer_use_32_bit_frames() {
    let mut e = env(4);
    let (a, b) = (DATA, DATA + 1);
    e.put((a << 12) + 10, b"compat copy");
    // Two compat gnttab_copy (24 bytes each): source {u32, domid, offset}, dest {...} @8, len @16, flags @18, status @20.
    let put = |e: &Env, at: u64, src: (u32, u16, u16), dst: (u32, u16, u16), len: u16, flags: u16| {
        e.put(at, &[0; 24]);
        for (off, (u, dom, o)) in [(0, src), (8, dst)] {
            e.mem.write_u32(at + off, u).unwrap();
            e.mem.write_u16(at + off + 4, dom).unwrap();
            e.mem.write_u16(at + off + 6, o).unwrap();
        }
        e.mem.write_u16(at + 16, len).unwrap();
        e.mem.write_u16(at + 18, flags).unwrap();
    };
    e.grant_v1(20, gtf::PERMIT_ACCESS, GUEST_DOMID, b as u32);
    put(&e, OP, (a as u32, DOMID_SELF, 10), (20, GUEST_DOMID, 100), 11, GNTCOPY_DEST_GREF);
    put(&e, OP + 24, (a as u32, DOMID_SELF, 4000), (b as u32, DOMID_SELF, 0), 200, 0);
    assert_eq!(e.call32(op::COPY, OP, 2), Ok(0));
    assert_eq!((e.i16(OP + 20), e.i16(OP + 24 + 20)), (st::OKAY, st::BAD_COPY_ARG));
    let mut buf = [0u8; 11];
    e.mem.read((b << 12) + 100, &mut buf).unwrap();
    assert_eq!(&buf, b"compat copy");

    // compat gnttab_transfer (16 bytes): mfn u32, domid u16 @4, ref u32 @8, status i16 @12.
    e.put(OP, &[0; 32]);
    e.mem.write_u32(OP, a as u32).unwrap();
    e.mem.write_u32(OP + 16, MMIO_GFN as u32).unwrap();
    assert_eq!(e.call32(op::TRANSFER, OP, 2), Ok(0));
    assert_eq!(e.i16(OP + 12), st::GENERAL_ERROR, "an HVM guest cannot give RAM away");
    assert_eq!(e.i16(OP + 16 + 12), st::BAD_PAGE);
}

#[test]
fn compat_callers_share_the_identical_layouts() {
    let mut e = env(4);
    // query_size is CHECKed identical: dom, nr_frames @4, max @8, status @12.
    e.put(OP, &[0; 16]);
    e.mem.write_u16(OP, DOMID_SELF).unwrap();
    assert_eq!(e.call32(op::QUERY_SIZE, OP, 1), Ok(0));
    assert_eq!((e.mem.read_u32(OP + 4).unwrap(), e.mem.read_u32(OP + 8).unwrap(), e.i16(OP + 12)), (1, 4, st::OKAY));
}
