//! Random sequences of guest grant edits, dom0 maps/unmaps, guest copies and
//! version switches, checked against a reference model of Xen's rules:
//! a map succeeds iff every entry is permit_access to dom0 (and not
//! read-only for a writable map); GTF_reading is set iff the entry has any
//! pin, GTF_writing iff it has a writable pin; a copy through a grant leaves
//! the flags as they were; a version switch is refused while entries beyond
//! the reserved ones are mapped, and clears them otherwise.

use proptest::prelude::*;
use sim_core::paging::PagingMode;
use sim_core::state::cr0;
use sim_core::GuestMemory;

use super::abi::{gtf, op, st, GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF};
use super::{GrantTable, MapHandle};
use crate::errno::{Errno, EBUSY};
use crate::guest::GuestVirt;
use crate::{DOMID_SELF, GUEST_DOMID};

const GT_GFN: u64 = 0x10000;
const ST_GFN: u64 = 0x10100;
const DATA: u64 = 0x40;
const OP: u64 = 0x1000;
/// Non-reserved references under test.
const REFS: [u64; 4] = [8, 9, 10, 11];

#[derive(Clone, Debug)]
enum Step {
    Grant { r: usize, permit: bool, domid: u16, readonly: bool },
    Map { refs: Vec<usize>, writable: bool },
    Unmap { idx: usize },
    Copy { r: usize, into_grant: bool },
    SetVersion(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..4usize, any::<bool>(), prop_oneof![Just(0u16), Just(1u16), Just(5u16)], any::<bool>())
            .prop_map(|(r, permit, domid, readonly)| Step::Grant { r, permit, domid, readonly }),
        3 => (prop::collection::vec(0..4usize, 1..4), any::<bool>()).prop_map(|(refs, writable)| Step::Map { refs, writable }),
        2 => any::<usize>().prop_map(|idx| Step::Unmap { idx }),
        1 => (0..4usize, any::<bool>()).prop_map(|(r, into_grant)| Step::Copy { r, into_grant }),
        1 => (1..=2u32).prop_map(Step::SetVersion),
    ]
}

/// The reference model.
#[derive(Default)]
struct Model {
    v2: bool,
    /// Per ref: Some((domid, readonly)) for a permit_access entry.
    grant: [Option<(u16, bool)>; 4],
    /// The flags the guest wrote (type and readonly).
    written: [u16; 4],
    readers: [u32; 4],
    writers: [u32; 4],
    handles: Vec<(MapHandle, Vec<usize>, bool)>,
}

impl Model {
    fn pinned(&self, r: usize) -> bool {
        self.readers[r] + self.writers[r] > 0
    }
    fn expected_access(&self, r: usize) -> u16 {
        let mut f = 0;
        if self.pinned(r) {
            f |= gtf::READING;
        }
        if self.writers[r] > 0 {
            f |= gtf::WRITING;
        }
        f
    }
}

struct Sys {
    mem: GuestMemory,
    t: GrantTable,
}

