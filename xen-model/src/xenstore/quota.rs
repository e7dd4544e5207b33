//! Per-domain quotas with C xenstored's defaults (tools/xenstored/domain.c). A value of 0
//! disables the check. Quotas never apply to dom0.
//!
//! Limits here are inclusive ("nodes 1000" lets a domain own 1000 nodes); C xenstored
//! compares with `>=` and so stops one short.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    /// Nodes a domain may own.
    pub nodes: u32,
    /// Watches per connection.
    pub watches: u32,
    /// Replies queued for a connection before the transport stops taking requests.
    pub outstanding: u32,
    /// Open transactions per connection.
    pub transactions: u32,
    /// Distinct nodes a transaction may access.
    pub transaction_nodes: u32,
    /// Entries in a node's permission list.
    pub node_permissions: u32,
    /// Path length below /local/domain/<domid>/.
    pub path_max: u32,
    /// Bytes of a node's value.
    pub node_size: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            watches: 128,
            outstanding: 20,
            transactions: 10,
            transaction_nodes: 1024,
            node_permissions: 5,
            path_max: 2048,
            node_size: 2048,
        }
    }
}

/// Quota names as GET_QUOTA/SET_QUOTA and `CONTROL quota` use them, with descriptions.
pub const QUOTA_NAMES: [(&str, &str); 8] = [
    ("nodes", "Nodes per domain"),
    ("watches", "Watches per domain"),
    ("outstanding", "Outstanding requests per domain"),
    ("transactions", "Active transactions per domain"),
    ("transaction-nodes", "Max. number of accessed nodes per transaction"),
    ("node-permissions", "Max. number of permissions per node"),
    ("path-max", "Max. length of a node path"),
    ("node-size", "Max. size of a node"),
];

impl Quotas {
    fn slot(&mut self, name: &str) -> Option<&mut u32> {
        Some(match name {
            "nodes" => &mut self.nodes,
            "watches" => &mut self.watches,
            "outstanding" => &mut self.outstanding,
            "transactions" => &mut self.transactions,
            "transaction-nodes" => &mut self.transaction_nodes,
            "node-permissions" => &mut self.node_permissions,
            "path-max" => &mut self.path_max,
            "node-size" => &mut self.node_size,
            _ => return None,
        })
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        let mut copy = *self;
        copy.slot(name).map(|v| *v)
    }

    /// Sets a quota by name; false for an unknown name.
    pub fn set(&mut self, name: &str, value: u32) -> bool {
        match self.slot(name) {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }
}

/// True when `count` items would exceed `limit` (0 = unlimited).
pub fn exceeds(count: u64, limit: u32) -> bool {
    limit != 0 && count > u64::from(limit)
}
