//! Running a machine while recording, and again from a log.
//!
//! Recording wraps the machine's door so every input it hands out is also
//! logged, and takes a checkpoint (a state digest) at the first round
//! boundary at or past each multiple of `checkpoint_every` instructions.
//! Replaying installs a door that hands the logged inputs back at their
//! stamps, and compares the machine's digest at every checkpoint: the first
//! difference stops the replay with a [`Divergence`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sim_core::clock::TimeSource;
use sim_core::door::{Door, DoorError, Input, Query, Stamp};
use sim_core::machine::snapshot::{hex, StateDigest};
use sim_core::machine::{Machine, MachineError, StopReason};

use crate::log::{Log, LogError, LogWriter, Record};

/// Why recording or replaying stopped short.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The per-round hook failed (e.g. a snapshot could not be written).
    #[error("{0}")]
    Hook(String),
}

/// Called after every round that did not stop the machine, with the number
/// of log inputs delivered so far (for snapshots).
pub type RoundHook<'a> = dyn FnMut(&mut Machine, u64) -> Result<(), String> + 'a;

/// Logs everything its inner door hands out.
struct RecordingDoor {
    inner: Box<dyn Door>,
    out: Arc<Mutex<Vec<Record>>>,
}

impl Door for RecordingDoor {
    fn poll(&mut self, at: Stamp) -> Result<Vec<Input>, DoorError> {
        let inputs = self.inner.poll(at)?;
        if let Ok(mut out) = self.out.lock() {
            out.extend(inputs.iter().map(|i| Record::Polled { at, input: i.clone() }));
        }
        Ok(inputs)
    }
    fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError> {
        let input = self.inner.query(at, q)?;
        if let Ok(mut out) = self.out.lock() {
            out.push(Record::Answered { at, input: input.clone() });
        }
        Ok(input)
    }
    fn live(&self, at: Stamp) -> bool {
        self.inner.live(at)
    }
    fn wait(&mut self) {
        self.inner.wait()
    }
    fn next_exit(&self, at: Stamp) -> Option<sim_core::door::ExitSeen> {
        self.inner.next_exit(at)
    }
    fn next_stop_tsc(&self, vcpu: u32) -> Option<u64> {
        self.inner.next_stop_tsc(vcpu)
    }
    fn pause(&mut self, d: std::time::Duration) {
        self.inner.pause(d)
    }
}

/// Run `machine` to its end with inputs from `source`, logging them and
/// checkpoints to `log`. The log holds everything up to the failure if the
/// machine fails.
pub fn record(
    machine: &mut Machine,
    source: Box<dyn Door>,
    log: &mut LogWriter,
    checkpoint_every: u64,
) -> Result<StopReason, DriveError> {
    record_with(machine, source, log, checkpoint_every, &mut |_, _| Ok(()))
}

/// `record`, calling `on_round` after every round that did not stop.
pub fn record_with(
    machine: &mut Machine,
    source: Box<dyn Door>,
    log: &mut LogWriter,
    checkpoint_every: u64,
    on_round: &mut RoundHook<'_>,
) -> Result<StopReason, DriveError> {
    let every = checkpoint_every.max(1);
    let mut consumed = 0u64;
    let out = Arc::new(Mutex::new(Vec::new()));
    machine.set_door(Box::new(RecordingDoor { inner: source, out: out.clone() }));
    let mut next_checkpoint = machine.retired_instructions() / every * every + every;
    loop {
        let round = machine.run_round();
        let taken: Vec<Record> = out.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
        for r in taken {
            consumed += matches!(r, Record::Polled { .. } | Record::Answered { .. }) as u64;
            log.push(r)?;
        }
        match round {
            Err(e) => {
                log.flush()?;
                return Err(e.into());
            }
            Ok(Some(stop)) => {
                log.push(Record::End { stop: format!("{stop:?}"), digest: Box::new(machine.digest()) })?;
                log.flush()?;
                return Ok(stop);
            }
            Ok(None) => {
                let now = machine.retired_instructions();
                // On exit time a vCPU stopped between exits has registers
                // no replay can reproduce: checkpoint where none is.
                if now >= next_checkpoint && machine.settled() {
                    log.push(Record::Checkpoint(Box::new(machine.digest())))?;
                    log.flush()?;
                    next_checkpoint = now / every * every + every;
                }
                on_round(machine, consumed).map_err(DriveError::Hook)?;
            }
        }
    }
}

