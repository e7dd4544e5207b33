//! Guest pieces for the LAPIC timer tests: the xAPIC register window and a
//! prologue that installs a tick-counting interrupt handler.

use iced_x86::code_asm::*;
use xensim::guest::asm::CODE64_SEL;
use xensim::guest::{GuestError, GuestProgram};

/// The xAPIC MMIO base.
pub const APIC: u32 = 0xfee0_0000;

/// `mov [APIC + reg], value` (clobbers RAX).
pub fn apic_write(g: &mut GuestProgram, reg: u32, value: u32) -> Result<(), GuestError> {
    g.a.mov(eax, APIC + reg)?;
    g.a.mov(dword_ptr(rax), value)?;
    Ok(())
}

/// In a long-mode guest: an IDT whose `vector` entry counts ticks into a
/// dword and EOIs, loaded; the LAPIC software-enabled with its timer divide
/// by 1 (one timer tick per TSC tick at the 1 GHz bus). Returns the
/// counter's address.
pub fn counting_timer_prologue(g: &mut GuestProgram, vector: u32) -> Result<u64, GuestError> {
    let idt = g.scratch(4096, 4096);
    let count = g.scratch(4, 4);
    let mut idtr = 4095u16.to_le_bytes().to_vec();
    idtr.extend_from_slice(&idt.to_le_bytes());
    let idtr_at = g.data(&idtr, 16) as u64;
    let (mut handler, mut main) = (g.a.create_label(), g.a.create_label());
    g.a.jmp(main)?;
    g.a.set_label(&mut handler)?;
    g.a.push(rax)?;
    g.a.inc(dword_ptr(count))?;
    g.a.mov(eax, APIC + 0xb0)?; // EOI
    g.a.mov(dword_ptr(rax), 0u32)?;
    g.a.pop(rax)?;
    g.a.iretq()?;
    g.a.set_label(&mut main)?;
    let e = idt + u64::from(vector) * 16;
    g.a.lea(rax, ptr(handler))?;
    g.a.mov(word_ptr(e), ax)?;
    g.a.mov(word_ptr(e + 2), CODE64_SEL as u32)?;
    g.a.mov(word_ptr(e + 4), 0x8e00u32)?;
    g.a.shr(rax, 16)?;
    g.a.mov(word_ptr(e + 6), ax)?;
    g.a.lidt(ptr(idtr_at))?;
    apic_write(g, 0xf0, 0x1ff)?; // SVR: software enable
    apic_write(g, 0x3e0, 0xb)?; // divide by 1
    Ok(count)
}
