//! RAM hashes by region for state digests, kept up to date page by page.
//!
//! A region's hash is BLAKE3 of its bytes. BLAKE3 is a tree over 1 KiB
//! chunks, so a region's hash can be rebuilt from the chaining values of
//! its 4 KiB pages (subtrees at page-aligned offsets) with one compression
//! per tree node. Each written region keeps the whole tree of chaining
//! values above its pages: a digest hashes again only the pages written
//! since the last one and re-merges only the nodes above them (9 merges
//! for one page of a 2 MiB region, not 511). A region never written is
//! zero bytes and keeps no tree. Where writes are tracked exactly (the
//! interpreter) RAM starts zeroed and every write since power-on is in the
//! hash-dirty plane, so the first digest starts from zero regions instead
//! of reading all of RAM. Without exact tracking (KVM) every region is
//! hashed whole. RAM is read beneath any overlay page mapped over it:
//! overlay contents change without dirty marks and are hashed as a
//! component of their own.

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};

use super::snapshot::{Hash, RAM_REGION};
use crate::memory::{GuestMemory, PAGE_SHIFT, PAGE_SIZE};

struct Region {
    start: u64,
    len: u64,
    hash: Hash,
    /// The chaining values above the region's pages; `None` while the
    /// region has never been written (zero bytes) or is one page or less
    /// (hashed from memory: such a region is its own root).
    tree: Option<Box<PageTree>>,
    /// Written since `hash` was computed.
    stale: bool,
}

/// The BLAKE3 tree of a region longer than a page, down to its pages'
/// chaining values, laid out in pre-order: a node, then its left subtree,
/// then its right. Node 0 (the root) holds nothing: the region's hash is
/// finalized from its two children.
#[derive(Clone)]
struct PageTree {
    len: u64,
    cvs: Vec<ChainingValue>,
    /// Nodes above a page written since they were last merged.
    stale: Vec<bool>,
}

/// Nodes in the tree of a subtree of `len` bytes: one per page, and one
/// per merge of two subtrees.
fn nodes(len: u64) -> usize {
    (2 * len.div_ceil(PAGE_SIZE) - 1) as usize
}

impl PageTree {
    /// The tree of `len` zero bytes (len > PAGE_SIZE).
    fn zero(len: u64) -> PageTree {
        static REGION: std::sync::OnceLock<PageTree> = std::sync::OnceLock::new();
        if len == RAM_REGION {
            return REGION.get_or_init(|| PageTree::build_zero(RAM_REGION)).clone();
        }
        PageTree::build_zero(len)
    }

    fn build_zero(len: u64) -> PageTree {
        let n = nodes(len);
        let mut t = PageTree { len, cvs: vec![ChainingValue::default(); n], stale: vec![false; n] };
        // Every node computed: mark all stale and merge once, from pages
        // set to zero pages' chaining values.
        let zero = [0u8; PAGE_SIZE as usize];
        for k in 0..len.div_ceil(PAGE_SIZE) {
            let off = k * PAGE_SIZE;
            let n = PAGE_SIZE.min(len - off) as usize;
            t.set_page(off, page_cv(&zero[..n], off));
        }
        t.root();
        t
    }

    /// Set the chaining value of the page at `offset` and mark the nodes
    /// above it for merging.
    fn set_page(&mut self, offset: u64, cv: ChainingValue) {
        let (mut idx, mut base, mut len) = (0usize, 0u64, self.len);
        while len > PAGE_SIZE {
            if let Some(s) = self.stale.get_mut(idx) {
                *s = true;
            }
            let left = left_subtree_len(len);
            if offset < base + left {
                idx += 1;
                len = left;
            } else {
                idx += 1 + nodes(left);
                base += left;
                len -= left;
            }
        }
        if let Some(c) = self.cvs.get_mut(idx) {
            *c = cv;
        }
    }

    /// The region's hash, merging again the nodes above pages set since.
    fn root(&mut self) -> Hash {
        let left = left_subtree_len(self.len);
        let l = self.merged(1, left);
        let r = self.merged(1 + nodes(left), self.len - left);
        if let Some(s) = self.stale.get_mut(0) {
            *s = false;
        }
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    }

