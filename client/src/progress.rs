//! The one status line shown while a session starts.
//!
//! Shown only when stderr is a terminal, and erased before the user's command takes over the
//! terminal, so scripts and pipes see nothing of it and interactive users see why they wait.

use std::io::{IsTerminal, Write};

pub struct Progress {
    visible: bool,
    shown: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            visible: !quiet && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    pub fn step(&mut self, message: &str) {
        if self.visible {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2Kmirrord-net: {message}…");
            let _ = stderr.flush();
            self.shown = true;
        }
    }

    pub fn clear(&mut self) {
        if self.shown {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
