//! Writes `fuzz/seeds/helper_protocol/*`: one frame per message kind, made by
//! `codec::encode` of real messages (so the fuzzer starts from valid frames).
use std::path::Path;

use flash_core::codec::encode;
use flash_core::protocol::{FileMeta, FromHelper, FsError, ToHelper, PROTOCOL_VERSION};

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../seeds/helper_protocol");
    std::fs::create_dir_all(&dir)?;
    let meta = FileMeta {
        size: 5,
        mtime_secs: 1_700_000_000,
        mtime_nsec: 123_456_789,
        ino: 4242,
        dev: 2049,
        uid: 1000,
        gid: 1000,
        mode: 0o100644,
    };
    let to: [(&str, ToHelper); 3] = [
        (
            "to_resolve",
            ToHelper::Resolve {
                id: 1,
                path: "docs/index.html".into(),
                ends_with_slash: false,
            },
        ),
        (
            "to_resolve_root",
            ToHelper::Resolve {
                id: u64::MAX,
                path: String::new(),
                ends_with_slash: true,
            },
        ),
        (
            "to_prefetch",
            ToHelper::Prefetch {
                id: 7,
                offset: 1 << 20,
                len: 65536,
            },
        ),
    ];
    let from: [(&str, FromHelper); 7] = [
        (
            "from_hello",
            FromHelper::Hello {
                version: PROTOCOL_VERSION,
                pid: 31337,
            },
        ),
        (
            "from_resolved_inline",
            FromHelper::Resolved {
                id: 1,
                meta,
                index: None,
                contents: Some(b"hello".to_vec()),
                watch: Some(3),
            },
        ),
        (
            "from_resolved_fd",
            FromHelper::Resolved {
                id: 2,
                meta: FileMeta {
                    size: 1 << 30,
                    mtime_secs: -1,
                    ..meta
                },
                index: Some(1),
                contents: None,
                watch: None,
            },
        ),
        ("from_redirect", FromHelper::Redirect { id: 3 }),
        ("from_prefetched", FromHelper::Prefetched { id: 4 }),
        (
            "from_failed_forbidden",
            FromHelper::Failed {
                id: 5,
                error: FsError::Forbidden,
            },
        ),
        (
            "from_failed_io",
            FromHelper::Failed {
                id: 6,
                error: FsError::Io { errno: 5 },
            },
        ),
    ];
    let write = |name: &str, frame: Vec<u8>| std::fs::write(dir.join(name), frame);
    for (name, msg) in to {
        let mut frame = Vec::new();
        encode(&msg, &mut frame);
        write(name, frame)?;
    }
    for (name, msg) in from {
        let mut frame = Vec::new();
        encode(&msg, &mut frame);
        write(name, frame)?;
    }
    Ok(())
}
