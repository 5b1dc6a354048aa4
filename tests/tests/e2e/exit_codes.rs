//! mirrord-net's exit code is its command's, the way a shell reports it.

use mirrord_net_tests::{run_in_session, Pod};

#[test]
fn true_exits_0() {
    let pod = Pod::start();
    run_in_session(&pod, &["true"]).assert_code(0);
}

#[test]
fn exit_42_is_passed_through() {
    let pod = Pod::start();
    run_in_session(&pod, &["sh", "-c", "exit 42"]).assert_code(42);
}

#[test]
fn a_command_killed_by_sigterm_exits_143() {
    let pod = Pod::start();
    run_in_session(&pod, &["sh", "-c", "kill -TERM $$"]).assert_code(143);
}

#[test]
fn a_missing_command_exits_127() {
    let pod = Pod::start();
    let out = run_in_session(&pod, &["mirrord-net-test-no-such-command"]);
    out.assert_code(127);
    assert!(
        out.stderr.contains("mirrord-net-test-no-such-command"),
        "the error should name the command:\n{out}"
    );
}
