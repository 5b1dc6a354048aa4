//! The Kubernetes test cluster, as the Kubernetes end-to-end tests see it.
//!
//! `scripts/test.sh` builds and starts one real single-node cluster (`tests/k8s/cluster.sh up
//! e2e`), imports the agent image and the test images, runs the `k8s` test binary, and takes
//! the cluster down again. The tests find it through its env file; a test run without it fails
//! and says how to start it — it never passes by skipping.
//!
//! Every test works in a Kubernetes namespace of its own ([`Namespace`], a unique name,
//! deleted on drop), so the tests run in parallel and a failing one leaves nothing behind for
//! the next. Clients run in the host's network namespace, as a user's laptop would: the API
//! at the node IP, pod IPs and Service IPs are routed there through the cluster's veth.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::exec::{self, Outcome};
use crate::session::Invocation;
use crate::tools::SYSTEM_PATH;

/// Where `cluster.sh up e2e` writes the cluster's facts; `MIRRORD_K8S_ENV` overrides it.
const DEFAULT_ENV_FILE: &str = "/var/lib/mirrord-net-k8s/e2e/env";

/// How long a pod of the tests may take to become Ready (images are local; a loaded 2-core
/// machine still needs a few seconds per pod).
pub const POD_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running test cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    vars: BTreeMap<String, String>,
}

impl Cluster {
    /// The cluster `scripts/test.sh` started; panics with how to start one if there is none.
    #[track_caller]
    pub fn get() -> Cluster {
        let path = std::env::var("MIRRORD_K8S_ENV").unwrap_or_else(|_| DEFAULT_ENV_FILE.into());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
            panic!(
                "no Kubernetes test cluster ({path}: {err}). scripts/test.sh starts one; by hand: \
                 `tests/k8s/cluster.sh build && tests/k8s/cluster.sh up e2e`, then \
                 `scripts/build-agent-image.sh --import $K8S_CONTAINERD_SOCK` and \
                 `tests/k8s/test-images.sh import $K8S_CONTAINERD_SOCK`"
            )
        });
        let vars = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
            .collect();
        let cluster = Cluster { vars };
        let version = cluster.kubectl(&["version", "--short"]);
        assert!(
            version.status.success(),
            "the Kubernetes test cluster's API does not answer:\n{version}"
        );
        cluster
    }

    /// A variable of the env file (`K8S_NODE_IP`, `K8S_BUSYBOX_IMAGE`, …).
    #[track_caller]
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("the cluster's env file has no {key}"))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &str {
        self.var("KUBECONFIG")
    }

    /// `kubectl ARGS` with the admin kubeconfig.
    #[track_caller]
    pub fn kubectl(&self, args: &[&str]) -> Outcome {
        self.kubectl_with(args, None)
    }

    /// `kubectl ARGS`, feeding `stdin` if given.
    #[track_caller]
    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Outcome {
        let mut command = Command::new(self.var("KUBECTL"));
        command
            .args(args)
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", "/root");
        let Some(input) = stdin else {
            return exec::run(command, Duration::from_secs(60)).unwrap_or_else(|t| panic!("{t}"));
        };
        // kubectl reads the manifest from a file: simpler than a stdin pipe with the runner's
        // deadline handling.
        let file = tempfile_with(input);
        command.arg("-f").arg(&file);
        let outcome = exec::run(command, Duration::from_secs(60)).unwrap_or_else(|t| panic!("{t}"));
        let _ = std::fs::remove_file(&file);
        outcome
    }

    /// `mirrord-net ARGS` with this cluster's kubeconfig in `KUBECONFIG`.
    pub fn client(&self, args: &[&str]) -> Invocation {
        Invocation::client(args).env("KUBECONFIG", self.kubeconfig())
    }
}

fn tempfile_with(text: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "mirrord-net-k8s-{}-{}.yaml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text).expect("write a manifest file");
    path
}

