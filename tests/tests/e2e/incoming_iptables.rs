//! Stealing through iptables (`--redirect-with iptables`): the redirect the agent falls back
//! to where the target's kernel has no nftables, held by the agent's keeper process.
//!
//! The same pod, services and clients as `incoming`; what differs is what is checked: the
//! pod's iptables (legacy) state holds the keeper's chain while the session steals, and is
//! exactly as before once the agent is gone, whether the session ended, its agent was
//! SIGKILLed (the keeper removes the chain), or agent and keeper were both SIGKILLed (the
//! next session's keeper removes the stale chain). This machine's kernel has nf_tables, so
//! the flag stands in for a kernel without it; the automatic choice is the same code path
//! from the point where it is made.
//!
//! Giving a port back while a connection stolen before is still open is tested here for
//! both redirects (the session's client silent) and, with nftables, for the session's
//! program closing its listener: the connection stays the session's either way.

use std::time::{Duration, Instant};

use mirrord_net_tests::exec::{KilledOnDrop, Running};
use mirrord_net_tests::netfilter_state;
use mirrord_net_tests::topology::POD_V4;
use mirrord_net_tests::{procfs, tool, Pod};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::incoming::{
    deployed, get, keyed_steal, matching_switches_to, patched, ruleset, session, switches_to,
    tag_with, Group, PORT, SWITCH,
};

/// The pod's legacy iptables state (see `netfilter_state::iptables_state`).
fn iptables_state(pod: &Pod) -> String {
    netfilter_state::iptables_state(|program| pod.pod_netns().command(program).unwrap())
}

