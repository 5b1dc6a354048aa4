//! The keeper: the small process that holds the agent's iptables chain and takes it away
//! when the agent goes.
//!
//! nftables ties the agent's table to its netlink socket, so the kernel removes it when the
//! agent dies, SIGKILL included. iptables has nothing of the kind: a rule stays until someone
//! deletes it, and the agent itself cannot run `iptables-legacy-restore` once its seccomp
//! filter is on (no `execve`). So the agent starts this process before it drops privileges,
//! as `mirrord-net-agent __iptables-keeper`, in the target's network namespace:
//!
//! - The keeper keeps `NET_ADMIN` and `NET_RAW` and nothing else, ignores the terminal's
//!   signals (it follows its agent, not the agent's process group), binds an abstract unix
//!   socket named after its chain while it lives, removes the chains of keepers that are
//!   gone (their socket no longer answers), makes its own chain and says `ready CHAIN`.
//! - It reads requests from its stdin, a unix socket: `ports 8080:40000 …` (the chain's
//!   rules now) and `listeners` (with the agent's steal listeners attached), applies each and
//!   answers `ok` or `error …` on its stdout, the same socket.
//! - When its stdin ends or its channel breaks (an answer its dead agent cannot take), its
//!   agent is gone, however it went: it removes its chain, relays the connections that
//!   reached the agent's listeners unaccepted (the agent died between their redirect and the
//!   chain's removal) to the target's own port, and exits when they end (cutting those still
//!   open after 5 s, so that the keeper outlives its agent no longer than the liveness rule
//!   allows). A SIGKILLed agent so loses no connection, as with nftables.
//!   Only a keeper killed at the same time as its agent (the whole pod going, where the
//!   namespace goes too, or `kill -9` of both) leaves a chain, and the next keeper in the
//!   namespace removes it.
//!
//! Keepers of several agents in one namespace take turns through a lock that is an abstract
//! unix socket too (the kernel frees it when its holder dies): a `--noflush` restore reads
//! the whole table and writes it back, so two at once could lose one's change. A keeper
//! whose agent is gone waits for the lock [`LOCK_PATIENCE`] at most, then takes its chain
//! away without it (see [`Lock::take_or_go_on`]).
//! `/run/xtables.lock`, iptables' own lock, is a file in each agent's own root and so does
//! not serialise agents of different containers.

use std::io::{self, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrord_net_fd_passing::recv_with_fds;

use super::rules;
use crate::privileges::{self, cap};

/// The first argument that makes `mirrord-net-agent` a keeper.
pub const ARG: &str = "__iptables-keeper";

/// Most descriptors one request brings: the steal's listeners, IPv4 and IPv6, with room.
const MAX_LISTENERS: usize = 4;

/// The lock keepers of one network namespace take turns with.
const LOCK_NAME: &str = "mirrord-net/iptables.lock";
/// How long a keeper waits for the lock before it gives up on a change.
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// The keeper's `main`.
pub fn run() -> ExitCode {
    // SAFETY: setting dispositions to SIG_IGN; no handler runs.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The agent reads the first line: an error before `ready` is its error too.
            let _ = writeln!(io::stdout(), "error {}", one_line(&err.to_string()));
            say(&err.to_string());
            ExitCode::FAILURE
        }
    }
}

fn serve() -> io::Result<()> {
    privileges::drop_to((1 << cap::NET_ADMIN) | (1 << cap::NET_RAW))
        .map_err(|err| io::Error::other(format!("{err:#}")))?;
    let families = Family::available()?;
    let (chain, _alive) = bind_liveness()?;
    {
        let _lock = Lock::take()?;
        for family in &families {
            family.sweep();
        }
        for family in &families {
            family
                .restore(&rules::create(&chain))
                .map_err(|err| io::Error::other(format!("cannot create chain {chain}: {err}")))?;
        }
    }
    let mut channel = Channel::stdin();
    let mut listeners: Vec<TcpListener> = Vec::new();
    if let Err(err) = answer(&mut channel, &families, &chain, &mut listeners) {
        // A channel that breaks (an answer the dead agent cannot take, a read that fails)
        // means the same as one that ends: nobody will ask again, and the chain must go.
        say(&format!(
            "the channel to the agent broke ({err}): removing chain {chain}"
        ));
    }

    // The agent is gone. The redirects first, so nothing new comes; the chain (and its
    // conntrack holder, `rules::conntrack_holder`) once the connections it redirected to
    // the agent's listeners and the keeper took to the target have ended.
    {
        let _lock = Lock::take_or_go_on(&chain);
        for family in &families {
            if let Err(err) = family.restore(&rules::ports(&chain, &[])) {
                say(&format!(
                    "cannot remove the redirects of chain {chain}: {err}"
                ));
            }
        }
    }
    take_to_the_target(listeners);
    let _lock = Lock::take_or_go_on(&chain);
    for family in &families {
        if let Err(err) = family.remove(&chain) {
            say(&format!("cannot remove chain {chain}: {err}"));
        }
    }
    Ok(())
}

