//! `xenstore_wire`: raw bytes as a guest's ring traffic and as Unix-socket
//! clients' traffic, split wherever the input splits them, reassembled by
//! `PacketAssembler` and handled by a `Store` with domain 1 introduced.
//! "Ring" here is the domain-1 connection fed in chunks as a ring consumer
//! reads them (a framing error is a ring reset), not `xenstore::ring` over a
//! ring page (that transport landed after this target was written); socket clients follow `socket.rs`
//! (`SocketInput`, a framing error closes the client). After every step:
//! tree accounting, connection counters and quotas; at the end: a
//! serialize/deserialize round trip is identical, and every connection still
//! answers a valid request.

use std::collections::BTreeMap;

use arbitrary::Arbitrary;

use crate::xenstore::socket::{apply_input, ClientId, SocketInput};
use crate::xenstore::{ConnId, GuestSpec, MsgType, Packet, PacketAssembler, Store};

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub steps: Vec<Step>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// Bytes on domain 1's ring.
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
    /// The ring reconnects (XS_RESUME path: reset the connection).
    RingReset,
    /// Replies are left unread until the next drain.
    Hold,
    Drain,
}

struct Client {
    id: ClientId,
    asm: PacketAssembler,
}

struct Harness {
    store: Store,
    ring: ConnId,
    ring_asm: PacketAssembler,
    /// Ring packets the store could not take yet (outstanding quota).
    ring_backlog: Vec<Packet>,
    clients: BTreeMap<u8, Client>,
    conns: BTreeMap<ClientId, ConnId>,
    next_client: u64,
    hold: bool,
}

impl Harness {
    fn new() -> Self {
        let mut store = Store::new();
        // The toolstack's nodes for domain 1, then the guest is introduced.
        let _ = store.create_guest_nodes(&GuestSpec::domain1(0xfeffc, 1, 0xfeffd, 2));
        let ring = store.introduce_domain(1, 0xfeffc, 1);
        Harness {
            store,
            ring,
            ring_asm: PacketAssembler::new(),
            ring_backlog: Vec::new(),
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

    fn ring_bytes(&mut self, bytes: &[u8]) {
        match self.ring_asm.push(bytes) {
            Ok(ps) => self.ring_backlog.extend(ps),
            Err(_) => self.ring_reset(),
        }
        self.pump_ring();
    }

    /// Hand queued ring requests to the store while it accepts them.
    fn pump_ring(&mut self) {
        // A dom0 client may release and re-introduce the domain.
        if let Some(c) = self.store.domain(1).and_then(|d| d.conn) {
            self.ring = c;
        }
        while !self.ring_backlog.is_empty() && self.store.can_accept(self.ring) {
            let p = self.ring_backlog.remove(0);
            self.store.handle(self.ring, &p);
        }
    }

    fn ring_reset(&mut self) {
        self.ring_asm.reset();
        self.ring_backlog.clear();
        self.store.reset_connection(self.ring);
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

    /// The transports write everything queued (clients read it all).
    fn drain(&mut self) -> BTreeMap<ConnId, Vec<Packet>> {
        let mut out = BTreeMap::new();
        let conns: Vec<ConnId> = self.store.connections().map(|(c, _)| c).collect();
        for c in conns {
            let v: &mut Vec<Packet> = out.entry(c).or_default();
            while let Some(p) = self.store.pop_output(c) {
                v.push(p);
            }
        }
        self.store.woken();
        self.pump_ring();
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
    for (i, step) in input.steps.iter().take(super::MAX_STEPS).enumerate() {
        match step {
            Step::Ring(b) => h.ring_bytes(b),
            Step::Socket(n, b) => h.socket_bytes(*n, b),
            Step::Request { socket, msg_type, tx_id, payload } => {
                let p: Vec<u8> = payload.iter().copied().take(4096).collect();
                let bytes = packet_bytes(u32::from(*msg_type % 28), 0x5eed, u32::from(*tx_id % 4), &p);
                match socket {
                    Some(n) => h.socket_bytes(*n, &bytes),
                    None => h.ring_bytes(&bytes),
                }
            }
            Step::Close(n) => h.close(*n),
            Step::RingReset => h.ring_reset(),
            Step::Hold => h.hold = true,
            Step::Drain => {
                h.hold = false;
                h.drain();
            }
        }
        if !h.hold {
            h.drain();
        }
        check(&h.store).map_err(|e| format!("after step {i} ({step:?}): {e}"))?;
    }
    h.drain();
    round_trip(&h.store)?;
    still_answers(&mut h)
}

/// Tree accounting and per-connection counters within their quotas.
pub fn check(store: &Store) -> Result<(), String> {
    store.tree().check()?;
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

fn round_trip(store: &Store) -> Result<(), String> {
    let bytes = rmp_serde::to_vec(store).map_err(|e| format!("serialize: {e}"))?;
    let back: Store = rmp_serde::from_slice(&bytes).map_err(|e| format!("deserialize: {e}"))?;
    if &back != store {
        return Err("store differs after a serialize/deserialize round trip".into());
    }
    Ok(())
}

/// A valid READ of the domain's own node is answered on every connection
/// (after a ring reset or on a fresh socket client if the old framing is
/// mid-packet or failed, as a real client would reconnect).
fn still_answers(h: &mut Harness) -> Result<(), String> {
    let req_id = 0xdead_beef;
    let read = |path: &str| {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        packet_bytes(MsgType::Read as u32, req_id, 0, &p)
    };
    if !h.ring_asm.is_idle() || !h.ring_backlog.is_empty() {
        h.ring_reset();
    }
    h.ring_bytes(&read("domid"));
    let clients: Vec<u8> = (0..3).collect();
    for n in clients {
        if h.clients.get(&n).is_some_and(|c| !c.asm.is_idle()) {
            h.close(n);
        }
        h.socket_bytes(n, &read("/local/domain/1/domid"));
    }
    let out = h.drain();
    let mut answered = Vec::new();
    if h.store.connection(h.ring).is_some() {
        answered.push(h.ring);
    }
    for c in h.clients.values() {
        answered.extend(h.conns.get(&c.id));
    }
    for c in answered {
        let got = out.get(&c).map(|v| v.iter().filter(|p| p.req_id == req_id).count()).unwrap_or(0);
        // The request is answered once (a reply or an error), never dropped.
        if got != 1 {
            return Err(format!("{c:?}: {got} answers to a valid READ (output {:?})", out.get(&c)));
        }
    }
    Ok(())
}
