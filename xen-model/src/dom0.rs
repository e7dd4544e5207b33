//! dom0's backends for the guest, as a toolstack, xenstored and xenconsoled provide them:
//! the store with the guest's initial tree, its ring to the guest, its Unix socket for host
//! tools, and the primary console ring.
//!
//! Everything runs inside the machine's platform hooks: the rings are served in `sync`
//! after the guest signals (every guest notification is a hypercall exit); socket clients'
//! traffic and console input arrive through the machine's door (`Platform::input`, at round
//! boundaries). Only output leaves directly: to the console, and to a [`XenstoreSink`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sim_core::door::Input;
use sim_core::platform::PlatformCtx;
use sim_core::OverlayPage;

use crate::platform::{Ring, XenConfig, XenPlatform};
use crate::pv_console;
use crate::xenstore::ring::RingServer;
use crate::xenstore::{ConnId, GuestSpec, PacketAssembler, Store};
use crate::{DOM0, GUEST_DOMID};

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

impl XenConfig {
    /// The toolstack's rings: xenstore and the primary console at their special frames.
    pub fn with_pv_rings(mut self) -> Self {
        self.store = Some(Ring { pfn: XENSTORE_PFN, evtchn: XENSTORE_PORT });
        self.console = Some(Ring { pfn: CONSOLE_PFN, evtchn: CONSOLE_PORT });
        self
    }
}

/// Where replies and watch events for xenstore socket clients go: the live socket, or
/// nowhere on replay (the store's state is the same either way).
pub trait XenstoreSink: Send {
    fn send(&mut self, client: u32, bytes: &[u8]);
    /// The client broke the protocol: hang up on it.
    fn hang_up(&mut self, client: u32);
}

/// A socket client as the store sees it: its connection and its partial packet.
struct SocketClient {
    conn: ConnId,
    asm: PacketAssembler,
}

/// One backend ring: its page (mapped at `pfn` while attached) and dom0's port.
struct RingPage {
    page: OverlayPage,
    pfn: u64,
    port: u32,
}

/// The store, counting the times it was lent out for change (there is no
/// `DerefMut`: every change goes through `get_mut`), and its encoding as of
/// some count: saving a store unchanged since (every state hash does) then
/// copies bytes instead of walking the tree.
#[derive(Default)]
struct TrackedStore {
    store: Store,
    lent: u64,
    encoded: Mutex<Option<(u64, Arc<[u8]>)>>,
}

impl std::ops::Deref for TrackedStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl TrackedStore {
    fn get_mut(&mut self) -> &mut Store {
        self.lent = self.lent.wrapping_add(1);
        &mut self.store
    }

    /// The store's rmp-serde encoding.
    fn encoded(&self) -> Arc<[u8]> {
        let mut cache = self.encoded.lock().unwrap_or_else(|e| e.into_inner());
        match &*cache {
            Some((lent, bytes)) if *lent == self.lent => bytes.clone(),
            _ => {
                let bytes: Arc<[u8]> = rmp_serde::to_vec(&self.store).unwrap_or_default().into();
                *cache = Some((self.lent, bytes.clone()));
                bytes
            }
        }
    }

    /// Replace the store with `store`, which `bytes` encode.
    fn set(&mut self, store: Store, bytes: Arc<[u8]>) {
        self.store = store;
        self.lent = self.lent.wrapping_add(1);
        *self.encoded.get_mut().unwrap_or_else(|e| e.into_inner()) = Some((self.lent, bytes));
    }
}

/// dom0's side of the guest.
pub struct Dom0 {
    store: TrackedStore,
    /// The checkpoint the store was last restored from and its `lent` count
    /// then: if neither changed, the store still is that checkpoint's.
    store_from: Option<(u64, u64)>,
    xs: Option<(RingPage, RingServer)>,
    console: Option<RingPage>,
    /// Socket clients by the door's client number.
    clients: BTreeMap<u32, SocketClient>,
    sink: Option<Box<dyn XenstoreSink>>,
    /// The initial tree is written and the pages mapped (at the first platform call).
    attached: bool,
    resets_seen: u32,
}

impl Dom0 {
    pub fn new() -> Self {
        Dom0 {
            store: TrackedStore::default(),
            store_from: None,
            xs: None,
            console: None,
            clients: BTreeMap::new(),
            sink: None,
            attached: false,
            resets_seen: 0,
        }
    }
}

impl Default for Dom0 {
    fn default() -> Self {
        Self::new()
    }
}

impl XenPlatform {
    /// Where socket clients' replies go (the live socket; see `xenstore::socket_door`).
    pub fn set_xenstore_sink(&mut self, sink: Box<dyn XenstoreSink>) {
        self.dom0.sink = Some(sink);
    }

