//! Busy polling right after traffic: the agent's runtime keeps looking at its sockets for a
//! short, bounded time after a packet or a relayed byte, instead of sleeping at once.
//!
//! A round trip through the agent crosses it twice (the request in, the answer back), and the
//! answer usually comes within tens of microseconds. A thread that sleeps in `epoll_wait`
//! between the two pays a wake-up when the answer comes; on a virtual machine whose idle vCPU
//! halts, that is a VM exit and an inter-processor interrupt, ≈50 µs here, more than the whole
//! round trip costs without it. So:
//!
//! ```text
//!  traffic (a TUN packet in or out, bytes relayed by the HTTP filter)
//!     └─► kick(): remember when ──┐ wake the spinner if it sleeps
//!                                 ▼
//!  spinner task: while now − last kick < window { yield to the runtime }
//!                └─ each yield is one epoll_wait(0) of tokio's driver: a socket or the TUN
//!                   that became readable wakes its task at once, with no wake-up of the thread
//!                window over ─► waits for the next kick (the thread sleeps as before)
//! ```
//!
//! The agent runs one `current_thread` runtime, so one spinner serves every task on it: the
//! stack's engine (TUN and upstream sockets), and the filtered-steal relay. A yielded task is
//! woken after the runtime polls its I/O driver without blocking (`park_yield`), which is
//! what makes the yield a poll of every socket.
//!
//! The cost is bounded: the spinner runs only within `window` of the last traffic, so an idle
//! session uses no CPU, and a busy one at most one core while it is busy. It pays only when a
//! CPU would otherwise sit idle: on a loaded machine a spinner delays the very processes
//! whose answers it waits for (measured on the 2-vCPU test machine while builds ran: round
//! trips of 35–145 µs instead of 15, new connections of milliseconds). So each turn of the
//! spin first offers the CPU to any other runnable thread (`sched_yield`: a process the
//! agent's last packet woke may be waiting for this very CPU), and a spin that overran its
//! window by a time slice (the kernel gave the CPU to another process meanwhile, see
//! [`Window::backoff_until`]) stops spinning for [`BACKOFF`]: on a shared machine the agent
//! sleeps between packets as it did without busy polling, and tries again a second later. [`Window`] is the decision, without I/O or clock, so it is unit-tested; the
//! spinner and the handle are the thin runtime part.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The environment variable that sets the window in microseconds (`0` turns it off).
pub const ENV: &str = "MIRRORD_NET_BUSY_POLL_US";
/// The window when the environment does not say.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(100);
/// How long a spinner that lost its CPU sleeps at once after traffic, before trying again.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// A spin that overran its window by this much lost its CPU to another process (a turn of
/// the spin takes microseconds; a time slice given away, milliseconds).
pub const OVERRUN: Duration = Duration::from_micros(250);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// When to keep polling: within `window` of the last traffic. Times are nanoseconds since an
/// origin the caller chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    window_ns: u64,
}

impl Window {
    pub fn new(window: Duration) -> Self {
        Self {
            window_ns: nanos(window),
        }
    }

    /// Whether to poll again at `now`, the last traffic having been at `last`.
    pub fn spin(&self, last: u64, now: u64) -> bool {
        now.saturating_sub(last) < self.window_ns
    }

    /// Until when (same clock) to sleep at once instead of spinning, after a spin that ended
    /// at `now`, the last traffic having been at `last`. A spin ends on its first turn past
    /// the window, so it overruns the window by one turn: a few microseconds when the CPU
    /// was ours, a whole time slice when the kernel gave it to another process meanwhile.
    /// Spinning on a shared CPU delays the very processes whose answers it waits for
    /// (measured: round trips of milliseconds while builds ran), so after an overrun of
    /// [`OVERRUN`] it stops for [`BACKOFF`] and tries again. `0`: no backoff.
    pub fn backoff_until(&self, last: u64, now: u64) -> u64 {
        let overrun = now.saturating_sub(last).saturating_sub(self.window_ns);
        if overrun >= nanos(OVERRUN) {
            now.saturating_add(nanos(BACKOFF))
        } else {
            0
        }
    }

