use super::*;
use sim_core::paging::PagingMode;

struct Rig {
    mem: GuestMemory,
    shinfo: SharedInfo,
    vi: Vec<VcpuInfoAt>,
}

impl Rig {
    fn new(vcpus: u32) -> (Rig, EventChannels) {
        let rig = Rig {
            mem: GuestMemory::new(2).unwrap(),
            shinfo: SharedInfo::new(),
            vi: (0..vcpus).map(VcpuInfoAt::Shared).collect(),
        };
        (rig, EventChannels::new(vcpus))
    }
    fn dl(&self) -> Delivery<'_> {
        Delivery { shinfo: &self.shinfo, mem: &self.mem, vcpu_info: &self.vi }
    }
    fn sel(&self, vcpu: u32) -> u64 {
        let mut b = [0u8; 8];
        self.shinfo.page().read(vcpu as usize * 64 + 8, &mut b);
        u64::from_le_bytes(b)
    }
    fn upcall(&self, vcpu: u32) -> u8 {
        self.shinfo.read_u8(vcpu as u64 * 64)
    }
}

#[test]
fn ports_are_allocated_lowest_first_from_one() {
    let (r, mut e) = Rig::new(2);
    assert_eq!(e.alloc_unbound(&r.shinfo, DOMID_SELF), Ok(1));
    assert_eq!(e.bind_ipi(&r.shinfo, 1), Ok(2));
    assert_eq!(e.bind_virq(&r.shinfo, VIRQ_TIMER, 0), Ok(3));
    e.close(&r.shinfo, 2).unwrap();
    assert_eq!(e.bind_virq(&r.shinfo, VIRQ_TIMER, 1), Ok(2), "freed port reused");
    assert_eq!(e.status(2).unwrap(), Status { status: stat::VIRQ, vcpu: 1, a: VIRQ_TIMER, b: 0 });
    assert_eq!(e.status(1).unwrap(), Status { status: stat::UNBOUND, vcpu: 0, a: GUEST_DOMID as u32, b: 0 });
    assert_eq!(e.status(0).unwrap().status, stat::CLOSED, "port 0 is reserved, reported closed");
    assert_eq!(e.status(63).unwrap().status, stat::CLOSED);
    assert_eq!(e.status(64), Err(Errno(EINVAL)), "beyond the allocated bucket");
}

#[test]
fn error_paths_match_xen() {
    let (r, mut e) = Rig::new(2);
    let d = &r.shinfo;
    assert_eq!(e.bind_virq(d, NR_VIRQS, 0), Err(Errno(EINVAL)));
    assert_eq!(e.bind_virq(d, VIRQ_CONSOLE, 1), Err(Errno(EINVAL)), "global VIRQ on vCPU 1");
    assert_eq!(e.bind_virq(d, VIRQ_TIMER, 2), Err(Errno(ENOENT)));
    e.bind_virq(d, VIRQ_TIMER, 0).unwrap();
    assert_eq!(e.bind_virq(d, VIRQ_TIMER, 0), Err(Errno(EEXIST)));
    assert_eq!(e.bind_ipi(d, 5), Err(Errno(ENOENT)));
    assert_eq!(e.bind_pirq(d, NR_PIRQS), Err(Errno(EINVAL)));
    e.bind_pirq(d, 20).unwrap();
    assert_eq!(e.bind_pirq(d, 20), Err(Errno(EEXIST)));
    assert_eq!(e.close(d, 0), Err(Errno(EINVAL)), "reserved");
    assert_eq!(e.close(d, 9), Err(Errno(EINVAL)), "free");
    assert_eq!(e.close(d, 5000), Err(Errno(EINVAL)));
    assert_eq!(e.send(&r.dl(), 0), Err(Errno(EINVAL)));
    assert_eq!(e.send(&r.dl(), 1), Err(Errno(EINVAL)), "a VIRQ port cannot be sent on");
    assert_eq!(e.bind_interdomain(&r.dl(), 5, 1), Err(Errno(ESRCH)));
    assert_eq!(e.bind_interdomain(&r.dl(), DOMID_SELF, 1), Err(Errno(EINVAL)), "not unbound");
    assert_eq!(e.bind_interdomain(&r.dl(), DOMID_SELF, 4000), Err(Errno(EINVAL)));
    assert_eq!(e.bind_interdomain(&r.dl(), DOM0, 7), Err(Errno(EINVAL)), "no such dom0 port");
    assert_eq!(e.bind_vcpu(1, 9), Err(Errno(ENOENT)));
    assert_eq!(e.bind_vcpu(1, 1), Err(Errno(EINVAL)), "per-vCPU VIRQ cannot move");
    assert_eq!(e.bind_vcpu(30, 1), Err(Errno(EINVAL)), "free port");
    assert_eq!(e.unmask(&r.dl(), 4096), Err(Errno(EINVAL)));
    assert_eq!(check_self(DOM0), Err(Errno(EPERM)));
    assert_eq!(check_self(7), Err(Errno(ESRCH)));
    assert_eq!(check_self(DOMID_SELF), Ok(()));
}

