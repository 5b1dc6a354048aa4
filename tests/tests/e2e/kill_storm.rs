//! Sessions SIGKILLed at random moments leave nothing behind.
//!
//! One pod, whose namespace runs a "deployed" service on port 8080 (as in `incoming`). Then
//! [`sessions`] sessions, [`CONCURRENT`] at a time, each keeping traffic going: a curl loop
//! to the services' web server and a TCP connection held open to their hold-echo server;
//! the sessions of one worker also steal port 8080 (a patched server listening on it in the
//! session), so the agent writes nftables rules in the target's namespace. At a random
//! moment after it was started, which may be before the session is up, each session loses
//! one of its processes to SIGKILL, in turn:
//!
//! - the client (`mirrord-net exec`): its agent sees its client gone and exits, the
//!   session's namespaces die with the processes in them;
//! - the agent (a child of the client): its netlink-owned nftables table vanishes with it;
//!   the client watches its local agent's process and ends the session with an error at
//!   once (with the default 15 s reconnect window: QUIC's timeout would take 18 s, beyond
//!   [`CLIENT_EXIT`]);
//! - the command (PID 2 of the session's PID namespace): the session ends normally.
//!
//! A victim that does not exist yet (killed too early) is replaced by the client. After
//! every client has exited (each within [`CLIENT_EXIT`] of the kill), nothing may be left:
//! no agent process, no process or descriptor in any session's namespaces, no new mount,
//! TUN or interface (`leftovers::Baseline`, within [`LEFTOVERS`]), the pod's rule set as
//! before the storm, the target alive and the deployed service answering.
//!
//! The moments come from a xorshift generator seeded by `MIRRORD_NET_KILL_STORM_SEED`, or by
//! the clock; the seed is printed first and named in every failure. A moment cannot be
//! replayed exactly (the machine's load moves the sessions), but the victims and delays are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mirrord_net_tests::exec::Running;
use mirrord_net_tests::leftovers::{Baseline, SessionNamespaces};
use mirrord_net_tests::topology::{HOLD_ECHO_PORT, HTTP_PORT, SERVICES_V4};
use mirrord_net_tests::{procfs, sh, Invocation, Pod};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::incoming::{assert_ruleset_restored, deployed, ruleset, PORT};
use super::incoming_shared::ask;

/// Sessions in the CI run. `MIRRORD_NET_KILL_STORM=100` (or any count) raises it for a long
/// run: `MIRRORD_NET_KILL_STORM=100 cargo nextest run ... -E 'test(/kill_storm/)'`. On 2
/// cores 24 sessions take about 22 s, 100 about 80 s (a killed agent's session lasts ~5 s).
const SESSIONS: usize = 24;
/// Sessions alive at once (this runs on 2 cores).
const CONCURRENT: usize = 4;
/// The kill comes this long after the client was started, at most.
const LATEST_KILL: Duration = Duration::from_millis(3000);
/// How soon after the kill the client must have exited: for a killed agent, up to 3 s for the
/// command to go on SIGTERM, with room for a loaded machine.
const CLIENT_EXIT: Duration = Duration::from_secs(12);
/// How soon after the last client exited everything must be gone (the bound the liveness
/// rule gives an agent whose client is gone).
const LEFTOVERS: Duration = Duration::from_secs(5);

fn sessions() -> usize {
    match std::env::var("MIRRORD_NET_KILL_STORM") {
        Ok(count) => count
            .parse()
            .unwrap_or_else(|_| panic!("MIRRORD_NET_KILL_STORM={count:?} is not a count")),
        Err(_) => SESSIONS,
    }
}

fn seed() -> u64 {
    match std::env::var("MIRRORD_NET_KILL_STORM_SEED") {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("MIRRORD_NET_KILL_STORM_SEED={seed:?} is not a number")),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

/// xorshift64*: plenty for picking delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Client,
    Agent,
    Command,
}

const VICTIMS: [Victim; 3] = [Victim::Client, Victim::Agent, Victim::Command];

/// What happened to one session.
#[derive(Debug)]
struct Record {
    index: usize,
    steals: bool,
    wanted: Victim,
    /// What was killed: `wanted`, or the client if that did not exist yet.
    killed: Victim,
    after: Duration,
    namespaces: Option<SessionNamespaces>,
    /// Whether an agent's table was in the pod's rule set when a stealing session was killed.
    rules_at_kill: bool,
    /// How the client ended, or what went wrong.
    end: Result<String, String>,
}

