//! A session is the target's, not the host's: its hostname, resolver files and loopback are
//! the pod's, and the host's own files are untouched.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrord_net_tests::{run_in_session, tool, Invocation, Pod};

/// Listens on the host's loopback and counts the connections it accepts.
struct HostListener {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl HostListener {
    fn start(address: &str) -> HostListener {
        let listener = TcpListener::bind(address).unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut sink = [0u8; 1024];
                let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = stream.read(&mut sink);
            }
        });
        HostListener { address, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

#[test]
fn host_loopback_services_are_not_reachable_from_the_session() {
    let pod = Pod::start();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = HostListener::start(bind);
        // The listener works: the host itself reaches it.
        TcpStream::connect(listener.address).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(listener.accepted(), 1);

        let url = format!("http://{}/", listener.address);
        let url_host = listener.address.ip();
        let out = run_in_session(&pod, &[&tool("curl"), "-sS", "-g", "-m", "3", &url]);
        assert_ne!(
            out.code(),
            Some(0),
            "the session reached the host's {url_host}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            listener.accepted(),
            1,
            "the host's {url_host} listener saw a connection from the session:\n{out}"
        );
    }
}

#[test]
fn session_hostname_is_the_targets() {
    let pod = Pod::start();
    let out = run_in_session(&pod, &["uname", "-n"]);
    assert_eq!(out.assert_success().trim(), pod.hostname(), "{out}");
    let host = nix::unistd::gethostname().unwrap();
    assert_ne!(
        host.to_string_lossy(),
        pod.hostname(),
        "the host's hostname must not change"
    );
}

#[test]
fn session_sees_the_targets_resolv_conf_and_hosts_and_the_hosts_files_are_unchanged() {
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap();
    let host_hosts = std::fs::read("/etc/hosts").unwrap();
    let pod = Pod::start();
    let resolv = run_in_session(&pod, &["cat", "/etc/resolv.conf"]);
    assert_eq!(resolv.assert_success(), pod.resolv_conf(), "{resolv}");
    let hosts = run_in_session(&pod, &["cat", "/etc/hosts"]);
    assert_eq!(hosts.assert_success(), pod.hosts(), "{hosts}");
    assert_eq!(
        std::fs::read("/etc/resolv.conf").unwrap(),
        host_resolv,
        "the host's resolv.conf changed"
    );
    assert_eq!(
        std::fs::read("/etc/hosts").unwrap(),
        host_hosts,
        "the host's hosts changed"
    );
}

#[test]
fn command_runs_as_the_sudo_user() {
    let pod = Pod::start();
    let out = Invocation::session(&pod, &["id", "-u"])
        .as_user(65534, 65534)
        .run();
    assert_eq!(out.assert_success().trim(), "65534", "{out}");
    let out = Invocation::session(&pod, &["id", "-g"])
        .as_user(65534, 65534)
        .run();
    assert_eq!(out.assert_success().trim(), "65534", "{out}");
}

#[test]
fn as_root_keeps_root_even_when_invoked_through_sudo() {
    let pod = Pod::start();
    let out = Invocation::session(&pod, &["id", "-u"])
        .as_user(65534, 65534)
        .client_flag("--as-root")
        .run();
    assert_eq!(out.assert_success().trim(), "0", "{out}");
}
