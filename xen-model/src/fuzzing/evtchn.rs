//! `evtchn`: operation sequences against `EventChannels` and `SharedInfo`,
//! compared step by step with `RefModel`, a deliberately plain model written
//! from the 2-level ABI (event_channel.h, Xen's event_channel.c and
//! event_2l.c): lowest-free port allocation in buckets of 64, the error each
//! sub-op returns and in which order it checks, and the pending / mask /
//! selector / upcall_pending chain. Both sides see the same guest actions
//! (masking a port, the upcall handler).

use arbitrary::Arbitrary;
use sim_core::GuestMemory;

use crate::errno::{EEXIST, EINVAL, ENOENT, ENOSPC};
use crate::evtchn::{Delivery, EventChannels, Status};
use crate::shared_info::{vcpu_info, SharedInfo, VcpuInfoAt};
use crate::{DOMID_SELF, GUEST_DOMID};

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    /// 1..=4 vCPUs.
    pub vcpus: u8,
    /// 32-bit shared_info layout: 1024 ports.
    pub compat: bool,
    pub ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Op {
    AllocUnbound {
        remote_self: bool,
    },
    BindInterdomain {
        remote_port: u16,
    },
    BindVirq {
        virq: u8,
        vcpu: u8,
    },
    BindIpi {
        vcpu: u8,
    },
    BindPirq {
        pirq: u16,
    },
    Close(u16),
    Send(u16),
    Status(u16),
    BindVcpu {
        port: u16,
        vcpu: u8,
    },
    Unmask(u16),
    /// The guest sets a mask bit.
    Mask(u16),
    /// The guest's upcall handler on a vCPU.
    Ack(u8),
    /// Xen raises a VIRQ (a timer, the console).
    SendVirq {
        virq: u8,
        vcpu: u8,
    },
    SendPirq(u16),
    Reset,
}

const NR_VIRQS: u32 = 24;
const NR_PIRQS: u32 = 256;
const BUCKET: u32 = 64;

