//! `mirrord-net completions` and `mirrord-net man`: the completion script loads in bash and
//! completes the subcommands; the manual page renders with groff and names every subcommand.

use std::process::Command;
use std::time::Duration;

use mirrord_net_tests::exec;
use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::tools::{tool, SYSTEM_PATH};

const TIMEOUT: Duration = Duration::from_secs(30);

fn bash(script: &str) -> exec::Outcome {
    let mut command = Command::new(tool("bash"));
    command
        .args(["-c", script])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("CLIENT", client_binary());
    exec::run(command, TIMEOUT).expect("bash in time")
}

#[test]
fn the_bash_completion_loads_and_completes_subcommands_and_flags() {
    let out = bash(
        r#"set -e
        source <("$CLIENT" completions bash)
        complete -p mirrord-net
        COMP_WORDS=(mirrord-net ex); COMP_CWORD=1; COMP_LINE="mirrord-net ex"; COMP_POINT=14
        _mirrord__net mirrord-net ex mirrord-net
        echo "words: ${COMPREPLY[*]}"
        COMP_WORDS=(mirrord-net exec --tar); COMP_CWORD=2; COMP_LINE="mirrord-net exec --tar"
        COMP_POINT=${#COMP_LINE}
        _mirrord__net mirrord-net --tar exec
        echo "flags: ${COMPREPLY[*]}""#,
    );
    let stdout = out.assert_success();
    assert!(stdout.contains("complete -"), "{out}");
    assert!(stdout.contains("words: exec"), "{out}");
    assert!(stdout.contains("flags: --target"), "{out}");
}

#[test]
fn the_man_page_renders_with_every_subcommand() {
    let out = bash(r#"set -o pipefail; "$CLIENT" man | groff -man -Tutf8 -P-cbou"#);
    let page = out.assert_success();
    for word in [
        "mirrord-net",
        "SYNOPSIS",
        "MIRRORD-NET EXEC",
        "MIRRORD-NET SHELL",
        "MIRRORD-NET DOCTOR",
        "--target",
        "--http-header-filter",
    ] {
        assert!(
            page.contains(word),
            "no {word:?} in the rendered page:\n{out}"
        );
    }
}
