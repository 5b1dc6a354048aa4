//! `mirrord-net doctor`: every prerequisite of a session, one line each, with the fix.
//!
//! The checks try what a session would do rather than guess from configuration: open the TUN
//! and FUSE devices with the credentials the session would use, make a user namespace as the
//! user who would run a rootless session (util-linux `unshare`), ask the API server
//! (`SelfSubjectAccessReview`) for each permission the chosen agent mode needs, look the target
//! up and its node's images. Each check ends as:
//!
//! - `✓` it works;
//! - `!` a session starts, but without something (files off, the image pulled first, a check
//!   this user may not make);
//! - `✗` a session cannot start; the line says what to do.
//!
//! The exit status is 0 exactly when no line is `✗`. What a check concludes from what it saw
//! is a pure function ([`device_verdict`], [`required_operations`]) so it is unit-tested;
//! the probing is around it.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use crate::target::Target;
use mirrord_net_kubernetes::config::{self, Cluster};
use mirrord_net_kubernetes::rbac::Operation;
use mirrord_net_kubernetes::target::{self as kube_target, Kind};
use mirrord_net_kubernetes::transport::TransportMode;
use mirrord_net_kubernetes::{default_agent_image, AgentMode, KubeArgs};

/// `doctor`'s flags: the target and agent options a session would be given.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Check for a session on this target (pid/PID or a Kubernetes KIND/NAME); without it,
    /// the local prerequisites and, if a kubeconfig is found, the cluster connection.
    #[arg(long, short = 't', value_name = "KIND/NAME")]
    pub target: Option<Target>,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub verdict: Verdict,
    /// What was checked and what was found.
    pub what: String,
    /// What to do about it (warnings and failures).
    pub fix: Option<String>,
}

