//! Guest programs that exercise the Xen platform from inside a guest:
//! hypercalls by VMCALL or through the hypercall page, event-channel upcalls by the callback vector and by
//! a per-vCPU LAPIC vector, and a timer-driven wait (set_singleshot_timer +
//! VIRQ_TIMER + SCHEDOP_block). Each step prints a line on port 0xE9 after
//! checking its result; any failure prints "FAIL <step>" and exits with
//! isa-debug-exit status 1 (QEMU status 3); success exits with 0 (status 1).

use iced_x86::code_asm::*;

use super::asm::{Boot, GuestError, GuestProgram, Mode, CODE64_SEL};

/// Where the program maps shared_info: a frame above its 64 MiB of RAM.
pub const SHARED_INFO_GFN: u64 = 0x3f000;
const SH: u64 = SHARED_INFO_GFN << 12;
const CALLBACK_VECTOR: u32 = 0xf3;
const LAPIC_VECTOR: u32 = 0xe0;

/// What `xen_events` prints when the platform behaves.
pub const XEN_EVENTS_EXPECTED: &str = "shared_info mapped\ncallback vector upcall\nlapic vector upcall\n\
set_singleshot_timer in the past: -ETIME\ntimer upcall after block\n";

/// How a guest enters the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallEntry {
    /// VMCALL with the number in RAX (as Linux does since XSA-466).
    Vmcall,
    /// `call page + 32 * nr` into the hypercall page the guest has Xen
    /// write (MSR from CPUID 0x40000002 EBX): works whatever instruction
    /// the platform's stubs use (VMCALL, or port I/O on KVM without Xen).
    Page,
    /// `mov eax, nr; call f` to the program's one `f: vmcall; ret`, as
    /// Linux's xen_hypercall_intel: a single VMCALL site in the code (KVM
    /// without Xen support can put a hardware breakpoint on it).
    Function,
}

/// The entry a program was built for: the page's address, or the function.
#[derive(Clone, Copy)]
pub(crate) enum Via {
    Vmcall,
    Page(u64),
    Function(CodeLabel),
}

impl Via {
    /// Set up `entry` where the program starts: allocate the page and have
    /// Xen fill it, or emit the VMCALL function (jumped over).
    pub(crate) fn setup(g: &mut GuestProgram, entry: HypercallEntry) -> Result<Via, GuestError> {
        Ok(match entry {
            HypercallEntry::Vmcall => Via::Vmcall,
            HypercallEntry::Page => {
                let page = g.scratch(4096, 4096);
                install_hypercall_page(g, page)?;
                Via::Page(page)
            }
            HypercallEntry::Function => Via::Function(vmcall_function(g)?),
        })
    }
}

/// `f: vmcall; ret`, jumped over; returns `f`.
fn vmcall_function(g: &mut GuestProgram) -> Result<CodeLabel, GuestError> {
    let (mut f, mut over) = (g.a.create_label(), g.a.create_label());
    g.a.jmp(over)?;
    g.a.set_label(&mut f)?;
    g.a.vmcall()?;
    g.a.ret()?;
    g.a.set_label(&mut over)?;
    g.a.nop()?;
    Ok(f)
}

/// Hypercall `nr` with the number in EAX and the arguments already in
/// their registers (RDI, RSI, RDX, R10, R8).
pub(crate) fn enter(g: &mut GuestProgram, via: Via, nr: u32) -> Result<(), GuestError> {
    match via {
        Via::Vmcall => {
            g.a.mov(eax, nr)?;
            g.a.vmcall()?;
        }
        Via::Page(page) => {
            // The stub loads EAX itself, so RAX is free for the address.
            g.a.mov(rax, page + 32 * nr as u64)?;
            g.a.call(rax)?;
        }
        Via::Function(f) => {
            g.a.mov(eax, nr)?;
            g.a.call(f)?;
        }
    }
    Ok(())
}

