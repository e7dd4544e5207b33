//! `xenstore_wire`: raw bytes as a guest's ring traffic and as Unix-socket
//! clients' traffic, split wherever the input splits them, handled by a
//! `Store` with domain 1 introduced.
//!
//! The ring is the real transport: `xenstore::ring::RingServer` over a
//! `xenstore_domain_interface` page. The guest writes requests into it,
//! consumes replies, asks for a reconnect, and may write anything anywhere in
//! the page (garbage indexes: req_prod far ahead of req_cons, rsp_cons past
//! rsp_prod, a bogus connection state). The server is serviced after every
//! step, as dom0 does after each notification; it must never panic, spin or
//! write what the guest owns, and it stops a broken ring (the error feature)
//! until the guest reconnects. Socket clients follow `socket.rs`
//! (`SocketInput`; a framing error closes the client).
//!
//! After every step: tree accounting, connection counters and quotas, the
//! ring's indexes as the server left them. At the end: a serialize/
//! deserialize round trip is identical, and every connection still answers
//! a valid request (the ring after a reconnect).

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use sim_core::OverlayPage;

use crate::xenstore::ring::{off, RingServer, CONNECTED, RECONNECT, RING_SIZE};
use crate::xenstore::socket::{apply_input, ClientId, SocketInput};
use crate::xenstore::{ConnId, GuestSpec, MsgType, Packet, PacketAssembler, Store};

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub steps: Vec<Step>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// The guest produces these bytes into the request queue (as many as
    /// its view of the indexes leaves room for) and notifies.
    Ring(Vec<u8>),
    /// Bytes from socket client `n % 3` (opened on first use).
    Socket(u8, Vec<u8>),
    /// A well-formed request, to get deep into the store quickly.
    Request {
        socket: Option<u8>,
        msg_type: u8,
        tx_id: u8,
        payload: Vec<u8>,
    },
    /// Socket client `n % 3` hangs up.
    Close(u8),
    /// The guest asks for a reconnect (connection = XENSTORE_RECONNECT).
    RingReset,
    /// The guest consumes the response queue.
    Consume,
    /// A broken guest sets ring index `which % 4` (req_cons, req_prod,
    /// rsp_cons, rsp_prod) to `value`, or moves it by `value`.
    Index {
        which: u8,
        value: u32,
        relative: bool,
    },
    /// A broken guest writes anywhere in the ring page.
    PokePage {
        at: u16,
        bytes: Vec<u8>,
    },
    /// Socket clients' replies are left unread until the next drain.
    Hold,
    Drain,
}

struct Client {
    id: ClientId,
    asm: PacketAssembler,
}

/// The ring page and its server, with the guest's side of it.
struct Ring {
    page: OverlayPage,
    server: RingServer,
    /// What the guest has read off the response queue, framed.
    replies: PacketAssembler,
    got: Vec<Packet>,
}

impl Ring {
    /// The guest's producer: bytes at req_prod as far as its view of the
    /// free space goes (none if the indexes make no sense).
    fn send(&self, bytes: &[u8]) -> usize {
        let (cons, mut prod) = (self.page.read_u32(off::REQ_CONS), self.page.read_u32(off::REQ_PROD));
        let used = prod.wrapping_sub(cons);
        let n = bytes.len().min(RING_SIZE.saturating_sub(used) as usize);
        for &b in &bytes[..n] {
            self.page.write(off::REQ + (prod % RING_SIZE) as usize, &[b]);
            prod = prod.wrapping_add(1);
        }
        self.page.write_u32(off::REQ_PROD, prod);
        n
    }

    /// The guest's consumer: everything between rsp_cons and rsp_prod (when
    /// that is at most a ring), framed into packets.
    fn consume(&mut self) {
        let (mut cons, prod) = (self.page.read_u32(off::RSP_CONS), self.page.read_u32(off::RSP_PROD));
        if prod.wrapping_sub(cons) > RING_SIZE {
            return;
        }
        let mut bytes = Vec::new();
        while cons != prod {
            let mut b = [0u8];
            self.page.read(off::RSP + (cons % RING_SIZE) as usize, &mut b);
            bytes.push(b[0]);
            cons = cons.wrapping_add(1);
        }
        self.page.write_u32(off::RSP_CONS, cons);
        match self.replies.push(&bytes) {
            Ok(ps) => self.got.extend(ps),
            // The guest's own framing of what the server wrote.
            Err(e) => self.got.push(Packet {
                msg_type: u32::MAX,
                req_id: 0,
                tx_id: 0,
                payload: format!("{e:?}").into_bytes(),
            }),
        }
    }

