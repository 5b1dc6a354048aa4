use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{CommandFactory, Parser};
use serde_json::json;

use super::*;
use crate::cli::{Cli, Command};
use crate::remote_paths::FsMode;
use crate::target::Target;

/// A file of this test's own in the temporary directory, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(extension: &str, text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mirrord-net-config-test-{}-{}.{extension}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("mirrord-net")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

fn parse(args: &[&str]) -> Result<Cli, String> {
    match merge_into_command_line(Cli::command(), argv(args)) {
        Ok(merged) => Cli::try_parse_from(merged).map_err(|err| err.to_string()),
        Err(MergeError::Usage(err)) => Err(err.to_string()),
        Err(MergeError::Config(err)) => Err(err.to_string()),
    }
}

/// The long flags of `exec`, as the merge step asks clap about them.
fn exec_flags(flag: &str) -> Option<FlagShape> {
    let command = Cli::command();
    let exec = command.find_subcommand("exec").unwrap();
    let shape = exec
        .get_arguments()
        .find(|arg| arg.get_long() == Some(flag))
        .map(FlagShape::of);
    shape
}

fn setting(flag: &str, values: &[&str]) -> Setting {
    Setting {
        flag: flag.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

#[test]
fn own_keys_become_the_flags_of_the_same_name() {
    let file = ConfigFile::new(
        "json",
        r#"{"target": "pid/7", "as_root": true, "quiet": false, "env-include": ["A*", "B"],
            "fs_mode": "write", "env": {"X": "1"}, "fs_remote": "/etc/app"}"#,
    );
    let cli = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap();
    let Command::Exec { session, command } = cli.command else {
        panic!("not exec")
    };
    assert_eq!(session.target(), &Target::Pid(7));
    assert!(session.as_root);
    assert!(!session.quiet);
    assert_eq!(session.env.include.len(), 2);
    assert_eq!(session.env.set.len(), 1);
    assert_eq!(session.fs_mode, FsMode::Write);
    assert_eq!(session.fs_remote, [PathBuf::from("/etc/app")]);
    assert_eq!(command, ["true"]);
}

#[test]
fn flags_on_the_command_line_win_over_the_file() {
    let file = ConfigFile::new(
        "json",
        r#"{"target": "pid/7", "fs_mode": "write", "env_include": ["FROM_FILE"]}"#,
    );
    let path = file.0.to_str().unwrap();
    let cli = parse(&[
        "shell",
        "--target",
        "pid/9",
        "--config",
        path,
        "--env-include",
        "FROM_FLAG",
    ])
    .unwrap();
    let Command::Shell { session } = cli.command else {
        panic!("not shell")
    };
    assert_eq!(session.target(), &Target::Pid(9));
    // Not on the command line: from the file.
    assert_eq!(session.fs_mode, FsMode::Write);
    // A list the command line gives is the command line's alone.
    assert_eq!(session.env.include.len(), 1);
    assert_eq!(session.env.include[0].as_str(), "FROM_FLAG");
}

#[test]
fn the_trailing_command_keeps_its_own_arguments() {
    let file = ConfigFile::new("json", r#"{"target": "pid/7", "verbose": 2}"#);
    let cli = parse(&[
        "exec",
        "-f",
        file.0.to_str().unwrap(),
        "--",
        "curl",
        "-f",
        "--target",
        "x",
    ])
    .unwrap();
    let Command::Exec { session, command } = cli.command else {
        panic!("not exec")
    };
    assert_eq!(session.verbose, 2);
    assert_eq!(command, ["curl", "-f", "--target", "x"]);
}

#[test]
fn without_a_file_the_target_is_still_required() {
    let err = parse(&["exec", "--", "true"]).unwrap_err();
    assert!(err.contains("--target"), "{err}");
    let file = ConfigFile::new("json", r#"{"quiet": true}"#);
    let err = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    assert!(err.contains("--target"), "{err}");
}

#[test]
fn a_malformed_json_file_is_one_error_with_line_and_column() {
    let file = ConfigFile::new("json", "{\n  \"target\": \"pid/7\",\n  oops\n}\n");
    let err = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    let expected = format!("{}:3:3: ", file.0.display());
    assert!(err.starts_with(&expected), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("at line"), "said twice: {err}");
}

#[test]
fn a_malformed_toml_file_is_one_error_with_line_and_column() {
    let file = ConfigFile::new("toml", "target = \"pid/7\"\nquiet = = true\n");
    let err = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    let expected = format!("{}:2:", file.0.display());
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn a_toml_file_reads_like_json() {
    let file = ConfigFile::new(
        "toml",
        "target = \"pid/7\"\nfs_mode = \"off\"\nenv_exclude = [\"SECRET_*\"]\n",
    );
    let cli = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap();
    let Command::Exec { session, .. } = cli.command else {
        panic!("not exec")
    };
    assert_eq!(session.target(), &Target::Pid(7));
    assert_eq!(session.fs_mode, FsMode::Off);
    assert_eq!(session.env.exclude.len(), 1);
}

#[test]
fn a_missing_file_names_the_file() {
    let err = parse(&["exec", "-f", "/nonexistent/mirrord.json", "--", "true"]).unwrap_err();
    assert!(
        err.contains("cannot read the configuration file /nonexistent/mirrord.json"),
        "{err}"
    );
}

#[test]
fn a_value_of_the_wrong_shape_names_its_key() {
    let file = ConfigFile::new("json", r#"{"target": "pid/7", "as_root": "yes"}"#);
    let err = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    assert!(err.contains("as-root: expected true or false"), "{err}");
    // A value clap refuses is clap's usage error, as on the command line.
    let file = ConfigFile::new("json", r#"{"target": "pid/7", "fs_mode": "sideways"}"#);
    let err = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    assert!(err.contains("sideways"), "{err}");
}

#[test]
fn unknown_and_unsupported_keys_are_one_warning_each() {
    let document = json!({
        "target": "pid/7",
        "colour": "blue",
        "telemetry": false,
        "feature": {"network": {"dns": false}, "copy_target": true},
    });
    let translation = translate(&document, &exec_flags).unwrap();
    assert_eq!(translation.settings, [setting("target", &["pid/7"])]);
    let mut warnings = translation.warnings.clone();
    warnings.sort();
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(
        warnings[0].starts_with("colour: unknown key"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("feature.copy_target: "),
        "{warnings:?}"
    );
    assert!(
        warnings[2].starts_with("feature.network.dns: "),
        "{warnings:?}"
    );
    assert!(warnings[3].starts_with("telemetry: "), "{warnings:?}");
}

#[test]
fn the_verifier_recipe_in_mirrords_words() {
    let document = json!({
        "target": {"path": "deployment/api/container/app", "namespace": "team"},
        "feature": {
            "network": {"incoming": {
                "mode": "steal",
                "ports": [8080],
                "http_filter": {"header_filter": "^X-Verifier-Run: {{ key }}$"},
            }},
            "env": {"include": "DB_*;API_URL", "exclude": ["SECRET"], "override": {"LOG": "debug"}, "env_file": ".env"},
            "fs": {"mode": "write"},
        },
        "agent": {"namespace": "agents", "ephemeral": true, "startup_timeout": 90},
        "kube_context": "staging",
    });
    let translation = translate(&document, &exec_flags).unwrap();
    assert!(
        translation.warnings.is_empty(),
        "{:?}",
        translation.warnings
    );
    let mut settings = translation.settings;
    settings.sort_by(|a, b| a.flag.cmp(&b.flag));
    assert_eq!(
        settings,
        [
            setting("agent", &["ephemeral"]),
            setting("agent-namespace", &["agents"]),
            setting("agent-timeout", &["90"]),
            setting("container", &["app"]),
            setting("context", &["staging"]),
            setting("env", &["LOG=debug"]),
            setting("env-exclude", &["SECRET"]),
            setting("env-file", &[".env"]),
            setting("env-include", &["DB_*", "API_URL"]),
            setting("fs-mode", &["write"]),
            // mirrord's filter applies to 80 and 8080 unless it names its ports.
            setting("http-filter-port", &["80", "8080"]),
            setting("http-header-filter", &["^X-Verifier-Run: {{ key }}$"]),
            setting("namespace", &["team"]),
            setting("steal", &["8080"]),
            setting("target", &["deployment/api"]),
        ]
    );
}

#[test]
fn mirrords_incoming_modes_and_port_mapping() {
    let translation = translate(
        &json!({"feature": {"network": {"incoming": "mirror"}}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(translation.settings, [setting("mirror-all", &[])]);
    let translation = translate(
        &json!({"feature": {"network": {"incoming": {
            "mode": "steal", "ports": [80, 81], "port_mapping": [[3000, 80]],
            "http_filter": {"path_filter": "^/api", "ports": [81]},
        }}}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(
        translation.settings,
        [
            setting("http-path-filter", &["^/api"]),
            setting("http-filter-port", &["81"]),
            setting("port-map", &["3000:80"]),
            setting("steal", &["80", "81"]),
        ]
    );
    let err = translate(
        &json!({"feature": {"network": {"incoming": {"mode": "steal", "ports": ["x"]}}}}),
        &exec_flags,
    )
    .unwrap_err();
    assert!(err.contains("feature.network.incoming.ports"), "{err}");
    let err = translate(
        &json!({"feature": {"network": {"incoming": {"mode": "borrow"}}}}),
        &exec_flags,
    )
    .unwrap_err();
    assert!(err.contains("borrow"), "{err}");
}

#[test]
fn mirrords_target_forms() {
    let target = |value| translate(&json!({ "target": value }), &exec_flags).unwrap();
    assert_eq!(
        target(json!("pod/api")).settings,
        [setting("target", &["pod/api"])]
    );
    assert_eq!(
        target(json!("pod/api/container/app")).settings,
        [
            setting("target", &["pod/api"]),
            setting("container", &["app"])
        ]
    );
    assert_eq!(
        target(json!({"path": {"deployment": "api", "container": "app"}})).settings,
        [
            setting("target", &["deployment/api"]),
            setting("container", &["app"])
        ]
    );
    let targetless = target(json!("targetless"));
    assert!(targetless.settings.is_empty());
    assert_eq!(targetless.warnings.len(), 1);
}

#[test]
fn mirrords_env_and_fs_switches() {
    let translation = translate(
        &json!({"feature": {"env": false, "fs": "local"}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(
        translation.settings,
        [setting("env-exclude", &["*"]), setting("fs-mode", &["off"])]
    );
    let translation = translate(&json!({"feature": {"fs": true}}), &exec_flags).unwrap();
    assert_eq!(translation.settings, [setting("fs-mode", &["read"])]);
}

#[test]
fn a_mirrord_file_runs_through_clap() {
    let file = ConfigFile::new(
        "json",
        r#"{"target": {"path": "pod/api/container/app", "namespace": "team"},
            "feature": {"env": {"include": "A;B"}, "fs": "write"},
            "agent": {"namespace": "agents"}}"#,
    );
    let cli = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap();
    let Command::Exec { session, .. } = cli.command else {
        panic!("not exec")
    };
    assert_eq!(session.target().to_string(), "pod/api");
    assert_eq!(session.kube.container.as_deref(), Some("app"));
    assert_eq!(session.kube.cluster.namespace.as_deref(), Some("team"));
    assert_eq!(session.kube.agent_namespace.as_deref(), Some("agents"));
    assert_eq!(session.env.include.len(), 2);
    assert_eq!(session.fs_mode, FsMode::Write);
}

#[test]
fn the_reconnect_window_comes_from_the_file_or_the_flag() {
    let file = ConfigFile::new("json", r#"{"target": "pid/7", "reconnect_window": 40}"#);
    let path = file.0.to_str().unwrap();
    let window = |args: &[&str]| match parse(args).unwrap().command {
        Command::Exec { session, .. } => session.reconnect.reconnect_window,
        _ => panic!("not exec"),
    };
    assert_eq!(window(&["exec", "-f", path, "--", "true"]), 40);
    assert_eq!(
        window(&["exec", "-f", path, "--reconnect-window", "3", "--", "true"]),
        3
    );
    assert_eq!(window(&["exec", "-t", "pid/7", "--", "true"]), 15);
    let bad = ConfigFile::new("json", r#"{"target": "pid/7", "reconnect_window": 9999}"#);
    let err = parse(&["exec", "-f", bad.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    assert!(err.contains("from 0 to 600"), "{err}");
}

#[test]
fn mirrords_outgoing_filter_becomes_local_or_remote() {
    let translation = translate(
        &json!({"feature": {"network": {"outgoing": {
            "tcp": true,
            "filter": {"local": ["127.0.0.1:5432", "udp://:53"]},
        }}}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(
        translation.settings,
        [setting("local", &["127.0.0.1:5432", "udp://:53"])]
    );
    assert!(
        translation.warnings.is_empty(),
        "{:?}",
        translation.warnings
    );
    let translation = translate(
        &json!({"feature": {"network": {"outgoing": {"udp": false, "filter": {"remote": "10.0.0.0/8"}}}}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(translation.settings, [setting("remote", &["10.0.0.0/8"])]);
    assert_eq!(translation.warnings.len(), 1, "{:?}", translation.warnings);
    assert!(translate(
        &json!({"feature": {"network": {"outgoing": {"filter": {"local": [5]}}}}}),
        &exec_flags,
    )
    .unwrap_err()
    .contains("feature.network.outgoing.filter.local"));

    // Through clap: the entries are checked as the flags' are.
    let file = ConfigFile::new(
        "json",
        r#"{"target": "pod/api", "feature": {"network": {"outgoing": {"filter": {"local": ["db:5432"]}}}}}"#,
    );
    let cli = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap();
    let Command::Exec { session, .. } = cli.command else {
        panic!("not exec")
    };
    assert_eq!(session.outgoing.local.len(), 1);
    let bad = ConfigFile::new(
        "json",
        r#"{"target": "pod/api", "feature": {"network": {"outgoing": {"filter": {"local": ["http://x"]}}}}}"#,
    );
    let err = parse(&["exec", "-f", bad.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    assert!(err.contains("tcp:// or udp://"), "{err}");
}

#[test]
fn mirrords_dns_filter_becomes_local_dns_or_remote_dns() {
    let translation = translate(
        &json!({"feature": {"network": {"dns": {
            "enabled": true,
            "filter": {"local": ["db.corp.example", "google.com:1337", "1.1.1.0/24:1337", ":53"]},
        }}}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(
        translation.settings,
        [setting("local-dns", &["db.corp.example", "google.com"])]
    );
    assert_eq!(translation.warnings.len(), 3, "{:?}", translation.warnings);
    assert!(translation.warnings[0].contains("names no port"));
    assert!(translation.warnings[1].contains("ignored"));
    let translation = translate(
        &json!({"feature": {"network": {"dns": {"filter": {"remote": "*.svc.cluster.local"}}}}}),
        &exec_flags,
    )
    .unwrap();
    assert_eq!(
        translation.settings,
        [setting("remote-dns", &["*.svc.cluster.local"])]
    );
    assert!(
        translation.warnings.is_empty(),
        "{:?}",
        translation.warnings
    );

    // Through clap: the patterns are checked as the flags' are, and honoured.
    let file = ConfigFile::new(
        "json",
        r#"{"target": "pod/api", "feature": {"network": {"dns": {"filter": {"local": ["*.corp.example"]}}}}}"#,
    );
    let cli = parse(&["exec", "-f", file.0.to_str().unwrap(), "--", "true"]).unwrap();
    let Command::Exec { session, .. } = cli.command else {
        panic!("not exec")
    };
    let rules = session.outgoing.dns_rules().unwrap();
    assert!(rules.to_host(Some("db.corp.example")));
    assert!(!rules.to_host(Some("web.svc.cluster.local")));
    let bad = ConfigFile::new(
        "json",
        r#"{"target": "pod/api", "feature": {"network": {"dns": {"filter": {"local": ["a.*.b"]}}}}}"#,
    );
    let err = parse(&["exec", "-f", bad.0.to_str().unwrap(), "--", "true"]).unwrap_err();
    assert!(err.contains("`*` only as the first label"), "{err}");
}