fn hypercall(g: &mut GuestProgram, via: Via, nr: u32, a1: u64, a2: u64, a3: u64) -> Result<(), GuestError> {
    g.a.mov(rdi, a1)?;
    g.a.mov(rsi, a2)?;
    g.a.mov(rdx, a3)?;
    enter(g, via, nr)
}

/// Have Xen write its hypercall page at `page` (Xen's
/// docs: CPUID leaf 0x40000002 EBX names the MSR; write the page's
/// guest-physical address to it).
fn install_hypercall_page(g: &mut GuestProgram, page: u64) -> Result<(), GuestError> {
    g.a.mov(eax, 0x4000_0002u32)?;
    g.a.cpuid()?;
    g.a.mov(ecx, ebx)?;
    g.a.mov(eax, page as u32)?;
    g.a.mov(edx, (page >> 32) as u32)?;
    g.a.wrmsr()?;
    Ok(())
}

/// Jump to a failure report for `step` unless RAX == `want`.
fn expect(g: &mut GuestProgram, want: i32, step: &str) -> Result<(), GuestError> {
    let mut ok = g.a.create_label();
    g.a.cmp(rax, want)?;
    g.a.je(ok)?;
    g.print(&format!("FAIL {step}: "))?;
    g.print_hex()?;
    g.print("\n")?;
    g.exit(1)?;
    g.a.set_label(&mut ok)?;
    g.a.nop()?; // the label needs an instruction of its own
    Ok(())
}

/// Point IDT entry `vector` (in the table at `idt`) at `handler`.
fn set_gate(g: &mut GuestProgram, idt: u64, vector: u32, handler: CodeLabel) -> Result<(), GuestError> {
    let e = idt + vector as u64 * 16;
    g.a.lea(rax, ptr(handler))?;
    g.a.mov(word_ptr(e), ax)?;
    g.a.mov(word_ptr(e + 2), CODE64_SEL as u32)?;
    g.a.mov(word_ptr(e + 4), 0x8e00u32)?; // present, DPL 0, interrupt gate
    g.a.shr(rax, 16)?;
    g.a.mov(word_ptr(e + 6), ax)?;
    g.a.shr(rax, 16)?;
    g.a.mov(dword_ptr(e + 8), eax)?;
    g.a.mov(dword_ptr(e + 12), 0u32)?;
    Ok(())
}

/// The upcall handler body: take every pending port of word 0 into
/// `seen`, clear pending, selector and upcall_pending, count the upcall.
fn upcall_body(g: &mut GuestProgram, seen: u64, count: u64, eoi: bool) -> Result<(), GuestError> {
    g.a.push(rax)?;
    g.a.mov(byte_ptr(SH), 0u32)?;
    g.a.mov(qword_ptr(SH + 8), 0i32)?;
    g.a.mov(rax, qword_ptr(SH + 2048))?;
    g.a.or(qword_ptr(seen), rax)?;
    g.a.mov(qword_ptr(SH + 2048), 0i32)?;
    g.a.inc(dword_ptr(count))?;
    if eoi {
        g.a.mov(eax, 0xfee0_00b0u32)?; // LAPIC EOI (above the reach of a disp32)
        g.a.mov(dword_ptr(rax), 0u32)?;
    }
    g.a.pop(rax)?;
    g.a.iretq()?;
    Ok(())
}

/// Spin with interrupts on until the u32 at `count` reaches `n`.
fn wait_count(g: &mut GuestProgram, count: u64, n: u32) -> Result<(), GuestError> {
    let mut spin = g.a.create_label();
    g.a.sti()?;
    g.a.set_label(&mut spin)?;
    g.a.pause()?;
    g.a.cmp(dword_ptr(count), n)?;
    g.a.jb(spin)?;
    g.a.cli()?;
    Ok(())
}

/// The events guest (PVH, long mode, one vCPU), hypercalls by VMCALL.
/// See `XEN_EVENTS_EXPECTED`.
pub fn xen_events() -> Result<Vec<u8>, GuestError> {
    xen_events_via(HypercallEntry::Vmcall)
}

