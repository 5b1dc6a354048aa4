//! Which cluster, which credentials, which namespace: read as kubectl reads them.
//!
//! - `--kubeconfig FILE`: that file alone, and it must exist;
//! - else `KUBECONFIG`: a colon-separated list, merged (the first file to set a value wins),
//!   files that do not exist skipped;
//! - else `~/.kube/config` if it exists;
//! - else, inside a pod, the service account's in-cluster config.
//!
//! `--context` picks a context of the merged file instead of its `current-context`. The
//! namespace is `-n`, else the context's namespace (the service account's in a pod), else
//! `default`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::error::KubeError;

/// How to reach the cluster: the flags shared by every command that talks to it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// The Kubernetes namespace of the target (default: the context's namespace, else `default`).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, a colon-separated list, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// A client for the cluster and the namespace its commands default to.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
}

/// Where the configuration comes from: the decision kubectl makes before reading anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Kubeconfig files, merged in this order.
    Files(Vec<PathBuf>),
    /// No kubeconfig anywhere: the in-cluster service account.
    InCluster,
}

/// Chooses the source from `--kubeconfig`, `$KUBECONFIG` and the home directory.
pub fn config_source(
    explicit: Option<&Path>,
    kubeconfig_env: Option<&OsStr>,
    home: Option<&Path>,
) -> ConfigSource {
    if let Some(path) = explicit {
        // Named explicitly: a missing file is an error, reported when it is read.
        return ConfigSource::Files(vec![path.to_owned()]);
    }
    if let Some(list) = kubeconfig_env {
        let listed: Vec<PathBuf> = std::env::split_paths(list)
            .filter(|path| !path.as_os_str().is_empty())
            .collect();
        if !listed.is_empty() {
            let existing: Vec<PathBuf> = listed.into_iter().filter(|path| path.exists()).collect();
            return if existing.is_empty() {
                ConfigSource::InCluster
            } else {
                ConfigSource::Files(existing)
            };
        }
    }
    match home.map(|home| home.join(".kube/config")) {
        Some(path) if path.exists() => ConfigSource::Files(vec![path]),
        _ => ConfigSource::InCluster,
    }
}

/// Reads and merges `paths`.
pub fn read_kubeconfig(paths: &[PathBuf]) -> Result<Kubeconfig, KubeError> {
    paths
        .iter()
        .try_fold(Kubeconfig::default(), |merged, path| {
            Kubeconfig::read_from(path).and_then(|next| merged.merge(next))
        })
        .map_err(|err| KubeError::Config(format!("cannot read the kubeconfig: {err}")))
}

/// The client configuration for `args`, from `source`.
pub async fn client_config(
    args: &ClusterArgs,
    source: &ConfigSource,
) -> Result<kube::Config, KubeError> {
    let mut config = match source {
        ConfigSource::Files(paths) => {
            let kubeconfig = read_kubeconfig(paths)?;
            if let Some(context) = &args.context {
                if !kubeconfig
                    .contexts
                    .iter()
                    .any(|named| &named.name == context)
                {
                    let known: Vec<&str> = kubeconfig
                        .contexts
                        .iter()
                        .map(|named| named.name.as_str())
                        .collect();
                    return Err(KubeError::Config(format!(
                        "the kubeconfig has no context {context:?} (it has: {})",
                        known.join(", ")
                    )));
                }
            }
            let options = KubeConfigOptions {
                context: args.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|err| {
                    KubeError::Config(format!(
                        "cannot use the kubeconfig ({}): {err}",
                        display_paths(paths)
                    ))
                })?
        }
        ConfigSource::InCluster => kube::Config::incluster().map_err(|err| {
            KubeError::Config(format!(
                "no kubeconfig found (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not \
                 inside a pod ({err}): point KUBECONFIG or --kubeconfig at one"
            ))
        })?,
    };
    if let Some(namespace) = &args.namespace {
        config.default_namespace = namespace.clone();
    }
    Ok(config)
}

