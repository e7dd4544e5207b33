//! The nondeterminism door: the one way a value the guest did not decide
//! enters the machine.
//!
//! The machine asks its door at deterministic points only: `poll` at the
//! start of every scheduling round, `query` when it needs a value now (the
//! wall-clock epoch at power-on, a host-clock reading on KVM, entropy). Every
//! answer is an [`Input`] stamped with where it was asked ([`Stamp`]), so a
//! recorder can log it and a replayer can hand the same inputs back at the
//! same stamps. Run the same binary with the same inputs at the same stamps
//! and the guest sees the same machine.
//!
//! Rule (checked by a test over the workspace sources): nothing outside this
//! module, the benchmarks and the tests reads the host clock, stdin, or a
//! random source. Each place that does carries a `// DOOR:` comment.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, TryRecvError};

use serde::{Deserialize, Serialize};

use crate::vcpu::VcpuExit;

/// Where in the run an input was delivered: the machine's retired
/// instructions (all vCPUs together; on exit time, KVM, its exits) and
/// machine time at that point, and the vCPU it concerns (0 for machine-wide
/// inputs delivered at a round boundary, before vCPU 0 runs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub icount: u64,
    pub now_ns: u64,
    pub vcpu: u32,
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {} at icount {} ({} ns)", self.vcpu, self.icount, self.now_ns)
    }
}

/// One value from outside the machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    /// Bytes arriving on COM1's serial line.
    Serial(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bytes for the platform's console (Xen's PV console, hvc0).
    Console(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Bytes a xenstore socket client sent (`client` numbers connections).
    XenstoreSocket {
        client: u32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A xenstore socket client connected or hung up.
    XenstoreClient { client: u32, connected: bool },
    /// Wall-clock time at power-on, nanoseconds since the Unix epoch.
    WallClock { epoch_ns: u64 },
    /// A host-clock reading (KVM), nanoseconds of a monotonic clock.
    HostClock { ns: u64 },
    /// A disk request finished (`status` 0 = success, else a Xen errno).
    DiskCompletion { disk: u32, request: u64, status: i32 },
    /// Random bits (RDRAND/RDSEED once advertised).
    Entropy { value: u64 },
    /// Where a vCPU's run ended on a backend that cannot count
    /// instructions (KVM), and the guest TSC there: the machine's time.
    KvmExit(ExitSeen),
    /// Whether a KVM vCPU could take an external interrupt when the machine
    /// had one to offer (KVM says; it decides inject or wait for a window).
    KvmReady { vcpu: u32, ready: bool },
}

/// One exit of a vCPU whose time follows the host (KVM), as the machine
/// saw it: machine time at the exit is the guest's TSC, which KVM moves
/// with the host clock, so it is an outside value like any other.
/// Replaying the exits (with their TSCs) replays the guest's view of time;
/// see `Machine::follow_exits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExitSeen {
    /// `BudgetExhausted`: the host's timer ended the slice (a preemption at
    /// an instruction nobody counted).
    pub exit: VcpuExit,
    /// The guest's time-stamp counter at the exit.
    pub tsc: u64,
    /// RIP at the exit. Where KVM reports an interrupt window is its own
    /// choice (the first VM exit it notices one at), so a replay looks for
    /// the window at this RIP.
    pub rip: u64,
}

impl Input {
    /// The kind's name, for logs, filters and error messages.
    pub fn kind(&self) -> InputKind {
        match self {
            Input::Serial(_) => InputKind::Serial,
            Input::Console(_) => InputKind::Console,
            Input::XenstoreSocket { .. } => InputKind::XenstoreSocket,
            Input::XenstoreClient { .. } => InputKind::XenstoreClient,
            Input::WallClock { .. } => InputKind::WallClock,
            Input::HostClock { .. } => InputKind::HostClock,
            Input::DiskCompletion { .. } => InputKind::DiskCompletion,
            Input::Entropy { .. } => InputKind::Entropy,
            Input::KvmExit { .. } => InputKind::KvmExit,
            Input::KvmReady { .. } => InputKind::KvmReady,
        }
    }
}

