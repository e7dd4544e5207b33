//! Guest-physical memory: RAM on vm-memory's `GuestMemoryMmap` plus overlay
//! pages that the platform maps into guest-physical space at run time
//! (shared_info, grant frames, rings). Overlays shadow RAM where they overlap,
//! and every change of the map is announced to the registered listeners so
//! that all consumers (KVM slots, dirty tracking, CPU caches) agree on it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};

pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;
/// Start of the hole below 4 GiB that holds MMIO (LAPIC, IOAPIC, PCI BARs).
pub const PCI_HOLE_START: u64 = 0xC000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("guest-physical address {0:#x} is not backed by RAM or an overlay page")]
    Unbacked(u64),
    #[error("cannot allocate {0} MiB of guest RAM: {1}")]
    Alloc(u64, String),
    #[error("guest RAM size must be at least 2 MiB, got {0} MiB")]
    TooSmall(u64),
}

/// One page of host memory that the platform can place into guest-physical
/// space. Cloning shares the page: the platform keeps a handle and writes it
/// directly while the guest sees it at its mapped frame.
#[derive(Clone, Debug)]
pub struct OverlayPage(Arc<MmapRegion>);

impl OverlayPage {
    /// A new zero-filled page (anonymous mmap, so it is page-aligned as KVM
    /// memory slots require).
    pub fn new() -> Self {
        let region = MmapRegion::new(PAGE_SIZE as usize).expect("mmap of one anonymous page");
        OverlayPage(Arc::new(region))
    }

    /// Host address of the page's first byte.
    pub fn host_addr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE as usize);
        // SAFETY: the region is PAGE_SIZE bytes long and lives as long as self;
        // guest memory is plain bytes that any party may change (volatile
        // semantics are not required for a single-threaded machine).
        unsafe { std::ptr::copy_nonoverlapping(self.host_addr().add(offset), buf.as_mut_ptr(), buf.len()) }
    }

    pub fn write(&self, offset: usize, buf: &[u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE as usize);
        // SAFETY: as in `read`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.host_addr().add(offset), buf.len()) }
    }

    /// The little-endian u32 at `offset` (ring indexes and flags).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_u32(&self, offset: usize, v: u32) {
        self.write(offset, &v.to_le_bytes());
    }

    pub fn same_page(&self, other: &OverlayPage) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for OverlayPage {
    fn default() -> Self {
        Self::new()
    }
}

/// A change of the guest-physical address map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapChange {
    /// An overlay page now appears at `gfn`; `host_addr` is its backing.
    OverlayMapped { gfn: u64, host_addr: usize },
    /// The overlay page at `gfn` is gone; RAM (if any) shows through again.
    OverlayUnmapped { gfn: u64 },
}

/// Told of every change of the address map, in order.
pub trait MemoryListener: Send {
    fn map_changed(&mut self, change: MapChange);
}

/// What lives at a guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    Ram,
    Overlay,
    /// Neither RAM nor overlay: an access goes to the MMIO bus.
    Mmio,
}

pub struct GuestMemory {
    ram: GuestMemoryMmap,
    ram_ranges: Vec<(u64, u64)>,
    overlays: BTreeMap<u64, OverlayPage>,
    listeners: Vec<Box<dyn MemoryListener>>,
    generation: u64,
    /// One bit per RAM page, set when the page is written (see `mark_dirty`).
    dirty: DirtyBitmap,
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory")
            .field("ram_ranges", &self.ram_ranges)
            .field("overlays", &self.overlays.keys().collect::<Vec<_>>())
            .field("generation", &self.generation)
            .finish()
    }
}