    /// The xenstore and console ring pages dom0 mapped into the guest (for
    /// the fuzz targets' overlay accounting).
    pub(crate) fn ring_pages(&self) -> impl Iterator<Item = &OverlayPage> {
        let d = &self.dom0;
        d.xs.as_ref().map(|x| &x.0.page).into_iter().chain(d.console.as_ref().map(|c| &c.page))
    }

    /// The store (inspection, snapshots).
    pub fn xenstore(&self) -> &Store {
        &self.dom0.store
    }

    pub fn xenstore_mut(&mut self) -> &mut Store {
        self.dom0.store.get_mut()
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
        if let Err(e) = self.dom0.store.get_mut().create_guest_nodes(&spec) {
            tracing::error!(error = ?e, "xenstore: writing the guest's initial tree failed");
        }
        if let Some(r) = store {
            let conn = self.dom0.store.get_mut().introduce_domain(GUEST_DOMID, r.pfn, r.evtchn);
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
            self.dom0.store.get_mut().reset_connection(server.conn());
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
        // A dom0 client released the guest and introduced it again (a toolstack does so
        // on soft reset): the new connection is served on the same page, reset, and on
        // the event channel the introduction names.
        let introduced = self.dom0.store.domain(GUEST_DOMID).and_then(|d| d.conn.map(|c| (c, d.gfn, d.port)));
        let Some((rp, server)) = &mut self.dom0.xs else { return };
        let mut notify = false;
        let mut new_port = None;
        if let Some((conn, gfn, port)) = introduced.filter(|&(c, ..)| c != server.conn()) {
            *server = RingServer::introduced(conn, &rp.page);
            notify = true;
            new_port = Some(port).filter(|&p| p != rp.port);
            if gfn != rp.pfn {
                // The ring is dom0's page at the frame HVM_PARAM_STORE_PFN names; a
                // different frame is not followed.
                tracing::warn!(gfn, ring = rp.pfn, "xenstore: introduced with another ring frame; served on the first");
            }
        }
        if let Some(new) = new_port {
            self.rebind_xenstore_port(new);
        }
        let Some((rp, server)) = &mut self.dom0.xs else { return };
        let port = rp.port;
        if server.service(self.dom0.store.get_mut(), &rp.page) || notify {
            let _ = self.backend_notify(ctx.mem, port);
        }
        // A guest write may have fired socket clients' watches.
        self.flush_socket_clients();
    }

    /// Serve the xenstore ring on guest port `new` instead (a re-introduction named it), as
    /// xenstored binds the introduced port and unbinds the old connection's: the old port
    /// goes back to unbound for dom0. If `new` is not a port the guest left unbound for
    /// dom0, the ring stays where it was.
    fn rebind_xenstore_port(&mut self, new: u32) {
        let Some((rp, _)) = &mut self.dom0.xs else { return };
        let old = rp.port;
        match self.evtchn.backend_bind(new) {
            Ok(_) => {
                rp.port = new;
                let _ = self.evtchn.backend_unbind(old);
            }
            Err(e) => tracing::warn!(port = new, error = ?e, "xenstore: cannot bind the introduced port"),
        }
    }

    /// Moves socket clients' replies and events out of the store, to the sink if any.
    fn flush_socket_clients(&mut self) {
        for (&client, c) in &self.dom0.clients {
            let mut bytes = Vec::new();
            while let Some(p) = self.dom0.store.get_mut().pop_output(c.conn) {
                p.encode_into(&mut bytes);
            }
            if let (false, Some(sink)) = (bytes.is_empty(), self.dom0.sink.as_mut()) {
                sink.send(client, &bytes);
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

    /// A value from the door: socket clients' traffic for the store, console input
    /// (already queued on `ctx.console_input`) for the console ring.
    pub(crate) fn host_input(&mut self, ctx: &mut PlatformCtx, input: &Input) {
        if !self.dom0.attached {
            self.attach_backends(ctx);
        }
        match input {
            Input::XenstoreClient { client, connected: true } => {
                let conn = self.dom0.store.get_mut().connect(DOM0);
                if let Some(old) = self.dom0.clients.insert(*client, SocketClient { conn, asm: PacketAssembler::new() })
                {
                    self.dom0.store.get_mut().disconnect(old.conn);
                }
            }
            Input::XenstoreClient { client, connected: false } => {
                if let Some(c) = self.dom0.clients.remove(client) {
                    self.dom0.store.get_mut().disconnect(c.conn);
                }
            }
            Input::XenstoreSocket { client, bytes } => self.socket_bytes(*client, bytes),
            Input::Console(_) => self.service_console(ctx),
            _ => return,
        }
        self.service_xenstore(ctx);
        self.flush_upcalls(ctx);
    }

    fn socket_bytes(&mut self, client: u32, bytes: &[u8]) {
        let Some(c) = self.dom0.clients.get_mut(&client) else {
            tracing::warn!(client, "xenstore bytes from a client that is not connected: dropped");
            return;
        };
        match c.asm.push(bytes) {
            Ok(packets) => {
                for p in packets {
                    self.dom0.store.get_mut().handle(c.conn, &p);
                }
            }
            Err(e) => {
                // Garbage: the client goes, the guest and other clients carry on.
                tracing::warn!(client, error = %e, "xenstore socket client dropped");
                let conn = c.conn;
                self.dom0.clients.remove(&client);
                self.dom0.store.get_mut().disconnect(conn);
                if let Some(sink) = self.dom0.sink.as_mut() {
                    sink.hang_up(client);
                }
            }
        }
    }
}

/// dom0's state in a snapshot: the store, the rings' pages (contents and
/// frame) and server state, socket clients' partial packets. The live socket
/// sink is not state: it is attached again by whoever restores.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Dom0State {
    store: StoreBytes,
    xs: Option<(RingPageState, RingServer)>,
    console: Option<RingPageState>,
    clients: BTreeMap<u32, (ConnId, PacketAssembler)>,
    attached: bool,
    resets_seen: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RingPageState {
    #[serde(with = "serde_bytes")]
    contents: Vec<u8>,
    pfn: u64,
    port: u32,
}

impl RingPage {
    fn save(&self) -> RingPageState {
        let mut contents = vec![0u8; 4096];
        self.page.read(0, &mut contents);
        RingPageState { contents, pfn: self.pfn, port: self.port }
    }

    fn check(s: &RingPageState) -> Result<(), String> {
        if s.contents.len() != 4096 {
            return Err(format!("Xen state: ring page at frame {:#x} is not one page", s.pfn));
        }
        Ok(())
    }

    /// A page with the saved contents (`old`'s page if any: its mappings
    /// were dropped), mapped at its frame while attached.
    fn restore(s: &RingPageState, mem: &mut sim_core::GuestMemory, attached: bool, old: Option<Self>) -> Self {
        let page = old.map(|o| o.page).unwrap_or_default();
        page.write(0, &s.contents);
        if attached {
            mem.map_overlay(s.pfn, page.clone());
        }
        RingPage { page, pfn: s.pfn, port: s.port }
    }
}

/// The store in a saved state: its rmp-serde encoding, as one MessagePack
/// bin (shared with the store's own cache, so a save of an unchanged store
/// copies neither the tree nor the bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoreBytes(Arc<[u8]>);

impl serde::Serialize for StoreBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for StoreBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| StoreBytes(b.into_vec().into()))
    }
}

impl Dom0 {
    pub(crate) fn save_state(&self) -> Dom0State {
        // Destructured so that a new field fails to compile until it is saved.
        let Dom0 { store, store_from: _, xs, console, clients, sink: _, attached, resets_seen } = self;
        Dom0State {
            store: StoreBytes(store.encoded()),
            xs: xs.as_ref().map(|(p, s)| (p.save(), s.clone())),
            console: console.as_ref().map(RingPage::save),
            clients: clients.iter().map(|(&n, c)| (n, (c.conn, c.asm.clone()))).collect(),
            attached: *attached,
            resets_seen: *resets_seen,
        }
    }