/// The kinds of [`Input`], without their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InputKind {
    Serial,
    Console,
    XenstoreSocket,
    XenstoreClient,
    WallClock,
    HostClock,
    DiskCompletion,
    Entropy,
    KvmExit,
    KvmReady,
}

impl InputKind {
    pub const ALL: [InputKind; 10] = [
        InputKind::Serial,
        InputKind::Console,
        InputKind::XenstoreSocket,
        InputKind::XenstoreClient,
        InputKind::WallClock,
        InputKind::HostClock,
        InputKind::DiskCompletion,
        InputKind::Entropy,
        InputKind::KvmExit,
        InputKind::KvmReady,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InputKind::Serial => "serial",
            InputKind::Console => "console",
            InputKind::XenstoreSocket => "xenstore-socket",
            InputKind::XenstoreClient => "xenstore-client",
            InputKind::WallClock => "wall-clock",
            InputKind::HostClock => "host-clock",
            InputKind::DiskCompletion => "disk-completion",
            InputKind::Entropy => "entropy",
            InputKind::KvmExit => "kvm-exit",
            InputKind::KvmReady => "kvm-ready",
        }
    }

    pub fn from_name(name: &str) -> Option<InputKind> {
        InputKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A value the machine needs at once (answered by `Door::query`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Query {
    WallClock,
    HostClock,
    Entropy,
    /// How a vCPU's run ended, as the backend reported it; a live door
    /// answers with the observation, a replay with the recorded exit.
    KvmExit(ExitSeen),
    /// Whether a vCPU on exit time can take an interrupt now; answered as
    /// `KvmExit` is.
    KvmReady {
        vcpu: u32,
        ready: bool,
    },
}

impl Query {
    /// The input kind that answers this query.
    pub fn answer_kind(self) -> InputKind {
        match self {
            Query::WallClock => InputKind::WallClock,
            Query::HostClock => InputKind::HostClock,
            Query::Entropy => InputKind::Entropy,
            Query::KvmExit(_) => InputKind::KvmExit,
            Query::KvmReady { .. } => InputKind::KvmReady,
        }
    }
}

/// Why a door could not answer: on replay, the machine asked for something
/// the log does not hold at this stamp (the run diverged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DoorError(pub String);

/// The source of every outside value.
pub trait Door: Send {
    /// Inputs that arrived since the last poll, delivered at `at`.
    fn poll(&mut self, at: Stamp) -> Result<Vec<Input>, DoorError>;
    /// A value needed now; the answer is an input of `q.answer_kind()`.
    fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError>;
    /// Whether input can still arrive for a machine idle at `at` (a live
    /// source is open, or the log holds input for this very moment). An idle
    /// machine whose guest could be woken waits instead of stopping.
    fn live(&self, _at: Stamp) -> bool {
        false
    }
    /// Wait a little for input (idle machine, live door); the next poll
    /// collects it.
    fn wait(&mut self) {}
    /// On replay of a run whose time followed exits: the exit the log has
    /// next for `at.vcpu`, if its next record is that exit. A CPU that
    /// counts instructions runs to it: ahead where the recorded vCPU was
    /// preempted (it cannot stop at an uncounted instruction), with its
    /// interrupt window open only where the recorded vCPU's opened.
    fn next_exit(&self, _at: Stamp) -> Option<ExitSeen> {
        None
    }
    /// On such a replay: the guest TSC at `vcpu`'s next recorded exit that
    /// is not a preemption (how long the recorded vCPU ran to get there).
    fn next_stop_tsc(&self, _vcpu: u32) -> Option<u64> {
        None
    }
    /// Let host time pass (the machine waits for a KVM TSC to reach a
    /// deadline). A replay need not wait: its time comes from the log.
    fn pause(&mut self, d: std::time::Duration) {
        // DOOR: host time passes; nothing is read.
        std::thread::sleep(d);
    }
}

/// How long an idle machine sleeps between polls of a live door.
pub const IDLE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Sources a live run reads.
#[derive(Default)]
pub struct LiveDoor {
    /// Byte streams fed by reader threads, each tagged with where its bytes go.
    streams: Vec<(Receiver<Vec<u8>>, Target)>,
    /// Fixed wall clock (for reproducible live runs); the host's otherwise.
    wall_clock_ns: Option<u64>,
}

/// Where a live byte stream's bytes are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Serial,
    Console,
}

impl LiveDoor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed everything `reader` produces to `target`, as it arrives. A
    /// thread reads so that polling never blocks the machine.
    pub fn add_stream(&mut self, target: Target, mut reader: Box<dyn Read + Send>) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        self.streams.push((rx, target));
    }

    /// Feed the host's standard input to `target`.
    pub fn add_stdin(&mut self, target: Target) {
        // DOOR: the host's stdin, read by a thread, delivered at round boundaries.
        self.add_stream(target, Box::new(std::io::stdin()));
    }

    /// Answer wall-clock queries with `epoch_ns` instead of the host clock.
    pub fn fix_wall_clock(&mut self, epoch_ns: u64) {
        self.wall_clock_ns = Some(epoch_ns);
    }
}

