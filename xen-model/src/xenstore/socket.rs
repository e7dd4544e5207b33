//! The Unix-socket transport: what `xenstored` offers dom0 tools at $XENSTORED_PATH.
//! Every client is a dom0 connection with its own watches and transactions.
//!
//! Determinism: socket I/O and store processing are separate steps. [`SocketTransport::poll`]
//! gathers what clients sent as [`SocketInput`] values (opened, one complete request,
//! closed), applies them to the store in that order, then writes queued output. The inputs
//! are returned so a recorder can log them; a replayer feeds logged inputs to
//! [`apply_input`] without any socket. Readiness comes from `mio` (epoll): no sleeping,
//! so a round trip costs a few microseconds.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};

use super::conn::ConnId;
use super::store::Store;
use super::wire::{Packet, PacketAssembler};

/// A socket client, numbered by the transport in accept order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// Something a socket client did, as the store must see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketInput {
    Opened(ClientId),
    Request(ClientId, Packet),
    /// Hung up, or sent something that is not the protocol and was dropped.
    Closed(ClientId),
}

/// Applies one input to the store; `conns` maps clients to their store connections.
/// Returns the connection concerned.
pub fn apply_input(store: &mut Store, conns: &mut BTreeMap<ClientId, ConnId>, input: &SocketInput) -> Option<ConnId> {
    match input {
        SocketInput::Opened(c) => {
            let id = store.connect(0);
            conns.insert(*c, id);
            Some(id)
        }
        SocketInput::Request(c, p) => {
            let id = *conns.get(c)?;
            store.handle(id, p);
            Some(id)
        }
        SocketInput::Closed(c) => {
            let id = conns.remove(c)?;
            store.disconnect(id);
            Some(id)
        }
    }
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// A client that does not read its replies is dropped beyond this much pending output.
const MAX_PENDING_OUTPUT: usize = 16 << 20;

struct Client {
    stream: UnixStream,
    asm: PacketAssembler,
    out: Vec<u8>,
    out_pos: usize,
}

/// A listening socket and its clients.
pub struct SocketTransport {
    path: PathBuf,
    listener: UnixListener,
    poll: Poll,
    events: Events,
    clients: BTreeMap<ClientId, Client>,
    conns: BTreeMap<ClientId, ConnId>,
    next_client: u64,
    waker: Arc<Waker>,
    buf: Vec<u8>,
}

/// Binds a Unix socket at `path` with mode 0600. A stale socket (nobody listening) is
/// replaced; a live one or any other kind of file is left alone and is an error.
pub fn bind_socket(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                // Nobody listening: a leftover from a server that died.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => fs::remove_file(path)?,
                Ok(_) => {
                    return Err(io::Error::new(
                        ErrorKind::AddrInUse,
                        format!("{}: another server is listening on this socket", path.display()),
                    ))
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket; refusing to replace it", path.display()),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl SocketTransport {
    pub fn bind(path: &Path) -> io::Result<Self> {
        let mut listener = UnixListener::from_std(bind_socket(path)?);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(SocketTransport {
            path: path.to_owned(),
            listener,
            poll,
            events: Events::with_capacity(256),
            clients: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_client: 0,
            waker,
            buf: vec![0; 64 * 1024],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wakes a `poll` blocked in another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Waits up to `timeout` (None: until something happens, Some(ZERO): not at all) for
    /// socket activity, applies what arrived to `store`, writes pending output, and returns
    /// the inputs in the order they were applied.
    pub fn poll(&mut self, store: &mut Store, timeout: Option<Duration>) -> io::Result<Vec<SocketInput>> {
        let mut inputs = self.poll_inputs(timeout)?;
        for i in &inputs {
            apply_input(store, &mut self.conns, i);
        }
        inputs.extend(self.flush(store));
        Ok(inputs)
    }

    /// Applies one input gathered by [`SocketTransport::poll_inputs`] to `store`, with this
    /// transport's client-to-connection map (the door between gathering and applying).
    pub fn apply(&mut self, store: &mut Store, input: &SocketInput) -> Option<ConnId> {
        apply_input(store, &mut self.conns, input)
    }

    /// Queues `bytes` for client `id` and writes what its socket takes now. A client that
    /// is gone or hopelessly behind is closed (false).
    pub fn send(&mut self, id: ClientId, bytes: &[u8]) -> bool {
        let Some(c) = self.clients.get_mut(&id) else { return false };
        c.out.extend_from_slice(bytes);
        if write_pending(c) {
            return true;
        }
        self.close(id);
        false
    }

    /// Writes what earlier `send`s left pending; returns the clients this closed.
    pub fn write_pending(&mut self) -> Vec<ClientId> {
        let dead: Vec<ClientId> =
            self.clients.iter_mut().filter_map(|(&id, c)| (!write_pending(c)).then_some(id)).collect();
        for &id in &dead {
            self.close(id);
        }
        dead
    }

    /// Hangs up on client `id` (it sent something that is not the protocol).
    pub fn hang_up(&mut self, id: ClientId) {
        self.close(id);
    }

    /// Socket I/O only: accepts clients and reads complete requests.
    pub fn poll_inputs(&mut self, timeout: Option<Duration>) -> io::Result<Vec<SocketInput>> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut inputs = Vec::new();
        let mut readable = Vec::new();
        let mut accept = false;
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKER => {}
                Token(t) => readable.push(ClientId(t as u64 - 2)),
            }
        }
        if accept {
            self.accept_all(&mut inputs)?;
        }
        readable.sort();
        readable.dedup();
        for c in readable {
            self.read_client(c, &mut inputs);
        }
        Ok(inputs)
    }

    fn accept_all(&mut self, inputs: &mut Vec<SocketInput>) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let id = ClientId(self.next_client);
                    self.next_client += 1;
                    let token = Token(usize::try_from(id.0).unwrap_or(usize::MAX - 2) + 2);
                    self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
                    self.clients
                        .insert(id, Client { stream, asm: PacketAssembler::new(), out: Vec::new(), out_pos: 0 });
                    inputs.push(SocketInput::Opened(id));
                    // Data may already be waiting; edge-triggered polling will not say so again.
                    self.read_client(id, inputs);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A client that vanished between connect and accept is not our problem.
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads everything available from a client; a protocol violation or hang-up closes it.
    fn read_client(&mut self, id: ClientId, inputs: &mut Vec<SocketInput>) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        let mut close = false;
        loop {
            match client.stream.read(&mut self.buf) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => match client.asm.push(&self.buf[..n]) {
                    Ok(packets) => inputs.extend(packets.into_iter().map(|p| SocketInput::Request(id, p))),
                    Err(e) => {
                        tracing::warn!(client = id.0, error = %e, "xenstore socket client dropped");
                        close = true;
                        break;
                    }
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        if close {
            self.close(id);
            inputs.push(SocketInput::Closed(id));
        }
    }

    fn close(&mut self, id: ClientId) {
        if let Some(mut c) = self.clients.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Writes every client's queued replies and events, as far as its socket takes them.
    /// Call it after anything else touched the store (a guest write may fire a socket
    /// client's watch). Returns the clients it had to close (gone, or not reading), which
    /// are inputs like any other.
    pub fn flush(&mut self, store: &mut Store) -> Vec<SocketInput> {
        let mut dead = Vec::new();
        for (&id, client) in self.clients.iter_mut() {
            if let Some(&conn) = self.conns.get(&id) {
                while let Some(p) = store.pop_output(conn) {
                    p.encode_into(&mut client.out);
                }
            }
            if !write_pending(client) {
                dead.push(id);
            }
        }
        dead.into_iter()
            .map(|id| {
                self.close(id);
                let input = SocketInput::Closed(id);
                apply_input(store, &mut self.conns, &input);
                input
            })
            .collect()
    }
}

/// Writes what the socket accepts; false if the client is gone or hopelessly behind.
fn write_pending(c: &mut Client) -> bool {
    while c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => return false,
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
    } else if c.out_pos > 0 && c.out_pos >= c.out.len() / 2 {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
    }
    c.out.len() - c.out_pos <= MAX_PENDING_OUTPUT
}

impl Drop for SocketTransport {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The stand-alone server (`xensim xenstore --socket PATH`): serves `store` on `path`
/// until an I/O error.
pub fn serve_forever(path: &Path, mut store: Store) -> io::Result<()> {
    let mut t = SocketTransport::bind(path)?;
    loop {
        t.poll(&mut store, None)?;
    }
}

/// A server running on its own thread (tests, benchmarks, embedding).
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<io::Result<Store>>>,
}

/// Binds `path` now (so clients can connect as soon as this returns) and serves `store`
/// on a new thread until [`ServerHandle::stop`].
pub fn spawn_server(path: &Path, store: Store) -> io::Result<ServerHandle> {
    let mut t = SocketTransport::bind(path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let waker = t.waker();
    let flag = stop.clone();
    let thread = std::thread::Builder::new().name("xenstore-socket".into()).spawn(move || {
        let mut store = store;
        while !flag.load(Ordering::Acquire) {
            t.poll(&mut store, None)?;
        }
        Ok(store)
    })?;
    Ok(ServerHandle { stop, waker, thread: Some(thread) })
}

impl ServerHandle {
    /// Stops the server and returns its store.
    pub fn stop(mut self) -> io::Result<Store> {
        self.stop.store(true, Ordering::Release);
        self.waker.wake()?;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(io::Error::other("xenstore server thread panicked")),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::Release);
            let _ = self.waker.wake();
            let _ = t.join();
        }
    }
}