/// Says `ready CHAIN`, then answers the agent's requests until its end of `channel` closes;
/// `listeners` holds the steal listeners of the last `listeners` request.
fn answer(
    channel: &mut Channel,
    families: &[Family],
    chain: &str,
    listeners: &mut Vec<TcpListener>,
) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready {chain}")?;
    out.flush()?;
    while let Some(line) = channel.next_line()? {
        let answer = if line == "listeners" {
            *listeners = channel.fds.drain(..).map(TcpListener::from).collect();
            Ok(())
        } else {
            rules::parse_request(&line).and_then(|ports| {
                let _lock = Lock::take().map_err(|err| err.to_string())?;
                families
                    .iter()
                    .try_for_each(|family| family.restore(&rules::ports(chain, &ports)))
                    .map_err(|err| err.to_string())
            })
        };
        match answer {
            Ok(()) => writeln!(out, "ok")?,
            Err(err) => writeln!(out, "error {}", one_line(&err))?,
        }
        out.flush()?;
    }
    Ok(())
}

/// How long after the redirects go a handshake begun before may still complete.
const HANDSHAKE_GRACE: Duration = Duration::from_millis(50);
/// How long the keeper relays the connections its agent left: the liveness rule's last step
/// (the agent's rules gone within 5 s of its end) holds for the keeper too. A connection
/// still open then (one that arrived in the milliseconds before the agent died and stayed,
/// a WebSocket say) is cut both ways.
const RELAY_LIMIT: Duration = Duration::from_secs(5);

/// The connections redirected to the agent's listeners that the agent never took (it died
/// between their arrival and the chain's removal), each relayed to where it was going: the
/// target's own port. Returns when they have all ended, or at [`RELAY_LIMIT`] after cutting
/// those still open.
fn take_to_the_target(listeners: Vec<TcpListener>) {
    let started = Instant::now();
    // The relays' sockets while they may run; `None` once they were cut.
    let sockets: Arc<Mutex<Option<Vec<TcpStream>>>> = Arc::new(Mutex::new(Some(Vec::new())));
    let mut relays = Vec::new();
    for round in 0..2 {
        if round == 1 && !listeners.is_empty() {
            std::thread::sleep(HANDSHAKE_GRACE);
        }
        for listener in &listeners {
            if listener.set_nonblocking(true).is_err() {
                continue;
            }
            while let Ok((client, _)) = listener.accept() {
                let sockets = sockets.clone();
                relays.push(std::thread::spawn(move || relay(client, &sockets)));
            }
        }
    }
    drop(listeners);
    if relays.is_empty() {
        return;
    }
    say(&format!(
        "{} connection(s) the agent left taken to the target",
        relays.len()
    ));
    while !relays.iter().all(|relay| relay.is_finished()) {
        if started.elapsed() >= RELAY_LIMIT {
            let open = relays.iter().filter(|relay| !relay.is_finished()).count();
            say(&format!(
                "{open} connection(s) the agent left still open after {RELAY_LIMIT:?}: cut"
            ));
            let cut = sockets.lock().unwrap_or_else(|e| e.into_inner()).take();
            for socket in cut.into_iter().flatten() {
                let _ = socket.shutdown(Shutdown::Both);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for relay in relays {
        let _ = relay.join();
    }
}

/// Relays `client` to its original destination until both ways end. Both sockets are
/// listed in `sockets` so that [`take_to_the_target`] can cut them; a relay that connects
/// after the cut ends at once.
fn relay(client: TcpStream, sockets: &Mutex<Option<Vec<TcpStream>>>) {
    let _ = client.set_nonblocking(false);
    // Where it was going, as conntrack's NAT remembers it (the agent's own lookup).
    let Ok(v6) = client.local_addr().map(|addr| addr.is_ipv6()) else {
        return;
    };
    let Ok(to) = mirrord_net_netfilter::conntrack::original_destination_of(&client, v6) else {
        return;
    };
    let Ok(upstream) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
        return;
    };
    let (Ok(mut client_in), Ok(mut upstream_out)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    match sockets.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        Some(sockets) => {
            sockets.extend(client.try_clone());
            sockets.extend(upstream.try_clone());
        }
        None => return,
    }
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut upstream_out);
        let _ = upstream_out.shutdown(Shutdown::Write);
    });
    let (mut upstream_in, mut client_out) = (upstream, client);
    let _ = io::copy(&mut upstream_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// The keeper's end of its channel to the agent (stdin, a unix socket): lines, and the
/// descriptors that came with them.
struct Channel {
    socket: std::os::fd::BorrowedFd<'static>,
    buffer: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Channel {
    fn stdin() -> Channel {
        Channel {
            // SAFETY: stdin stays open for the keeper's life.
            socket: unsafe { std::os::fd::BorrowedFd::borrow_raw(0) },
            buffer: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The next line; `None` once the agent's end is closed.
    fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_owned()));
            }
            let mut chunk = [0u8; 4096];
            let bytes = match recv_with_fds(self.socket, &mut chunk, &mut self.fds, MAX_LISTENERS) {
                Ok(bytes) => bytes,
                // The agent died with something unsent: as good as closed.
                Err(err) if err.raw_os_error() == Some(libc::ECONNRESET) => return Ok(None),
                Err(err) => return Err(err),
            };
            if bytes == 0 {
                return Ok(None);
            }
            self.buffer.extend_from_slice(&chunk[..bytes]);
        }
    }
}

