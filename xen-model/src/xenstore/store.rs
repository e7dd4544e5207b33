//! The store: tree, connections, domains and quotas, and the dispatcher that turns one
//! decoded request from one connection into a queued reply plus queued watch events.
//! It knows no transport: a transport hands it complete packets with [`Store::handle`]
//! and takes what to write with [`Store::pop_output`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::conn::{ConnId, Connection};
use super::control;
use super::domain::{DomainState, DOMID_FIRST_RESERVED, DOMID_SELF, FEATURES_SUPPORTED, FEATURE_WATCHDEPTH};
use super::error::{XsError, XsResult};
use super::ops::{self, atoi, onearg, strings, Caller};
use super::path::{domain_path, parent};
use super::perms::{Access, Perms, PERM_READ};
use super::quota::{exceeds, Quotas, QUOTA_NAMES};
use super::transaction::{Transaction, View};
use super::tree::{Node, Tree};
use super::watch::{Change, MatchKind, Watch};
use super::wire::{MsgType, Packet, PAYLOAD_MAX};

/// The whole xenstore state. Serializable for snapshots; a round trip is identical.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    tree: Tree,
    next_gen: u64,
    conns: BTreeMap<ConnId, Connection>,
    next_conn: u32,
    domains: BTreeMap<u16, DomainState>,
    quotas: Quotas,
    /// Connections given output since the last `handle`/domain call returned.
    #[serde(skip)]
    woken: BTreeSet<ConnId>,
}

/// What a successful request replies, plus the event a WATCH queues after its reply.
struct Reply {
    payload: Vec<u8>,
    then: Option<Packet>,
}

impl Reply {
    fn ok() -> Self {
        Reply { payload: b"OK\0".to_vec(), then: None }
    }

    fn data(payload: Vec<u8>) -> Self {
        Reply { payload, then: None }
    }

    fn string(s: &str) -> Self {
        let mut payload = s.as_bytes().to_vec();
        payload.push(0);
        Reply { payload, then: None }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// The structure xenstored and a dom0 toolstack set up before any guest exists:
    /// /, /tool, /vm, /local/domain/0 and the special @introduceDomain/@releaseDomain nodes,
    /// all owned by dom0 with no access for others.
    pub fn new() -> Self {
        let mut s = Store {
            tree: Tree::new(),
            next_gen: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            domains: BTreeMap::new(),
            quotas: Quotas::default(),
            woken: BTreeSet::new(),
        };
        let n0 = || Perms::owned(0, Access::None);
        for (path, value) in [
            ("/tool", ""),
            ("/vm", ""),
            ("/local", ""),
            ("/local/domain", ""),
            ("/local/domain/0", ""),
            ("/local/domain/0/domid", "0"),
            ("/local/domain/0/name", "Domain-0"),
        ] {
            s.put_committed(path, value.as_bytes(), n0());
        }
        for special in ["@introduceDomain", "@releaseDomain"] {
            s.next_gen += 1;
            let mut n = Node::new(Vec::new(), n0());
            n.generation = s.next_gen;
            s.tree.insert(special.to_owned(), n);
        }
        s
    }

    /// Builds a node directly in the committed tree (setup only; parent must exist).
    fn put_committed(&mut self, path: &str, value: &[u8], perms: Perms) {
        let mut v = View::new(&mut self.tree, None, &mut self.next_gen, 0);
        let par = parent(path).to_owned();
        if let Some(mut pn) = v.peek(&par).cloned() {
            pn.children.insert(super::path::basename(path).to_owned());
            v.put(&par, pn);
        }
        v.put(path, Node::new(value.to_vec(), perms));
    }

    // ---- inspection -------------------------------------------------------------------

    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Sets the global quotas (the defaults for every domain without its own).
    pub fn set_quotas(&mut self, q: Quotas) {
        self.quotas = q;
    }

    pub fn domain(&self, domid: u16) -> Option<&DomainState> {
        self.domains.get(&domid)
    }

    pub fn connection(&self, conn: ConnId) -> Option<&Connection> {
        self.conns.get(&conn)
    }

    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &Connection)> {
        self.conns.iter().map(|(&k, v)| (k, v))
    }

    // ---- connections ------------------------------------------------------------------

