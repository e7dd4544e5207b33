//! `gnttab`: the guest writing grant entries and dom0 mapping and unmapping
//! them, against `GrantTable`, compared with `RefModel`, written from Xen's
//! grant_table.c rules for dom0 maps: all-or-nothing batches; the first pin
//! (or the first writable pin) checks type permit_access (not sub-page),
//! domid 0, the readonly bit and that the frame is guest memory; later pins
//! only count, and only an upgrade to writable checks the readonly bit;
//! GTF_reading while pinned, GTF_writing while there are writers; the frame
//! captured at the first pin. Entries and access flags are read from the
//! table frames by their ABI offsets.

use std::cell::RefCell;
use std::collections::BTreeMap;

use arbitrary::Arbitrary;

use sim_core::GuestMemory;

use crate::gnttab::{GrantError, GrantTable, GrantTableState, MapHandle};

const READING: u16 = 1 << 3;
const WRITING: u16 = 1 << 4;
const READONLY: u16 = 1 << 2;
const SUB_PAGE: u16 = 1 << 8;
const PERMIT_ACCESS: u16 = 1;
/// Guest RAM: 2 MiB = 512 frames; anything else is not guest memory.
const RAM_FRAMES: u64 = 512;

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub v2: bool,
    /// max_frames for the table (1..=4).
    pub max_frames: u8,
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// The guest writes entry `gref` (access bits are not the guest's).
    Write {
        gref: u16,
        flags: u16,
        domid: u8,
        frame: u16,
    },
    Map {
        refs: Vec<u16>,
        writable: bool,
    },
    Unmap(u8),
    /// Grow the table by asking for frame `idx` (add_to_physmap does).
    Frame(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Pin {
    readers: u32,
    writers: u32,
    gfn: u64,
}

#[derive(Default)]
struct RefModel {
    v2: bool,
    frames: u32,
    max_frames: u32,
    /// gref -> (flags without access bits, domid, frame).
    entries: BTreeMap<u32, (u16, u16, u64)>,
    pins: BTreeMap<u32, Pin>,
    maps: Vec<(Vec<u32>, bool)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Refused {
    BadRef(u32),
    Denied(u32),
    ReadOnly(u32),
    BadFrame(u32),
    Empty,
}

impl RefModel {
    fn per_frame(&self) -> u32 {
        if self.v2 {
            256
        } else {
            512
        }
    }

    fn nr_entries(&self) -> u32 {
        self.frames * self.per_frame()
    }

    fn entry(&self, gref: u32) -> (u16, u16, u64) {
        self.entries.get(&gref).copied().unwrap_or_default()
    }

    fn access(&self, gref: u32) -> u16 {
        match self.pins.get(&gref) {
            Some(p) if p.writers > 0 => READING | WRITING,
            Some(_) => READING,
            None => 0,
        }
    }

    fn pin(&mut self, gref: u32, writable: bool) -> Result<(), Refused> {
        if gref >= self.nr_entries() {
            return Err(Refused::BadRef(gref));
        }
        let (flags, domid, frame) = self.entry(gref);
        let cur = self.pins.get(&gref).copied();
        if cur.is_none() {
            // _set_status_v1/_v2 both refuse GTF_sub_page for a mapping.
            let ty_ok = flags & 3 == PERMIT_ACCESS && flags & SUB_PAGE == 0;
            if !ty_ok || domid != 0 {
                return Err(Refused::Denied(gref));
            }
        }
        let first_writer = writable && cur.is_none_or(|p| p.writers == 0);
        if first_writer && flags & READONLY != 0 {
            return Err(Refused::ReadOnly(gref));
        }
        if cur.is_none() && frame >= RAM_FRAMES {
            return Err(Refused::BadFrame(gref));
        }
        let p = self.pins.entry(gref).or_insert(Pin { gfn: frame, ..Default::default() });
        if writable {
            p.writers += 1;
        } else {
            p.readers += 1;
        }
        Ok(())
    }

    fn unpin(&mut self, gref: u32, writable: bool) {
        if let Some(p) = self.pins.get_mut(&gref) {
            if writable {
                p.writers -= 1;
            } else {
                p.readers -= 1;
            }
            if p.readers + p.writers == 0 {
                self.pins.remove(&gref);
            }
        }
    }

    fn map(&mut self, refs: &[u32], writable: bool) -> Result<usize, Refused> {
        if refs.is_empty() {
            return Err(Refused::Empty);
        }
        for (i, &g) in refs.iter().enumerate() {
            if let Err(e) = self.pin(g, writable) {
                for &done in &refs[..i] {
                    self.unpin(done, writable);
                }
                return Err(e);
            }
        }
        self.maps.push((refs.to_vec(), writable));
        Ok(self.maps.len() - 1)
    }
}

fn refused(e: &GrantError) -> Option<Refused> {
    Some(match *e {
        GrantError::BadRef(g) => Refused::BadRef(g),
        // Xen reports both as GNTST_general_error from the same check.
        GrantError::NotGranted(g) | GrantError::Transitive(g) => Refused::Denied(g),
        GrantError::ReadOnlyGrant(g) => Refused::ReadOnly(g),
        GrantError::BadFrame(g) => Refused::BadFrame(g),
        GrantError::EmptyBatch => Refused::Empty,
        _ => return None,
    })
}

thread_local! {
    static MEM: GuestMemory = GuestMemory::new(2).unwrap_or_else(|e| panic!("fuzz: guest memory: {e}"));
    /// A table per frame limit, with its state when new: each input starts
    /// from that state restored into the same frames (a new table per input
    /// would map and unmap its frame pages).
    static TABLES: RefCell<Vec<(GrantTable, GrantTableState)>> = RefCell::new(
        (1..=4).map(|max| { let t = GrantTable::new(max); let s = t.save_state(); (t, s) }).collect()
    );
}

pub fn run(input: &Input) -> Result<(), String> {
    let max_frames = u32::from(input.max_frames % 4) + 1;
    TABLES.with(|tables| {
        let mut tables = tables.borrow_mut();
        let (t, fresh) = &mut tables[max_frames as usize - 1];
        t.restore_state(fresh).map_err(|e| format!("resetting the table: {e}"))?;
        MEM.with(|mem| run_on(mem, t, max_frames, input))
    })
}

fn run_on(mem: &GuestMemory, t: &mut GrantTable, max_frames: u32, input: &Input) -> Result<(), String> {
    let mut m = RefModel { v2: input.v2, frames: 1, max_frames, ..Default::default() };
    if input.v2 {
        t.set_version(2).map_err(|e| format!("set_version(2) on a fresh table: {e:?}"))?;
    }
    // Live mappings: the model's handle and the reference's index.
    let mut live: Vec<(MapHandle, usize)> = Vec::new();
    for (i, op) in input.ops.iter().take(super::MAX_STEPS).enumerate() {
        let mut touched = touched_refs(op);
        let r = match op {
            Op::Write { gref, flags, domid, frame } => {
                let (g, fl, d, f) =
                    (u32::from(*gref), flags & !(READING | WRITING), u16::from(*domid % 3), u64::from(*frame));
                if g < m.nr_entries() {
                    write_entry(t, m.v2, g, fl, d, f);
                    m.entries.insert(g, (fl, d, f));
                }
                Ok(())
            }
            Op::Map { refs, writable } => {
                let refs: Vec<u32> = refs.iter().take(6).map(|&g| u32::from(g) % 1100).collect();
                let got = t.map(mem, &refs, *writable);
                let want = m.map(&refs, *writable);
                match (got, want) {
                    (Ok(h), Ok(idx)) => {
                        live.push((h, idx));
                        check_frames(t, &m, h, idx)
                    }
                    (Err(e), Err(w)) if refused(&e).as_ref() == Some(&w) => Ok(()),
                    (got, want) => Err(format!("map {refs:?}: model {got:?}, reference {want:?}")),
                }
            }
            Op::Unmap(k) => {
                if live.is_empty() {
                    Ok(())
                } else {
                    let (h, idx) = live.remove(usize::from(*k) % live.len());
                    let (refs, w) = m.maps[idx].clone();
                    touched.extend(&refs);
                    for g in refs {
                        m.unpin(g, w);
                    }
                    t.unmap(h).map_err(|e| format!("unmap of live {h:?}: {e}"))
                }
            }
            Op::Frame(idx) => {
                let idx = u32::from(*idx % 8);
                let ok = t.frame(idx, false).is_ok();
                let want = idx < m.max_frames;
                if want {
                    m.frames = m.frames.max(idx + 1);
                }
                if ok == want {
                    Ok(())
                } else {
                    Err(format!("frame({idx}): model {ok}, reference {want}"))
                }
            }
        };
        r.and_then(|()| compare(t, &m, touched))
            .and_then(|()| t.check_invariants(false))
            .map_err(|e| format!("op {i} ({op:?}): {e}"))?;
    }
    compare(t, &m, 0..m.nr_entries()).and_then(|()| t.check_invariants(true)).map_err(|e| format!("at the end: {e}"))
}

/// The guest's entry write, by the ABI layout (flags last).
fn write_entry(t: &GrantTable, v2: bool, gref: u32, flags: u16, domid: u16, frame: u64) {
    let size = if v2 { 16 } else { 8 };
    let Some(page) = t.frame_page(gref * size / 4096, false) else { return };
    let off = (gref * size % 4096) as usize;
    let mut old = [0u8; 2];
    page.read(off, &mut old);
    let keep = if v2 { 0 } else { u16::from_le_bytes(old) & (READING | WRITING) };
    page.write(off + 2, &domid.to_le_bytes());
    if v2 {
        page.write(off + 8, &frame.to_le_bytes());
    } else {
        page.write(off + 4, &(frame as u32).to_le_bytes());
    }
    page.write(off, &(flags | keep).to_le_bytes());
}

/// Access bits as the guest sees them: v1 in the entry, v2 in the status frame.
fn access_bits(t: &GrantTable, v2: bool, gref: u32) -> u16 {
    let mut b = [0u8; 2];
    let (page, off) = if v2 {
        (t.frame_page(gref * 2 / 4096, true), gref * 2 % 4096)
    } else {
        (t.frame_page(gref * 8 / 4096, false), gref * 8 % 4096)
    };
    if let Some(p) = page {
        p.read(off as usize, &mut b);
    }
    u16::from_le_bytes(b) & (READING | WRITING)
}

/// The references an operation can change (the rest are compared at the end).
fn touched_refs(op: &Op) -> Vec<u32> {
    match op {
        Op::Write { gref, .. } => vec![u32::from(*gref)],
        Op::Map { refs, .. } => refs.iter().take(6).map(|&g| u32::from(g) % 1100).collect(),
        Op::Unmap(_) | Op::Frame(_) => Vec::new(),
    }
}

fn compare(t: &GrantTable, m: &RefModel, refs: impl IntoIterator<Item = u32>) -> Result<(), String> {
    if t.nr_frames() != m.frames {
        return Err(format!("frames: model {}, reference {}", t.nr_frames(), m.frames));
    }
    let pinned: Vec<u32> = m.pins.keys().copied().collect();
    for gref in refs.into_iter().chain(pinned).filter(|&g| g < m.nr_entries()) {
        let (got, want) = (access_bits(t, m.v2, gref), m.access(gref));
        if got != want {
            return Err(format!("gref {gref} access bits: model {got:#x}, reference {want:#x}"));
        }
        let pins = m.pins.get(&gref).map(|p| (p.readers, p.writers)).unwrap_or((0, 0));
        if t.pins(gref, 0) != pins {
            return Err(format!("gref {gref} pins: model {:?}, reference {pins:?}", t.pins(gref, 0)));
        }
    }
    Ok(())
}

/// Each page of a new mapping is the frame captured at the reference's first pin.
fn check_frames(t: &GrantTable, m: &RefModel, h: MapHandle, idx: usize) -> Result<(), String> {
    for (i, g) in m.maps[idx].0.iter().enumerate() {
        let want = m.pins.get(g).map(|p| p.gfn);
        let got = t.mapped_gfn(h, i).ok();
        if got != want {
            return Err(format!("page {i} (gref {g}) maps gfn {got:?}, reference {want:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod reset_tests {
    use super::*;

    /// After an input that switched to v2, grew the table, wrote and mapped
    /// entries, the next input's table is exactly a new one.
    #[test]
    fn each_input_starts_from_a_new_table() {
        let input = Input {
            v2: true,
            max_frames: 3,
            ops: vec![
                Op::Frame(2),
                Op::Write { gref: 700, flags: 1, domid: 0, frame: 0x42 },
                Op::Map { refs: vec![700], writable: true },
            ],
        };
        assert_eq!(run(&input), Ok(()));
        let bytes = |t: &GrantTable| rmp_serde::to_vec(&t.save_state()).unwrap();
        let used = TABLES.with(|t| bytes(&t.borrow()[3].0));
        assert_ne!(used, bytes(&GrantTable::new(4)), "the input changed the table");
        let next = Input { v2: false, max_frames: 3, ops: vec![] };
        assert_eq!(run(&next), Ok(()));
        assert_eq!(TABLES.with(|t| bytes(&t.borrow()[3].0)), bytes(&GrantTable::new(4)));
    }
}