fn assert_iptables_restored(pod: &Pod, before: &str) {
    let start = Instant::now();
    while iptables_state(pod) != before {
        assert!(
            start.elapsed() < SWITCH,
            "the pod's iptables state is not as before:\nbefore:\n{before}\nnow:\n{}",
            iptables_state(pod)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pod's agent and its keeper: `(agent, keeper)`.
fn agent_and_keeper(pod: &Pod) -> (i32, i32) {
    let start = Instant::now();
    loop {
        let agent = pod.local_agent();
        let keeper = agent.and_then(|agent| {
            procfs::all()
                .into_iter()
                .find(|proc| {
                    proc.ppid == agent
                        && procfs::cmdline(proc.pid).get(1).map(String::as_str)
                            == Some("__iptables-keeper")
                })
                .map(|proc| proc.pid)
        });
        if let (Some(agent), Some(keeper)) = (agent, keeper) {
            return (agent, keeper);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no agent with a keeper for target {}",
            pod.target_pid()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn iptables_steal(extra: &[&'static str]) -> Vec<&'static str> {
    let mut flags = vec!["--redirect-with", "iptables"];
    flags.extend_from_slice(extra);
    flags
}

#[test]
fn iptables_steal_takes_every_request_and_a_sigkilled_agents_chain_goes_with_its_keeper() {
    let pod = Pod::start();
    let iptables_before = iptables_state(&pod);
    let nft_before = ruleset(&pod);
    let _v1 = deployed(&pod);

    let mut session = session(&pod, &iptables_steal(&["--steal", "8080"]), &patched(&pod));
    session.wait_for("listening");
    switches_to(&pod, "v2", SWITCH, &session);
    let stealing = iptables_state(&pod);
    assert!(
        stealing.contains("-A PREROUTING -j MNET-") && stealing.contains("--dport 8080"),
        "the keeper's chain redirects port 8080:\n{stealing}"
    );
    assert_eq!(
        ruleset(&pod),
        nft_before,
        "no nftables table when stealing through iptables"
    );
    for _ in 0..20 {
        let (tag, seen, own) = get(&pod).unwrap();
        assert_eq!(tag, "v2", "every request goes to the session");
        assert_eq!(seen, own, "the session's server sees the real client");
    }

    // SIGKILL the agent alone: its keeper sees its stdin close and removes the chain. The
    // connections redirected meanwhile to the agent's listeners, which the keeper holds
    // too, are taken to the target: none is refused or left hanging. A second client keeps
    // asking through the kill, so some connections fall in that window.
    let (agent, keeper) = agent_and_keeper(&pod);
    let through_the_kill = std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            let start = Instant::now();
            let mut answers = Vec::new();
            while start.elapsed() < Duration::from_millis(400) {
                answers.push(get(&pod).map(|(tag, _, _)| tag));
            }
            answers
        });
        std::thread::sleep(Duration::from_millis(100));
        let killed = Instant::now();
        kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
        (killed, asking.join().unwrap())
    });
    let (killed, answers) = through_the_kill;
    // A connection the agent had taken into the session ends with it (curl: 18, 52 or 56),
    // as with nftables; one refused (7) or left unanswered (28) would be the redirect's.
    let lost: Vec<&String> = answers
        .iter()
        .filter_map(|answer| answer.as_ref().err())
        .filter(|err| err.contains("exit status: 7)") || err.contains("exit status: 28)"))
        .collect();
    assert!(
        lost.is_empty(),
        "requests refused or unanswered through the agent's SIGKILL: {lost:?}"
    );
    let back = switches_to(&pod, "v1", SWITCH, &session);
    assert_iptables_restored(&pod, &iptables_before);
    let restored = killed.elapsed();
    while procfs::is_alive(keeper) {
        assert!(
            killed.elapsed() < SWITCH,
            "the keeper outlived its agent by {SWITCH:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "agent SIGKILLed: requests on the target after {back:?}, chain gone after {restored:?}"
    );
    assert_eq!(ruleset(&pod), nft_before);
}

#[test]
fn iptables_filtered_steal_and_a_stale_chain_is_swept_by_the_next_keeper() {
    let pod = Pod::start();
    let before = iptables_state(&pod);
    let _v1 = deployed(&pod);
    let key = "sweep-1";
    let header = format!("X-Verifier-Run: {key}");

    // A session whose agent and keeper are both SIGKILLed, as when the pod goes at once:
    // its chain stays behind.
    let mut first = session(&pod, &iptables_steal(&keyed_steal(key)), &patched(&pod));
    first.wait_for("listening");
    matching_switches_to(&pod, Some(&header), "/", "v2");
    assert_eq!(tag_with(&pod, None, "/").as_deref(), Some("v1"));
    let (agent, keeper) = agent_and_keeper(&pod);
    kill(Pid::from_raw(keeper), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    first.kill();
    let stale = iptables_state(&pod);
    assert!(
        stale.contains(":MNET-"),
        "a keeper killed with its agent leaves its chain:\n{stale}"
    );

    // The next session's keeper removes it before it makes its own.
    let mut second = session(&pod, &iptables_steal(&keyed_steal(key)), &patched(&pod));
    second.wait_for("listening");
    matching_switches_to(&pod, Some(&header), "/", "v2");
    let now = iptables_state(&pod);
    let chains: std::collections::BTreeSet<&str> = now
        .lines()
        .filter_map(|line| line.split(" :").nth(1))
        .collect();
    assert_eq!(chains.len(), 1, "only the live keeper's chain:\n{now}");

    // A session that ends normally leaves nothing.
    second.kill();
    matching_switches_to(&pod, Some(&header), "/", "v1");
    assert_iptables_restored(&pod, &before);
}

/// A connection that reached the agent's listener unaccepted when the agent died is taken to
/// the target by the keeper; one that then stays open is cut 5 s after the agent's end, so
/// the keeper and its chain outlive the agent no longer than the liveness rule allows. The
/// agent is stopped (SIGSTOP) first, so the connection is surely queued, then SIGKILLed.
#[test]
fn the_keeper_takes_a_queued_connection_to_the_target_and_cuts_it_after_five_seconds() {
    let pod = Pod::start();
    let iptables_before = iptables_state(&pod);
    let _v1 = deployed(&pod);
    let mut session = session(&pod, &iptables_steal(&["--steal", "8080"]), &patched(&pod));
    session.wait_for("listening");
    switches_to(&pod, "v2", SWITCH, &session);

    let (agent, keeper) = agent_and_keeper(&pod);
    kill(Pid::from_raw(agent), Signal::SIGSTOP).unwrap();
    // Connects (the kernel queues it on the stopped agent's listener), then asks once the
    // agent is gone, then waits for the connection to end.
    let go_on = pod.dir().join("agent-killed");
    let script = format!(
        "import os, socket, time\n\
         s = socket.create_connection(('{POD_V4}', {PORT}), timeout=5)\n\
         print('connected', flush=True)\n\
         while not os.path.exists('{go_on}'): time.sleep(0.02)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: pod\\r\\n\\r\\n')\n\
         answer = b''\n\
         while not answer.partition(b'\\r\\n\\r\\n')[2].endswith(b'\\n'):\n\
         \x20   chunk = s.recv(4096)\n\
         \x20   if not chunk: break\n\
         \x20   answer += chunk\n\
         body = answer.partition(b'\\r\\n\\r\\n')[2].decode()\n\
         print(body.split()[0] if body.strip() else 'no answer: %r' % answer, flush=True)\n\
         s.settimeout(30)\n\
         start = time.monotonic()\n\
         try:\n\
         \x20   while s.recv(4096): pass\n\
         \x20   print('ended: closed', flush=True)\n\
         except OSError as err:\n\
         \x20   print('ended', repr(err), flush=True)\n",
        go_on = go_on.display()
    );
    let mut command = pod.services_netns().command(&tool("python3")).unwrap();
    command.args(["-c", &script]);
    let mut client = Group::start(command);
    client.wait_for("connected");
    let killed = Instant::now();
    kill(Pid::from_raw(agent), Signal::SIGKILL).unwrap();
    std::fs::write(&go_on, "").unwrap();
    client.wait_for("v1");

    while procfs::is_alive(keeper) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the keeper still runs {:?} after its agent's SIGKILL",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = killed.elapsed();
    assert!(
        gone >= Duration::from_secs(4),
        "the keeper ended after {gone:?}, before it had to cut the connection"
    );
    assert_iptables_restored(&pod, &iptables_before);
    client.wait_for("ended");
    eprintln!("the keeper cut the held connection and ended {gone:?} after the agent's SIGKILL");
}

/// A connection stolen before the session gives its port back stays the session's: the
/// redirect goes, and the keeper's chain keeps conntrack on, so the connection's NAT keeps
/// working (without it, deleting the last REDIRECT of the namespace stops conntrack there,
/// and the connection's answers leave from the agent's listener port and are reset). The
/// client is stopped (SIGSTOP) so the agent hears nothing and unsteals after 3 s; the
/// session's packets keep flowing, since the local agent writes the session's TUN itself.
#[test]
fn iptables_unsteal_keeps_a_stolen_connection_under_way() {
    unsteal_keeps_a_stolen_connection_under_way(
        &iptables_steal(&["--steal", "8080"]),
        GiveBack::SilentClient,
        |pod| iptables_state(pod).contains("--dport 8080"),
    );
}

/// The same with nftables, whose `nat` chain holds conntrack for the table's life.
#[test]
fn nftables_unsteal_keeps_a_stolen_connection_under_way() {
    unsteal_keeps_a_stolen_connection_under_way(
        &["--steal", "8080"],
        GiveBack::SilentClient,
        |pod| ruleset(pod).contains("dport 8080"),
    );
}

/// The same when the port goes back because the session's program stops listening (as a
/// server draining before a restart) but goes on answering on the connection it has.
#[test]
fn a_closed_listener_gives_the_port_back_and_keeps_its_stolen_connection() {
    unsteal_keeps_a_stolen_connection_under_way(
        &["--steal", "8080"],
        GiveBack::ListenerClosed,
        |pod| ruleset(pod).contains("dport 8080"),
    );
}

/// Why the agent gives a stolen port back while a connection stolen before stays open.
enum GiveBack {
    /// The session's client falls silent (SIGSTOP): the agent hears nothing for 3 s.
    SilentClient,
    /// The session's program closes its listening socket and keeps its connections.
    ListenerClosed,
}

fn unsteal_keeps_a_stolen_connection_under_way(
    flags: &[&str],
    give_back: GiveBack,
    redirecting: impl Fn(&Pod) -> bool,
) {
    let pod = Pod::start();
    let _v1 = deployed(&pod);
    let stop = pod.dir().join("stop-listening");
    let server = match give_back {
        GiveBack::SilentClient => patched(&pod),
        GiveBack::ListenerClosed => format!(
            "exec python3 {} {PORT} v2 {} drain",
            pod.script("tagged_httpd.py"),
            stop.display()
        ),
    };
    let mut session = session(&pod, flags, &server);
    session.wait_for("listening");
    switches_to(&pod, "v2", SWITCH, &session);

    // One keep-alive connection: a request now, another once the port is given back.
    let go_on = pod.dir().join("second-request");
    let script = format!(
        "import http.client, os, sys, time\n\
         c = http.client.HTTPConnection('{POD_V4}', {PORT}, timeout=5)\n\
         c.request('GET', '/'); print(c.getresponse().read().decode().split()[0], flush=True)\n\
         while not os.path.exists('{go_on}'): time.sleep(0.05)\n\
         try:\n\
         \x20   c.request('GET', '/'); print(c.getresponse().read().decode().split()[0], flush=True)\n\
         except Exception as err:\n\
         \x20   print('lost', repr(err), flush=True)\n",
        go_on = go_on.display()
    );
    let mut command = pod.services_netns().command(&tool("python3")).unwrap();
    command.args(["-c", &script]);
    let mut client = Running::start(command).expect("python3");
    assert!(
        client.wait_for_stdout("v2", Duration::from_secs(10)),
        "the first request is the session's: {}{}",
        client.stdout_so_far(),
        client.stderr_so_far()
    );

    let client_pid = Pid::from_raw(session.running().pid());
    match give_back {
        // The agent gives the port back after 3 s of silence.
        GiveBack::SilentClient => kill(client_pid, Signal::SIGSTOP).unwrap(),
        // The session's watcher sees the listener gone, and the session unsteals.
        GiveBack::ListenerClosed => {
            std::fs::write(&stop, "").unwrap();
            session.wait_for("stopped");
        }
    }
    let start = Instant::now();
    while redirecting(&pod) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the port was not given back:\n{}\n{}",
            iptables_state(&pod),
            ruleset(&pod)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        get(&pod).unwrap().0,
        "v1",
        "new connections are the target's"
    );

    std::fs::write(&go_on, "").unwrap();
    let finished = client.finish(Duration::from_secs(10));
    if let GiveBack::SilentClient = give_back {
        kill(client_pid, Signal::SIGCONT).unwrap();
    }
    let out = finished.expect("the client ends");
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["v2", "v2"],
        "the connection stolen before stays the session's: {out:?}"
    );
}

/// A keeper run as the agent runs it (its stdin and stdout one end of a socket pair), in the
/// pod's namespace, SIGKILLed if the test fails before it ends (its chain goes with the pod).
struct DirectKeeper {
    child: KilledOnDrop,
}

impl DirectKeeper {
    /// Starts one, waits for its `ready` and asks it to redirect port 8080; returns it and
    /// the agent's end of its channel, on which the answer is still to be read.
    fn start_asking(pod: &Pod) -> (DirectKeeper, std::os::unix::net::UnixStream) {
        use std::io::{BufRead, BufReader, Write};
        use std::os::fd::OwnedFd;
        use std::os::unix::net::UnixStream;
        use std::process::Stdio;

        let (ours, theirs) = UnixStream::pair().unwrap();
        let theirs = OwnedFd::from(theirs);
        let agent = mirrord_net_tests::session::bin_dir().join("mirrord-net-agent");
        let mut command = pod.pod_netns().command(agent.to_str().unwrap()).unwrap();
        command
            .arg("__iptables-keeper")
            .stdin(Stdio::from(theirs.try_clone().unwrap()))
            .stdout(Stdio::from(theirs))
            .stderr(Stdio::piped());
        let keeper = DirectKeeper {
            child: KilledOnDrop(command.spawn().unwrap()),
        };
        let mut ready = String::new();
        BufReader::new(&ours).read_line(&mut ready).unwrap();
        assert!(
            ready.starts_with("ready MNET-"),
            "the keeper said {ready:?}"
        );
        (&ours).write_all(b"ports 8080:40000\n").unwrap();
        (keeper, ours)
    }

    /// Waits for the keeper's exit (at most `within`); asserts it succeeded and returns what
    /// it said on stderr.
    fn wait_success(mut self, within: Duration) -> String {
        use std::io::Read;

        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < within,
                "the keeper still runs {:?} after its agent's end",
                started.elapsed()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut said = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut said)
            .unwrap();
        assert!(status.success(), "the keeper failed ({status}):\n{said}");
        said
    }
}

/// An agent that dies after asking for a change and before reading the answer breaks the
/// keeper's channel with an answer nobody takes: that means the agent is gone as surely as
/// a closed channel, and the keeper removes its chain and ends.
#[test]
fn a_keeper_whose_agent_dies_before_its_answer_removes_its_chain() {
    let pod = Pod::start();
    let before = iptables_state(&pod);
    // The request, and the agent's end gone before the keeper can answer.
    let (keeper, ours) = DirectKeeper::start_asking(&pod);
    drop(ours);
    let said = keeper.wait_success(Duration::from_secs(10));
    assert!(
        said.contains("the channel to the agent broke"),
        "the keeper's answer should have failed:\n{said}"
    );
    assert_iptables_restored(&pod, &before);
}

/// A keeper that cannot take the namespace's keeper lock when its agent is gone (another
/// keeper stopped while holding it) removes its chain without the lock once it has waited
/// its patience (5 s): a chain left with its redirects would refuse every connection to the
/// stolen port. The test holds the lock itself.
#[test]
fn a_keeper_kept_from_the_lock_removes_its_chain_without_it() {
    use std::io::{BufRead, BufReader};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};

    let pod = Pod::start();
    let before = iptables_state(&pod);
    let (keeper, ours) = DirectKeeper::start_asking(&pod);
    let mut answer = String::new();
    BufReader::new(&ours).read_line(&mut answer).unwrap();
    assert_eq!(answer, "ok\n");
    assert!(iptables_state(&pod).contains("--dport 8080"));

    let lock = pod
        .pod_netns()
        .run(|| {
            UnixListener::bind_addr(
                &SocketAddr::from_abstract_name(b"mirrord-net/iptables.lock").unwrap(),
            )
        })
        .unwrap()
        .expect("the keepers' lock is free while no keeper changes anything");
    let gone = Instant::now();
    drop(ours);
    let said = keeper.wait_success(Duration::from_secs(20));
    let took = gone.elapsed();
    assert!(
        said.contains("removing chain") && said.contains("without it"),
        "the keeper should have said it went on without the lock:\n{said}"
    );
    assert!(
        took >= Duration::from_secs(5),
        "the keeper ended {took:?} after its agent, before its patience ran out"
    );
    assert_iptables_restored(&pod, &before);
    drop(lock);
}
