//! dom0's backends for the guest, as a toolstack, xenstored and xenconsoled provide them:
//! the store with the guest's initial tree, its ring to the guest, its Unix socket for host
//! tools, and the primary console ring.
//!
//! Everything runs inside the machine's platform hooks: the rings are served in `sync`
//! after the guest signals (every guest notification is a hypercall exit), and host input
//! (socket clients, console input from a reader thread) is gathered on a periodic platform
//! timer, i.e. at deterministic points in virtual time. [`HostIo::poll`] is the one place
//! where such input enters, as [`HostInput`] values, before it is applied.

use std::io;
use std::path::Path;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sim_core::platform::PlatformCtx;
use sim_core::OverlayPage;

use crate::platform::{timer, Ring, XenConfig, XenPlatform};
use crate::pv_console;
use crate::xenstore::ring::RingServer;
use crate::xenstore::socket::{SocketInput, SocketTransport};
use crate::xenstore::{GuestSpec, Store};
use crate::GUEST_DOMID;

/// Xen's HVM special-page region (X86_HVM_END_SPECIAL_REGION 0xff000, 8 pages below it):
/// in the MMIO hole below 4 GiB whatever the RAM size, never RAM. Reserved in the memory
/// map the guest gets from XENMEM_memory_map.
pub const SPECIAL_REGION: (u64, u64) = (0xfeff8 << 12, 8 << 12);
/// special_pfn(SPECIALPAGE_XENSTORE = 4) and special_pfn(SPECIALPAGE_CONSOLE = 7), as
/// libxc places them for HVM guests.
pub const XENSTORE_PFN: u64 = 0xfeffc;
pub const CONSOLE_PFN: u64 = 0xfefff;
/// The toolstack allocates the xenstore port first, then the console's.
pub const XENSTORE_PORT: u32 = 1;
pub const CONSOLE_PORT: u32 = 2;
/// How often host input is gathered, in virtual ns.
pub const HOST_POLL_NS: u64 = 100_000;

impl XenConfig {
    /// The toolstack's rings: xenstore and the primary console at their special frames.
    pub fn with_pv_rings(mut self) -> Self {
        self.store = Some(Ring { pfn: XENSTORE_PFN, evtchn: XENSTORE_PORT });
        self.console = Some(Ring { pfn: CONSOLE_PFN, evtchn: CONSOLE_PORT });
        self
    }
}

/// Something from outside the simulation for the backends: what the nondeterminism door
/// must record and replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostInput {
    /// Bytes for the guest's console (the simulator's stdin).
    Console(Vec<u8>),
    /// A xenstore socket client connected, sent a request, or went away.
    Xenstore(SocketInput),
}

/// The host side: the xenstore socket and the console-input channel.
#[derive(Default)]
pub struct HostIo {
    socket: Option<SocketTransport>,
    console: Option<Receiver<Vec<u8>>>,
}

impl HostIo {
    /// Whether anything can still deliver input.
    pub fn is_live(&self) -> bool {
        self.socket.is_some() || self.console.is_some()
    }

    /// Gathers what arrived, without waiting. Console EOF closes the channel; a socket
    /// error stops serving the socket (logged).
    pub fn poll(&mut self) -> Vec<HostInput> {
        let mut inputs = Vec::new();
        if let Some(rx) = &self.console {
            loop {
                match rx.try_recv() {
                    Ok(bytes) => inputs.push(HostInput::Console(bytes)),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.console = None;
                        break;
                    }
                }
            }
        }
        if let Some(s) = &mut self.socket {
            match s.poll_inputs(Some(Duration::ZERO)) {
                Ok(v) => inputs.extend(v.into_iter().map(HostInput::Xenstore)),
                Err(e) => {
                    tracing::error!(error = %e, "xenstore socket failed; no longer serving it");
                    self.socket = None;
                }
            }
        }
        inputs
    }
}

/// One backend ring: its page (mapped at `pfn` while attached) and dom0's port.
struct RingPage {
    page: OverlayPage,
    pfn: u64,
    port: u32,
}

/// dom0's side of the guest.
pub struct Dom0 {
    store: Store,
    xs: Option<(RingPage, RingServer)>,
    console: Option<RingPage>,
    host: HostIo,
    /// The initial tree is written and the pages mapped (at the first platform call).
    attached: bool,
    resets_seen: u32,
}

impl Dom0 {
    pub fn new() -> Self {
        Dom0 { store: Store::new(), xs: None, console: None, host: HostIo::default(), attached: false, resets_seen: 0 }
    }
}

impl Default for Dom0 {
    fn default() -> Self {
        Self::new()
    }
}

impl XenPlatform {
    /// Serve the store on a Unix socket at `path` (mode 0600) while the guest runs.
    /// Clients are dom0; watch events from guest writes reach them.
    pub fn serve_xenstore_socket(&mut self, path: &Path) -> io::Result<()> {
        self.dom0.host.socket = Some(SocketTransport::bind(path)?);
        Ok(())
    }

    /// Console input arrives on `rx` (e.g. from a thread reading stdin); the channel
    /// closing is EOF.
    pub fn set_console_input(&mut self, rx: Receiver<Vec<u8>>) {
        self.dom0.host.console = Some(rx);
    }

    /// The store (inspection, snapshots).
    pub fn xenstore(&self) -> &Store {
        &self.dom0.store
    }

    pub fn xenstore_mut(&mut self) -> &mut Store {
        &mut self.dom0.store
    }

