//! Snapshot files: the whole machine at a round boundary in one versioned,
//! checksummed file.
//!
//! Layout: `MAGIC`, the format version (u32 LE), the metadata length (u32
//! LE), the number of RAM pages (u32 LE), the BLAKE3 of everything after it
//! (32 bytes), the metadata (rmp-serde of [`SnapHeader`] and the machine
//! state), then each RAM page as its frame number (u64 LE) and 4096 bytes.
//! Pages are raw rather than serde so loading a large image is a copy.
//!
//! A delta snapshot holds only the pages written since its parent (named in
//! the header with the parent's checksum); [`read_chain`] follows parents
//! back to a full image. Every length is checked against the file's size
//! before anything is allocated, so arbitrary bytes give a one-line error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sim_core::machine::snapshot::{hex, Hash, MachineState, RamImage};
use sim_core::machine::Machine;
use sim_core::memory::PAGE_SIZE;

use crate::log::{ImageHash, LogConfig};

pub const MAGIC: &[u8; 8] = b"XSIMSNAP";
/// 2: byte buffers in the machine and Xen state encode as MessagePack bin.
pub const FORMAT_VERSION: u32 = 2;
/// Preamble: magic, version, metadata length, page count, checksum.
const PREAMBLE: usize = 8 + 4 + 4 + 4 + 32;
const PAGE_RECORD: usize = 8 + PAGE_SIZE as usize;
/// Machine state without RAM is a few pages; this bounds a corrupt length.
const MAX_META: u32 = 64 << 20;
/// Deltas followed back to a full image before giving up.
const MAX_CHAIN: usize = 4096;

/// What the snapshot is of, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapHeader {
    pub xensim_version: String,
    pub config: LogConfig,
    pub cmdline: String,
    /// The kernel first, then the modules.
    pub images: Vec<ImageHash>,
    pub icount: u64,
    pub now_ns: u64,
    /// Taken while recording or replaying a log: the log's inputs delivered
    /// before this point (a replay from here skips them).
    pub inputs_consumed: Option<u64>,
    /// A delta: the file (in the same directory) whose RAM this completes,
    /// and that file's checksum.
    pub parent: Option<(String, Hash)>,
}

/// A whole machine (with `ram` a delta when `header.parent` is set).
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub header: SnapHeader,
    pub state: MachineState,
    pub ram: RamImage,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapError {
    #[error("not a xensim snapshot (bad magic)")]
    NotASnapshot,
    #[error("snapshot format version {0}, this xensim reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("snapshot is truncated or has trailing bytes ({0})")]
    Size(String),
    #[error("snapshot checksum mismatch (corrupt file)")]
    Checksum,
    #[error("snapshot metadata undecodable ({0})")]
    Decode(String),
    #[error("snapshot RAM page {0:#x} listed twice or out of order")]
    PageOrder(u64),
    #[error("{0}")]
    Mismatch(String),
}

/// A snapshot file's error with the file named.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

