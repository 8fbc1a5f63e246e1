//! Process-wide setup the engine must not do itself: privileges, descriptor
//! limits, logging.

use std::ffi::CString;
use std::io;

use anyhow::{anyhow, bail, Context, Result};

/// A user to run as, looked up before anything is done on its behalf.
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Finds user `name` in the password database.
pub fn lookup_user(name: &str) -> Result<User> {
    let c_name = CString::new(name).context("user name contains NUL")?;
    let mut entry: libc::passwd = unsafe_zeroed_passwd();
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all pointers refer to live, writable storage of the sizes given.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        bail!("no such user: {name}");
    }
    Ok(User {
        name: name.to_owned(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// Switches to `user` (and its primary group) for good, as nginx's `user`
/// directive does: after binding, before any helper is spawned.
pub fn drop_privileges(user: &User) -> Result<()> {
    let (uid, gid) = (user.uid, user.gid);
    // SAFETY: plain system calls on integers and a one-element array.
    unsafe {
        if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(anyhow!(io::Error::last_os_error()))
                .with_context(|| format!("cannot switch to user {}", user.name));
        }
    }
    Ok(())
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is a plain C struct of integers and pointers, for which
    // all-zero bytes are a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

/// Raises the soft limit on open descriptors to the hard limit: each
/// connection is a descriptor, and 1024 is far too few for a server.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill and then pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Logs to stderr as `flash-server: LEVEL: message`.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "flash-server: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }
    fn flush(&self) {}
}

pub fn init_logging(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