/// The events guest with its hypercalls made through `entry`.
pub fn xen_events_via(entry: HypercallEntry) -> Result<Vec<u8>, GuestError> {
    xen_events_with(entry, true)
}

/// The events guest, its timer deadline taken from shared_info's
/// system_time alone (no RDTSC): everything it sees arrives at its exits,
/// so a run recorded on KVM replays on the interpreter.
pub fn xen_events_without_rdtsc(entry: HypercallEntry) -> Result<Vec<u8>, GuestError> {
    xen_events_with(entry, false)
}

fn xen_events_with(entry: HypercallEntry, rdtsc: bool) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let via = Via::setup(&mut g, entry)?;
    let idt = g.scratch(4096, 4096);
    let args = g.scratch(64, 64);
    let seen = g.scratch(8, 8);
    let count = g.scratch(4, 4);
    let mut idtr = Vec::new();
    idtr.extend_from_slice(&4095u16.to_le_bytes());
    idtr.extend_from_slice(&idt.to_le_bytes());
    let idtr_at = g.data(&idtr, 16) as u64;
    let (mut h_cb, mut h_lapic, mut main) = (g.a.create_label(), g.a.create_label(), g.a.create_label());
    g.a.jmp(main)?;
    g.a.set_label(&mut h_cb)?;
    upcall_body(&mut g, seen, count, false)?;
    g.a.set_label(&mut h_lapic)?;
    upcall_body(&mut g, seen, count, true)?;
    g.a.set_label(&mut main)?;
    set_gate(&mut g, idt, CALLBACK_VECTOR, h_cb)?;
    set_gate(&mut g, idt, LAPIC_VECTOR, h_lapic)?;
    g.a.lidt(ptr(idtr_at))?;

    // XENMEM_add_to_physmap {DOMID_SELF, 0, XENMAPSPACE_shared_info, idx 0, gpfn}
    g.a.mov(dword_ptr(args), 0x7ff0u32)?;
    g.a.mov(dword_ptr(args + 4), 0u32)?;
    g.a.mov(qword_ptr(args + 8), 0i32)?;
    g.a.mov(rax, SHARED_INFO_GFN)?;
    g.a.mov(qword_ptr(args + 16), rax)?;
    hypercall(&mut g, via, 12, 7, args, 0)?;
    expect(&mut g, 0, "add_to_physmap")?;
    // vCPU 0's time record is filled in.
    g.a.mov(eax, dword_ptr(SH + 32 + 24))?;
    g.a.sub(rax, 0x7fff_ffff)?; // 2^31 (1 GHz TSC, shift 1) leaves 1
    expect(&mut g, 1, "tsc_to_system_mul")?;
    g.print("shared_info mapped\n")?;

    // HVMOP_set_param(CALLBACK_IRQ, vector type)
    g.a.mov(dword_ptr(args), 0x7ff0u32)?;
    g.a.mov(dword_ptr(args + 4), 0u32)?;
    g.a.mov(rax, 2u64 << 56 | CALLBACK_VECTOR as u64)?;
    g.a.mov(qword_ptr(args + 8), rax)?;
    hypercall(&mut g, via, 34, 0, args, 0)?;
    expect(&mut g, 0, "set_param callback")?;
    // EVTCHNOP_bind_ipi {vcpu 0, port OUT}, then send on it.
    g.a.mov(qword_ptr(args), 0i32)?;
    hypercall(&mut g, via, 32, 7, args, 0)?;
    expect(&mut g, 0, "bind_ipi")?;
    g.a.mov(eax, dword_ptr(args + 4))?;
    g.a.mov(dword_ptr(args + 32), eax)?;
    hypercall(&mut g, via, 32, 4, args + 32, 0)?;
    expect(&mut g, 0, "send")?;
    wait_count(&mut g, count, 1)?;
    g.print("callback vector upcall\n")?;

    // Per-vCPU vector through the LAPIC (software-enabled first).
    g.a.mov(eax, 0xfee0_00f0u32)?; // LAPIC SVR
    g.a.mov(dword_ptr(rax), 0x1ffu32)?;
    g.a.mov(dword_ptr(args), 0u32)?;
    g.a.mov(dword_ptr(args + 4), LAPIC_VECTOR)?;
    hypercall(&mut g, via, 34, 23, args, 0)?;
    expect(&mut g, 0, "set_evtchn_upcall_vector")?;
    hypercall(&mut g, via, 32, 4, args + 32, 0)?;
    expect(&mut g, 0, "send 2")?;
    wait_count(&mut g, count, 2)?;
    g.print("lapic vector upcall\n")?;

    // EVTCHNOP_bind_virq {VIRQ_TIMER, vcpu 0, port OUT}
    g.a.mov(qword_ptr(args), 0i32)?;
    hypercall(&mut g, via, 32, 1, args, 0)?;
    expect(&mut g, 0, "bind_virq")?;
    // A deadline in the past with VCPU_SSHOTTMR_future: -ETIME.
    g.a.mov(qword_ptr(args + 16), 1i32)?;
    g.a.mov(qword_ptr(args + 24), 1i32)?;
    hypercall(&mut g, via, 24, 8, 0, args + 16)?;
    expect(&mut g, -62, "singleshot in the past")?;
    g.print("set_singleshot_timer in the past: -ETIME\n")?;
    if rdtsc {
        // now = system_time + (((rdtsc - tsc_timestamp) << shift) * mul >> 32)
        g.a.rdtsc()?;
        g.a.shl(rdx, 32)?;
        g.a.or(rax, rdx)?;
        g.a.sub(rax, qword_ptr(SH + 32 + 8))?;
        g.a.movzx(ecx, byte_ptr(SH + 32 + 28))?;
        g.a.shl(rax, cl)?;
        g.a.mov(ecx, dword_ptr(SH + 32 + 24))?;
        g.a.mul(rcx)?;
        g.a.shrd(rax, rdx, 32)?;
        g.a.add(rax, qword_ptr(SH + 32 + 16))?;
    } else {
        // now >= system_time as of the last update (at an exit).
        g.a.mov(rax, qword_ptr(SH + 32 + 16))?;
    }
    g.a.add(rax, 200_000)?;
    g.a.mov(qword_ptr(args + 16), rax)?;
    // No VCPU_SSHOTTMR_future this time: on a backend whose time follows the
    // host (KVM) the deadline may have passed by the call, and Xen then
    // fires the timer at once.
    g.a.mov(qword_ptr(args + 24), 0i32)?;
    hypercall(&mut g, via, 24, 8, 0, args + 16)?;
    expect(&mut g, 0, "singleshot")?;
    // Block (interrupts off) until the timer's upcall has been taken.
    let mut again = g.a.create_label();
    g.a.set_label(&mut again)?;
    g.a.cli()?;
    hypercall(&mut g, via, 29, 1, 0, 0)?;
    expect(&mut g, 0, "block")?;
    g.a.sti()?;
    g.a.nop()?;
    g.a.cli()?;
    g.a.mov(ecx, dword_ptr(args + 8))?;
    g.a.mov(rax, qword_ptr(seen))?;
    g.a.bt(rax, rcx)?;
    g.a.jnc(again)?;
    g.print("timer upcall after block\n")?;
    g.exit(0)?;
    g.build(Boot::Pvh)
}

