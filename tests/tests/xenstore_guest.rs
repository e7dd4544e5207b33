//! A guest using the toolstack's rings, on the interpreter and on KVM: xenstore over its ring,
//! output on hvc0 (the PV console ring), console input through the door; and socket
//! clients (a Rust one and Debian's xenstore-write/read) next to it.

use sim_core::door::{Input, ScriptDoor};
use sim_core::machine::{Machine, MachineConfig, StopReason};
use xen_model::{XenConfig, XenPlatform};
use xensim::guest::xen::HypercallEntry;
use xensim::guest::xenstore;
use xensim_tests::{kvm_or_skip, xen_machine, Capture, Cpu};

fn machine_on(entry: HypercallEntry, cpu: Cpu<'_>, setup: impl FnOnce(&mut XenPlatform)) -> (Machine, Capture) {
    let config = MachineConfig { memory_mib: 64, max_instructions: Some(200_000_000), ..Default::default() };
    let kernel = xenstore::xenstore_guest_via(entry).unwrap();
    xen_machine(kernel, config, XenConfig::default().with_pv_rings(), cpu, setup)
}

fn machine(setup: impl FnOnce(&mut XenPlatform)) -> (Machine, Capture) {
    machine_on(HypercallEntry::Vmcall, Cpu::Interp, setup)
}

/// Run the guest through `entry` on `cpu`, typing a line once it waits.
fn echo_run(entry: HypercallEntry, cpu: Cpu<'_>) {
    let (mut m, cap) = machine_on(entry, cpu, |_| {});
    // On the interpreter the line arrives well after the guest starts
    // waiting for it. KVM does not count instructions (the machine's count
    // stays 0), so there it is typed ahead, before the guest runs.
    let at = if matches!(cpu, Cpu::Interp) { 3_000_000 } else { 0 };
    m.set_door(Box::new(ScriptDoor::new(vec![(at, Input::Console(b"hello ring\n".to_vec()))])));
    let stop = m.run().expect("run");
    assert_eq!(cap.text(), xenstore::xenstore_guest_expected("hello ring\n"), "{entry:?}");
    assert_eq!(stop, StopReason::DebugExit(1), "exit(0) is QEMU status 1");
}

#[test]
fn guest_talks_xenstore_over_its_ring_and_prints_on_hvc0_and_echoes_console_input() {
    echo_run(HypercallEntry::Vmcall, Cpu::Interp);
}

#[test]
fn the_same_through_the_hypercall_page_and_a_vmcall_function() {
    echo_run(HypercallEntry::Page, Cpu::Interp);
    echo_run(HypercallEntry::Function, Cpu::Interp);
}

#[test]
fn the_same_on_kvm() {
    let Some(vm) = kvm_or_skip("the_same_on_kvm") else { return };
    echo_run(HypercallEntry::Page, Cpu::Kvm(&vm));
    // A VM per machine: vCPU ids are per VM.
    let vm = kvm_backend::KvmVm::new().unwrap();
    echo_run(HypercallEntry::Function, Cpu::Kvm(&vm));
}

/// Bytes sent on a channel, as a stream (EOF once the sender is dropped).
struct ChannelReader(std::sync::mpsc::Receiver<Vec<u8>>, Vec<u8>);

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.1.is_empty() {
            match self.0.recv() {
                Ok(bytes) => self.1 = bytes,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.1.len());
        buf[..n].copy_from_slice(&self.1[..n]);
        self.1.drain(..n);
        Ok(n)
    }
}

