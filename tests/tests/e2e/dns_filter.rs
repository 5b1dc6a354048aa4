//! The DNS filter: `--local-dns` names are resolved by this machine's resolver, every other
//! name by the target's; `--remote-dns` the other way round; mirrord's
//! `feature.network.dns.filter` in a config file does the same.
//!
//! "This machine's resolver" is the client's `/etc/resolv.conf`. The machine's own file is
//! never touched: each client runs in a mount namespace of its own (`unshare --mount`) where
//! a resolv.conf naming a dnsmasq the test starts on a loopback address of its own
//! (127.53.X.Y, port 53) is bound over `/etc/resolv.conf`. That dnsmasq answers the pod's
//! name `web.svc.cluster.local` with another address than the pod's resolver does, and a
//! name the pod does not know, so every answer shows which resolver gave it.

use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_net_tests::exec::{self, Background, Outcome, Running};
use mirrord_net_tests::procfs;
use mirrord_net_tests::servers::DNSMASQ_ALONE;
use mirrord_net_tests::topology::{SERVICES_V4, WEB_FQDN};
use mirrord_net_tests::{tool, Invocation, Packets, Pod};

/// What this machine's resolver answers for the pod's name.
const HOST_WEB: &str = "192.0.2.77";
/// A name only this machine's resolver knows, and its address.
const HOST_ONLY: &str = "db.corp.example";
const HOST_ONLY_ADDR: &str = "192.0.2.78";

/// dnsmasq on 127.53.X.Y:53 in the host's namespaces, and a resolv.conf naming it.
struct HostResolver {
    _server: Background,
    resolv_conf: std::path::PathBuf,
}