/// Hands logged inputs back at their stamps; anything else is divergence.
struct ReplayDoor {
    inputs: VecDeque<Record>,
    /// Inputs handed out so far (shared with the driver, for snapshots).
    consumed: Arc<Mutex<u64>>,
    /// Inputs handed out, most recent last (for reports).
    recent: Arc<Mutex<VecDeque<String>>>,
}

const RECENT: usize = 8;

impl ReplayDoor {
    fn note(&self, r: &Record) {
        if let Ok(mut c) = self.consumed.lock() {
            *c += 1;
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(describe(r));
        }
    }
}

impl ReplayDoor {
    /// Drop the recorded run's readiness answers (exit time) up to `at`
    /// (`inclusive`) that the replay did not ask for: there the recorded
    /// machine had an interrupt to offer and the replay had none (it sees
    /// the guest at its next exit, where the recorded vCPU was preempted).
    /// Harmless when KVM said "not ready" (it only asked for a window); an
    /// interrupt KVM took there is one the replay cannot deliver.
    fn skip_unasked_ready(&mut self, at: Stamp, inclusive: bool) -> Result<(), DoorError> {
        while let Some(r @ Record::Answered { at: logged, input: Input::KvmReady { ready, .. } }) = self.inputs.front()
        {
            if *logged > at || (*logged == at && !inclusive) {
                break;
            }
            if *ready {
                return Err(DoorError(format!(
                    "{}: the recorded run delivered an interrupt here (between exits); the replay had none to deliver",
                    describe(r)
                )));
            }
            if let Some(r) = self.inputs.pop_front() {
                self.note(&r);
            }
        }
        Ok(())
    }
}

impl Door for ReplayDoor {
    fn poll(&mut self, at: Stamp) -> Result<Vec<Input>, DoorError> {
        self.skip_unasked_ready(at, false)?;
        let mut out = Vec::new();
        while let Some(Record::Polled { at: logged, .. }) = self.inputs.front() {
            if *logged != at {
                break;
            }
            if let Some(r) = self.inputs.pop_front() {
                self.note(&r);
                if let Record::Polled { input, .. } = r {
                    out.push(input);
                }
            }
        }
        // An answer stamped with this very moment may still be asked for
        // after the poll (a vCPU's exit, on exit time).
        match self.inputs.front() {
            Some(r @ Record::Polled { at: logged, .. }) if *logged <= at => {
                Err(DoorError(format!("the log has {} here but the machine did not ask for it", describe(r))))
            }
            Some(r @ Record::Answered { at: logged, .. }) if *logged < at => {
                Err(DoorError(format!("the log has {} here but the machine did not ask for it", describe(r))))
            }
            _ => Ok(out),
        }
    }

    fn query(&mut self, at: Stamp, q: Query) -> Result<Input, DoorError> {
        if let Query::KvmReady { vcpu, .. } = q {
            // Asked only where the recorded run asked too, as a rule; where
            // it did not, it had no interrupt to offer: none is delivered.
            let logged_here = matches!(self.inputs.front(),
                Some(Record::Answered { at: logged, input: Input::KvmReady { .. } }) if *logged == at);
            if !logged_here {
                return Ok(Input::KvmReady { vcpu, ready: false });
            }
        } else {
            self.skip_unasked_ready(at, true)?;
        }
        if let (Query::KvmExit(_), Some(r @ Record::Answered { input: Input::KvmReady { ready: true, .. }, .. })) =
            (q, self.inputs.front())
        {
            return Err(DoorError(format!(
                "{}: the recorded run delivered an interrupt before this exit; the replay reached the exit \
                 first (an interrupt between exits, which no replay can place)",
                describe(r)
            )));
        }
        match self.inputs.front() {
            Some(Record::Answered { at: logged, input }) if *logged == at && input.kind() == q.answer_kind() => {
                let input = input.clone();
                if let Some(r) = self.inputs.pop_front() {
                    self.note(&r);
                }
                Ok(input)
            }
            Some(r) => Err(DoorError(format!("the machine asked for {q:?}, the log has {} next", describe(r)))),
            None => Err(DoorError(format!("the machine asked for {q:?}, the log has no more inputs"))),
        }
    }

    /// The recorded machine waited here for input: the log holds input
    /// stamped with this very moment.
    fn live(&self, at: Stamp) -> bool {
        matches!(self.inputs.front(), Some(Record::Polled { at: logged, .. }) if *logged == at)
    }

    fn next_exit(&self, at: Stamp) -> Option<sim_core::door::ExitSeen> {
        // Past readiness answers the replay will not ask for (see
        // `skip_unasked_ready`).
        let mut records = self.inputs.iter().skip_while(
            |r| matches!(r, Record::Answered { at: logged, input: Input::KvmReady { .. } } if *logged <= at),
        );
        match records.next() {
            Some(Record::Answered { at: logged, input: Input::KvmExit(seen) }) if *logged == at => Some(*seen),
            _ => None,
        }
    }

