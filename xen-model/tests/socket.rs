//! The Unix-socket transport with raw clients: file handling, req_id echo, per-client
//! state, and a misbehaving client dropped without disturbing the others.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use xen_model::xenstore::socket::{spawn_server, SocketInput, SocketTransport};
use xen_model::xenstore::wire::{Header, MsgType, Packet, HEADER_LEN};
use xen_model::xenstore::Store;

fn send(s: &mut UnixStream, ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) {
    let mut b = Vec::new();
    for w in [ty as u32, req_id, tx_id, payload.len() as u32] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(payload);
    s.write_all(&b).unwrap();
}

fn recv(s: &mut UnixStream) -> Packet {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let h = Header::decode(&h).unwrap();
    let mut p = vec![0; h.len as usize];
    s.read_exact(&mut p).unwrap();
    Packet { msg_type: h.msg_type, req_id: h.req_id, tx_id: h.tx_id, payload: p }
}

fn connect(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn socket_file_is_private_and_existing_files_are_respected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xs");
    // A regular file is never replaced.
    std::fs::write(&path, b"precious").unwrap();
    let e = SocketTransport::bind(&path).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();

    let server = spawn_server(&path, Store::new()).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A live server's socket is not taken over.
    assert_eq!(SocketTransport::bind(&path).err().unwrap().kind(), ErrorKind::AddrInUse);
    server.stop().unwrap();

    // A stale socket (nobody listening) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let t = SocketTransport::bind(&path).unwrap();
    drop(t);
    assert!(!path.exists(), "the server removes its socket when done");
}

#[test]
fn req_id_is_echoed_and_each_client_has_its_own_transactions_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xs");
    let server = spawn_server(&path, Store::new()).unwrap();
    let mut a = connect(&path);
    let mut b = connect(&path);
    send(&mut a, MsgType::Write, 0xdeadbeef, 0, b"/k\0v");
    let r = recv(&mut a);
    assert_eq!((r.msg_type, r.req_id, r.payload.as_slice()), (MsgType::Write as u32, 0xdeadbeef, &b"OK\0"[..]));

    send(&mut a, MsgType::TransactionStart, 1, 0, b"\0");
    let r = recv(&mut a);
    let id: u32 = std::str::from_utf8(&r.payload[..r.payload.len() - 1]).unwrap().parse().unwrap();
    send(&mut b, MsgType::Read, 2, id, b"/k\0");
    let r = recv(&mut b);
    assert_eq!((r.msg_type, r.tx_id, r.payload.as_slice()), (MsgType::Error as u32, id, &b"ENOENT\0"[..]));

    send(&mut a, MsgType::Watch, 3, 0, b"/k\0ta\0");
    assert_eq!(recv(&mut a).payload, b"OK\0");
    assert_eq!(recv(&mut a).payload, b"/k\0ta\0");
    send(&mut b, MsgType::Write, 4, 0, b"/k\0w");
    assert_eq!(recv(&mut b).payload, b"OK\0", "b has no watch, so its next packet is its reply");
    let ev = recv(&mut a);
    assert_eq!((ev.msg_type, ev.req_id, ev.payload.as_slice()), (MsgType::WatchEvent as u32, 0, &b"/k\0ta\0"[..]));
    drop((a, b));
    server.stop().unwrap();
}

#[test]
fn garbage_client_is_dropped_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xs");
    let server = spawn_server(&path, Store::new()).unwrap();
    let mut good = connect(&path);
    send(&mut good, MsgType::Watch, 1, 0, b"/g\0t\0");
    recv(&mut good);
    recv(&mut good);

    let mut bad = connect(&path);
    // A length over 4096 is a protocol violation.
    let mut junk = vec![0xffu8; 16];
    junk[12..16].copy_from_slice(&5000u32.to_le_bytes());
    bad.write_all(&junk).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(bad.read(&mut buf).unwrap(), 0, "server closed the bad client");

    // An unknown type is answered, not fatal.
    send(&mut good, MsgType::Read, 2, 0, b"/\0");
    assert_eq!(recv(&mut good).req_id, 2);
    let mut raw = Vec::new();
    for w in [99u32, 3, 0, 0] {
        raw.extend_from_slice(&w.to_le_bytes());
    }
    good.write_all(&raw).unwrap();
    let r = recv(&mut good);
    assert_eq!((r.msg_type, r.req_id, r.payload.as_slice()), (MsgType::Error as u32, 3, &b"ENOSYS\0"[..]));
    // The good client's watch survived.
    let mut other = connect(&path);
    send(&mut other, MsgType::Write, 1, 0, b"/g/x\0");
    recv(&mut other);
    assert_eq!(recv(&mut good).payload, b"/g/x\0t\0");
    drop((good, other));
    server.stop().unwrap();
}

#[test]
fn poll_reports_inputs_in_applied_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xs");
    let mut t = SocketTransport::bind(&path).unwrap();
    let mut store = Store::new();
    let mut c = connect(&path);
    // A request split across two writes still arrives as one packet.
    let p = Packet::new(MsgType::Read, 7, 0, b"/tool\0".to_vec()).encode();
    c.write_all(&p[..5]).unwrap();
    let mut inputs = Vec::new();
    while inputs.is_empty() {
        inputs.extend(t.poll(&mut store, Some(Duration::from_secs(5))).unwrap());
    }
    c.write_all(&p[5..]).unwrap();
    while inputs.len() < 2 {
        inputs.extend(t.poll(&mut store, Some(Duration::from_secs(5))).unwrap());
    }
    let SocketInput::Opened(id) = inputs[0] else { panic!("{inputs:?}") };
    let want = Packet { msg_type: MsgType::Read as u32, req_id: 7, tx_id: 0, payload: b"/tool\0".to_vec() };
    assert_eq!(inputs[1], SocketInput::Request(id, want));
    assert_eq!(recv(&mut c).payload, b"");
    drop(c);
    while inputs.len() < 3 {
        inputs.extend(t.poll(&mut store, Some(Duration::from_secs(5))).unwrap());
    }
    assert_eq!(inputs[2], SocketInput::Closed(id));
    assert_eq!(store.connections().count(), 0);
}