/// A line on stderr, which is the agent's: once the agent is gone it may be a pipe nobody
/// reads, and a failed write must not stop the keeper before it has removed its chain
/// (`eprintln!` panics on one).
fn say(line: &str) {
    let _ = writeln!(io::stderr(), "mirrord-net-agent: iptables keeper: {line}");
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// IPv4 or IPv6: the tools that change and show that family's tables.
struct Family {
    restore: PathBuf,
    save: PathBuf,
}

impl Family {
    /// IPv4 always; IPv6 where its tools are there and its `nat` table works in this
    /// namespace (a kernel or namespace without IPv6 NAT steals IPv4 only).
    fn available() -> io::Result<Vec<Family>> {
        let v4 = Family::find("iptables")?;
        let mut families = vec![v4];
        if let Ok(v6) = Family::find("ip6tables") {
            match v6.save_nat() {
                Ok(_) => families.push(v6),
                Err(err) => say(&format!("IPv6 is not stolen: {err}")),
            }
        }
        Ok(families)
    }

    fn find(name: &str) -> io::Result<Family> {
        let restore = find_tool(&format!("{name}-legacy-restore"))?;
        let save = find_tool(&format!("{name}-legacy-save"))?;
        Ok(Family { restore, save })
    }

    fn restore(&self, input: &str) -> Result<(), String> {
        let mut child = Command::new(&self.restore)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", self.restore.display()))?;
        let written = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes());
        let output = child
            .wait_with_output()
            .map_err(|err| format!("{}: {err}", self.restore.display()))?;
        if !output.status.success() || written.is_err() {
            return Err(format!(
                "{} failed ({}): {}",
                self.restore.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(())
    }

    fn save_nat(&self) -> Result<String, String> {
        let output = Command::new(&self.save)
            .args(["-t", "nat"])
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", self.save.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                self.save.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn remove(&self, chain: &str) -> Result<(), String> {
        match rules::remove(&self.save_nat()?, chain) {
            Some(input) => self.restore(&input),
            None => Ok(()),
        }
    }

    /// Removes the chains of keepers that are gone: nothing answers on their socket.
    fn sweep(&self) {
        let Ok(save) = self.save_nat() else { return };
        for chain in rules::keeper_chains(&save) {
            if alive(&chain) {
                continue;
            }
            match self.remove(&chain) {
                Ok(()) => say(&format!(
                    "removed chain {chain}, left by an agent that is gone"
                )),
                Err(err) => say(&format!("cannot remove stale chain {chain}: {err}")),
            }
        }
    }
}

/// `name` in the usual places for system tools, then on `PATH`.
fn find_tool(name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} not found (the iptables package's legacy tools)"),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn abstract_addr(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// Whether the keeper of `chain` lives (in this network namespace).
fn alive(chain: &str) -> bool {
    match abstract_addr(&rules::liveness_name(chain)) {
        Ok(addr) => UnixStream::connect_addr(&addr).is_ok(),
        Err(_) => true,
    }
}

/// Picks a chain name no living keeper holds and binds its liveness socket.
fn bind_liveness() -> io::Result<(String, UnixListener)> {
    let mut last = None;
    for _ in 0..8 {
        let mut nonce = [0u8; 4];
        // SAFETY: the buffer is valid for its length.
        let got = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
        if got != nonce.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let chain = rules::chain_name(u32::from_ne_bytes(nonce));
        match UnixListener::bind_addr(&abstract_addr(&rules::liveness_name(&chain))?) {
            Ok(listener) => return Ok((chain, listener)),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free chain name")))
}

/// The keepers' lock in this network namespace, held while this lives.
struct Lock(#[allow(dead_code)] UnixListener);

impl Lock {
    fn take() -> io::Result<Lock> {
        let addr = abstract_addr(LOCK_NAME)?;
        let started = Instant::now();
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(listener) => return Ok(Lock(listener)),
                Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                    if started.elapsed() > LOCK_PATIENCE {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("another keeper held the iptables lock for {LOCK_PATIENCE:?}"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The lock for taking `chain` away; without it when another keeper holds it too long
    /// (one stopped mid-change). Removing without the lock is never worse than not
    /// removing: at worst the other keeper's restore, read before, writes the chain back,
    /// and a chain left with its redirects would refuse every connection to the stolen
    /// ports until the next keeper sweeps it.
    fn take_or_go_on(chain: &str) -> Option<Lock> {
        Lock::take()
            .map_err(|err| say(&format!("{err}: removing chain {chain} without it")))
            .ok()
    }
}
