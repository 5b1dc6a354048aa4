use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use mirrord_net_protocol::fs::{Caller, FsRequest, FsResponse, SetAttr, ROOT_NODE};

use super::*;

struct TempRoot(PathBuf);

impl TempRoot {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mnet-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc/app")).unwrap();
        std::fs::write(dir.join("etc/app/config.yaml"), b"port: 8080\n").unwrap();
        std::os::unix::fs::symlink("/etc/app/config.yaml", dir.join("etc/abs-link")).unwrap();
        std::os::unix::fs::symlink("app/config.yaml", dir.join("etc/rel-link")).unwrap();
        let sparse = std::fs::File::create(dir.join("sparse")).unwrap();
        sparse.set_len(1 << 33).unwrap();
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(b"tail", (1 << 33) - 4).unwrap();
        TempRoot(dir)
    }

    fn server(&self, access: Access) -> FileServer {
        FileServer::open(&self.0, access).unwrap()
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lookup(server: &FileServer, parent: u64, name: &str) -> Result<Attr, i32> {
    match server
        .handle(FsRequest::Lookup {
            parent,
            name: name.as_bytes().to_vec(),
        })
        .response
    {
        FsResponse::Entry(attr) => Ok(attr),
        FsResponse::Error(errno) => Err(errno),
        other => panic!("unexpected {other:?}"),
    }
}

fn walk(server: &FileServer, path: &str) -> Result<Attr, i32> {
    let mut attr = Attr {
        node: ROOT_NODE,
        ..Attr::default()
    };
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = lookup(server, attr.node, part)?;
    }
    Ok(attr)
}

fn open(server: &FileServer, node: u64, flags: i32) -> Result<u64, i32> {
    match server.handle(FsRequest::Open { node, flags }).response {
        FsResponse::Opened { handle, .. } => Ok(handle),
        FsResponse::Error(errno) => Err(errno),
        other => panic!("unexpected {other:?}"),
    }
}

fn read(server: &FileServer, handle: u64, offset: u64, size: u32) -> Vec<u8> {
    let answer = server.handle(FsRequest::Read {
        handle,
        offset,
        size,
    });
    let FsResponse::Data { len } = answer.response else {
        panic!("unexpected {:?}", answer.response)
    };
    let data = answer.data.unwrap();
    assert_eq!(len as usize, data.len());
    data
}

#[test]
fn stat_fields_are_the_files_own() {
    let root = TempRoot::new("stat");
    let server = root.server(Access::ReadOnly);
    let attr = walk(&server, "etc/app/config.yaml").unwrap();
    let meta = std::fs::symlink_metadata(root.0.join("etc/app/config.yaml")).unwrap();
    assert_eq!(attr.size, meta.size());
    assert_eq!(attr.mode, meta.mode());
    assert_eq!((attr.uid, attr.gid), (meta.uid(), meta.gid()));
    assert_eq!(attr.nlink as u64, meta.nlink());
    assert_eq!(attr.mtime.secs, meta.mtime());
    assert_eq!(attr.mtime.nanos as i64, meta.mtime_nsec());
    assert_eq!(attr.blocks, meta.blocks());

    let sparse = walk(&server, "sparse").unwrap();
    assert_eq!(sparse.size, 1 << 33);
    assert!(
        sparse.blocks * 512 < 1 << 20,
        "sparse file reports few blocks"
    );
}

#[test]
fn reads_at_any_offset_of_a_sparse_file() {
    let root = TempRoot::new("read");
    let server = root.server(Access::ReadOnly);
    let node = walk(&server, "sparse").unwrap().node;
    let handle = open(&server, node, libc::O_RDONLY).unwrap();
    assert_eq!(read(&server, handle, (1 << 33) - 4, 1 << 20), b"tail");
    assert_eq!(read(&server, handle, 1 << 32, 8), vec![0u8; 8]);
    assert!(
        read(&server, handle, 1 << 34, 100).is_empty(),
        "past the end"
    );
    server.handle(FsRequest::Release { handle });
    let answer = server.handle(FsRequest::Read {
        handle,
        offset: 0,
        size: 1,
    });
    assert_eq!(answer.response, FsResponse::Error(libc::EBADF));
}

#[test]
fn symlinks_are_given_back_as_written() {
    let root = TempRoot::new("links");
    let server = root.server(Access::ReadOnly);
    for (name, target) in [
        ("etc/abs-link", "/etc/app/config.yaml"),
        ("etc/rel-link", "app/config.yaml"),
    ] {
        let attr = walk(&server, name).unwrap();
        assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(
            server
                .handle(FsRequest::ReadLink { node: attr.node })
                .response,
            FsResponse::Link(target.as_bytes().to_vec())
        );
    }
}