impl Sys {
    fn entry_addr(&self, v2: bool, r: usize) -> u64 {
        (GT_GFN << 12) + REFS[r] * if v2 { 16 } else { 8 }
    }
    fn write_entry(&self, v2: bool, r: usize, flags: u16, domid: u16) {
        let a = self.entry_addr(v2, r);
        self.mem.write_u16(a, flags).unwrap();
        self.mem.write_u16(a + 2, domid).unwrap();
        if v2 {
            self.mem.write_u64(a + 8, DATA).unwrap();
        } else {
            self.mem.write_u32(a + 4, DATA as u32).unwrap();
        }
    }
    /// (entry flags without access bits, access bits) as the guest sees them.
    fn observe(&self, v2: bool, r: usize) -> (u16, u16) {
        let flags = self.mem.read_u16(self.entry_addr(v2, r)).unwrap();
        let access = if v2 { self.mem.read_u16((ST_GFN << 12) + REFS[r] * 2).unwrap() } else { flags };
        let bits = gtf::READING | gtf::WRITING;
        (flags & !bits, access & bits)
    }
    fn call(&mut self, cmd: u32, uop: u64, count: u32) -> Result<i64, Errno> {
        let g = GuestVirt::with_paging(&self.mem, PagingMode::from_regs(cr0::PE, 0, 0, 0));
        self.t.hypercall(&g, &self.mem, cmd, uop, count)
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut mem = GuestMemory::new(16).unwrap();
    let mut t = GrantTable::new(4);
    mem.map_overlay(GT_GFN, t.frame(0, false).unwrap());
    let mut s = Sys { mem, t };
    let mut m = Model::default();
    for st_ in steps {
        match st_ {
            Step::Grant { r, permit, domid, readonly } => {
                // A guest does not rewrite an entry that is in use.
                if m.pinned(r) {
                    continue;
                }
                let flags = if permit { gtf::PERMIT_ACCESS } else { gtf::INVALID };
                let flags = if readonly { flags | gtf::READONLY } else { flags };
                s.write_entry(m.v2, r, flags, domid);
                m.grant[r] = permit.then_some((domid, readonly));
                m.written[r] = flags;
            }
            Step::Map { refs, writable } => {
                let grefs: Vec<u32> = refs.iter().map(|&r| REFS[r] as u32).collect();
                let ok = refs.iter().all(|&r| matches!(m.grant[r], Some((0, ro)) if !(ro && writable)));
                let got = s.t.map(&s.mem, &grefs, writable);
                prop_assert_eq!(got.is_ok(), ok, "map {:?} writable {} -> {:?}", refs, writable, got);
                if let Ok(h) = got {
                    for &r in &refs {
                        if writable {
                            m.writers[r] += 1;
                        } else {
                            m.readers[r] += 1;
                        }
                    }
                    m.handles.push((h, refs, writable));
                }
            }
            Step::Unmap { idx } => {
                if m.handles.is_empty() {
                    continue;
                }
                let (h, refs, writable) = m.handles.remove(idx % m.handles.len());
                prop_assert_eq!(s.t.unmap(h), Ok(()));
                for r in refs {
                    if writable {
                        m.writers[r] -= 1;
                    } else {
                        m.readers[r] -= 1;
                    }
                }
            }
            Step::Copy { r, into_grant } => {
                let me = DOMID_SELF;
                s.mem.write(OP, &[0; 40]).unwrap();
                let (gref_at, frame_at, flag) =
                    if into_grant { (16, 0, GNTCOPY_DEST_GREF) } else { (0, 16, GNTCOPY_SOURCE_GREF) };
                s.mem.write_u64(OP + gref_at, REFS[r]).unwrap();
                s.mem.write_u16(OP + gref_at + 8, me).unwrap();
                s.mem.write_u64(OP + frame_at, DATA + 1).unwrap();
                s.mem.write_u16(OP + frame_at + 8, me).unwrap();
                s.mem.write_u16(OP + 32, 16).unwrap();
                s.mem.write_u16(OP + 34, flag).unwrap();
                prop_assert_eq!(s.call(op::COPY, OP, 1), Ok(0));
                let ok = !m.pinned(r) && matches!(m.grant[r], Some((d, ro)) if d == GUEST_DOMID && !(ro && into_grant));
                let want = if ok { st::OKAY } else { st::GENERAL_ERROR };
                prop_assert_eq!(s.mem.read_u16(OP + 36).unwrap() as i16, want, "copy ref {} into {}", r, into_grant);
            }
            Step::SetVersion(v) => {
                let want_v2 = v == 2;
                s.mem.write_u32(OP, v).unwrap();
                let got = s.call(op::SET_VERSION, OP, 1);
                if want_v2 == m.v2 {
                    prop_assert_eq!(got, Ok(0));
                } else if (0..4).any(|r| m.pinned(r)) {
                    prop_assert_eq!(got, Err(Errno(EBUSY)));
                } else {
                    prop_assert_eq!(got, Ok(0));
                    m.v2 = want_v2;
                    m.grant = [None; 4];
                    m.written = [0; 4];
                    if want_v2 {
                        s.mem.map_overlay(ST_GFN, s.t.frame(0, true).unwrap());
                    } else {
                        for gfn in s.t.take_released_gfns(&s.mem) {
                            s.mem.unmap_overlay(gfn);
                        }
                    }
                }
                prop_assert_eq!(s.t.version(), if m.v2 { 2 } else { 1 });
            }
        }
        for r in 0..4 {
            let (flags, access) = s.observe(m.v2, r);
            prop_assert_eq!(flags, m.written[r], "entry {} flags", r);
            prop_assert_eq!(access, m.expected_access(r), "entry {} access flags (v2: {})", r, m.v2);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn flag_transitions_match_the_reference_model(steps in prop::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}