fn virq_per_vcpu(virq: u32) -> bool {
    // VIRQ_TIMER, VIRQ_DEBUG, VIRQ_XENOPROF, VIRQ_XENPMU are VIRQ_VCPU.
    matches!(virq, 0 | 1 | 7 | 13)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chan {
    Free,
    Reserved,
    Unbound,
    Loop(u32),
    Virq(u32),
    Pirq(u32),
    Ipi,
}

/// The reference: per-port state and the guest-visible bits, all in plain
/// vectors.
struct RefModel {
    vcpus: u32,
    bits: u32,
    chans: Vec<(Chan, u32)>,
    /// Ports made valid so far (whole buckets).
    valid: u32,
    pending: Vec<bool>,
    masked: Vec<bool>,
    sel: Vec<u64>,
    upcall: Vec<bool>,
    /// vCPUs whose upcall_pending went 0 -> 1, in order.
    kicked: Vec<u32>,
}

type R<T> = Result<T, i64>;

impl RefModel {
    fn new(vcpus: u32, compat: bool) -> Self {
        let bits = if compat { 32 } else { 64 };
        let n = (bits * bits) as usize;
        let mut chans = vec![(Chan::Free, 0); n];
        chans[0].0 = Chan::Reserved;
        RefModel {
            vcpus,
            bits,
            chans,
            valid: BUCKET,
            pending: vec![false; n],
            masked: vec![false; n],
            sel: vec![0; vcpus as usize],
            upcall: vec![false; vcpus as usize],
            kicked: Vec::new(),
        }
    }

    fn max(&self) -> u32 {
        self.bits * self.bits
    }

    fn chan(&self, port: u32) -> R<(Chan, u32)> {
        if port < self.valid {
            Ok(self.chans[port as usize])
        } else {
            Err(-EINVAL)
        }
    }

    /// get_free_port: the lowest free port; its bucket becomes valid.
    fn free_port(&mut self) -> R<u32> {
        let p = (1..self.max()).find(|&p| self.chans[p as usize].0 == Chan::Free).ok_or(-ENOSPC)?;
        self.valid = self.valid.max((p / BUCKET + 1) * BUCKET);
        Ok(p)
    }

    fn vcpu_ok(&self, v: u32) -> R<()> {
        if v < self.vcpus {
            Ok(())
        } else {
            Err(-ENOENT)
        }
    }

    fn raise(&mut self, port: u32) {
        let p = port as usize;
        if self.pending[p] {
            return;
        }
        self.pending[p] = true;
        if !self.masked[p] {
            self.select(port);
        }
    }

    /// Set the port's selector bit on its vCPU and mark events pending.
    fn select(&mut self, port: u32) {
        let v = self.chans[port as usize].1 as usize;
        let bit = 1u64 << (port / self.bits);
        if self.sel[v] & bit == 0 {
            self.sel[v] |= bit;
            if !self.upcall[v] {
                self.upcall[v] = true;
                self.kicked.push(v as u32);
            }
        }
    }

    fn alloc_unbound(&mut self) -> R<u32> {
        let p = self.free_port()?;
        self.chans[p as usize] = (Chan::Unbound, 0);
        Ok(p)
    }

    fn bind_interdomain(&mut self, rport: u32) -> R<u32> {
        let l = self.free_port()?;
        if self.chan(rport)?.0 != Chan::Unbound {
            return Err(-EINVAL);
        }
        self.chans[l as usize] = (Chan::Loop(rport), 0);
        self.chans[rport as usize].0 = Chan::Loop(l);
        self.raise(l);
        Ok(l)
    }

    fn bind_virq(&mut self, virq: u32, v: u32) -> R<u32> {
        if virq >= NR_VIRQS || (!virq_per_vcpu(virq) && v != 0) {
            return Err(-EINVAL);
        }
        self.vcpu_ok(v)?;
        if self.virq_port(virq, v).is_some() {
            return Err(-EEXIST);
        }
        let p = self.free_port()?;
        self.chans[p as usize] = (Chan::Virq(virq), v);
        Ok(p)
    }

    /// The port VIRQ `virq` is bound to for `v` (global ones: bound on 0,
    /// wherever bind_vcpu moved them).
    fn virq_port(&self, virq: u32, v: u32) -> Option<u32> {
        (0..self.max()).find(|&p| {
            let (c, cv) = self.chans[p as usize];
            c == Chan::Virq(virq) && (!virq_per_vcpu(virq) || cv == v)
        })
    }

    fn bind_ipi(&mut self, v: u32) -> R<u32> {
        self.vcpu_ok(v)?;
        let p = self.free_port()?;
        self.chans[p as usize] = (Chan::Ipi, v);
        Ok(p)
    }

    fn bind_pirq(&mut self, pirq: u32) -> R<u32> {
        if pirq >= NR_PIRQS {
            return Err(-EINVAL);
        }
        if self.chans.iter().any(|c| c.0 == Chan::Pirq(pirq)) {
            return Err(-EEXIST);
        }
        let p = self.free_port()?;
        self.chans[p as usize] = (Chan::Pirq(pirq), 0);
        Ok(p)
    }

    fn close(&mut self, port: u32) -> R<()> {
        match self.chan(port)?.0 {
            Chan::Free | Chan::Reserved => return Err(-EINVAL),
            Chan::Loop(r) => self.chans[r as usize].0 = Chan::Unbound,
            _ => {}
        }
        self.pending[port as usize] = false;
        self.chans[port as usize] = (Chan::Free, 0);
        Ok(())
    }

    fn send(&mut self, port: u32) -> R<()> {
        match self.chan(port)?.0 {
            Chan::Loop(r) => self.raise(r),
            Chan::Ipi => self.raise(port),
            Chan::Unbound => {}
            _ => return Err(-EINVAL),
        }
        Ok(())
    }

    fn status(&self, port: u32) -> R<Status> {
        let (c, vcpu) = self.chan(port)?;
        let (status, a, b) = match c {
            Chan::Free | Chan::Reserved => (0, 0, 0),
            Chan::Unbound => (1, u32::from(GUEST_DOMID), 0),
            Chan::Loop(r) => (2, u32::from(GUEST_DOMID), r),
            Chan::Pirq(q) => (3, q, 0),
            Chan::Virq(v) => (4, v, 0),
            Chan::Ipi => (5, 0, 0),
        };
        Ok(Status { status, vcpu, a, b })
    }

    fn bind_vcpu(&mut self, port: u32, v: u32) -> R<()> {
        self.vcpu_ok(v)?;
        match self.chan(port)?.0 {
            Chan::Virq(q) if !virq_per_vcpu(q) => {}
            Chan::Unbound | Chan::Loop(_) | Chan::Pirq(_) => {}
            _ => return Err(-EINVAL),
        }
        self.chans[port as usize].1 = v;
        Ok(())
    }

    fn unmask(&mut self, port: u32) -> R<()> {
        self.chan(port)?;
        let p = port as usize;
        if std::mem::replace(&mut self.masked[p], false) && self.pending[p] {
            self.select(port);
        }
        Ok(())
    }

    fn ack(&mut self, v: u32) {
        self.upcall[v as usize] = false;
        let sel = std::mem::take(&mut self.sel[v as usize]);
        for port in 0..self.max() {
            let p = port as usize;
            if sel & (1 << (port / self.bits)) != 0 && self.pending[p] && !self.masked[p] {
                self.pending[p] = false;
            }
        }
    }
}

fn errno<T>(r: crate::errno::XenResult<T>) -> R<T> {
    r.map_err(|e| e.result())
}

/// The implementation with the same guest actions.
struct Real {
    ev: EventChannels,
    sh: SharedInfo,
    vi: Vec<VcpuInfoAt>,
}

thread_local! {
    /// vcpu_info lives in shared_info here; the memory is only a handle.
    static MEM: GuestMemory = GuestMemory::new(2).unwrap_or_else(|e| panic!("fuzz: guest memory: {e}"));
    /// One shared_info page for every input (zeroed before each): a new
    /// page per input would cost an mmap and a munmap.
    static SHINFO: SharedInfo = SharedInfo::new();
}

pub fn run(input: &Input) -> Result<(), String> {
    MEM.with(|mem| run_on(mem, input))
}

fn run_on(mem: &GuestMemory, input: &Input) -> Result<(), String> {
    let vcpus = u32::from(input.vcpus % 4) + 1;
    let mut sh = SHINFO.with(SharedInfo::clone);
    sh.clear();
    sh.gfn = None;
    sh.set_compat(input.compat);
    let mut real = Real { ev: EventChannels::new(vcpus), sh, vi: (0..vcpus).map(VcpuInfoAt::Shared).collect() };
    let mut model = RefModel::new(vcpus, input.compat);
    for (i, op) in input.ops.iter().take(super::MAX_STEPS).enumerate() {
        step(mem, &mut real, &mut model, *op).map_err(|e| format!("op {i} ({op:?}): {e}"))?;
    }
    Ok(())
}

fn step(mem: &GuestMemory, real: &mut Real, m: &mut RefModel, op: Op) -> Result<(), String> {
    let dl = Delivery { shinfo: &real.sh, mem, vcpu_info: &real.vi };
    let ev = &mut real.ev;
    let d = &real.sh;
    let p16 = |p: u16| u32::from(p) % 4096;
    let (got, want): (R<u64>, R<u64>) = match op {
        Op::AllocUnbound { remote_self } => {
            let dom = if remote_self { DOMID_SELF } else { GUEST_DOMID };
            (errno(ev.alloc_unbound(d, dom)).map(u64::from), m.alloc_unbound().map(u64::from))
        }
        Op::BindInterdomain { remote_port } => {
            let rp = p16(remote_port);
            (errno(ev.bind_interdomain(&dl, DOMID_SELF, rp)).map(u64::from), m.bind_interdomain(rp).map(u64::from))
        }
        Op::BindVirq { virq, vcpu } => {
            let (q, v) = (u32::from(virq) % 26, u32::from(vcpu) % 5);
            (errno(ev.bind_virq(d, q, v)).map(u64::from), m.bind_virq(q, v).map(u64::from))
        }
        Op::BindIpi { vcpu } => {
            let v = u32::from(vcpu) % 5;
            (errno(ev.bind_ipi(d, v)).map(u64::from), m.bind_ipi(v).map(u64::from))
        }
        Op::BindPirq { pirq } => {
            let q = u32::from(pirq) % 300;
            (errno(ev.bind_pirq(d, q)).map(u64::from), m.bind_pirq(q).map(u64::from))
        }
        Op::Close(p) => (errno(ev.close(d, p16(p))).map(|()| 0), m.close(p16(p)).map(|()| 0)),
        Op::Send(p) => (errno(ev.send(&dl, p16(p))).map(|()| 0), m.send(p16(p)).map(|()| 0)),
        Op::Status(p) => {
            let (a, b) = (errno(ev.status(p16(p))), m.status(p16(p)));
            if a != b {
                return Err(format!("status: model {a:?}, reference {b:?}"));
            }
            (Ok(0), Ok(0))
        }
        Op::BindVcpu { port, vcpu } => {
            let (p, v) = (p16(port), u32::from(vcpu) % 5);
            (errno(ev.bind_vcpu(p, v)).map(|()| 0), m.bind_vcpu(p, v).map(|()| 0))
        }
        Op::Unmask(p) => (errno(ev.unmask(&dl, p16(p))).map(|()| 0), m.unmask(p16(p)).map(|()| 0)),
        Op::Mask(p) => {
            let p = p16(p) % m.max();
            d.set_mask(p);
            m.masked[p as usize] = true;
            (Ok(0), Ok(0))
        }
        Op::Ack(v) => {
            let v = u32::from(v) % m.vcpus;
            guest_ack(mem, d, real.vi[v as usize]);
            m.ack(v);
            (Ok(0), Ok(0))
        }
        Op::SendVirq { virq, vcpu } => {
            let (q, v) = (u32::from(virq) % NR_VIRQS, u32::from(vcpu) % m.vcpus);
            let bound = ev.send_virq(&dl, q, v);
            let port = m.virq_port(q, if virq_per_vcpu(q) { v } else { 0 });
            if let Some(p) = port {
                m.raise(p);
            }
            (Ok(u64::from(bound)), Ok(u64::from(port.is_some())))
        }
        Op::SendPirq(q) => {
            let q = u32::from(q) % NR_PIRQS;
            ev.send_pirq(&dl, q);
            if let Some(p) = (0..m.max()).find(|&p| m.chans[p as usize].0 == Chan::Pirq(q)) {
                m.raise(p);
            }
            (Ok(0), Ok(0))
        }
        Op::Reset => {
            ev.reset(d);
            for p in 1..m.valid {
                let _ = m.close(p);
            }
            (Ok(0), Ok(0))
        }
    };
    if got != want {
        return Err(format!("result: model {got:?}, reference {want:?}"));
    }
    compare(real, m)
}

/// The guest's 2-level upcall loop (as in the `hypercall` target).
fn guest_ack(mem: &GuestMemory, sh: &SharedInfo, at: VcpuInfoAt) {
    let (off, len) = if sh.compat() { (vcpu_info::PENDING_SEL_32, 4) } else { (vcpu_info::PENDING_SEL_64, 8) };
    sh.vi_write(mem, at, vcpu_info::UPCALL_PENDING, &[0]);
    let mut sel = [0u8; 8];
    sh.vi_read(mem, at, off, &mut sel[..len]);
    sh.vi_write(mem, at, off, &[0u8; 8][..len]);
    let sel = u64::from_le_bytes(sel);
    let bits = sh.word_bits();
    for port in 0..bits * bits {
        if sel & (1 << (port / bits)) != 0 && sh.port_pending(port) && !sh.port_masked(port) {
            sh.clear_pending(port);
        }
    }
}

fn compare(real: &mut Real, m: &mut RefModel) -> Result<(), String> {
    let sh = &real.sh;
    // The bit arrays, read from the page by their ABI offsets.
    let words = (m.bits * m.bits / 8) as usize;
    let mut pend = vec![0u8; words];
    let mut mask = vec![0u8; words];
    sh.page().read(2048, &mut pend);
    sh.page().read(sh.mask_offset() as usize, &mut mask);
    let pack = |bits: &[bool]| {
        let mut v = vec![0u8; words];
        for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
            v[i / 8] |= 1 << (i % 8);
        }
        v
    };
    let (want_pend, want_mask) = (pack(&m.pending), pack(&m.masked));
    if pend != want_pend || mask != want_mask {
        let bit = |a: &[u8], p: usize| a[p / 8] & (1 << (p % 8)) != 0;
        let port = (0..m.max() as usize)
            .find(|&p| bit(&pend, p) != bit(&want_pend, p) || bit(&mask, p) != bit(&want_mask, p))
            .unwrap_or(0);
        return Err(format!(
            "port {port}: pending/masked model ({}, {}), reference ({}, {})",
            bit(&pend, port),
            bit(&mask, port),
            m.pending[port],
            m.masked[port]
        ));
    }
    for v in 0..m.vcpus as usize {
        // vcpu_info v at 64 * v: upcall_pending @0, selector @8 (or @4).
        let base = 64 * v;
        let mut up = [0u8; 1];
        sh.page().read(base, &mut up);
        let mut sel = [0u8; 8];
        if m.bits == 32 {
            sh.page().read(base + 4, &mut sel[..4]);
        } else {
            sh.page().read(base + 8, &mut sel);
        }
        let sel = u64::from_le_bytes(sel);
        if (up[0] != 0, sel) != (m.upcall[v], m.sel[v]) {
            return Err(format!(
                "vCPU {v}: upcall_pending/selector model ({}, {sel:#x}), reference ({}, {:#x})",
                up[0], m.upcall[v], m.sel[v]
            ));
        }
    }
    let kicked = std::mem::take(&mut real.ev.upcalls);
    let want = std::mem::take(&mut m.kicked);
    if kicked != want {
        return Err(format!("upcalls queued: model {kicked:?}, reference {want:?}"));
    }
    if real.ev.state_len() != m.valid {
        return Err(format!("valid ports: model {}, reference {}", real.ev.state_len(), m.valid));
    }
    real.ev.check_invariants()
}
