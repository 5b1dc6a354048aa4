//! Whole directory listings, with every entry's attributes, kept in the daemon for the
//! attribute TTL, so that the kernel's page-by-page `readdirplus` (about 25 entries a call) is
//! answered without a round trip to the agent.
//!
//! A listing is fetched whole when the kernel asks for a directory from its start, and serves
//! every later page whose offset (the agent's `getdents` cookie) it contains. It goes:
//! - when it is older than the TTL (a change on the target is seen within that long, as with
//!   attributes);
//! - at once when the session itself changes the directory (a name created, removed or
//!   renamed in it) or writes to a file listed in it, so that neither a listing nor the
//!   attributes it would hand the kernel are ever older than the session's own changes.
//!
//! A fetch races such changes: one that started before a change may return what the agent saw
//! before it. Every change bumps a generation; a fetch is kept only if no change happened while
//! it was in flight ([`Listings::begin_fetch`] and [`Listings::insert`]), and otherwise serves
//! just the call that fetched it.
//!
//! No I/O and no references here: the methods return the nodes whose hold went, for the
//! [`crate::ledger::Ledger`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrord_net_protocol::fs::DirEntry;

struct Listing {
    entries: Arc<[DirEntry]>,
    /// Entry index each offset continues at: the offset after entry `i` starts at `i + 1`.
    starts: HashMap<u64, usize>,
    fetched_at: Instant,
}

impl Listing {
    fn nodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries
            .iter()
            .filter_map(|entry| entry.attr.map(|attr| attr.node))
    }
}

/// A page to answer: the listing and the index of its first entry.
pub type Page = (Arc<[DirEntry]>, usize);

/// The cached listings of a session, by directory node.
pub struct Listings {
    ttl: Duration,
    by_dir: HashMap<u64, Listing>,
    /// Directories whose listing holds each node (a hard link can be in several).
    dirs_of: HashMap<u64, Vec<u64>>,
    /// Bumped by every change; see [`Listings::begin_fetch`].
    generation: u64,
}

/// What became of a fetched listing.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Cached; the listing it replaced (if any) released these nodes.
    Cached { released: Vec<u64> },
    /// A change happened while it was fetched: not cached.
    Stale,
}

impl Listings {
    pub fn new(ttl: Duration) -> Self {
        Listings {
            ttl,
            by_dir: HashMap::new(),
            dirs_of: HashMap::new(),
            generation: 0,
        }
    }

    /// The page of `dir` that starts at `offset`, if a fresh listing has it.
    pub fn page(&self, dir: u64, offset: u64, now: Instant) -> Option<Page> {
        let listing = self.by_dir.get(&dir)?;
        if now.duration_since(listing.fetched_at) >= self.ttl {
            return None;
        }
        let start = if offset == 0 {
            0
        } else {
            *listing.starts.get(&offset)?
        };
        Some((listing.entries.clone(), start))
    }

    /// A token to pass to [`Listings::insert`] with what a fetch starting now returns.
    pub fn begin_fetch(&self) -> u64 {
        self.generation
    }

