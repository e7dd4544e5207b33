//! Transport-level tests: a guest-side client written here against the layout in
//! xenstore-ring.txt (offsets and wire headers by hand) talks to `RingServer`.

use super::*;
use crate::xenstore::{GuestSpec, MsgType};

const REQ_CONS: usize = 2048;
const REQ_PROD: usize = 2052;
const RSP_CONS: usize = 2056;
const RSP_PROD: usize = 2060;

/// Header (type, req_id, tx_id, len) little-endian, then payload.
fn msg(ty: u32, req_id: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [ty, req_id, tx, payload.len() as u32] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// The guest side: produces into the request queue, consumes the response queue.
fn guest_send(p: &OverlayPage, bytes: &[u8]) {
    let mut prod = p.read_u32(REQ_PROD);
    for &b in bytes {
        p.write((prod % 1024) as usize, &[b]);
        prod = prod.wrapping_add(1);
    }
    assert!(prod.wrapping_sub(p.read_u32(REQ_CONS)) <= 1024, "test wrote past the ring");
    p.write_u32(REQ_PROD, prod);
}

fn guest_recv(p: &OverlayPage) -> Vec<u8> {
    let (mut cons, prod) = (p.read_u32(RSP_CONS), p.read_u32(RSP_PROD));
    let mut out = Vec::new();
    while cons != prod {
        let mut b = [0u8];
        p.read(1024 + (cons % 1024) as usize, &mut b);
        out.push(b[0]);
        cons = cons.wrapping_add(1);
    }
    p.write_u32(RSP_CONS, cons);
    out
}

/// Splits a response stream into (type, req_id, payload) messages.
fn parse(mut s: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !s.is_empty() {
        let w = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
        let (ty, id, len) = (w(0), w(4), w(12) as usize);
        v.push((ty, id, s[16..16 + len].to_vec()));
        s = &s[16 + len..];
    }
    v
}

struct Rig {
    store: Store,
    server: RingServer,
    page: OverlayPage,
}

impl Rig {
    fn new() -> Self {
        let mut store = Store::new();
        store.create_guest_nodes(&GuestSpec::domain1(0xfeffc, 1, 0xfefff, 2)).unwrap();
        let conn = store.introduce_domain(1, 0xfeffc, 1);
        let page = OverlayPage::new();
        RingServer::init_page(&page);
        Rig { store, server: RingServer::new(conn), page }
    }

    fn service(&mut self) -> bool {
        self.server.service(&mut self.store, &self.page)
    }

    /// Sends a request (in ring-sized pieces, serving between them), serves, and returns
    /// every message the guest can then read.
    fn call(&mut self, ty: u32, req_id: u32, payload: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        for piece in msg(ty, req_id, 0, payload).chunks(1024) {
            guest_send(&self.page, piece);
            assert!(self.service());
        }
        parse(&guest_recv(&self.page))
    }
}

#[test]
fn a_fresh_page_advertises_reconnection_and_error_and_is_connected() {
    let r = Rig::new();
    assert_eq!(r.page.read_u32(2064), 1 | 2);
    assert_eq!(r.page.read_u32(2068), 0);
    assert_eq!(r.page.read_u32(2072), 0);
}

#[test]
fn read_reply_echoes_type_and_req_id() {
    let mut r = Rig::new();
    let got = r.call(2, 77, b"name\0");
    assert_eq!(got, vec![(2, 77, b"guest".to_vec())]);
    let got = r.call(2, 78, b"/local/domain/1/domid\0");
    assert_eq!(got, vec![(2, 78, b"1".to_vec())]);
    // Nothing to do: no change, so no signal is needed.
    assert!(!r.service());
}

#[test]
fn a_request_split_across_notifications_is_handled_once_complete() {
    let mut r = Rig::new();
    let m = msg(2, 5, 0, b"name\0");
    guest_send(&r.page, &m[..10]);
    assert!(r.service(), "the consumer index moved");
    assert_eq!(r.page.read_u32(REQ_CONS), 10);
    assert!(guest_recv(&r.page).is_empty());
    guest_send(&r.page, &m[10..]);
    r.service();
    assert_eq!(parse(&guest_recv(&r.page)), vec![(2, 5, b"guest".to_vec())]);
}

#[test]
fn free_running_indices_wrap_around_u32() {
    let mut r = Rig::new();
    for at in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
        r.page.write_u32(at, 0xffff_fff0);
    }
    for i in 0..40 {
        let got = r.call(11, i, format!("data/k\0value{i}").as_bytes());
        assert_eq!(got, vec![(11, i, b"OK\0".to_vec())]);
        assert_eq!(r.call(2, i, b"data/k\0"), vec![(2, i, format!("value{i}").into_bytes())]);
    }
    assert!(r.page.read_u32(REQ_PROD) < 0x1000, "the request index wrapped");
}

