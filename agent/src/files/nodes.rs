//! The node table: node ids handed to the client, the file each one stands for, and how many
//! references the client holds.
//!
//! A node is keyed by `(st_dev, st_ino)`, so a file reached twice (two lookups, a hard link,
//! `readdirplus` and then `lookup`) is one node with one id, as the kernel expects. Every
//! answer that names a node takes one reference; `forget` gives references back, and the
//! last one closes the node's descriptor. The root never goes.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use mirrord_net_protocol::fs::ROOT_NODE;

/// What identifies a file across lookups.
pub type FileKey = (u64, u64);

struct Node {
    fd: Arc<OwnedFd>,
    key: FileKey,
    refs: u64,
}

/// Node ids ↔ descriptors, with reference counts.
pub struct NodeTable {
    by_id: HashMap<u64, Node>,
    by_key: HashMap<FileKey, u64>,
    next_id: u64,
}

impl NodeTable {
    pub fn new(root: OwnedFd, root_key: FileKey) -> Self {
        let mut table = NodeTable {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            next_id: ROOT_NODE + 1,
        };
        table.by_id.insert(
            ROOT_NODE,
            Node {
                fd: Arc::new(root),
                key: root_key,
                refs: 1,
            },
        );
        table.by_key.insert(root_key, ROOT_NODE);
        table
    }

    /// The descriptor of `id`, if the client still holds it.
    pub fn fd(&self, id: u64) -> Option<Arc<OwnedFd>> {
        self.by_id.get(&id).map(|node| node.fd.clone())
    }

    /// Whether the file `key` has a node.
    pub fn contains(&self, key: FileKey) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Takes one reference on the file `key` (opened as `fd`) and returns its id; a file that
    /// already has a node keeps it, and `fd` is closed.
    pub fn insert(&mut self, key: FileKey, fd: OwnedFd) -> u64 {
        if let Some(&id) = self.by_key.get(&key) {
            let node = self.by_id.get_mut(&id).expect("by_key and by_id agree");
            node.refs += 1;
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_id.insert(
            id,
            Node {
                fd: Arc::new(fd),
                key,
                refs: 1,
            },
        );
        self.by_key.insert(key, id);
        id
    }

    /// Gives back `count` references of `id`; the node goes with its last one.
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT_NODE {
            return;
        }
        let Some(node) = self.by_id.get_mut(&id) else {
            return;
        };
        node.refs = node.refs.saturating_sub(count);
        if node.refs == 0 {
            let node = self.by_id.remove(&id).expect("just found");
            self.by_key.remove(&node.key);
        }
    }

    /// How many nodes (the root included) are held.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/").unwrap().into()
    }

    #[test]
    fn the_same_file_keeps_one_id_and_counts_references() {
        let mut table = NodeTable::new(fd(), (1, 2));
        let a = table.insert((1, 10), fd());
        let again = table.insert((1, 10), fd());
        assert_eq!(a, again);
        assert_ne!(a, ROOT_NODE);
        let other_device = table.insert((2, 10), fd());
        assert_ne!(other_device, a);
        assert_eq!(table.len(), 3);

        table.forget(a, 1);
        assert!(table.fd(a).is_some(), "one reference left");
        table.forget(a, 1);
        assert!(table.fd(a).is_none());
        // A later lookup of the same file gets a fresh id.
        assert_ne!(table.insert((1, 10), fd()), a);
    }

    #[test]
    fn the_root_is_never_forgotten() {
        let mut table = NodeTable::new(fd(), (1, 2));
        table.forget(ROOT_NODE, 100);
        assert!(table.fd(ROOT_NODE).is_some());
        // Looking the root up again (e.g. through `..`) names the root itself.
        assert_eq!(table.insert((1, 2), fd()), ROOT_NODE);
    }
}
