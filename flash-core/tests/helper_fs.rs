//! Confined resolution and prefetch on a real directory tree.
use flash_core::fs::{file_meta, prefetch, FsError, Resolution, Resolver, SymlinkPolicy};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use tempfile::TempDir;

/// tmp/
///   outside.txt
///   root/
///     a.txt, sub/b.txt, docs/index.html, empty/, idxdir/index.html/ (a dir),
///     linkidx/index.html -> ../a.txt, link_in -> a.txt, link_dir -> docs,
///     link_out -> ../outside.txt, link_abs -> <abs path of root/a.txt>,
///     link_loop -> link_loop, fifo, sock
struct Tree {
    tmp: TempDir,
    _listener: std::os::unix::net::UnixListener,
}

impl Tree {
    fn new() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(tmp.path().join("outside.txt"), "secret").unwrap();
        fs::write(root.join("a.txt"), "hello").unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/b.txt"), "bee").unwrap();
        fs::create_dir(root.join("docs")).unwrap();
        fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::create_dir_all(root.join("idxdir/index.html")).unwrap();
        fs::create_dir(root.join("linkidx")).unwrap();
        symlink("../a.txt", root.join("linkidx/index.html")).unwrap();
        symlink("a.txt", root.join("link_in")).unwrap();
        symlink("docs", root.join("link_dir")).unwrap();
        symlink("../outside.txt", root.join("link_out")).unwrap();
        symlink(root.join("a.txt"), root.join("link_abs")).unwrap();
        symlink("link_loop", root.join("link_loop")).unwrap();
        let fifo = CString::new(root.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let listener = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
        Tree {
            tmp,
            _listener: listener,
        }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn resolver(&self, policy: SymlinkPolicy) -> Resolver {
        Resolver::open(&self.root(), policy).unwrap()
    }
}

fn contents(fd: OwnedFd) -> String {
    let mut s = String::new();
    File::from(fd).read_to_string(&mut s).unwrap();
    s
}

/// Resolves and returns (contents, is_index) of a file result.
fn file_of(r: &Resolver, path: &str, slash: bool) -> (String, bool) {
    match r.resolve(path, slash) {
        Ok(Resolution::File { file, index, .. }) => (contents(file), index.is_some()),
        other => panic!("{path:?} (slash {slash}): expected a file, got {other:?}"),
    }
}

fn err(r: &Resolver, path: &str, slash: bool) -> FsError {
    match r.resolve(path, slash) {
        Err(e) => e,
        Ok(other) => panic!("{path:?} (slash {slash}): expected an error, got {other:?}"),
    }
}

#[test]
fn regular_file_with_meta() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    let Ok(Resolution::File { file, meta, index }) = r.resolve("a.txt", false) else {
        panic!("a.txt not resolved");
    };
    assert_eq!(index, None);
    let std_meta = fs::metadata(t.root().join("a.txt")).unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(meta.ino, std_meta.ino());
    assert_eq!(meta.dev, std_meta.dev());
    assert_eq!(meta.mode, std_meta.mode());
    assert_eq!(meta.uid, std_meta.uid());
    assert_eq!(meta.gid, std_meta.gid());
    assert_eq!(meta.mtime_secs, std_meta.mtime());
    assert_eq!(i64::from(meta.mtime_nsec), std_meta.mtime_nsec());
    assert_eq!(meta.mtime(), std_meta.modified().unwrap());
    assert!(meta.is_regular());
    assert_eq!(file_meta(file.as_fd()).unwrap(), meta);
    // Read-only, blocking, close-on-exec.
    // SAFETY: F_GETFL / F_GETFD touch no memory.
    let (fl, fd_flags) = unsafe {
        (
            libc::fcntl(file.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(file.as_raw_fd(), libc::F_GETFD),
        )
    };
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);
    assert_eq!(fl & libc::O_NONBLOCK, 0);
    assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    assert_eq!(contents(file), "hello");
    assert_eq!(file_of(&r, "sub/b.txt", false), ("bee".into(), false));
}

