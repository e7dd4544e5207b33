//! Record and replay guests end to end: identical output and final state,
//! inputs fed back from the log alone, divergence reports naming what
//! differs, and one-line errors for damaged logs.
//!
//! Recording on KVM (replayed on the interpreter, which is the only CPU
//! that replays): kvm_record.rs. The log-format tests need no CPU.

use std::path::Path;

use replay::{Header, Log, LogError, LogWriter, Record, Replayed};
use sim_core::door::{Input, ScriptDoor};
use sim_core::machine::{MachineConfig, StopReason};
use xensim::guest::programs;
use xensim::guest::Boot;
use xensim_tests::{log_header, machine, Run};

fn header(run: &Run, kernel: &[u8], every: u64) -> Header {
    Header { cmdline: run.cmdline.clone(), ..log_header(&run.config, kernel, every) }
}

/// Record `kernel` under `run` (its inputs through the door) into `path`;
/// returns the stop and the console output.
fn record(path: &Path, kernel: &[u8], run: &Run, every: u64) -> (StopReason, String) {
    let (mut m, cap, _) = machine(kernel.to_vec(), &Run { inputs: Vec::new(), ..run.clone() });
    let mut w = LogWriter::create(path, &header(run, kernel, every)).unwrap();
    let stop = replay::record(&mut m, Box::new(ScriptDoor::new(run.inputs.clone())), &mut w, every).unwrap();
    w.finish().unwrap();
    (stop, cap.text())
}

/// Replay the log at `path` on a fresh machine with no inputs of its own.
fn replay_log(log: &Log, kernel: &[u8], run: &Run) -> (Replayed, String) {
    let (mut m, cap, _) = machine(kernel.to_vec(), &Run { inputs: Vec::new(), ..run.clone() });
    let r = replay::replay(&mut m, log, None, &mut |_| {}).unwrap();
    (r, cap.text())
}

fn echo_run() -> Run {
    Run {
        config: MachineConfig {
            memory_mib: 16,
            max_instructions: Some(3_000_000),
            quantum: 10_000,
            ..Default::default()
        },
        inputs: vec![(20_000, Input::Serial(b"abc".to_vec())), (400_000, Input::Serial(b"xyz.".to_vec()))],
        ..Run::default()
    }
}

#[test]
fn every_guest_replays_with_identical_output_and_final_state() {
    let with_modules =
        Run { cmdline: "console=hvc0".into(), modules: vec![("initrd".into(), vec![7; 5000])], ..Run::default() };
    let guests: Vec<(&str, Vec<u8>, Run)> = vec![
        ("demo", programs::demo().unwrap(), Run::default()),
        ("pvh64", programs::pvh64_start_info().unwrap(), with_modules.clone()),
        ("multiboot", programs::multiboot_info(Boot::Multiboot).unwrap(), with_modules),
        ("serial echo", programs::serial_echo().unwrap(), echo_run()),
    ];
    for (name, kernel, mut run) in guests {
        // Short rounds, so that even the short guests cross checkpoints.
        run.config.quantum = 500;
        run.config.memory_mib = 16;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.log");
        let (stop, output) = record(&path, &kernel, &run, 1_000);
        let log = Log::read(&path).unwrap();
        assert!(log.records.iter().any(|r| matches!(r, Record::Checkpoint(_))), "{name}: checkpoints taken");
        let (replayed, again) = replay_log(&log, &kernel, &run);
        assert!(matches!(replayed, Replayed::Identical { stop: s, .. } if s == stop), "{name}: {replayed:?}");
        assert_eq!(again, output, "{name}: console output reproduced");
    }
}

#[test]
fn recorded_input_replays_without_the_input_present() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.log");
    let kernel = programs::serial_echo().unwrap();
    let (stop, output) = record(&path, &kernel, &echo_run(), 100_000);
    assert_eq!(stop, StopReason::Halted);
    assert_eq!(output, programs::serial_echo_expected(b"abcxyz."));
    let log = Log::read(&path).unwrap();
    let inputs: Vec<&Input> = log
        .records
        .iter()
        .filter_map(|r| if let Record::Polled { input, .. } = r { Some(input) } else { None })
        .collect();
    assert_eq!(inputs, vec![&Input::Serial(b"abc".to_vec()), &Input::Serial(b"xyz.".to_vec())]);
    // `replay_log` builds a machine whose own input script is empty.
    let (replayed, again) = replay_log(&log, &kernel, &echo_run());
    assert!(matches!(replayed, Replayed::Identical { .. }), "{replayed:?}");
    assert_eq!(again, output);
}

