//! Go programs the tests build from `tests/go/`: Go does its network calls with its own
//! system calls, not the C library's, and links statically, so these show what a Go service
//! in a session sees.

use std::path::Path;
use std::process::Command;

use crate::session::bin_dir;
use crate::tools::tool;

/// Builds the Go program `tests/go/NAME.go` into `out_dir` and returns its path: a static
/// binary (`CGO_ENABLED=0`), whose network calls are Go's own system calls, not the C
/// library's. Go's build cache is kept beside the project's binaries, so only the first build
/// on a machine compiles Go's standard library.
pub fn go_program(name: &str, out_dir: &Path) -> String {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("go")
        .join(format!("{name}.go"));
    let binary = out_dir.join(name);
    let output = Command::new(tool("go"))
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", bin_dir().join("go-build-cache"))
        .env("GOPATH", out_dir.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .output()
        .unwrap_or_else(|err| panic!("cannot run go build: {err}"));
    assert!(
        output.status.success(),
        "go build {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    binary.to_string_lossy().into_owned()
}