#[test]
fn a_reply_larger_than_the_ring_is_written_as_the_guest_consumes() {
    let mut r = Rig::new();
    let value: Vec<u8> = (0..2000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut w = b"data/big\0".to_vec();
    w.extend_from_slice(&value);
    assert_eq!(r.call(11, 1, &w), vec![(11, 1, b"OK\0".to_vec())]);
    guest_send(&r.page, &msg(2, 2, 0, b"data/big\0"));
    let mut stream = Vec::new();
    let mut rounds = 0;
    while r.service() {
        let chunk = guest_recv(&r.page);
        assert!(chunk.len() <= 1024);
        stream.extend(chunk);
        rounds += 1;
    }
    assert!(rounds >= 2, "needed {rounds} rounds");
    assert_eq!(parse(&stream), vec![(2, 2, value)]);
}

#[test]
fn watch_events_from_another_connection_reach_the_ring() {
    let mut r = Rig::new();
    let got = r.call(4, 3, b"data\0tok\0");
    // The reply, then the registration event: "path\0token\0".
    assert_eq!(got, vec![(4, 3, b"OK\0".to_vec()), (15, 0, b"data\0tok\0".to_vec())]);
    let dom0 = r.store.connect(0);
    r.store.call(dom0, MsgType::Write, 0, b"/local/domain/1/data/x\0hello").unwrap();
    assert!(r.service());
    assert_eq!(parse(&guest_recv(&r.page)), vec![(15, 0, b"data/x\0tok\0".to_vec())]);
}

#[test]
fn an_overlong_packet_sets_the_error_and_stops_service_until_reconnect() {
    let mut r = Rig::new();
    r.call(4, 1, b"data\0w\0");
    let conn = r.server.conn();
    assert_eq!(r.store.connection(conn).unwrap().watches.len(), 1);
    let mut bad = msg(11, 2, 0, b"");
    bad[12..16].copy_from_slice(&4097u32.to_le_bytes());
    guest_send(&r.page, &bad);
    assert!(r.service());
    assert_eq!(r.page.read_u32(2072), 3, "XENSTORE_ERROR_PROTO");
    assert_eq!(r.server.error(), Some(RingError::Proto));
    assert!(r.store.connection(conn).unwrap().watches.is_empty(), "watches discarded");
    // A valid request now goes unanswered.
    guest_send(&r.page, &msg(2, 3, 0, b"name\0"));
    assert!(!r.service());
    assert!(guest_recv(&r.page).is_empty());

    // Reconnect: connection := 1 and signal; the server empties the queues and says 0.
    guest_send(&r.page, b"\x02\x00"); // a stray partial packet, dropped too
    r.page.write_u32(2068, 1);
    assert!(r.service());
    assert_eq!(r.page.read_u32(2068), 0);
    assert_eq!(r.page.read_u32(2072), 0);
    for at in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
        assert_eq!(r.page.read_u32(at), 0);
    }
    assert_eq!(r.call(2, 4, b"name\0"), vec![(2, 4, b"guest".to_vec())]);
}

#[test]
fn inconsistent_indices_set_ringidx() {
    let mut r = Rig::new();
    r.page.write_u32(REQ_PROD, 1025);
    assert!(r.service());
    assert_eq!(r.page.read_u32(2072), 2, "XENSTORE_ERROR_RINGIDX");

    let mut r = Rig::new();
    let d0 = r.store.connect(0);
    r.store.call(d0, MsgType::Write, 0, b"/x\0y").unwrap();
    r.page.write_u32(RSP_PROD, 5000);
    guest_send(&r.page, &msg(2, 1, 0, b"name\0"));
    r.service();
    assert_eq!(r.page.read_u32(2072), 2);
}

#[test]
fn reconnect_drops_partial_packets_watches_and_transactions() {
    let mut r = Rig::new();
    r.call(4, 1, b"data\0w\0");
    let tx = r.call(6, 2, b"\0");
    assert_eq!(tx, vec![(6, 2, b"1\0".to_vec())]);
    let conn = r.server.conn();
    assert_eq!(r.store.connection(conn).unwrap().transactions.len(), 1);
    // Half a header, then the reconnect request.
    guest_send(&r.page, &msg(2, 9, 0, b"name\0")[..7]);
    r.service();
    r.page.write_u32(2068, 1);
    assert!(r.service());
    let c = r.store.connection(conn).unwrap();
    assert!(c.watches.is_empty() && c.transactions.is_empty());
    assert_eq!(r.page.read_u32(2068), 0);
    // The next packet starts at a packet boundary: the 7 old bytes are gone.
    assert_eq!(r.call(2, 10, b"name\0"), vec![(2, 10, b"guest".to_vec())]);
    // A write under the old watch fires nothing.
    let d0 = r.store.connect(0);
    r.store.call(d0, MsgType::Write, 0, b"/local/domain/1/data/q\0v").unwrap();
    assert!(!r.service());
}

#[test]
fn requests_wait_in_the_ring_while_the_guest_does_not_read_replies() {
    let mut r = Rig::new();
    // 1000-byte value: each READ reply is 1016 bytes, so the response queue holds less
    // than one; the store's outstanding quota (20) then stops the server taking requests.
    let mut w = b"data/v\0".to_vec();
    w.extend(std::iter::repeat_n(b'z', 1000));
    r.call(11, 0, &w);
    let one = msg(2, 1, 0, b"data/v\0");
    let start = r.page.read_u32(REQ_CONS);
    for _ in 0..30 {
        guest_send(&r.page, &one);
    }
    r.service();
    let consumed = r.page.read_u32(REQ_CONS).wrapping_sub(start) as usize / one.len();
    // 20 taken, then the server moves two replies out of the store (one written whole,
    // 8 bytes of the next fill the queue), which lets two more in: 22.
    assert_eq!(consumed, 22, "requests taken before the quota stopped the server");
    let mut stream = Vec::new();
    while r.service() || r.page.read_u32(RSP_PROD) != r.page.read_u32(RSP_CONS) {
        stream.extend(guest_recv(&r.page));
    }
    let replies = parse(&stream);
    assert_eq!(replies.len(), 30);
    assert!(replies.iter().all(|(ty, id, p)| *ty == 2 && *id == 1 && p.len() == 1000));
}
