//! Behaviour checked against the Xen source (xen/common/kernel.c,
//! domain.c, sched/core.c, arch/x86/hvm/hvm.c and irq.c at RELEASE-4.17.0,
//! and 4.18+ where the two differ). Expected values are Xen's, worked out
//! by hand from that code.

use super::*;

fn cstr(mem: &GuestMemory, at: u64, max: usize) -> String {
    let mut b = vec![0u8; max];
    mem.read(at, &mut b).unwrap();
    let n = b.iter().position(|&c| c == 0).expect("NUL-terminated");
    String::from_utf8(b[..n].to_vec()).unwrap()
}

#[test]
fn xen_version_sub_ops_give_xens_outputs() {
    let mut r = Rig::new(XenConfig::default(), 1);
    // capabilities: arch_get_xen_caps without PV, each entry with its space.
    r.mem.write(0x7000, &[0xff; 1100]).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[3, 0x7000]), 0);
    assert_eq!(cstr(&r.mem, 0x7000, 1024), "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64 ");
    assert_eq!(r.mem.read_u8(0x7000 + 1023).unwrap(), 0, "the whole 1024-byte field is written");
    assert_eq!(r.mem.read_u8(0x7000 + 1024).unwrap(), 0xff, "and nothing after it");
    // compile_info: compiler[64], compile_by[16], compile_domain[32], compile_date[32].
    r.mem.write(0x7000, &[0xff; 160]).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[2, 0x7000]), 0);
    assert_eq!(cstr(&r.mem, 0x7000, 64), "rustc (xensim)");
    assert_eq!(cstr(&r.mem, 0x7000 + 64, 16), "xensim");
    assert_eq!(cstr(&r.mem, 0x7000 + 80, 32), "xensim.invalid");
    assert_eq!(cstr(&r.mem, 0x7000 + 112, 32), "Thu Jan  1 00:00:00 UTC 1970");
    assert_eq!(r.mem.read_u8(0x7000 + 144).unwrap(), 0xff, "144 bytes in all");
    // platform_parameters: HYPERVISOR_VIRT_START of x86_64.
    assert_eq!(r.call(nr::XEN_VERSION, &[5, 0x7000]), 0);
    assert_eq!(r.mem.read_u64(0x7000).unwrap(), 0xffff_8000_0000_0000);
    // get_features submap 0 of an HVM domU: writable_page_tables 0,
    // auto_translated_physmap 2, hvm_callback_vector 8, hvm_safe_pvclock 9,
    // memory_op_vnode_supported 13, not_direct_mapped 16.
    r.mem.write_u32(0x7000, 0).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[6, 0x7000]), 0);
    assert_eq!(r.mem.read_u32(0x7004).unwrap(), 0x0001_2305);
    let mut pirqs = Rig::new(XenConfig { pirqs: true, ..Default::default() }, 1);
    pirqs.mem.write_u32(0x7000, 0).unwrap();
    assert_eq!(pirqs.call(nr::XEN_VERSION, &[6, 0x7000]), 0);
    assert_eq!(pirqs.mem.read_u32(0x7004).unwrap(), 0x0001_2705, "plus hvm_pirqs 10");
    // pagesize wants a null handle.
    assert_eq!(r.call(nr::XEN_VERSION, &[7, 0]), 4096);
    assert_eq!(r.call(nr::XEN_VERSION, &[7, 0x7000]), -EINVAL);
    // XSM's default policy: the command line reads "<denied>", build_id fails.
    r.mem.write(0x7000, &[0xff; 16]).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[9, 0x7000]), 0);
    assert_eq!(cstr(&r.mem, 0x7000, 16), "<denied>");
    assert_eq!(r.mem.read_u8(0x7000 + 9).unwrap(), 0xff, "strlen + 1 bytes");
    assert_eq!(r.call(nr::XEN_VERSION, &[10, 0]), -EPERM);
}

#[test]
fn platform_parameters_for_32_bit_callers_is_one_zero_word() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.cpu = FakeVcpu::prot32();
    r.mem.write(0x7000, &[0xff; 8]).unwrap();
    assert_eq!(r.call(nr::XEN_VERSION, &[5, 0x7000]), 0);
    // compat_platform_parameters { unsigned int virt_start }: hv_compat_vstart, 0 for HVM.
    assert_eq!(r.mem.read_u32(0x7000).unwrap(), 0);
    assert_eq!(r.mem.read_u32(0x7004).unwrap(), 0xffff_ffff);
}

