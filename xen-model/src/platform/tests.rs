//! XenPlatform through the `Platform` trait, with a register-only vCPU and
//! paging off (guest virtual = physical), against the ABI's numbers.

use sim_core::platform::ShutdownReason;
use sim_core::state::{cr0, efer, sreg};

use super::*;
use crate::errno::*;
use crate::evtchn::stat;

use crate::testing::{FakeVcpu, Rig};

macro_rules! ctx {
    ($r:expr) => {
        crate::rig_ctx!($r)
    };
}

impl Rig {
    fn evtchn(&mut self, cmd: u32, words: &[u32]) -> i64 {
        for (i, w) in words.iter().enumerate() {
            self.mem.write_u32(0x8000 + i as u64 * 4, *w).unwrap();
        }
        self.call(nr::EVENT_CHANNEL_OP, &[cmd as u64, 0x8000])
    }
    fn out(&self, i: u64) -> u32 {
        self.mem.read_u32(0x8000 + i * 4).unwrap()
    }
    fn set_param(&mut self, index: u32, value: u64) -> i64 {
        self.mem.write_u16(0x9000, DOMID_SELF).unwrap();
        self.mem.write_u32(0x9004, index).unwrap();
        self.mem.write_u64(0x9008, value).unwrap();
        self.call(nr::HVM_OP, &[0, 0x9000])
    }
    fn get_param(&mut self, index: u32) -> Result<u64, i64> {
        self.mem.write_u16(0x9000, DOMID_SELF).unwrap();
        self.mem.write_u32(0x9004, index).unwrap();
        match self.call(nr::HVM_OP, &[1, 0x9000]) {
            0 => Ok(self.mem.read_u64(0x9008).unwrap()),
            e => Err(e),
        }
    }
    fn map_shared_info(&mut self, gfn: u64) -> i64 {
        self.mem.write_u16(0xa000, DOMID_SELF).unwrap();
        self.mem.write_u32(0xa004, 0).unwrap();
        self.mem.write_u64(0xa008, 0).unwrap();
        self.mem.write_u64(0xa010, gfn).unwrap();
        self.call(nr::MEMORY_OP, &[7, 0xa000])
    }
    fn upcall_pending(&self, v: u32) -> bool {
        self.p.shinfo.upcall_pending(&self.mem, self.p.vi[v as usize])
    }
}

use crate::hypercall::nr;
use crate::{DOMID_SELF, GUEST_DOMID};

#[test]
fn calls_from_user_mode_get_eperm_and_unknown_ones_enosys() {
    let mut r = Rig::new(XenConfig::default(), 1);
    assert_eq!(r.call(nr::XEN_VERSION, &[0, 0]), 0x0004_0011);
    r.cpu.s.seg[sreg::CS].selector = 0x2b;
    assert_eq!(r.call(nr::XEN_VERSION, &[0, 0]), -EPERM);
    r.cpu.s.seg[sreg::CS].selector = 0x08;
    assert_eq!(r.call(63u32, &[]), -ENOSYS);
    assert_eq!(r.call(1u64 << 40, &[]), -ENOSYS, "huge numbers are unknown, not truncated");
    assert_eq!(r.call(nr::CALLBACK_OP, &[0, 0]), -ENOSYS, "not an HVM hypercall");
    assert_eq!(r.call(nr::XEN_VERSION, &[99, 0]), -ENOSYS);
    assert_eq!(r.call(nr::VM_ASSIST, &[0, 5]), 0);
    assert_eq!(r.call(nr::VM_ASSIST, &[0, 2]), -EINVAL, "PV-only assist");
    assert_eq!(r.call(nr::VM_ASSIST, &[7, 5]), -ENOSYS);
    assert_eq!(r.call(nr::PHYSDEV_OP, &[13, 0x8000]), -ENOSYS, "no PIRQs for PVH by default");
}

#[test]
fn thirty_two_bit_callers_use_ebx_ecx_and_compat_layouts() {
    let mut r = Rig::new(XenConfig { version: (4, 19), ..Default::default() }, 1);
    r.cpu = FakeVcpu::prot32();
    assert_eq!(r.call(nr::XEN_VERSION, &[0, 0]), 0x0004_0013);
    // get_features {submap_idx, submap OUT}
    r.mem.write_u32(0x7000, 0).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[6, 0x7000]), 0);
    let f = r.mem.read_u32(0x7004).unwrap();
    assert_eq!(f & (1 | 1 << 2 | 1 << 8 | 1 << 9), 1 | 1 << 2 | 1 << 8 | 1 << 9);
    assert_eq!(f & 1 << 10, 0, "no hvm_pirqs without PIRQs");
    r.mem.write_u32(0x7000, 1).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[6, 0x7000]), -EINVAL);
    assert_eq!(r.call(nr::XEN_VERSION, &[7, 0]), 4096);
    // compat add_to_physmap {domid, size, space, idx u32, gpfn u32}
    r.mem.write_u16(0xa000, DOMID_SELF).unwrap();
    r.mem.write_u32(0xa004, 0).unwrap();
    r.mem.write_u32(0xa008, 0).unwrap();
    r.mem.write_u32(0xa00c, 0xfeff0).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), 0);
    assert!(!r.p.shinfo.compat(), "Xen latches only at CALLBACK_IRQ and the hypercall page");
    assert_eq!(r.set_param(0, 2 << 56 | 0xf3), 0);
    assert!(r.p.shinfo.compat(), "layout latched from the 32-bit caller");
    // Compat wallclock at 2304: sec, nsec of the configured epoch.
    let base = 0xfeff0u64 << 12;
    let ns = XenConfig::default().wallclock_epoch_ns;
    assert_eq!(r.mem.read_u32(base + 2304 + 4).unwrap() as u64, ns / 1_000_000_000);
    assert_eq!(r.mem.read_u32(base + 2304).unwrap() & 1, 0, "version even");
    let _ = base;
}