    /// The chaining value of the subtree of `len` bytes at node `idx`.
    fn merged(&mut self, idx: usize, len: u64) -> ChainingValue {
        let cached = self.cvs.get(idx).copied().unwrap_or_default();
        if len <= PAGE_SIZE || !self.stale.get(idx).copied().unwrap_or(false) {
            return cached;
        }
        let left = left_subtree_len(len);
        let l = self.merged(idx + 1, left);
        let r = self.merged(idx + 1 + nodes(left), len - left);
        let cv = merge_subtrees_non_root(&l, &r, Mode::Hash);
        if let (Some(c), Some(s)) = (self.cvs.get_mut(idx), self.stale.get_mut(idx)) {
            *c = cv;
            *s = false;
        }
        cv
    }
}

/// The hashes of every RAM region, and what rebuilds them cheaply.
#[derive(Default)]
pub(crate) struct RamHashes {
    /// In address order; empty until the first digest.
    regions: Vec<Region>,
}

/// (start, length) of each region RAM is hashed by: every range cut into
/// `RAM_REGION`-sized pieces from its start, in address order.
pub(crate) fn ram_regions(ranges: &[(u64, u64)]) -> impl Iterator<Item = (u64, u64)> + '_ {
    ranges.iter().flat_map(|&(start, len)| {
        (0..len.div_ceil(RAM_REGION)).map(move |k| {
            let off = k * RAM_REGION;
            (start + off, RAM_REGION.min(len - off))
        })
    })
}

impl RamHashes {
    /// The region hashes now. `written` lists the RAM frames written since
    /// the last call (since power-on for the first); `exact` says whether
    /// that list is complete.
    pub(crate) fn update(&mut self, mem: &GuestMemory, written: &[u64], exact: bool) -> Vec<(u64, Hash)> {
        if !exact {
            self.regions.clear();
            return ram_regions(mem.ram_ranges()).map(|(start, len)| (start, hash_whole(mem, start, len))).collect();
        }
        if self.regions.is_empty() {
            self.regions = ram_regions(mem.ram_ranges())
                .map(|(start, len)| Region { start, len, hash: zero_hash(len), tree: None, stale: false })
                .collect();
        }
        let mut buf = [0u8; PAGE_SIZE as usize];
        for &gfn in written {
            let Some(gpa) = gfn.checked_shl(PAGE_SHIFT).filter(|g| g >> PAGE_SHIFT == gfn) else { continue };
            // Regions are in address order and do not overlap.
            let i = self.regions.partition_point(|r| r.start + r.len <= gpa);
            let Some(r) = self.regions.get_mut(i).filter(|r| gpa >= r.start) else { continue };
            r.stale = true;
            if r.len <= PAGE_SIZE {
                continue;
            }
            let off = gpa - r.start;
            let n = PAGE_SIZE.min(r.len - off) as usize;
            let cv = match mem.read_ram(gpa, &mut buf[..n]) {
                Ok(()) => page_cv(&buf[..n], off),
                Err(_) => page_cv(&[0; PAGE_SIZE as usize][..n], off),
            };
            r.tree.get_or_insert_with(|| Box::new(PageTree::zero(r.len))).set_page(off, cv);
        }
        for r in self.regions.iter_mut().filter(|r| r.stale) {
            r.stale = false;
            r.hash = match r.tree.as_mut() {
                Some(t) => t.root(),
                None => hash_whole(mem, r.start, r.len),
            };
        }
        self.regions.iter().map(|r| (r.start, r.hash)).collect()
    }
}

/// The chaining value of `page`, a subtree at `offset` into its region.
fn page_cv(page: &[u8], offset: u64) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(offset).update(page).finalize_non_root()
}

/// BLAKE3 of `len` zero bytes.
fn zero_hash(len: u64) -> Hash {
    static REGION: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    if len == RAM_REGION {
        return *REGION.get_or_init(|| PageTree::zero(RAM_REGION).root());
    }
    let zero = [0u8; PAGE_SIZE as usize];
    let mut h = blake3::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = PAGE_SIZE.min(left) as usize;
        h.update(&zero[..n]);
        left -= n as u64;
    }
    *h.finalize().as_bytes()
}

