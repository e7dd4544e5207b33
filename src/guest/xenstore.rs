//! A guest that uses the toolstack's rings the way a PV driver stack does: it finds the
//! xenstore and console rings through HVM params, talks to xenstore over its ring (read,
//! write, directory, watch, a transaction retried on EAGAIN) and prints everything on hvc0
//! (the PV console's out ring), then echoes one line of console input. No interrupts: it
//! signals with EVTCHNOP_send and waits with SCHEDOP_yield, so every wait is a hypercall
//! exit at which the backends run.

use iced_x86::code_asm::*;

use super::asm::{Boot, GuestError, GuestProgram, Mode};
use super::xen::{self, HypercallEntry, Via};

const HVMOP: u32 = 34;
const EVTCHNOP: u32 = 32;
const SCHEDOP: u32 = 29;

/// What the guest prints on hvc0 before it waits for console input.
pub const XENSTORE_GUEST_BANNER: &str = "xenstore guest\n\
domid=1\n\
name=guest\n\
data/greeting=hello\n\
console: backend-id,limit,output,port,ring-ref,tty,type\n\
event: data/watched w1\n\
event: data/watched/leaf w1\n\
commit: EAGAIN\n\
commit: OK\n\
data/counter=2\n\
type a line:\n";

/// The whole transcript when `line` (ending in '\n') is typed.
pub fn xenstore_guest_expected(line: &str) -> String {
    format!("{XENSTORE_GUEST_BANNER}echo: {line}")
}

struct Layout {
    /// Ring addresses and ports: xs ring, xs port, console ring, console port.
    vars: u64,
    args: u64,
    hdr: u64,
    reply: u64,
    event: u64,
    via: Via,
}

impl Layout {
    fn xs(&self) -> u64 {
        self.vars
    }
    fn xs_port(&self) -> u64 {
        self.vars + 8
    }
    fn con(&self) -> u64 {
        self.vars + 16
    }
    fn con_port(&self) -> u64 {
        self.vars + 24
    }
}

fn hypercall(g: &mut GuestProgram, l: &Layout, nr: u32, a1: u64, a2: u64) -> Result<(), GuestError> {
    g.a.mov(rdi, a1)?;
    g.a.mov(rsi, a2)?;
    xen::enter(g, l.via, nr)
}

/// EVTCHNOP_send on the port stored at `port_var`.
fn notify(g: &mut GuestProgram, l: &Layout, port_var: u64) -> Result<(), GuestError> {
    g.a.mov(eax, dword_ptr(port_var))?;
    g.a.mov(dword_ptr(l.args + 32), eax)?;
    hypercall(g, l, EVTCHNOP, 4, l.args + 32)
}