#[test]
fn shared_info_maps_anywhere_with_wallclock_and_time() {
    let mut r = Rig::new(XenConfig { wallclock_epoch_ns: 5_000_000_123, ..Default::default() }, 2);
    let gfn = 0xfeff0;
    assert_eq!(r.map_shared_info(gfn), 0);
    let base = gfn << 12;
    assert_eq!(r.mem.backing(base), sim_core::memory::Backing::Overlay);
    assert_eq!(r.mem.read_u32(base + 3076).unwrap(), 5);
    assert_eq!(r.mem.read_u32(base + 3080).unwrap(), 123);
    // vcpu_info[1].time: version even, system_time = now, 1 GHz scale.
    let t = base + 64 + 32;
    assert_eq!(r.mem.read_u32(t).unwrap() % 2, 0);
    assert!(r.mem.read_u32(t).unwrap() > 0);
    assert_eq!(r.mem.read_u64(t + 16).unwrap(), r.now);
    assert_eq!(r.mem.read_u64(t + 8).unwrap(), sim_core::clock::ns_to_tsc(r.now));
    assert_eq!(r.mem.read_u32(t + 24).unwrap(), 0x8000_0000);
    assert_eq!(r.mem.read_u8(t + 28).unwrap(), 1);
    // Moving it leaves RAM behind at the old place.
    assert_eq!(r.map_shared_info(0x100), 0);
    assert_eq!(r.mem.backing(base), sim_core::memory::Backing::Mmio);
    assert_eq!(r.mem.read_u32((0x100 << 12) + 3076).unwrap(), 5);
    // Errors: idx 1, bad domain, unknown space, gpfn beyond the physical width.
    r.mem.write_u64(0xa008, 1).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), -EINVAL);
    r.mem.write_u16(0xa000, 0).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), -EPERM);
    r.mem.write_u16(0xa000, DOMID_SELF).unwrap();
    r.mem.write_u32(0xa004, 9).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), -EINVAL);
    r.mem.write_u32(0xa004, 0).unwrap();
    r.mem.write_u64(0xa008, 0).unwrap();
    r.mem.write_u64(0xa010, 1 << 40).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), -EINVAL);
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0x7fff_f000]), -EFAULT);
    // Grant frame 0 at another unbacked frame; moving it leaves the old one.
    r.mem.write_u32(0xa004, 1).unwrap();
    r.mem.write_u64(0xa010, 0xfeff1).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), 0);
    assert_eq!(r.mem.backing(0xfeff1 << 12), sim_core::memory::Backing::Overlay);
    r.mem.write_u64(0xa010, 0xfeff2).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), 0);
    assert_eq!(r.mem.backing(0xfeff1 << 12), sim_core::memory::Backing::Mmio);
    assert_eq!(r.mem.backing(0xfeff2 << 12), sim_core::memory::Backing::Overlay);
}

#[test]
fn memory_map_copies_at_most_what_was_asked() {
    // A configured map is answered as given.
    let cfg = XenConfig { memory_map: vec![(0, 0x9f000, 1), (0x100000, 0x1000, 2)], ..Default::default() };
    let mut r = Rig::new(cfg, 1);
    r.mem.write_u32(0x7000, 8).unwrap();
    r.mem.write_u64(0x7008, 0x7100).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[9, 0x7000]), 0);
    assert_eq!(r.mem.read_u32(0x7000).unwrap(), 2);
    assert_eq!((r.mem.read_u64(0x7114).unwrap(), r.mem.read_u32(0x7124).unwrap()), (0x100000, 2));
    // With none configured, the E820 map of guest RAM is derived.
    let cfg = XenConfig::default().with_memory_map_of(&r.mem);
    let n = cfg.memory_map.len();
    let mut r = Rig::new(XenConfig::default(), 1);
    r.mem.write_u32(0x7000, 1).unwrap();
    r.mem.write_u64(0x7008, 0x7100).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[9, 0x7000]), 0);
    assert_eq!(r.mem.read_u32(0x7000).unwrap(), 1);
    // E820 entry 0: RAM from 0 to the legacy hole at 0x9f000.
    assert_eq!((r.mem.read_u64(0x7100).unwrap(), r.mem.read_u64(0x7108).unwrap()), (0, 0x9f000));
    assert_eq!(r.mem.read_u32(0x7110).unwrap(), 1);
    r.mem.write_u32(0x7000, 100).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[9, 0x7000]), 0);
    assert_eq!(r.mem.read_u32(0x7000).unwrap() as usize, n);
}

#[test]
fn params_are_readable_and_writable_as_xen_allows() {
    let cfg = XenConfig {
        store: Some(Ring { pfn: 0xfeffc, evtchn: 1 }),
        console: Some(Ring { pfn: 0xfeffd, evtchn: 2 }),
        ..Default::default()
    };
    let mut r = Rig::new(cfg, 1);
    assert_eq!(r.get_param(1), Ok(0xfeffc));
    assert_eq!(r.get_param(2), Ok(1));
    assert_eq!(r.get_param(17), Ok(0xfeffd));
    assert_eq!(r.get_param(18), Ok(2));
    assert_eq!(r.p.evtchn.status(1).unwrap().status, stat::UNBOUND, "the toolstack's port exists");
    assert_eq!(r.p.evtchn.status(2).unwrap().a, 0, "unbound to dom0");
    assert_eq!(r.get_param(5), Err(-EPERM), "IOREQ_PFN is the device model's");
    assert_eq!(r.get_param(39), Err(-EINVAL));
    assert_eq!(r.set_param(1, 5), -EPERM, "STORE_PFN is read-only to the guest");
    r.mem.write_u16(0x9000, 3).unwrap();
    assert_eq!(r.call(nr::HVM_OP, &[1, 0x9000]), -ESRCH);
    assert_eq!(r.call(nr::HVM_OP, &[77, 0x9000]), -ENOSYS);
    // PCI INTx naming another device.
    assert_eq!(r.set_param(0, 1 << 56 | 4 << 11), -EINVAL);
    assert_eq!(r.get_param(0), Ok(0), "unchanged");
    // pagetable_dying {domid, gpa}
    r.mem.write_u16(0x9000, DOMID_SELF).unwrap();
    assert_eq!(r.call(nr::HVM_OP, &[9, 0x9000]), 0);
    r.mem.write_u16(0x9000, 0).unwrap();
    assert_eq!(r.call(nr::HVM_OP, &[9, 0x9000]), -EINVAL);
}

#[test]
fn callback_vector_is_offered_while_upcall_pending() {
    let mut r = Rig::new(XenConfig::default(), 2);
    assert_eq!(r.set_param(0, 2 << 56 | 0xf3), 0);
    assert_eq!(r.evtchn(7, &[1]), 0); // bind_ipi on vCPU 1
    let port = r.out(1);
    assert_eq!(r.p.pending_vector(&r.mem, 1), None);
    assert_eq!(r.evtchn(4, &[port]), 0); // send
    assert!(r.upcall_pending(1));
    assert_eq!(r.p.pending_vector(&r.mem, 1), Some(0xf3));
    assert_eq!(r.p.pending_vector(&r.mem, 0), None);
    assert!(r.lapics[1].pending_interrupt().is_none(), "no LAPIC involved");
    // The guest clears upcall_pending: no more injections.
    r.p.shinfo.write_u8(64, 0);
    assert_eq!(r.p.pending_vector(&r.mem, 1), None);
}

#[test]
fn per_vcpu_vector_goes_through_the_lapic() {
    let mut r = Rig::new(XenConfig::default(), 2);
    r.lapics[1].mmio_write(0xf0, 0x1ff, 0);
    r.mem.write_u32(0x9000, 1).unwrap();
    r.mem.write_u8(0x9004, 0x0f).unwrap();
    assert_eq!(r.call(nr::HVM_OP, &[23, 0x9000]), -EINVAL, "vector below 0x10");
    r.mem.write_u32(0x9000, 2).unwrap();
    r.mem.write_u8(0x9004, 0xe0).unwrap();
    assert_eq!(r.call(nr::HVM_OP, &[23, 0x9000]), -ENOENT);
    r.mem.write_u32(0x9000, 1).unwrap();
    assert_eq!(r.call(nr::HVM_OP, &[23, 0x9000]), 0);
    // Even with a global vector set, vCPU 1 uses its own.
    assert_eq!(r.set_param(0, 2 << 56 | 0xf3), 0);
    r.evtchn(1, &[0, 1]); // bind_virq TIMER on vCPU 1
    let port = r.out(2);
    r.call_on(1, nr::SCHED_OP, &[0, 0]);
    let dl = crate::evtchn::Delivery { shinfo: &r.p.shinfo, mem: &r.mem, vcpu_info: &r.p.vi };
    r.p.evtchn.raise(&dl, port);
    r.sync();
    assert_eq!(r.lapics[1].pending_interrupt(), Some(0xe0));
    assert_eq!(r.p.pending_vector(&r.mem, 1), None);
}