/// BLAKE3 of `len` bytes of RAM at `gpa`, read a chunk at a time.
fn hash_whole(mem: &GuestMemory, gpa: u64, len: u64) -> Hash {
    const CHUNK: u64 = 64 << 10;
    let mut buf = vec![0u8; CHUNK.min(len) as usize];
    let mut h = blake3::Hasher::new();
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off) as usize;
        if mem.read_ram(gpa + off, &mut buf[..n]).is_err() {
            return [0; 32];
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn regions_cut_each_range_from_its_start() {
        let ranges = [(0, 5 * MIB), (4096 * MIB, 2 * MIB)];
        let got: Vec<(u64, u64)> = ram_regions(&ranges).collect();
        assert_eq!(got, vec![(0, 2 * MIB), (2 * MIB, 2 * MIB), (4 * MIB, MIB), (4096 * MIB, 2 * MIB)]);
    }

    #[test]
    fn zero_regions_hash_as_blake3_of_zero_bytes() {
        for len in [RAM_REGION, MIB, 3 * PAGE_SIZE + 100, PAGE_SIZE, 100] {
            let want = *blake3::hash(&vec![0u8; len as usize]).as_bytes();
            assert_eq!(zero_hash(len), want, "{len} bytes");
            if len > PAGE_SIZE {
                assert_eq!(PageTree::zero(len).root(), want, "{len} bytes merged from zero pages");
            }
        }
    }

    /// A kept tree, pages set in any order over several rounds, against
    /// BLAKE3 of the bytes; lengths that are not a power of two pages (the
    /// tree is not complete) and a short last page included.
    #[test]
    fn page_trees_follow_their_bytes_through_rounds_of_writes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in [2 * PAGE_SIZE, 5 * PAGE_SIZE, 7 * PAGE_SIZE + 300, 100 * PAGE_SIZE, RAM_REGION] {
            let mut bytes = vec![0u8; len as usize];
            let mut t = PageTree::zero(len);
            let pages = len.div_ceil(PAGE_SIZE);
            for round in 0..4 {
                for _ in 0..(1 + round * 3) {
                    let page = next() % pages;
                    let off = page * PAGE_SIZE;
                    let end = (off + PAGE_SIZE).min(len);
                    let at = off + next() % (end - off);
                    bytes[at as usize] = next() as u8;
                    t.set_page(off, page_cv(&bytes[off as usize..end as usize], off));
                }
                assert_eq!(t.root(), *blake3::hash(&bytes).as_bytes(), "{len} bytes, round {round}");
            }
        }
    }

    /// BLAKE3 of every region, read whole: the definition the incremental
    /// hashes must meet.
    fn by_definition(mem: &GuestMemory) -> Vec<(u64, Hash)> {
        ram_regions(mem.ram_ranges())
            .map(|(start, len)| {
                let mut buf = vec![0u8; len as usize];
                mem.read_ram(start, &mut buf).unwrap();
                (start, *blake3::hash(&buf).as_bytes())
            })
            .collect()
    }

    #[test]
    fn written_pages_update_their_regions_hash() {
        let mem = GuestMemory::new(8).unwrap();
        let mut h = RamHashes::default();
        assert_eq!(h.update(&mem, &mem.take_hash_dirty(), true), by_definition(&mem), "fresh RAM");
        // A page in the middle, one at a region's end, and one spanning two.
        mem.write(0x1234, b"hello").unwrap();
        mem.write(RAM_REGION - 3, &[0xaa; 10]).unwrap();
        mem.write(5 * MIB, &[7; 3 * PAGE_SIZE as usize]).unwrap();
        let written = mem.take_hash_dirty();
        assert_eq!(written.len(), 1 + 2 + 3);
        let got = h.update(&mem, &written, true);
        assert_eq!(got, by_definition(&mem));
        assert_ne!(got[0].1, zero_hash(RAM_REGION), "region 0 was written");
        // Nothing written since: the same hashes without reading RAM.
        assert_eq!(h.update(&mem, &[], true), got);
        // Without exact tracking every region is read whole.
        let mut full = RamHashes::default();
        assert_eq!(full.update(&mem, &[], false), got);
        // An overlay page mapped over RAM and written: RAM beneath is unchanged.
        let mut mem = mem;
        mem.map_overlay(3, crate::memory::OverlayPage::new());
        mem.write(3 << PAGE_SHIFT, b"overlay").unwrap();
        let mut seen = [0u8; 7];
        mem.read(3 << PAGE_SHIFT, &mut seen).unwrap();
        assert_eq!(&seen, b"overlay", "reads see the overlay");
        assert_eq!(h.update(&mem, &mem.take_hash_dirty(), true), got);
        assert_eq!(full.update(&mem, &[], false), got);
    }
}
