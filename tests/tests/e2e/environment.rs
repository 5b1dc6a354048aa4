//! The session's environment is the target's, over the user's own, with the user's session
//! variables kept; and the session's identity (hostname, its address) is the target's.
//!
//! The target is started with variables of its own, some of them awkward (a newline, `=`,
//! bytes that are not UTF-8), a PATH, HOME and TERM of its own, and a secret to exclude.
//! Unmodified programs read them: coreutils `env` and `printenv`, static busybox `env`, and
//! python's `os.environb`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use mirrord_net_env_injector::{dotenv, environ, json, Var};
use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::tools::SYSTEM_PATH;
use mirrord_net_tests::topology::{POD_V4, POD_V6};
use mirrord_net_tests::{tool, Invocation, Pod};

const MULTILINE: &str = "first line\nsecond = line\n";
const BINARY: &[u8] = b"caf\xe9 \xff\xfe";
const TARGET_PATH: &str = "/pod/image/bin:/usr/bin:/bin";

/// A pod whose target has the variables these tests look for.
fn pod_with_env() -> Pod {
    Pod::builder()
        .target_env("APP_MODE", "production")
        .target_env("APP_URL", "postgres://db/app?sslmode=require&x=1")
        .target_env("MULTILINE", MULTILINE)
        .target_env("BINARY", OsString::from_vec(BINARY.to_vec()))
        .target_env("SECRET_TOKEN", "hunter2")
        .target_env("OTHER", "other")
        .target_env("PATH", TARGET_PATH)
        .target_env("HOME", "/pod-home")
        .target_env("TERM", "pod-term")
        .target_env("LC_ALL", "pod-locale")
        .build()
}

/// The environment `env` (coreutils) prints in a session, exactly, as bytes: `env -0`
/// through `od`, so that no byte is lost on the way to the test.
fn session_env(invocation: Invocation) -> Vec<Var> {
    let out = invocation.run();
    let hex = out.assert_success();
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("od prints hex bytes"))
        .collect();
    environ::parse(&bytes)
}

fn env_script() -> String {
    format!("'{}' -0 | '{}' -An -v -tx1", tool("env"), tool("od"))
}

fn session(pod: &Pod) -> Invocation {
    Invocation::session(pod, &["/bin/sh", "-c", &env_script()]).env("TERM", "xterm-local")
}

/// The command's environment exactly as the kernel gave it: `od` reads its own
/// /proc/self/environ, with no shell in between (a shell would add PWD).
fn exact_session(pod: &Pod) -> Invocation {
    Invocation::session(
        pod,
        &[&tool("od"), "-An", "-v", "-tx1", "/proc/self/environ"],
    )
    .env("TERM", "xterm-local")
}

fn value<'a>(env: &'a [Var], name: &str) -> Option<&'a [u8]> {
    env.iter()
        .find(|(key, _)| key == name.as_bytes())
        .map(|(_, value)| value.as_slice())
}

fn sorted(mut env: Vec<Var>) -> Vec<Var> {
    env.sort();
    env
}

#[test]
fn target_variables_reach_env_intact_with_newlines_equals_and_binary_bytes() {
    let pod = pod_with_env();
    let env = session_env(session(&pod));
    assert_eq!(value(&env, "APP_MODE"), Some(b"production".as_slice()));
    assert_eq!(
        value(&env, "APP_URL"),
        Some(b"postgres://db/app?sslmode=require&x=1".as_slice())
    );
    assert_eq!(value(&env, "MULTILINE"), Some(MULTILINE.as_bytes()));
    assert_eq!(value(&env, "BINARY"), Some(BINARY));
    assert_eq!(value(&env, "SECRET_TOKEN"), Some(b"hunter2".as_slice()));
}

