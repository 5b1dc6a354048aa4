//! File requests a client sends (one postcard frame each) answered by the agent's file server
//! over a small read-only tree: files, a directory, symlinks (relative, absolute, looping,
//! escaping), a FIFO. Answers must come back, never a panic or a hang; one input is one
//! session (its own server).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mirrord_net_agent::files::{Access, FileServer};
use mirrord_net_protocol::framing::FrameDecoder;
use mirrord_net_protocol::fs::FsRequest;

/// A server per input, as each session has its own: what one input opens is gone with it.
fn server() -> FileServer {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(tree);
    FileServer::open(root, Access::ReadOnly).expect("opening the tree")
}

/// The tree, made once per process (removed and made again, so runs start alike).
fn tree() -> PathBuf {
    let root = std::env::temp_dir().join(format!("mirrord-net-fuzz-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mk = |path: &Path| std::fs::create_dir_all(path).expect("mkdir");
    mk(&root.join("dir/sub"));
    std::fs::write(root.join("file"), b"hello").expect("write");
    std::fs::write(root.join("dir/sub/big"), vec![7u8; 70_000]).expect("write");
    let link = |target: &str, at: &str| {
        let _ = std::os::unix::fs::symlink(target, root.join(at));
    };
    link("file", "relative");
    link("/file", "absolute");
    link("../../..", "dir/escape");
    link("loop", "loop");
    let fifo = std::ffi::CString::new(root.join("fifo").into_os_string().into_encoded_bytes())
        .expect("path");
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    root
}

fuzz_target!(|data: &[u8]| {
    let server = server();
    let mut decoder = FrameDecoder::new();
    decoder.push(data);
    while let Ok(Some(request)) = decoder.next_message::<FsRequest>() {
        let _ = server.handle(request);
    }
});