#[test]
fn trailing_slash_on_a_file_is_not_found() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert_eq!(err(&r, "a.txt", true), FsError::NotFound);
}

#[test]
fn missing_paths_are_not_found() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert_eq!(err(&r, "nope.html", false), FsError::NotFound);
    assert_eq!(err(&r, "nope/deeper", true), FsError::NotFound);
    assert_eq!(err(&r, "a.txt/x", false), FsError::NotFound, "ENOTDIR");
    assert_eq!(
        err(&r, &"n".repeat(300), false),
        FsError::NotFound,
        "ENAMETOOLONG"
    );
}

#[test]
fn directory_without_slash_redirects() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert!(matches!(r.resolve("docs", false), Ok(Resolution::Redirect)));
    assert!(matches!(
        r.resolve("empty", false),
        Ok(Resolution::Redirect)
    ));
    assert!(matches!(r.resolve("", false), Ok(Resolution::Redirect)));
}

#[test]
fn directory_with_slash_serves_index_html() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert_eq!(file_of(&r, "docs", true), ("<h1>docs</h1>".into(), true));
    // The root itself.
    fs::write(t.root().join("index.html"), "home").unwrap();
    assert_eq!(file_of(&r, "", true), ("home".into(), true));
}

#[test]
fn directory_without_index_is_forbidden() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert_eq!(err(&r, "empty", true), FsError::Forbidden);
    assert_eq!(err(&r, "", true), FsError::Forbidden);
    // index.html that is itself a directory.
    assert_eq!(err(&r, "idxdir", true), FsError::Forbidden);
}

#[test]
fn symlinks_within_root_are_followed() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert_eq!(file_of(&r, "link_in", false), ("hello".into(), false));
    assert!(matches!(
        r.resolve("link_dir", false),
        Ok(Resolution::Redirect)
    ));
    assert_eq!(
        file_of(&r, "link_dir", true),
        ("<h1>docs</h1>".into(), true)
    );
    // An index.html that is a symlink to elsewhere in the root.
    assert_eq!(file_of(&r, "linkidx", true), ("hello".into(), true));
}

#[test]
fn symlinks_are_refused_under_never() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::Never);
    assert_eq!(err(&r, "link_in", false), FsError::Forbidden);
    assert_eq!(err(&r, "link_dir", true), FsError::Forbidden);
    assert_eq!(err(&r, "link_dir/index.html", false), FsError::Forbidden);
    assert_eq!(err(&r, "linkidx", true), FsError::Forbidden);
    // Plain files still work.
    assert_eq!(file_of(&r, "a.txt", false), ("hello".into(), false));
    assert_eq!(file_of(&r, "docs", true), ("<h1>docs</h1>".into(), true));
}

#[test]
fn symlink_out_of_the_root_is_forbidden() {
    let t = Tree::new();
    for policy in [SymlinkPolicy::WithinRoot, SymlinkPolicy::Never] {
        let r = t.resolver(policy);
        assert_eq!(err(&r, "link_out", false), FsError::Forbidden);
        assert_eq!(err(&r, "link_loop", false), FsError::Forbidden);
    }
}

#[test]
fn absolute_symlink_is_forbidden() {
    let t = Tree::new();
    // Even though it points at a file inside the root.
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    assert_eq!(err(&r, "link_abs", false), FsError::Forbidden);
}

#[test]
fn hostile_paths_are_not_served() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    for path in [
        "../outside.txt",
        "..",
        "sub/../../outside.txt",
        "/etc/passwd",
        "//etc/passwd",
        "docs/../../root/../outside.txt",
    ] {
        for slash in [false, true] {
            let got = r.resolve(path, slash);
            assert!(
                matches!(got, Err(FsError::Forbidden) | Err(FsError::NotFound)),
                "{path:?} was served: {got:?}"
            );
        }
    }
    assert_eq!(err(&r, "../outside.txt", false), FsError::Forbidden);
    assert_eq!(err(&r, "a\0b", false), FsError::Forbidden);
    // Index lookup of an escaping directory does not escape either.
    assert_eq!(err(&r, "..", true), FsError::Forbidden);
}