    /// Restore into guest memory whose overlays were cleared; the sink stays.
    /// `checkpoint`: the id of the in-memory checkpoint `s` belongs to.
    pub(crate) fn restore_state(
        &mut self,
        s: &Dom0State,
        mem: &mut sim_core::GuestMemory,
        checkpoint: Option<u64>,
    ) -> Result<(), String> {
        for p in s.xs.iter().map(|x| &x.0).chain(&s.console) {
            RingPage::check(p)?;
        }
        // Resetting to the same checkpoint again often finds the store
        // untouched since: then it is that checkpoint's already.
        let untouched = checkpoint.is_some() && self.store_from == checkpoint.map(|id| (id, self.store.lent));
        if !untouched {
            let store: Store =
                rmp_serde::from_slice(&s.store.0).map_err(|e| format!("undecodable xenstore state ({e})"))?;
            self.store.set(store, s.store.0.clone());
        }
        let old_xs = self.xs.take().map(|x| x.0);
        let xs = s.xs.as_ref().map(|(p, server)| (RingPage::restore(p, mem, s.attached, old_xs), server.clone()));
        let console = s.console.as_ref().map(|p| RingPage::restore(p, mem, s.attached, self.console.take()));
        self.store_from = checkpoint.map(|id| (id, self.store.lent));
        self.xs = xs;
        self.console = console;
        self.clients =
            s.clients.iter().map(|(&n, (conn, asm))| (n, SocketClient { conn: *conn, asm: asm.clone() })).collect();
        self.attached = s.attached;
        self.resets_seen = s.resets_seen;
        Ok(())
    }
}
