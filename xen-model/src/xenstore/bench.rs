//! Benchmarks for `xensim bench`: in-process request throughput and Unix-socket round trip.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::initial::GuestSpec;
use super::socket::spawn_server;
use super::wire::{Header, MsgType, Packet, HEADER_LEN};
use super::Store;

#[derive(Clone, Copy, Debug)]
pub struct OpsResult {
    pub ops: usize,
    pub elapsed: Duration,
    /// Watch events produced along the way.
    pub events: usize,
}

impl OpsResult {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn path_payload(path: &str, value: Option<&[u8]>) -> Vec<u8> {
    let mut p = path.as_bytes().to_vec();
    p.push(0);
    if let Some(v) = value {
        p.extend_from_slice(v);
    }
    p
}

/// Runs `n` requests through the store core: a guest and dom0 mixing reads, writes (each
/// firing a watch), directory listings and permission reads, with every reply and event
/// taken off the queues as a transport would.
pub fn bench_ops(n: usize) -> OpsResult {
    let mut s = Store::new();
    let spec = GuestSpec::domain1(0xfeffc, 1, 0xfeffd, 2);
    // A fresh store always accepts the initial tree.
    let _ = s.create_guest_nodes(&spec);
    let guest = s.introduce_domain(1, spec.store_gfn, spec.store_port);
    let dom0 = s.connect(0);
    let watcher = s.connect(0);
    let w = Packet::new(MsgType::Watch, 0, 0, b"/local/domain/1/data\0tok\0".to_vec());
    s.handle(watcher, &w);
    for c in [guest, dom0, watcher] {
        while s.pop_output(c).is_some() {}
    }
    let keys: Vec<String> = (0..16).map(|i| format!("data/k{i}")).collect();
    let abs: Vec<String> = keys.iter().map(|k| format!("/local/domain/1/{k}")).collect();
    for k in &keys {
        s.handle(guest, &Packet::new(MsgType::Write, 0, 0, path_payload(k, Some(b"0"))));
    }
    for c in [guest, dom0, watcher] {
        while s.pop_output(c).is_some() {}
    }

    let mut events = 0;
    let start = Instant::now();
    for i in 0..n {
        let k = i % keys.len();
        let (conn, pkt) = match i % 8 {
            0..=2 => (guest, Packet::new(MsgType::Read, i as u32, 0, path_payload(&keys[k], None))),
            3 => (guest, Packet::new(MsgType::Write, i as u32, 0, path_payload(&keys[k], Some(b"value")))),
            4 => (dom0, Packet::new(MsgType::Read, i as u32, 0, path_payload(&abs[k], None))),
            5 => (dom0, Packet::new(MsgType::Directory, i as u32, 0, path_payload("/local/domain/1/data", None))),
            6 => (dom0, Packet::new(MsgType::Write, i as u32, 0, path_payload(&abs[k], Some(b"v2")))),
            _ => (guest, Packet::new(MsgType::GetPerms, i as u32, 0, path_payload(&keys[k], None))),
        };
        for c in s.handle(conn, &pkt) {
            while let Some(p) = s.pop_output(c) {
                if p.msg_type == MsgType::WatchEvent as u32 {
                    events += 1;
                }
            }
        }
    }
    OpsResult { ops: n, elapsed: start.elapsed(), events }
}

fn temp_socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!("xensim-xs-{}-{}.sock", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

fn round_trip(sock: &mut UnixStream, p: &Packet) -> io::Result<Packet> {
    sock.write_all(&p.encode())?;
    let mut h = [0u8; HEADER_LEN];
    sock.read_exact(&mut h)?;
    let h = Header::decode(&h).map_err(io::Error::other)?;
    let mut payload = vec![0; h.len as usize];
    sock.read_exact(&mut payload)?;
    Ok(Packet { msg_type: h.msg_type, req_id: h.req_id, tx_id: h.tx_id, payload })
}

/// Mean round-trip time of `n` requests (alternating WRITE and READ of one node) from one
/// client to a socket server on its own thread.
pub fn bench_socket_rtt(n: usize) -> io::Result<Duration> {
    let path = temp_socket_path();
    let server = spawn_server(&path, Store::new())?;
    let mut sock = UnixStream::connect(&path)?;
    let write = Packet::new(MsgType::Write, 1, 0, path_payload("/bench", Some(b"value")));
    let read = Packet::new(MsgType::Read, 2, 0, path_payload("/bench", None));
    // Warm up, and check the server answers as expected.
    for _ in 0..100 {
        round_trip(&mut sock, &write)?;
        let r = round_trip(&mut sock, &read)?;
        if r.payload != b"value" {
            return Err(io::Error::other("xenstore bench: unexpected READ reply"));
        }
    }
    let start = Instant::now();
    for i in 0..n {
        round_trip(&mut sock, if i % 2 == 0 { &write } else { &read })?;
    }
    let elapsed = start.elapsed();
    drop(sock);
    server.stop()?;
    Ok(elapsed / u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_ops_counts_watch_events() {
        let r = bench_ops(800);
        assert_eq!(r.ops, 800);
        // Writes are i % 8 == 3 (guest) and 6 (dom0): 200 writes, each firing the watch.
        assert_eq!(r.events, 200);
    }

    #[test]
    fn socket_rtt_runs() {
        let d = bench_socket_rtt(200).unwrap();
        assert!(d > Duration::ZERO);
    }
}