#[test]
fn shared_info_layout_latches_at_callback_irq_and_the_hypercall_page() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.cpu = FakeVcpu::prot32();
    let gfn = 0x300;
    // compat add_to_physmap {domid, size, space 0, idx u32, gpfn u32}: no latch.
    r.mem.write(0xa000, &[0; 16]).unwrap();
    r.mem.write_u16(0xa000, DOMID_SELF).unwrap();
    r.mem.write_u32(0xa00c, gfn as u32).unwrap();
    assert_eq!(r.call(nr::MEMORY_OP, &[7, 0xa000]), 0);
    assert!(!r.p.shinfo.compat());
    // Any CALLBACK_IRQ write latches, even "none".
    assert_eq!(r.set_param(0, 0), 0);
    assert!(r.p.shinfo.compat());
    let secs = XenConfig::default().wallclock_epoch_ns / 1_000_000_000;
    assert_eq!(r.mem.read_u32((gfn << 12) + 2304 + 4).unwrap() as u64, secs, "compat wc_sec");
    // A 64-bit write of the hypercall-page MSR latches back.
    r.cpu = FakeVcpu::long();
    assert_eq!(r.p.msr_write(ctx!(r), 0, &mut r.cpu, HYPERCALL_MSR, 0x5000), Some(Ok(())));
    assert!(!r.p.shinfo.compat());
    assert_eq!(r.mem.read_u32((gfn << 12) + 3072 + 4).unwrap() as u64, secs, "native wc_sec");
}

#[test]
fn periodic_timer_counts_from_its_last_event_like_xen() {
    let mut r = Rig::new(XenConfig::default(), 1);
    assert!(r.timers.is_empty(), "an HVM vCPU has no periodic timer until it asks");
    r.evtchn(1, &[0, 0]); // bind VIRQ_TIMER
    let port = r.out(2);
    let key = timer::key(timer::PERIODIC, 0);
    r.mem.write_u64(0x7000, 1 << 62).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[6, 0, 0x7000]), -EINVAL, "beyond STIME_DELTA_MAX");
    r.mem.write_u64(0x7000, (1 << 62) - 1).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[6, 0, 0x7000]), 0);
    assert!(!r.p.shinfo.port_pending(port), "no period has passed since time 0");
    assert_eq!(r.timers.deadline_of(key), Some((1 << 62) - 1));
    // now (1 ms) >= last event (0) + 1 ms: an event at once, the next a period on.
    r.mem.write_u64(0x7000, 1_000_000).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[6, 0, 0x7000]), 0);
    assert!(r.p.shinfo.port_pending(port));
    assert_eq!(r.timers.deadline_of(key), Some(2_000_000));
    r.p.shinfo.write_u8(2048 + port as u64 / 8, 0);
    // Stopped and set again half a period later: still counts from 1 ms.
    assert_eq!(r.call(nr::VCPU_OP, &[7, 0, 0]), 0);
    assert!(r.timers.is_empty());
    r.now = 1_500_000;
    assert_eq!(r.call(nr::VCPU_OP, &[6, 0, 0x7000]), 0);
    assert!(!r.p.shinfo.port_pending(port));
    assert_eq!(r.timers.deadline_of(key), Some(2_000_000));
    r.now = 2_000_000;
    r.timers.pop_expired(r.now);
    let TimerKey::Platform(k) = key else { unreachable!() };
    r.p.timer_fired(ctx!(r), k);
    assert!(r.p.shinfo.port_pending(port));
    assert_eq!(r.timers.deadline_of(key), Some(3_000_000));
}

fn register(r: &mut Rig, caller: u32, target: u64, mfn: u64, offset: u32) -> i64 {
    // vcpu_register_vcpu_info {u64 mfn, u32 offset, u32 rsvd}
    r.mem.write_u64(0x7000, mfn).unwrap();
    r.mem.write_u32(0x7008, offset).unwrap();
    r.mem.write_u32(0x700c, 0).unwrap();
    r.call_on(caller, nr::VCPU_OP, &[10, target, 0x7000]).0
}

#[test]
fn register_vcpu_info_errors_of_xen_4_17() {
    // map_vcpu_info: offset beyond PAGE_SIZE - 64 or misaligned -ENXIO,
    // then re-registration and another running vCPU's -EINVAL.
    let mut r = Rig::new(XenConfig::default(), 2);
    assert_eq!(register(&mut r, 0, 0, 0x20, 4033), -ENXIO);
    assert_eq!(register(&mut r, 0, 0, 0x20, 8192), -ENXIO);
    assert_eq!(register(&mut r, 0, 0, 0x20, 4), -ENXIO, "alignof(vcpu_info_t) is 8");
    assert_eq!(register(&mut r, 1, 0, 0x20, 0), -EINVAL, "vCPU 0 runs and is not the caller");
    assert_eq!(register(&mut r, 0, 0, 0x20, 4032), 0, "the last offset that fits");
    assert_eq!(register(&mut r, 0, 0, 0x21, 0), -EINVAL, "already registered");
    // With a 32-bit shared_info the alignment is 4.
    r.cpu = FakeVcpu::prot32();
    assert_eq!(r.set_param(0, 0), 0);
    assert_eq!(register(&mut r, 1, 1, 0x21, 4), 0);
}

