//! The guest ring transport (docs/misc/xenstore-ring.txt, io/xs_wire.h's
//! `xenstore_domain_interface`): one shared page holding a 1 KiB request queue, a 1 KiB
//! response queue, their free-running indices, the server's feature bits, the connection
//! state and an error indicator.
//!
//! [`RingServer`] is the server side for one guest connection. It reads requests as they
//! complete, hands them to the store, and writes replies and watch events as space allows.
//! It touches only the page it is given; whoever owns the event channel signals the guest
//! when [`RingServer::service`] reports a change.

use serde::{Deserialize, Serialize};
use sim_core::OverlayPage;

use super::conn::ConnId;
use super::store::Store;
use super::wire::PacketAssembler;

/// XENSTORE_RING_SIZE: bytes in each queue.
pub const RING_SIZE: u32 = 1024;

/// Byte offsets in the ring page.
pub mod off {
    pub const REQ: usize = 0;
    pub const RSP: usize = 1024;
    pub const REQ_CONS: usize = 2048;
    pub const REQ_PROD: usize = 2052;
    pub const RSP_CONS: usize = 2056;
    pub const RSP_PROD: usize = 2060;
    pub const SERVER_FEATURES: usize = 2064;
    pub const CONNECTION: usize = 2068;
    pub const ERROR: usize = 2072;
}

/// XENSTORE_SERVER_FEATURE_RECONNECTION.
pub const FEATURE_RECONNECTION: u32 = 1;
/// XENSTORE_SERVER_FEATURE_ERROR.
pub const FEATURE_ERROR: u32 = 2;
/// XENSTORE_CONNECTED / XENSTORE_RECONNECT.
pub const CONNECTED: u32 = 0;
pub const RECONNECT: u32 = 1;

/// The connection error indicator (XENSTORE_ERROR_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u32)]
pub enum RingError {
    /// Event channel not functional.
    Comms = 1,
    /// A producer or consumer index more than a ring apart.
    RingIdx = 2,
    /// A packet longer than XENSTORE_PAYLOAD_MAX.
    Proto = 3,
}

/// Copies `buf.len()` bytes of the queue at `base` from stream offset `idx`, wrapping.
/// Empty queues (all four indexes 0), no error, connected; the features stay.
fn reset_page(page: &OverlayPage) {
    for at in [off::REQ_CONS, off::REQ_PROD, off::RSP_CONS, off::RSP_PROD, off::ERROR] {
        page.write_u32(at, 0);
    }
    page.write_u32(off::CONNECTION, CONNECTED);
}

fn ring_read(page: &OverlayPage, base: usize, idx: u32, buf: &mut [u8]) {
    let start = (idx % RING_SIZE) as usize;
    let first = buf.len().min(RING_SIZE as usize - start);
    let (a, b) = buf.split_at_mut(first);
    page.read(base + start, a);
    page.read(base, b);
}

fn ring_write(page: &OverlayPage, base: usize, idx: u32, data: &[u8]) {
    let start = (idx % RING_SIZE) as usize;
    let first = data.len().min(RING_SIZE as usize - start);
    page.write(base + start, &data[..first]);
    page.write(base, &data[first..]);
}

/// Server state of one guest's ring. Serializable (snapshots); the page is not part of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingServer {
    conn: ConnId,
    asm: PacketAssembler,
    /// The packet being written to the response queue, and how much of it is written.
    #[serde(with = "serde_bytes")]
    out: Vec<u8>,
    out_pos: usize,
    /// Set on a protocol violation: the ring is no longer served until a reconnect.
    error: Option<RingError>,
}

impl RingServer {
    /// Serves store connection `conn` (the guest's, from [`Store::introduce_domain`]).
    pub fn new(conn: ConnId) -> Self {
        RingServer { conn, asm: PacketAssembler::new(), out: Vec::new(), out_pos: 0, error: None }
    }

    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub fn error(&self) -> Option<RingError> {
        self.error
    }

    /// Prepares a fresh page before the guest first sees it: empty queues, the features
    /// advertised (before any data moves, as the reconnection feature requires), connected,
    /// no error.
    pub fn init_page(page: &OverlayPage) {
        page.write(0, &[0u8; sim_core::memory::PAGE_SIZE as usize]);
        page.write_u32(off::SERVER_FEATURES, FEATURE_RECONNECTION | FEATURE_ERROR);
    }