    fn next_stop_tsc(&self, vcpu: u32) -> Option<u64> {
        self.inputs.iter().find_map(|r| match r {
            Record::Answered { at, input: Input::KvmExit(seen) }
                if at.vcpu == vcpu && seen.exit != sim_core::vcpu::VcpuExit::BudgetExhausted =>
            {
                Some(seen.tsc)
            }
            _ => None,
        })
    }

    /// Recorded time needs no waiting for.
    fn pause(&mut self, _d: std::time::Duration) {}
}

/// One line for a record, as `inspect` prints it.
pub fn describe(r: &Record) -> String {
    match r {
        Record::Polled { at, input } => format!("{at}: input {}", describe_input(input)),
        Record::Answered { at, input } => format!("{at}: answer {}", describe_input(input)),
        Record::Checkpoint(d) => format!("icount {} ({} ns): checkpoint {}", d.icount, d.now_ns, hex(&d.hash(), 8)),
        Record::End { stop, digest } => {
            format!(
                "icount {} ({} ns): end {stop}, final state {}",
                digest.icount,
                digest.now_ns,
                hex(&digest.hash(), 8)
            )
        }
    }
}

fn describe_input(i: &Input) -> String {
    let bytes = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
    match i {
        Input::Serial(b) => format!("serial {}", bytes(b)),
        Input::Console(b) => format!("console {}", bytes(b)),
        Input::XenstoreSocket { client, bytes: b } => format!("xenstore-socket client {client} {} bytes", b.len()),
        other => format!("{other:?}"),
    }
}

/// Where and how a replay left the recorded run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub icount: u64,
    pub vcpu: u32,
    pub rip: u64,
    /// What differs ("vcpu0 rax 0x1 != 0x2", "RAM 0x0..0x1fffff differs",
    /// "inputs: ...").
    pub differences: Vec<String>,
    /// The last inputs delivered before the divergence, oldest first.
    pub recent_inputs: Vec<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "replay diverged at icount {} on vCPU {} (RIP {:#x})", self.icount, self.vcpu, self.rip)?;
        for d in &self.differences {
            writeln!(f, "  differs: {d}")?;
        }
        if self.recent_inputs.is_empty() {
            writeln!(f, "  no inputs were delivered before it")?;
        }
        for r in &self.recent_inputs {
            writeln!(f, "  earlier input: {r}")?;
        }
        Ok(())
    }
}

/// How a replay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replayed {
    /// Every checkpoint and the end matched.
    Identical {
        stop: StopReason,
        checkpoints: u64,
    },
    /// Stopped at `--until` with every checkpoint so far matching.
    Reached {
        icount: u64,
        checkpoints: u64,
    },
    /// The log ends early (a torn recording); everything up to it matched.
    LogEnded {
        icount: u64,
        checkpoints: u64,
    },
    Diverged(Box<Divergence>),
}

/// Where the recorded run's time came from: a run on exit time (KVM) logs
/// every exit of every vCPU, so its log holds exits; an instruction-timed
/// one never does.
pub fn time_source(log: &Log) -> TimeSource {
    let exits = log.records.iter().any(|r| matches!(r, Record::Answered { input: Input::KvmExit(_), .. }));
    if exits {
        TimeSource::Exits
    } else {
        TimeSource::Instructions
    }
}

/// Replay `log` on `machine` (built and booted as the header says). Stops at
/// the first round boundary at or past `until`, if given. `progress` is told
/// the instruction count after every round.
pub fn replay(
    machine: &mut Machine,
    log: &Log,
    until: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<Replayed, DriveError> {
    replay_from(machine, log, None, until, progress, &mut |_, _| Ok(()))
}

/// Where a replay starts when the machine was restored from a snapshot
/// taken while recording or replaying the same log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub icount: u64,
    /// The log's inputs delivered before the snapshot.
    pub inputs_consumed: u64,
}

