//! Self-test of the slow-disk fixture (`flash-slowfs` + `integration_tests::slowfs`): the
//! mount must pass content, metadata and symlinks through, count reads that reach it, keep
//! the page cache, and disappear when the guard drops. Asserts on counts and content only.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use integration_tests::harness::require_root;
use integration_tests::slowfs::{drop_page_cache, is_mounted, SlowFs};

/// Small enough to keep the tests quick, large enough to show it is applied per read.
const DELAY: Duration = Duration::from_millis(20);

/// The unprivileged user flash drops to in production tests.
const NOBODY: u32 = 65534;

/// A source tree in a fresh temp dir, removed on drop (it is never a mount itself).
struct SourceTree {
    root: PathBuf,
}

impl SourceTree {
    /// `big.bin` (several FUSE reads), `small.txt`, `sub/nested.txt`, `secret.txt` (0600),
    /// and `link.txt -> small.txt`.
    fn new() -> SourceTree {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "slowfs-selftest-src-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root).unwrap();
        // Traversable by the unprivileged user whatever the umask.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("big.bin"), big_content()).unwrap();
        write_with_mode(&root.join("small.txt"), b"small file\n", 0o644);
        fs::create_dir(root.join("sub")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        write_with_mode(&root.join("sub/nested.txt"), b"nested file\n", 0o640);
        write_with_mode(&root.join("secret.txt"), b"root only\n", 0o600);
        symlink("small.txt", root.join("link.txt")).unwrap();
        SourceTree { root }
    }
}

impl Drop for SourceTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn write_with_mode(path: &Path, content: &[u8], mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// 600 KiB of non-repeating-looking bytes, so offsets mix-ups would show.
fn big_content() -> Vec<u8> {
    (0..600 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn mount(tree: &SourceTree) -> SlowFs {
    SlowFs::mount(&tree.root, DELAY).expect("flash-slowfs must mount (FUSE is required)")
}

#[test]
fn content_matches_source_and_second_read_hits_page_cache() {
    if !require_root("mounts FUSE") {
        return;
    }
    let tree = SourceTree::new();
    let slow = mount(&tree);
    let big = slow.mountpoint().join("big.bin");
    assert_eq!(slow.total_reads(), 0, "nothing read yet");

    assert_eq!(fs::read(&big).unwrap(), big_content());
    let cold_reads = slow.reads_of("big.bin");
    assert!(cold_reads >= 1, "a cold read must reach the filesystem");
    assert_eq!(slow.total_reads(), cold_reads, "only big.bin was read");

    assert_eq!(fs::read(&big).unwrap(), big_content());
    assert_eq!(
        slow.reads_of("big.bin"),
        cold_reads,
        "a second read must be served from the page cache"
    );
}

#[test]
fn reads_of_different_files_all_reach_the_filesystem() {
    if !require_root("mounts FUSE") {
        return;
    }
    let tree = SourceTree::new();
    let slow = mount(&tree);
    let small = slow.mountpoint().join("small.txt");
    let nested = slow.mountpoint().join("sub/nested.txt");

    // Concurrently, as the server's helpers would.
    let (small_content, nested_content) = thread::scope(|scope| {
        let small_reader = scope.spawn(|| fs::read(&small).unwrap());
        let nested_reader = scope.spawn(|| fs::read(&nested).unwrap());
        (small_reader.join().unwrap(), nested_reader.join().unwrap())
    });

    assert_eq!(small_content, b"small file\n");
    assert_eq!(nested_content, b"nested file\n");
    assert!(slow.reads_of("small.txt") >= 1);
    assert!(slow.reads_of("sub/nested.txt") >= 1);
    assert_eq!(slow.reads_of("big.bin"), 0, "unread files are not logged");
}

#[test]
fn symlinks_listing_and_modes_pass_through() {
    if !require_root("mounts FUSE") {
        return;
    }
    let tree = SourceTree::new();
    let slow = mount(&tree);
    let mnt = slow.mountpoint();

    let link = mnt.join("link.txt");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("small.txt"));
    assert_eq!(fs::read(&link).unwrap(), b"small file\n");
    assert!(
        slow.reads_of("small.txt") >= 1,
        "reads through a link are reads of its target"
    );

    let mut names: Vec<_> = fs::read_dir(mnt)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["big.bin", "link.txt", "secret.txt", "small.txt", "sub"]
    );

    for rel_path in ["small.txt", "sub/nested.txt", "secret.txt", "sub"] {
        let source = fs::metadata(tree.root.join(rel_path)).unwrap();
        let mounted = fs::metadata(mnt.join(rel_path)).unwrap();
        assert_eq!(
            mounted.permissions().mode(),
            source.permissions().mode(),
            "{rel_path}"
        );
        assert_eq!(mounted.len(), source.len(), "{rel_path}");
    }
    assert!(
        fs::write(mnt.join("small.txt"), b"x").is_err(),
        "mount is read-only"
    );
}

#[test]
fn unprivileged_user_reads_through_allow_other_and_modes_are_enforced() {
    if !require_root("mounts FUSE and reads as nobody") {
        return;
    }
    let tree = SourceTree::new();
    let slow = mount(&tree);

    let cat_as_nobody = |rel_path: &str| {
        Command::new("cat")
            .arg(slow.mountpoint().join(rel_path))
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run cat as nobody")
    };
    let readable = cat_as_nobody("small.txt");
    assert!(readable.status.success(), "{readable:?}");
    assert_eq!(readable.stdout, b"small file\n");

    let denied = cat_as_nobody("secret.txt");
    assert!(!denied.status.success(), "0600 root file must be denied");
    assert_eq!(slow.reads_of("secret.txt"), 0);
}

#[test]
fn drop_page_cache_makes_the_next_read_reach_the_filesystem() {
    if !require_root("mounts FUSE") {
        return;
    }
    let tree = SourceTree::new();
    let slow = mount(&tree);
    let big = slow.mountpoint().join("big.bin");

    assert_eq!(fs::read(&big).unwrap(), big_content());
    let cold_reads = slow.reads_of("big.bin");
    drop_page_cache(&big).unwrap();
    assert_eq!(fs::read(&big).unwrap(), big_content());
    assert!(
        slow.reads_of("big.bin") > cold_reads,
        "posix_fadvise(DONTNEED) must evict FUSE pages"
    );
}

#[test]
fn mount_is_gone_after_the_guard_drops() {
    if !require_root("mounts FUSE") {
        return;
    }
    let tree = SourceTree::new();
    let slow = mount(&tree);
    let mountpoint = slow.mountpoint().to_path_buf();
    assert!(is_mounted(&mountpoint));
    assert_eq!(
        fs::read(mountpoint.join("small.txt")).unwrap(),
        b"small file\n"
    );

    drop(slow);

    assert!(!is_mounted(&mountpoint));
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mountpoint.to_str().unwrap()),
        "{mountpoint:?} still in /proc/self/mounts"
    );
    assert!(!mountpoint.exists(), "mountpoint directory is removed");
    assert!(
        tree.root.join("small.txt").exists(),
        "source files are untouched"
    );
}