    /// Serves `conn`, a domain's new connection after XS_RELEASE and XS_INTRODUCE, on a
    /// page the guest has already used. As cxenstored's introduce_domain does for a domain
    /// it did not know (domain_conn_reset, then XENSTORE_CONNECTED): both queues emptied,
    /// the error cleared, connected. The caller notifies the guest.
    pub fn introduced(conn: ConnId, page: &OverlayPage) -> Self {
        reset_page(page);
        RingServer::new(conn)
    }

    /// Does whatever the ring allows: honours a reconnect request, moves replies and events
    /// out, takes complete requests in (as far as the outstanding-request quota allows),
    /// until neither moves. Returns true if the page changed, i.e. the guest must be
    /// signalled.
    pub fn service(&mut self, store: &mut Store, page: &OverlayPage) -> bool {
        if page.read_u32(off::CONNECTION) == RECONNECT {
            self.reconnect(store, page);
            return true;
        }
        if self.error.is_some() {
            return false;
        }
        let mut changed = false;
        loop {
            let step = self.write_out(store, page).and_then(|w| Ok(w | self.read_in(store, page)?));
            match step {
                Ok(true) => changed = true,
                Ok(false) => return changed,
                Err(e) => {
                    self.fail(store, page, e);
                    return true;
                }
            }
        }
    }

    /// Marks the ring failed after a violation (the error feature): the indicator is set,
    /// the connection's watches, transactions and queued output are dropped.
    fn fail(&mut self, store: &mut Store, page: &OverlayPage, e: RingError) {
        tracing::warn!(error = ?e, "xenstore ring: protocol violation, connection stopped");
        self.error = Some(e);
        self.asm.reset();
        self.out.clear();
        self.out_pos = 0;
        store.reset_connection(self.conn);
        page.write_u32(off::ERROR, e as u32);
    }

    /// The ring reconnection feature: drop partial packets, queued output, watches and
    /// transactions; empty both queues; clear the error; connected again.
    fn reconnect(&mut self, store: &mut Store, page: &OverlayPage) {
        self.asm.reset();
        self.out.clear();
        self.out_pos = 0;
        self.error = None;
        store.reset_connection(self.conn);
        reset_page(page);
    }

    /// Writes queued output as far as the response queue has room.
    fn write_out(&mut self, store: &mut Store, page: &OverlayPage) -> Result<bool, RingError> {
        let cons = page.read_u32(off::RSP_CONS);
        let mut prod = page.read_u32(off::RSP_PROD);
        let used = prod.wrapping_sub(cons);
        if used > RING_SIZE {
            return Err(RingError::RingIdx);
        }
        let mut space = RING_SIZE - used;
        let mut wrote = false;
        while space > 0 {
            if self.out_pos == self.out.len() {
                let Some(p) = store.pop_output(self.conn) else { break };
                self.out.clear();
                self.out_pos = 0;
                p.encode_into(&mut self.out);
            }
            let n = (self.out.len() - self.out_pos).min(space as usize);
            ring_write(page, off::RSP, prod, &self.out[self.out_pos..self.out_pos + n]);
            self.out_pos += n;
            prod = prod.wrapping_add(n as u32);
            space -= n as u32;
            wrote = true;
        }
        if wrote {
            page.write_u32(off::RSP_PROD, prod);
        }
        Ok(wrote)
    }

    /// Takes requests from the request queue, handing each complete one to the store.
    /// Stops (leaving bytes in the ring) while the store refuses more requests.
    fn read_in(&mut self, store: &mut Store, page: &OverlayPage) -> Result<bool, RingError> {
        let cons = page.read_u32(off::REQ_CONS);
        let prod = page.read_u32(off::REQ_PROD);
        let avail = prod.wrapping_sub(cons);
        if avail > RING_SIZE {
            return Err(RingError::RingIdx);
        }
        if avail == 0 || !store.can_accept(self.conn) {
            return Ok(false);
        }
        let mut buf = vec![0u8; avail as usize];
        ring_read(page, off::REQ, cons, &mut buf);
        let mut rest: &[u8] = &buf;
        while !rest.is_empty() && store.can_accept(self.conn) {
            match self.asm.push_some(&mut rest) {
                Ok(Some(p)) => {
                    store.handle(self.conn, &p);
                }
                Ok(None) => {}
                Err(_) => return Err(RingError::Proto),
            }
        }
        let consumed = buf.len() - rest.len();
        page.write_u32(off::REQ_CONS, cons.wrapping_add(consumed as u32));
        Ok(consumed > 0)
    }
}

#[cfg(test)]
mod tests;
