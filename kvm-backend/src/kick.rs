//! Ending a KVM_RUN when the vCPU's time slice is over. KVM cannot count
//! instructions, so `run`'s budget becomes wall time; a guest that loops
//! without exits is kicked out by a POSIX timer that signals the vCPU's
//! thread (KVM_RUN then returns EINTR). The timer repeats every `PERIOD`
//! after the deadline, so a signal that lands just before KVM_RUN is entered
//! only delays the exit by one period instead of losing it.
//!
//! The timer is armed only around KVM_RUN, so one thread has at most one
//! armed at a time. Disarming returns the time the slice has left (none once
//! the signal came), so the backend never reads the host clock itself:
//! where a slice ended reaches the machine as an exit, through the
//! nondeterminism door (sim_core::door::ExitSeen).

use std::cell::Cell;
use std::io;
use std::sync::Once;
use std::time::Duration;

/// Re-kick interval after the deadline.
const PERIOD: Duration = Duration::from_millis(1);

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

thread_local! {
    /// Set by the kick signal on the thread it was sent to.
    static KICKED: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn on_kick(_: libc::c_int) {
    // The signal interrupts KVM_RUN; the flag says the time was up. A
    // const-initialised thread-local Cell is a plain TLS store (no
    // allocation, no lock), safe in a signal handler.
    KICKED.set(true);
}

fn install_handler() -> io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that does nothing is
        // valid; SA_RESTART keeps other syscalls of the thread transparent
        // (KVM_RUN is never restarted: it returns EINTR).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

/// A per-thread timer that signals the thread that created it.
pub struct Kick {
    timer: libc::timer_t,
    tid: libc::pid_t,
}

// SAFETY: the timer id is a plain kernel handle; `on_this_thread` lets the
// owner notice a move to another thread and create a new timer there.
unsafe impl Send for Kick {}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

impl Kick {
    pub fn new() -> io::Result<Kick> {
        install_handler()?;
        let tid = gettid();
        // SAFETY: sigevent is plain data; zeroed is a valid start.
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_signo = kick_signal();
        ev.sigev_notify_thread_id = tid;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to a sigevent and a timer_t.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Kick { timer, tid })
    }

    pub fn on_this_thread(&self) -> bool {
        self.tid == gettid()
    }

    /// Signal this thread after `after`, then every `PERIOD`.
    pub fn arm(&self, after: Duration) {
        let after = after.max(Duration::from_micros(1));
        KICKED.set(false);
        self.set(after, PERIOD);
    }

    /// Stop the timer; returns the time that was left before it would have
    /// signalled, zero if it did. A signal raised before the disarm has
    /// been handled by the time the system call returns to this thread.
    pub fn disarm(&self) -> Duration {
        let old = self.set(Duration::ZERO, Duration::ZERO);
        if KICKED.replace(false) {
            return Duration::ZERO;
        }
        Duration::new(old.it_value.tv_sec.max(0) as u64, old.it_value.tv_nsec.clamp(0, 999_999_999) as u32)
    }

    fn set(&self, value: Duration, interval: Duration) -> libc::itimerspec {
        let ts = |d: Duration| libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ };
        let spec = libc::itimerspec { it_interval: ts(interval), it_value: ts(value) };
        let mut old = libc::itimerspec { it_interval: ts(Duration::ZERO), it_value: ts(Duration::ZERO) };
        // SAFETY: `timer` is ours and alive, both pointers are valid; a
        // failure (impossible with valid arguments) would only cost the kick.
        unsafe { libc::timer_settime(self.timer, 0, &spec, &mut old) };
        old
    }
}

impl Drop for Kick {
    fn drop(&mut self) {
        // SAFETY: the timer was created by us and is deleted once.
        unsafe { libc::timer_delete(self.timer) };
    }
}