    /// The guest reconnects: its own view of the stream starts over too.
    fn reconnect(&mut self) {
        self.page.write_u32(off::CONNECTION, RECONNECT);
        self.replies.reset();
    }
}

/// The ring page as 512 little-endian words.
fn page_words(page: &OverlayPage) -> PageWords {
    let mut bytes = [0u8; 4096];
    page.read(0, &mut bytes);
    let mut w = Box::new([0u64; 512]);
    for (w, b) in w.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        *w = u64::from_le_bytes(x);
    }
    w
}

/// Masks (as `page_words`) of the bytes only the guest writes: everything
/// but the response queue, rsp_prod, req_cons and the error indicator; on a
/// reconnect also every index and the connection state.
type PageWords = Box<[u64; 512]>;

static GUEST_BYTES: std::sync::LazyLock<(PageWords, PageWords)> = std::sync::LazyLock::new(|| {
    let mask = |server: &[std::ops::Range<usize>]| {
        let mut bytes = [0xffu8; 4096];
        for r in server {
            bytes[r.clone()].fill(0);
        }
        let p = OverlayPage::new();
        p.write(0, &bytes);
        page_words(&p)
    };
    let own = [
        off::RSP..off::RSP + RING_SIZE as usize,
        off::REQ_CONS..off::REQ_CONS + 4,
        off::RSP_PROD..off::RSP_PROD + 4,
        off::ERROR..off::ERROR + 4,
    ];
    let mut on_reconnect = own.to_vec();
    on_reconnect.extend([off::REQ_CONS..off::RSP_PROD + 4, off::CONNECTION..off::CONNECTION + 4]);
    (mask(&own), mask(&on_reconnect))
});

struct Harness {
    store: Store,
    ring: Ring,
    clients: BTreeMap<u8, Client>,
    conns: BTreeMap<ClientId, ConnId>,
    next_client: u64,
    hold: bool,
}

thread_local! {
    /// The store with domain 1's nodes and connection, built once (it is
    /// most of the setup), and one page reused as the ring.
    static PRISTINE: (Store, ConnId, OverlayPage) = {
        let mut store = Store::new();
        // The toolstack's nodes for domain 1, then the guest is introduced.
        let _ = store.create_guest_nodes(&GuestSpec::domain1(0xfeffc, 1, 0xfeffd, 2));
        let conn = store.introduce_domain(1, 0xfeffc, 1);
        (store, conn, OverlayPage::new())
    };
}

impl Harness {
    fn new() -> Self {
        let (store, conn, page) = PRISTINE.with(|(s, c, p)| (s.clone(), *c, p.clone()));
        RingServer::init_page(&page);
        Harness {
            store,
            ring: Ring { page, server: RingServer::new(conn), replies: PacketAssembler::new(), got: Vec::new() },
            clients: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_client: 0,
            hold: false,
        }
    }

    fn client(&mut self, n: u8) -> ClientId {
        let n = n % 3;
        if let Some(c) = self.clients.get(&n) {
            return c.id;
        }
        let id = ClientId(self.next_client);
        self.next_client += 1;
        apply_input(&mut self.store, &mut self.conns, &SocketInput::Opened(id));
        self.clients.insert(n, Client { id, asm: PacketAssembler::new() });
        id
    }

    fn close(&mut self, n: u8) {
        if let Some(c) = self.clients.remove(&(n % 3)) {
            apply_input(&mut self.store, &mut self.conns, &SocketInput::Closed(c.id));
        }
    }

