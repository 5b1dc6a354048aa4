//! `mirrord-net demo`: a session on a throwaway local "pod", with nothing else installed.
//!
//! The demo shows the product on a bare machine: no cluster, no container runtime, no DNS
//! server, no curl. It builds the pieces a real pod would offer and then uses the ordinary
//! session path on them:
//!
//! 1. **The pod** ([`pod`]): this binary re-executed as `__demo-pod`, in its own network, mount
//!    and UTS namespaces. It has the hostname `demo-pod`, the addresses 10.89.0.2 and fd89::2 on
//!    `eth0`, a Kubernetes-style resolv.conf (nameserver 10.89.0.53, search
//!    `demo.svc.cluster.local svc.cluster.local cluster.local`, `ndots:5`) and hosts file
//!    mounted over its own `/etc`, a DNS server ([`dns`]) that knows the service
//!    `hello.demo.svc.cluster.local`, and that service ([`http`]) on 10.89.0.10:80 and
//!    [fd89::10]:80. The pod dies with this process (`PR_SET_PDEATHSIG`), and everything it
//!    made lives in its namespaces, so nothing of it outlives the demo, even after SIGKILL.
//! 2. **The session**: [`crate::run::run_session`] on `pid/<pod>`, exactly what
//!    `mirrord-net exec --as-root --target pid/<pod> -- CMD` does. By default CMD is this binary
//!    again as `__demo-probe` ([`probe`]), which prints what a process sees inside the session:
//!    the pod's hostname and resolver, the short name `hello` resolved through the system
//!    resolver, an HTTP GET of `http://hello/`, an IPv6 connection, and that the host's
//!    loopback is not reachable. `mirrord-net demo -- CMD ARGS` runs the user's command instead.
//! 3. The pod is removed and the demo exits with the command's exit code.
//!
//! The narration goes to stderr, like every status message of mirrord-net; the command's own
//! output is untouched.

mod dns;
mod http;
mod names;
mod pod;
mod probe;

use std::ffi::OsString;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};

pub(crate) use names::{
    DNS_IPV4, POD_HOSTNAME, POD_IPV4, POD_IPV6, SEARCH, SERVICE_IPV4, SERVICE_IPV6, SERVICE_NAME,
    SERVICE_PORT,
};
pub use names::{POD_ARG, PROBE_ARG};
pub use pod::pod_main;
pub use probe::probe_main;

use crate::cli::SessionArgs;
use crate::local_agent::{self, AgentError};
use crate::run;
use crate::run_error::RunError;
use crate::target::Target;
use pod::{Pod, PodError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "the demo needs root to create the namespaces of its pod and of the session: run it \
         with sudo"
    )]
    NeedRoot,
    #[error(
        "{0} (the demo runs a session, which needs the agent: `cargo build --release` builds both)"
    )]
    NoAgent(AgentError),
    #[error("cannot find this program's own binary to start the demo pod: {0}")]
    OwnBinary(std::io::Error),
    #[error("cannot listen on the host's loopback for the demo's isolation check: {0}")]
    HostListener(std::io::Error),
    #[error("the demo pod could not start: {0}")]
    Pod(#[from] PodError),
    #[error("{0}")]
    Session(#[from] RunError),
}

/// Runs the demo and returns the command's shell-style exit code.
///
/// Must be awaited on the thread that lives as long as the process (`block_on` in `main`),
/// never inside `tokio::spawn`: the pod's parent-death signal is tied to the thread that
/// starts it.
pub async fn run_demo(verbose: u8, command: Option<Vec<OsString>>) -> Result<i32, DemoError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DemoError::NeedRoot);
    }
    // Fail before building anything when the session cannot run at all.
    local_agent::agent_path().map_err(DemoError::NoAgent)?;
    let exe = std::env::current_exe().map_err(DemoError::OwnBinary)?;

    // A listener on the host's loopback: the probe shows that the session cannot reach it.
    let host_listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(DemoError::HostListener)?;
    let host_port = host_listener
        .local_addr()
        .map_err(DemoError::HostListener)?
        .port();

    let (command, shown) = match command.filter(|command| !command.is_empty()) {
        Some(command) => {
            let shown = show_command(&command);
            (command, Some(shown))
        }
        None => (
            vec![
                exe.clone().into_os_string(),
                PROBE_ARG.into(),
                host_port.to_string().into(),
            ],
            None,
        ),
    };

    say(&intro(shown.as_deref()));
    let pod = Pod::start(&exe, verbose > 0).await?;
    let target = Target::Pid(pod.pid());
    say(&started(&target));

    let args = SessionArgs {
        config: None,
        target: Some(target),
        session: None,
        as_root: true,
        verbose,
        quiet: false,
        env: Default::default(),
        fs_mode: crate::remote_paths::FsMode::Read,
        fs_remote: Vec::new(),
        fs_local: Vec::new(),
        no_target_localhost: false,
        outgoing: Default::default(),
        kube: Default::default(),
        incoming: Default::default(),
        reconnect: Default::default(),
    };
    let outcome = run::run_session(&args, command).await;
    drop(host_listener);
    pod.stop().await;

    let code = outcome?;
    say(&summary(shown.as_deref(), code));
    Ok(code)
}