#[test]
fn gsi_callback_is_a_level_held_until_upcall_pending_clears() {
    let mut r = Rig::new(XenConfig::default(), 1);
    assert_eq!(r.set_param(0, 9), 0);
    r.evtchn(7, &[0]);
    let port = r.out(1);
    r.evtchn(4, &[port]);
    assert!(r.gsi.level(9));
    r.sync();
    assert!(r.gsi.level(9), "still pending");
    r.p.shinfo.write_u8(0, 0);
    r.sync();
    assert!(!r.gsi.level(9), "deasserted once seen clear");
    assert_eq!(r.gsi.take_changed(), vec![(9, false)]);
    // PCI INTx of the platform device: GSI 28.
    let intx = 1u64 << 56 | (sim_core::layout::XEN_PLATFORM_PCI_DEVFN as u64) << 8;
    assert_eq!(r.set_param(0, intx), 0);
    r.p.shinfo.clear_pending(port);
    r.p.shinfo.write_bytes(8, &[0; 8]);
    r.evtchn(4, &[port]);
    assert!(r.gsi.source_level(28, sim_core::irq::source::XEN_CALLBACK));
    // Switching the callback off releases the line.
    assert_eq!(r.set_param(0, 0), 0);
    assert!(!r.gsi.level(28));
}

#[test]
fn singleshot_timer_raises_virq_timer_and_honours_future() {
    let mut r = Rig::new(XenConfig::default(), 2);
    r.evtchn(1, &[0, 0]);
    let port = r.out(2);
    // {timeout_abs_ns, flags}
    r.mem.write_u64(0x7000, r.now - 1).unwrap();
    r.mem.write_u32(0x7008, 1).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[8, 0, 0x7000]), -ETIME);
    assert_eq!(r.call(nr::VCPU_OP, &[8, 1, 0x7000]), -EINVAL, "only for the calling vCPU");
    assert_eq!(r.call(nr::VCPU_OP, &[8, 2, 0x7000]), -ENOENT);
    r.mem.write_u64(0x7000, r.now + 5000).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[8, 0, 0x7000]), 0);
    assert_eq!(r.timers.deadline_of(timer_key_singleshot(0)), Some(r.now + 5000));
    // Block until it fires.
    let (rc, e) = r.call_on(0, nr::SCHED_OP, &[1, 0]);
    assert_eq!((rc, e), (0, PlatformEffect::Block));
    r.now += 5000;
    let (key, _) = r.timers.pop_expired(r.now).unwrap();
    let TimerKey::Platform(k) = key else { panic!("platform timer") };
    r.p.timer_fired(ctx!(r), k);
    assert!(r.p.shinfo.port_pending(port));
    assert_eq!(r.effects, vec![PlatformEffect::Wake { vcpu: 0 }]);
    // Stopping works, and past deadlines without the flag fire at once.
    r.mem.write_u32(0x7008, 0).unwrap();
    r.mem.write_u64(0x7000, 1).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[8, 0, 0x7000]), 0);
    assert_eq!(r.timers.deadline_of(timer_key_singleshot(0)), Some(r.now));
    assert_eq!(r.call(nr::VCPU_OP, &[9, 0, 0]), 0);
    assert_eq!(r.timers.deadline_of(timer_key_singleshot(0)), None);
    // set_timer_op(0) cancels; set_timer_op(t) arms.
    assert_eq!(r.call(nr::SET_TIMER_OP, &[r.now + 10]), 0);
    assert_eq!(r.timers.deadline_of(timer_key_singleshot(0)), Some(r.now + 10));
    assert_eq!(r.call(nr::SET_TIMER_OP, &[0]), 0);
    assert!(r.timers.is_empty());
}

#[test]
fn periodic_timer_limits_and_rearm() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.mem.write_u64(0x7000, 999_999).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[6, 0, 0x7000]), -EINVAL, "under 1 ms");
    r.mem.write_u64(0x7000, 1_000_000).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[6, 0, 0x7000]), 0);
    let key = timer::key(timer::PERIODIC, 0);
    assert_eq!(r.timers.deadline_of(key), Some(r.now + 1_000_000));
    r.now += 1_000_000;
    r.timers.pop_expired(r.now);
    let TimerKey::Platform(k) = key else { unreachable!() };
    r.p.timer_fired(ctx!(r), k);
    assert_eq!(r.timers.deadline_of(key), Some(r.now + 1_000_000), "re-armed");
    assert_eq!(r.call(nr::VCPU_OP, &[7, 0, 0]), 0);
    assert!(r.timers.is_empty());
}

#[test]
fn block_returns_at_once_when_an_event_is_waiting() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.p.shinfo.write_u8(1, 1); // upcall_mask set
    r.p.shinfo.write_u8(0, 1); // upcall_pending
    let (rc, e) = r.call_on(0, nr::SCHED_OP, &[1, 0]);
    assert_eq!((rc, e), (0, PlatformEffect::None));
    assert_eq!(r.p.shinfo.read_u8(1), 0, "block enables event delivery");
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[0, 0]), (0, PlatformEffect::Yield));
    assert_eq!(r.call(nr::SCHED_OP, &[4, 0]), -ENOSYS);
}

#[test]
fn poll_waits_for_its_ports_or_the_timeout() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.evtchn(7, &[0]);
    let (a, b) = (r.out(1), {
        r.evtchn(7, &[0]);
        r.out(1)
    });
    r.p.shinfo.set_mask(a);
    r.p.shinfo.set_mask(b);
    // sched_poll {ports, nr_ports, timeout}
    r.mem.write_u32(0x7100, b).unwrap();
    r.mem.write_u64(0x7000, 0x7100).unwrap();
    r.mem.write_u32(0x7008, 129).unwrap();
    assert_eq!(r.call(nr::SCHED_OP, &[3, 0x7000]), -EINVAL);
    r.mem.write_u32(0x7008, 1).unwrap();
    r.mem.write_u64(0x7010, r.now + 700).unwrap();
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[3, 0x7000]), (0, PlatformEffect::Block));
    // A masked event on another port does not wake it; one on b does.
    r.evtchn(4, &[a]);
    assert!(r.effects.is_empty());
    assert!(!r.p.wake(ctx!(r), 0));
    r.evtchn(4, &[b]);
    assert_eq!(r.effects, vec![PlatformEffect::Wake { vcpu: 0 }]);
    assert!(r.timers.is_empty(), "timeout cancelled");
    // Already pending: no block. Timeout: wakes.
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[3, 0x7000]), (0, PlatformEffect::None));
    r.p.shinfo.clear_pending(b);
    r.effects.clear();
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[3, 0x7000]).1, PlatformEffect::Block);
    r.now += 700;
    let Some((TimerKey::Platform(k), _)) = r.timers.pop_expired(r.now) else { panic!("poll timeout armed") };
    r.p.timer_fired(ctx!(r), k);
    assert_eq!(r.effects, vec![PlatformEffect::Wake { vcpu: 0 }]);
    r.mem.write_u32(0x7100, 4096).unwrap();
    assert_eq!(r.call(nr::SCHED_OP, &[3, 0x7000]), -EINVAL, "port out of range");
}