/// Vectors the GSI guest programs into the IOAPIC.
const GSI_VECTOR: u32 = 0x50;
const INTX_VECTOR: u32 = 0x51;
/// The GSI the guest asks for with CALLBACK_IRQ type 0.
pub const CALLBACK_GSI: u32 = 20;
/// Xen's hvm_pci_intx_gsi for device 3 (the platform device), INTA:
/// ((3 << 2) + ((3 >> 3) + 0)) & 31) + 16.
pub const PLATFORM_INTX_GSI: u32 = 28;

/// What `xen_gsi_upcalls` prints when the platform behaves.
pub const XEN_GSI_EXPECTED: &str = "shared_info mapped\ngsi upcall\nline dropped after eoi\ngsi upcall again\n\
pci intx upcall\npci intx of another device: -EINVAL\n";

/// Program IOAPIC pin `pin` to deliver `vector`, level-triggered, active
/// high, fixed, to APIC ID 0 (82093AA redirection entry 0x10 + 2 * pin).
fn route_gsi(g: &mut GuestProgram, pin: u32, vector: u32) -> Result<(), GuestError> {
    g.a.mov(eax, 0xfec0_0000u32)?;
    g.a.mov(dword_ptr(rax), 0x11 + 2 * pin)?;
    g.a.mov(dword_ptr(rax + 0x10), 0u32)?; // destination APIC ID 0
    g.a.mov(dword_ptr(rax), 0x10 + 2 * pin)?;
    g.a.mov(dword_ptr(rax + 0x10), vector | 1 << 15)?; // level, unmasked
    Ok(())
}