impl GuestMemory {
    /// `mib` MiB of RAM: below the PCI hole first, the rest above 4 GiB.
    pub fn new(mib: u64) -> Result<Self, MemoryError> {
        if mib < 2 {
            return Err(MemoryError::TooSmall(mib));
        }
        let total = mib << 20;
        let low = total.min(PCI_HOLE_START);
        let mut ranges = vec![(0, low)];
        if total > low {
            ranges.push((FOUR_GIB, total - low));
        }
        let regions: Vec<(GuestAddress, usize)> = ranges.iter().map(|&(s, l)| (GuestAddress(s), l as usize)).collect();
        let ram = GuestMemoryMmap::from_ranges(&regions).map_err(|e| MemoryError::Alloc(mib, e.to_string()))?;
        let dirty = DirtyBitmap::new(&ranges);
        Ok(GuestMemory {
            ram,
            ram_ranges: ranges,
            overlays: BTreeMap::new(),
            listeners: Vec::new(),
            generation: 0,
            dirty,
        })
    }

    /// RAM ranges as (start, length), ascending.
    pub fn ram_ranges(&self) -> &[(u64, u64)] {
        &self.ram_ranges
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_ranges.iter().map(|r| r.1).sum()
    }

    pub fn is_ram(&self, gpa: u64) -> bool {
        self.ram_ranges.iter().any(|&(s, l)| gpa >= s && gpa - s < l)
    }

    pub fn backing(&self, gpa: u64) -> Backing {
        if self.overlays.contains_key(&(gpa >> PAGE_SHIFT)) {
            Backing::Overlay
        } else if self.is_ram(gpa) {
            Backing::Ram
        } else {
            Backing::Mmio
        }
    }