/// hvc_puts: print the NUL-terminated string at RSI on the PV console ring.
fn emit_hvc_puts(g: &mut GuestProgram, l: &Layout) -> Result<(), GuestError> {
    let (mut lp, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.mov(r8, qword_ptr(l.con()))?;
    g.a.mov(ecx, dword_ptr(r8 + 3084))?;
    g.a.set_label(&mut lp)?;
    g.a.nop()?;
    g.a.mov(al, byte_ptr(rsi))?;
    g.a.test(al, al)?;
    g.a.jz(done)?;
    g.a.mov(edx, ecx)?;
    g.a.and(edx, 2047)?;
    g.a.mov(byte_ptr(r8 + rdx + 1024), al)?;
    g.a.inc(ecx)?;
    g.a.inc(rsi)?;
    g.a.jmp(lp)?;
    g.a.set_label(&mut done)?;
    g.a.nop()?;
    g.a.mov(dword_ptr(r8 + 3084), ecx)?;
    notify(g, l, l.con_port())?;
    g.a.ret()?;
    Ok(())
}

/// xs_send: request of type EDI, tx R9D, payload RSI/RDX into the request ring; signal.
fn emit_xs_send(g: &mut GuestProgram, l: &Layout) -> Result<(), GuestError> {
    g.a.mov(dword_ptr(l.hdr), edi)?;
    g.a.mov(dword_ptr(l.hdr + 4), 0x42u32)?;
    g.a.mov(dword_ptr(l.hdr + 8), r9d)?;
    g.a.mov(dword_ptr(l.hdr + 12), edx)?;
    // Copy the header, then the payload: R11 = source, R10 = count left.
    g.a.mov(r8, qword_ptr(l.xs()))?;
    g.a.mov(ecx, dword_ptr(r8 + 2052))?;
    g.a.mov(r11, l.hdr)?;
    g.a.mov(r10d, 16u32)?;
    for part in 0..2 {
        let (mut lp2, mut out) = (g.a.create_label(), g.a.create_label());
        g.a.set_label(&mut lp2)?;
        g.a.nop()?;
        g.a.test(r10, r10)?;
        g.a.jz(out)?;
        g.a.mov(al, byte_ptr(r11))?;
        g.a.mov(edi, ecx)?;
        g.a.and(edi, 1023)?;
        g.a.mov(byte_ptr(r8 + rdi), al)?;
        g.a.inc(ecx)?;
        g.a.inc(r11)?;
        g.a.dec(r10)?;
        g.a.jmp(lp2)?;
        g.a.set_label(&mut out)?;
        g.a.nop()?;
        if part == 0 {
            g.a.mov(r11, rsi)?;
            g.a.mov(r10, rdx)?;
        }
    }
    g.a.mov(dword_ptr(r8 + 2052), ecx)?;
    notify(g, l, l.xs_port())?;
    g.a.ret()?;
    Ok(())
}

/// read_msg: wait for one whole message in the response ring; payload to `reply`
/// (NUL-terminated), EAX = type, ECX = length; consume it and signal.
fn emit_read_msg(g: &mut GuestProgram, l: &Layout) -> Result<(), GuestError> {
    let (mut wait, mut have, mut copy, mut copied) =
        (g.a.create_label(), g.a.create_label(), g.a.create_label(), g.a.create_label());
    g.a.set_label(&mut wait)?;
    g.a.nop()?;
    g.a.mov(r8, qword_ptr(l.xs()))?;
    g.a.mov(ecx, dword_ptr(r8 + 2056))?;
    g.a.mov(edx, dword_ptr(r8 + 2060))?;
    g.a.sub(edx, ecx)?;
    g.a.cmp(edx, 16)?;
    g.a.jae(have)?;
    let mut yield_ = g.a.create_label();
    g.a.set_label(&mut yield_)?;
    g.a.nop()?;
    hypercall(g, l, SCHEDOP, 0, 0)?;
    g.a.jmp(wait)?;
    g.a.set_label(&mut have)?;
    g.a.nop()?;
    // Length word at stream offset cons + 12, byte by byte (it may wrap).
    g.a.xor(r11d, r11d)?;
    for i in (0..4).rev() {
        g.a.lea(edi, dword_ptr(rcx + 12 + i))?;
        g.a.and(edi, 1023)?;
        g.a.shl(r11d, 8)?;
        g.a.mov(r10b, byte_ptr(r8 + rdi + 1024))?;
        g.a.or(r11b, r10b)?;
    }
    g.a.lea(r10d, dword_ptr(r11 + 16))?;
    g.a.cmp(edx, r10d)?;
    g.a.jb(yield_)?;
    // Type word (in EBX: R9 holds the caller's transaction id).
    g.a.xor(ebx, ebx)?;
    for i in (0..4).rev() {
        g.a.lea(edi, dword_ptr(rcx + i))?;
        g.a.and(edi, 1023)?;
        g.a.shl(ebx, 8)?;
        g.a.mov(r10b, byte_ptr(r8 + rdi + 1024))?;
        g.a.or(bl, r10b)?;
    }
    // Payload to `reply`.
    g.a.add(ecx, 16)?;
    g.a.xor(esi, esi)?;
    g.a.set_label(&mut copy)?;
    g.a.nop()?;
    g.a.cmp(esi, r11d)?;
    g.a.jae(copied)?;
    g.a.mov(edi, ecx)?;
    g.a.and(edi, 1023)?;
    g.a.mov(al, byte_ptr(r8 + rdi + 1024))?;
    g.a.mov(rdi, l.reply)?;
    g.a.mov(byte_ptr(rdi + rsi), al)?;
    g.a.inc(ecx)?;
    g.a.inc(esi)?;
    g.a.jmp(copy)?;
    g.a.set_label(&mut copied)?;
    g.a.nop()?;
    g.a.mov(rdi, l.reply)?;
    g.a.mov(byte_ptr(rdi + rsi), 0u32)?;
    g.a.mov(dword_ptr(r8 + 2056), ecx)?;
    g.a.push(rbx)?;
    g.a.push(r11)?;
    notify(g, l, l.xs_port())?;
    g.a.pop(rcx)?;
    g.a.pop(rax)?;
    g.a.ret()?;
    Ok(())
}

/// xs_call: xs_send, then read messages until the reply; each watch event on the way is
/// kept in `event` as "path token" text.
fn emit_xs_call(g: &mut GuestProgram, l: &Layout, send: CodeLabel, read: CodeLabel) -> Result<(), GuestError> {
    let (mut again, mut keep, mut lp, mut end) =
        (g.a.create_label(), g.a.create_label(), g.a.create_label(), g.a.create_label());
    g.a.call(send)?;
    g.a.set_label(&mut again)?;
    g.a.nop()?;
    g.a.call(read)?;
    g.a.cmp(eax, 15)?;
    g.a.je(keep)?;
    g.a.ret()?;
    g.a.set_label(&mut keep)?;
    g.a.nop()?;
    // Copy "path\0token\0" as "path token" (ECX bytes; the last NUL ends the string).
    g.a.mov(rsi, l.reply)?;
    g.a.mov(rdi, l.event)?;
    g.a.set_label(&mut lp)?;
    g.a.nop()?;
    g.a.test(ecx, ecx)?;
    g.a.jz(end)?;
    g.a.mov(al, byte_ptr(rsi))?;
    let mut store = g.a.create_label();
    g.a.test(al, al)?;
    g.a.jnz(store)?;
    g.a.mov(al, b' ' as u32)?;
    g.a.set_label(&mut store)?;
    g.a.nop()?;
    g.a.mov(byte_ptr(rdi), al)?;
    g.a.inc(rsi)?;
    g.a.inc(rdi)?;
    g.a.dec(ecx)?;
    g.a.jmp(lp)?;
    g.a.set_label(&mut end)?;
    g.a.nop()?;
    g.a.mov(byte_ptr(rdi - 1), 0u32)?;
    g.a.jmp(again)?;
    Ok(())
}

struct Ops {
    call: CodeLabel,
    puts: CodeLabel,
}

/// Emit an xs_call of `ty` with payload `payload` in transaction R9 (kept as it is).
fn xs(g: &mut GuestProgram, ops: &Ops, ty: u32, payload: &[u8]) -> Result<(), GuestError> {
    let at = g.data(payload, 1);
    g.a.mov(edi, ty)?;
    g.a.mov(esi, at)?;
    g.a.mov(edx, payload.len() as u32)?;
    g.a.call(ops.call)?;
    Ok(())
}

fn hvc(g: &mut GuestProgram, ops: &Ops, s: &str) -> Result<(), GuestError> {
    let at = g.cstr(s);
    g.a.mov(esi, at)?;
    g.a.call(ops.puts)?;
    Ok(())
}

fn hvc_at(g: &mut GuestProgram, ops: &Ops, addr: u64) -> Result<(), GuestError> {
    g.a.mov(rsi, addr)?;
    g.a.call(ops.puts)?;
    Ok(())
}

/// Fail (print on hvc0, exit status 1) unless EAX == `ty`.
fn expect(g: &mut GuestProgram, ops: &Ops, l: &Layout, ty: u32, step: &str) -> Result<(), GuestError> {
    let mut ok = g.a.create_label();
    g.a.cmp(eax, ty)?;
    g.a.je(ok)?;
    hvc(g, ops, &format!("FAIL {step}: "))?;
    hvc_at(g, ops, l.reply)?;
    hvc(g, ops, "\n")?;
    g.exit(1)?;
    g.a.set_label(&mut ok)?;
    g.a.nop()?;
    g.a.nop()?;
    Ok(())
}

/// TRANSACTION_START; the decimal id in the reply goes to R9.
fn tx_start(g: &mut GuestProgram, ops: &Ops, l: &Layout) -> Result<(), GuestError> {
    g.a.xor(r9d, r9d)?;
    xs(g, ops, 6, b"\0")?;
    expect(g, ops, l, 6, "transaction_start")?;
    let (mut lp, mut done) = (g.a.create_label(), g.a.create_label());
    g.a.mov(rsi, l.reply)?;
    g.a.xor(r9d, r9d)?;
    g.a.set_label(&mut lp)?;
    g.a.nop()?;
    g.a.movzx(eax, byte_ptr(rsi))?;
    g.a.test(eax, eax)?;
    g.a.jz(done)?;
    g.a.imul_3(r9d, r9d, 10)?;
    g.a.lea(r9d, dword_ptr(r9 + rax - 0x30))?;
    g.a.inc(rsi)?;
    g.a.jmp(lp)?;
    g.a.set_label(&mut done)?;
    g.a.nop()?;
    g.a.nop()?;
    Ok(())
}

/// The xenstore guest (PVH, long mode). See [`xenstore_guest_expected`].
pub fn xenstore_guest() -> Result<Vec<u8>, GuestError> {
    xenstore_guest_via(HypercallEntry::Vmcall)
}

/// The xenstore guest with its hypercalls made through `entry`.
pub fn xenstore_guest_via(entry: HypercallEntry) -> Result<Vec<u8>, GuestError> {
    let mut g = GuestProgram::new(Mode::Long64)?;
    let via = Via::setup(&mut g, entry)?;
    let l = Layout {
        via,
        vars: g.scratch(64, 64),
        args: g.scratch(64, 64),
        hdr: g.scratch(16, 16),
        reply: g.scratch(4200, 64),
        event: g.scratch(4200, 64),
    };
    let (mut puts, mut send, mut read, mut call, mut main) =
        (g.a.create_label(), g.a.create_label(), g.a.create_label(), g.a.create_label(), g.a.create_label());
    g.a.jmp(main)?;
    g.a.set_label(&mut puts)?;
    g.a.nop()?;
    emit_hvc_puts(&mut g, &l)?;
    g.a.set_label(&mut send)?;
    g.a.nop()?;
    emit_xs_send(&mut g, &l)?;
    g.a.set_label(&mut read)?;
    g.a.nop()?;
    emit_read_msg(&mut g, &l)?;
    g.a.set_label(&mut call)?;
    g.a.nop()?;
    emit_xs_call(&mut g, &l, send, read)?;
    let ops = Ops { call, puts };

    g.a.set_label(&mut main)?;
    g.a.nop()?;
    // HVMOP_get_param for STORE_PFN 1, STORE_EVTCHN 2, CONSOLE_PFN 17, CONSOLE_EVTCHN 18.
    for (i, (param, pfn)) in [(1u32, true), (2, false), (17, true), (18, false)].into_iter().enumerate() {
        g.a.mov(word_ptr(l.args), 0x7ff0u32)?;
        g.a.mov(dword_ptr(l.args + 4), param)?;
        hypercall(&mut g, &l, HVMOP, 1, l.args)?;
        g.a.mov(rax, qword_ptr(l.args + 8))?;
        if pfn {
            g.a.shl(rax, 12)?;
        }
        g.a.mov(qword_ptr(l.vars + 8 * i as u64), rax)?;
    }
    hvc(&mut g, &ops, "xenstore guest\n")?;
    g.a.xor(r9d, r9d)?;

    for (path, label) in [("domid", "domid="), ("name", "name=")] {
        xs(&mut g, &ops, 2, format!("{path}\0").as_bytes())?;
        expect(&mut g, &ops, &l, 2, path)?;
        hvc(&mut g, &ops, label)?;
        hvc_at(&mut g, &ops, l.reply)?;
        hvc(&mut g, &ops, "\n")?;
    }

    xs(&mut g, &ops, 11, b"data/greeting\0hello")?;
    expect(&mut g, &ops, &l, 11, "write")?;
    xs(&mut g, &ops, 2, b"data/greeting\0")?;
    expect(&mut g, &ops, &l, 2, "read back")?;
    hvc(&mut g, &ops, "data/greeting=")?;
    hvc_at(&mut g, &ops, l.reply)?;
    hvc(&mut g, &ops, "\n")?;

    // DIRECTORY: NUL-separated names; print them comma-separated.
    xs(&mut g, &ops, 1, b"console\0")?;
    expect(&mut g, &ops, &l, 1, "directory")?;
    {
        let (mut lp, mut done, mut keep) = (g.a.create_label(), g.a.create_label(), g.a.create_label());
        g.a.mov(rsi, l.reply)?;
        g.a.dec(ecx)?; // the last NUL ends the string
        g.a.set_label(&mut lp)?;
        g.a.nop()?;
        g.a.test(ecx, ecx)?;
        g.a.jz(done)?;
        g.a.cmp(byte_ptr(rsi), 0)?;
        g.a.jne(keep)?;
        g.a.mov(byte_ptr(rsi), b',' as u32)?;
        g.a.set_label(&mut keep)?;
        g.a.nop()?;
        g.a.inc(rsi)?;
        g.a.dec(ecx)?;
        g.a.jmp(lp)?;
        g.a.set_label(&mut done)?;
        g.a.nop()?;
        g.a.nop()?;
    }
    hvc(&mut g, &ops, "console: ")?;
    hvc_at(&mut g, &ops, l.reply)?;
    hvc(&mut g, &ops, "\n")?;

    // WATCH: the registration event, then one for a write below it.
    xs(&mut g, &ops, 4, b"data/watched\0w1\0")?;
    expect(&mut g, &ops, &l, 4, "watch")?;
    // The registration event follows the reply: read it explicitly.
    g.a.call(read)?;
    expect(&mut g, &ops, &l, 15, "watch event")?;
    hvc(&mut g, &ops, "event: data/watched w1\n")?;
    xs(&mut g, &ops, 11, b"data/watched/leaf\0x")?;
    expect(&mut g, &ops, &l, 11, "write leaf")?;
    hvc(&mut g, &ops, "event: ")?;
    hvc_at(&mut g, &ops, l.event)?;
    hvc(&mut g, &ops, "\n")?;

    // A transaction whose read node changes before the commit: EAGAIN, then a retry.
    xs(&mut g, &ops, 11, b"data/counter\x000")?;
    expect(&mut g, &ops, &l, 11, "counter")?;
    for attempt in 0..2 {
        tx_start(&mut g, &ops, &l)?;
        xs(&mut g, &ops, 2, b"data/counter\0")?;
        expect(&mut g, &ops, &l, 2, "tx read")?;
        if attempt == 0 {
            // Another writer (outside the transaction) changes it.
            g.a.push(r9)?;
            g.a.xor(r9d, r9d)?;
            xs(&mut g, &ops, 11, b"data/counter\x001")?;
            g.a.pop(r9)?;
        }
        xs(&mut g, &ops, 11, b"data/counter\x002")?;
        expect(&mut g, &ops, &l, 11, "tx write")?;
        xs(&mut g, &ops, 7, b"T\0")?;
        if attempt == 0 {
            expect(&mut g, &ops, &l, 16, "commit should conflict")?;
            hvc(&mut g, &ops, "commit: ")?;
            hvc_at(&mut g, &ops, l.reply)?;
            hvc(&mut g, &ops, "\n")?;
        } else {
            expect(&mut g, &ops, &l, 7, "commit")?;
            hvc(&mut g, &ops, "commit: OK\n")?;
        }
    }
    g.a.xor(r9d, r9d)?;
    xs(&mut g, &ops, 2, b"data/counter\0")?;
    expect(&mut g, &ops, &l, 2, "counter after")?;
    hvc(&mut g, &ops, "data/counter=")?;
    hvc_at(&mut g, &ops, l.reply)?;
    hvc(&mut g, &ops, "\n")?;

    // Echo one line of console input (the in ring), then stop.
    hvc(&mut g, &ops, "type a line:\n")?;
    let line = l.event;
    {
        let (mut wait, mut got, mut done) = (g.a.create_label(), g.a.create_label(), g.a.create_label());
        g.a.xor(r12d, r12d)?; // bytes of the line so far
        g.a.set_label(&mut wait)?;
        g.a.nop()?;
        g.a.mov(r8, qword_ptr(l.con()))?;
        g.a.mov(ecx, dword_ptr(r8 + 3072))?;
        g.a.cmp(ecx, dword_ptr(r8 + 3076))?;
        g.a.jne(got)?;
        hypercall(&mut g, &l, SCHEDOP, 0, 0)?;
        g.a.jmp(wait)?;
        g.a.set_label(&mut got)?;
        g.a.nop()?;
        g.a.mov(edx, ecx)?;
        g.a.and(edx, 1023)?;
        g.a.mov(al, byte_ptr(r8 + rdx))?;
        g.a.inc(ecx)?;
        g.a.mov(dword_ptr(r8 + 3072), ecx)?;
        g.a.mov(rdi, line)?;
        g.a.mov(byte_ptr(rdi + r12), al)?;
        g.a.inc(r12)?;
        g.a.cmp(al, b'\n' as u32)?;
        g.a.je(done)?;
        g.a.cmp(r12, 1000)?;
        g.a.jb(wait)?;
        g.a.set_label(&mut done)?;
        g.a.nop()?;
        g.a.mov(rdi, line)?;
        g.a.mov(byte_ptr(rdi + r12), 0u32)?;
    }
    hvc(&mut g, &ops, "echo: ")?;
    hvc_at(&mut g, &ops, line)?;
    g.exit(0)?;
    g.build(Boot::Pvh)
}