/// HVMOP_set_param(HVM_PARAM_CALLBACK_IRQ, `value`) with the args at `args`.
fn set_callback(g: &mut GuestProgram, via: Via, args: u64, value: u64) -> Result<(), GuestError> {
    g.a.mov(dword_ptr(args), 0x7ff0u32)?;
    g.a.mov(dword_ptr(args + 4), 0u32)?;
    g.a.mov(rax, value)?;
    g.a.mov(qword_ptr(args + 8), rax)?;
    hypercall(g, via, 34, 0, args, 0)
}

/// Event-channel upcalls through level-triggered lines (PVH, long mode):
/// CALLBACK_IRQ type 0 (a GSI routed by the IOAPIC) and type 1 (the Xen
/// platform PCI device's INTA). The handler clears upcall_pending before
/// its EOI, so the line must drop: a second interrupt without a second
/// event fails the test. See `XEN_GSI_EXPECTED`.
pub fn xen_gsi_upcalls() -> Result<Vec<u8>, GuestError> {
    xen_gsi_upcalls_via(HypercallEntry::Vmcall)
}

/// The GSI guest with its hypercalls made through `entry`.
pub fn xen_gsi_upcalls_via(entry: HypercallEntry) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let via = Via::setup(&mut g, entry)?;
    let idt = g.scratch(4096, 4096);
    let args = g.scratch(64, 64);
    let seen = g.scratch(8, 8);
    let count = g.scratch(4, 4);
    let mut idtr = Vec::new();
    idtr.extend_from_slice(&4095u16.to_le_bytes());
    idtr.extend_from_slice(&idt.to_le_bytes());
    let idtr_at = g.data(&idtr, 16) as u64;
    let (mut handler, mut main) = (g.a.create_label(), g.a.create_label());
    g.a.jmp(main)?;
    g.a.set_label(&mut handler)?;
    upcall_body(&mut g, seen, count, true)?;
    g.a.set_label(&mut main)?;
    set_gate(&mut g, idt, GSI_VECTOR, handler)?;
    set_gate(&mut g, idt, INTX_VECTOR, handler)?;
    g.a.lidt(ptr(idtr_at))?;

    g.a.mov(dword_ptr(args), 0x7ff0u32)?;
    g.a.mov(dword_ptr(args + 4), 0u32)?;
    g.a.mov(qword_ptr(args + 8), 0i32)?;
    g.a.mov(rax, SHARED_INFO_GFN)?;
    g.a.mov(qword_ptr(args + 16), rax)?;
    hypercall(&mut g, via, 12, 7, args, 0)?;
    expect(&mut g, 0, "add_to_physmap")?;
    g.print("shared_info mapped\n")?;

    g.a.mov(eax, 0xfee0_00f0u32)?; // LAPIC SVR: software enable
    g.a.mov(dword_ptr(rax), 0x1ffu32)?;
    route_gsi(&mut g, CALLBACK_GSI, GSI_VECTOR)?;
    set_callback(&mut g, via, args, CALLBACK_GSI as u64)?;
    expect(&mut g, 0, "set_param callback gsi")?;
    // EVTCHNOP_bind_ipi {vcpu 0, port OUT}; keep the port at args + 32.
    g.a.mov(qword_ptr(args), 0i32)?;
    hypercall(&mut g, via, 32, 7, args, 0)?;
    expect(&mut g, 0, "bind_ipi")?;
    g.a.mov(eax, dword_ptr(args + 4))?;
    g.a.mov(dword_ptr(args + 32), eax)?;
    hypercall(&mut g, via, 32, 4, args + 32, 0)?;
    expect(&mut g, 0, "send")?;
    wait_count(&mut g, count, 1)?;
    g.print("gsi upcall\n")?;

    // With interrupts on for a while, a line that did not drop at EOI
    // would interrupt again.
    g.a.mov(ecx, 20_000u32)?;
    let mut spin = g.a.create_label();
    g.a.sti()?;
    g.a.set_label(&mut spin)?;
    g.a.dec(ecx)?;
    g.a.jnz(spin)?;
    g.a.cli()?;
    g.a.mov(eax, dword_ptr(count))?;
    expect(&mut g, 1, "no upcall without an event")?;
    g.print("line dropped after eoi\n")?;
    hypercall(&mut g, via, 32, 4, args + 32, 0)?;
    expect(&mut g, 0, "send 2")?;
    wait_count(&mut g, count, 2)?;
    g.print("gsi upcall again\n")?;

    // PCI INTx of 00:03.0 pin A: val[63:56] = 1, DevFn in val[15:8].
    route_gsi(&mut g, PLATFORM_INTX_GSI, INTX_VECTOR)?;
    set_callback(&mut g, via, args, 1 << 56 | (3 << 3) << 8)?;
    expect(&mut g, 0, "set_param callback pci intx")?;
    hypercall(&mut g, via, 32, 4, args + 32, 0)?;
    expect(&mut g, 0, "send 3")?;
    wait_count(&mut g, count, 3)?;
    g.print("pci intx upcall\n")?;
    set_callback(&mut g, via, args, 1 << 56 | (4 << 3) << 8)?;
    expect(&mut g, -22, "pci intx of device 4")?;
    g.print("pci intx of another device: -EINVAL\n")?;
    g.exit(0)?;
    g.build(Boot::Pvh)
}

