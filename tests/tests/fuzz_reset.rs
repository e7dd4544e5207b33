//! The `hypercall` target keeps one platform per shape and resets it between
//! inputs instead of building a new one. The reset must be exact: an input's
//! trace (every call's result, then the whole state it left) is the same
//! whatever ran before it, and the same as on a platform built for it alone.

use std::path::Path;

use xen_model::fuzzing::decode;
use xen_model::fuzzing::hypercall::{run_traced, Arg, Hypercall, Input, Step, Trace};

const DOMID_SELF: u16 = 0x7ff0;

fn poke(at: u16, bytes: Vec<u8>) -> Step {
    Step::Poke { at, bytes }
}

fn call(hc: Hypercall, sub: u8, args: [Arg; 3]) -> Step {
    Step::Call { vcpu: 0, hc, sub, args }
}

fn le(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Callback vector, shared_info mapped inside the window, a port, grant v2
/// with a frame in the physmap, a timer, dom0 signalling: state in every
/// part the reset restores.
fn input_a() -> Input {
    let self_ = DOMID_SELF.to_le_bytes();
    let imm0 = Arg::Imm(0);
    Input {
        vcpus: 1,
        compat: false,
        rings: true,
        steps: vec![
            // HVMOP_set_param(HVM_PARAM_CALLBACK_IRQ, vector 0xf3).
            poke(0, le(&[&self_, &[0; 2], &0u32.to_le_bytes(), &(2u64 << 56 | 0xf3).to_le_bytes()])),
            call(Hypercall::HvmOp, 0, [Arg::Ptr(0), imm0, imm0]),
            // XENMEM_add_to_physmap(shared_info) at gfn 0x18 (inside the window).
            poke(0x100, le(&[&self_, &[0; 2], &0u32.to_le_bytes(), &0u64.to_le_bytes(), &0x18u64.to_le_bytes()])),
            call(Hypercall::MemoryOp, 7, [Arg::Ptr(0x100), imm0, imm0]),
            // EVTCHNOP_alloc_unbound(remote dom0), then send on it.
            poke(0x200, le(&[&self_, &0u16.to_le_bytes(), &0u32.to_le_bytes()])),
            call(Hypercall::EventChannelOp, 6, [Arg::Ptr(0x200), imm0, imm0]),
            // GNTTABOP_set_version(2), shared frame 0 at gfn 0x1a.
            poke(0x300, 2u32.to_le_bytes().to_vec()),
            call(Hypercall::GrantTableOp, 8, [Arg::Ptr(0x300), Arg::Imm(1), imm0]),
            poke(0x400, le(&[&self_, &[0; 2], &1u32.to_le_bytes(), &0u64.to_le_bytes(), &0x1au64.to_le_bytes()])),
            call(Hypercall::MemoryOp, 7, [Arg::Ptr(0x400), imm0, imm0]),
            Step::Grant { gref: 9, flags: 1, domid: 0, frame: 0x12 },
            Step::BackendMap { refs: vec![9], writable: true },
            Step::BackendAllocUnbound,
            Step::BackendNotify(1),
            Step::Sync,
            call(Hypercall::SetTimerOp, 0, [Arg::Raw(5_000_000), imm0, imm0]),
            Step::Advance(7_000_000),
            Step::Timer { kind: 1, vcpu: 0 },
            Step::Ack(0),
            call(Hypercall::XenVersion, 0, [imm0, imm0, imm0]),
        ],
    }
}

/// The same shape, touching other RAM, other ports, grant v1 and the
/// console, so that anything it leaves behind shows in A's trace.
fn input_b() -> Input {
    let self_ = DOMID_SELF.to_le_bytes();
    let imm0 = Arg::Imm(0);
    let mut steps =
        vec![poke(0x8000, vec![0xa5; 600]), poke(0x200, le(&[&self_, &0u16.to_le_bytes(), &0u32.to_le_bytes()]))];
    for _ in 0..5 {
        steps.push(call(Hypercall::EventChannelOp, 6, [Arg::Ptr(0x200), imm0, imm0]));
    }
    steps.extend([
        // Shared_info elsewhere, a different callback vector, console output.
        poke(0x100, le(&[&self_, &[0; 2], &0u32.to_le_bytes(), &0u64.to_le_bytes(), &0x1cu64.to_le_bytes()])),
        call(Hypercall::MemoryOp, 7, [Arg::Ptr(0x100), imm0, imm0]),
        poke(0, le(&[&self_, &[0; 2], &0u32.to_le_bytes(), &(2u64 << 56 | 0x40).to_le_bytes()])),
        call(Hypercall::HvmOp, 0, [Arg::Ptr(0), imm0, imm0]),
        poke(0x900, b"hello from B\n".to_vec()),
        call(Hypercall::ConsoleIo, 0, [Arg::Imm(13), Arg::Ptr(0x900), imm0]),
        Step::Grant { gref: 3, flags: 1, domid: 0, frame: 0x13 },
        Step::BackendMap { refs: vec![3], writable: false },
        Step::BackendBind(4),
        Step::Mask { port: 3, masked: true },
        call(Hypercall::SetTimerOp, 0, [Arg::Raw(9_000_000), imm0, imm0]),
        Step::Advance(123),
        Step::Sync,
    ]);
    Input { vcpus: 1, compat: false, rings: true, steps }
}

fn traced(input: &Input, fresh: bool) -> Trace {
    let (result, trace) = run_traced(input, fresh);
    assert_eq!(result, Ok(()), "{input:?}");
    trace
}

#[test]
fn an_input_after_another_leaves_the_same_trace_as_on_a_fresh_platform() {
    let (a, b) = (input_a(), input_b());
    let fresh_a = traced(&a, true);
    let fresh_b = traced(&b, true);
    // Not a trivial input: its calls succeeded and the state shows them.
    let rax: Vec<i64> = fresh_a.calls.iter().map(|c| c.0).collect();
    assert_eq!(rax, [0, 0, 0, 0, 0, 0, 4 << 16 | 17], "every call succeeded; XENVER_version 4.17");
    assert!(fresh_a.overlays.iter().any(|o| o.0 == 0x18), "shared_info mapped at gfn 0x18");
    assert!(fresh_b.console.starts_with(b"hello from B"), "B wrote the console");
    assert_ne!(fresh_a.ram, fresh_b.ram);

    let a1 = traced(&a, false);
    let b1 = traced(&b, false);
    let a2 = traced(&a, false);
    assert!(a1 == fresh_a, "A on the reset platform differs from A on a fresh one");
    assert!(b1 == fresh_b, "B after A differs from B on a fresh platform");
    assert!(a2 == fresh_a, "A after B differs from A on a fresh platform");
}

/// Every committed hypercall input (seeds and regressions) and a spread of
/// pseudo-random ones, run back to back in two orders on the reset
/// platforms: each trace equals the input's trace on a fresh platform.
#[test]
fn every_seed_and_random_input_is_independent_of_what_ran_before() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for dir in ["corpus/hypercall", "regressions/hypercall"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            inputs.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
        }
    }
    assert!(inputs.len() >= 10, "hypercall seeds present");
    // xorshift64: reproducible bytes, no dependency.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..150 {
        let bytes: Vec<u8> = (0..64 + n * 5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        inputs.push(bytes);
    }
    let decoded: Vec<Input> = inputs.iter().filter_map(|b| decode::<Input>(b)).collect();
    let fresh: Vec<_> = decoded.iter().map(|i| run_traced(i, true)).collect();
    let order: Vec<usize> = (0..decoded.len()).chain((0..decoded.len()).rev()).collect();
    for i in order {
        let warm = run_traced(&decoded[i], false);
        assert!(warm == fresh[i], "input {i} differs after a reset: {:?}", decoded[i]);
    }
}