    /// Caches `entries` as the listing of `dir` fetched at `fetched_at`, unless something
    /// changed since `token` was taken.
    pub fn insert(
        &mut self,
        dir: u64,
        entries: Arc<[DirEntry]>,
        token: u64,
        fetched_at: Instant,
    ) -> Inserted {
        if token != self.generation {
            return Inserted::Stale;
        }
        let released = self.remove(dir);
        let starts = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| (entry.next_offset, index + 1))
            .collect();
        let listing = Listing {
            entries,
            starts,
            fetched_at,
        };
        for node in listing.nodes() {
            self.dirs_of.entry(node).or_default().push(dir);
        }
        self.by_dir.insert(dir, listing);
        Inserted::Cached { released }
    }

    /// The session changed names in `dir`: its listing goes. Returns the nodes it held.
    pub fn dir_changed(&mut self, dir: u64) -> Vec<u64> {
        self.generation += 1;
        self.remove(dir)
    }

    /// The session changed the file `node` (wrote it, set its attributes): the listings that
    /// would hand the kernel its old attributes go. Returns the nodes they held.
    pub fn node_changed(&mut self, node: u64) -> Vec<u64> {
        self.generation += 1;
        let dirs = self.dirs_of.get(&node).cloned().unwrap_or_default();
        dirs.into_iter().flat_map(|dir| self.remove(dir)).collect()
    }

    /// Drops the listings older than the TTL. Returns the nodes they held.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let old: Vec<u64> = self
            .by_dir
            .iter()
            .filter(|(_, listing)| now.duration_since(listing.fetched_at) >= self.ttl)
            .map(|(&dir, _)| dir)
            .collect();
        old.into_iter().flat_map(|dir| self.remove(dir)).collect()
    }

    /// Listings cached.
    pub fn len(&self) -> usize {
        self.by_dir.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_dir.is_empty()
    }

    fn remove(&mut self, dir: u64) -> Vec<u64> {
        let Some(listing) = self.by_dir.remove(&dir) else {
            return Vec::new();
        };
        let nodes: Vec<u64> = listing.nodes().collect();
        for &node in &nodes {
            if let Some(dirs) = self.dirs_of.get_mut(&node) {
                if let Some(at) = dirs.iter().position(|&held_by| held_by == dir) {
                    dirs.swap_remove(at);
                }
                if dirs.is_empty() {
                    self.dirs_of.remove(&node);
                }
            }
        }
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_net_protocol::fs::Attr;

    const TTL: Duration = Duration::from_secs(1);

    /// A listing of `.` and the files `nodes`, at offsets 1, 2, …
    fn listing(nodes: &[u64]) -> Arc<[DirEntry]> {
        let dot = DirEntry {
            name: b".".to_vec(),
            next_offset: 1,
            kind: libc::S_IFDIR,
            attr: None,
        };
        let files = nodes.iter().enumerate().map(|(i, &node)| DirEntry {
            name: format!("f{node}").into_bytes(),
            next_offset: i as u64 + 2,
            kind: libc::S_IFREG,
            attr: Some(Attr {
                node,
                ..Attr::default()
            }),
        });
        std::iter::once(dot).chain(files).collect()
    }

    fn cached(listings: &mut Listings, dir: u64, nodes: &[u64], at: Instant) -> Vec<u64> {
        let token = listings.begin_fetch();
        match listings.insert(dir, listing(nodes), token, at) {
            Inserted::Cached { released } => released,
            Inserted::Stale => panic!("nothing changed"),
        }
    }

    #[test]
    fn pages_continue_at_the_offset_of_the_last_entry_served() {
        let now = Instant::now();
        let mut listings = Listings::new(TTL);
        cached(&mut listings, 1, &[10, 11, 12], now);
        let (entries, start) = listings.page(1, 0, now).unwrap();
        assert_eq!((entries.len(), start), (4, 0));
        // The kernel took `.` and f10; it asks again from f10's next offset.
        let (_, start) = listings.page(1, entries[1].next_offset, now).unwrap();
        assert_eq!(start, 2);
        assert_eq!(listings.page(1, entries[3].next_offset, now).unwrap().1, 4);
        assert!(listings.page(1, 999, now).is_none(), "unknown offset");
        assert!(listings.page(2, 0, now).is_none(), "other directory");
    }

    #[test]
    fn a_listing_is_served_for_the_ttl_and_expiring_releases_its_nodes() {
        let now = Instant::now();
        let mut listings = Listings::new(TTL);
        cached(&mut listings, 1, &[10, 11], now);
        assert!(listings.page(1, 0, now + TTL / 2).is_some());
        assert!(listings.page(1, 0, now + TTL).is_none());
        assert!(listings.expire(now + TTL / 2).is_empty());
        assert_eq!(listings.expire(now + TTL), vec![10, 11]);
        assert!(listings.is_empty());
    }

    #[test]
    fn a_new_listing_of_the_same_directory_releases_the_old_one() {
        let now = Instant::now();
        let mut listings = Listings::new(TTL);
        cached(&mut listings, 1, &[10, 11], now);
        assert_eq!(cached(&mut listings, 1, &[10, 12], now), vec![10, 11]);
        assert_eq!(listings.len(), 1);
    }

    #[test]
    fn a_change_in_the_directory_drops_its_listing_and_no_other() {
        let now = Instant::now();
        let mut listings = Listings::new(TTL);
        cached(&mut listings, 1, &[10], now);
        cached(&mut listings, 2, &[20], now);
        assert_eq!(listings.dir_changed(1), vec![10]);
        assert!(listings.page(1, 0, now).is_none());
        assert!(listings.page(2, 0, now).is_some());
    }

    #[test]
    fn writing_a_file_drops_every_listing_that_holds_it() {
        let now = Instant::now();
        let mut listings = Listings::new(TTL);
        // Node 7 is a hard link in directories 1 and 2.
        cached(&mut listings, 1, &[7, 10], now);
        cached(&mut listings, 2, &[7], now);
        cached(&mut listings, 3, &[30], now);
        let mut released = listings.node_changed(7);
        released.sort_unstable();
        assert_eq!(released, vec![7, 7, 10]);
        assert_eq!(listings.len(), 1);
        assert!(listings.node_changed(7).is_empty());
    }

    #[test]
    fn a_fetch_that_crossed_a_change_is_not_cached() {
        let now = Instant::now();
        let mut listings = Listings::new(TTL);
        let token = listings.begin_fetch();
        listings.dir_changed(5);
        assert_eq!(
            listings.insert(1, listing(&[10]), token, now),
            Inserted::Stale
        );
        assert!(listings.page(1, 0, now).is_none());
        let token = listings.begin_fetch();
        assert!(matches!(
            listings.insert(1, listing(&[10]), token, now),
            Inserted::Cached { .. }
        ));
    }
}
