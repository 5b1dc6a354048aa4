//! `mirrord-net shell` on a real terminal: the user's shell runs in the session with line
//! editing, ^C and job control working as in any shell (tests/scripts/interactive_shell.py
//! types the keys and reads the screen).

use std::time::Duration;

use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::tools::SYSTEM_PATH;
use mirrord_net_tests::{tool, Pod};

#[test]
fn interactive_shell_has_line_editing_ctrl_c_and_job_control() {
    let pod = Pod::start();
    let mut command = std::process::Command::new(tool("python3"));
    command
        .arg(pod.script("interactive_shell.py"))
        .arg(pod.hostname())
        .arg(client_binary())
        .args(["shell", "--quiet", "--target"])
        .arg(format!("pid/{}", pod.target_pid()))
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("SHELL", tool("bash"))
        // No ~/.bashrc there, and a terminal type readline edits on without escape sequences.
        .env("HOME", pod.dir())
        .env("TERM", "dumb")
        .env("LANG", "C.UTF-8");
    let out = mirrord_net_tests::exec::run(command, Duration::from_secs(120))
        .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    assert_eq!(out.assert_success().trim(), "OK", "{out}");
}
