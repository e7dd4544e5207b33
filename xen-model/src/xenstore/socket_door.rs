//! The xenstore Unix socket of a running machine (`xensim run --xenstore-socket`), split
//! along the nondeterminism door: what clients send is gathered by [`SocketDoor::poll`]
//! (the machine's door, at round boundaries) as `Input::XenstoreClient`/`XenstoreSocket`
//! values that a recorder logs; the platform applies them to the store and hands replies
//! back through [`SharedSocket`] as a `XenstoreSink`. On replay only the door changes.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sim_core::door::{Door, DoorError, Input, Query, Stamp};

use super::socket::{ClientId, SocketInput, SocketTransport};
use crate::dom0::XenstoreSink;

/// The listening socket and its clients, shared by the door (reading) and the platform
/// (writing); both run on the machine's thread.
#[derive(Clone)]
pub struct SharedSocket(Arc<Mutex<SocketTransport>>);

impl SharedSocket {
    /// Binds `path` (mode 0600); clients may connect as soon as this returns.
    pub fn bind(path: &Path) -> io::Result<Self> {
        Ok(SharedSocket(Arc::new(Mutex::new(SocketTransport::bind(path)?))))
    }

    fn with<R>(&self, f: impl FnOnce(&mut SocketTransport) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// What clients did since the last call, as door inputs (requests re-framed: the
    /// bytes are the packet as the client sent it). Never waits.
    pub fn poll(&self) -> Vec<Input> {
        self.with(|t| {
            let mut out: Vec<Input> = t.write_pending().into_iter().map(closed).collect();
            match t.poll_inputs(Some(Duration::ZERO)) {
                Ok(v) => out.extend(v.into_iter().filter_map(to_input)),
                Err(e) => tracing::error!(error = %e, "xenstore socket: poll failed"),
            }
            out
        })
    }
}

fn client_no(c: ClientId) -> Option<u32> {
    u32::try_from(c.0).ok()
}

fn closed(c: ClientId) -> Input {
    Input::XenstoreClient { client: client_no(c).unwrap_or(u32::MAX), connected: false }
}

fn to_input(i: SocketInput) -> Option<Input> {
    Some(match i {
        SocketInput::Opened(c) => Input::XenstoreClient { client: client_no(c)?, connected: true },
        SocketInput::Request(c, p) => Input::XenstoreSocket { client: client_no(c)?, bytes: p.encode() },
        SocketInput::Closed(c) => closed(c),
    })
}

impl XenstoreSink for SharedSocket {
    fn send(&mut self, client: u32, bytes: &[u8]) {
        self.with(|t| t.send(ClientId(client.into()), bytes));
    }

    fn hang_up(&mut self, client: u32) {
        self.with(|t| t.hang_up(ClientId(client.into())));
    }
}

/// A door that adds the socket's clients to another door's inputs.
pub struct SocketDoor {
    inner: Box<dyn Door>,
    socket: SharedSocket,
}

impl SocketDoor {
    pub fn new(inner: Box<dyn Door>, socket: SharedSocket) -> Self {
        SocketDoor { inner, socket }
    }
}

impl Door for SocketDoor {
    fn poll(&mut self, at: Stamp) -> Result<Vec<Input>, DoorError> {
        let mut v = self.inner.poll(at)?;
        // DOOR: xenstore socket clients (connections and requests), at a round boundary.
        v.extend(self.socket.poll());
        Ok(v)
    }

    fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError> {
        self.inner.query(at, q)
    }

    /// Clients may connect and write at any time while the socket is open.
    fn live(&self, _at: Stamp) -> bool {
        true
    }

    fn wait(&mut self) {
        // DOOR: host time passes while the guest waits for socket clients
        // (or the inner door's sources).
        std::thread::sleep(sim_core::door::IDLE_WAIT);
    }
}