#[test]
fn the_port_space_runs_out_at_word_bits_squared() {
    let (mut r, mut e) = Rig::new(1);
    r.shinfo.set_compat(true);
    for want in 1..1024 {
        assert_eq!(e.bind_ipi(&r.shinfo, 0), Ok(want));
    }
    assert_eq!(e.bind_ipi(&r.shinfo, 0), Err(Errno(ENOSPC)), "1024 ports for a 32-bit guest");
    r.shinfo.set_compat(false);
    assert_eq!(e.bind_ipi(&r.shinfo, 0), Ok(1024));
}

#[test]
fn raise_sets_pending_selector_and_upcall_once() {
    let (r, mut e) = Rig::new(2);
    let ipi = e.bind_ipi(&r.shinfo, 1).unwrap();
    for _ in 0..69 {
        e.bind_ipi(&r.shinfo, 1).unwrap();
    }
    let ipi70 = 70;
    e.send(&r.dl(), ipi).unwrap();
    assert!(r.shinfo.port_pending(ipi));
    assert_eq!(r.sel(1), 1, "word 0 selected on vCPU 1");
    assert_eq!(r.upcall(1), 1);
    assert_eq!(e.upcalls, vec![1]);
    e.send(&r.dl(), ipi70).unwrap();
    assert_eq!(r.sel(1), 0b11, "port 70 is in word 1");
    assert_eq!(e.upcalls, vec![1], "upcall was already pending: no second delivery");
    assert_eq!(r.sel(0), 0);
}

#[test]
fn masked_port_stays_quiet_until_unmask() {
    let (r, mut e) = Rig::new(1);
    let p = e.bind_ipi(&r.shinfo, 0).unwrap();
    r.shinfo.set_mask(p);
    e.send(&r.dl(), p).unwrap();
    assert!(r.shinfo.port_pending(p));
    assert_eq!((r.sel(0), r.upcall(0)), (0, 0));
    assert!(e.upcalls.is_empty());
    e.unmask(&r.dl(), p).unwrap();
    assert!(!r.shinfo.port_masked(p));
    assert_eq!((r.sel(0), r.upcall(0)), (1, 1));
    assert_eq!(e.upcalls, vec![0]);
    // Unmasking a port that is not pending delivers nothing.
    let q = e.bind_ipi(&r.shinfo, 0).unwrap();
    r.shinfo.set_mask(q);
    e.upcalls.clear();
    e.unmask(&r.dl(), q).unwrap();
    assert!(e.upcalls.is_empty());
}

