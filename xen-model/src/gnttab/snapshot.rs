//! The grant table as data, for snapshots: the frames' contents (they are
//! overlay pages the guest writes) and Xen's private bookkeeping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sim_core::OverlayPage;

use super::backend::Mapping;
use super::pin::Active;
use super::GrantTable;

/// Frames beyond this are a corrupt state, not a table (Xen's own limit on
/// max_grant_frames is far lower).
const MAX_FRAMES: usize = 1 << 16;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantTableState {
    version: u32,
    max_frames: u32,
    #[serde(with = "sim_core::byte_fields::list")]
    shared: Vec<Vec<u8>>,
    #[serde(with = "sim_core::byte_fields::list")]
    status: Vec<Vec<u8>>,
    active: BTreeMap<u32, Active>,
    maps: BTreeMap<u32, Mapping>,
    next_handle: u32,
    #[serde(with = "sim_core::byte_fields::list")]
    released: Vec<Vec<u8>>,
}

fn contents(pages: &[OverlayPage]) -> Vec<Vec<u8>> {
    pages
        .iter()
        .map(|p| {
            let mut b = vec![0u8; 4096];
            p.read(0, &mut b);
            b
        })
        .collect()
}

fn check_pages(contents: &[Vec<u8>]) -> Result<(), String> {
    if contents.len() > MAX_FRAMES {
        return Err(format!("grant table state lists {} frames", contents.len()));
    }
    match contents.iter().find(|c| c.len() != 4096) {
        Some(c) => Err(format!("grant frame of {} bytes", c.len())),
        None => Ok(()),
    }
}

/// Pages holding `contents` (checked by `check_pages`), reusing the pages of
/// `old` first: a new page costs an mmap and the old ones are dropped anyway.
fn pages(contents: &[Vec<u8>], old: Vec<OverlayPage>) -> Vec<OverlayPage> {
    let mut old = old.into_iter();
    contents
        .iter()
        .map(|c| {
            let p = old.next().unwrap_or_default();
            p.write(0, c);
            p
        })
        .collect()
}

impl GrantTable {
    pub fn save_state(&self) -> GrantTableState {
        let GrantTable { version, max_frames, shared, status, active, maps, next_handle, released } = self;
        GrantTableState {
            version: *version,
            max_frames: *max_frames,
            shared: contents(shared),
            status: contents(status),
            active: active.clone(),
            maps: maps.clone(),
            next_handle: *next_handle,
            released: contents(released),
        }
    }

    /// Take back a saved state. The table's frames take the saved contents
    /// (its current pages are reused, so whoever maps them must map them
    /// again: the platform maps them where the guest had them).
    pub fn restore_state(&mut self, s: &GrantTableState) -> Result<(), String> {
        if !matches!(s.version, 1 | 2) {
            return Err(format!("grant table version {}", s.version));
        }
        for c in [&s.shared, &s.status, &s.released] {
            check_pages(c)?;
        }
        *self = GrantTable {
            version: s.version,
            max_frames: s.max_frames,
            shared: pages(&s.shared, std::mem::take(&mut self.shared)),
            status: pages(&s.status, std::mem::take(&mut self.status)),
            active: s.active.clone(),
            maps: s.maps.clone(),
            next_handle: s.next_handle,
            // Released frames may still be mapped in the guest: never reuse
            // a page for them.
            released: pages(&s.released, Vec::new()),
        };
        Ok(())
    }

    /// The page of shared frame `idx` (or status frame), without growing.
    pub fn existing_frame(&self, idx: u32, status: bool) -> Option<&OverlayPage> {
        if status {
            self.status.get(idx as usize)
        } else {
            self.shared.get(idx as usize)
        }
    }
}
