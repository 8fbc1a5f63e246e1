//! Listening sockets with a backlog the server chooses. `TcpListener::bind`
//! listens with a backlog of 128, which a burst of connections overflows
//! long before the event loop gets to them; Linux lets `listen` be called
//! again on a listening socket to change it.
//!
//! IPv6 listeners take IPv6 only (`IPV6_V6ONLY`), as nginx's do: otherwise,
//! with the usual `net.ipv6.bindv6only = 0`, `[::]:80` also claims port 80
//! of every IPv4 address and `--listen 0.0.0.0:80 --listen [::]:80` fails
//! with "address in use".

use std::io;
use std::net::{SocketAddr, SocketAddrV6, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Used when `net.core.somaxconn` cannot be read (the kernel's own default
/// since Linux 5.4).
pub const FALLBACK_BACKLOG: u32 = 4096;

/// The kernel's cap on listen backlogs (`net.core.somaxconn`), if readable.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Binds `addr` and listens with `backlog` (the kernel caps it at somaxconn).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let listener = match addr {
        SocketAddr::V4(_) => TcpListener::bind(addr)?,
        SocketAddr::V6(addr) => bind_v6_only(addr)?,
    };
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen takes a descriptor and an integer; the descriptor is
    // owned by `listener`, which is alive for the whole call.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Binds an IPv6 socket that accepts IPv6 connections only (not yet
/// listening: `bind` calls `listen` with the backlog).
fn bind_v6_only(addr: SocketAddrV6) -> io::Result<TcpListener> {
    // SAFETY: socket takes integers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SO_REUSEADDR as `TcpListener::bind` sets it: a restart need not wait
    // for the old connections' TIME_WAIT.
    set_flag(&socket, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    set_flag(&socket, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    let raw = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: addr.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: addr.ip().octets(),
        },
        sin6_scope_id: addr.scope_id(),
    };
    // SAFETY: `raw` is a valid sockaddr_in6, alive for the call, and its
    // exact size is passed.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::from_ref(&raw).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

/// Sets an integer socket option to 1.
fn set_flag(socket: &OwnedFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value is a live c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same port on 0.0.0.0 and [::], in either order, as the packaged
    /// configuration listens; each takes only its own family.
    #[test]
    fn ipv4_and_ipv6_wildcards_share_a_port() {
        if !std::path::Path::new("/proc/net/if_inet6").exists() {
            eprintln!("skipped ipv4_and_ipv6_wildcards_share_a_port: no IPv6 here");
            return;
        }
        // A free IPv6 port may be taken for IPv4 by another process: a few
        // tries (a dual-stack [::] fails every one).
        let (v4, port) = (0..5)
            .find_map(|_| {
                let v6 = bind("[::]:0".parse().unwrap(), 16).unwrap();
                let port = v6.local_addr().unwrap().port();
                let v4 = bind(SocketAddr::from(([0, 0, 0, 0], port)), 16).ok()?;
                Some((v4, port))
            })
            .expect("[::] took the IPv4 port too");
        // And the other way round, with the port the IPv4 listener holds.
        let v6 = bind(SocketAddr::from(([0u16; 8], port)), 16).unwrap();
        assert_eq!(v6.local_addr().unwrap().port(), port);
        // Loopback connections of each family reach their own listener.
        let c4 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let c6 = std::net::TcpStream::connect(("::1", port)).unwrap();
        assert_eq!(v4.accept().unwrap().1.ip(), c4.local_addr().unwrap().ip());
        assert_eq!(v6.accept().unwrap().1.ip(), c6.local_addr().unwrap().ip());
    }
}