fn say(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// The user's command as one would type it (arguments with spaces quoted).
fn show_command(command: &[OsString]) -> String {
    command
        .iter()
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn intro(command: Option<&str>) -> String {
    let search = SEARCH.join(" ");
    let runs = match command {
        Some(command) => format!("runs `{command}`"),
        None => "runs a probe that prints what it sees".to_owned(),
    };
    format!(
        "\
mirrord-net demo

This starts a throwaway \"pod\" on this machine: a process with its own network, mount and
UTS namespaces, set up the way a container runtime sets up a pod.
  hostname   {POD_HOSTNAME}
  addresses  {POD_IPV4}, {POD_IPV6}
  DNS        {DNS_IPV4}; search {search}; ndots:5
  service    {SERVICE_NAME}.{zone}: {SERVICE_IPV4}, {SERVICE_IPV6}, HTTP on port {SERVICE_PORT}
None of this exists on the host.

Then it {runs}
in a mirrord-net session on the pod, as `mirrord-net exec --as-root --target pid/<pod> -- ...`
would: an ordinary process of this machine, whose network, DNS and hostname are the pod's.

",
        zone = SEARCH[0],
    )
}

fn started(target: &Target) -> String {
    format!("The pod is up as {target}.\n\n")
}

fn summary(command: Option<&str>, code: i32) -> String {
    let removed = "The pod has been removed; nothing of it is left on this machine.";
    match (command, code) {
        (None, 0) => format!(
            "\n\
Every line above came from a process started on this host, outside the pod: the pod's
hostname, its resolver, its service by short name over IPv4 and IPv6, not the host's
loopback, the pod's environment and a file of the pod's own volume. Its packets left from
the pod's network namespace through the mirrord-net agent.
{removed}
Try your own command: mirrord-net demo -- sh
"
        ),
        (None, code) => format!(
            "\n\
The probe found problems (exit code {code}): the lines marked ✗ above say which. Run
`mirrord-net demo -vv` for the logs of the client and the agent.
{removed}
"
        ),
        (Some(command), code) => format!("\n`{command}` exited with code {code}. {removed}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_as_one_would_type_them() {
        let command: Vec<OsString> = ["sh", "-c", "echo it's $HOSTNAME", ""]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            show_command(&command),
            r#"sh -c 'echo it'\''s $HOSTNAME' ''"#
        );
    }

    #[test]
    fn the_intro_names_the_pod_and_the_command() {
        let text = intro(Some("sh"));
        assert!(text.contains("hostname   demo-pod"), "{text}");
        assert!(
            text.contains("hello.demo.svc.cluster.local: 10.89.0.10, fd89::10"),
            "{text}"
        );
        assert!(text.contains("Then it runs `sh`\n"), "{text}");
    }

    #[test]
    fn the_summary_carries_the_exit_code() {
        assert!(summary(Some("false"), 1).contains("`false` exited with code 1"));
        assert!(summary(None, 1).contains("exit code 1"));
        assert!(summary(None, 0).contains("mirrord-net demo -- sh"));
    }
}