/// What `xen_two_vcpus_via` prints when the platform behaves.
pub const XEN_TWO_VCPUS_EXPECTED: &str = "vcpu 0: shared_info mapped\nvcpu 0: starting vcpu 1\nvcpu 1: up\n\
vcpu 1: vcpu 0 is up\nvcpu 0: vcpu 1 reported in\n";

/// VCPUOP_* used by the two-vCPU guest (xen/include/public/vcpu.h).
const VCPUOP_INITIALISE: u64 = 0;
const VCPUOP_UP: u64 = 1;
const VCPUOP_IS_UP: u64 = 3;

/// Two vCPUs (PVH, long mode; run it on a 2-vCPU machine): vCPU 0 maps
/// shared_info (vcpu_info must exist before VCPUOP_initialise), starts
/// vCPU 1 with VCPUOP_initialise (a 64-bit `vcpu_hvm_context`: its own
/// CR0/CR3/CR4/EFER, a stack of its own, RIP at the AP's code) and
/// VCPUOP_up, then yields until vCPU 1 sets a flag in shared memory. vCPU 1
/// prints, makes a hypercall of its own (VCPUOP_is_up for vCPU 0), sets the
/// flag and stops. See `XEN_TWO_VCPUS_EXPECTED`.
pub fn xen_two_vcpus_via(entry: HypercallEntry) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let via = Via::setup(&mut g, entry)?;
    let args = g.scratch(64, 64);
    let flag = g.scratch(4, 4);
    let ctx = g.scratch(256, 64);
    let ap_stack = g.scratch(4096, 4096) + 4096;
    let (mut ap, mut main) = (g.a.create_label(), g.a.create_label());
    g.a.jmp(main)?;

    // vCPU 1 starts here, in long mode with a flat CS and its own stack.
    g.a.set_label(&mut ap)?;
    g.print("vcpu 1: up\n")?;
    hypercall(&mut g, via, 24, VCPUOP_IS_UP, 0, 0)?;
    expect(&mut g, 1, "vcpu 1: is_up(0)")?;
    g.print("vcpu 1: vcpu 0 is up\n")?;
    g.a.mov(dword_ptr(flag), 1u32)?;
    g.halt()?;

    g.a.set_label(&mut main)?;
    // XENMEM_add_to_physmap {DOMID_SELF, 0, XENMAPSPACE_shared_info, idx 0, gpfn}
    g.a.mov(dword_ptr(args), 0x7ff0u32)?;
    g.a.mov(dword_ptr(args + 4), 0u32)?;
    g.a.mov(qword_ptr(args + 8), 0i32)?;
    g.a.mov(rax, SHARED_INFO_GFN)?;
    g.a.mov(qword_ptr(args + 16), rax)?;
    hypercall(&mut g, via, 12, 7, args, 0)?;
    expect(&mut g, 0, "add_to_physmap")?;
    g.print("vcpu 0: shared_info mapped\n")?;

    // struct vcpu_hvm_context: mode (VCPU_HVM_MODE_64B = 1), pad, then
    // x86_64 regs: rax rcx rdx rbx rsp rbp rsi rdi at 8..72, rip 72,
    // rflags 80, cr0 88, cr3 96, cr4 104, efer 112.
    g.a.mov(dword_ptr(ctx), 1u32)?;
    g.a.mov(rax, ap_stack)?;
    g.a.mov(qword_ptr(ctx + 8 + 4 * 8), rax)?;
    g.a.lea(rax, ptr(ap))?;
    g.a.mov(qword_ptr(ctx + 72), rax)?;
    g.a.mov(qword_ptr(ctx + 80), 2i32)?;
    g.a.mov(rax, cr0)?;
    g.a.mov(qword_ptr(ctx + 88), rax)?;
    g.a.mov(rax, cr3)?;
    g.a.mov(qword_ptr(ctx + 96), rax)?;
    g.a.mov(rax, cr4)?;
    g.a.mov(qword_ptr(ctx + 104), rax)?;
    g.a.mov(ecx, 0xc000_0080u32)?; // IA32_EFER
    g.a.rdmsr()?;
    g.a.shl(rdx, 32)?;
    g.a.or(rax, rdx)?;
    g.a.mov(qword_ptr(ctx + 112), rax)?;
    g.print("vcpu 0: starting vcpu 1\n")?;
    hypercall(&mut g, via, 24, VCPUOP_INITIALISE, 1, ctx)?;
    expect(&mut g, 0, "initialise")?;
    hypercall(&mut g, via, 24, VCPUOP_UP, 1, 0)?;
    expect(&mut g, 0, "up")?;

    // Wait for vCPU 1, giving it the CPU with SCHEDOP_yield.
    let (mut wait, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.set_label(&mut wait)?;
    g.a.cmp(dword_ptr(flag), 1)?;
    g.a.je(done)?;
    hypercall(&mut g, via, 29, 0, 0, 0)?;
    g.a.jmp(wait)?;
    g.a.set_label(&mut done)?;
    g.print("vcpu 0: vcpu 1 reported in\n")?;
    g.exit(0)?;
    g.build(Boot::Pvh)
}