#[test]
fn errors_are_errnos() {
    let root = TempRoot::new("errors");
    let server = root.server(Access::ReadOnly);
    assert_eq!(walk(&server, "etc/missing"), Err(libc::ENOENT));
    assert_eq!(walk(&server, "etc/app/config.yaml/x"), Err(libc::ENOTDIR));
    // Names that would leave the root are not names.
    assert_eq!(lookup(&server, ROOT_NODE, ".."), Err(libc::EINVAL));
    assert_eq!(lookup(&server, ROOT_NODE, "etc/app"), Err(libc::EINVAL));
    // A node the client never got.
    assert_eq!(
        server.handle(FsRequest::GetAttr { node: 999 }).response,
        FsResponse::Error(libc::ESTALE)
    );
}

#[test]
fn read_only_refuses_every_change_with_erofs() {
    let root = TempRoot::new("ro");
    let server = root.server(Access::ReadOnly);
    let file = walk(&server, "etc/app/config.yaml").unwrap().node;
    assert_eq!(open(&server, file, libc::O_WRONLY), Err(libc::EROFS));
    assert_eq!(
        open(&server, file, libc::O_RDONLY | libc::O_TRUNC),
        Err(libc::EROFS)
    );
    for request in [
        FsRequest::Create {
            parent: ROOT_NODE,
            name: b"new".to_vec(),
            mode: 0o644,
            flags: libc::O_WRONLY,
            caller: Caller::default(),
        },
        FsRequest::Unlink {
            parent: ROOT_NODE,
            name: b"sparse".to_vec(),
        },
        FsRequest::SetAttr {
            node: file,
            handle: None,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
            caller: Caller::default(),
        },
    ] {
        assert_eq!(
            server.handle(request).response,
            FsResponse::Error(libc::EROFS)
        );
    }
    assert_eq!(
        std::fs::read(root.0.join("etc/app/config.yaml")).unwrap(),
        b"port: 8080\n"
    );
    assert!(root.0.join("sparse").exists());
}

