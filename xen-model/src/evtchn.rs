//! Event channels, 2-level ABI (xen/include/public/event_channel.h;
//! semantics of xen/common/event_channel.c and event_2l.c).
//!
//! The guest (domid 1) owns a port table; the simulator's dom0 backends own
//! the other ends of interdomain channels bound to dom0. Raising a port
//! writes the pending/selector/upcall bits in shared_info and the target
//! vcpu_info; vCPUs whose upcall_pending went 0 -> 1 are queued in
//! `upcalls` for the platform to deliver (vector, LAPIC, GSI).

use std::collections::BTreeMap;

use sim_core::GuestMemory;

use crate::errno::{Errno, XenResult, EBUSY, EEXIST, EINVAL, ENOENT, ENOSPC, ENOSYS, EPERM, ESRCH};
use crate::guest::GuestVirt;
use crate::shared_info::{SharedInfo, VcpuInfoAt};
use crate::{DOM0, DOMID_SELF, GUEST_DOMID};

/// EVTCHNOP_* sub-ops.
pub mod op {
    pub const BIND_INTERDOMAIN: u32 = 0;
    pub const BIND_VIRQ: u32 = 1;
    pub const BIND_PIRQ: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const SEND: u32 = 4;
    pub const STATUS: u32 = 5;
    pub const ALLOC_UNBOUND: u32 = 6;
    pub const BIND_IPI: u32 = 7;
    pub const BIND_VCPU: u32 = 8;
    pub const UNMASK: u32 = 9;
    pub const RESET: u32 = 10;
    pub const INIT_CONTROL: u32 = 11;
    pub const EXPAND_ARRAY: u32 = 12;
    pub const SET_PRIORITY: u32 = 13;
}

/// EVTCHNSTAT_* values.
pub mod stat {
    pub const CLOSED: u32 = 0;
    pub const UNBOUND: u32 = 1;
    pub const INTERDOMAIN: u32 = 2;
    pub const PIRQ: u32 = 3;
    pub const VIRQ: u32 = 4;
    pub const IPI: u32 = 5;
}

pub const NR_VIRQS: u32 = 24;
pub const VIRQ_TIMER: u32 = 0;
pub const VIRQ_DEBUG: u32 = 1;
pub const VIRQ_CONSOLE: u32 = 2;
pub const VIRQ_XENOPROF: u32 = 7;
pub const VIRQ_XENPMU: u32 = 13;
/// PIRQs a domain has (nr_pirqs for an HVM guest in our model).
pub const NR_PIRQS: u32 = 256;
/// Ports are made valid in buckets of this many (EVTCHNS_PER_BUCKET).
pub const BUCKET: u32 = 64;

/// VIRQs bound per vCPU (Xen's VIRQ_VCPU type); the rest are global.
pub fn virq_is_per_vcpu(virq: u32) -> bool {
    matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChanState {
    Free,
    /// Port 0, never allocated.
    Reserved,
    Unbound {
        remote_dom: u16,
    },
    Interdomain {
        remote_dom: u16,
        remote_port: u32,
    },
    Pirq(u32),
    Virq(u32),
    Ipi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Chan {
    state: ChanState,
    vcpu: u32,
}

const FREE: Chan = Chan { state: ChanState::Free, vcpu: 0 };

/// A dom0 (backend) port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct BackendPort {
    /// The guest port it is bound to; `None` while unbound (waiting for the
    /// guest to bind to it).
    guest_port: Option<u32>,
    pending: bool,
    masked: bool,
}

/// EVTCHNOP_status result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub status: u32,
    pub vcpu: u32,
    /// Union: remote dom (unbound, interdomain), pirq, virq.
    pub a: u32,
    /// Interdomain remote port.
    pub b: u32,
}

/// What raising a port needs: shared_info and where each vCPU's vcpu_info is.
pub struct Delivery<'a> {
    pub shinfo: &'a SharedInfo,
    pub mem: &'a GuestMemory,
    pub vcpu_info: &'a [VcpuInfoAt],
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EventChannels {
    chans: Vec<Chan>,
    nr_vcpus: u32,
    virqs: BTreeMap<(u32, u32), u32>,
    pirqs: BTreeMap<u32, u32>,
    backend: BTreeMap<u32, BackendPort>,
    /// vCPUs whose evtchn_upcall_pending went 0 -> 1, for the platform.
    pub upcalls: Vec<u32>,
    /// A deliberately different model for tests (see
    /// `XenPlatform::testing_skew_event_channels`): free ports passed over
    /// before one is allocated. 0 otherwise; not part of the saved state.
    #[serde(skip)]
    pub(crate) skip_free: u32,
}