#[test]
fn loopback_interdomain_and_close_back_to_unbound() {
    let (r, mut e) = Rig::new(1);
    let a = e.alloc_unbound(&r.shinfo, DOMID_SELF).unwrap();
    let b = e.bind_interdomain(&r.dl(), DOMID_SELF, a).unwrap();
    assert_eq!(e.status(a).unwrap(), Status { status: stat::INTERDOMAIN, vcpu: 0, a: 1, b });
    assert_eq!(e.status(b).unwrap(), Status { status: stat::INTERDOMAIN, vcpu: 0, a: 1, b: a });
    assert!(r.shinfo.port_pending(b), "the new local port starts pending");
    r.shinfo.clear_pending(b);
    e.send(&r.dl(), b).unwrap();
    assert!(r.shinfo.port_pending(a) && !r.shinfo.port_pending(b), "send raises the other end");
    e.close(&r.shinfo, b).unwrap();
    assert_eq!(e.status(a).unwrap().status, stat::UNBOUND);
    assert_eq!(e.status(b).unwrap().status, stat::CLOSED);
    // Sending on an unbound port is silently dropped.
    r.shinfo.clear_pending(a);
    e.send(&r.dl(), a).unwrap();
    assert!(!r.shinfo.port_pending(a));
}

#[test]
fn close_clears_pending_and_virq_binding() {
    let (r, mut e) = Rig::new(1);
    let p = e.bind_virq(&r.shinfo, VIRQ_TIMER, 0).unwrap();
    assert!(e.send_virq(&r.dl(), VIRQ_TIMER, 0));
    assert!(r.shinfo.port_pending(p));
    e.close(&r.shinfo, p).unwrap();
    assert!(!r.shinfo.port_pending(p));
    assert!(!e.send_virq(&r.dl(), VIRQ_TIMER, 0), "unbound VIRQs go nowhere");
    assert_eq!(e.bind_virq(&r.shinfo, VIRQ_TIMER, 0), Ok(p), "can bind again");
}

#[test]
fn global_virq_follows_bind_vcpu() {
    let (r, mut e) = Rig::new(2);
    let p = e.bind_virq(&r.shinfo, VIRQ_CONSOLE, 0).unwrap();
    e.bind_vcpu(p, 1).unwrap();
    assert!(e.send_virq(&r.dl(), VIRQ_CONSOLE, 1));
    assert_eq!((r.upcall(0), r.upcall(1)), (0, 1));
}

#[test]
fn closing_a_moved_global_virq_unbinds_it() {
    // Found by the evtchn fuzz target: a global VIRQ moved by bind_vcpu is
    // still VIRQ-bound on vCPU 0 in Xen's terms (virq_to_evtchn of vCPU 0),
    // so closing its port must unbind it there; it can then be bound again
    // and raising it no longer touches the freed port.
    let (r, mut e) = Rig::new(2);
    let p = e.bind_virq(&r.shinfo, VIRQ_CONSOLE, 0).unwrap();
    e.bind_vcpu(p, 1).unwrap();
    e.close(&r.shinfo, p).unwrap();
    assert!(!e.send_virq(&r.dl(), VIRQ_CONSOLE, 0), "unbound after close");
    assert!(!r.shinfo.port_pending(p));
    assert_eq!(e.bind_virq(&r.shinfo, VIRQ_CONSOLE, 0), Ok(p), "bindable again");
    e.check_invariants().unwrap();
}

#[test]
fn backend_binds_to_the_guest_port_and_notifies_both_ways() {
    let (r, mut e) = Rig::new(1);
    let gp = e.reserve_unbound(&r.shinfo, 2, DOM0).unwrap();
    assert_eq!(e.reserve_unbound(&r.shinfo, 2, DOM0), Err(Errno(EBUSY)));
    assert_eq!(e.backend_bind(1), Err(Errno(EINVAL)), "port 1 is free, not unbound to dom0");
    let local = e.backend_bind(gp).unwrap();
    assert_eq!(local, gp, "dom0 port keeps the guest's number");
    assert!(e.backend_pending(local), "bind leaves the binder's port pending");
    assert!(!e.backend_pending(local), "pending is consumed");
    e.send(&r.dl(), gp).unwrap();
    e.backend_mask(local, true).unwrap();
    assert!(!e.backend_pending(local), "masked");
    e.backend_mask(local, false).unwrap();
    assert!(e.backend_pending(local));
    e.backend_notify(&r.dl(), local).unwrap();
    assert!(r.shinfo.port_pending(gp));
    assert_eq!(e.upcalls, vec![0]);
    assert_eq!(e.status(gp).unwrap(), Status { status: stat::INTERDOMAIN, vcpu: 0, a: 0, b: gp });
    e.backend_unbind(local).unwrap();
    assert_eq!(e.status(gp).unwrap(), Status { status: stat::UNBOUND, vcpu: 0, a: 0, b: 0 });
    assert_eq!(e.backend_notify(&r.dl(), local), Err(Errno(EINVAL)));
    // The other direction: the guest binds to a dom0 port.
    let bp = e.backend_alloc_unbound();
    let lp = e.bind_interdomain(&r.dl(), DOM0, bp).unwrap();
    assert_eq!(e.bind_interdomain(&r.dl(), DOM0, bp), Err(Errno(EINVAL)), "already bound");
    e.send(&r.dl(), lp).unwrap();
    assert!(e.backend_pending(bp));
    e.close(&r.shinfo, lp).unwrap();
    assert_eq!(e.backend_notify(&r.dl(), bp), Ok(()), "unbound again: dropped");
}