#[test]
fn mount_failure_is_an_error_that_says_why() {
    let missing = std::env::temp_dir().join("slowfs-selftest-no-such-source");
    let error = match SlowFs::mount(&missing, DELAY) {
        Ok(_) => panic!("mounting a missing source must fail"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("could not mount") && error.contains("No such file"),
        "{error}"
    );
}

#[test]
fn a_hang_path_holds_its_reads_until_released() {
    if !require_root("mounts FUSE") {
        return;
    }
    let tree = SourceTree::new();
    let mut slow = SlowFs::mount_with_hangs(&tree.root, DELAY, &["small.txt"])
        .expect("flash-slowfs must mount (FUSE is required)");
    let small = slow.mountpoint().join("small.txt");
    let held = thread::spawn(move || fs::read(small).unwrap());
    assert!(
        integration_tests::harness::wait_until(Duration::from_secs(10), || {
            slow.reads_of("small.txt") >= 1
        }),
        "the read of small.txt never reached the filesystem"
    );
    // Other files pass meanwhile.
    assert_eq!(
        fs::read(slow.mountpoint().join("sub/nested.txt")).unwrap(),
        b"nested file\n"
    );
    assert!(!held.is_finished(), "the read of a hang path must be held");
    slow.release_hangs();
    assert_eq!(held.join().unwrap(), b"small file\n");
    // Later reads are not held.
    drop_page_cache(&slow.mountpoint().join("small.txt")).unwrap();
    assert_eq!(
        fs::read(slow.mountpoint().join("small.txt")).unwrap(),
        b"small file\n"
    );
}