    /// dom0's side after a notification (or after socket traffic, which may
    /// have fired the guest's watches): the server does what the ring allows.
    /// It may write only its own fields; the indexes it leaves make sense
    /// unless it stopped the ring. Returns whether the server did anything
    /// (if not, it handled no request and the store is as it was).
    fn service(&mut self) -> Result<bool, String> {
        // A dom0 client may release and re-introduce the domain: the new
        // connection is served on the same page.
        if let Some(c) = self.store.domain(1).and_then(|d| d.conn) {
            if c != self.ring.server.conn() {
                self.ring.server = RingServer::introduced(c, &self.ring.page);
                self.ring.replies.reset();
            }
        }
        let page = &self.ring.page;
        let before = page_words(page);
        let reconnect = page.read_u32(off::CONNECTION) == RECONNECT;
        let changed = self.ring.server.service(&mut self.store, page);
        let after = page_words(page);
        // Bytes the server may not write: one fold over the page (not a
        // comparison per byte, which coverage tracing makes slow).
        let guest = if reconnect { &GUEST_BYTES.1 } else { &GUEST_BYTES.0 };
        let wrote = before.iter().zip(after.iter()).zip(guest.iter()).fold(0, |d, ((b, a), m)| d | ((b ^ a) & m));
        if wrote != 0 {
            let at = (0..512).find(|&i| (before[i] ^ after[i]) & guest[i] != 0).unwrap_or(0);
            return Err(format!("the ring server wrote the guest's bytes in {:#x}..{:#x}", at * 8, at * 8 + 8));
        }
        if reconnect && page.read_u32(off::CONNECTION) != CONNECTED {
            return Err("the ring server left a reconnect request unanswered".into());
        }
        if self.ring.server.error().is_none() {
            let req = page.read_u32(off::REQ_PROD).wrapping_sub(page.read_u32(off::REQ_CONS));
            let rsp = page.read_u32(off::RSP_PROD).wrapping_sub(page.read_u32(off::RSP_CONS));
            if req > RING_SIZE || rsp > RING_SIZE {
                return Err(format!("ring served with {req} request and {rsp} response bytes outstanding"));
            }
        }
        Ok(changed)
    }

    fn socket_bytes(&mut self, n: u8, bytes: &[u8]) {
        let id = self.client(n);
        let Some(c) = self.clients.get_mut(&(n % 3)) else { return };
        match c.asm.push(bytes) {
            Ok(ps) => {
                for p in ps {
                    apply_input(&mut self.store, &mut self.conns, &SocketInput::Request(id, p));
                }
            }
            Err(_) => self.close(n),
        }
    }

    /// The socket transport writes everything queued (clients read it all);
    /// the ring's output stays for its server.
    fn drain(&mut self) -> BTreeMap<ConnId, Vec<Packet>> {
        let mut out = BTreeMap::new();
        let ring = self.ring.server.conn();
        let conns: Vec<ConnId> = self.store.connections().map(|(c, _)| c).filter(|&c| c != ring).collect();
        for c in conns {
            let v: &mut Vec<Packet> = out.entry(c).or_default();
            while let Some(p) = self.store.pop_output(c) {
                v.push(p);
            }
        }
        self.store.woken();
        out
    }
}

fn packet_bytes(msg_type: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + payload.len());
    for w in [msg_type, req_id, tx_id, payload.len() as u32] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

pub fn run(input: &Input) -> Result<(), String> {
    let mut h = Harness::new();
    // The tree's change count when it was last walked (the pristine tree is walked at
    // the end with everything else).
    let mut walked = h.store.tree().changes();
    for (i, step) in input.steps.iter().take(super::MAX_STEPS).enumerate() {
        match step {
            Step::Ring(b) => {
                h.ring.send(b);
            }
            Step::Socket(n, b) => h.socket_bytes(*n, b),
            Step::Request { socket, msg_type, tx_id, payload } => {
                let p: Vec<u8> = payload.iter().copied().take(4096).collect();
                let bytes = packet_bytes(u32::from(*msg_type % 28), 0x5eed, u32::from(*tx_id % 4), &p);
                match socket {
                    Some(n) => h.socket_bytes(*n, &bytes),
                    None => {
                        h.ring.send(&bytes);
                    }
                }
            }
            Step::Close(n) => h.close(*n),
            Step::RingReset => h.ring.reconnect(),
            Step::Consume => h.ring.consume(),
            Step::Index { which, value, relative } => {
                let at = [off::REQ_CONS, off::REQ_PROD, off::RSP_CONS, off::RSP_PROD][usize::from(which % 4)];
                let v = if *relative { h.ring.page.read_u32(at).wrapping_add(*value) } else { *value };
                h.ring.page.write_u32(at, v);
            }
            Step::PokePage { at, bytes } => {
                let at = usize::from(*at) % 4096;
                let n = bytes.len().min(4096 - at);
                h.ring.page.write(at, &bytes[..n]);
            }
            Step::Hold => h.hold = true,
            Step::Drain => {
                h.hold = false;
                h.drain();
            }
        }
        let serviced = h.service();
        if !h.hold {
            h.drain();
        }
        // The tree is walked again only if the step changed it (every change to the
        // tree counts: inserts and removals are its only mutators).
        let changed = h.store.tree().changes() != walked;
        walked = h.store.tree().changes();
        serviced.and_then(|_| check(&h.store, changed)).map_err(|e| format!("after step {i} ({step:?}): {e}"))?;
    }
    h.drain();
    check(&h.store, true).map_err(|e| format!("at the end: {e}"))?;
    round_trip(&h.store)?;
    still_answers(&mut h)
}