impl Door for LiveDoor {
    fn poll(&mut self, _at: Stamp) -> Result<Vec<Input>, DoorError> {
        let mut out = Vec::new();
        self.streams.retain(|(rx, target)| {
            let mut bytes = Vec::new();
            let open = loop {
                match rx.try_recv() {
                    Ok(b) => bytes.extend(b),
                    Err(TryRecvError::Empty) => break true,
                    Err(TryRecvError::Disconnected) => break false,
                }
            };
            if !bytes.is_empty() {
                out.push(match target {
                    Target::Serial => Input::Serial(bytes),
                    Target::Console => Input::Console(bytes),
                });
            }
            open
        });
        Ok(out)
    }

    fn live(&self, _at: Stamp) -> bool {
        // Streams leave the list when their reader reaches end of file.
        !self.streams.is_empty()
    }

    fn wait(&mut self) {
        // DOOR: host time passes while the guest waits for outside input.
        std::thread::sleep(IDLE_WAIT);
    }

    fn query(&mut self, _at: Stamp, q: Query) -> Result<Input, DoorError> {
        Ok(match q {
            Query::WallClock => {
                // DOOR: the host's wall clock, once at power-on.
                let host = || {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0)
                };
                Input::WallClock { epoch_ns: self.wall_clock_ns.unwrap_or_else(host) }
            }
            Query::HostClock => {
                // DOOR: the host's monotonic clock (KVM time), measured from
                // the first reading.
                static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                let start = *START.get_or_init(std::time::Instant::now);
                Input::HostClock { ns: start.elapsed().as_nanos() as u64 }
            }
            Query::Entropy => {
                // DOOR: entropy from the OS; std's RandomState is seeded from it.
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(0);
                Input::Entropy { value: h.finish() }
            }
            Query::KvmExit(seen) => Input::KvmExit(seen),
            Query::KvmReady { vcpu, ready } => Input::KvmReady { vcpu, ready },
        })
    }
}

/// A door with nothing outside: no input ever arrives, the wall clock is the
/// epoch (0), the host clock reads machine time, entropy is zero. The
/// default of a machine, and what tests use.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClosedDoor;

impl Door for ClosedDoor {
    fn poll(&mut self, _at: Stamp) -> Result<Vec<Input>, DoorError> {
        Ok(Vec::new())
    }
    fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError> {
        Ok(match q {
            Query::WallClock => Input::WallClock { epoch_ns: 0 },
            Query::HostClock => Input::HostClock { ns: at.now_ns },
            Query::Entropy => Input::Entropy { value: 0 },
            Query::KvmExit(seen) => Input::KvmExit(seen),
            Query::KvmReady { vcpu, ready } => Input::KvmReady { vcpu, ready },
        })
    }
}

/// Inputs scheduled ahead: each is delivered at the first poll whose icount
/// reaches its own. Queries are answered as by [`ClosedDoor`]. For tests and
/// for scripted input (`--serial-input` files are live streams instead).
#[derive(Clone, Debug, Default)]
pub struct ScriptDoor {
    /// (icount, input), in delivery order.
    script: VecDeque<(u64, Input)>,
}