#[test]
fn shutdown_reasons_and_codes() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.mem.write_u32(0x7000, 1).unwrap();
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[2, 0x7000]).1, PlatformEffect::Shutdown(ShutdownReason::Reboot));
    r.mem.write_u32(0x7000, 3).unwrap();
    assert_eq!(r.call(nr::SCHED_OP, &[5, 0x7000]), 0);
    r.mem.write_u32(0x7000, 0).unwrap();
    assert_eq!(
        r.call_on(0, nr::SCHED_OP, &[2, 0x7000]).1,
        PlatformEffect::Shutdown(ShutdownReason::Crash),
        "the stored shutdown code wins"
    );
}

#[test]
fn soft_reset_starts_the_domain_over() {
    let cfg = XenConfig { store: Some(Ring { pfn: 0xfeffc, evtchn: 1 }), ..Default::default() };
    let mut r = Rig::new(cfg, 1);
    assert_eq!(r.map_shared_info(0xfeff0), 0);
    assert_eq!(r.set_param(0, 7), 0);
    r.evtchn(7, &[0]);
    assert_eq!(r.p.backend_bind(1), Ok(1));
    r.mem.write_u64(0x7000, r.now + 100).unwrap();
    r.mem.write_u32(0x7008, 0).unwrap();
    r.call(nr::VCPU_OP, &[8, 0, 0x7000]);
    r.mem.write_u32(0x7000, 5).unwrap();
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[2, 0x7000]), (0, PlatformEffect::None));
    assert_eq!(r.p.soft_resets(), 1);
    assert_eq!(r.mem.backing(0xfeff0 << 12), sim_core::memory::Backing::Mmio, "shared_info unmapped");
    assert_eq!(r.get_param(0), Ok(0), "callback cleared");
    assert!(r.timers.is_empty());
    assert_eq!(r.p.evtchn.status(2).unwrap().status, stat::CLOSED);
    assert_eq!(r.p.evtchn.status(1).unwrap().status, stat::UNBOUND, "xenstore port offered again");
    assert_eq!(r.p.backend_bind(1), Ok(1), "and dom0 can reconnect");
}

#[test]
fn register_vcpu_info_moves_it_and_raises_a_spurious_upcall() {
    let mut r = Rig::new(XenConfig::default(), 2);
    assert_eq!(r.set_param(0, 2 << 56 | 0xf3), 0);
    r.p.shinfo.write_u8(64 + 1, 1); // vCPU 1's upcall_mask in shared_info
                                    // {mfn, offset}
    r.mem.write_u64(0x7000, 0x20).unwrap();
    r.mem.write_u32(0x7008, 4096 - 63).unwrap();
    assert_eq!(r.call_on(1, nr::VCPU_OP, &[10, 1, 0x7000]).0, -ENXIO);
    r.mem.write_u32(0x7008, 0x40).unwrap();
    assert_eq!(r.call_on(1, nr::VCPU_OP, &[10, 0, 0x7000]).0, -EINVAL, "vCPU 0 is up and not the caller");
    r.mem.write_u64(0x7000, 0xfee00).unwrap();
    assert_eq!(r.call_on(1, nr::VCPU_OP, &[10, 1, 0x7000]).0, -EINVAL, "not RAM");
    r.mem.write_u64(0x7000, 0x20).unwrap();
    assert_eq!(r.call_on(1, nr::VCPU_OP, &[10, 1, 0x7000]).0, 0);
    let vi = 0x20040;
    assert_eq!(r.mem.read_u8(vi + 1).unwrap(), 1, "contents carried over");
    assert_eq!(r.mem.read_u64(vi + 8).unwrap(), u64::MAX, "every selector bit set");
    assert_eq!(r.mem.read_u8(vi).unwrap(), 1, "upcall pending");
    assert_eq!(r.p.pending_vector(&r.mem, 1), Some(0xf3));
    assert_eq!(r.mem.read_u64(vi + 32 + 16).unwrap(), r.now, "time written there");
    assert_eq!(r.call_on(1, nr::VCPU_OP, &[10, 1, 0x7000]).0, -EINVAL, "only once");
}

#[test]
fn vcpu_up_down_and_initialise() {
    let mut r = Rig::new(XenConfig::default(), 2);
    assert_eq!(r.call(nr::VCPU_OP, &[3, 1, 0]), 0, "APs start down");
    assert_eq!(r.call(nr::VCPU_OP, &[3, 0, 0]), 1);
    assert_eq!(r.call(nr::VCPU_OP, &[1, 1, 0]), -EINVAL, "not initialised");
    // vcpu_hvm_context, 64-bit mode.
    let mut c = [0u8; 128];
    c[0] = 1;
    let regs = |c: &mut [u8; 128], off: usize, v: u64| c[8 + off..16 + off].copy_from_slice(&v.to_le_bytes());
    regs(&mut c, 0, 0x1111); // rax
    regs(&mut c, 64, 0x10_2000); // rip
    regs(&mut c, 80, cr0::PE | cr0::PG); // cr0
    regs(&mut c, 88, 0x15_0000); // cr3
    regs(&mut c, 96, sim_core::state::cr4::PAE);
    regs(&mut c, 104, efer::LME);
    r.mem.write(0x7000, &c[..120]).unwrap();
    r.mem
        .write(0x7000, &{
            let mut bad = c;
            bad[8 + 105] = 0; // EFER.LME is bit 8
            bad
        })
        .unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[0, 1, 0x7000]), -EINVAL, "64-bit mode without LME");
    r.mem.write(0x7000, &c).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[0, 1, 0x7000]), 0);
    assert_eq!(r.call(nr::VCPU_OP, &[0, 1, 0x7000]), -EEXIST);
    assert_eq!(r.call(nr::VCPU_OP, &[1, 1, 0]), 0);
    let Some(PlatformEffect::StartVcpu { vcpu: 1, state }) = r.effects.pop() else { panic!("{:?}", r.effects) };
    assert_eq!((state.gpr[0], state.rip, state.cr3), (0x1111, 0x10_2000, 0x15_0000));
    assert_eq!(state.mode(), sim_core::state::CpuMode::Long64);
    assert_eq!(r.call(nr::VCPU_OP, &[3, 1, 0]), 1);
    assert_eq!(r.call(nr::VCPU_OP, &[2, 1, 0]), 0);
    assert_eq!(r.effects.pop(), Some(PlatformEffect::StopVcpu { vcpu: 1 }));
    assert_eq!(r.call_on(0, nr::VCPU_OP, &[2, 0, 0]).1, PlatformEffect::Shutdown(ShutdownReason::Poweroff));
    assert_eq!(r.call(nr::VCPU_OP, &[99, 0, 0]), -ENOSYS);
}