/// Tree accounting (if `tree`) and per-connection counters within their
/// quotas.
pub fn check(store: &Store, tree: bool) -> Result<(), String> {
    if tree {
        store.tree().check()?;
    }
    for (id, c) in store.connections() {
        let replies = c.out.iter().filter(|p| p.msg_type != MsgType::WatchEvent as u32).count();
        if replies != c.outstanding as usize {
            return Err(format!("{id:?}: {replies} replies queued but outstanding = {}", c.outstanding));
        }
        if c.domid == 0 {
            continue;
        }
        let q = store.domain(c.domid).and_then(|d| d.quotas).unwrap_or(*store.quotas());
        if c.watches.len() > q.watches as usize || c.transactions.len() > q.transactions as usize {
            return Err(format!(
                "{id:?} (dom{}): {} watches, {} transactions over quota {q:?}",
                c.domid,
                c.watches.len(),
                c.transactions.len()
            ));
        }
        if c.outstanding > q.outstanding {
            return Err(format!("{id:?}: {} outstanding replies over quota {}", c.outstanding, q.outstanding));
        }
    }
    Ok(())
}

thread_local! {
    /// The round trip's buffer, kept across inputs (no allocation per input).
    static SAVED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Saved once (compact MessagePack, as snapshots save it) and loaded back: the loaded
/// store equals the live one, field by field (the tree's change counter is not state).
fn round_trip(store: &Store) -> Result<(), String> {
    SAVED.with_borrow_mut(|bytes| {
        bytes.clear();
        rmp_serde::encode::write(bytes, store).map_err(|e| format!("serialize: {e}"))?;
        let back: Store = rmp_serde::from_slice(bytes).map_err(|e| format!("deserialize: {e}"))?;
        if &back != store {
            return Err("store differs after a serialize/deserialize round trip".into());
        }
        Ok(())
    })
}

/// A valid READ of the domain's own node is answered on every connection:
/// on the ring after the guest reconnects (whatever state it left the ring
/// in, as Linux's xenbus does on resume), on a fresh socket client if the old
/// one is mid-packet.
fn still_answers(h: &mut Harness) -> Result<(), String> {
    let req_id = 0xdead_beef;
    let read = |path: &str| {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        packet_bytes(MsgType::Read as u32, req_id, 0, &p)
    };
    if h.store.domain(1).and_then(|d| d.conn).is_some() {
        h.ring.reconnect();
        h.service()?;
        h.ring.got.clear();
        if h.ring.send(&read("domid")) == 0 {
            return Err("no room in the request queue after a reconnect".into());
        }
        // The guest reads replies as they come; a ring that makes progress
        // answers within a few rounds (the reply is under 1 KiB).
        for _ in 0..4 {
            h.service()?;
            h.ring.consume();
        }
        let answers: Vec<&Packet> = h.ring.got.iter().filter(|p| p.req_id == req_id).collect();
        // Answered once (a reply or an error: a dom0 client may have
        // removed the node), never dropped.
        if answers.len() != 1 {
            return Err(format!("the ring answered a valid READ of domid with {answers:?}"));
        }
    }
    let clients: Vec<u8> = (0..3).collect();
    for n in clients {
        if h.clients.get(&n).is_some_and(|c| !c.asm.is_idle()) {
            h.close(n);
        }
        h.socket_bytes(n, &read("/local/domain/1/domid"));
    }
    let out = h.drain();
    for c in h.clients.values() {
        let Some(&c) = h.conns.get(&c.id) else { continue };
        let got = out.get(&c).map(|v| v.iter().filter(|p| p.req_id == req_id).count()).unwrap_or(0);
        // The request is answered once (a reply or an error), never dropped.
        if got != 1 {
            return Err(format!("{c:?}: {got} answers to a valid READ (output {:?})", out.get(&c)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_domid(h: &mut Harness, req_id: u32) -> Vec<Packet> {
        h.ring.send(&packet_bytes(MsgType::Read as u32, req_id, 0, b"domid\0"));
        h.service().unwrap();
        h.ring.consume();
        std::mem::take(&mut h.ring.got)
    }

    /// By xs_wire.h's layout: req[1024] rsp[1024] req_cons req_prod rsp_cons
    /// rsp_prod server_features connection error, then padding.
    #[test]
    fn the_guest_owns_the_request_queue_and_its_own_indexes() {
        let (normal, reconnect) = &*GUEST_BYTES;
        assert_eq!(normal[0], u64::MAX, "req[]");
        assert_eq!(normal[128], 0, "rsp[]");
        assert_eq!(normal[256], 0xffff_ffff_0000_0000, "req_cons (server), req_prod (guest)");
        assert_eq!(normal[257], 0x0000_0000_ffff_ffff, "rsp_cons (guest), rsp_prod (server)");
        assert_eq!(normal[258], u64::MAX, "server_features, connection");
        assert_eq!(normal[259], 0xffff_ffff_0000_0000, "error (server), padding");
        assert_eq!((reconnect[256], reconnect[257], reconnect[258]), (0, 0, 0x0000_0000_ffff_ffff));
        assert_eq!(normal[511], u64::MAX);
    }

    #[test]
    fn a_request_on_the_ring_page_is_answered_on_it() {
        let mut h = Harness::new();
        let got = read_domid(&mut h, 7);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].msg_type, got[0].req_id, &got[0].payload[..]), (MsgType::Read as u32, 7, &b"1"[..]));
        assert_eq!(h.ring.page.read_u32(off::REQ_CONS), 16 + 6, "header and payload consumed");
    }

    /// xenstore-ring.txt: indexes more than a ring apart are
    /// XENSTORE_ERROR_RINGIDX (2); the server stops serving the ring until the
    /// guest reconnects, and the socket side is not affected.
    #[test]
    fn garbage_indexes_stop_the_ring_until_a_reconnect() {
        for (at, value) in [(off::REQ_PROD, 5000u32), (off::RSP_CONS, 1), (off::RSP_PROD, 0x8000_0000)] {
            let mut h = Harness::new();
            h.ring.page.write_u32(at, value);
            h.service().unwrap();
            assert_eq!(h.ring.page.read_u32(off::ERROR), 2, "index at {at:#x} = {value}");
            assert!(h.ring.server.error().is_some());
            // Nothing is served while stopped.
            h.ring.page.write_u32(at, 0);
            assert!(read_domid(&mut h, 1).is_empty());
            h.ring.reconnect();
            h.service().unwrap();
            assert_eq!(h.ring.page.read_u32(off::CONNECTION), CONNECTED);
            assert_eq!(h.ring.page.read_u32(off::ERROR), 0);
            assert_eq!(read_domid(&mut h, 2).len(), 1, "served again after the reconnect");
            assert_eq!(still_answers(&mut h), Ok(()));
        }
    }

    /// As dom0 does: a socket client's RELEASE and INTRODUCE of domain 1 give it a new
    /// connection, served on the same page, emptied.
    #[test]
    fn a_reintroduced_domain_is_served_on_the_same_page() {
        let mut h = Harness::new();
        let old = h.ring.server.conn();
        h.socket_bytes(0, &packet_bytes(MsgType::Release as u32, 1, 0, b"1\0"));
        h.socket_bytes(0, &packet_bytes(MsgType::Introduce as u32, 2, 0, b"1\x001044476\x001\x00"));
        h.ring.page.write_u32(off::REQ_PROD, 9);
        h.service().unwrap();
        assert_ne!(h.ring.server.conn(), old);
        assert_eq!(h.ring.page.read_u32(off::REQ_PROD), 0, "emptied on introduction");
        let got = read_domid(&mut h, 3);
        assert_eq!((got.len(), got[0].req_id), (1, 3), "answered: {got:?}");
        assert_eq!(still_answers(&mut h), Ok(()));
    }

    #[test]
    fn a_packet_longer_than_the_payload_limit_is_a_protocol_error() {
        let mut h = Harness::new();
        h.ring.send(&packet_bytes(MsgType::Read as u32, 1, 0, &[])[..12]);
        h.ring.send(&5000u32.to_le_bytes());
        h.service().unwrap();
        assert_eq!(h.ring.page.read_u32(off::ERROR), 3, "XENSTORE_ERROR_PROTO");
        assert_eq!(still_answers(&mut h), Ok(()));
    }
}