#[test]
fn a_changed_input_is_reported_as_a_divergence_naming_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.log");
    let kernel = programs::serial_echo().unwrap();
    record(&path, &kernel, &echo_run(), 100_000);
    let mut log = Log::read(&path).unwrap();
    for r in &mut log.records {
        if let Record::Polled { input: Input::Serial(b), .. } = r {
            if b == b"abc" {
                *b = b"abd".to_vec(); // same length, different byte
            }
        }
    }
    let (replayed, _) = replay_log(&log, &kernel, &echo_run());
    let Replayed::Diverged(d) = replayed else { panic!("not detected: {replayed:?}") };
    // The first checkpoint after the input: the echo buffer (RAM) differs,
    // and the report lists the input before it.
    assert!(d.differences.iter().any(|l| l.starts_with("RAM 0x")), "{d}");
    assert!(d.recent_inputs.iter().any(|l| l.contains("serial \"abd\"")), "{d}");
    assert_eq!(d.vcpu, 0);
    assert!(d.icount >= 100_000 && d.icount < 3_000_000, "{d}");
    assert!(d.to_string().starts_with("replay diverged at icount"));
}

#[test]
fn an_input_moved_in_time_is_an_input_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("echo.log");
    let kernel = programs::serial_echo().unwrap();
    record(&path, &kernel, &echo_run(), 100_000);
    let mut log = Log::read(&path).unwrap();
    for r in &mut log.records {
        if let Record::Polled { at, .. } = r {
            at.icount += 1; // no round boundary there
        }
    }
    let (replayed, _) = replay_log(&log, &kernel, &echo_run());
    let Replayed::Diverged(d) = replayed else { panic!("not detected: {replayed:?}") };
    assert!(d.differences.iter().any(|l| l.starts_with("inputs: ")), "{d}");
}

fn recorded_echo(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join("echo.log");
    record(&path, &programs::serial_echo().unwrap(), &echo_run(), 100_000);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn damaged_logs_give_one_line_errors_saying_where() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = recorded_echo(dir.path());
    let p = Path::new("x.log");
    // A flipped byte in the payload of the second chunk (after the header's).
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let second = 12 + 8 + header_len;
    let mut flipped = bytes.clone();
    flipped[second + 8 + 3] ^= 0x40;
    let e = Log::parse(p, &flipped).unwrap_err();
    assert_eq!(e.to_string(), format!("x.log: chunk 1 at byte {second}: checksum mismatch"));
    // Another format version.
    // (Version 2 logs, from before byte buffers were encoded as bins.)
    let mut v2 = bytes.clone();
    v2[8] = 2;
    assert_eq!(Log::parse(p, &v2).unwrap_err().to_string(), "x.log: log format version 2, this xensim reads version 3");
    assert!(matches!(Log::parse(p, b"ELF\x7f not a log"), Err(LogError::NotALog { .. })));
    assert!(matches!(Log::parse(p, &bytes[..14]), Err(LogError::NoHeader { .. })));
    for e in [e, Log::parse(p, &v2).unwrap_err()] {
        assert!(!e.to_string().contains('\n'));
    }
    assert!(Log::read(&dir.path().join("missing.log")).unwrap_err().to_string().contains("missing.log"));
    let _ = path;
}

#[test]
fn a_torn_last_chunk_keeps_the_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = recorded_echo(dir.path());
    let whole = Log::parse(Path::new("x"), &bytes).unwrap();
    assert_eq!(whole.torn_at, None);
    let cut = &bytes[..bytes.len() - 5];
    let torn = Log::parse(Path::new("x"), cut).unwrap();
    assert!(torn.torn_at.is_some());
    assert!(torn.records.len() < whole.records.len());
    assert_eq!(torn.records[..], whole.records[..torn.records.len()], "earlier records intact");
    // Replaying it matches up to where it ends.
    let (replayed, _) = replay_log(&torn, &programs::serial_echo().unwrap(), &echo_run());
    assert!(matches!(replayed, Replayed::LogEnded { .. }), "{replayed:?}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = recorded_echo(dir.path());
    // Deterministic pseudo-random damage (xorshift), at every region of the file.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        let at = (x as usize) % b.len();
        b[at] = (x >> 32) as u8;
        let cut = ((x >> 40) as usize) % (b.len() + 1);
        let _ = Log::parse(Path::new("x"), &b);
        let _ = Log::parse(Path::new("x"), &b[..cut]);
    }
    // A huge declared length is refused before any allocation.
    let mut huge = bytes[..12].to_vec();
    huge.extend(u32::MAX.to_le_bytes());
    huge.extend([0; 4]);
    assert!(Log::parse(Path::new("x"), &huge).unwrap_err().to_string().contains("exceeds"));
}

#[test]
fn logs_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = recorded_echo(dir.path());
    let h = header(&echo_run(), b"k", 1);
    assert!(LogWriter::create(&path, &h).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}