#[test]
fn printenv_busybox_and_python_see_the_targets_variables() {
    let pod = pod_with_env();
    let out = Invocation::session(&pod, &[&tool("printenv"), "APP_MODE"]).run();
    assert_eq!(out.assert_success(), "production\n", "{out}");

    let out = Invocation::session(&pod, &[&tool("busybox"), "env"]).run();
    let text = out.assert_success();
    assert!(text.contains("\nAPP_MODE=production\n"), "{out}");
    assert!(text.contains(&format!("\nMULTILINE={MULTILINE}")), "{out}");

    let script = "import os, sys; \
                  sys.stdout.write(os.environb[b'BINARY'].hex() + ' ' + os.environ['APP_MODE'])";
    let out = Invocation::session(&pod, &[&tool("python3"), "-c", script]).run();
    assert_eq!(
        out.assert_success(),
        format!("{} production", hex(BINARY)),
        "{out}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn kept_local_names_stay_the_users() {
    let pod = pod_with_env();
    let env = session_env(session(&pod));
    // PATH, HOME, TERM and the locale belong to the user's session, not the pod's image.
    assert_eq!(value(&env, "PATH"), Some(SYSTEM_PATH.as_bytes()));
    assert_eq!(value(&env, "HOME"), Some(b"/root".as_slice()));
    assert_eq!(value(&env, "TERM"), Some(b"xterm-local".as_slice()));
    assert_eq!(value(&env, "LC_ALL"), None);
    assert_eq!(value(&env, "APP_MODE"), Some(b"production".as_slice()));
}

#[test]
fn the_invoking_users_identity_wins_over_the_targets() {
    let pod = pod_with_env();
    let env = session_env(session(&pod).as_user(65534, 65534));
    assert_eq!(value(&env, "HOME"), Some(b"/nonexistent".as_slice()));
    assert_eq!(value(&env, "USER"), Some(b"nobody".as_slice()));
    assert_eq!(value(&env, "APP_MODE"), Some(b"production".as_slice()));
}

#[test]
fn env_exclude_keeps_a_target_variable_out() {
    let pod = pod_with_env();
    let env = session_env(session(&pod).client_flag("--env-exclude=SECRET_*"));
    assert_eq!(value(&env, "SECRET_TOKEN"), None);
    assert_eq!(value(&env, "APP_MODE"), Some(b"production".as_slice()));
}

#[test]
fn env_include_takes_only_matching_names_and_can_name_a_kept_local_one() {
    let pod = pod_with_env();
    let env = session_env(
        session(&pod)
            .client_flag("--env-include=APP_*")
            .client_flag("--env-include=PATH")
            .client_flag("--env-exclude=APP_URL"),
    );
    assert_eq!(value(&env, "APP_MODE"), Some(b"production".as_slice()));
    assert_eq!(value(&env, "APP_URL"), None, "exclude wins over include");
    assert_eq!(value(&env, "OTHER"), None);
    assert_eq!(value(&env, "SECRET_TOKEN"), None);
    assert_eq!(value(&env, "PATH"), Some(TARGET_PATH.as_bytes()));
    assert_eq!(value(&env, "HOME"), Some(b"/root".as_slice()));
}

#[test]
fn dash_e_and_env_file_override_target_and_identity() {
    let pod = pod_with_env();
    let file = pod.dir().join("override.env");
    std::fs::write(
        &file,
        "# overrides\n\
         export FROM_FILE='single $quoted'\n\
         APP_MODE=\"from file\\nwith newline\"\n\
         HOME=/from-file\n\
         EMPTY=\n",
    )
    .unwrap();
    let env = session_env(
        session(&pod)
            .as_user(65534, 65534)
            .client_flag(&format!("--env-file={}", file.display()))
            .client_flag("-e")
            .client_flag("HOME=/from-flag")
            .client_flag("--env=EXTRA=a=b"),
    );
    assert_eq!(value(&env, "FROM_FILE"), Some(b"single $quoted".as_slice()));
    assert_eq!(
        value(&env, "APP_MODE"),
        Some(b"from file\nwith newline".as_slice())
    );
    assert_eq!(value(&env, "HOME"), Some(b"/from-flag".as_slice()));
    assert_eq!(value(&env, "EMPTY"), Some(b"".as_slice()));
    assert_eq!(value(&env, "EXTRA"), Some(b"a=b".as_slice()));
    assert_eq!(value(&env, "USER"), Some(b"nobody".as_slice()));
}

#[test]
fn a_bad_env_file_is_a_usage_error_and_starts_nothing() {
    let pod = pod_with_env();
    let file = pod.dir().join("bad.env");
    std::fs::write(&file, "GOOD=1\n2BAD=x\n").unwrap();
    let out = Invocation::session(&pod, &["true"])
        .client_flag(&format!("--env-file={}", file.display()))
        .run();
    out.assert_code(2);
    assert!(
        out.stderr
            .contains(&format!("--env-file: {} line 2:", file.display())),
        "the error should name the file and the line:\n{out}"
    );
    assert!(
        !out.stderr.contains("agent"),
        "nothing should have started:\n{out}"
    );
    let missing = pod.dir().join("missing.env");
    let out = Invocation::session(&pod, &["true"])
        .client_flag(&format!("--env-file={}", missing.display()))
        .run();
    out.assert_code(2);
    assert!(out.stderr.contains("cannot read"), "{out}");
}

#[test]
fn env_subcommand_prints_what_the_sessions_command_gets() {
    let pod = pod_with_env();
    let flags = ["--env-exclude=SECRET_*", "-e", "EXTRA=1"];
    let mut seen = exact_session(&pod);
    for flag in flags {
        seen = seen.client_flag(flag);
    }
    let seen = sorted(session_env(seen));
    let target = format!("pid/{}", pod.target_pid());

    for format in ["json", "dotenv"] {
        let mut args = vec!["env", "--target", &target, "--quiet", "--format", format];
        args.extend(flags);
        let out = Invocation::client(&args).env("TERM", "xterm-local").run();
        let text = out.assert_success();
        let printed = match format {
            "json" => json::parse(text).unwrap(),
            _ => dotenv::parse(out.stdout.as_bytes()).unwrap(),
        };
        let printed = sorted(printed);
        if format == "json" {
            // JSON carries binary values as bytes: exactly what the session saw.
            assert_eq!(printed, seen, "{out}");
        } else {
            // stdout is read as UTF-8 here; compare everything but the binary value.
            let text_only = |env: &[Var]| -> Vec<Var> {
                env.iter()
                    .filter(|(k, _)| k != b"BINARY")
                    .cloned()
                    .collect()
            };
            assert_eq!(text_only(&printed), text_only(&seen), "{out}");
        }
    }
}

/// Runs `script` with `/bin/sh` on the host, with a session client's environment, and
/// returns the environment its last command (`env_script`) printed.
fn host_shell_env(script: &str) -> Vec<Var> {
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{script} && {}", env_script()))
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("HOME", "/root")
        .output()
        .expect("/bin/sh runs");
    assert!(output.status.success(), "{script}: {output:?}");
    let bytes: Vec<u8> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("od prints hex bytes"))
        .collect();
    environ::parse(&bytes)
}

