//! A run with live outside inputs — a console line typed while it runs and
//! a xenstore socket client writing and reading the guest's tree — is
//! recorded, then replayed with no socket and no console input present:
//! the same console output and the same final state (the store included).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use replay::{Header, Log, LogWriter, Record, Replayed};
use sim_core::door::{Input, LiveDoor, Target};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::xenstore::socket_door::{SharedSocket, SocketDoor};
use xen_model::xenstore::wire::{MsgType, Packet, PacketAssembler};
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xenstore;
use xensim_tests::{log_header, xen_machine, Capture, Cpu};

fn config() -> MachineConfig {
    // The guest polls for its console line until it comes: a generous limit.
    MachineConfig { memory_mib: 64, max_instructions: Some(4_000_000_000), ..Default::default() }
}

fn machine(setup: impl FnOnce(&mut XenPlatform)) -> (Machine, Capture) {
    xen_machine(xenstore::xenstore_guest().unwrap(), config(), XenConfig::default().with_pv_rings(), Cpu::Interp, setup)
}

fn header(every: u64) -> Header {
    log_header(&config(), &xenstore::xenstore_guest().unwrap(), every)
}

/// Bytes sent into a channel, as a blocking reader (end of file when the
/// sender is dropped): console input typed by the test.
struct Typed(mpsc::Receiver<Vec<u8>>);

impl Read for Typed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.recv() {
            Ok(b) => {
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                Ok(n)
            }
            Err(_) => Ok(0),
        }
    }
}

/// Send `p` and return the reply to it (watch events in between skipped).
fn request(sock: &mut UnixStream, p: &Packet) -> Packet {
    sock.write_all(&p.encode()).unwrap();
    let mut asm = PacketAssembler::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.read(&mut buf).expect("reply within the timeout");
        assert!(n > 0, "xenstore hung up");
        for reply in asm.push(&buf[..n]).unwrap() {
            if reply.kind() != Some(MsgType::WatchEvent) {
                return reply;
            }
        }
    }
}

fn payload(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b"\0"[..])
}

#[test]
fn console_input_and_socket_clients_replay_without_being_present() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("xs.sock");
    let log_path = dir.path().join("live.log");
    let socket = SharedSocket::bind(&sock_path).expect("bind");
    let (mut m, cap) = machine(|p| p.set_xenstore_sink(Box::new(socket.clone())));
    let (typist, typed) = mpsc::channel();
    let mut live = LiveDoor::new();
    live.add_stream(Target::Console, Box::new(Typed(typed)));
    let door = SocketDoor::new(Box::new(live), socket);

    // The client works while the guest runs, then the line is typed.
    let client = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&sock_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let node: &[u8] = b"/local/domain/1/data/from-host";
        let watch = request(&mut s, &Packet::new(MsgType::Watch, 1, 0, payload(&[node, b"tok", b""])));
        let write = request(&mut s, &Packet::new(MsgType::Write, 2, 0, payload(&[node, b"hi"])));
        let read = request(&mut s, &Packet::new(MsgType::Read, 3, 0, payload(&[node, b""])));
        drop(s);
        typist.send(b"bye\n".to_vec()).unwrap();
        (watch.kind(), write.kind(), read.payload)
    });
    let mut w = LogWriter::create(&log_path, &header(10_000)).unwrap();
    let stop = replay::record(&mut m, Box::new(door), &mut w, 10_000).unwrap();
    w.finish().unwrap();
    let (watch, write, read) = client.join().unwrap();
    assert_eq!((watch, write, read), (Some(MsgType::Watch), Some(MsgType::Write), b"hi".to_vec()));
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
    let output = cap.text();
    assert_eq!(output, xenstore::xenstore_guest_expected("bye\n"));
    let recorded = m.digest();

    let log = Log::read(&log_path).unwrap();
    let kinds: Vec<&Input> = log
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Polled { input, .. } | Record::Answered { input, .. } => Some(input),
            _ => None,
        })
        .collect();
    assert!(kinds.iter().any(|i| matches!(i, Input::Console(b) if b == b"bye\n")), "{kinds:?}");
    let requests = kinds.iter().filter(|i| matches!(i, Input::XenstoreSocket { .. })).count();
    assert_eq!(requests, 3, "{kinds:?}");
    assert!(kinds.iter().any(|i| matches!(i, Input::XenstoreClient { connected: true, .. })), "{kinds:?}");
    assert!(kinds.iter().any(|i| matches!(i, Input::XenstoreClient { connected: false, .. })), "{kinds:?}");

    // No socket, no console input: only the log.
    let (mut r, cap2) = machine(|_| {});
    match replay::replay(&mut r, &log, None, &mut |_| {}).unwrap() {
        Replayed::Identical { stop: s, checkpoints } => {
            assert_eq!(s, stop);
            assert!(checkpoints >= 2, "{checkpoints} checkpoints");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cap2.text(), output);
    let replayed = r.digest();
    assert_eq!(replayed.differences(&recorded), Vec::<String>::new());
    assert_eq!(replayed.hash(), recorded.hash());
    // The client's requests are in the replayed store (the platform's
    // state): the same log without them diverges there.
    let mut without = Log::read(&log_path).unwrap();
    without.records.retain(|r| !matches!(r, Record::Polled { input: Input::XenstoreSocket { .. }, .. }));
    let (mut r, _) = machine(|_| {});
    match replay::replay(&mut r, &without, None, &mut |_| {}).unwrap() {
        Replayed::Diverged(d) => assert!(d.differences.iter().any(|l| l.starts_with("platform")), "{d}"),
        other => panic!("{other:?}"),
    }
}