impl Line {
    fn pass(what: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pass,
            what: what.into(),
            fix: None,
        }
    }

    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.verdict {
            Verdict::Pass => "✓",
            Verdict::Warn => "!",
            Verdict::Fail => "✗",
        };
        write!(f, "{mark} {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, " — {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check that applies, prints one line each, and returns the exit status.
pub async fn run(args: &DoctorArgs) -> i32 {
    let mut failed = false;
    let mut say = |line: Line| {
        failed |= line.verdict == Verdict::Fail;
        println!("{line}");
    };
    let root = nix::unistd::Uid::effective().is_root();
    for line in local_checks(root, args.target.as_ref()) {
        say(line);
    }
    match &args.target {
        Some(Target::Kubernetes(target)) => {
            for line in cluster_checks(&args.kube, Some(target)).await {
                say(line);
            }
        }
        Some(Target::Pid(_)) => {}
        None if kubeconfig_present(&args.kube) => {
            for line in cluster_checks(&args.kube, None).await {
                say(line);
            }
        }
        None => say(Line::pass(
            "no kubeconfig found: Kubernetes checks skipped (give --target or --kubeconfig)",
        )),
    }
    i32::from(failed)
}

fn local_checks(root: bool, target: Option<&Target>) -> Vec<Line> {
    let mut lines = Vec::new();
    // Root sessions (pid/ targets, or a Kubernetes target under sudo) make the TUN as root;
    // rootless ones inside their own user namespace, where the device's file permissions
    // still apply.
    lines.push(device_verdict(
        "/dev/net/tun",
        TUN,
        probe_device("/dev/net/tun", TUN),
        Verdict::Fail,
        "the session's network device; load the `tun` module (`modprobe tun`) or give the \
         container the device (`--device /dev/net/tun`)",
    ));
    lines.push(device_verdict(
        "/dev/fuse",
        FUSE,
        probe_device("/dev/fuse", FUSE),
        Verdict::Warn,
        "without it the target's files are not shown: sessions need `--fs-mode off` \
         (docs/kubernetes.md says how a cluster provides the device)",
    ));
    if !root {
        lines.push(match probe_user_namespace() {
            Ok(()) => Line::pass("user namespaces: this user can make one (rootless sessions)"),
            Err(err) => Line::fail(
                format!("user namespaces: cannot make one ({err})"),
                "rootless sessions need them: `sysctl kernel.unprivileged_userns_clone=1` \
                 (and `kernel.apparmor_restrict_unprivileged_userns=0` where AppArmor \
                 restricts them), or run with sudo",
            ),
        });
    }
    match target {
        Some(Target::Pid(pid)) => {
            lines.push(if root {
                Line::pass("root: pid/ targets enter another process's namespaces")
            } else {
                Line::fail(
                    "not root: pid/ targets enter another process's namespaces",
                    "run with sudo",
                )
            });
            lines.push(if Path::new(&format!("/proc/{pid}")).exists() {
                Line::pass(format!("target pid/{pid} exists"))
            } else {
                Line::fail(
                    format!("target pid/{pid} does not exist"),
                    "give the PID of a running process (`pgrep NAME`)",
                )
            });
            lines.push(match crate::local_agent::agent_path() {
                Ok(path) => Line::pass(format!("agent binary {}", path.display())),
                Err(err) => Line::fail(
                    format!("agent binary: {err}"),
                    "install mirrord-net-agent next to mirrord-net, or set MIRRORD_NET_AGENT",
                ),
            });
        }
        Some(Target::Kubernetes(_)) | None => {}
    }
    lines
}

/// A character device's major and minor numbers.
const TUN: (u64, u64) = (10, 200);
const FUSE: (u64, u64) = (10, 229);

/// What was found at a device path.
#[derive(Debug)]
enum DeviceProbe {
    Missing,
    NotTheDevice { kind: String },
    Unopenable(io::Error),
    Usable,
}

/// Looks at `path` and opens it read-write with this process's credentials.
fn probe_device(path: &str, expected: (u64, u64)) -> DeviceProbe {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return DeviceProbe::Missing,
        Err(err) => return DeviceProbe::Unopenable(err),
    };
    let rdev = meta.rdev();
    let numbers = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    if !meta.file_type().is_char_device() || numbers != expected {
        let kind = if meta.file_type().is_char_device() {
            format!("character device {}:{}", numbers.0, numbers.1)
        } else if meta.is_dir() {
            "a directory".to_owned()
        } else {
            "a regular file".to_owned()
        };
        return DeviceProbe::NotTheDevice { kind };
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => DeviceProbe::Usable,
        Err(err) => DeviceProbe::Unopenable(err),
    }
}

fn device_verdict(
    path: &str,
    expected: (u64, u64),
    probe: DeviceProbe,
    severity: Verdict,
    fix: &str,
) -> Line {
    let (found, fix) = match probe {
        DeviceProbe::Usable => {
            return Line::pass(format!("{path}: opens read-write"));
        }
        DeviceProbe::Missing => (format!("{path}: missing"), fix.to_owned()),
        DeviceProbe::NotTheDevice { kind } => (
            format!(
                "{path}: {kind}, not the device {}:{}",
                expected.0, expected.1
            ),
            format!("something else is mounted or created at {path}; {fix}"),
        ),
        DeviceProbe::Unopenable(err) if err.raw_os_error() == Some(libc::EACCES) => (
            format!("{path}: cannot open ({err})"),
            format!(
                "its mode keeps this user out: `chmod 0666 {path}` (udev's default; the \
                 kernel still asks for network or mount administration in the session's own \
                 namespace); {fix}"
            ),
        ),
        DeviceProbe::Unopenable(err) => (format!("{path}: cannot open ({err})"), fix.to_owned()),
    };
    match severity {
        Verdict::Fail => Line::fail(found, fix),
        _ => Line::warn(found, fix),
    }
}

/// Makes a user namespace (and a network namespace in it, as a session does) in a child.
fn probe_user_namespace() -> Result<(), String> {
    let mut command = Command::new("unshare");
    command
        .args(["--user", "--map-root-user", "--net", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = command
        .output()
        .map_err(|err| format!("cannot run unshare: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let said = String::from_utf8_lossy(&output.stderr);
        Err(said.lines().last().unwrap_or("failed").trim().to_owned())
    }
}

/// Whether a session would find a cluster: a kubeconfig by the same decision `connect`
/// makes, or the in-cluster service account.
fn kubeconfig_present(args: &KubeArgs) -> bool {
    let source = config::config_source(
        args.cluster.kubeconfig.as_deref(),
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref().map(Path::new),
    );
    matches!(source, config::ConfigSource::Files(_))
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

/// The permissions a session with these options needs, in RBAC terms (the same as
/// docs/kubernetes/rbac-*.yaml, which the Kubernetes suite checks are enough).
pub fn required_operations(
    mode: AgentMode,
    transport: TransportMode,
    target_kind: Option<Kind>,
    namespace: &str,
    agent_namespace: &str,
) -> Vec<Operation> {
    let mut ops = vec![
        Operation::new("get", "pods", namespace),
        Operation::new("list", "pods", namespace),
    ];
    if let Some(kind) = target_kind.filter(|kind| *kind != Kind::Pod) {
        ops.push(Operation::new("get", kind.resource(), namespace));
        if kind == Kind::Deployment {
            ops.push(Operation::new("list", "replicasets.apps", namespace));
        }
    }
    match mode {
        AgentMode::Job => {
            ops.push(Operation::new("create", "jobs.batch", agent_namespace));
            ops.push(Operation::new("delete", "jobs.batch", agent_namespace));
            ops.push(Operation::new("patch", "jobs.batch", agent_namespace));
            ops.push(Operation::new("get", "pods", agent_namespace));
            ops.push(Operation::new("list", "pods", agent_namespace));
            ops.push(Operation::new("get", "pods/log", agent_namespace));
        }
        AgentMode::Ephemeral => {
            ops.push(Operation::new(
                "patch",
                "pods/ephemeralcontainers",
                namespace,
            ));
            ops.push(Operation::new("get", "pods/log", namespace));
        }
    }
    if transport != TransportMode::Direct {
        let where_agent = match mode {
            AgentMode::Job => agent_namespace,
            AgentMode::Ephemeral => namespace,
        };
        ops.push(Operation::new("create", "pods/portforward", where_agent));
    }
    let mut unique: Vec<Operation> = Vec::with_capacity(ops.len());
    for op in ops {
        if !unique.contains(&op) {
            unique.push(op);
        }
    }
    unique
}

async fn cluster_checks(args: &KubeArgs, target: Option<&kube_target::KubeTarget>) -> Vec<Line> {
    let mut lines = Vec::new();
    let cluster = match config::connect(&args.cluster).await {
        Ok(cluster) => cluster,
        Err(err) => {
            lines.push(Line::fail(
                format!("kubeconfig: {err}"),
                "point --kubeconfig or $KUBECONFIG at a valid file, or --context at one of its \
                 contexts",
            ));
            return lines;
        }
    };
    match cluster.client.apiserver_version().await {
        Ok(version) => lines.push(Line::pass(format!(
            "API server reachable (Kubernetes {}.{}), namespace {}",
            version.major, version.minor, cluster.namespace
        ))),
        Err(err) => {
            lines.push(Line::fail(
                format!("API server not reachable: {err}"),
                "check the cluster address and credentials of the current context",
            ));
            return lines;
        }
    }
    let namespace = cluster.namespace.clone();
    let agent_namespace = args
        .agent_namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let ops = required_operations(
        args.agent,
        args.transport,
        target.map(|target| target.kind),
        &namespace,
        &agent_namespace,
    );
    for op in ops {
        lines.push(match can_i(&cluster, &op).await {
            Ok(true) => Line::pass(format!("allowed: {op}")),
            Ok(false) => Line::fail(
                format!("not allowed: {op}"),
                "bind a Role with this rule (docs/kubernetes/rbac-job-agent.yaml or \
                 rbac-ephemeral-agent.yaml)",
            ),
            Err(err) => Line::warn(
                format!("cannot ask whether {op} is allowed: {err}"),
                "the session itself will say if it is not",
            ),
        });
    }
    let Some(target) = target else {
        return lines;
    };
    let resolved =
        match kube_target::resolve(&cluster, &namespace, target, args.container.as_deref()).await {
            Ok(resolved) => resolved,
            Err(err) => {
                lines.push(Line::fail(
                    format!("target {target}: {err}"),
                    "`mirrord-net ls` lists the targets of a namespace",
                ));
                return lines;
            }
        };
    lines.push(Line::pass(format!(
        "target {target}: pod {} container {} on node {}",
        resolved.pod, resolved.container, resolved.node
    )));
    let image = args.agent_image.clone().unwrap_or_else(default_agent_image);
    lines.push(image_line(&cluster, &resolved.node, &image).await);
    lines
}

/// Asks the API server whether this user may do `op`.
async fn can_i(cluster: &Cluster, op: &Operation) -> Result<bool, kube::Error> {
    let (resource, subresource) = match op.resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub.to_owned())),
        None => (op.resource, None),
    };
    let (resource, group) = match resource.split_once('.') {
        Some((resource, group)) => (resource, group),
        None => (resource, ""),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: op.namespace.clone(),
                verb: Some(op.verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

/// Whether the node already has the agent image (its status lists the images it holds).
async fn image_line(cluster: &Cluster, node: &str, image: &str) -> Line {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    match nodes.get(node).await {
        Ok(node_object) => {
            let present = node_object
                .status
                .and_then(|status| status.images)
                .unwrap_or_default()
                .iter()
                .any(|held| {
                    held.names
                        .iter()
                        .flatten()
                        .any(|name| image_matches(name, image))
                });
            if present {
                Line::pass(format!("agent image {image} is on node {node}"))
            } else {
                Line::warn(
                    format!("agent image {image} is not on node {node}"),
                    "it will be pulled at the first session (slower start; the node needs \
                     access to its registry)",
                )
            }
        }
        Err(kube::Error::Api(status)) if status.code == 403 => Line::warn(
            format!("agent image {image}: cannot tell whether node {node} holds it"),
            "that needs `get` on `nodes` (cluster-wide); without it the session still works, \
             pulling the image if the node lacks it",
        ),
        Err(err) => Line::warn(
            format!("agent image {image}: cannot read node {node} ({err})"),
            "the session still works, pulling the image if the node lacks it",
        ),
    }
}

/// Whether a node's image name is `wanted`: the same reference, or the same with the
/// registry prefix the runtime adds to short names (`docker.io/library/…`).
fn image_matches(held: &str, wanted: &str) -> bool {
    held == wanted
        || held
            .strip_suffix(wanted)
            .is_some_and(|prefix| prefix.ends_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_session_over_auto_transport_needs_the_documented_rules() {
        let ops = required_operations(
            AgentMode::Job,
            TransportMode::Auto,
            Some(Kind::Deployment),
            "team",
            "team",
        );
        let shown: Vec<String> = ops
            .iter()
            .map(|op| format!("{} {}", op.verb, op.resource))
            .collect();
        assert_eq!(
            shown,
            [
                "get pods",
                "list pods",
                "get deployments.apps",
                "list replicasets.apps",
                "create jobs.batch",
                "delete jobs.batch",
                "patch jobs.batch",
                "get pods/log",
                "create pods/portforward",
            ]
        );
    }

    #[test]
    fn an_ephemeral_direct_session_patches_the_target_pod_only() {
        let ops = required_operations(
            AgentMode::Ephemeral,
            TransportMode::Direct,
            Some(Kind::Pod),
            "team",
            "agents",
        );
        assert!(ops.iter().all(|op| op.namespace.as_deref() == Some("team")));
        assert!(ops
            .iter()
            .any(|op| op.verb == "patch" && op.resource == "pods/ephemeralcontainers"));
        assert!(!ops.iter().any(|op| op.resource.starts_with("jobs")));
        assert!(!ops.iter().any(|op| op.resource == "pods/portforward"));
    }

    #[test]
    fn device_lines_say_what_was_found() {
        let line = device_verdict(
            "/dev/net/tun",
            TUN,
            DeviceProbe::Missing,
            Verdict::Fail,
            "fix",
        );
        assert_eq!(line.to_string(), "✗ /dev/net/tun: missing — fix");
        let line = device_verdict(
            "/dev/fuse",
            FUSE,
            DeviceProbe::NotTheDevice {
                kind: "a regular file".into(),
            },
            Verdict::Warn,
            "fs off",
        );
        assert_eq!(
            line.to_string(),
            "! /dev/fuse: a regular file, not the device 10:229 — something else is mounted \
             or created at /dev/fuse; fs off"
        );
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let line = device_verdict(
            "/dev/net/tun",
            TUN,
            DeviceProbe::Unopenable(denied),
            Verdict::Fail,
            "f",
        );
        assert_eq!(line.verdict, Verdict::Fail);
        assert!(line.what.contains("Permission denied"), "{line}");
        assert!(
            line.to_string().contains("chmod 0666 /dev/net/tun"),
            "{line}"
        );
        let line = device_verdict("/dev/net/tun", TUN, DeviceProbe::Usable, Verdict::Fail, "f");
        assert_eq!(line.to_string(), "✓ /dev/net/tun: opens read-write");
    }

    #[test]
    fn images_match_with_the_runtimes_registry_prefix() {
        assert!(image_matches(
            "localhost/mirrord-net-agent:0.1.0",
            "localhost/mirrord-net-agent:0.1.0"
        ));
        assert!(image_matches("docker.io/library/busybox:1", "busybox:1"));
        assert!(!image_matches("docker.io/library/xbusybox:1", "busybox:1"));
    }
}
