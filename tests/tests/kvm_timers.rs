//! LAPIC timers on both backends: one-shot, periodic and TSC-deadline, each
//! delivering its vector through the IDT to a guest that waits with HLT.
//! The guest checks the architecture itself (current count 0 after a
//! one-shot expiry; no interrupt before the programmed time has passed on
//! its own TSC; the deadline MSR reads 0 after expiry, SDM vol. 3 11.5.4.1)
//! and prints one line per mode; any failure prints "FAIL <step>" and exits
//! with status 1. On KVM the machine's clock follows the guest TSC.

use iced_x86::code_asm::*;
use kvm_backend::KvmVm;
use sim_core::machine::{MachineConfig, StopReason};
use xensim::guest::{Boot, GuestError, GuestProgram, Mode};
use xensim_tests::lapic::{apic_write, counting_timer_prologue, APIC};
use xensim_tests::{boot, boot_on, Run};

const VECTOR: u32 = 0x40;
const EXPECTED: &str = "one-shot\nperiodic x5\ntsc-deadline\n";

/// RDX:RAX = TSC as one 64-bit value in RAX.
fn rdtsc64(g: &mut GuestProgram) -> Result<(), GuestError> {
    g.a.rdtsc()?;
    g.a.shl(rdx, 32)?;
    g.a.or(rax, rdx)?;
    Ok(())
}

/// Fail with `step` unless the flags say "above or equal" (unsigned).
fn expect_ae(g: &mut GuestProgram, step: &str) -> Result<(), GuestError> {
    let mut ok = g.a.create_label();
    g.a.jae(ok)?;
    g.print(&format!("FAIL {step}: "))?;
    g.print_hex()?;
    g.print("\n")?;
    g.exit(1)?;
    g.a.set_label(&mut ok)?;
    g.a.nop()?;
    Ok(())
}

/// HLT with interrupts on until the u32 at `count` reaches `n`.
fn wait_for(g: &mut GuestProgram, count: u64, n: u32) -> Result<(), GuestError> {
    let (mut top, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.set_label(&mut top)?;
    g.a.cli()?;
    g.a.cmp(dword_ptr(count), n)?;
    g.a.jae(done)?;
    g.a.sti()?;
    g.a.hlt()?; // in STI's shadow: no interrupt is lost in between
    g.a.jmp(top)?;
    g.a.set_label(&mut done)?;
    g.a.nop()?;
    Ok(())
}

/// Elapsed TSC since R12 must be at least `ticks` (1 GHz TSC, 1 GHz APIC
/// bus at divide-by-1: one timer tick is one TSC tick).
fn expect_elapsed(g: &mut GuestProgram, ticks: u32, step: &str) -> Result<(), GuestError> {
    rdtsc64(g)?;
    g.a.sub(rax, r12)?;
    g.a.cmp(rax, ticks as i32)?;
    expect_ae(g, step)
}

fn timer_guest() -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let count = counting_timer_prologue(&mut g, VECTOR)?;

    // One-shot: 1 ms.
    apic_write(&mut g, 0x320, VECTOR)?;
    rdtsc64(&mut g)?;
    g.a.mov(r12, rax)?;
    apic_write(&mut g, 0x380, 1_000_000)?;
    wait_for(&mut g, count, 1)?;
    expect_elapsed(&mut g, 1_000_000, "one-shot early")?;
    g.a.mov(eax, APIC + 0x390)?;
    g.a.mov(eax, dword_ptr(rax))?;
    g.a.cmp(eax, 0)?;
    g.a.sete(al)?;
    g.a.cmp(al, 1)?;
    expect_ae(&mut g, "one-shot current count")?;
    g.print("one-shot\n")?;

    // Periodic: five periods of 2 ms, then stopped (initial count 0).
    apic_write(&mut g, 0x320, VECTOR | 1 << 17)?;
    rdtsc64(&mut g)?;
    g.a.mov(r12, rax)?;
    apic_write(&mut g, 0x380, 2_000_000)?;
    wait_for(&mut g, count, 6)?;
    apic_write(&mut g, 0x380, 0)?;
    expect_elapsed(&mut g, 5 * 2_000_000, "periodic early")?;
    g.print("periodic x5\n")?;

    // TSC-deadline: 1 ms ahead, armed through IA32_TSC_DEADLINE.
    apic_write(&mut g, 0x320, VECTOR | 2 << 17)?;
    rdtsc64(&mut g)?;
    g.a.mov(r12, rax)?;
    g.a.add(rax, 1_000_000)?;
    g.a.mov(rdx, rax)?;
    g.a.shr(rdx, 32)?;
    g.a.mov(ecx, sim_core::msr::IA32_TSC_DEADLINE)?;
    g.a.wrmsr()?;
    wait_for(&mut g, count, 7)?;
    expect_elapsed(&mut g, 1_000_000, "tsc-deadline early")?;
    g.a.mov(ecx, sim_core::msr::IA32_TSC_DEADLINE)?;
    g.a.rdmsr()?;
    g.a.or(eax, edx)?;
    g.a.cmp(eax, 1)?; // CF set exactly when EAX = 0
    let mut zero = g.a.create_label();
    g.a.jb(zero)?;
    g.print("FAIL tsc-deadline msr not cleared\n")?;
    g.exit(1)?;
    g.a.set_label(&mut zero)?;
    g.print("tsc-deadline\n")?;
    g.exit(0)?;
    g.build(Boot::Pvh)
}

fn run() -> Run {
    Run {
        config: MachineConfig { memory_mib: 64, max_instructions: Some(50_000_000), ..Default::default() },
        ..Run::default()
    }
}

#[test]
fn lapic_timers_on_the_interpreter() {
    let out = boot(timer_guest().unwrap(), &run());
    assert_eq!(out.output, EXPECTED);
    assert_eq!(out.stop, StopReason::DebugExit(1));
}

#[test]
fn lapic_timers_on_kvm() {
    let vm = match KvmVm::new() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skipping lapic_timers_on_kvm: {e}");
            return;
        }
    };
    let out = boot_on(timer_guest().unwrap(), &run(), &mut |id, n, cpuid| vm.create_vcpu(id, n, cpuid));
    assert_eq!(out.output, EXPECTED);
    assert_eq!(out.stop, StopReason::DebugExit(1));
}