#[test]
fn register_vcpu_info_errors_of_xen_4_18_and_later() {
    // map_guest_area: an offset leaving the frame -EINVAL, re-registration
    // -EBUSY, crossing a page or misaligned -ENXIO; other vCPUs are paused,
    // not refused.
    let mut r = Rig::new(XenConfig { version: (4, 19), ..Default::default() }, 2);
    assert_eq!(register(&mut r, 0, 0, 0x20, 4096), -EINVAL);
    assert_eq!(register(&mut r, 0, 0, 0x20, 4040), -ENXIO, "crosses into the next page");
    assert_eq!(register(&mut r, 0, 0, 0x20, 12), -ENXIO);
    assert_eq!(register(&mut r, 0, 0, 0xfee00, 0), -EINVAL, "not RAM");
    assert_eq!(register(&mut r, 1, 0, 0x20, 4032), 0);
    assert_eq!(register(&mut r, 0, 0, 0x20, 0), -EBUSY);
    assert_eq!(register(&mut r, 0, 0, 0x20, 4040), -EBUSY, "the busy check comes first");
}

#[test]
fn gsi_callback_set_while_an_upcall_is_pending_asserts_at_once() {
    let mut r = Rig::new(XenConfig::default(), 1);
    r.p.shinfo.write_u8(0, 1); // vCPU 0's upcall_pending
    assert_eq!(r.set_param(0, 9), 0);
    assert!(r.gsi.level(9), "hvm_assert_evtchn_irq at the end of hvm_set_callback_via");
    assert_eq!(r.set_param(0, 10), 0);
    assert!(!r.gsi.level(9) && r.gsi.level(10), "the line moves");
    r.p.shinfo.write_u8(0, 0);
    assert_eq!(r.set_param(0, 9), 0);
    assert!(!r.gsi.level(9) && !r.gsi.level(10));
}

fn runstate_at(r: &Rig, gva: u64) -> (u32, u64, [u64; 4]) {
    let t = |i: u64| r.mem.read_u64(gva + 16 + 8 * i).unwrap();
    (r.mem.read_u32(gva).unwrap(), r.mem.read_u64(gva + 8).unwrap(), [t(0), t(1), t(2), t(3)])
}

#[test]
fn machine_started_vcpus_are_up_and_slices_drive_the_runstate() {
    let mut r = Rig::new(XenConfig::default(), 2);
    assert_eq!(r.call(nr::VCPU_OP, &[3, 1, 0]), 0);
    let t0 = r.now;
    r.p.vcpu_online(ctx!(r), 1, true); // SIPI
    assert_eq!(r.call(nr::VCPU_OP, &[3, 1, 0]), 1, "up after SIPI");
    assert_eq!(r.call(nr::VCPU_OP, &[1, 1, 0]), 0, "VCPUOP_up of a running vCPU does nothing");
    assert!(r.effects.is_empty());
    r.mem.write_u64(0x7000, 0x7800).unwrap();
    assert_eq!(r.call(nr::VCPU_OP, &[5, 1, 0x7000]), 0);
    // Offline from power-on (time 0) until the SIPI.
    assert_eq!(runstate_at(&r, 0x7800), (1, t0, [0, 0, 0, t0]), "runnable until its first slice");
    r.p.vcpu_slice(ctx!(r), 1, SliceEvent::Start);
    r.now += 1000;
    r.p.vcpu_slice(ctx!(r), 1, SliceEvent::Preempted);
    r.now += 400; // waits while vCPU 0 has its slice
    r.p.vcpu_slice(ctx!(r), 1, SliceEvent::Start);
    r.now += 100;
    r.p.vcpu_slice(ctx!(r), 1, SliceEvent::Halted);
    assert_eq!(runstate_at(&r, 0x7800), (2, t0 + 1500, [1100, 400, 0, t0]));
    // A slice that starts before the wake-up time never runs time backwards.
    r.now += 50;
    r.p.vcpu_slice(ctx!(r), 1, SliceEvent::Start);
    r.now -= 30;
    r.p.vcpu_slice(ctx!(r), 1, SliceEvent::Preempted);
    assert_eq!(runstate_at(&r, 0x7800), (1, t0 + 1550, [1100, 400, 50, t0]));
    r.p.vcpu_online(ctx!(r), 1, false); // INIT
    assert_eq!(r.call(nr::VCPU_OP, &[3, 1, 0]), 0, "down after INIT");
    assert_eq!(runstate_at(&r, 0x7800).0, 3, "offline");
}