/// Resolve a domid argument that must name the caller: DOMID_SELF or its
/// own id; dom0 exists but the guest may not act on it; others do not exist.
pub fn check_self(dom: u16) -> Result<(), Errno> {
    match dom {
        DOMID_SELF | GUEST_DOMID => Ok(()),
        DOM0 => Err(Errno(EPERM)),
        _ => Err(Errno(ESRCH)),
    }
}

impl EventChannels {
    pub fn new(nr_vcpus: u32) -> Self {
        let mut e = EventChannels {
            chans: Vec::new(),
            nr_vcpus,
            virqs: BTreeMap::new(),
            pirqs: BTreeMap::new(),
            backend: BTreeMap::new(),
            upcalls: Vec::new(),
            skip_free: 0,
        };
        e.grow_to(0);
        e.chans[0].state = ChanState::Reserved;
        e
    }

    /// Ports of the 2-level ABI: word_bits squared.
    fn max_ports(d: &SharedInfo) -> u32 {
        d.word_bits() * d.word_bits()
    }

    fn grow_to(&mut self, port: u32) {
        let want = (port / BUCKET + 1) * BUCKET;
        if (self.chans.len() as u32) < want {
            self.chans.resize(want as usize, FREE);
        }
    }

    /// Whether `port` is within the allocated buckets (port_is_valid).
    pub fn port_valid(&self, port: u32) -> bool {
        (port as usize) < self.chans.len()
    }

    fn chan(&self, port: u32) -> Result<Chan, Errno> {
        self.chans.get(port as usize).copied().ok_or(Errno(EINVAL))
    }

    pub fn state(&self, port: u32) -> Option<ChanState> {
        self.chans.get(port as usize).map(|c| c.state)
    }

    pub fn notify_vcpu(&self, port: u32) -> Option<u32> {
        self.chans.get(port as usize).map(|c| c.vcpu)
    }

    fn free_port(&mut self, d: &SharedInfo) -> Result<u32, Errno> {
        let max = Self::max_ports(d);
        let mut free = self.chans.iter().enumerate().filter(|(_, c)| c.state == ChanState::Free);
        let found = free.nth(self.skip_free as usize).map(|(p, _)| p as u32);
        let port = found.unwrap_or(self.chans.len() as u32);
        if port >= max {
            return Err(Errno(ENOSPC));
        }
        self.grow_to(port);
        Ok(port)
    }

    fn set(&mut self, port: u32, state: ChanState, vcpu: u32) {
        self.grow_to(port);
        self.chans[port as usize] = Chan { state, vcpu };
    }