    pub fn is_off(&self) -> bool {
        self.window_ns == 0
    }

    /// The window from the value of [`ENV`]: microseconds, `None` if unset. A value that is
    /// not a number is an error naming it.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, String> {
        match value {
            None => Ok(Self::new(DEFAULT_WINDOW)),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map(|us| Self::new(Duration::from_micros(us)))
                .map_err(|_| format!("{ENV}={text:?} is not a number of microseconds")),
        }
    }
}

struct Shared {
    window: Window,
    origin: Instant,
    /// Nanoseconds since `origin` of the last traffic.
    last: AtomicU64,
    /// Whether the spinner waits for a kick (so a kick must wake it).
    idle: AtomicBool,
    wake: Notify,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A cheap, cloneable handle: [`kick`](BusyPoll::kick) on traffic.
#[derive(Clone)]
pub struct BusyPoll(Arc<Shared>);

impl std::fmt::Debug for BusyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BusyPoll").field(&self.0.window).finish()
    }
}

impl BusyPoll {
    /// Starts the spinner on the current runtime; `None` if `window` is off.
    pub fn start(window: Window) -> Option<Self> {
        if window.is_off() {
            return None;
        }
        let shared = Arc::new(Shared {
            window,
            origin: Instant::now(),
            last: AtomicU64::new(0),
            idle: AtomicBool::new(true),
            wake: Notify::new(),
        });
        tokio::spawn(spin(shared.clone()));
        Some(Self(shared))
    }

    /// Traffic now: keep polling for the window from here.
    pub fn kick(&self) {
        self.0.last.store(self.0.now(), Ordering::Relaxed);
        if self.0.idle.swap(false, Ordering::AcqRel) {
            self.0.wake.notify_one();
        }
    }
}

/// The process's poller, started on first use from the agent's runtime (see
/// [`process`](BusyPoll::process)).
static PROCESS: OnceLock<Option<BusyPoll>> = OnceLock::new();

impl BusyPoll {
    /// The agent's one poller, from [`ENV`]; started on the calling runtime the first time.
    /// A bad value is reported once and turns polling off.
    pub fn process() -> Option<Self> {
        PROCESS
            .get_or_init(
                || match Window::from_env_value(std::env::var(ENV).ok().as_deref()) {
                    Ok(window) => Self::start(window),
                    Err(err) => {
                        tracing::warn!("{err}; busy polling is off");
                        None
                    }
                },
            )
            .clone()
    }
}

/// A stream that kicks `poll` whenever bytes move through it (the relays' sockets).
pub struct Kicking<S> {
    inner: S,
    poll: BusyPoll,
}