impl ScriptDoor {
    pub fn new(mut script: Vec<(u64, Input)>) -> Self {
        script.sort_by_key(|(at, _)| *at);
        ScriptDoor { script: script.into() }
    }
}

impl Door for ScriptDoor {
    fn poll(&mut self, at: Stamp) -> Result<Vec<Input>, DoorError> {
        let mut out = Vec::new();
        while self.script.front().is_some_and(|(i, _)| *i <= at.icount) {
            if let Some((_, input)) = self.script.pop_front() {
                out.push(input);
            }
        }
        Ok(out)
    }
    fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError> {
        ClosedDoor.query(at, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(icount: u64) -> Stamp {
        Stamp { icount, now_ns: icount, vcpu: 0 }
    }

    #[test]
    fn script_door_delivers_each_input_once_at_or_after_its_icount() {
        let mut d = ScriptDoor::new(vec![(500, Input::Serial(b"b".to_vec())), (100, Input::Console(b"a".to_vec()))]);
        assert_eq!(d.poll(at(99)).unwrap(), vec![]);
        assert_eq!(d.poll(at(100)).unwrap(), vec![Input::Console(b"a".to_vec())]);
        assert_eq!(d.poll(at(100)).unwrap(), vec![]);
        assert_eq!(d.poll(at(10_000)).unwrap(), vec![Input::Serial(b"b".to_vec())]);
    }

    #[test]
    fn live_door_streams_reach_their_target_and_close() {
        let mut d = LiveDoor::new();
        d.add_stream(Target::Serial, Box::new(&b"hello"[..]));
        // The reader thread finishes at EOF; poll until the stream closes.
        let mut got = Vec::new();
        for _ in 0..1000 {
            for i in d.poll(at(0)).unwrap() {
                match i {
                    Input::Serial(b) => got.extend(b),
                    other => panic!("unexpected {other:?}"),
                }
            }
            if d.streams.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, b"hello");
        assert!(d.streams.is_empty(), "stream closed at EOF");
    }

    #[test]
    fn queries_answer_with_the_matching_kind() {
        let mut live = LiveDoor::new();
        live.fix_wall_clock(1_700_000_000_000_000_000);
        let seen = ExitSeen { exit: VcpuExit::Halt, tsc: 1, rip: 2 };
        for q in [Query::WallClock, Query::HostClock, Query::Entropy, Query::KvmExit(seen)] {
            assert_eq!(live.query(at(0), q).unwrap().kind(), q.answer_kind());
            assert_eq!(ClosedDoor.query(at(0), q).unwrap().kind(), q.answer_kind());
        }
        assert_eq!(
            live.query(at(0), Query::WallClock).unwrap(),
            Input::WallClock { epoch_ns: 1_700_000_000_000_000_000 }
        );
        assert_eq!(ClosedDoor.query(at(42), Query::HostClock).unwrap(), Input::HostClock { ns: 42 });
        // What a KVM vCPU did is answered as observed (a replay answers
        // with what the log has instead).
        let seen = ExitSeen { exit: VcpuExit::IoOut { port: 0xe9, size: 1, data: 0x41 }, tsc: 7, rip: 0x1000 };
        let ready = Query::KvmReady { vcpu: 1, ready: true };
        for door in [&mut live as &mut dyn Door, &mut ClosedDoor, &mut ScriptDoor::default()] {
            assert_eq!(door.query(at(0), Query::KvmExit(seen)).unwrap(), Input::KvmExit(seen));
            assert_eq!(door.query(at(0), ready).unwrap(), Input::KvmReady { vcpu: 1, ready: true });
            assert_eq!(door.next_exit(at(0)), None, "only a replay knows exits ahead");
        }
    }

    #[test]
    fn kind_names_round_trip() {
        for k in InputKind::ALL {
            assert_eq!(InputKind::from_name(k.name()), Some(k));
        }
        assert_eq!(InputKind::from_name("nope"), None);
    }
}