    /// The first platform call with memory at hand: write the guest's initial tree,
    /// introduce it, map the ring pages, bind dom0's ends, and start gathering host input.
    fn attach_backends(&mut self, ctx: &mut PlatformCtx) {
        self.dom0.attached = true;
        self.dom0.resets_seen = self.soft_resets;
        let (store, console) = (self.cfg.store, self.cfg.console);
        let spec = GuestSpec {
            vcpus: self.nr_vcpus,
            memory_kb: ctx.mem.ram_size() / 1024,
            ..GuestSpec::domain1(
                store.map_or(0, |r| r.pfn),
                store.map_or(0, |r| r.evtchn),
                console.map_or(0, |r| r.pfn),
                console.map_or(0, |r| r.evtchn),
            )
        };
        if let Err(e) = self.dom0.store.create_guest_nodes(&spec) {
            tracing::error!(error = ?e, "xenstore: writing the guest's initial tree failed");
        }
        if let Some(r) = store {
            let conn = self.dom0.store.introduce_domain(GUEST_DOMID, r.pfn, r.evtchn);
            let rp = RingPage { page: OverlayPage::new(), pfn: r.pfn, port: r.evtchn };
            RingServer::init_page(&rp.page);
            ctx.mem.map_overlay(rp.pfn, rp.page.clone());
            self.dom0.xs = Some((rp, RingServer::new(conn)));
        }
        if let Some(r) = console {
            let rp = RingPage { page: OverlayPage::new(), pfn: r.pfn, port: r.evtchn };
            ctx.mem.map_overlay(rp.pfn, rp.page.clone());
            self.dom0.console = Some(rp);
        }
        self.bind_backend_ports();
        if self.dom0.host.is_live() {
            ctx.timers.schedule(timer::key(timer::HOST_POLL, 0), ctx.now_ns.saturating_add(HOST_POLL_NS));
        }
    }

    fn bind_backend_ports(&mut self) {
        let ports = [self.dom0.xs.as_ref().map(|x| x.0.port), self.dom0.console.as_ref().map(|c| c.port)];
        for port in ports.into_iter().flatten() {
            if let Err(e) = self.evtchn.backend_bind(port) {
                tracing::warn!(port, error = ?e, "dom0 could not bind a backend port");
            }
        }
    }

    /// SCHEDOP_shutdown(soft_reset) left fresh unbound ports: bind them again and start the
    /// rings over (empty queues; the guest's watches and transactions are gone).
    fn soft_reset_backends(&mut self) {
        self.dom0.resets_seen = self.soft_resets;
        if let Some((rp, server)) = &mut self.dom0.xs {
            RingServer::init_page(&rp.page);
            self.dom0.store.reset_connection(server.conn());
            *server = RingServer::new(server.conn());
        }
        if let Some(rp) = &self.dom0.console {
            rp.page.write(0, &[0u8; sim_core::memory::PAGE_SIZE as usize]);
        }
        self.bind_backend_ports();
    }

    /// Serves both rings if the guest signalled them (or console input waits), then
    /// writes socket clients their output. Called after every exit.
    pub(crate) fn service_backends(&mut self, ctx: &mut PlatformCtx) {
        if !self.dom0.attached {
            self.attach_backends(ctx);
        }
        if self.dom0.resets_seen != self.soft_resets {
            self.soft_reset_backends();
        }
        let xs_port = self.dom0.xs.as_ref().map(|x| x.0.port);
        if xs_port.is_some_and(|p| self.evtchn.backend_pending(p)) {
            self.service_xenstore(ctx);
        }
        if let Some(port) = self.dom0.console.as_ref().map(|c| c.port) {
            if self.evtchn.backend_pending(port) || !ctx.console_input.is_empty() {
                self.service_console(ctx);
            }
        }
    }

    fn service_xenstore(&mut self, ctx: &mut PlatformCtx) {
        let Some((rp, server)) = &mut self.dom0.xs else { return };
        let port = rp.port;
        if server.service(&mut self.dom0.store, &rp.page) {
            let _ = self.backend_notify(ctx.mem, port);
        }
        // A guest write may have fired socket clients' watches.
        if let Some(s) = &mut self.dom0.host.socket {
            for closed in s.flush(&mut self.dom0.store) {
                tracing::debug!(input = ?closed, "xenstore socket client gone");
            }
        }
    }

    fn service_console(&mut self, ctx: &mut PlatformCtx) {
        let Some(rp) = &self.dom0.console else { return };
        let port = rp.port;
        if pv_console::service(&rp.page, ctx.console, ctx.console_input) {
            let _ = self.backend_notify(ctx.mem, port);
        }
    }

    /// The host-input timer: gather, apply, serve, and go on while input can still come.
    pub(crate) fn host_poll(&mut self, ctx: &mut PlatformCtx) {
        let inputs = self.dom0.host.poll();
        for input in &inputs {
            self.apply_host_input(ctx, input);
        }
        self.service_xenstore(ctx);
        if self.dom0.console.is_some() && !ctx.console_input.is_empty() {
            self.service_console(ctx);
        }
        if self.dom0.host.is_live() {
            ctx.timers.schedule(timer::key(timer::HOST_POLL, 0), ctx.now_ns.saturating_add(HOST_POLL_NS));
        }
    }

    /// Applies one host input (recorded live, or fed back by a replayer).
    pub fn apply_host_input(&mut self, ctx: &mut PlatformCtx, input: &HostInput) {
        match input {
            HostInput::Console(bytes) => ctx.console_input.extend(bytes.iter().copied()),
            HostInput::Xenstore(i) => match &mut self.dom0.host.socket {
                Some(s) => {
                    s.apply(&mut self.dom0.store, i);
                }
                None => tracing::warn!(input = ?i, "xenstore socket input with no socket: dropped"),
            },
        }
    }
}