    fn check_vcpu(&self, vcpu: u32) -> Result<(), Errno> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(Errno(ENOENT))
        }
    }

    // ---- the sub-ops, typed ----

    /// EVTCHNOP_alloc_unbound in the guest for `remote_dom`.
    pub fn alloc_unbound(&mut self, d: &SharedInfo, remote_dom: u16) -> XenResult<u32> {
        let remote_dom = if remote_dom == DOMID_SELF { GUEST_DOMID } else { remote_dom };
        let port = self.free_port(d)?;
        self.set(port, ChanState::Unbound { remote_dom }, 0);
        Ok(port)
    }

    /// Put an unbound-to-`remote_dom` channel at exactly `port` (the
    /// toolstack's xenstore and console ports, named by the config).
    pub fn reserve_unbound(&mut self, d: &SharedInfo, port: u32, remote_dom: u16) -> XenResult<u32> {
        if port == 0 || port >= Self::max_ports(d) {
            return Err(Errno(EINVAL));
        }
        if self.state(port).is_some_and(|s| s != ChanState::Free) {
            return Err(Errno(EBUSY));
        }
        self.set(port, ChanState::Unbound { remote_dom }, 0);
        Ok(port)
    }

    /// EVTCHNOP_bind_interdomain: bind a new local port to `remote_port` of
    /// `remote_dom` (the guest itself: loopback; dom0: a backend port).
    pub fn bind_interdomain(&mut self, dl: &Delivery, remote_dom: u16, remote_port: u32) -> XenResult<u32> {
        let rdom = if remote_dom == DOMID_SELF { GUEST_DOMID } else { remote_dom };
        if rdom != GUEST_DOMID && rdom != DOM0 {
            return Err(Errno(ESRCH));
        }
        let lport = self.free_port(dl.shinfo)?;
        if rdom == GUEST_DOMID {
            let r = self.chan(remote_port)?;
            if r.state != (ChanState::Unbound { remote_dom: GUEST_DOMID }) {
                return Err(Errno(EINVAL));
            }
            self.set(lport, ChanState::Interdomain { remote_dom: GUEST_DOMID, remote_port }, 0);
            self.chans[remote_port as usize].state =
                ChanState::Interdomain { remote_dom: GUEST_DOMID, remote_port: lport };
        } else {
            match self.backend.get_mut(&remote_port) {
                Some(b) if b.guest_port.is_none() => b.guest_port = Some(lport),
                _ => return Err(Errno(EINVAL)),
            }
            self.set(lport, ChanState::Interdomain { remote_dom: DOM0, remote_port }, 0);
        }
        // Notifications sent to the unbound end may have been lost: Xen
        // conservatively marks the new local port pending.
        self.raise(dl, lport);
        Ok(lport)
    }

    /// EVTCHNOP_bind_virq.
    pub fn bind_virq(&mut self, d: &SharedInfo, virq: u32, vcpu: u32) -> XenResult<u32> {
        if virq >= NR_VIRQS {
            return Err(Errno(EINVAL));
        }
        if !virq_is_per_vcpu(virq) && vcpu != 0 {
            return Err(Errno(EINVAL));
        }
        self.check_vcpu(vcpu)?;
        if self.virqs.contains_key(&(vcpu, virq)) {
            return Err(Errno(EEXIST));
        }
        let port = self.free_port(d)?;
        self.set(port, ChanState::Virq(virq), vcpu);
        self.virqs.insert((vcpu, virq), port);
        Ok(port)
    }

    /// EVTCHNOP_bind_ipi.
    pub fn bind_ipi(&mut self, d: &SharedInfo, vcpu: u32) -> XenResult<u32> {
        self.check_vcpu(vcpu)?;
        let port = self.free_port(d)?;
        self.set(port, ChanState::Ipi, vcpu);
        Ok(port)
    }

    /// EVTCHNOP_bind_pirq (an HVM guest may bind a PIRQ before mapping it).
    pub fn bind_pirq(&mut self, d: &SharedInfo, pirq: u32) -> XenResult<u32> {
        if pirq >= NR_PIRQS {
            return Err(Errno(EINVAL));
        }
        if self.pirqs.contains_key(&pirq) {
            return Err(Errno(EEXIST));
        }
        let port = self.free_port(d)?;
        self.set(port, ChanState::Pirq(pirq), 0);
        self.pirqs.insert(pirq, port);
        Ok(port)
    }

    /// The port bound to `pirq`, if any.
    pub fn pirq_port(&self, pirq: u32) -> Option<u32> {
        self.pirqs.get(&pirq).copied()
    }

    /// EVTCHNOP_close.
    pub fn close(&mut self, d: &SharedInfo, port: u32) -> XenResult<()> {
        let c = self.chan(port)?;
        match c.state {
            ChanState::Free | ChanState::Reserved => return Err(Errno(EINVAL)),
            ChanState::Unbound { .. } | ChanState::Ipi => {}
            ChanState::Virq(v) => {
                // Global VIRQs are keyed on vCPU 0 wherever bind_vcpu moved them.
                let key = if virq_is_per_vcpu(v) { (c.vcpu, v) } else { (0, v) };
                self.virqs.remove(&key);
            }
            ChanState::Pirq(p) => {
                self.pirqs.remove(&p);
            }
            ChanState::Interdomain { remote_dom, remote_port } => {
                if remote_dom == GUEST_DOMID {
                    if let Some(r) = self.chans.get_mut(remote_port as usize) {
                        r.state = ChanState::Unbound { remote_dom: GUEST_DOMID };
                    }
                } else if let Some(b) = self.backend.get_mut(&remote_port) {
                    b.guest_port = None;
                }
            }
        }
        // evtchn_free: clear pending so a re-bind starts clean.
        d.clear_pending(port);
        self.chans[port as usize] = FREE;
        Ok(())
    }

    /// EVTCHNOP_send.
    pub fn send(&mut self, dl: &Delivery, port: u32) -> XenResult<()> {
        let c = self.chan(port)?;
        match c.state {
            ChanState::Interdomain { remote_dom: GUEST_DOMID, remote_port } => self.raise(dl, remote_port),
            ChanState::Interdomain { remote_port, .. } => {
                if let Some(b) = self.backend.get_mut(&remote_port) {
                    b.pending = true;
                }
            }
            ChanState::Ipi => self.raise(dl, port),
            ChanState::Unbound { .. } => {}
            _ => return Err(Errno(EINVAL)),
        }
        Ok(())
    }

    /// EVTCHNOP_status of a guest port.
    pub fn status(&self, port: u32) -> XenResult<Status> {
        let c = self.chan(port)?;
        let (status, a, b) = match c.state {
            ChanState::Free | ChanState::Reserved => (stat::CLOSED, 0, 0),
            ChanState::Unbound { remote_dom } => (stat::UNBOUND, remote_dom as u32, 0),
            ChanState::Interdomain { remote_dom, remote_port } => (stat::INTERDOMAIN, remote_dom as u32, remote_port),
            ChanState::Pirq(p) => (stat::PIRQ, p, 0),
            ChanState::Virq(v) => (stat::VIRQ, v, 0),
            ChanState::Ipi => (stat::IPI, 0, 0),
        };
        Ok(Status { status, vcpu: c.vcpu, a, b })
    }

    /// EVTCHNOP_bind_vcpu: move where a port's notifications go.
    pub fn bind_vcpu(&mut self, port: u32, vcpu: u32) -> XenResult<()> {
        self.check_vcpu(vcpu)?;
        let c = self.chan(port)?;
        match c.state {
            ChanState::Virq(v) if !virq_is_per_vcpu(v) => {}
            ChanState::Unbound { .. } | ChanState::Interdomain { .. } | ChanState::Pirq(_) => {}
            _ => return Err(Errno(EINVAL)),
        }
        self.chans[port as usize].vcpu = vcpu;
        Ok(())
    }

    /// EVTCHNOP_unmask (evtchn_2l_unmask).
    pub fn unmask(&mut self, dl: &Delivery, port: u32) -> XenResult<()> {
        let c = self.chan(port)?;
        let d = dl.shinfo;
        if d.test_and_clear_mask(port) && d.port_pending(port) {
            let at = dl.vcpu_info.get(c.vcpu as usize).copied().unwrap_or(VcpuInfoAt::Nowhere);
            if !d.test_and_set_sel(dl.mem, at, port / d.word_bits()) {
                self.mark_upcall(dl, c.vcpu);
            }
        }
        Ok(())
    }

    /// EVTCHNOP_reset: close every port.
    pub fn reset(&mut self, d: &SharedInfo) {
        for port in 1..self.chans.len() as u32 {
            let _ = self.close(d, port);
        }
    }

    // ---- raising ----

    /// evtchn_2l_set_pending on guest port `port`.
    pub fn raise(&mut self, dl: &Delivery, port: u32) {
        let Some(c) = self.chans.get(port as usize).copied() else { return };
        let d = dl.shinfo;
        if port >= Self::max_ports(d) || d.test_and_set_pending(port) || d.port_masked(port) {
            return;
        }
        let at = dl.vcpu_info.get(c.vcpu as usize).copied().unwrap_or(VcpuInfoAt::Nowhere);
        if !d.test_and_set_sel(dl.mem, at, port / d.word_bits()) {
            self.mark_upcall(dl, c.vcpu);
        }
    }

    /// vcpu_mark_events_pending.
    pub fn mark_upcall(&mut self, dl: &Delivery, vcpu: u32) {
        let at = dl.vcpu_info.get(vcpu as usize).copied().unwrap_or(VcpuInfoAt::Nowhere);
        if !dl.shinfo.test_and_set_upcall_pending(dl.mem, at) {
            self.upcalls.push(vcpu);
        }
    }

    /// Send VIRQ `virq` on `vcpu` (global VIRQs are bound on vCPU 0 and
    /// delivered where bind_vcpu moved them). Returns whether it was bound.
    pub fn send_virq(&mut self, dl: &Delivery, virq: u32, vcpu: u32) -> bool {
        let key = if virq_is_per_vcpu(virq) { (vcpu, virq) } else { (0, virq) };
        match self.virqs.get(&key).copied() {
            Some(port) => {
                self.raise(dl, port);
                true
            }
            None => false,
        }
    }

    /// Raise the port bound to `pirq`, if any.
    pub fn send_pirq(&mut self, dl: &Delivery, pirq: u32) {
        if let Some(port) = self.pirqs.get(&pirq).copied() {
            self.raise(dl, port);
        }
    }

    // ---- dom0 (backend) side ----

    /// A new dom0 port waiting for the guest to bind_interdomain to it; the
    /// number is chosen in dom0's own port space.
    pub fn backend_alloc_unbound(&mut self) -> u32 {
        let port = (1u32..).find(|p| !self.backend.contains_key(p)).unwrap_or(u32::MAX);
        self.backend.insert(port, BackendPort { guest_port: None, pending: false, masked: false });
        port
    }

    /// Bind dom0 to guest port `guest_port` (unbound for dom0, e.g. the
    /// xenstore or console port). dom0's port gets the same number, so a
    /// backend can name the channel by the guest's port.
    pub fn backend_bind(&mut self, guest_port: u32) -> XenResult<u32> {
        let c = self.chan(guest_port)?;
        if c.state != (ChanState::Unbound { remote_dom: DOM0 }) {
            return Err(Errno(EINVAL));
        }
        if self.backend.contains_key(&guest_port) {
            return Err(Errno(EBUSY));
        }
        // As for any bind_interdomain: the binder's port starts pending.
        self.backend.insert(guest_port, BackendPort { guest_port: Some(guest_port), pending: true, masked: false });
        self.chans[guest_port as usize].state = ChanState::Interdomain { remote_dom: DOM0, remote_port: guest_port };
        Ok(guest_port)
    }

    /// Notify the guest through dom0 port `local`.
    pub fn backend_notify(&mut self, dl: &Delivery, local: u32) -> XenResult<()> {
        match self.backend.get(&local) {
            Some(BackendPort { guest_port: Some(g), .. }) => {
                let g = *g;
                self.raise(dl, g);
                Ok(())
            }
            Some(_) => Ok(()), // unbound: dropped, as EVTCHNOP_send does
            None => Err(Errno(EINVAL)),
        }
    }

    /// Take dom0 port `local`'s pending flag (xenevtchn_pending): true if
    /// the guest signalled it since the last call and it is not masked.
    pub fn backend_pending(&mut self, local: u32) -> bool {
        match self.backend.get_mut(&local) {
            Some(b) if b.pending && !b.masked => {
                b.pending = false;
                true
            }
            _ => false,
        }
    }

    pub fn backend_mask(&mut self, local: u32, masked: bool) -> XenResult<()> {
        let b = self.backend.get_mut(&local).ok_or(Errno(EINVAL))?;
        b.masked = masked;
        Ok(())
    }

    /// Close dom0 port `local`; the guest's end goes back to unbound-to-dom0.
    pub fn backend_unbind(&mut self, local: u32) -> XenResult<()> {
        let b = self.backend.remove(&local).ok_or(Errno(EINVAL))?;
        if let Some(g) = b.guest_port {
            if let Some(c) = self.chans.get_mut(g as usize) {
                c.state = ChanState::Unbound { remote_dom: DOM0 };
            }
        }
        Ok(())
    }

    /// Forget every dom0 port (soft reset).
    pub fn backend_reset(&mut self) {
        self.backend.clear();
    }

    /// Structural consistency of the port table (for fuzzing and tests):
    /// port 0 reserved, whole buckets, both ends of every interdomain
    /// channel agree, the VIRQ and PIRQ maps match the ports, vCPUs exist.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.chans.first().map(|c| c.state) != Some(ChanState::Reserved) {
            return Err("port 0 is not reserved".into());
        }
        if self.chans.len() % BUCKET as usize != 0 || self.chans.len() > 4096 {
            return Err(format!("port table of {} entries", self.chans.len()));
        }
        for (p, c) in (0u32..).zip(&self.chans) {
            if c.vcpu >= self.nr_vcpus {
                return Err(format!("port {p} notifies vCPU {} of {}", c.vcpu, self.nr_vcpus));
            }
            match c.state {
                ChanState::Reserved if p != 0 => return Err(format!("port {p} reserved")),
                ChanState::Interdomain { remote_dom: GUEST_DOMID, remote_port } => {
                    let want = ChanState::Interdomain { remote_dom: GUEST_DOMID, remote_port: p };
                    if self.state(remote_port) != Some(want) || remote_port == p {
                        return Err(format!(
                            "loopback port {p} -> {remote_port}, whose state is {:?}",
                            self.state(remote_port)
                        ));
                    }
                }
                ChanState::Interdomain { remote_dom: DOM0, remote_port }
                    if self.backend.get(&remote_port).and_then(|b| b.guest_port) != Some(p) =>
                {
                    return Err(format!("port {p} bound to dom0 port {remote_port}, which does not point back"));
                }
                ChanState::Interdomain { remote_dom: DOM0, .. } => {}
                ChanState::Interdomain { remote_dom, .. } => {
                    return Err(format!("port {p} bound to absent domain {remote_dom}"))
                }
                ChanState::Virq(v) => {
                    let key = if virq_is_per_vcpu(v) { (c.vcpu, v) } else { (0, v) };
                    if self.virqs.get(&key) != Some(&p) {
                        return Err(format!("VIRQ port {p} ({key:?}) missing from the VIRQ map"));
                    }
                }
                ChanState::Pirq(q) if self.pirqs.get(&q) != Some(&p) => {
                    return Err(format!("PIRQ port {p} (pirq {q}) missing from the PIRQ map"));
                }
                _ => {}
            }
        }
        for (&(v, virq), &p) in &self.virqs {
            if self.state(p) != Some(ChanState::Virq(virq))
                || (virq_is_per_vcpu(virq) && self.chans[p as usize].vcpu != v)
            {
                return Err(format!("VIRQ map ({v}, {virq}) -> port {p} in state {:?}", self.state(p)));
            }
        }
        for (&q, &p) in &self.pirqs {
            if self.state(p) != Some(ChanState::Pirq(q)) {
                return Err(format!("PIRQ map {q} -> port {p} in state {:?}", self.state(p)));
            }
        }
        for (&local, b) in &self.backend {
            if let Some(g) = b.guest_port {
                let want = ChanState::Interdomain { remote_dom: DOM0, remote_port: local };
                if self.state(g) != Some(want) {
                    return Err(format!("dom0 port {local} -> guest port {g} in state {:?}", self.state(g)));
                }
            }
        }
        Ok(())
    }

    /// Ports in the allocated buckets.
    pub fn state_len(&self) -> u32 {
        self.chans.len() as u32
    }

    /// The number of vCPUs ports may notify.
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    // ---- the hypercall ----

    /// HYPERVISOR_event_channel_op(cmd, arg): read the op's struct at guest
    /// virtual `arg`, run it, write outputs back.
    pub fn hypercall(&mut self, g: &GuestVirt, dl: &Delivery, cmd: u32, arg: u64) -> XenResult<i64> {
        let d = dl.shinfo;
        match cmd {
            op::ALLOC_UNBOUND => {
                check_self(g.read_u16(arg)?)?;
                let remote = g.read_u16(arg + 2)?;
                let port = self.alloc_unbound(d, remote)?;
                g.write_u32(arg + 4, port)?;
            }
            op::BIND_INTERDOMAIN => {
                let (rdom, rport) = (g.read_u16(arg)?, g.read_u32(arg + 4)?);
                let port = self.bind_interdomain(dl, rdom, rport)?;
                g.write_u32(arg + 8, port)?;
            }
            op::BIND_VIRQ => {
                let (virq, vcpu) = (g.read_u32(arg)?, g.read_u32(arg + 4)?);
                let port = self.bind_virq(d, virq, vcpu)?;
                g.write_u32(arg + 8, port)?;
            }
            op::BIND_PIRQ => {
                let pirq = g.read_u32(arg)?;
                let port = self.bind_pirq(d, pirq)?;
                g.write_u32(arg + 8, port)?;
            }
            op::BIND_IPI => {
                let vcpu = g.read_u32(arg)?;
                let port = self.bind_ipi(d, vcpu)?;
                g.write_u32(arg + 4, port)?;
            }
            op::CLOSE => self.close(d, g.read_u32(arg)?)?,
            op::SEND => self.send(dl, g.read_u32(arg)?)?,
            op::STATUS => {
                check_self(g.read_u16(arg)?)?;
                let s = self.status(g.read_u32(arg + 4)?)?;
                let mut out = [0u8; 16];
                out[0..4].copy_from_slice(&s.status.to_le_bytes());
                out[4..8].copy_from_slice(&s.vcpu.to_le_bytes());
                out[8..12].copy_from_slice(&s.a.to_le_bytes());
                out[12..16].copy_from_slice(&s.b.to_le_bytes());
                g.write(arg + 8, &out)?;
            }
            op::BIND_VCPU => {
                let (port, vcpu) = (g.read_u32(arg)?, g.read_u32(arg + 4)?);
                self.bind_vcpu(port, vcpu)?;
            }
            op::UNMASK => self.unmask(dl, g.read_u32(arg)?)?,
            op::RESET => {
                check_self(g.read_u16(arg)?)?;
                self.reset(d);
            }
            _ => return Err(Errno(ENOSYS)),
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests;
