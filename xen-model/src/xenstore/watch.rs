//! Watches and the changes that fire them.

use serde::{Deserialize, Serialize};

use super::path::is_child;
use super::perms::Perms;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Canonical (absolute or '@') path.
    pub path: String,
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
    /// Levels below `path` that match; None: the whole subtree.
    pub depth: Option<u32>,
    /// Bytes to strip from event paths so a relative watch gets relative paths.
    pub prefix_len: usize,
}

impl Watch {
    /// WATCH_EVENT payload for an event on canonical path `epath`.
    pub fn event_payload(&self, epath: &str) -> Vec<u8> {
        let shown = epath.get(self.prefix_len..).unwrap_or(epath);
        let mut out = Vec::with_capacity(shown.len() + self.token.len() + 2);
        out.extend_from_slice(shown.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.token);
        out.push(0);
        out
    }

    /// Whether an event of `kind` on `epath` fires this watch (C xenstored's match modes).
    pub fn matches(&self, epath: &str, kind: MatchKind) -> bool {
        match kind {
            MatchKind::Exact => epath == self.path,
            MatchKind::Subtree => is_child(epath, &self.path, self.depth),
            // "@releaseDomain/<domid>": watches on exactly that, or on the bare name with depth >= 1.
            MatchKind::SpecialWithDomid => {
                epath == self.path || self.depth.is_some_and(|d| d > 0 && is_child(epath, &self.path, Some(d)))
            }
            // Bare "@releaseDomain": only watches registered without a depth.
            MatchKind::SpecialBare => epath == self.path && self.depth.is_none(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchKind {
    /// Watches on exactly this path (a node removed below the top of an RM).
    Exact,
    /// Watches on this path or an ancestor, within their depth.
    Subtree,
    SpecialWithDomid,
    SpecialBare,
}

/// A change to report. `perms` are extra permission lists that let a watcher see it
/// (old permissions on SET_PERMS, node and parent permissions of removed nodes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    pub kind: MatchKind,
    pub perms: Vec<Perms>,
}

impl Change {
    pub fn new(path: String, kind: MatchKind) -> Self {
        Change { path, kind, perms: Vec::new() }
    }
}