    /// Opens a connection for `domid` (0 for socket clients and the simulator itself).
    pub fn connect(&mut self, domid: u16) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1);
        self.conns.insert(id, Connection::new(domid));
        id
    }

    /// Closes a connection; its watches, transactions and pending output go with it.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.woken.remove(&conn);
    }

    /// Ring reconnection: drop watches, transactions and undelivered output.
    pub fn reset_connection(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.reset_watches_and_transactions();
            c.out.clear();
            c.outstanding = 0;
        }
    }

    /// Next packet to write to `conn`, removed from its queue.
    pub fn pop_output(&mut self, conn: ConnId) -> Option<Packet> {
        self.conns.get_mut(&conn)?.pop()
    }

    /// Next packet to write to `conn`, left in place (a ring transport that must wait for
    /// space looks before it takes).
    pub fn peek_output(&self, conn: ConnId) -> Option<&Packet> {
        self.conns.get(&conn)?.out.front()
    }

    /// Whether the transport may hand `conn` another request now: false while the
    /// connection has as many unread replies as its outstanding-request quota.
    pub fn can_accept(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else { return false };
        let caller = self.caller_for(c.domid);
        !exceeds(u64::from(c.outstanding) + 1, caller.limit(caller.quotas.outstanding))
    }

    fn take_woken(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.woken).into_iter().collect()
    }

    // ---- requests ---------------------------------------------------------------------

    /// Processes one complete request from `conn`: queues the reply (same type, req_id and
    /// tx_id, or ERROR) and any watch events. Returns the connections that got output.
    pub fn handle(&mut self, conn: ConnId, req: &Packet) -> Vec<ConnId> {
        if !self.conns.contains_key(&conn) {
            return Vec::new();
        }
        let result = self.dispatch(conn, req.msg_type, req.tx_id, &req.payload);
        let (msg_type, payload, then) = match result {
            Ok(r) if r.payload.len() <= PAYLOAD_MAX => (req.msg_type, r.payload, r.then),
            Ok(_) => (MsgType::Error as u32, XsError::TooBig.payload(), None),
            Err(e) => (MsgType::Error as u32, e.payload(), None),
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.push_reply(Packet { msg_type, req_id: req.req_id, tx_id: req.tx_id, payload });
            if let Some(ev) = then {
                c.push_event(ev);
            }
            self.woken.insert(conn);
        }
        self.take_woken()
    }

    /// Runs a request without queueing a reply: for the simulator's own use of the store
    /// (it still fires watches). `conn` is usually a dom0 connection from [`Store::connect`].
    pub fn call(&mut self, conn: ConnId, op: MsgType, tx_id: u32, payload: &[u8]) -> XsResult<Vec<u8>> {
        if !self.conns.contains_key(&conn) {
            return Err(XsError::Inval);
        }
        let r = self.dispatch(conn, op as u32, tx_id, payload).map(|r| {
            if let (Some(ev), Some(c)) = (r.then, self.conns.get_mut(&conn)) {
                c.push_event(ev);
                self.woken.insert(conn);
            }
            r.payload
        });
        r
    }

    /// Connections given output by [`Store::call`] or domain events since last asked.
    pub fn woken(&mut self) -> Vec<ConnId> {
        self.take_woken()
    }

    fn caller_for(&self, domid: u16) -> Caller {
        let dom = self.domains.get(&domid);
        Caller {
            domid,
            privileged: domid == 0,
            target: dom.and_then(|d| d.target),
            quotas: dom.and_then(|d| d.quotas).unwrap_or(self.quotas),
        }
    }

    fn features_of(&self, domid: u16) -> u32 {
        if domid == 0 {
            return FEATURES_SUPPORTED;
        }
        self.domains.get(&domid).map_or(FEATURES_SUPPORTED, |d| d.features)
    }

    fn dispatch(&mut self, conn: ConnId, msg_type: u32, tx_id: u32, payload: &[u8]) -> XsResult<Reply> {
        use MsgType::*;
        let kind = match MsgType::from_u32(msg_type) {
            Some(WatchEvent | Error) | None => return Err(XsError::NoSys),
            Some(k) => k,
        };
        let domid = self.conns.get(&conn).ok_or(XsError::Io)?.domid;
        let caller = self.caller_for(domid);
        let privileged_only = matches!(
            kind,
            Control | Introduce | Release | IsDomainIntroduced | Resume | SetTarget | SetFeature | GetQuota | SetQuota
        );
        if privileged_only && !caller.privileged {
            return Err(XsError::Acces);
        }
        // WATCH and UNWATCH ignore tx_id; everything else names an open transaction or 0.
        let mut tx = None;
        if tx_id != 0 && !matches!(kind, Watch | Unwatch) {
            let c = self.conns.get_mut(&conn).ok_or(XsError::Io)?;
            tx = Some(c.transactions.remove(&tx_id).ok_or(XsError::NoEnt)?);
        }
        let result = self.dispatch_in(conn, &caller, kind, &mut tx, payload);
        if let (Some(t), Some(c)) = (tx, self.conns.get_mut(&conn)) {
            c.transactions.insert(t.id, t);
        }
        result
    }

    fn dispatch_in(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        kind: MsgType,
        tx: &mut Option<Transaction>,
        payload: &[u8],
    ) -> XsResult<Reply> {
        use MsgType::*;
        match kind {
            Read | Directory | DirectoryPart | GetPerms | Write | Mkdir | Rm | SetPerms => {
                self.node_op(caller, kind, tx.as_mut(), payload)
            }
            Watch => self.watch(conn, caller, payload),
            Unwatch => self.unwatch(conn, caller, payload),
            TransactionStart => {
                if tx.is_some() {
                    return Err(XsError::Busy);
                }
                let c = self.conns.get_mut(&conn).ok_or(XsError::Io)?;
                if exceeds(c.transactions.len() as u64 + 1, caller.limit(caller.quotas.transactions)) {
                    return Err(XsError::NoSpc);
                }
                let id = c.alloc_tx_id();
                c.transactions.insert(id, Transaction::new(id));
                Ok(Reply::string(&id.to_string()))
            }
            TransactionEnd => {
                let commit = match onearg(payload)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsError::Inval),
                };
                let t = tx.take().ok_or(XsError::NoEnt)?;
                if commit {
                    self.commit(caller, t)?;
                }
                Ok(Reply::ok())
            }
            GetDomainPath => {
                let d = parse_domid(onearg(payload)?)?;
                Ok(Reply::string(&domain_path(d)))
            }
            IsDomainIntroduced => {
                let d = parse_domid(onearg(payload)?)?;
                let yes = d == DOMID_SELF || d == 0 || self.domains.get(&d).is_some_and(|s| s.introduced);
                Ok(Reply::string(if yes { "T" } else { "F" }))
            }
            Introduce => {
                let args = strings(payload);
                if args.len() < 3 {
                    return Err(XsError::Inval);
                }
                let d = parse_domid(args[0])?;
                let port = atoi(args[2]);
                if port <= 0 || d == 0 || d >= DOMID_FIRST_RESERVED {
                    return Err(XsError::Inval);
                }
                // The gfn is sent as signed decimal; keep its two's-complement bits.
                let gfn = atoi(args[1]) as u64;
                self.introduce_domain(d, gfn, u32::try_from(port).map_err(|_| XsError::Inval)?);
                Ok(Reply::ok())
            }
            Release => {
                let d = self.introduced_arg(payload)?;
                self.release_domain(d)?;
                Ok(Reply::ok())
            }
            Resume => {
                let d = self.introduced_arg(payload)?;
                if let Some(s) = self.domains.get_mut(&d) {
                    s.shutdown = false;
                }
                Ok(Reply::ok())
            }
            SetTarget => {
                let args = strings(payload);
                if args.len() < 2 {
                    return Err(XsError::Inval);
                }
                let d = parse_domid(args[0])?;
                let t = parse_domid(args[1])?;
                for x in [d, t] {
                    if x != 0 && !self.domains.get(&x).is_some_and(|s| s.introduced) {
                        return Err(XsError::NoEnt);
                    }
                }
                self.domains.entry(d).or_default().target = Some(t);
                Ok(Reply::ok())
            }
            ResetWatches => {
                *tx = None;
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.reset_watches_and_transactions();
                }
                Ok(Reply::ok())
            }
            GetFeature => {
                let args = strings(payload);
                let features = match args.len() {
                    0 => self.features_of(caller.domid),
                    1 if caller.privileged => self.features_of(parse_domid(args[0])?),
                    1 => return Err(XsError::Acces),
                    _ if !caller.privileged => return Err(XsError::Acces),
                    _ => return Err(XsError::Inval),
                };
                Ok(Reply::string(&features.to_string()))
            }
            SetFeature => {
                let args = strings(payload);
                if args.len() != 2 {
                    return Err(XsError::Inval);
                }
                let d = parse_domid(args[0])?;
                let features = atoi(args[1]);
                if self.domains.get(&d).is_some_and(|s| s.introduced) {
                    return Err(XsError::Busy);
                }
                let features = u32::try_from(features).map_err(|_| XsError::Inval)?;
                if features & !FEATURES_SUPPORTED != 0 {
                    return Err(XsError::Inval);
                }
                self.domains.entry(d).or_default().features = features;
                Ok(Reply::ok())
            }
            GetQuota => self.get_quota(payload),
            SetQuota => self.set_quota(payload),
            Control => control::control(self, payload).map(Reply::data),
            WatchEvent | Error => Err(XsError::NoSys),
        }
    }

    fn introduced_arg(&self, payload: &[u8]) -> XsResult<u16> {
        let d = parse_domid(onearg(payload)?)?;
        if d == 0 {
            return Err(XsError::Inval);
        }
        if !self.domains.get(&d).is_some_and(|s| s.introduced) {
            return Err(XsError::NoEnt);
        }
        Ok(d)
    }

    fn node_op(
        &mut self,
        caller: &Caller,
        kind: MsgType,
        tx: Option<&mut Transaction>,
        payload: &[u8],
    ) -> XsResult<Reply> {
        let limit = caller.limit(caller.quotas.transaction_nodes);
        let mut v = View::new(&mut self.tree, tx, &mut self.next_gen, limit);
        let r = match kind {
            MsgType::Read => ops::read(&mut v, caller, payload).map(Reply::data),
            MsgType::Directory => ops::directory(&mut v, caller, payload).map(Reply::data),
            MsgType::DirectoryPart => ops::directory_part(&mut v, caller, payload).map(Reply::data),
            MsgType::GetPerms => ops::get_perms(&mut v, caller, payload).map(Reply::data),
            MsgType::Write => ops::write(&mut v, caller, payload).map(|_| Reply::ok()),
            MsgType::Mkdir => ops::mkdir(&mut v, caller, payload).map(|_| Reply::ok()),
            MsgType::Rm => ops::rm(&mut v, caller, payload).map(|_| Reply::ok()),
            MsgType::SetPerms => ops::set_perms(&mut v, caller, payload).map(|_| Reply::ok()),
            _ => Err(XsError::NoSys),
        };
        let changes = std::mem::take(&mut v.changes);
        drop(v);
        self.fire(changes);
        r
    }

    fn commit(&mut self, caller: &Caller, t: Transaction) -> XsResult<()> {
        if t.failed {
            // C xenstored answers a transaction that failed half-way with ENOMEM.
            return Err(XsError::NoMem);
        }
        if t.created {
            let limit = caller.limit(caller.quotas.nodes);
            for (owner, grew) in t.grown() {
                let total = u64::from(self.tree.owned_by(owner)).saturating_add(grew as u64);
                if owner == caller.domid && exceeds(total, limit) {
                    return Err(XsError::NoSpc);
                }
            }
        }
        let changes = t.commit(&mut self.tree, &mut self.next_gen)?;
        self.fire(changes);
        Ok(())
    }

    // ---- watches ----------------------------------------------------------------------

    fn watch(&mut self, conn: ConnId, caller: &Caller, payload: &[u8]) -> XsResult<Reply> {
        let args = strings(payload);
        let depth = if args.len() == 3 && self.features_of(caller.domid) & FEATURE_WATCHDEPTH != 0 {
            let d = atoi(args[2]);
            if d < 0 {
                return Err(XsError::Inval);
            }
            Some(u32::try_from(d).unwrap_or(u32::MAX))
        } else if args.len() == 2 {
            None
        } else {
            return Err(XsError::Inval);
        };
        let canon = caller.canon(args[0], true)?;
        let c = self.conns.get_mut(&conn).ok_or(XsError::Io)?;
        if c.watches.iter().any(|w| w.path == canon.path && w.token == args[1]) {
            return Err(XsError::Exist);
        }
        if exceeds(c.watches.len() as u64 + 1, caller.limit(caller.quotas.watches)) {
            return Err(XsError::NoSpc);
        }
        let prefix_len = if canon.relative { domain_path(caller.domid).len() + 1 } else { 0 };
        let w = Watch { path: canon.path, token: args[1].to_vec(), depth, prefix_len };
        // Fires once at registration, with the path as registered.
        let ev = Packet::new(MsgType::WatchEvent, 0, 0, w.event_payload(&w.path));
        c.watches.push(w);
        Ok(Reply { payload: b"OK\0".to_vec(), then: Some(ev) })
    }

    fn unwatch(&mut self, conn: ConnId, caller: &Caller, payload: &[u8]) -> XsResult<Reply> {
        let args = strings(payload);
        if args.len() != 2 {
            return Err(XsError::Inval);
        }
        let canon = caller.canon(args[0], true)?;
        let c = self.conns.get_mut(&conn).ok_or(XsError::Io)?;
        let i = c.watches.iter().position(|w| w.path == canon.path && w.token == args[1]).ok_or(XsError::NoEnt)?;
        c.watches.remove(i);
        Ok(Reply::ok())
    }

    /// Queues a WATCH_EVENT for every watch that `changes` fire and whose connection may
    /// see the change (the node, its parent or one of the change's permission lists is
    /// readable to it).
    fn fire(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let Store { tree, conns, domains, woken, .. } = self;
        for ch in &changes {
            for (&id, c) in conns.iter_mut() {
                if c.watches.is_empty() {
                    continue;
                }
                let target = domains.get(&c.domid).and_then(|d| d.target);
                if !permitted(tree, c.domid, target, ch) {
                    continue;
                }
                for w in c.watches.iter().filter(|w| w.matches(&ch.path, ch.kind)) {
                    let payload = w.event_payload(&ch.path);
                    if payload.len() <= PAYLOAD_MAX {
                        c.out.push_back(Packet::new(MsgType::WatchEvent, 0, 0, payload));
                        woken.insert(id);
                    }
                }
            }
        }
    }

    /// Fires a special watch: the bare name, and/or "<name>/<domid>".
    fn fire_special(&mut self, name: &str, domid: u16, bare: bool, with_domid: bool) {
        let mut hints = Vec::new();
        if let Some(n) = self.tree.get(name) {
            hints.push(n.perms.clone());
        }
        if let Some(n) = self.tree.get("/") {
            hints.push(n.perms.clone());
        }
        let mut changes = Vec::new();
        if bare {
            changes.push(Change { path: name.to_owned(), kind: MatchKind::SpecialBare, perms: hints.clone() });
        }
        if with_domid {
            changes.push(Change { path: format!("{name}/{domid}"), kind: MatchKind::SpecialWithDomid, perms: hints });
        }
        self.fire(changes);
    }

    // ---- domains ----------------------------------------------------------------------

    /// INTRODUCE: starts serving `domid` on a new connection and fires @introduceDomain.
    /// Introducing an introduced domain only records the new port (re-binding).
    pub fn introduce_domain(&mut self, domid: u16, gfn: u64, port: u32) -> ConnId {
        if let Some(d) = self.domains.get_mut(&domid) {
            if let (true, Some(c)) = (d.introduced, d.conn) {
                d.port = port;
                d.gfn = gfn;
                return c;
            }
        }
        let conn = self.connect(domid);
        let d = self.domains.entry(domid).or_default();
        d.introduced = true;
        d.conn = Some(conn);
        d.gfn = gfn;
        d.port = port;
        d.shutdown = false;
        self.fire_special("@introduceDomain", domid, true, true);
        conn
    }

    /// RELEASE (or domain destruction): drops the domain's connection, removes the nodes
    /// it owns, strips its permission entries elsewhere and fires @releaseDomain.
    pub fn release_domain(&mut self, domid: u16) -> XsResult<()> {
        let d = self.domains.get(&domid).filter(|d| d.introduced).ok_or(XsError::NoEnt)?;
        if let Some(c) = d.conn {
            self.disconnect(c);
        }
        self.domains.remove(&domid);
        self.remove_domain_nodes(domid);
        self.fire_special("@releaseDomain", domid, true, true);
        Ok(())
    }

    fn remove_domain_nodes(&mut self, domid: u16) {
        let mut owned_tops = Vec::new();
        let mut stripped = Vec::new();
        let mut stack = vec!["/".to_owned()];
        while let Some(p) = stack.pop() {
            let Some(n) = self.tree.get(&p) else { continue };
            if p != "/" && n.perms.owner() == domid {
                owned_tops.push(p);
                continue;
            }
            if n.perms.entries().iter().skip(1).any(|e| e.domid == domid) {
                stripped.push(p.clone());
            }
            stack.extend(n.children.iter().rev().map(|c| super::path::child_path(&p, c)));
        }
        for p in stripped {
            if let Some(mut n) = self.tree.get(&p).cloned() {
                n.perms.strip(domid);
                self.tree.insert(p, n);
            }
        }
        let mut v = View::new(&mut self.tree, None, &mut self.next_gen, 0);
        for p in owned_tops {
            // Without a transaction nothing here can fail.
            let _ = ops::remove_subtree(&mut v, &p);
        }
        let changes = std::mem::take(&mut v.changes);
        self.fire(changes);
    }

    /// The guest shut down (or crashed): fire @releaseDomain/<domid> and @releaseDomain
    /// once, until RESUME re-arms it.
    pub fn domain_shutdown(&mut self, domid: u16) -> Vec<ConnId> {
        if let Some(d) = self.domains.get_mut(&domid) {
            if d.introduced && !d.shutdown {
                d.shutdown = true;
                self.fire_special("@releaseDomain", domid, false, true);
                self.fire_special("@releaseDomain", 0, true, false);
            }
        }
        self.take_woken()
    }

    // ---- quotas -----------------------------------------------------------------------

    fn get_quota(&self, payload: &[u8]) -> XsResult<Reply> {
        let args = strings(payload);
        let (q, name) = match args.len() {
            0 => {
                let names: Vec<&str> = QUOTA_NAMES.iter().map(|(n, _)| *n).collect();
                return Ok(Reply::string(&names.join(" ")));
            }
            1 => (self.quotas, args[0]),
            2 => {
                let d = parse_domid(args[0])?;
                (self.domains.get(&d).and_then(|s| s.quotas).unwrap_or(self.quotas), args[1])
            }
            _ => return Err(XsError::Inval),
        };
        let name = std::str::from_utf8(name).map_err(|_| XsError::Inval)?;
        let v = q.get(name).ok_or(XsError::Inval)?;
        Ok(Reply::string(&v.to_string()))
    }

    fn set_quota(&mut self, payload: &[u8]) -> XsResult<Reply> {
        let args = strings(payload);
        let (domid, name, val) = match args.len() {
            2 => (None, args[0], args[1]),
            3 => (Some(parse_domid(args[0])?), args[1], args[2]),
            _ => return Err(XsError::Inval),
        };
        let name = std::str::from_utf8(name).map_err(|_| XsError::Inval)?;
        let val = u32::try_from(atoi(val)).map_err(|_| XsError::Inval)?;
        let global = self.quotas;
        let q = match domid {
            None => &mut self.quotas,
            Some(d) => self.domains.entry(d).or_default().quotas.get_or_insert(global),
        };
        if !q.set(name, val) {
            return Err(XsError::Inval);
        }
        Ok(Reply::ok())
    }

    /// Usage figures for `CONTROL quota <domid>`: (name, value) pairs.
    pub(super) fn usage(&self, domid: u16) -> Option<Vec<(&'static str, u64)>> {
        if domid != 0 && !self.domains.get(&domid).is_some_and(|d| d.introduced) {
            return None;
        }
        let mine = || self.conns.values().filter(move |c| c.domid == domid);
        Some(vec![
            ("nodes", u64::from(self.tree.owned_by(domid))),
            ("watches", mine().map(|c| c.watches.len() as u64).sum()),
            ("outstanding", mine().map(|c| u64::from(c.outstanding)).sum()),
            ("transactions", mine().map(|c| c.transactions.len() as u64).sum()),
        ])
    }

    pub(super) fn global_quotas_mut(&mut self) -> &mut Quotas {
        &mut self.quotas
    }
}

/// C xenstored's watch permission rule, with extra permission lists from the change.
fn permitted(tree: &Tree, domid: u16, target: Option<u16>, ch: &Change) -> bool {
    let privileged = domid == 0;
    if privileged {
        return true;
    }
    let readable = |p: &Perms| p.access_for(domid, target, privileged) & PERM_READ != 0;
    if ch.perms.iter().any(readable) {
        return true;
    }
    match tree.get(&ch.path) {
        Some(n) => readable(&n.perms) || tree.get(parent(&ch.path)).is_some_and(|pn| readable(&pn.perms)),
        None => false,
    }
}

/// A decimal domid 0..=65535 (C's parse_domid, without accepting an empty string).
pub fn parse_domid(s: &[u8]) -> XsResult<u16> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return Err(XsError::Inval);
    }
    let v = s.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
    u16::try_from(v).map_err(|_| XsError::Inval)
}
