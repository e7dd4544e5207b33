//! The committed tree: nodes keyed by canonical path, each with its value, permissions,
//! sorted child names and generation count, plus the per-owner node counts that the
//! node quota is checked against.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::path;
use super::perms::{Access, Perms};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub perms: Perms,
    pub children: BTreeSet<String>,
    /// Changes whenever the node (value, perms or child list) changes.
    pub generation: u64,
}

impl Node {
    pub fn new(value: Vec<u8>, perms: Perms) -> Self {
        Node { value, perms, children: BTreeSet::new(), generation: 0 }
    }

    /// Child names, each followed by a NUL: the DIRECTORY payload.
    pub fn children_blob(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.children.iter().map(|c| c.len() + 1).sum());
        for c in &self.children {
            out.extend_from_slice(c.as_bytes());
            out.push(0);
        }
        out
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Nodes per owning domain (the first permission entry). Special '@' nodes are not
    /// counted: they belong to the store itself.
    owned: BTreeMap<u16, u32>,
    /// Bumped by every insert and remove (the only ways to change the tree), so a
    /// checker can tell that nothing changed since it last looked. Not state: neither
    /// saved nor compared.
    #[serde(skip)]
    changes: u64,
}

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes && self.owned == other.owned
    }
}

impl Eq for Tree {}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// A tree holding only the root, owned by dom0 with no access for others.
    pub fn new() -> Self {
        let mut t = Tree { nodes: BTreeMap::new(), owned: BTreeMap::new(), changes: 0 };
        t.insert("/".to_owned(), Node::new(Vec::new(), Perms::owned(0, Access::None)));
        t
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// Inserts or replaces a node; keeps the owner counts right. Does not touch the parent.
    pub fn insert(&mut self, path: String, node: Node) {
        self.changes = self.changes.wrapping_add(1);
        let counted = !path.starts_with('@');
        if counted {
            *self.owned.entry(node.perms.owner()).or_insert(0) += 1;
        }
        if let Some(old) = self.nodes.insert(path, node) {
            if counted {
                self.uncount(old.perms.owner());
            }
        }
    }

    /// Removes one node (not its children, not the parent's child entry).
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let old = self.nodes.remove(path)?;
        self.changes = self.changes.wrapping_add(1);
        if !path.starts_with('@') {
            self.uncount(old.perms.owner());
        }
        Some(old)
    }

    fn uncount(&mut self, owner: u16) {
        if let Some(n) = self.owned.get_mut(&owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owned.remove(&owner);
            }
        }
    }

    /// How many times the tree was changed (inserts and removals) since it was made or
    /// loaded: equal readings mean the tree is as it was.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Number of nodes owned by `domid`.
    pub fn owned_by(&self, domid: u16) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Number of nodes, the root and special nodes included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Checks the structural invariants: every non-root node's parent exists and lists it,
    /// every listed child exists, and the owner counts match. Returns the first problem.
    pub fn check(&self) -> Result<(), String> {
        let mut owned: BTreeMap<u16, u32> = BTreeMap::new();
        for (p, n) in &self.nodes {
            if p.starts_with('@') {
                continue;
            }
            *owned.entry(n.perms.owner()).or_insert(0) += 1;
            if p != "/" {
                let parent = path::parent(p);
                match self.nodes.get(parent) {
                    Some(pn) if pn.children.contains(path::basename(p)) => {}
                    _ => return Err(format!("{p} is not listed by its parent {parent}")),
                }
            }
            for c in &n.children {
                let cp = path::child_path(p, c);
                if !self.nodes.contains_key(&cp) {
                    return Err(format!("{p} lists missing child {c}"));
                }
            }
        }
        if owned != self.owned {
            return Err("node owner counts are inconsistent".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_insert_and_removal_counts_as_a_change_and_nothing_else_does() {
        let mut t = Tree::new();
        let c0 = t.changes();
        let n = Node::new(b"v".to_vec(), Perms::owned(1, Access::None));
        let _ = (t.get("/a"), t.len(), t.owned_by(1), t.check());
        assert_eq!(t.changes(), c0, "reads change nothing");
        t.insert("/a".to_owned(), n.clone());
        assert_eq!(t.changes(), c0 + 1);
        t.insert("/a".to_owned(), n);
        assert_eq!(t.changes(), c0 + 2, "a replacement is a change");
        assert!(t.remove("/b").is_none());
        assert_eq!(t.changes(), c0 + 2, "removing nothing changes nothing");
        assert!(t.remove("/a").is_some());
        assert_eq!(t.changes(), c0 + 3);
        // The counter is not state: a tree equals its copy whatever the counts.
        assert_eq!(t, Tree::new());
    }
}