#[test]
fn runstate_area_tracks_block_and_wake() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.mem.write_u64(0x7000, 0x7800).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[5, 0, 0x7000]), 0);
    assert_eq!(r.mem.read_u32(0x7800).unwrap(), 0, "running");
    r.call(nr::SCHED_OP, &[1, 0]);
    assert_eq!(r.mem.read_u32(0x7800).unwrap(), 2, "blocked");
    assert_eq!(r.mem.read_u64(0x7808).unwrap(), r.now);
    let t0 = r.now;
    r.now += 300;
    r.p.shinfo.write_u8(0, 1);
    assert!(r.p.wake(ctx!(r), 0));
    assert_eq!(r.mem.read_u32(0x7800).unwrap(), 1, "runnable until its slice starts");
    r.p.vcpu_slice(ctx!(r), 0, SliceEvent::Start);
    assert_eq!(r.mem.read_u32(0x7800).unwrap(), 0);
    assert_eq!(r.mem.read_u64(0x7810 + 16).unwrap(), 300, "300 ns blocked");
    assert_eq!(r.mem.read_u64(0x7810).unwrap(), t0, "running time since power-on");
}

#[test]
fn console_io_writes_and_reads() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.mem.write(0x7000, b"hello").unwrap();
    assert_eq!(r.call(nr::CONSOLE_IO, &[0, 5, 0x7000]), 0);
    assert_eq!(r.console, b"hello");
    r.input.extend(b"ab");
    assert_eq!(r.call(nr::CONSOLE_IO, &[1, 10, 0x7100]), 2);
    assert_eq!(r.mem.read_u16(0x7100).unwrap(), u16::from_le_bytes(*b"ab"));
    assert_eq!(r.call(nr::CONSOLE_IO, &[0, 5, 0x7fff_fffe]), -EFAULT);
    assert_eq!(r.call(nr::CONSOLE_IO, &[2, 5, 0x7000]), -ENOSYS);
}

#[test]
fn hypercall_msr_fills_the_page_or_faults() {
    let mut r = Rig::new(XenConfig::default(), 1);
    assert_eq!(r.p.msr_read(ctx!(r), 0, HYPERCALL_MSR), Some(Ok(0)));
    assert_eq!(r.p.msr_read(ctx!(r), 0, HYPERCALL_MSR + 1), None);
    assert_eq!(r.p.msr_write(ctx!(r), 0, &mut FakeVcpu::long(), HYPERCALL_MSR, 0x5001), Some(Err(())));
    assert_eq!(r.p.msr_write(ctx!(r), 0, &mut FakeVcpu::long(), HYPERCALL_MSR, 0x5000), Some(Ok(())));
    // Stub 3: mov eax, 3; vmcall; ret.
    let mut b = [0u8; 9];
    r.mem.read(0x5000 + 96, &mut b).unwrap();
    assert_eq!(b, [0xb8, 3, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xc3]);
}

#[test]
fn pirqs_map_bind_and_fire_on_a_rising_gsi() {
    let mut r = Rig::new(XenConfig { pirqs: true, ..Default::default() }, 1);
    // physdev_map_pirq {domid, type, index, pirq}
    r.mem.write_u16(0x7000, DOMID_SELF).unwrap();
    r.mem.write_u32(0x7004, 1).unwrap();
    r.mem.write_u32(0x7008, 20).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[13, 0x7000]), 0);
    let pirq = r.mem.read_u32(0x700c).unwrap();
    assert_eq!(pirq, 16, "lowest free GSI-type PIRQ");
    assert_eq!(r.call(nr::PHYSDEV_OP, &[13, 0x7000]), 0);
    assert_eq!(r.mem.read_u32(0x700c).unwrap(), 16, "same GSI, same PIRQ");
    r.mem.write_u32(0x7008, 48).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[13, 0x7000]), -EINVAL);
    r.mem.write_u16(0x7000, GUEST_DOMID).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[13, 0x7000]), -EPERM);
    assert_eq!(r.evtchn(2, &[pirq, 0]), 0);
    let port = r.out(2);
    r.gsi.set(20, sim_core::irq::source::UART, true);
    r.sync();
    assert!(r.p.shinfo.port_pending(port));
    // EOI while still asserted raises it again.
    r.p.shinfo.clear_pending(port);
    r.mem.write_u32(0x7100, pirq).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[12, 0x7100]), 0);
    assert!(r.p.shinfo.port_pending(port));
    assert_eq!(r.call(nr::PHYSDEV_OP, &[5, 0x7100]), 0);
    r.mem.write_u32(0x7100, 17).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[5, 0x7100]), -EINVAL, "not mapped");
    r.mem.write_u32(0x7200, 1).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[23, 0x7200]), 0);
    assert_eq!(r.mem.read_u32(0x7204).unwrap(), 17);
    // unmap {domid, pirq}
    r.mem.write_u16(0x7300, DOMID_SELF).unwrap();
    r.mem.write_u32(0x7304, pirq).unwrap();
    assert_eq!(r.call(nr::PHYSDEV_OP, &[14, 0x7300]), 0);
    assert_eq!(r.call(nr::PHYSDEV_OP, &[14, 0x7300]), -EINVAL);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..Default::default() })]

        /// Random hypercalls with random arguments over a small memory
        /// never panic the host, and every result is 0.. or a Xen errno.
        #[test]
        fn random_hypercalls_never_panic(
            calls in proptest::collection::vec((0u64..40, 0u64..32, any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>(), any::<[u8; 64]>()), 1..12)
        ) {
            let mut r = Rig::new(XenConfig { pirqs: true, store: Some(Ring { pfn: 0x300, evtchn: 1 }), ..Default::default() }, 2);
            for (nr, sub, a1, a2, a3, compat, junk) in calls {
                if compat { r.cpu = FakeVcpu::prot32() } else { r.cpu = FakeVcpu::long() }
                // Half the pointers land in RAM, with junk structures there.
                let ptr = if a1 & 1 == 0 { 0x7000 + (a1 >> 1) % 0x1000 } else { a1 };
                let _ = r.mem.write(0x7000 + (a2 % 0x1000), &junk);
                let (rc, _) = r.call_on((a3 & 1) as u32, nr, &[sub, ptr, a2, a3]);
                prop_assert!(rc >= 0 || (-rc) <= 110, "rc {rc} from {nr}/{sub}");
                r.sync();
                r.now += 1000;
                while let Some((TimerKey::Platform(k), _)) = r.timers.pop_expired(r.now) {
                    r.p.timer_fired(ctx!(r), k);
                }
                let _ = r.p.pending_vector(&r.mem, 0);
                let _ = r.p.wake(ctx!(r), 1);
            }
        }
    }
}

// ---- dom0 backends: xenstore ring and PV console ----

const XS: u64 = 0xfeffc << 12;
const CONS: u64 = 0xfefff << 12;
const SHINFO_GFN: u64 = 0xfeff0;