/// `replay`, from `start` if the machine was restored from a snapshot, with
/// `on_round` called after every round that did not stop.
pub fn replay_from(
    machine: &mut Machine,
    log: &Log,
    start: Option<Start>,
    until: Option<u64>,
    progress: &mut dyn FnMut(u64),
    on_round: &mut RoundHook<'_>,
) -> Result<Replayed, DriveError> {
    let skip = start.map_or(0, |s| s.inputs_consumed) as usize;
    let inputs: VecDeque<Record> = log
        .records
        .iter()
        .filter(|r| matches!(r, Record::Polled { .. } | Record::Answered { .. }))
        .skip(skip)
        .cloned()
        .collect();
    // (expected digest, recorded stop reason for the end record); checkpoints
    // at or before the start were passed by the run the snapshot came from.
    let mut checks: VecDeque<(&StateDigest, Option<&String>)> = log
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Checkpoint(d) if start.is_some_and(|s| d.icount <= s.icount) => None,
            Record::Checkpoint(d) => Some((&**d, None)),
            Record::End { stop, digest } => Some((&**digest, Some(stop))),
            _ => None,
        })
        .collect();
    if time_source(log) == TimeSource::Exits {
        // A run recorded on KVM: the machine follows its exits (the caller
        // built it with the hypercall gate KVM had).
        machine.follow_exits();
    }
    let recent = Arc::new(Mutex::new(VecDeque::new()));
    let consumed = Arc::new(Mutex::new(skip as u64));
    machine.set_door(Box::new(ReplayDoor { inputs, consumed: consumed.clone(), recent: recent.clone() }));
    let recent_list = || recent.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default();
    let diverged = |machine: &Machine, icount, differences, digests| {
        let (vcpu, rip) = where_(machine, digests);
        Ok(Replayed::Diverged(Box::new(Divergence { icount, vcpu, rip, differences, recent_inputs: recent_list() })))
    };
    let mut checkpoints = 0;
    // A seek whose snapshot is at `until` is already there: the start is a
    // round boundary too, where a straight replay would have stopped.
    let now = machine.retired_instructions();
    if start.is_some() && until.is_some_and(|u| now >= u) {
        return Ok(Replayed::Reached { icount: now, checkpoints });
    }
    loop {
        let round = match machine.run_round() {
            Ok(r) => r,
            Err(MachineError::Door { at, source }) => {
                return diverged(machine, at.icount, vec![format!("inputs: {source}")], None);
            }
            Err(e) => return Err(e.into()),
        };
        let now = machine.retired_instructions();
        progress(now);
        // Every check the run has reached, passed, or (if it stopped) will
        // never reach.
        while let Some(&(expected, end_stop)) = checks.front() {
            // A run stops at the round after its last instruction (everyone
            // halted), so the end may share its icount with a running round.
            let ahead = expected.icount > now || (end_stop.is_some() && expected.icount == now);
            if ahead && round.is_none() {
                break;
            }
            checks.pop_front();
            let mut differences = Vec::new();
            match (end_stop, round) {
                (None, Some(stop)) => differences.push(format!(
                    "the replay stopped ({stop:?}) at icount {now}, the recorded run went on to a checkpoint at {}",
                    expected.icount
                )),
                (Some(s), Some(stop)) if *s != format!("{stop:?}") => {
                    differences.push(format!("stop reason: recorded {s}, replayed {stop:?}"))
                }
                (Some(s), None) => differences.push(format!("the recorded run stopped ({s}), the replay goes on")),
                _ => {}
            }
            if expected.icount != now && differences.is_empty() {
                differences.push(format!(
                    "the recorded run had a round boundary at icount {}, the replay at {now}",
                    expected.icount
                ));
            }
            let actual = machine.digest();
            differences.extend(expected.differences(&actual));
            if !differences.is_empty() {
                return diverged(machine, now, differences, Some((expected, &actual)));
            }
            checkpoints += 1;
        }
        if let Some(stop) = round {
            if log.torn_at.is_some() {
                return Ok(Replayed::LogEnded { icount: now, checkpoints });
            }
            return Ok(Replayed::Identical { stop, checkpoints });
        }
        if until.is_some_and(|u| now >= u) {
            return Ok(Replayed::Reached { icount: now, checkpoints });
        }
        let n = consumed.lock().map(|c| *c).unwrap_or(0);
        on_round(machine, n).map_err(DriveError::Hook)?;
        if checks.is_empty() {
            // A complete log always ends with its End record, so only a torn
            // one runs out of checks while the machine still runs.
            return Ok(Replayed::LogEnded { icount: now, checkpoints });
        }
    }
}

/// The vCPU a report points at: the first whose registers differ, else 0.
fn where_(machine: &Machine, digests: Option<(&StateDigest, &StateDigest)>) -> (u32, u64) {
    let i = digests.and_then(|(e, a)| e.vcpus.iter().zip(&a.vcpus).position(|(x, y)| x != y)).unwrap_or(0);
    (i as u32, machine.vcpu(i).state().rip)
}