#[test]
fn sessions_sigkilled_at_random_moments_leave_nothing() {
    let count = sessions();
    let seed = seed();
    eprintln!("kill storm: {count} sessions, seed {seed} (MIRRORD_NET_KILL_STORM_SEED={seed})");
    let started = Instant::now();

    let pod = Pod::builder().hold_echo().build();
    let before = ruleset(&pod);
    let mut service = deployed(&pod);
    let service_pgid = service.running().pid();
    let target = pod.target_pid() as i32;
    let baseline = Baseline::capture(Some(&pod)).also_fixture(service_pgid);
    let context = format!("kill storm with seed {seed}");

    let next = AtomicUsize::new(0);
    let records = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for worker in 0..CONCURRENT {
            let (pod, next, records) = (&pod, &next, &records);
            scope.spawn(move || loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return;
                }
                let mut rng = Rng::new(seed.wrapping_add(index as u64));
                let wanted = VICTIMS[index % VICTIMS.len()];
                let delay = Duration::from_millis(rng.below(LATEST_KILL.as_millis() as u64));
                let record = storm_one(pod, index, worker == 0, wanted, delay);
                records.lock().unwrap().push(record);
            });
        }
    });
    let mut records = records.into_inner().unwrap();
    records.sort_by_key(|record| record.index);
    let storm_time = started.elapsed();

    let table: Vec<String> = records
        .iter()
        .map(|record| {
            format!(
                "#{:<3} {} {} wanted {:?}, killed {:?} at {:?}: {}",
                record.index,
                match (record.steals, record.rules_at_kill) {
                    (true, true) => "steal (rules)",
                    (true, false) => "steal        ",
                    _ => "             ",
                },
                record
                    .namespaces
                    .as_ref()
                    .map_or("(no namespaces yet)", |ns| ns.net.as_str()),
                record.wanted,
                record.killed,
                record.after,
                match &record.end {
                    Ok(end) => end.clone(),
                    Err(err) => format!("FAILED: {err}"),
                }
            )
        })
        .collect();
    eprintln!("{}", table.join("\n"));
    let failed: Vec<&String> = table
        .iter()
        .filter(|line| line.contains("FAILED"))
        .collect();
    assert!(
        failed.is_empty(),
        "{context}: sessions did not end as they should:\n{}",
        failed
            .iter()
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each kind of victim was really hit, and a steal was in force when its session was
    // killed, or the test proves less than it says.
    assert!(
        count < VICTIMS.len() * CONCURRENT || records.iter().any(|record| record.rules_at_kill),
        "{context}: no stealing session had its rules in place when it was killed:\n{}",
        table.join("\n")
    );
    for victim in VICTIMS.iter().copied().filter(|_| count >= VICTIMS.len()) {
        assert!(
            records.iter().any(|record| record.killed == victim),
            "{context}: no session lost its {victim:?}:\n{}",
            table.join("\n")
        );
    }

    let namespaces: Vec<SessionNamespaces> = records
        .iter()
        .filter_map(|record| record.namespaces.clone())
        .collect();
    // The namespace checks below must have namespaces to look at.
    assert!(
        !namespaces.is_empty(),
        "{context}: no session's namespaces were seen:\n{}",
        table.join("\n")
    );
    baseline.assert_all_clean_within(Some(&pod), &namespaces, LEFTOVERS, &context);
    assert_ruleset_restored(&pod, &before);
    assert!(
        procfs::is_alive(target),
        "{context}: the target (process {target}) is gone"
    );
    // The last stealing session may have died just now: its port is the target's again
    // within the same bound as everything else.
    let deadline = Instant::now() + LEFTOVERS;
    loop {
        match ask(&pod, None) {
            Ok(tag) if tag == "v1" => break,
            answer => assert!(
                Instant::now() < deadline,
                "{context}: the deployed service does not answer for itself: {answer:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "kill storm: {count} sessions in {storm_time:.1?}, {:.1?} in all",
        started.elapsed()
    );
}

/// Starts session `index`, kills its `wanted` process `delay` after the start, waits for
/// its client to exit.
fn storm_one(pod: &Pod, index: usize, steals: bool, wanted: Victim, delay: Duration) -> Record {
    let traffic = format!(
        "(sleep 600 | socat -u - TCP:{SERVICES_V4}:{HOLD_ECHO_PORT}) & \
         while :; do curl -s -o /dev/null --max-time 2 http://{SERVICES_V4}:{HTTP_PORT}/; sleep 0.1; done"
    );
    let script = if steals {
        format!(
            "python3 {} {PORT} v2 & {traffic}",
            pod.script("tagged_httpd.py")
        )
    } else {
        traffic
    };
    let mut invocation = Invocation::session(pod, &sh(&script));
    if steals {
        invocation = invocation
            .client_flag("--steal")
            .client_flag(&PORT.to_string());
    }
    let running = invocation.start();
    let client = running.pid();
    let started = Instant::now();
    std::thread::sleep(delay);

    let namespaces = session_namespaces(client);
    let agent = agent_of(client);
    let rules_at_kill = steals && ruleset(pod).contains("mirrord-net-");
    let victim_pid = match wanted {
        Victim::Client => Some(client),
        Victim::Agent => agent_of(client),
        Victim::Command => command_of(client),
    };
    let (killed, pid) = match victim_pid {
        Some(pid) => (wanted, pid),
        None => (Victim::Client, client),
    };
    let after = started.elapsed();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    let end = client_end(running, after + CLIENT_EXIT, killed).and_then(|end| match agent {
        Some(agent) => agent_gone(agent).map(|()| end),
        None => Ok(end),
    });
    Record {
        index,
        steals,
        wanted,
        killed,
        after,
        namespaces,
        rules_at_kill,
        end,
    }
}

/// How the client ended, or an error if it did not within `timeout` of its start or not
/// as it should have after losing `killed`: killed itself, an error of its own for a lost
/// agent, the command's status (128 + SIGKILL) for a killed command.
fn client_end(running: Running, timeout: Duration, killed: Victim) -> Result<String, String> {
    let out = running
        .finish(timeout)
        .map_err(|timed_out| format!("the client did not exit: {timed_out}"))?;
    let last = out.stderr.lines().last().unwrap_or("").trim().to_string();
    let (status, elapsed) = (out.status, out.elapsed);
    let text = format!("client {status:?} after {elapsed:.1?}, last line {last:?}");
    let expected = match killed {
        Victim::Client => out.code().is_none(),
        Victim::Agent => out.code().is_some_and(|code| code != 0),
        Victim::Command => out.code() == Some(128 + 9),
    };
    if expected {
        Ok(text)
    } else {
        Err(format!("unexpected end: {text}\n{out}"))
    }
}

/// Waits until the session's agent is gone, at most [`LEFTOVERS`] after its client exited:
/// checked for each session as it ends, since the storm as a whole lasts longer than that.
fn agent_gone(agent: i32) -> Result<(), String> {
    let deadline = Instant::now() + LEFTOVERS;
    // A zombie is gone (the subreaper test reaps it later), and a PID reused by another
    // program is not the agent.
    while procfs::is_alive(agent)
        && procfs::program_name(agent).is_some_and(|name| name == "mirrord-net-agent")
    {
        if Instant::now() >= deadline {
            return Err(format!(
                "its agent, process {agent}, still runs {LEFTOVERS:?} after the client exited"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The session's agent, a child of its client.
fn agent_of(client: i32) -> Option<i32> {
    procfs::descendants_of(client)
        .into_iter()
        .find(|proc| procfs::program_name(proc.pid).is_some_and(|name| name == "mirrord-net-agent"))
        .map(|proc| proc.pid)
}

/// The session's command: PID 2 of the session's PID namespace, a descendant of the client.
fn command_of(client: i32) -> Option<i32> {
    procfs::descendants_of(client)
        .into_iter()
        .find(|proc| nspid(proc.pid).is_some_and(|ids| ids.len() > 1 && ids.last() == Some(&2)))
        .map(|proc| proc.pid)
}

/// The `NSpid:` line of a process: its PID in each PID namespace it is in, outermost first.
fn nspid(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|id| id.parse().ok())
            .collect(),
    )
}

/// The namespaces of the session, read from the first descendant of the client (not the
/// agent) that left the host's network namespace; `None` before there is one.
fn session_namespaces(client: i32) -> Option<SessionNamespaces> {
    let host = procfs::ns_of(std::process::id() as i32, "net")?;
    procfs::descendants_of(client).into_iter().find_map(|proc| {
        if procfs::program_name(proc.pid).is_some_and(|name| name == "mirrord-net-agent") {
            return None;
        }
        let net = procfs::ns_of(proc.pid, "net")?;
        if net == host {
            return None;
        }
        Some(SessionNamespaces {
            net,
            mnt: procfs::ns_of(proc.pid, "mnt")?,
            uts: procfs::ns_of(proc.pid, "uts")?,
        })
    })
}