impl FileError {
    fn new(path: &Path, reason: impl std::fmt::Display) -> Self {
        FileError { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

impl Snapshot {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let meta = rmp_serde::to_vec(&(&self.header, &self.state, self.ram.full)).unwrap_or_default();
        let mut out = Vec::with_capacity(PREAMBLE + meta.len() + self.ram.pages.len() * PAGE_RECORD);
        out.extend_from_slice(MAGIC);
        out.extend(FORMAT_VERSION.to_le_bytes());
        out.extend((meta.len() as u32).to_le_bytes());
        out.extend((self.ram.pages.len() as u32).to_le_bytes());
        out.extend([0u8; 32]);
        out.extend_from_slice(&meta);
        for (gfn, page) in &self.ram.pages {
            out.extend(gfn.to_le_bytes());
            out.extend_from_slice(page);
        }
        let sum = blake3::hash(&out[PREAMBLE..]);
        out[PREAMBLE - 32..PREAMBLE].copy_from_slice(sum.as_bytes());
        out
    }

    /// The checksum stored in an encoded snapshot (what a delta names its
    /// parent by).
    pub fn checksum_of(bytes: &[u8]) -> Option<Hash> {
        bytes.get(PREAMBLE - 32..PREAMBLE)?.try_into().ok()
    }

    /// Check that this snapshot can be restored into a machine of `config`
    /// booted from `images`.
    pub fn check_fits(&self, config: &LogConfig, images: &[ImageHash]) -> Result<(), SnapError> {
        let h = &self.header;
        if h.config != *config {
            return Err(SnapError::Mismatch(format!(
                "snapshot of a {}-vCPU, {} MiB machine (quantum {}, limit {:?}, {:?}) does not fit this {}-vCPU, {} MiB one (quantum {}, limit {:?}, {:?})",
                h.config.cpus, h.config.memory_mib, h.config.quantum, h.config.max_instructions, h.config.vendor,
                config.cpus, config.memory_mib, config.quantum, config.max_instructions, config.vendor
            )));
        }
        let same = |a: &ImageHash, b: &ImageHash| a.len == b.len && a.blake3 == b.blake3;
        if h.images.len() != images.len() || !h.images.iter().zip(images).all(|(a, b)| same(a, b)) {
            let names: Vec<String> = h.images.iter().map(|i| format!("{} ({}…)", i.name, hex(&i.blake3, 6))).collect();
            return Err(SnapError::Mismatch(format!(
                "snapshot was taken booting {}; the images given differ",
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// Make `machine` (built with the snapshot's configuration) this
    /// snapshot. The snapshot must be whole (`read_chain` resolves deltas).
    pub fn restore_into(&self, machine: &mut Machine) -> Result<(), SnapError> {
        if !self.ram.full {
            return Err(SnapError::Mismatch("a delta snapshot needs its parents (use read_chain)".into()));
        }
        machine.restore_state(&self.state).map_err(SnapError::Mismatch)?;
        machine.restore_ram(&self.ram).map_err(SnapError::Mismatch)
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Parse snapshot bytes. Never panics and allocates no more than the input's
/// size: the fuzz target's entry point.
pub fn load(bytes: &[u8]) -> Result<Snapshot, SnapError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(SnapError::NotASnapshot);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(SnapError::Version(version));
    }
    if bytes.len() < PREAMBLE {
        return Err(SnapError::Size(format!("{} bytes, shorter than the preamble", bytes.len())));
    }
    let meta_len = u32_at(bytes, 12);
    let pages = u32_at(bytes, 16) as u64;
    if meta_len > MAX_META {
        return Err(SnapError::Size(format!("metadata length {meta_len} exceeds {MAX_META}")));
    }
    let want = (PREAMBLE as u64) + meta_len as u64 + pages * PAGE_RECORD as u64;
    if want != bytes.len() as u64 {
        return Err(SnapError::Size(format!("header promises {want} bytes, file has {}", bytes.len())));
    }
    if blake3::hash(&bytes[PREAMBLE..]).as_bytes()[..] != bytes[PREAMBLE - 32..PREAMBLE] {
        return Err(SnapError::Checksum);
    }
    let meta_end = PREAMBLE + meta_len as usize;
    let (header, state, full): (SnapHeader, MachineState, bool) =
        rmp_serde::from_slice(&bytes[PREAMBLE..meta_end]).map_err(|e| SnapError::Decode(e.to_string()))?;
    let mut ram = RamImage { full, pages: Vec::with_capacity(pages as usize) };
    let mut last = None;
    for rec in bytes[meta_end..].chunks_exact(PAGE_RECORD) {
        let mut g = [0u8; 8];
        g.copy_from_slice(&rec[..8]);
        let gfn = u64::from_le_bytes(g);
        if last.is_some_and(|l| gfn <= l) {
            return Err(SnapError::PageOrder(gfn));
        }
        last = Some(gfn);
        ram.pages.push((gfn, rec[8..].to_vec()));
    }
    Ok(Snapshot { header, state, ram })
}

/// Write `snap` to `path`, never replacing an existing file.
pub fn write(path: &Path, snap: &Snapshot) -> Result<Hash, FileError> {
    use std::io::Write;
    let bytes = snap.encode();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| FileError::new(path, e))?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(|e| FileError::new(path, e))?;
    Ok(Snapshot::checksum_of(&bytes).unwrap_or_default())
}

/// Read one snapshot file (a delta stays a delta).
pub fn read(path: &Path) -> Result<(Snapshot, Hash), FileError> {
    let bytes = std::fs::read(path).map_err(|e| FileError::new(path, e))?;
    let snap = load(&bytes).map_err(|e| FileError::new(path, e))?;
    Ok((snap, Snapshot::checksum_of(&bytes).unwrap_or_default()))
}

/// Read a snapshot and, for a delta, its parents back to a full image:
/// the result is whole (its RAM full, its state the newest file's).
pub fn read_chain(path: &Path) -> Result<Snapshot, FileError> {
    let (newest, _) = read(path)?;
    let mut deltas = Vec::new();
    let mut cur = newest.clone();
    let mut cur_path = path.to_path_buf();
    while let Some((name, sum)) = cur.header.parent.clone() {
        if deltas.len() >= MAX_CHAIN {
            return Err(FileError::new(path, format!("more than {MAX_CHAIN} delta snapshots before a full one")));
        }
        // Parents live beside their children; a name with a directory part is refused.
        if Path::new(&name).file_name().map(|n| n != name.as_str()).unwrap_or(true) {
            return Err(FileError::new(&cur_path, format!("parent name {name:?} is not a file name")));
        }
        let parent_path = cur_path.with_file_name(&name);
        let (parent, got) = read(&parent_path)?;
        if got != sum {
            return Err(FileError::new(&cur_path, format!("parent {name} has changed since this delta was taken")));
        }
        deltas.push(std::mem::replace(&mut cur, parent).ram);
        cur_path = parent_path;
    }
    if !cur.ram.full {
        return Err(FileError::new(&cur_path, "a delta snapshot without a parent"));
    }
    let mut pages: BTreeMap<u64, Vec<u8>> = cur.ram.pages.into_iter().collect();
    for d in deltas.into_iter().rev() {
        pages.extend(d.pages);
    }
    Ok(Snapshot {
        header: newest.header,
        state: newest.state,
        ram: RamImage { full: true, pages: pages.into_iter().collect() },
    })
}
