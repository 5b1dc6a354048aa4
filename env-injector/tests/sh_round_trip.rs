//! The dotenv writer's promise: `set -a; . FILE` in a POSIX shell reads back exactly the
//! values written, tricky ones included. Runs the real `/bin/sh`.

use std::process::Command;

use mirrord_net_env_injector::{dotenv, environ, Var};

fn var(name: &str, value: &[u8]) -> Var {
    (name.as_bytes().to_vec(), value.to_vec())
}

#[test]
fn sh_reads_back_what_render_wrote() {
    let env = vec![
        var("QUOTES", b"it's \"quoted\" ''"),
        var("NEWLINES", b"a\nb\n\nc\n"),
        var("DOLLAR", b"$HOME ${X} $(id) `id` $"),
        var("BACKSLASH", b"C:\\path\\n\\\\ \\"),
        var("EQUALS", b"a=b=c"),
        var("EMPTY", b""),
        var("HASH", b" # not a comment "),
        var("BINARY", b"\xff\xfe\x01\t\r"),
        var("BANG", b"!!"),
    ];
    let rendered = dotenv::render(&env);
    let path = std::env::temp_dir().join(format!("mnet-dotenv-{}.env", std::process::id()));
    std::fs::write(&path, &rendered.text).unwrap();
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg("set -a; . \"$1\"; exec cat /proc/self/environ")
        .arg("sh")
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(output.status.success(), "{output:?}");
    let seen = environ::parse(&output.stdout);
    for expected in &env {
        let got = seen.iter().find(|(name, _)| *name == expected.0);
        assert_eq!(
            got,
            Some(expected),
            "{}",
            String::from_utf8_lossy(&expected.0)
        );
    }
    assert_eq!(dotenv::parse(&rendered.text).unwrap(), env);
}