/// Debian's xenstore-read/write on the socket of a guest running on `cpu`;
/// the guest's console line ("bye") comes once the client is done.
fn socket_run(cpu: Cpu<'_>) {
    use xen_model::xenstore::socket_door::{SharedSocket, SocketDoor};
    let backend = if matches!(cpu, Cpu::Interp) { "interp" } else { "kvm" };
    let path = std::env::temp_dir().join(format!("xensim-xs-{}-{backend}.sock", std::process::id()));
    let sock = SharedSocket::bind(&path).expect("bind");
    let sink = sock.clone();
    let set_sink = move |p: &mut XenPlatform| p.set_xenstore_sink(Box::new(sink));
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (mut m, cap) = match cpu {
        // The guest waits for its line until well after the client is done.
        Cpu::Interp => {
            let (mut m, cap) = machine(set_sink);
            let script = ScriptDoor::new(vec![(60_000_000, Input::Console(b"bye\n".to_vec()))]);
            m.set_door(Box::new(SocketDoor::new(Box::new(script), sock)));
            (m, cap)
        }
        // KVM counts no instructions: the line is typed when the client is done.
        Cpu::Kvm(_) => {
            let (mut m, cap) = machine_on(HypercallEntry::Page, cpu, set_sink);
            let mut live = sim_core::door::LiveDoor::new();
            live.add_stream(sim_core::door::Target::Console, Box::new(ChannelReader(rx, Vec::new())));
            m.set_door(Box::new(SocketDoor::new(Box::new(live), sock)));
            (m, cap)
        }
    };
    let p = path.clone();
    let client = std::thread::spawn(move || {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("timeout")
                .arg("20")
                .args(args)
                .env("XENSTORED_PATH", &p)
                .output()
                .expect("spawn");
            (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let name = run(&["xenstore-read", "/local/domain/1/name"]);
        let wrote = run(&["xenstore-write", "/local/domain/1/data/from-host", "hi"]);
        let back = run(&["xenstore-read", "/local/domain/1/data/from-host"]);
        let _ = tx.send(b"bye\n".to_vec());
        (name, wrote, back)
    });
    let stop = m.run().expect("run");
    let (name, wrote, back) = client.join().unwrap();
    assert_eq!(name, (true, "guest".to_owned()));
    assert!(wrote.0);
    assert_eq!(back, (true, "hi".to_owned()));
    assert_eq!(cap.text(), xenstore::xenstore_guest_expected("bye\n"));
    assert_eq!(stop, StopReason::DebugExit(1));
}

fn xenstore_utils_installed() -> bool {
    let there = std::process::Command::new("xenstore-read").arg("--help").output().is_ok();
    if !there {
        eprintln!("xenstore-utils not installed; skipped");
    }
    there
}

#[test]
fn a_real_xenstore_client_on_the_socket_sees_the_guest_tree_while_it_runs() {
    if xenstore_utils_installed() {
        socket_run(Cpu::Interp);
    }
}

#[test]
fn a_real_xenstore_client_on_the_socket_of_a_guest_on_kvm() {
    let Some(vm) = kvm_or_skip("a_real_xenstore_client_on_the_socket_of_a_guest_on_kvm") else { return };
    if xenstore_utils_installed() {
        socket_run(Cpu::Kvm(&vm));
    }
}

/// Run to the end, one round at a time, calling `at_round` at each boundary.
fn run_rounds(m: &mut Machine, mut at_round: impl FnMut(&mut Machine)) -> StopReason {
    loop {
        if let Some(stop) = m.run_round().expect("round") {
            return stop;
        }
        at_round(m);
    }
}

#[test]
fn snapshot_mid_run_with_live_rings_restores_to_the_same_end() {
    let input = || Box::new(ScriptDoor::new(vec![(3_000_000, Input::Console(b"hello ring\n".to_vec()))]));
    let fresh = || {
        let (mut m, cap) = machine(|_| {});
        m.set_door(input());
        (m, cap)
    };
    // The uninterrupted run, and a snapshot taken once the guest has been
    // talking to xenstore for a while (the rings are attached, the store has
    // its writes, the console ring has output in it).
    let (mut m, cap) = fresh();
    let mut snap = None;
    let stop = run_rounds(&mut m, |m| {
        if snap.is_none() && m.retired_instructions() >= 1_500_000 {
            snap = Some((m.save_state(), m.save_ram(), m.retired_instructions()));
        }
    });
    let (whole_out, whole_hash) = (cap.text(), m.digest().hash());
    assert_eq!(stop, StopReason::DebugExit(1));
    let (state, ram, at) = snap.expect("the guest runs past 1.5M instructions");

    // A fresh machine restored from it finishes the same way.
    let (mut r, cap) = fresh();
    r.restore_ram(&ram).unwrap();
    r.restore_state(&state).unwrap();
    assert_eq!(r.retired_instructions(), at);
    let stop = run_rounds(&mut r, |_| {});
    assert_eq!(stop, StopReason::DebugExit(1));
    assert!(whole_out.ends_with(&cap.text()), "restored output is the tail of the whole run's: {:?}", cap.text());
    assert!(cap.text().contains("hello ring"), "console input still reaches the restored guest");
    assert_eq!(r.digest().hash(), whole_hash, "{:?}", r.digest().differences(&m.digest()));
}

/// The same on KVM: a snapshot taken between exits (KVM counts exits),
/// restored into a machine on a fresh VM, goes on to print what the
/// uninterrupted run printed after that point.
#[test]
fn snapshot_mid_run_with_live_rings_on_kvm_restores_to_the_same_end() {
    let Some(vm) = kvm_or_skip("snapshot_mid_run_with_live_rings_on_kvm_restores_to_the_same_end") else { return };
    let (mut m, cap) = machine_on(HypercallEntry::Page, Cpu::Kvm(&vm), |_| {});
    // Typed ahead (no instruction count to wait for), delivered at the first round.
    m.set_door(Box::new(ScriptDoor::new(vec![(0, Input::Console(b"hello ring\n".to_vec()))])));
    let mut snap = None;
    let stop = run_rounds(&mut m, |m| {
        if snap.is_none() && m.retired_instructions() >= 40 {
            snap = Some((m.save_state(), m.save_ram(), cap.text()));
        }
    });
    assert_eq!(stop, StopReason::DebugExit(1));
    let whole = cap.text();
    assert_eq!(whole, xenstore::xenstore_guest_expected("hello ring\n"));
    let (state, ram, printed) = snap.expect("the guest makes more than 40 exits");
    let vm = kvm_backend::KvmVm::new().unwrap();
    let (mut r, cap) = machine_on(HypercallEntry::Page, Cpu::Kvm(&vm), |_| {});
    r.set_door(Box::new(ScriptDoor::new(Vec::new())));
    r.restore_ram(&ram).unwrap();
    r.restore_state(&state).unwrap();
    assert_eq!(run_rounds(&mut r, |_| {}), StopReason::DebugExit(1));
    assert_eq!(printed + &cap.text(), whole, "the restored guest goes on where the snapshot was taken");
}