/// A platform with the toolstack's rings, shared_info mapped and the callback vector set.
fn pv_rig() -> Rig {
    let mut r = Rig::new(XenConfig::default().with_pv_rings(), 1);
    assert_eq!(r.map_shared_info(SHINFO_GFN), 0);
    assert_eq!(r.set_param(0, 2 << 56 | 0xf3), 0);
    r.sync();
    r
}

fn port_pending(r: &Rig, port: u32) -> bool {
    r.mem.read_u64((SHINFO_GFN << 12) + 2048).unwrap() & (1 << port) != 0
}

fn clear_pending(r: &Rig) {
    r.mem.write_u64((SHINFO_GFN << 12) + 2048, 0).unwrap();
}

fn node(r: &Rig, path: &str) -> String {
    let n = r.p.xenstore().tree().get(path).unwrap_or_else(|| panic!("{path} missing"));
    String::from_utf8(n.value.clone()).unwrap()
}

#[test]
fn the_toolstack_rings_are_at_the_special_pages_with_their_params_and_nodes() {
    let mut r = pv_rig();
    // HVM params as libxc sets them: special_pfn(4) and special_pfn(7), ports 1 and 2.
    assert_eq!(r.get_param(1), Ok(0xfeffc));
    assert_eq!(r.get_param(2), Ok(1));
    assert_eq!(r.get_param(17), Ok(0xfefff));
    assert_eq!(r.get_param(18), Ok(2));
    for a in [XS, CONS] {
        assert_eq!(r.mem.backing(a), sim_core::memory::Backing::Overlay);
    }
    assert_eq!(r.mem.read_u32(XS + 2064).unwrap(), 3, "reconnection | error");
    // Both ports are bound by dom0 (interdomain to domain 0).
    for p in [1, 2] {
        let s = r.p.evtchn.status(p).unwrap();
        assert_eq!((s.status, s.a, s.b), (stat::INTERDOMAIN, 0, p));
    }
    // The initial tree, with the ring details and the memory size (4 MiB = 4096 KiB).
    assert_eq!(node(&r, "/local/domain/1/store/port"), "1");
    assert_eq!(node(&r, "/local/domain/1/store/ring-ref"), (0xfeffcu64).to_string());
    assert_eq!(node(&r, "/local/domain/1/console/port"), "2");
    assert_eq!(node(&r, "/local/domain/1/console/ring-ref"), (0xfefffu64).to_string());
    assert_eq!(node(&r, "/local/domain/1/console/type"), "xenconsoled");
    assert_eq!(node(&r, "/local/domain/1/memory/target"), "4096");
    assert!(r.p.xenstore().domain(1).is_some_and(|d| d.introduced));
    // XENMEM_memory_map marks the special region reserved.
    r.mem.write_u32(0x7000, 16).unwrap();
    r.mem.write_u64(0x7008, 0x7100).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[9, 0x7000]), 0);
    let n = r.mem.read_u32(0x7000).unwrap() as u64;
    let entries: Vec<(u64, u64, u32)> = (0..n)
        .map(|i| {
            let e = 0x7100 + i * 20;
            (r.mem.read_u64(e).unwrap(), r.mem.read_u64(e + 8).unwrap(), r.mem.read_u32(e + 16).unwrap())
        })
        .collect();
    assert!(entries.contains(&(0xfeff8000, 0x8000, 2)), "{entries:x?}");
    assert!(entries.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "sorted, disjoint: {entries:x?}");
}

/// The guest's half of a request: bytes into req[], req_prod, EVTCHNOP_send.
fn guest_xs_request(r: &mut Rig, ty: u32, req_id: u32, payload: &[u8]) {
    guest_xs_request_on(r, 1, ty, req_id, payload)
}

