//! A replay progress bar in instructions, shown once a replay has taken
//! more than a second. Host time here only paces the display; the guest
//! never sees it.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(total_instructions: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total_instructions), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} instructions ({per_sec}, {eta})");
        if let Ok(style) = style {
            bar.set_style(style);
        }
        Progress { bar, start: Instant::now(), shown: false }
    }

    pub fn update(&mut self, icount: u64) {
        self.bar.set_position(icount);
        if !self.shown && self.start.elapsed() > Duration::from_secs(1) {
            self.shown = true;
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}
