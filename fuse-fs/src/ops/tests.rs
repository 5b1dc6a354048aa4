//! The translations against the agent's real file server, in process (no kernel, no QUIC).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
        (
            Remote::new(InProcess(server.clone()), Duration::from_secs(60)),
            server,
        )
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
        remote
            .write(created.attr.node, created.handle, 0, b"data".to_vec())
            .await,
        Ok(4)
    );
    remote.release(created.handle).await;
    remote
        .rename(ROOT_NODE, b"x", ROOT_NODE, b"y", 0)
        .await
        .unwrap();
    assert_eq!(std::fs::read(tree.0.join("y")).unwrap(), b"data");
}

/// A kernel buffer with room for `room` entries; records the names it took.
fn buffer(room: usize, names: &mut Vec<Vec<u8>>) -> impl FnMut(&DirEntry) -> bool + '_ {
    move |entry| {
        if names.len() == room {
            return true;
        }
        names.push(entry.name.clone());
        false
    }
}

/// Lists `dir` page by page as the kernel does, `room` entries a page; returns the names
/// and the nodes the kernel took a reference on.
async fn list(remote: &Remote<InProcess>, dir: u64, room: usize) -> (Vec<Vec<u8>>, Vec<u64>) {
    let (mut all, mut nodes, mut offset) = (Vec::new(), Vec::new(), 0);
    loop {
        let mut page = Vec::new();
        let mut offsets = Vec::new();
        let mut page_nodes = Vec::new();
        remote
            .readdirplus(dir, offset, |entry| {
                if page.len() == room {
                    return true;
                }
                page.push(entry.name.clone());
                offsets.push(entry.next_offset);
                page_nodes.extend(entry.attr.map(|attr| attr.node));
                false
            })
            .await
            .unwrap();
        let Some(&last) = offsets.last() else {
            return (all, nodes);
        };
        offset = last;
        all.extend(page);
        nodes.extend(page_nodes);
    }
}

fn with_files(tag: &str, count: usize) -> Tree {
    let tree = Tree::new(tag);
    for i in 0..count {
        std::fs::write(tree.0.join(format!("f{i}")), b"").unwrap();
    }
    tree
}

#[tokio::test]
async fn a_listing_is_fetched_once_and_pages_are_served_from_it() {
    let tree = with_files("pages", 100);
    let (remote, server) = tree.remote(Access::ReadOnly);
    let before = server.node_count();
    let (names, nodes) = list(&remote, ROOT_NODE, 25).await;
    assert_eq!(names.len(), 103, "100 files, etc, . and ..");
    assert_eq!(nodes.len(), 101);
    assert_eq!(
        remote.held(),
        (101, 1),
        "one agent reference per entry, one listing"
    );
    assert_eq!(server.node_count(), before + 101);

    // The same listing again: no new agent references, the kernel's count doubles.
    std::fs::write(tree.0.join("late"), b"").unwrap();
    let (again, _) = list(&remote, ROOT_NODE, 25).await;
    assert_eq!(again, names, "served from the cache within the TTL");
    assert_eq!(remote.held(), (101, 1));

    // The kernel forgets everything it took, twice over: all goes back to the agent only
    // once the listing goes too.
    let forgets: Vec<(u64, u64)> = nodes.iter().map(|&node| (node, 2)).collect();
    remote.forget(&forgets).await;
    assert_eq!(
        server.node_count(),
        before + 101,
        "the listing still holds them"
    );
    remote.dirs_changed(&[ROOT_NODE]).await;
    assert_eq!(remote.held(), (0, 0));
    assert_eq!(server.node_count(), before);
}