/// A request on the xenstore ring, signalled on guest port `port`.
fn guest_xs_request_on(r: &mut Rig, port: u32, ty: u32, req_id: u32, payload: &[u8]) {
    let mut m = Vec::new();
    for w in [ty, req_id, 0, payload.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(payload);
    let mut prod = r.mem.read_u32(XS + 2052).unwrap();
    for b in m {
        r.mem.write_u8(XS + (prod % 1024) as u64, b).unwrap();
        prod = prod.wrapping_add(1);
    }
    r.mem.write_u32(XS + 2052, prod).unwrap();
    assert_eq!(r.evtchn(4, &[port]), 0);
}

fn guest_xs_replies(r: &mut Rig) -> Vec<u8> {
    let (mut cons, prod) = (r.mem.read_u32(XS + 2056).unwrap(), r.mem.read_u32(XS + 2060).unwrap());
    let mut v = Vec::new();
    while cons != prod {
        v.push(r.mem.read_u8(XS + 1024 + (cons % 1024) as u64).unwrap());
        cons = cons.wrapping_add(1);
    }
    r.mem.write_u32(XS + 2056, cons).unwrap();
    v
}

#[test]
fn a_guest_request_is_answered_in_the_sync_after_its_notification_with_an_event() {
    let mut r = pv_rig();
    clear_pending(&r);
    guest_xs_request(&mut r, 2, 9, b"domid\0");
    r.sync();
    let mut want = Vec::new();
    for w in [2u32, 9, 0, 1] {
        want.extend_from_slice(&w.to_le_bytes());
    }
    want.push(b'1');
    assert_eq!(guest_xs_replies(&mut r), want);
    assert!(port_pending(&r, 1), "the xenstore port was signalled");
    assert_eq!(r.p.pending_vector(&r.mem, 0), Some(0xf3), "callback vector offered");
}

#[test]
fn console_output_reaches_the_console_and_input_reaches_the_in_ring() {
    let mut r = pv_rig();
    clear_pending(&r);
    for (i, b) in b"hvc0 says hi\n".iter().enumerate() {
        r.mem.write_u8(CONS + 1024 + i as u64, *b).unwrap();
    }
    r.mem.write_u32(CONS + 3084, 13).unwrap();
    assert_eq!(r.evtchn(4, &[2]), 0);
    r.sync();
    assert_eq!(r.console, b"hvc0 says hi\n");
    assert_eq!(r.mem.read_u32(CONS + 3080).unwrap(), 13, "out_cons caught up");
    assert!(port_pending(&r, 2));
    clear_pending(&r);
    r.input.extend(b"ls\n");
    r.sync();
    assert!(r.input.is_empty());
    assert_eq!(r.mem.read_u32(CONS + 3076).unwrap(), 3, "in_prod");
    let got: Vec<u8> = (0..3).map(|i| r.mem.read_u8(CONS + i).unwrap()).collect();
    assert_eq!(got, b"ls\n");
    assert!(port_pending(&r, 2), "input is signalled");
}

#[test]
fn soft_reset_rebinds_fresh_ports_and_restarts_the_xenstore_ring() {
    let mut r = pv_rig();
    guest_xs_request(&mut r, 4, 1, b"data\0tok\0");
    r.sync();
    let conn = r.p.xenstore().domain(1).and_then(|d| d.conn).unwrap();
    assert_eq!(r.p.xenstore().connection(conn).unwrap().watches.len(), 1);
    r.mem.write_u32(0x7000, 5).unwrap();
    assert_eq!(r.call_on(0, nr::SCHED_OP, &[2, 0x7000]), (0, PlatformEffect::None));
    // Straight after the reset the ports are unbound for dom0 ...
    assert_eq!(r.p.evtchn.status(1).unwrap().status, stat::UNBOUND);
    r.sync();
    // ... and dom0 has bound them again at the next platform call.
    for p in [1, 2] {
        assert_eq!(r.p.evtchn.status(p).unwrap().status, stat::INTERDOMAIN);
    }
    assert_eq!(r.mem.read_u32(XS + 2060).unwrap(), 0, "empty queues");
    assert_eq!(r.mem.read_u32(XS + 2064).unwrap(), 3);
    assert!(r.p.xenstore().connection(conn).unwrap().watches.is_empty(), "watches dropped");
    assert_eq!(r.mem.backing(XS), sim_core::memory::Backing::Overlay, "ring page still mapped");
}

/// Collects what the platform sends socket clients.
#[derive(Clone, Default)]
struct SinkLog(std::sync::Arc<std::sync::Mutex<Sent>>);

/// (client, bytes) in the order sent.
type Sent = Vec<(u32, Vec<u8>)>;

impl crate::dom0::XenstoreSink for SinkLog {
    fn send(&mut self, client: u32, bytes: &[u8]) {
        self.0.lock().unwrap().push((client, bytes.to_vec()));
    }
    fn hang_up(&mut self, client: u32) {
        self.0.lock().unwrap().push((client, b"HANGUP".to_vec()));
    }
}

fn wire(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for w in [ty, req_id, 0, payload.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

#[test]
fn socket_clients_from_the_door_reach_the_store_and_see_guest_writes() {
    use sim_core::door::Input;
    let mut r = pv_rig();
    let sink = SinkLog::default();
    r.p.set_xenstore_sink(Box::new(sink.clone()));
    r.p.input(ctx!(r), &Input::XenstoreClient { client: 7, connected: true });
    // A watch on the guest's data/ directory, sent in two pieces.
    let w = wire(4, 1, b"/local/domain/1/data\0t\0");
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 7, bytes: w[..5].to_vec() });
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 7, bytes: w[5..].to_vec() });
    let mut want = wire(4, 1, b"OK\0");
    want.extend(wire(15, 0, b"/local/domain/1/data\0t\0"));
    assert_eq!(sink.0.lock().unwrap().concat_for(7), want);
    // The guest writes data/x over its ring: the client sees the event.
    guest_xs_request(&mut r, 11, 2, b"data/x\0v");
    r.sync();
    assert_eq!(sink.0.lock().unwrap().concat_for(7)[want.len()..], wire(15, 0, b"/local/domain/1/data/x\0t\0"));
    // The client writes a node; the guest reads it.
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 7, bytes: wire(11, 3, b"/local/domain/1/data/y\0from-dom0") });
    guest_xs_replies(&mut r);
    guest_xs_request(&mut r, 2, 4, b"data/y\0");
    r.sync();
    let replies = guest_xs_replies(&mut r);
    assert_eq!(&replies[16..], b"from-dom0");
    // Garbage (length 5000) drops that client only.
    let mut bad = wire(2, 5, b"");
    bad[12..16].copy_from_slice(&5000u32.to_le_bytes());
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 7, bytes: bad });
    assert_eq!(sink.0.lock().unwrap().last().unwrap(), &(7, b"HANGUP".to_vec()));
    guest_xs_request(&mut r, 2, 6, b"domid\0");
    r.sync();
    assert_eq!(&guest_xs_replies(&mut r)[16..], b"1");
}

#[test]
fn a_checkpoint_restores_the_platform_and_its_overlays_in_place() {
    let mut r = pv_rig();
    let cp = r.p.checkpoint();
    let saved = r.p.save();
    let overlays = |r: &Rig| -> Vec<(u64, Vec<u8>)> {
        r.mem
            .overlays()
            .map(|(g, p)| {
                let mut b = vec![0u8; 4096];
                p.read(0, &mut b);
                (g, b)
            })
            .collect()
    };
    let before = overlays(&r);
    // Change what the checkpoint covers: a node through the ring, grant v2
    // with its shared and status frames in the physmap, a new port.
    guest_xs_request(&mut r, 11, 1, b"data/x\0y");
    r.sync();
    assert!(r.p.xenstore().tree().get("/local/domain/1/data/x").is_some());
    r.mem.write_u32(0x7000, 2).unwrap();
    assert_eq!(r.call(nr::GRANT_TABLE_OP, &[8, 0x7000, 1]), 0, "GNTTABOP_set_version(2)");
    for (gfn, idx) in [(0x100u64, 0u64), (0x101, 1 << 31)] {
        r.mem.write_u16(0xa000, DOMID_SELF).unwrap();
        r.mem.write_u32(0xa004, 1).unwrap(); // XENMAPSPACE_grant_table
        r.mem.write_u64(0xa008, idx).unwrap();
        r.mem.write_u64(0xa010, gfn).unwrap();
        assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), 0);
    }
    assert_eq!(r.evtchn(6, &[DOMID_SELF as u32, 0]), 0, "alloc_unbound");
    r.mem.write_u32(XS + 2048, 0xdead).unwrap(); // ring indexes
    assert_ne!(r.p.save(), saved);

    r.p.restore_checkpoint(ctx!(r), &cp).unwrap();
    assert_eq!(r.p.save(), saved, "the same state as at the checkpoint");
    assert_eq!(overlays(&r), before, "the same overlays, same contents");
    assert_eq!(r.mem.backing(0x100 << 12), sim_core::memory::Backing::Ram, "grant frame unmapped");
    assert!(r.p.xenstore().tree().get("/local/domain/1/data/x").is_none());
    assert_eq!(r.p.gnttab.version(), 1);
    // Still a working platform: the ring answers.
    guest_xs_request(&mut r, 2, 9, b"domid\0");
    r.sync();
    assert_eq!(&guest_xs_replies(&mut r)[16..], b"1");
    // Restored again after a store change, and again with none.
    guest_xs_request(&mut r, 11, 2, b"data/z\0w");
    r.sync();
    r.p.restore_checkpoint(ctx!(r), &cp).unwrap();
    assert!(r.p.xenstore().tree().get("/local/domain/1/data/z").is_none());
    assert_eq!(r.p.save(), saved);
    r.p.restore_checkpoint(ctx!(r), &cp).unwrap();
    assert_eq!(r.p.save(), saved);
}

