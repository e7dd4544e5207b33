//! Connections: one per socket client or introduced domain. A connection owns its watches,
//! its transactions and the packets waiting to be written to it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::transaction::Transaction;
use super::watch::Watch;
use super::wire::{MsgType, Packet};

/// Identifies a connection inside one store. Allocated in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u32);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The domain speaking on this connection (0 for sockets and the simulator).
    pub domid: u16,
    pub watches: Vec<Watch>,
    pub transactions: BTreeMap<u32, Transaction>,
    pub next_tx_id: u32,
    /// Replies and watch events not yet taken by the transport, oldest first.
    pub out: VecDeque<Packet>,
    /// Replies (not events) in `out`: the outstanding-request count.
    pub outstanding: u32,
}

impl Connection {
    pub fn new(domid: u16) -> Self {
        Connection {
            domid,
            watches: Vec::new(),
            transactions: BTreeMap::new(),
            next_tx_id: 1,
            out: VecDeque::new(),
            outstanding: 0,
        }
    }

    pub fn push_reply(&mut self, p: Packet) {
        self.outstanding = self.outstanding.saturating_add(1);
        self.out.push_back(p);
    }

    pub fn push_event(&mut self, p: Packet) {
        self.out.push_back(p);
    }

    pub fn pop(&mut self) -> Option<Packet> {
        let p = self.out.pop_front()?;
        if p.msg_type != MsgType::WatchEvent as u32 {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        Some(p)
    }

    /// A fresh transaction id: the next non-zero id not in use.
    pub fn alloc_tx_id(&mut self) -> u32 {
        loop {
            let id = self.next_tx_id;
            self.next_tx_id = self.next_tx_id.wrapping_add(1);
            if id != 0 && !self.transactions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Drops watches and transactions (RESET_WATCHES, ring reconnection).
    pub fn reset_watches_and_transactions(&mut self) {
        self.watches.clear();
        self.transactions.clear();
    }
}