#[tokio::test]
async fn cached_entries_that_did_not_fit_stay_open_until_the_listing_expires() {
    let tree = with_files("expire", 10);
    let server = Arc::new(FileServer::open(&tree.0, Access::ReadOnly).unwrap());
    let remote = Remote::new(InProcess(server.clone()), Duration::from_millis(50));
    let before = server.node_count();
    let mut names = Vec::new();
    remote
        .readdirplus(ROOT_NODE, 0, buffer(5, &mut names))
        .await
        .unwrap();
    assert_eq!(names.len(), 5);
    assert_eq!(
        server.node_count(),
        before + 11,
        "the whole listing is held"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    remote.expire_listings().await;
    // Only what the kernel took (5 entries, less the dots among them) is still open.
    let kernel_held = names.iter().filter(|name| !name.starts_with(b".")).count();
    assert_eq!(server.node_count(), before + kernel_held);
    assert_eq!(remote.held(), (kernel_held as u64, 0));
}

#[tokio::test]
async fn the_sessions_own_changes_show_in_the_next_listing_at_once() {
    let tree = with_files("changes", 3);
    let (remote, server) = tree.remote(Access::ReadWrite);
    let caller = Caller { uid: 0, gid: 0 };
    let names = |tree: &(Vec<Vec<u8>>, Vec<u64>)| {
        let mut names: Vec<String> = tree
            .0
            .iter()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        names.sort();
        names
    };
    let first = list(&remote, ROOT_NODE, 25).await;
    assert_eq!(names(&first), [".", "..", "etc", "f0", "f1", "f2"]);

    let created = remote
        .create(ROOT_NODE, b"new", 0o644, libc::O_WRONLY, caller)
        .await
        .unwrap();
    remote.release(created.handle).await;
    remote.unlink(ROOT_NODE, b"f0").await.unwrap();
    let etc = remote.lookup(ROOT_NODE, b"etc").await.unwrap();
    remote
        .rename(ROOT_NODE, b"f1", etc.node, b"moved", 0)
        .await
        .unwrap();
    remote.mkdir(ROOT_NODE, b"d", 0o755, caller).await.unwrap();
    let second = list(&remote, ROOT_NODE, 25).await;
    assert_eq!(names(&second), [".", "..", "d", "etc", "f2", "new"]);
    let in_etc = list(&remote, etc.node, 25).await;
    assert_eq!(names(&in_etc), [".", "..", "config", "moved"]);

    // A write drops the listing that holds the file's old size.
    let f2 = remote.lookup(ROOT_NODE, b"f2").await.unwrap().node;
    let opened = remote.open(f2, libc::O_WRONLY).await.unwrap();
    remote
        .write(f2, opened.handle, 0, b"12345".to_vec())
        .await
        .unwrap();
    remote.release(opened.handle).await;
    let mut size = None;
    remote
        .readdirplus(ROOT_NODE, 0, |entry| {
            if entry.name == b"f2" {
                size = entry.attr.map(|attr| attr.size);
            }
            false
        })
        .await
        .unwrap();
    assert_eq!(size, Some(5));
    drop(server);
}

#[tokio::test]
async fn an_offset_the_listing_lacks_is_asked_of_the_agent() {
    let tree = with_files("fallback", 40);
    let (remote, server) = tree.remote(Access::ReadOnly);
    let before = server.node_count();
    let whole = remote.readdir(ROOT_NODE, 0, false, 4096).await.unwrap();
    // A cookie from a listing this daemon never cached.
    let offset = whole[20].next_offset;
    let mut names = Vec::new();
    remote
        .readdirplus(ROOT_NODE, offset, buffer(5, &mut names))
        .await
        .unwrap();
    assert_eq!(
        names,
        whole[21..26]
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>()
    );
    let files = names.iter().filter(|name| !name.starts_with(b".")).count();
    assert_eq!(
        remote.held(),
        (files as u64, 0),
        "no listing cached from the middle"
    );
    // The entries that did not fit were given back at once.
    assert_eq!(server.node_count(), before + files);
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
    let added = fill_dir(&[entry(2), entry(3), entry(4)], |entry| {
        calls += 1;
        entry.attr.unwrap().node == 3
    });
    assert_eq!(calls, 2, "nothing is offered after a full buffer");
    assert_eq!(added, 1);
}