/// Saves carry the store encoded as it is at the save: a save of an
/// unchanged store reuses the last encoding, and any change to the store
/// (here through the guest's ring) must show in the next save.
#[test]
fn saves_carry_the_store_as_it_is_at_each_save() {
    let mut r = pv_rig();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let first = rmp_serde::to_vec(r.p.xenstore()).unwrap();
    let saved = r.p.save();
    assert!(contains(&saved, &first));
    assert_eq!(r.p.save(), saved, "nothing changed");
    guest_xs_request(&mut r, 11, 1, b"data/x\0y");
    r.sync();
    let second = rmp_serde::to_vec(r.p.xenstore()).unwrap();
    assert_ne!(first, second);
    let changed = r.p.save();
    assert!(contains(&changed, &second) && !contains(&changed, &first));
    // Restoring the first save brings its store back, and saves say so.
    r.p.restore(ctx!(r), &saved).unwrap();
    assert_eq!(rmp_serde::to_vec(r.p.xenstore()).unwrap(), first);
    assert_eq!(r.p.save(), saved);
    guest_xs_request(&mut r, 11, 2, b"data/y\0z");
    r.sync();
    assert!(contains(&r.p.save(), &rmp_serde::to_vec(r.p.xenstore()).unwrap()));
    assert_ne!(r.p.save(), saved);
}

trait ConcatFor {
    fn concat_for(&self, client: u32) -> Vec<u8>;
}

impl ConcatFor for Sent {
    fn concat_for(&self, client: u32) -> Vec<u8> {
        self.iter().filter(|(c, _)| *c == client).flat_map(|(_, b)| b.clone()).collect()
    }
}

// Declared last: it uses the `ctx!` macro above.
mod xen_source;

/// A toolstack on dom0's socket releases the guest and introduces it again with the
/// same ring frame and port (XS_RELEASE, XS_INTRODUCE). cxenstored forgets the domain on
/// release (its watches and transactions go with its connection, @releaseDomain fires);
/// the introduction makes a new connection, empties the ring (domain_conn_reset), marks it
/// XENSTORE_CONNECTED and notifies the guest. The guest's next request is answered.
#[test]
fn a_released_and_reintroduced_guest_is_served_on_its_ring_again() {
    use sim_core::door::Input;
    let mut r = pv_rig();
    let sink = SinkLog::default();
    r.p.set_xenstore_sink(Box::new(sink.clone()));
    // The guest watches its data/ and opens a transaction; a stale request is left
    // half-written in its ring.
    guest_xs_request(&mut r, 4, 1, b"data\0tok\0");
    guest_xs_request(&mut r, 6, 2, b"\0");
    r.sync();
    guest_xs_replies(&mut r);
    let old = r.p.xenstore().domain(1).and_then(|d| d.conn).unwrap();
    let c = r.p.xenstore().connection(old).unwrap();
    assert_eq!((c.watches.len(), c.transactions.len()), (1, 1));
    r.p.input(ctx!(r), &Input::XenstoreClient { client: 3, connected: true });
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 3, bytes: wire(4, 1, b"@releaseDomain\0rel\0") });
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 3, bytes: wire(9, 2, b"1\0") });
    let sent = sink.0.lock().unwrap().concat_for(3);
    let mut want = wire(4, 1, b"OK\0");
    want.extend(wire(15, 0, b"@releaseDomain\0rel\0"));
    want.extend(wire(15, 0, b"@releaseDomain\0rel\0"));
    want.extend(wire(9, 2, b"OK\0"));
    assert_eq!(sent, want, "the watch's initial event, @releaseDomain on release, the ack");
    assert!(r.p.xenstore().connection(old).is_none(), "the old connection (watches, transactions) is gone");
    assert_eq!(r.p.xenstore().domain(1).and_then(|d| d.conn), None);
    // Half a request the guest wrote meanwhile (unanswerable: its domain was released).
    let mut prod = r.mem.read_u32(XS + 2052).unwrap();
    for b in &wire(2, 3, b"domid\0")[..8] {
        r.mem.write_u8(XS + (prod % 1024) as u64, *b).unwrap();
        prod += 1;
    }
    r.mem.write_u32(XS + 2052, prod).unwrap();
    clear_pending(&r);
    let gfn = format!("1\0{}\0{}\0", 0xfeffc, 1);
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 3, bytes: wire(8, 4, gfn.as_bytes()) });
    let new = r.p.xenstore().domain(1).and_then(|d| d.conn).unwrap();
    assert_ne!(new, old);
    assert!(port_pending(&r, 1), "the guest is notified of the introduction");
    for (at, v) in [(2048, 0), (2052, 0), (2056, 0), (2060, 0), (2068, 0), (2072, 0)] {
        assert_eq!(
            r.mem.read_u32(XS + at).unwrap(),
            v,
            "ring word at {at}: empty queues, XENSTORE_CONNECTED (0), no error"
        );
    }
    guest_xs_request(&mut r, 2, 5, b"domid\0");
    r.sync();
    // Answered on the new connection: EACCES, because the release dropped domain 1's
    // entries from the toolstack's nodes' permissions (cxenstored likewise ignores
    // entries naming a domain younger than the node) until the toolstack writes them again.
    assert_eq!(guest_xs_replies(&mut r), wire(16, 5, b"EACCES\0"), "answered on the new connection");
    let c = r.p.xenstore().connection(new).unwrap();
    assert_eq!((c.domid, c.watches.len(), c.transactions.len()), (1, 0, 0));
}

/// A toolstack introduces the guest again with a new event channel, one the guest
/// allocated unbound for dom0 (as on a soft reset). xenstored binds the introduced port
/// and drops the old connection's: the ring is now signalled both ways on the new port,
/// and the old one is back to unbound for dom0 (EVTCHNOP_status).
#[test]
fn a_guest_introduced_on_a_new_port_is_served_on_that_port() {
    use sim_core::door::Input;
    let mut r = pv_rig();
    r.p.set_xenstore_sink(Box::new(SinkLog::default()));
    assert_eq!(r.evtchn(6, &[DOMID_SELF as u32, 0]), 0, "alloc_unbound for dom0");
    let new = r.out(1);
    assert_ne!(new, 1);
    r.p.input(ctx!(r), &Input::XenstoreClient { client: 3, connected: true });
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 3, bytes: wire(9, 1, b"1\0") });
    clear_pending(&r);
    let intro = format!("1\0{}\0{new}\0", 0xfeffc);
    r.p.input(ctx!(r), &Input::XenstoreSocket { client: 3, bytes: wire(8, 2, intro.as_bytes()) });
    assert!(port_pending(&r, new) && !port_pending(&r, 1), "the introduction is signalled on the new port");
    clear_pending(&r);
    guest_xs_request_on(&mut r, new, 2, 5, b"domid\0");
    r.sync();
    assert_eq!(guest_xs_replies(&mut r), wire(16, 5, b"EACCES\0"), "answered on the new connection");
    assert!(port_pending(&r, new) && !port_pending(&r, 1), "the reply is signalled on the new port");
    // EVTCHNOP_status of each port: state 2 (interdomain) for the new one, 1 (unbound)
    // with remote domain 0 for the old one.
    let status = |r: &mut Rig, port: u32| {
        assert_eq!(r.evtchn(5, &[DOMID_SELF as u32, port]), 0);
        (r.out(2), r.out(4) & 0xffff)
    };
    assert_eq!(status(&mut r, new).0, 2);
    assert_eq!(status(&mut r, 1), (1, 0));
    // A request signalled on the old port is not seen.
    clear_pending(&r);
    guest_xs_request_on(&mut r, 1, 2, 6, b"domid\0");
    r.sync();
    assert!(guest_xs_replies(&mut r).is_empty());
}