    /// Bumped on every change of the map; caches of host pointers keyed by
    /// guest address must be dropped when it changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The underlying RAM (for backends that register it, e.g. KVM slots).
    pub fn ram(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// Host pointer to the start of the page holding `gpa`, if the page is
    /// RAM or overlay. Valid until `generation()` changes or `self` drops.
    pub fn page_host_ptr(&self, gpa: u64) -> Option<*mut u8> {
        let gfn = gpa >> PAGE_SHIFT;
        if let Some(p) = self.overlays.get(&gfn) {
            return Some(p.host_addr());
        }
        let base = gfn << PAGE_SHIFT;
        if !self.is_ram(base) {
            return None;
        }
        self.ram.get_host_address(GuestAddress(base)).ok()
    }

    /// Map `page` at frame `gfn`, replacing any overlay there. Returns the
    /// page it replaced.
    pub fn map_overlay(&mut self, gfn: u64, page: OverlayPage) -> Option<OverlayPage> {
        let host_addr = page.host_addr() as usize;
        let old = self.overlays.insert(gfn, page);
        self.generation += 1;
        self.announce(MapChange::OverlayMapped { gfn, host_addr });
        old
    }

    /// Remove the overlay at `gfn`, if any.
    pub fn unmap_overlay(&mut self, gfn: u64) -> Option<OverlayPage> {
        let old = self.overlays.remove(&gfn)?;
        self.generation += 1;
        self.announce(MapChange::OverlayUnmapped { gfn });
        Some(old)
    }

    pub fn overlay_at(&self, gfn: u64) -> Option<&OverlayPage> {
        self.overlays.get(&gfn)
    }

    /// Overlay frames in ascending order.
    pub fn overlays(&self) -> impl Iterator<Item = (u64, &OverlayPage)> {
        self.overlays.iter().map(|(g, p)| (*g, p))
    }

    pub fn add_listener(&mut self, listener: Box<dyn MemoryListener>) {
        self.listeners.push(listener);
    }

    fn announce(&mut self, change: MapChange) {
        for l in &mut self.listeners {
            l.map_changed(change);
        }
    }

    /// Read guest-physical memory; the range may cross pages and backings.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.for_each_page(gpa, buf.len(), |addr, off, len| {
            let chunk = &mut buf[off..off + len];
            if let Some(p) = self.overlays.get(&(addr >> PAGE_SHIFT)) {
                p.read((addr & (PAGE_SIZE - 1)) as usize, chunk);
                Ok(())
            } else {
                self.ram.read_slice(chunk, GuestAddress(addr)).map_err(|_| MemoryError::Unbacked(addr))
            }
        })
    }

    /// Read RAM itself, ignoring overlay pages mapped over it: what dirty
    /// tracking covers (overlay pages are the platform's, not RAM's).
    pub fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.ram.read_slice(buf, GuestAddress(gpa)).map_err(|_| MemoryError::Unbacked(gpa))
    }

    /// Write RAM itself, beneath any overlay page mapped over it (restoring
    /// a RAM image: the overlay's contents are the platform's state), and
    /// mark the pages dirty.
    pub fn write_ram(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.for_each_page(gpa, buf.len(), |addr, off, len| {
            self.ram.write_slice(&buf[off..off + len], GuestAddress(addr)).map_err(|_| MemoryError::Unbacked(addr))?;
            self.dirty.mark(addr);
            Ok(())
        })
    }

    /// Write guest-physical memory; the range may cross pages and backings.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.for_each_page(gpa, buf.len(), |addr, off, len| {
            let chunk = &buf[off..off + len];
            if let Some(p) = self.overlays.get(&(addr >> PAGE_SHIFT)) {
                p.write((addr & (PAGE_SIZE - 1)) as usize, chunk);
                Ok(())
            } else {
                self.ram.write_slice(chunk, GuestAddress(addr)).map_err(|_| MemoryError::Unbacked(addr))?;
                self.dirty.mark(addr);
                Ok(())
            }
        })
    }

    /// Note that the RAM page holding `gpa` was written. `write` does this
    /// itself; whoever stores through a host pointer from `page_host_ptr`
    /// must call it (once per page between two `take_dirty` calls is enough,
    /// see `dirty_epoch`). Addresses outside RAM are ignored.
    pub fn mark_dirty(&self, gpa: u64) {
        self.dirty.mark(gpa);
    }

    /// RAM frames written since the last call, ascending, and a clear
    /// bitmap. Bumps `dirty_epoch`.
    pub fn take_dirty(&mut self) -> Vec<u64> {
        self.dirty.epoch.fetch_add(1, Ordering::Relaxed);
        self.dirty.take()
    }

    /// RAM frames written since the last call (the state hash's own record,
    /// independent of `take_dirty`'s), ascending, and a clear plane. Bumps
    /// `dirty_epoch` so host-pointer writers mark pages again.
    pub fn take_hash_dirty(&self) -> Vec<u64> {
        self.dirty.epoch.fetch_add(1, Ordering::Relaxed);
        DirtyBitmap::collect_plane(&self.dirty.ranges, &self.dirty.hash_words, true)
    }

    /// RAM frames written since the last `take_dirty`, without clearing.
    pub fn dirty_frames(&self) -> Vec<u64> {
        self.dirty.frames()
    }

    /// Bumped by every `take_dirty`. A CPU that marks pages once when it
    /// caches a writable host pointer must drop those pointers when this
    /// changes, so the next store through them marks the page again.
    pub fn dirty_epoch(&self) -> u64 {
        self.dirty.epoch.load(Ordering::Relaxed)
    }

    fn for_each_page(
        &self,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let mut off = 0usize;
        while off < len {
            let addr = gpa.wrapping_add(off as u64);
            let in_page = (PAGE_SIZE - (addr & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(len - off);
            f(addr, off, n)?;
            off += n;
        }
        Ok(())
    }

    pub fn read_u8(&self, gpa: u64) -> Result<u8, MemoryError> {
        let mut b = [0u8; 1];
        self.read(gpa, &mut b)?;
        Ok(b[0])
    }
    pub fn read_u16(&self, gpa: u64) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    pub fn write_u8(&self, gpa: u64, v: u8) -> Result<(), MemoryError> {
        self.write(gpa, &[v])
    }
    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), MemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Size of RAM below 4 GiB, in bytes.
    pub fn low_ram_size(&self) -> u64 {
        self.ram_ranges.first().map(|r| r.1).unwrap_or(0)
    }

    /// Every RAM region's (guest address, length, host address), for
    /// backends that map RAM wholesale.
    pub fn ram_regions(&self) -> Vec<(u64, u64, usize)> {
        self.ram
            .iter()
            .map(|r| {
                let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).unwrap() as usize;
                (r.start_addr().0, r.len(), host)
            })
            .collect()
    }
}

