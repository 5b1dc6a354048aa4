//! The translations against the agent's real file server, in process (no kernel, no QUIC).

use std::path::PathBuf;
use std::sync::Arc;

use mirrord_net_agent::files::{Access, FileServer};
use mirrord_net_protocol::fs::{DirEntry, FsRequest, ROOT_NODE};

use super::*;
use crate::transport::TransportError;

struct InProcess(Arc<FileServer>);

impl Transport for InProcess {
    async fn call(&self, request: FsRequest) -> Result<Reply, TransportError> {
        let server = self.0.clone();
        let answer = tokio::task::spawn_blocking(move || server.handle(request))
            .await
            .map_err(|err| TransportError::Stream(err.to_string()))?;
        Ok(Reply {
            response: answer.response,
            data: answer.data.unwrap_or_default(),
        })
    }
}

struct Tree(PathBuf);

impl Tree {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mnet-fusefs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/config"), b"v1\n").unwrap();
        Tree(dir)
    }

    fn remote(&self, access: Access) -> (Remote<InProcess>, Arc<FileServer>) {
        let server = Arc::new(FileServer::open(&self.0, access).unwrap());
        (Remote::new(InProcess(server.clone())), server)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_file_is_looked_up_opened_and_read() {
    let tree = Tree::new("read");
    let (remote, _) = tree.remote(Access::ReadOnly);
    let etc = remote.lookup(ROOT_NODE, b"etc").await.unwrap();
    let config = remote.lookup(etc.node, b"config").await.unwrap();
    assert_eq!(config.size, 3);
    let opened = remote.open(config.node, libc::O_RDONLY).await.unwrap();
    assert_eq!(remote.read(opened.handle, 0, 4096).await.unwrap(), b"v1\n");
    assert_eq!(remote.read(opened.handle, 1, 1).await.unwrap(), b"1");
    remote.release(opened.handle).await;
    assert_eq!(remote.lookup(etc.node, b"nope").await, Err(libc::ENOENT));
}

#[tokio::test]
async fn the_page_cache_is_kept_only_while_size_and_mtime_are_unchanged() {
    let tree = Tree::new("cache");
    let (remote, _) = tree.remote(Access::ReadWrite);
    let etc = remote.lookup(ROOT_NODE, b"etc").await.unwrap();
    let config = remote.lookup(etc.node, b"config").await.unwrap();

    let first = remote.open(config.node, libc::O_RDONLY).await.unwrap();
    assert!(!first.keep_cache, "nothing cached before the first open");
    let second = remote.open(config.node, libc::O_RDONLY).await.unwrap();
    assert!(second.keep_cache, "unchanged since the last open");

    // The target changes the file.
    std::fs::write(tree.0.join("etc/config"), b"version 2\n").unwrap();
    let third = remote.open(config.node, libc::O_RDONLY).await.unwrap();
    assert!(!third.keep_cache, "changed: the kernel must drop its pages");
    assert_eq!(third.attr.size, 10);
    let fourth = remote.open(config.node, libc::O_RDWR).await.unwrap();
    assert!(!fourth.keep_cache, "opened for writing");
}

#[tokio::test]
async fn read_only_remote_gets_erofs_and_write_mode_changes_the_tree() {
    let tree = Tree::new("modes");
    let (remote, _) = tree.remote(Access::ReadOnly);
    let caller = Caller { uid: 0, gid: 0 };
    assert_eq!(
        remote
            .create(ROOT_NODE, b"x", 0o644, libc::O_WRONLY, caller)
            .await,
        Err(libc::EROFS)
    );
    assert!(!tree.0.join("x").exists());

    let (remote, _) = tree.remote(Access::ReadWrite);
    let created = remote
        .create(ROOT_NODE, b"x", 0o644, libc::O_WRONLY, caller)
        .await
        .unwrap();
    assert_eq!(
        remote.write(created.handle, 0, b"data".to_vec()).await,
        Ok(4)
    );
    remote.release(created.handle).await;
    remote
        .rename(ROOT_NODE, b"x", ROOT_NODE, b"y", 0)
        .await
        .unwrap();
    assert_eq!(std::fs::read(tree.0.join("y")).unwrap(), b"data");
}

#[tokio::test]
async fn readdirplus_entries_that_do_not_fit_are_forgotten() {
    let tree = Tree::new("dir");
    for i in 0..10 {
        std::fs::write(tree.0.join(format!("f{i}")), b"").unwrap();
    }
    let (remote, server) = tree.remote(Access::ReadOnly);
    let before = server.node_count();
    let entries = remote.readdir(ROOT_NODE, 0, true, 100).await.unwrap();
    assert_eq!(entries.len(), 13, "10 files, etc, . and ..");
    let mut room = 5;
    let unseen = fill_dir(entries, |_| {
        if room == 0 {
            return true;
        }
        room -= 1;
        false
    });
    // 13 entries, 5 fitted; the 8 others minus the dots among them are forgotten.
    assert!(unseen.len() >= 6 && unseen.len() <= 8, "{}", unseen.len());
    for node in unseen {
        remote.forget(node, 1).await;
    }
    // What fitted still holds its reference until the kernel forgets it.
    assert!(server.node_count() > before);
}

#[test]
fn fill_dir_stops_at_the_first_entry_that_does_not_fit() {
    let entry = |node| DirEntry {
        name: b"n".to_vec(),
        next_offset: 0,
        kind: libc::S_IFREG,
        attr: Some(mirrord_net_protocol::fs::Attr {
            node,
            ..Default::default()
        }),
    };
    let mut calls = 0;
    let unseen = fill_dir(vec![entry(2), entry(3), entry(4)], |entry| {
        calls += 1;
        entry.attr.unwrap().node == 3
    });
    assert_eq!(calls, 2, "nothing is offered after a full buffer");
    assert_eq!(unseen, vec![3, 4]);
}
