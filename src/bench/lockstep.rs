//! Timing kinds of run of one guest (plain, recorded, replayed) against
//! each other on a shared host: the runs take turns on one CPU, a segment
//! of the guest's instructions at a time.
//!
//! Hosts of this kind change speed by tens of percent for seconds at a
//! time (a virtual CPU moved to a busier or slower core), and their
//! virtual CPUs differ from each other from moment to moment. Runs timed
//! whole, one after another, land on different sides of such changes. In
//! lockstep, segment k of every run executes within a few tens of
//! milliseconds of the others, on the same CPU, so each repetition
//! compares the kinds under the same conditions. Each run is timed by its
//! own thread's CPU time, which a turn spent waiting does not add to.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::thread_cpu_time;

/// Instructions per turn: about 15 ms of the interpreter, several rounds
/// of the default quantum.
pub const SEGMENT: u64 = 1 << 22;

/// Times a run and, in lockstep, hands the turn on at each new segment.
pub struct Stopwatch<'a> {
    mark: Duration,
    total: Duration,
    segment: Option<u64>,
    turns: Option<(&'a Turns, usize)>,
}

impl Stopwatch<'_> {
    /// A stopwatch for a run on its own.
    pub fn new() -> Stopwatch<'static> {
        Stopwatch { mark: thread_cpu_time(), total: Duration::ZERO, segment: None, turns: None }
    }

    /// Start timing (after the machine is built).
    pub fn begin(&mut self) {
        self.mark = thread_cpu_time();
    }

    /// A round boundary with `icount` instructions retired: in lockstep,
    /// the first in a new segment ends this run's turn.
    pub fn boundary(&mut self, icount: u64) {
        let segment = icount / SEGMENT;
        if self.segment == Some(segment) {
            return;
        }
        self.segment = Some(segment);
        if let Some((turns, me)) = self.turns {
            self.lap();
            turns.pass(me);
            turns.wait(me);
            // The hand-over is not the run's.
            self.mark = thread_cpu_time();
        }
    }

    fn lap(&mut self) {
        let now = thread_cpu_time();
        self.total += now.saturating_sub(self.mark);
        self.mark = now;
    }

    /// The run's CPU time.
    pub fn stop(mut self) -> Duration {
        self.lap();
        self.total
    }
}

/// Whose turn it is among lockstep jobs, and which have finished.
pub struct Turns {
    state: Mutex<(usize, Vec<bool>)>,
    changed: Condvar,
}

impl Turns {
    fn wait(&self, me: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 != me {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next unfinished job's turn (`me` again if it is the last).
    fn pass(&self, me: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.1.len();
        s.0 = (1..=n).map(|d| (me + d) % n).find(|&j| !s.1[j]).unwrap_or(me);
        self.changed.notify_all();
    }

    fn finish(&self, me: usize) {
        if let Some(done) = self.state.lock().unwrap_or_else(|e| e.into_inner()).1.get_mut(me) {
            *done = true;
        }
        self.pass(me);
    }
}

/// Marks a job finished however its thread ends, so the others go on.
struct Finished<'a>(&'a Turns, usize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1);
    }
}

/// A run to time in lockstep: builds its machine, calls `begin` and then
/// `boundary` at every round boundary.
pub type Job<'a> = Box<dyn FnOnce(&mut Stopwatch) -> Result<(), String> + Send + 'a>;

/// Run `jobs` each on a thread of its own, one at a time, taking turns a
/// segment at a time in the order given, all on the CPU this was called
/// on; returns their CPU times. The guests cannot tell: a machine's run
/// does not depend on the host's timing.
pub fn lockstep(jobs: Vec<Job<'_>>) -> Result<Vec<Duration>, String> {
    let turns = Turns { state: Mutex::new((0, vec![false; jobs.len()])), changed: Condvar::new() };
    let turns = &turns;
    // SAFETY: sched_getcpu has no arguments and no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(me, job)| {
                s.spawn(move || {
                    let _finished = Finished(turns, me);
                    pin_to(cpu);
                    turns.wait(me);
                    let mut watch = Stopwatch { turns: Some((turns, me)), ..Stopwatch::new() };
                    job(&mut watch)?;
                    Ok(watch.stop())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a benchmark run panicked".into()))).collect()
    })
}

/// Keep this thread on `cpu`, so that where the scheduler puts each job's
/// thread cannot favour one kind of run. Best effort: if it cannot be
/// done (no such CPU, not permitted) the thread goes where it may.
fn pin_to(cpu: i32) {
    let Ok(cpu) = usize::try_from(cpu) else { return };
    if cpu >= libc::CPU_SETSIZE as usize {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it
    // (cpu < CPU_SETSIZE, checked above); sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Memory for run `n` to hold while it builds its machine and runs, so
/// that repetitions of one kind do not all land at the same place in the
/// heap and on the same physical pages. Its size steps through page counts
/// and offsets within a page; the bytes are written, so the pages are
/// really taken.
pub fn spacer(n: usize) -> Vec<u8> {
    let pages = n * 5 % 11;
    let offset = n * 7 % 31 * 128;
    vec![1; pages * 4096 + offset + 64]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(n: u64) -> u64 {
        (0..n).fold(0u64, |x, i| std::hint::black_box(x.wrapping_mul(31).wrapping_add(i)))
    }

    /// Jobs take turns a segment at a time, in order; the ones still
    /// running go on when one finishes early; waiting is not CPU time.
    #[test]
    fn lockstep_jobs_take_turns_by_segment() {
        let log = Mutex::new(Vec::new());
        let job = |name: char, segments: u64, work: u64| -> Job<'_> {
            let log = &log;
            Box::new(move |w: &mut Stopwatch| {
                w.begin();
                for k in 0..segments {
                    log.lock().unwrap().push((name, k));
                    spin(work);
                    w.boundary(k * SEGMENT);
                }
                Ok(())
            })
        };
        let times = lockstep(vec![job('a', 3, 10_000), job('b', 1, 10_000), job('c', 2, 20_000_000)]).unwrap();
        let order: Vec<(char, u64)> = log.into_inner().unwrap();
        assert_eq!(order, vec![('a', 0), ('b', 0), ('c', 0), ('a', 1), ('c', 1), ('a', 2)]);
        // a and b spun far less than c, and did not pay for c's turns.
        assert!(times[0] * 10 < times[2] && times[1] * 10 < times[2], "{times:?}");
    }

    #[test]
    fn a_failing_job_does_not_hold_up_the_others() {
        let jobs: Vec<Job> = vec![
            Box::new(|_| Err("broken".into())),
            Box::new(|w| {
                w.begin();
                w.boundary(0);
                w.boundary(SEGMENT);
                Ok(())
            }),
        ];
        assert_eq!(lockstep(jobs).unwrap_err(), "broken");
    }
}