#[test]
fn write_mode_creates_writes_renames_and_removes() {
    let root = TempRoot::new("rw");
    let server = root.server(Access::ReadWrite);
    let etc = walk(&server, "etc").unwrap().node;
    let uid = 4321;
    let FsResponse::Created { handle, attr } = server
        .handle(FsRequest::Create {
            parent: etc,
            name: b"new.txt".to_vec(),
            mode: libc::S_IFREG | 0o640,
            flags: libc::O_WRONLY,
            caller: Caller { uid, gid: uid },
        })
        .response
    else {
        panic!("not created")
    };
    assert_eq!(attr.uid, uid);
    assert_eq!(
        server
            .handle(FsRequest::Write {
                handle,
                offset: 0,
                data: b"hello".to_vec(),
            })
            .response,
        FsResponse::Written(5)
    );
    server.handle(FsRequest::Fsync {
        handle,
        datasync: false,
    });
    server.handle(FsRequest::Release { handle });
    assert_eq!(
        server
            .handle(FsRequest::Rename {
                parent: etc,
                name: b"new.txt".to_vec(),
                new_parent: ROOT_NODE,
                new_name: b"moved.txt".to_vec(),
                flags: 0,
            })
            .response,
        FsResponse::Ok
    );
    assert_eq!(std::fs::read(root.0.join("moved.txt")).unwrap(), b"hello");
    let meta = std::fs::metadata(root.0.join("moved.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), uid);

    let moved = walk(&server, "moved.txt").unwrap().node;
    let FsResponse::Attr(attr) = server
        .handle(FsRequest::SetAttr {
            node: moved,
            handle: None,
            set: SetAttr {
                mode: Some(0o600),
                size: Some(2),
                ..SetAttr::default()
            },
            caller: Caller { uid, gid: uid },
        })
        .response
    else {
        panic!("no attr")
    };
    assert_eq!((attr.size, attr.mode & 0o777), (2, 0o600));

    let FsResponse::Entry(dir) = server
        .handle(FsRequest::Mkdir {
            parent: ROOT_NODE,
            name: b"d".to_vec(),
            mode: 0o755,
            caller: Caller::default(),
        })
        .response
    else {
        panic!("no dir")
    };
    assert_eq!(dir.mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(
        server
            .handle(FsRequest::Rmdir {
                parent: ROOT_NODE,
                name: b"d".to_vec()
            })
            .response,
        FsResponse::Ok
    );
    assert_eq!(
        server
            .handle(FsRequest::Unlink {
                parent: ROOT_NODE,
                name: b"moved.txt".to_vec()
            })
            .response,
        FsResponse::Ok
    );
    assert!(!root.0.join("moved.txt").exists());
}

#[test]
fn readdir_plus_lists_everything_across_pages_and_counts_lookups() {
    let root = TempRoot::new("dir");
    let many = root.0.join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..300 {
        std::fs::write(many.join(format!("f{i}")), b"x").unwrap();
    }
    let server = root.server(Access::ReadOnly);
    let dir = walk(&server, "many").unwrap().node;
    let before = server.node_count();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let FsResponse::Dir(entries) = server
            .handle(FsRequest::ReadDir {
                node: dir,
                offset,
                plus: true,
                max_entries: 32,
            })
            .response
        else {
            panic!("not a listing")
        };
        if entries.is_empty() {
            break;
        }
        assert!(entries.len() <= 32);
        for entry in entries {
            offset = entry.next_offset;
            let dots = entry.name == b"." || entry.name == b"..";
            assert_eq!(entry.attr.is_none(), dots);
            if let Some(attr) = entry.attr {
                assert_eq!(attr.size, 1);
                server.handle(FsRequest::Forget {
                    node: attr.node,
                    count: 1,
                });
            }
            names.push(String::from_utf8(entry.name).unwrap());
        }
    }
    names.sort();
    assert_eq!(names.len(), 302, "300 files, . and ..");
    assert_eq!(server.node_count(), before, "every lookup given back");
}

#[test]
fn forget_many_gives_back_every_listed_reference_in_one_request() {
    let root = TempRoot::new("forget-many");
    for i in 0..50 {
        std::fs::write(root.0.join(format!("f{i}")), b"x").unwrap();
    }
    let server = root.server(Access::ReadOnly);
    let before = server.node_count();
    let FsResponse::Dir(entries) = server
        .handle(FsRequest::ReadDir {
            node: ROOT_NODE,
            offset: 0,
            plus: true,
            max_entries: 4096,
        })
        .response
    else {
        panic!("not a listing")
    };
    let nodes: Vec<(u64, u64)> = entries
        .iter()
        .filter_map(|entry| entry.attr.map(|attr| (attr.node, 1)))
        .collect();
    assert_eq!(server.node_count(), before + nodes.len());
    // Keep one reference back: that node must stay.
    let (kept, rest) = nodes.split_first().unwrap();
    assert_eq!(
        server
            .handle(FsRequest::ForgetMany {
                nodes: rest.to_vec()
            })
            .response,
        FsResponse::Ok
    );
    assert_eq!(server.node_count(), before + 1);
    server.handle(FsRequest::ForgetMany { nodes: vec![*kept] });
    assert_eq!(server.node_count(), before);
}

fn set_attr(server: &FileServer, node: u64, set: SetAttr, caller: Caller) -> Result<Attr, i32> {
    match server
        .handle(FsRequest::SetAttr {
            node,
            handle: None,
            set,
            caller,
        })
        .response
    {
        FsResponse::Attr(attr) => Ok(attr),
        FsResponse::Error(errno) => Err(errno),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn write_mode_refuses_setuid_bits_and_owners_other_than_the_caller() {
    let root = TempRoot::new("owners");
    let server = root.server(Access::ReadWrite);
    let user = Caller {
        uid: 4321,
        gid: 4321,
    };
    let FsResponse::Created { handle, attr } = server
        .handle(FsRequest::Create {
            parent: ROOT_NODE,
            name: b"tool".to_vec(),
            mode: libc::S_IFREG | libc::S_ISUID | libc::S_ISGID | 0o755,
            flags: libc::O_WRONLY,
            caller: user,
        })
        .response
    else {
        panic!("not created")
    };
    server.handle(FsRequest::Release { handle });
    // Created, without the bits it asked for.
    assert_eq!(attr.mode & 0o7777, 0o755);
    let tool = attr.node;
    for mode in [libc::S_ISUID | 0o755, libc::S_ISGID | 0o755] {
        let set = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        assert_eq!(set_attr(&server, tool, set, user), Err(libc::EPERM));
    }
    let to_root = SetAttr {
        uid: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(set_attr(&server, tool, to_root, user), Err(libc::EPERM));
    let to_root_group = SetAttr {
        gid: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        set_attr(&server, tool, to_root_group, user),
        Err(libc::EPERM)
    );
    let meta = std::fs::metadata(root.0.join("tool")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (4321, 4321, 0o755)
    );
    // What an owner may do still works: its own ids, plain modes, a directory's setgid bit.
    let own = SetAttr {
        uid: Some(4321),
        gid: Some(4321),
        mode: Some(0o700),
        ..SetAttr::default()
    };
    let attr = set_attr(&server, tool, own, user).unwrap();
    assert_eq!(attr.mode & 0o7777, 0o700);
    let etc = walk(&server, "etc").unwrap().node;
    let shared_dir = SetAttr {
        mode: Some(libc::S_ISGID | 0o775),
        ..SetAttr::default()
    };
    let attr = set_attr(&server, etc, shared_dir, user).unwrap();
    assert_eq!(attr.mode & 0o7777, libc::S_ISGID | 0o775);
}

#[test]
fn fifos_devices_and_sockets_are_listed_but_not_opened() {
    let root = TempRoot::new("special");
    let fifo =
        std::ffi::CString::new(root.0.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let _socket = std::os::unix::net::UnixListener::bind(root.0.join("socket")).unwrap();
    let null =
        std::ffi::CString::new(root.0.join("null").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; /dev/null's device number.
    let made = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(made, 0, "{}", std::io::Error::last_os_error());
    let server = root.server(Access::ReadWrite);
    for (name, kind) in [
        ("fifo", libc::S_IFIFO),
        ("socket", libc::S_IFSOCK),
        ("null", libc::S_IFCHR),
    ] {
        let attr = walk(&server, name).unwrap();
        assert_eq!(attr.mode & libc::S_IFMT, kind, "{name}");
        // A FIFO without a writer would hold this thread until one came: it must answer now.
        for flags in [libc::O_RDONLY, libc::O_WRONLY] {
            assert_eq!(open(&server, attr.node, flags), Err(libc::ENXIO), "{name}");
        }
    }
}

#[test]
fn procfs_files_only_for_anyone_and_only_for_reading() {
    // The agent's own /proc stands in for the target's: the same file system, the same modes.
    let server = FileServer::open(std::path::Path::new("/proc"), Access::ReadWrite).unwrap();
    let kmsg = walk(&server, "kmsg").unwrap();
    assert_eq!(kmsg.mode & 0o004, 0, "/proc/kmsg is root's alone");
    assert_eq!(open(&server, kmsg.node, libc::O_RDONLY), Err(libc::EACCES));
    let drop_caches = walk(&server, "sys/vm/drop_caches").unwrap();
    assert_eq!(
        open(&server, drop_caches.node, libc::O_WRONLY),
        Err(libc::EACCES)
    );
    let version = walk(&server, "version").unwrap();
    let handle = open(&server, version.node, libc::O_RDONLY).unwrap();
    assert!(read(&server, handle, 0, 4096).starts_with(b"Linux version"));
    assert_eq!(
        open(&server, version.node, libc::O_WRONLY),
        Err(libc::EACCES)
    );
}

#[test]
fn reads_leave_the_access_time_alone() {
    let root = TempRoot::new("atime");
    let path = root.0.join("etc/app/config.yaml");
    let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(past))
        .unwrap();
    let server = root.server(Access::ReadOnly);
    let file = walk(&server, "etc/app/config.yaml").unwrap().node;
    let handle = open(&server, file, libc::O_RDONLY).unwrap();
    assert_eq!(read(&server, handle, 0, 64), b"port: 8080\n");
    let atime = std::fs::metadata(&path).unwrap().accessed().unwrap();
    assert_eq!(atime, past);
}

#[test]
fn open_files_and_nodes_are_capped_and_freed() {
    let root = TempRoot::new("caps");
    // The root is one node: three more fit.
    let server = root.server(Access::ReadOnly).with_limits(4, 4);
    let file = walk(&server, "etc/app/config.yaml").unwrap().node;
    assert_eq!(server.node_count(), 4, "root, etc, app, config.yaml");
    // A fifth file is refused as a full file table would be; one already held is not.
    assert_eq!(lookup(&server, ROOT_NODE, "sparse"), Err(libc::ENFILE));
    assert!(lookup(&server, ROOT_NODE, "etc").is_ok());

    let handles: Vec<u64> = (0..4)
        .map(|_| open(&server, file, libc::O_RDONLY).unwrap())
        .collect();
    assert_eq!(open(&server, file, libc::O_RDONLY), Err(libc::EMFILE));
    let released = server.handle(FsRequest::Release { handle: handles[0] });
    assert!(matches!(released.response, FsResponse::Ok));
    assert!(open(&server, file, libc::O_RDONLY).is_ok());

    // Forgetting gives a node's place back.
    let etc = lookup(&server, ROOT_NODE, "etc").unwrap().node;
    server.handle(FsRequest::Forget {
        node: file,
        count: u64::MAX,
    });
    assert!(lookup(&server, ROOT_NODE, "sparse").is_ok());
    let _ = etc;
}