#[test]
fn reset_closes_everything() {
    let (r, mut e) = Rig::new(1);
    e.bind_ipi(&r.shinfo, 0).unwrap();
    e.bind_virq(&r.shinfo, VIRQ_TIMER, 0).unwrap();
    e.reset(&r.shinfo);
    assert!((1..64).all(|p| e.status(p).unwrap().status == stat::CLOSED));
    assert_eq!(e.bind_virq(&r.shinfo, VIRQ_TIMER, 0), Ok(1));
}

#[test]
fn hypercall_structs_round_trip_through_guest_memory() {
    let (r, mut e) = Rig::new(2);
    let g = GuestVirt::with_paging(&r.mem, PagingMode::from_regs(0, 0, 0, 0));
    // bind_virq {virq, vcpu, port OUT}
    r.mem.write_u32(0x100, VIRQ_TIMER).unwrap();
    r.mem.write_u32(0x104, 1).unwrap();
    assert_eq!(e.hypercall(&g, &r.dl(), op::BIND_VIRQ, 0x100), Ok(0));
    assert_eq!(r.mem.read_u32(0x108).unwrap(), 1);
    // status {dom, port, status OUT, vcpu OUT, union}
    r.mem.write_u16(0x200, DOMID_SELF).unwrap();
    r.mem.write_u32(0x204, 1).unwrap();
    assert_eq!(e.hypercall(&g, &r.dl(), op::STATUS, 0x200), Ok(0));
    assert_eq!(r.mem.read_u32(0x208).unwrap(), stat::VIRQ);
    assert_eq!(r.mem.read_u32(0x20c).unwrap(), 1);
    assert_eq!(r.mem.read_u32(0x210).unwrap(), VIRQ_TIMER);
    r.mem.write_u16(0x200, DOM0).unwrap();
    assert_eq!(e.hypercall(&g, &r.dl(), op::STATUS, 0x200), Err(Errno(EPERM)));
    // alloc_unbound {dom, remote_dom, port OUT}
    r.mem.write_u16(0x300, 9).unwrap();
    assert_eq!(e.hypercall(&g, &r.dl(), op::ALLOC_UNBOUND, 0x300), Err(Errno(ESRCH)));
    r.mem.write_u16(0x300, DOMID_SELF).unwrap();
    r.mem.write_u16(0x302, DOM0).unwrap();
    assert_eq!(e.hypercall(&g, &r.dl(), op::ALLOC_UNBOUND, 0x300), Ok(0));
    assert_eq!(r.mem.read_u32(0x304).unwrap(), 2);
    assert_eq!(e.hypercall(&g, &r.dl(), op::INIT_CONTROL, 0x300), Err(Errno(ENOSYS)), "FIFO ABI");
    assert_eq!(e.hypercall(&g, &r.dl(), op::SET_PRIORITY, 0x300), Err(Errno(ENOSYS)));
    assert_eq!(e.hypercall(&g, &r.dl(), op::SEND, 0x7fff_fff0), Err(Errno(crate::errno::EFAULT)));
}
