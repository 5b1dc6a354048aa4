//! Cleanup on Ctrl-C, SIGTERM and SIGHUP.
//!
//! A signal handler only writes the signal's number to a pipe; one thread reads the pipe. On
//! a signal it marks the harness as stopping (so the main thread starts nothing new and never
//! exits on its own), kills the client run in progress (each run leads its own process
//! group), drops the fixture (servers, target, namespaces, scratch directory) and exits 130.
//! Normal exits drop the fixture the ordinary way. A handler, unlike a blocked mask, is not
//! inherited across exec: every child starts with the default dispositions.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{killpg, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::fixture::Fixture;

static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);
static BACKGROUND_GROUP: AtomicI32 = AtomicI32::new(0);
static STOPPING: AtomicBool = AtomicBool::new(false);
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    // SAFETY: write(2) is async-signal-safe; the fd stays open for the process's life.
    unsafe {
        libc::write(
            PIPE_WRITE.load(Ordering::Relaxed),
            (&byte as *const u8).cast(),
            1,
        );
    }
}

/// Installs the handlers and starts the thread that cleans up.
pub fn install() -> anyhow::Result<()> {
    let (read, write) = nix::unistd::pipe()?;
    PIPE_WRITE.store(write.into_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2).
        unsafe { sigaction(signal, &action)? };
    }
    // SAFETY: the fd was just created and is owned by nothing else.
    let mut read = unsafe { File::from_raw_fd(read.into_raw_fd()) };
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if read.read_exact(&mut byte).is_ok() {
            STOPPING.store(true, Ordering::SeqCst);
            let name = Signal::try_from(i32::from(byte[0])).map_or("signal", Signal::as_str);
            eprintln!("\n{name}: stopping the run and removing the fixture");
            kill_running();
            let fixture = FIXTURE.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(fixture);
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Whether a signal asked the harness to stop.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Called by the main thread when a stop was asked: waits for the cleanup thread to exit
/// the process, so the main thread never ends it with the fixture half removed.
pub fn wait_for_stop() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Hands the fixture over so a signal can drop it; [`with_fixture`] borrows it.
pub fn own(fixture: Fixture) {
    *FIXTURE.lock().unwrap_or_else(|e| e.into_inner()) = Some(fixture);
}

/// Runs `f` on the fixture. The lock is held throughout: a signal waits for the current
/// short call, while runs themselves happen outside it. Fails once a stop has taken it.
pub fn with_fixture<T>(f: impl FnOnce(&mut Fixture) -> T) -> anyhow::Result<T> {
    let mut guard = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_mut() {
        Some(fixture) => Ok(f(fixture)),
        None => anyhow::bail!("the fixture is gone (stopping)"),
    }
}

/// Drops the fixture now (the normal end of a run).
pub fn release() {
    if stopping() {
        wait_for_stop();
    }
    let fixture = FIXTURE.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(fixture);
}

/// Remembers the process group of the client run in progress (0: none).
pub fn set_running(pgid: i32) {
    if pgid != 0 && stopping() {
        // Started just as the stop began: it goes at once.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    RUNNING_GROUP.store(pgid, Ordering::SeqCst);
}

/// Remembers the process group of a session that runs beside the client runs (the incoming
/// rows' stealing session; 0: none).
pub fn set_background(pgid: i32) {
    if pgid != 0 && stopping() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    BACKGROUND_GROUP.store(pgid, Ordering::SeqCst);
}

fn kill_running() {
    for group in [&RUNNING_GROUP, &BACKGROUND_GROUP] {
        let pgid = group.swap(0, Ordering::SeqCst);
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}