impl<S> Kicking<S> {
    pub fn new(inner: S, poll: BusyPoll) -> Self {
        Self { inner, poll }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Kicking<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.poll.kick();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Kicking<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.poll.kick();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.poll.kick();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn spin(shared: Arc<Shared>) {
    // Nanoseconds since `origin` before which kicks do not start a spin (the CPU was shared).
    let mut backoff_until = 0;
    loop {
        // Idle: wait for traffic. The flag is set before looking at the time again, so a
        // kick that lands in between either is seen here or wakes the notify.
        shared.wake.notified().await;
        if shared.now() < backoff_until {
            shared.idle.store(true, Ordering::Release);
            continue;
        }
        loop {
            if !shared
                .window
                .spin(shared.last.load(Ordering::Relaxed), shared.now())
            {
                shared.idle.store(true, Ordering::Release);
                if !shared
                    .window
                    .spin(shared.last.load(Ordering::Relaxed), shared.now())
                {
                    break;
                }
                // A kick came between the look and the flag. If a later kick saw the flag,
                // it left a permit that ends the wait at once; else take the turn back.
                if !shared.idle.swap(false, Ordering::AcqRel) {
                    break;
                }
            }
            // Let any other runnable thread of this CPU go first (on a loaded machine the
            // spin must not take the core from the very process whose answer it awaits: that
            // showed as millisecond tails), then poll the runtime's sockets.
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
        let now = shared.now();
        backoff_until = shared
            .window
            .backoff_until(shared.last.load(Ordering::Relaxed), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_spins_only_within_the_window_after_traffic() {
        let w = Window::new(Duration::from_micros(100));
        assert!(w.spin(1_000, 1_000));
        assert!(w.spin(1_000, 100_999));
        assert!(!w.spin(1_000, 101_000));
        // A clock read before the last kick (another thread kicked meanwhile) still spins.
        assert!(w.spin(5_000, 4_000));
    }

    #[test]
    fn a_spin_that_lost_its_cpu_backs_off_for_a_while() {
        let w = Window::new(Duration::from_micros(100));
        // Ended a few microseconds past the window: the CPU was ours, spin next time.
        assert_eq!(w.backoff_until(1_000, 1_000 + 100_000 + 5_000), 0);
        assert_eq!(w.backoff_until(1_000, 1_000 + 100_000 + 249_999), 0);
        // Ended a time slice late: another process had the CPU.
        let now = 1_000 + 100_000 + 3_000_000;
        assert_eq!(w.backoff_until(1_000, now), now + 1_000_000_000);
        assert_eq!(w.backoff_until(0, u64::MAX), u64::MAX);
        // A kick during the last turn (last after the spin's clock read) is no overrun.
        assert_eq!(w.backoff_until(2_000, 1_000), 0);
    }

    #[test]
    fn zero_is_off() {
        let w = Window::new(Duration::ZERO);
        assert!(w.is_off());
        assert!(!w.spin(0, 0));
    }

    #[test]
    fn the_environment_sets_microseconds() {
        assert_eq!(
            Window::from_env_value(None).unwrap(),
            Window::new(DEFAULT_WINDOW)
        );
        assert_eq!(
            Window::from_env_value(Some(" 30 ")).unwrap(),
            Window::new(Duration::from_micros(30))
        );
        assert!(Window::from_env_value(Some("0")).unwrap().is_off());
        let err = Window::from_env_value(Some("fast")).unwrap_err();
        assert!(err.contains(ENV) && err.contains("fast"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stream_kicks_when_bytes_move_and_not_otherwise() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let poll = BusyPoll::start(Window::new(Duration::from_secs(30))).unwrap();
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Kicking::new(a, poll.clone());
        // Traffic is seen as a kick's time stamp, reset to 0 between the steps.
        let kicked = || poll.0.last.swap(0, Ordering::Relaxed) > 0;
        a.write_all(b"ping").await.unwrap();
        assert!(kicked(), "a write kicks");
        a.flush().await.unwrap();
        assert!(!kicked(), "a flush moves nothing");
        b.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert!(kicked(), "a read kicks");
        drop(b);
        assert_eq!(a.read(&mut buf).await.unwrap(), 0);
        assert!(!kicked(), "end of file is no traffic");
    }

    /// CPU time of the calling thread (the test's runtime runs on it).
    fn thread_cpu() -> Duration {
        // SAFETY: getrusage fills the struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_spinner_sleeps_once_the_window_is_over_and_wakes_on_a_kick() {
        let poll = BusyPoll::start(Window::new(Duration::from_millis(300))).unwrap();
        assert!(
            poll.0.idle.load(Ordering::Acquire),
            "idle before any traffic"
        );
        poll.kick();
        assert!(!poll.0.idle.load(Ordering::Acquire));
        let kicked = Instant::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if kicked.elapsed() < Duration::from_millis(250) {
            assert!(
                !poll.0.idle.load(Ordering::Acquire),
                "still within the window"
            );
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            poll.0.idle.load(Ordering::Acquire),
            "asleep after the window"
        );
        let before = thread_cpu();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let used = thread_cpu() - before;
        assert!(
            used < Duration::from_millis(30),
            "{used:?} of CPU while idle"
        );
        // Past any backoff (the first spin may have been preempted on a busy machine).
        tokio::time::sleep(BACKOFF).await;
        poll.kick();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!poll.0.idle.load(Ordering::Acquire), "spinning again");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(poll.0.idle.load(Ordering::Acquire));
    }
}