/// A Kubernetes namespace of one test, deleted (with everything in it) when dropped.
#[derive(Debug)]
pub struct Namespace {
    pub cluster: Cluster,
    name: String,
}

impl Namespace {
    /// Creates `mnk-<label>-<pid>`: unique per test process, and named after the test.
    #[track_caller]
    pub fn create(label: &str) -> Namespace {
        let cluster = Cluster::get();
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!("mnk-{label}-{}", std::process::id());
        cluster
            .kubectl(&["create", "namespace", &name])
            .assert_success();
        // The namespace's default service account appears a moment after the namespace;
        // pods cannot be created before it exists.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster
            .kubectl(&["get", "serviceaccount", "default", "-n", &name])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "no default service account in {name}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Namespace { cluster, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies a YAML manifest in this namespace.
    #[track_caller]
    pub fn apply(&self, manifest: &str) {
        self.cluster
            .kubectl_with(&["apply", "-n", &self.name], Some(manifest))
            .assert_success();
    }

    /// `kubectl ARGS -n NAMESPACE`.
    #[track_caller]
    pub fn kubectl(&self, args: &[&str]) -> Outcome {
        // Before ARGS: after a `--` it would be part of a command.
        let mut all: Vec<&str> = vec!["-n", &self.name];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all)
    }

    /// Waits until every pod matching `selector` (e.g. `app=web`) is Ready.
    #[track_caller]
    pub fn wait_ready(&self, selector: &str) {
        let deadline = Instant::now() + POD_READY_TIMEOUT;
        // `kubectl wait` fails at once while no pod matches yet: retry until one does.
        loop {
            let outcome = self.kubectl(&[
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                selector,
                "--timeout=20s",
            ]);
            if outcome.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                let pods = self.kubectl(&["get", "pods", "-o", "wide"]);
                let events = self.kubectl(&["get", "events"]);
                panic!(
                    "pods {selector} in {} not Ready within {POD_READY_TIMEOUT:?}:\n{outcome}\n{pods}\n{events}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A JSONPath field of one object, e.g. `("pod/web", "{.status.podIP}")`.
    #[track_caller]
    pub fn field(&self, object: &str, jsonpath: &str) -> String {
        self.kubectl(&["get", object, "-o", &format!("jsonpath={jsonpath}")])
            .assert_success()
            .trim()
            .to_owned()
    }

    /// The names of the objects of `kinds` (e.g. `jobs,pods`) that match `selector`.
    #[track_caller]
    pub fn names(&self, kinds: &str, selector: &str) -> Vec<String> {
        self.kubectl(&["get", kinds, "-l", selector, "-o", "name"])
            .assert_success()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `mirrord-net exec --target TARGET -n NAMESPACE --quiet [FLAGS] -- ARGS`.
    pub fn session(&self, target: &str, flags: &[&str], args: &[&str]) -> Invocation {
        let mut all = vec!["exec", "--target", target, "-n", &self.name, "--quiet"];
        all.extend_from_slice(flags);
        all.push("--");
        all.extend_from_slice(args);
        self.cluster.client(&all).timeout(Duration::from_secs(90))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Not waited for: deletion takes the namespace's pods down in the background, and
        // scripts/test.sh's `cluster.sh down` removes whatever is still going at the end.
        let mut command = Command::new(self.cluster.var("KUBECTL"));
        command
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = exec::run(command, Duration::from_secs(30));
    }
}

/// Polls `check` until it returns true, or panics with `what` after `within`.
#[track_caller]
pub fn eventually(what: &str, within: Duration, check: impl FnMut() -> bool) {
    eventually_or_show(what, within, check, String::new);
}

/// [`eventually`], and a timeout's message adds what `show` says of the state left (objects
/// still there, events), so the failure explains itself.
#[track_caller]
pub fn eventually_or_show(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> bool,
    show: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() >= deadline {
            panic!("{what}: not within {within:?}\n{}", show());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