#[test]
fn dotenv_output_reads_back_through_sh_and_env_file() {
    let pod = pod_with_env();
    let file = pod.dir().join("printed.env");
    let through_sh = host_shell_env(&format!(
        "'{client}' env --target pid/{pid} --quiet > '{file}' && set -a && . '{file}'",
        client = client_binary().display(),
        pid = pod.target_pid(),
        file = file.display(),
    ));
    assert_eq!(value(&through_sh, "MULTILINE"), Some(MULTILINE.as_bytes()));
    assert_eq!(value(&through_sh, "BINARY"), Some(BINARY));
    assert_eq!(
        value(&through_sh, "APP_URL"),
        Some(b"postgres://db/app?sslmode=require&x=1".as_slice())
    );

    // And through --env-file: a session given the printed file, with none of the target's
    // variables taken, sees the same values.
    let env = session_env(
        session(&pod)
            .client_flag("--env-exclude=*")
            .client_flag(&format!("--env-file={}", file.display())),
    );
    assert_eq!(value(&env, "MULTILINE"), Some(MULTILINE.as_bytes()));
    assert_eq!(value(&env, "BINARY"), Some(BINARY));
    assert_eq!(value(&env, "APP_MODE"), Some(b"production".as_slice()));
}

#[test]
fn hostname_is_the_targets() {
    let pod = Pod::start();
    let out = Invocation::session(&pod, &[&tool("hostname")]).run();
    assert_eq!(out.assert_success().trim(), pod.hostname(), "{out}");
}

#[test]
fn own_name_resolves_to_the_targets_address_when_its_hosts_file_lacks_it() {
    let pod = Pod::builder().hosts_without_hostname().build();
    let out = Invocation::session(&pod, &[&tool("hostname"), "-i"]).run();
    let addresses: Vec<&str> = out.assert_success().split_whitespace().collect();
    assert!(
        addresses.contains(&POD_V4.to_string().as_str()),
        "hostname -i should give the target's address:\n{out}"
    );
    let script = format!("'{}' ahosts \"$('{}')\"", tool("getent"), tool("hostname"));
    let out = Invocation::session(&pod, &["/bin/sh", "-c", &script]).run();
    let text = out.assert_success();
    assert!(text.contains(&POD_V4.to_string()), "{out}");
    assert!(text.contains(&POD_V6.to_string()), "{out}");
    assert!(text.contains(pod.hostname()), "{out}");

    // The target's own file is left as it was.
    let out = mirrord_net_tests::run_in_pod(&pod, &[&tool("cat"), "/etc/hosts"]);
    assert_eq!(out.assert_success(), pod.hosts(), "{out}");
    assert!(!pod.hosts().contains(pod.hostname()));
}

#[test]
fn own_name_keeps_the_targets_entry_when_its_hosts_file_has_one() {
    let pod = Pod::start();
    let out = Invocation::session(&pod, &[&tool("cat"), "/etc/hosts"]).run();
    assert_eq!(out.assert_success(), pod.hosts(), "{out}");
    let script = format!("'{}' hosts \"$('{}')\"", tool("getent"), tool("hostname"));
    let out = Invocation::session(&pod, &["/bin/sh", "-c", &script]).run();
    let address = out.assert_success().split_whitespace().next().unwrap_or("");
    assert!(
        address == POD_V4.to_string() || address == POD_V6.to_string(),
        "{out}"
    );
}