impl HostResolver {
    fn start(pod: &Pod) -> HostResolver {
        let pid = std::process::id();
        let addr = format!("127.53.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
        let mut command = Command::new(tool("dnsmasq"));
        command.args(DNSMASQ_ALONE).args([
            "--port=53",
            "--local=/corp.example/",
            "--local=/cluster.local/",
        ]);
        command.arg(format!("--listen-address={addr}"));
        command.arg(format!(
            "--pid-file={}",
            pod.dir().join("host-dnsmasq.pid").display()
        ));
        command.arg(format!("--host-record={WEB_FQDN},{HOST_WEB}"));
        command.arg(format!("--host-record={HOST_ONLY},{HOST_ONLY_ADDR}"));
        let server = Background::new(Running::start(command).expect("spawn dnsmasq"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(tool("dig"))
                .args([
                    "+short",
                    "+time=1",
                    "+tries=1",
                    &format!("@{addr}"),
                    HOST_ONLY,
                ])
                .output()
                .expect("dig");
            if String::from_utf8_lossy(&out.stdout).trim() == HOST_ONLY_ADDR {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the host's dnsmasq did not answer:\n{}",
                server.running().stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let resolv_conf = pod.dir().join("host-resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {addr}\n")).expect("resolv.conf");
        HostResolver {
            _server: server,
            resolv_conf,
        }
    }

    /// Runs `invocation`'s client with this resolver as the machine's.
    fn run(&self, invocation: &Invocation) -> Outcome {
        let inner = invocation.command();
        let mut command = Command::new(tool("unshare"));
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
            .arg(&self.resolv_conf)
            .arg(inner.get_program())
            .args(inner.get_args());
        command.env_clear();
        for (key, value) in inner.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        exec::run(command, invocation.timeout_value()).unwrap_or_else(|err| panic!("{err}"))
    }
}

fn dig(names: &[(&str, &str)]) -> String {
    names
        .iter()
        .map(|(flags, name)| {
            format!(
                "{dig} +short +time=3 +tries=1 {flags} {name} | tr -d '\\n'; echo",
                dig = tool("dig")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn session(pod: &Pod, script: &str, packets: Packets, flags: &[&str]) -> Invocation {
    let args = sh(script);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut invocation = Invocation::session(pod, &args).packets(packets);
    for flag in flags {
        invocation = invocation.client_flag(flag);
    }
    invocation
}

on_every_packet_path! {
    fn local_dns_names_are_answered_by_this_machine_and_the_rest_by_the_target(packets: Packets) {
        let pod = Pod::start();
        let host = HostResolver::start(&pod);
        let script = format!(
            "{}; {}",
            dig(&[("", WEB_FQDN), ("", HOST_ONLY), ("", "postgres.svc.cluster.local")]),
            // glibc's own resolver (A and AAAA from one socket), through the short name's
            // search list: web.svc.cluster.local is asked of this machine.
            format_args!("{} ahosts web | head -1 | awk '{{print $1}}'", tool("getent")),
        );
        let out = host.run(&session(
            &pod,
            &script,
            packets,
            &["--local-dns", "WEB.svc.cluster.local.", "--local-dns", "*.corp.example"],
        ));
        let lines: Vec<&str> = out.assert_success().lines().collect();
        assert_eq!(
            lines,
            [HOST_WEB, HOST_ONLY_ADDR, &SERVICES_V4.to_string(), HOST_WEB],
            "{out}"
        );
    }

    fn dns_over_tcp_is_decided_as_udp_is(packets: Packets) {
        let pod = Pod::start();
        let host = HostResolver::start(&pod);
        // Each dig is one TCP connection to the pod's resolver, redirected to the relay,
        // which joins it to this machine's resolver or (from a socket the session's maker
        // made) to the pod's. Twice each, so the relay serves more than one connection.
        let names = [
            ("+tcp", WEB_FQDN),
            ("+tcp", HOST_ONLY),
            ("+tcp", "postgres.svc.cluster.local"),
        ];
        let script = format!("{}; {}", dig(&names), dig(&names));
        let out = host.run(&session(
            &pod,
            &script,
            packets,
            &["--local-dns", WEB_FQDN, "--local-dns", "*.corp.example"],
        ));
        let lines: Vec<&str> = out.assert_success().lines().collect();
        let services = SERVICES_V4.to_string();
        let once = [HOST_WEB, HOST_ONLY_ADDR, services.as_str()];
        assert_eq!(lines, [once, once].concat(), "{out}");
    }

    fn remote_dns_names_are_answered_by_the_target_and_the_rest_by_this_machine(packets: Packets) {
        let pod = Pod::start();
        let host = HostResolver::start(&pod);
        let script = dig(&[("", WEB_FQDN), ("", HOST_ONLY)]);
        let out = host.run(&session(
            &pod,
            &script,
            packets,
            &["--remote-dns", "*.cluster.local"],
        ));
        let lines: Vec<&str> = out.assert_success().lines().collect();
        assert_eq!(lines, [&SERVICES_V4.to_string(), HOST_ONLY_ADDR], "{out}");
    }
}

#[test]
fn without_a_dns_filter_every_name_is_the_targets() {
    let pod = Pod::start();
    let host = HostResolver::start(&pod);
    let script = dig(&[("", WEB_FQDN), ("", HOST_ONLY)]);
    let out = host.run(&session(&pod, &script, Packets::Tun, &[]));
    let lines: Vec<&str> = out.assert_success().lines().collect();
    // The pod's resolver does not know the host's name at all.
    assert_eq!(lines, [SERVICES_V4.to_string().as_str(), ""], "{out}");
}

#[test]
fn mirrords_dns_filter_in_a_config_file_is_honoured() {
    let pod = Pod::start();
    let host = HostResolver::start(&pod);
    let config = pod.dir().join("mirrord.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"feature": {{"network": {{"dns": {{"filter": {{"local": ["{WEB_FQDN}"]}}}}}}}}}}"#
        ),
    )
    .expect("config");
    let script = dig(&[("", WEB_FQDN), ("", "postgres.svc.cluster.local")]);
    let out = host.run(&session(
        &pod,
        &script,
        Packets::Tun,
        &["-f", config.to_str().unwrap()],
    ));
    let lines: Vec<&str> = out.assert_success().lines().collect();
    assert_eq!(lines, [HOST_WEB, &SERVICES_V4.to_string()], "{out}");
    assert!(!out.stderr.contains("dns"), "no warning about dns:\n{out}");
}

#[test]
fn a_bad_name_pattern_is_one_usage_line() {
    let out = Invocation::session_on(procfs::unused_pid(), &["true"])
        .client_flag("--local-dns")
        .client_flag("a.*.example")
        .run();
    out.assert_code(2);
    let stderr = out.stderr.trim();
    assert!(stderr.contains("a.*.example"), "{out}");
    assert!(stderr.contains("`*` only as the first label"), "{out}");
}

#[test]
fn a_local_name_this_machine_cannot_resolve_fails_before_any_agent_starts() {
    let pod = Pod::start();
    let host = HostResolver::start(&pod);
    // A target that does not exist: had the agent been started first, that would be the
    // error.
    let out = host.run(
        &Invocation::session_on(procfs::unused_pid(), &["true"])
            .client_flag("--local")
            .client_flag("nothing.corp.example:5432"),
    );
    assert_ne!(out.code(), Some(0), "{out}");
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line:\n{out}");
    assert!(
        stderr.contains("--local nothing.corp.example: this machine cannot resolve it"),
        "{out}"
    );
    assert!(!stderr.contains("process"), "{out}");
}