/// One bit per page of each RAM range.
struct DirtyBitmap {
    /// (first gpa, pages, index of its first bit)
    ranges: Vec<(u64, u64, u64)>,
    /// Written since the last snapshot (`take_dirty`).
    words: Vec<AtomicU64>,
    /// Written since the last state hash (`take_hash_dirty`): a second
    /// consumer with its own plane, so neither steals the other's bits.
    hash_words: Vec<AtomicU64>,
    epoch: AtomicU64,
}

impl DirtyBitmap {
    fn new(ram: &[(u64, u64)]) -> Self {
        let mut ranges = Vec::new();
        let mut bits = 0;
        for &(start, len) in ram {
            let pages = len >> PAGE_SHIFT;
            ranges.push((start, pages, bits));
            bits += pages;
        }
        let plane = || (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        DirtyBitmap { ranges, words: plane(), hash_words: plane(), epoch: AtomicU64::new(0) }
    }

    fn bit(&self, gpa: u64) -> Option<u64> {
        let gfn = gpa >> PAGE_SHIFT;
        self.ranges.iter().find_map(|&(start, pages, first)| {
            let i = gfn.checked_sub(start >> PAGE_SHIFT)?;
            (i < pages).then_some(first + i)
        })
    }

    fn mark(&self, gpa: u64) {
        if let Some(b) = self.bit(gpa) {
            if let Some(w) = self.words.get((b / 64) as usize) {
                // Relaxed: the bitmap is read at round boundaries, after the
                // writers (this thread's vCPUs) are done.
                w.fetch_or(1 << (b % 64), Ordering::Relaxed);
            }
            if let Some(w) = self.hash_words.get((b / 64) as usize) {
                w.fetch_or(1 << (b % 64), Ordering::Relaxed);
            }
        }
    }

    fn collect(&self, clear: bool) -> Vec<u64> {
        Self::collect_plane(&self.ranges, &self.words, clear)
    }

    fn collect_plane(ranges: &[(u64, u64, u64)], words: &[AtomicU64], clear: bool) -> Vec<u64> {
        let mut out = Vec::new();
        for &(start, pages, first) in ranges {
            let mut i = 0;
            while i < pages {
                let b = first + i;
                let Some(w) = words.get((b / 64) as usize) else { break };
                let v = w.load(Ordering::Relaxed) >> (b % 64);
                if v == 0 {
                    // The rest of this word is clean.
                    i += 64 - b % 64;
                    continue;
                }
                let skip = v.trailing_zeros() as u64;
                i += skip;
                if i < pages {
                    out.push((start >> PAGE_SHIFT) + i);
                }
                i += 1;
            }
        }
        if clear {
            for w in words {
                w.store(0, Ordering::Relaxed);
            }
        }
        out
    }

    fn take(&self) -> Vec<u64> {
        self.collect(true)
    }

    fn frames(&self) -> Vec<u64> {
        self.collect(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn ram_splits_around_the_pci_hole() {
        let m = GuestMemory::new(4096).unwrap();
        assert_eq!(m.ram_ranges(), &[(0, PCI_HOLE_START), (FOUR_GIB, (4096 << 20) - PCI_HOLE_START)]);
        assert_eq!(m.ram_size(), 4096 << 20);
        assert_eq!(m.backing(PCI_HOLE_START), Backing::Mmio);
        assert_eq!(m.backing(FOUR_GIB), Backing::Ram);
        assert!(m.read_u8(PCI_HOLE_START).is_err());
    }

    #[test]
    fn small_ram_is_one_range() {
        let m = GuestMemory::new(16).unwrap();
        assert_eq!(m.ram_ranges(), &[(0, 16 << 20)]);
        assert_eq!(GuestMemory::new(1).unwrap_err(), MemoryError::TooSmall(1));
    }

    #[test]
    fn access_crossing_pages_and_backings() {
        let mut m = GuestMemory::new(4).unwrap();
        let p = OverlayPage::new();
        m.map_overlay(1, p.clone());
        m.write(0xffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [3, 4], "bytes past the page boundary land in the overlay");
        assert_eq!(m.read_u32(0xffe).unwrap(), u32::from_le_bytes([1, 2, 3, 4]));
        // Unmapping shows the RAM underneath, which was never written.
        m.unmap_overlay(1);
        assert_eq!(m.read_u16(0x1000).unwrap(), 0);
    }

    #[test]
    fn overlay_outside_ram_is_backed() {
        let mut m = GuestMemory::new(4).unwrap();
        let gfn = 0xF0000;
        assert_eq!(m.backing(gfn << 12), Backing::Mmio);
        m.map_overlay(gfn, OverlayPage::new());
        assert_eq!(m.backing(gfn << 12), Backing::Overlay);
        m.write_u64((gfn << 12) + 8, 0xdead_beef).unwrap();
        assert_eq!(m.read_u64((gfn << 12) + 8).unwrap(), 0xdead_beef);
        assert!(m.page_host_ptr(gfn << 12).is_some());
    }

    struct Recorder(Arc<Mutex<Vec<MapChange>>>);
    impl MemoryListener for Recorder {
        fn map_changed(&mut self, c: MapChange) {
            self.0.lock().unwrap().push(c);
        }
    }

    #[test]
    fn listeners_see_every_change_in_order() {
        let mut m = GuestMemory::new(4).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        m.add_listener(Box::new(Recorder(log.clone())));
        let p = OverlayPage::new();
        let g0 = m.generation();
        m.map_overlay(7, p.clone());
        assert!(m.unmap_overlay(8).is_none(), "nothing mapped there");
        m.unmap_overlay(7);
        assert_eq!(m.generation(), g0 + 2);
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                MapChange::OverlayMapped { gfn: 7, host_addr: p.host_addr() as usize },
                MapChange::OverlayUnmapped { gfn: 7 }
            ]
        );
    }

    #[test]
    fn writes_mark_ram_pages_dirty_until_taken() {
        // 4 GiB + 8 MiB: two RAM ranges, the second above the PCI hole.
        let mut m = GuestMemory::new(3072 + 1024 + 8).unwrap();
        assert!(m.take_dirty().is_empty(), "fresh RAM is clean");
        m.write_u8(0x1000, 1).unwrap();
        m.write(0x2ffe, &[1, 2, 3, 4]).unwrap(); // frames 2 and 3
        m.write_u64(FOUR_GIB + 0x5000, 7).unwrap();
        m.mark_dirty(64 * 4096); // the first frame of the second bitmap word
        m.mark_dirty(PCI_HOLE_START); // MMIO: ignored
        let gfn4g = FOUR_GIB >> PAGE_SHIFT;
        let want = vec![1, 2, 3, 64, gfn4g + 5];
        assert_eq!(m.dirty_frames(), want);
        let e = m.dirty_epoch();
        assert_eq!(m.take_dirty(), want);
        assert_eq!(m.dirty_epoch(), e + 1);
        assert!(m.take_dirty().is_empty());
        // Overlay writes are not RAM writes.
        m.map_overlay(9, OverlayPage::new());
        m.write_u8(9 << 12, 1).unwrap();
        assert!(m.take_dirty().is_empty());
        // The last page of RAM.
        m.write_u8(m.ram_size() - PCI_HOLE_START + FOUR_GIB - 1, 1).unwrap();
        assert_eq!(m.take_dirty(), vec![gfn4g + ((4096 + 8 - 3072) << 8) - 1]);
    }
}
