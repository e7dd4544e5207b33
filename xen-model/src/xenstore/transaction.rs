//! Transactions and the view through which every operation reads and writes nodes.
//!
//! A transaction keeps its own copies of the nodes it changed (an overlay) and the
//! generation of every node it looked at, as the committed tree had it at first access
//! (None: absent). A commit fails with EAGAIN if any of those generations changed.
//! Reads of untouched nodes go to the committed tree, like C xenstored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{XsError, XsResult};
use super::quota::exceeds;
use super::tree::{Node, Tree};
use super::watch::{Change, MatchKind};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: u32,
    /// Nodes written (Some) or deleted (None) in the transaction.
    overlay: BTreeMap<String, Option<Node>>,
    /// Committed generation at first access of each node the transaction touched.
    reads: BTreeMap<String, Option<u64>>,
    /// Node count change per owner, for the node quota.
    node_delta: BTreeMap<u16, i64>,
    /// Changes to report once committed, one per path, in first-change order.
    changes: Vec<Change>,
    /// Set when an operation failed half-way; the commit then fails.
    pub failed: bool,
    /// Whether the transaction created nodes (the node quota is re-checked at commit).
    pub created: bool,
}

impl Transaction {
    pub fn new(id: u32) -> Self {
        Transaction {
            id,
            overlay: BTreeMap::new(),
            reads: BTreeMap::new(),
            node_delta: BTreeMap::new(),
            changes: Vec::new(),
            failed: false,
            created: false,
        }
    }

    /// Number of distinct nodes accessed.
    pub fn accessed(&self) -> usize {
        self.reads.len()
    }

    /// Queues a change, merging with an earlier one on the same path (a subtree change
    /// replaces an exact one).
    fn queue(&mut self, change: Change) {
        if let Some(c) = self.changes.iter_mut().find(|c| c.path == change.path) {
            if change.kind == MatchKind::Subtree {
                c.kind = MatchKind::Subtree;
            }
            c.perms.extend(change.perms);
        } else {
            self.changes.push(change);
        }
    }

    /// Checks the read set against the committed tree and, if nothing changed, applies the
    /// overlay. Returns the changes to fire. `next_gen` hands out generations.
    pub fn commit(self, tree: &mut Tree, next_gen: &mut u64) -> XsResult<Vec<Change>> {
        for (path, seen) in &self.reads {
            if tree.get(path).map(|n| n.generation) != *seen {
                return Err(XsError::Again);
            }
        }
        for (path, node) in self.overlay {
            match node {
                Some(mut n) => {
                    n.generation = bump(next_gen);
                    tree.insert(path, n);
                }
                None => {
                    tree.remove(&path);
                }
            }
        }
        Ok(self.changes)
    }

    /// Node count change for `domid` so far.
    pub fn delta(&self, domid: u16) -> i64 {
        self.node_delta.get(&domid).copied().unwrap_or(0)
    }

    /// Owners whose count grew, with the growth.
    pub fn grown(&self) -> impl Iterator<Item = (u16, i64)> + '_ {
        self.node_delta.iter().filter(|(_, &d)| d > 0).map(|(&k, &d)| (k, d))
    }
}

fn bump(next_gen: &mut u64) -> u64 {
    *next_gen = next_gen.wrapping_add(1);
    *next_gen
}

/// What an operation sees: the committed tree, or a transaction over it.
pub struct View<'a> {
    pub tree: &'a mut Tree,
    pub tx: Option<&'a mut Transaction>,
    pub next_gen: &'a mut u64,
    /// transaction-nodes quota for this caller (0 = unlimited).
    pub tx_nodes_limit: u32,
    /// Changes made outside a transaction, to fire after the operation.
    pub changes: Vec<Change>,
}

impl<'a> View<'a> {
    pub fn new(
        tree: &'a mut Tree,
        tx: Option<&'a mut Transaction>,
        next_gen: &'a mut u64,
        tx_nodes_limit: u32,
    ) -> Self {
        View { tree, tx, next_gen, tx_nodes_limit, changes: Vec::new() }
    }

    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Records a first access in the transaction's read set, within its quota.
    fn touch(&mut self, path: &str) -> XsResult<()> {
        let Some(tx) = self.tx.as_deref_mut() else { return Ok(()) };
        if tx.reads.contains_key(path) {
            return Ok(());
        }
        if exceeds(tx.reads.len() as u64 + 1, self.tx_nodes_limit) {
            tx.failed = true;
            return Err(XsError::NoSpc);
        }
        tx.reads.insert(path.to_owned(), self.tree.get(path).map(|n| n.generation));
        Ok(())
    }

    /// The node as this view sees it, without recording an access.
    pub fn peek(&self, path: &str) -> Option<&Node> {
        if let Some(tx) = self.tx.as_deref() {
            if let Some(entry) = tx.overlay.get(path) {
                return entry.as_ref();
            }
        }
        self.tree.get(path)
    }

    /// Reads a node, recording the access in a transaction.
    pub fn read(&mut self, path: &str) -> XsResult<Option<&Node>> {
        self.touch(path)?;
        Ok(self.peek(path))
    }

    /// Nodes the view's owner `domid` owns (committed count plus transaction delta).
    pub fn owned_by(&self, domid: u16) -> u64 {
        let base = i64::from(self.tree.owned_by(domid));
        let delta = self.tx.as_deref().map_or(0, |t| t.delta(domid));
        u64::try_from(base.saturating_add(delta)).unwrap_or(0)
    }

    /// Writes a node (new or replaced) with a fresh generation. The caller has read it.
    pub fn put(&mut self, path: &str, mut node: Node) {
        node.generation = bump(self.next_gen);
        match self.tx.as_deref_mut() {
            None => self.tree.insert(path.to_owned(), node),
            Some(tx) => {
                let old_owner = match tx.overlay.get(path) {
                    Some(entry) => entry.as_ref().map(|n| n.perms.owner()),
                    None => self.tree.get(path).map(|n| n.perms.owner()),
                };
                let counted = !path.starts_with('@');
                if counted {
                    if let Some(o) = old_owner {
                        *tx.node_delta.entry(o).or_insert(0) -= 1;
                    } else {
                        tx.created = true;
                    }
                    *tx.node_delta.entry(node.perms.owner()).or_insert(0) += 1;
                }
                tx.overlay.insert(path.to_owned(), Some(node));
            }
        }
    }

    /// Deletes one node (children and parent entry are the caller's business).
    pub fn delete(&mut self, path: &str) {
        match self.tx.as_deref_mut() {
            None => {
                self.tree.remove(path);
            }
            Some(tx) => {
                let old_owner = match tx.overlay.get(path) {
                    Some(entry) => entry.as_ref().map(|n| n.perms.owner()),
                    None => self.tree.get(path).map(|n| n.perms.owner()),
                };
                if let Some(o) = old_owner {
                    *tx.node_delta.entry(o).or_insert(0) -= 1;
                }
                // A tombstone even for a node created inside the transaction:
                // without it, later reads in the transaction would see a node
                // created outside meanwhile. Committing it removes nothing
                // unless the node appeared, and then the read set conflicts.
                tx.overlay.insert(path.to_owned(), None);
            }
        }
    }

    /// Reports a change: fired now (outside a transaction) or at commit.
    pub fn changed(&mut self, change: Change) {
        match self.tx.as_deref_mut() {
            Some(tx) => tx.queue(change),
            None => self.changes.push(change),
        }
    }
}
