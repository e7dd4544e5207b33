//! RAM hashes by region for state digests, kept up to date page by page.
//!
//! A region's hash is BLAKE3 of its bytes. BLAKE3 is a tree over 1 KiB
//! chunks, so a region's hash can be rebuilt from the chaining values of
//! its 4 KiB pages (subtrees at page-aligned offsets) with one compression
//! per tree node. Each region keeps its pages' chaining values; a digest
//! hashes again only the pages written since the last one and re-merges
//! their regions' trees. Where writes are tracked exactly (the interpreter)
//! RAM starts zeroed and every write since power-on is in the hash-dirty
//! plane, so the first digest starts from zero pages instead of reading
//! all of RAM. Without exact tracking (KVM) every region is hashed whole.
//! RAM is read beneath any overlay page mapped over it: overlay contents
//! change without dirty marks and are hashed as a component of their own.

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};

use super::snapshot::{Hash, RAM_REGION};
use crate::memory::{GuestMemory, PAGE_SHIFT, PAGE_SIZE};

struct Region {
    start: u64,
    len: u64,
    hash: Hash,
    /// Chaining value of each page, as a subtree at its offset in the region.
    pages: Vec<ChainingValue>,
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
            self.regions = ram_regions(mem.ram_ranges()).map(|(start, len)| zero_region(start, len)).collect();
        }
        let mut stale = Vec::new();
        let mut buf = [0u8; PAGE_SIZE as usize];
        for &gfn in written {
            let Some(gpa) = gfn.checked_shl(PAGE_SHIFT).filter(|g| g >> PAGE_SHIFT == gfn) else { continue };
            // Regions are in address order and do not overlap.
            let i = self.regions.partition_point(|r| r.start + r.len <= gpa);
            let Some(r) = self.regions.get_mut(i).filter(|r| gpa >= r.start) else { continue };
            let off = gpa - r.start;
            let n = PAGE_SIZE.min(r.len - off) as usize;
            let cv = match mem.read_ram(gpa, &mut buf[..n]) {
                Ok(()) => page_cv(&buf[..n], off),
                Err(_) => page_cv(&[0; PAGE_SIZE as usize][..n], off),
            };
            if let Some(p) = r.pages.get_mut((off >> PAGE_SHIFT) as usize) {
                *p = cv;
            }
            if stale.last() != Some(&i) {
                stale.push(i);
            }
        }
        stale.dedup();
        for i in stale {
            if let Some(r) = self.regions.get_mut(i) {
                r.hash = root(mem, r);
            }
        }
        self.regions.iter().map(|r| (r.start, r.hash)).collect()
    }
}

/// The chaining value of `page`, a subtree at `offset` into its region.
fn page_cv(page: &[u8], offset: u64) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(offset).update(page).finalize_non_root()
}

/// The chaining value of the subtree of `len` bytes at `offset`, from the
/// pages' (BLAKE3 splits a subtree at the largest power of two below its
/// length: page boundaries, for subtrees longer than a page).
fn subtree(pages: &[ChainingValue], offset: u64, len: u64) -> ChainingValue {
    if len <= PAGE_SIZE {
        return pages.get((offset >> PAGE_SHIFT) as usize).copied().unwrap_or_default();
    }
    let left = left_subtree_len(len);
    merge_subtrees_non_root(&subtree(pages, offset, left), &subtree(pages, offset + left, len - left), Mode::Hash)
}

/// The region's hash from its pages' chaining values. A region of one page
/// or less is its own root and is hashed from memory.
fn root(mem: &GuestMemory, r: &Region) -> Hash {
    if r.len <= PAGE_SIZE {
        return hash_whole(mem, r.start, r.len);
    }
    let left = left_subtree_len(r.len);
    let root = merge_subtrees_root(&subtree(&r.pages, 0, left), &subtree(&r.pages, left, r.len - left), Mode::Hash);
    *root.as_bytes()
}

/// A region of zeroes (fresh RAM).
fn zero_region(start: u64, len: u64) -> Region {
    static ZERO_PAGES: std::sync::OnceLock<Vec<ChainingValue>> = std::sync::OnceLock::new();
    static ZERO_HASH: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    let zero_pages = ZERO_PAGES.get_or_init(|| {
        let zero = [0u8; PAGE_SIZE as usize];
        (0..RAM_REGION / PAGE_SIZE).map(|k| page_cv(&zero, k * PAGE_SIZE)).collect()
    });
    let mut pages: Vec<ChainingValue> = zero_pages.iter().take(len.div_ceil(PAGE_SIZE) as usize).copied().collect();
    if len % PAGE_SIZE != 0 {
        // A short last page has its own chaining value.
        if let Some(last) = pages.last_mut() {
            let off = len / PAGE_SIZE * PAGE_SIZE;
            *last = page_cv(&[0; PAGE_SIZE as usize][..(len - off) as usize], off);
        }
    }
    let hash = match len {
        RAM_REGION => *ZERO_HASH.get_or_init(|| zero_hash(RAM_REGION)),
        _ => zero_hash(len),
    };
    Region { start, len, hash, pages }
}

/// BLAKE3 of `len` zero bytes.
fn zero_hash(len: u64) -> Hash {
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
            assert_eq!(zero_region(0, len).hash, want, "{len} bytes");
            let r = zero_region(0, len);
            if len > PAGE_SIZE {
                let left = left_subtree_len(len);
                let merged =
                    merge_subtrees_root(&subtree(&r.pages, 0, left), &subtree(&r.pages, left, len - left), Mode::Hash);
                assert_eq!(*merged.as_bytes(), want, "{len} bytes rebuilt from zero pages");
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