#[test]
fn fifo_is_not_a_file_and_does_not_block() {
    let t = Tree::new();
    let (tx, rx) = mpsc::channel();
    let root = t.root();
    std::thread::spawn(move || {
        let r = Resolver::open(&root, SymlinkPolicy::WithinRoot).unwrap();
        let _ = tx.send((
            r.resolve("fifo", false).err(),
            r.resolve("fifo", true).err(),
        ));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("opening a FIFO blocked");
    assert_eq!(got, (Some(FsError::NotAFile), Some(FsError::NotAFile)));
}

#[test]
fn socket_is_not_served() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    // open(2) of a Unix socket fails with ENXIO before we can fstat it.
    assert_eq!(err(&r, "sock", false), FsError::NotAFile);
    assert_eq!(FsError::from_errno(libc::ENXIO), FsError::NotAFile);
}

#[test]
fn root_is_held_open() {
    let t = Tree::new();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    let moved = t.tmp.path().join("moved");
    fs::rename(t.root(), &moved).unwrap();
    assert_eq!(file_of(&r, "a.txt", false), ("hello".into(), false));
    assert_eq!(r.policy(), SymlinkPolicy::WithinRoot);
}

#[test]
fn open_rejects_non_directories() {
    let t = Tree::new();
    assert!(Resolver::open(&t.root().join("a.txt"), SymlinkPolicy::WithinRoot).is_err());
    assert!(Resolver::open(Path::new("/nonexistent/flash/root"), SymlinkPolicy::Never).is_err());
}

#[test]
fn errno_mapping() {
    assert_eq!(FsError::from_errno(libc::ENOENT), FsError::NotFound);
    assert_eq!(FsError::from_errno(libc::ENOTDIR), FsError::NotFound);
    assert_eq!(FsError::from_errno(libc::ENAMETOOLONG), FsError::NotFound);
    for e in [libc::EACCES, libc::EPERM, libc::EXDEV, libc::ELOOP] {
        assert_eq!(FsError::from_errno(e), FsError::Forbidden);
    }
    assert_eq!(
        FsError::from_errno(libc::EIO),
        FsError::Io { errno: libc::EIO }
    );
}

#[test]
fn prefetch_ranges() {
    let t = Tree::new();
    let data: Vec<u8> = (0..(1usize << 20) + 12_345)
        .map(|i| (i % 251) as u8)
        .collect();
    fs::write(t.root().join("big.bin"), &data).unwrap();
    let r = t.resolver(SymlinkPolicy::WithinRoot);
    let Ok(Resolution::File { file, meta, .. }) = r.resolve("big.bin", false) else {
        panic!("big.bin not resolved");
    };
    let size = meta.size;
    assert_eq!(size, data.len() as u64);
    let fd = file.as_fd();
    assert_eq!(prefetch(fd, 0, size), Ok(()));
    assert_eq!(prefetch(fd, 4096, 300_000), Ok(()));
    // Past end of file: cut short, not an error.
    assert_eq!(prefetch(fd, size - 10, 1 << 20), Ok(()));
    assert_eq!(prefetch(fd, size + 1, 100), Ok(()));
    assert_eq!(prefetch(fd, 0, u64::MAX), Ok(()));
    assert_eq!(prefetch(fd, u64::MAX, u64::MAX), Ok(()));
    assert_eq!(prefetch(fd, 17, 0), Ok(()));
    // Prefetch does not move the file offset.
    let mut f = File::from(file);
    let mut first = [0u8; 4];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, [0, 1, 2, 3]);
}

#[test]
fn prefetch_errors() {
    let t = Tree::new();
    let dir = File::open(t.root()).unwrap();
    assert_eq!(
        prefetch(dir.as_fd(), 0, 10),
        Err(FsError::Io {
            errno: libc::EISDIR
        })
    );
    let mut fds = [0; 2];
    // SAFETY: valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded; we own both ends.
    let (rd, _wr) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    assert_eq!(
        prefetch(rd.as_fd(), 0, 10),
        Err(FsError::Io {
            errno: libc::ESPIPE
        })
    );
}