/// Connects to the cluster `args` names (no request is made yet).
pub async fn connect(args: &ClusterArgs) -> Result<Cluster, KubeError> {
    let source = config_source(
        args.kubeconfig.as_deref(),
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref().map(Path::new),
    );
    tracing::debug!(?source, "kubeconfig");
    let config = client_config(args, &source).await?;
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .map_err(|err| KubeError::Config(format!("cannot create a Kubernetes client: {err}")))?;
    Ok(Cluster { client, namespace })
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(current: &str, contexts: &[(&str, &str, Option<&str>)]) -> String {
        let mut text = format!("apiVersion: v1\nkind: Config\ncurrent-context: {current}\n");
        text.push_str("clusters:\n");
        for (name, server, _) in contexts {
            text.push_str(&format!(
                "- name: {name}\n  cluster:\n    server: {server}\n"
            ));
        }
        text.push_str("users:\n");
        for (name, _, _) in contexts {
            text.push_str(&format!("- name: {name}\n  user:\n    token: t-{name}\n"));
        }
        text.push_str("contexts:\n");
        for (name, _, namespace) in contexts {
            text.push_str(&format!(
                "- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"
            ));
            if let Some(namespace) = namespace {
                text.push_str(&format!("    namespace: {namespace}\n"));
            }
        }
        text
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "mirrord-net-kubeconfig-{tag}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_explicit_kubeconfig_wins_and_is_kept_even_when_missing() {
        let source = config_source(
            Some(Path::new("/nonexistent/config")),
            Some(OsStr::new("/a:/b")),
            Some(Path::new("/root")),
        );
        assert_eq!(
            source,
            ConfigSource::Files(vec!["/nonexistent/config".into()])
        );
    }

    #[test]
    fn the_kubeconfig_list_skips_missing_files_and_empty_entries() {
        let dir = TempDir::new("list");
        let first = dir.write("first", "apiVersion: v1\nkind: Config\n");
        let second = dir.write("second", "apiVersion: v1\nkind: Config\n");
        let list = format!("{}::/nonexistent/x:{}", first.display(), second.display());
        let source = config_source(None, Some(OsStr::new(&list)), Some(&dir.0));
        assert_eq!(source, ConfigSource::Files(vec![first, second]));
        // Nothing that exists, and no ~/.kube/config: the service account.
        let source = config_source(None, Some(OsStr::new("/nonexistent/x")), None);
        assert_eq!(source, ConfigSource::InCluster);
        // An empty KUBECONFIG counts as unset.
        let source = config_source(None, Some(OsStr::new("")), Some(&dir.0));
        assert_eq!(source, ConfigSource::InCluster);
        std::fs::create_dir_all(dir.0.join(".kube")).unwrap();
        let home = dir.write(".kube/config", "apiVersion: v1\nkind: Config\n");
        assert_eq!(
            config_source(None, None, Some(&dir.0)),
            ConfigSource::Files(vec![home])
        );
    }

    #[tokio::test]
    async fn merged_files_keep_the_first_current_context_and_its_namespace() {
        let dir = TempDir::new("merge");
        let first = dir.write(
            "first",
            &kubeconfig(
                "alpha",
                &[("alpha", "https://10.0.0.1:6443", Some("team-a"))],
            ),
        );
        let second = dir.write(
            "second",
            &kubeconfig("beta", &[("beta", "https://10.0.0.2:6443", None)]),
        );
        let source = ConfigSource::Files(vec![first, second]);
        let config = client_config(&ClusterArgs::default(), &source)
            .await
            .unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
        assert_eq!(config.default_namespace, "team-a");

        // --context picks the other file's context; it has no namespace: `default`.
        let args = ClusterArgs {
            context: Some("beta".into()),
            ..ClusterArgs::default()
        };
        let config = client_config(&args, &source).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.2:6443/");
        assert_eq!(config.default_namespace, "default");

        // -n overrides the context's namespace.
        let args = ClusterArgs {
            namespace: Some("other".into()),
            ..ClusterArgs::default()
        };
        let config = client_config(&args, &source).await.unwrap();
        assert_eq!(config.default_namespace, "other");
    }

    #[tokio::test]
    async fn an_unknown_context_or_a_missing_file_is_a_clear_error() {
        let dir = TempDir::new("errors");
        let file = dir.write("only", &kubeconfig("a", &[("a", "https://h:1", None)]));
        let args = ClusterArgs {
            context: Some("nope".into()),
            ..ClusterArgs::default()
        };
        let err = client_config(&args, &ConfigSource::Files(vec![file]))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(err, "the kubeconfig has no context \"nope\" (it has: a)");

        let missing = ConfigSource::Files(vec!["/nonexistent/kubeconfig".into()]);
        let err = client_config(&ClusterArgs::default(), &missing)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read the kubeconfig"), "{err}");
        assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
    }
}
