//! Listening sockets: one `SO_REUSEPORT` group per address, a socket per
//! worker, with a backlog the server chooses (`TcpListener::bind` listens
//! with 128, which a burst of connections overflows long before the event
//! loop gets to them).
//!
//! IPv6 listeners take IPv6 only (`IPV6_V6ONLY`), as nginx's do: otherwise,
//! with the usual `net.ipv6.bindv6only = 0`, `[::]:80` also claims port 80
//! of every IPv4 address and `--listen 0.0.0.0:80 --listen [::]:80` fails
//! with "address in use".

use std::io;
use std::net::{SocketAddr, TcpListener};

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

/// Binds `count` sockets to `addr` as one `SO_REUSEPORT` group, each
/// listening with `backlog` (the kernel caps it at somaxconn). The kernel
/// spreads new connections over the group by a hash of their addresses, so
/// each worker, accepting from its own sockets, gets its share. (One socket
/// shared by all workers, even with `EPOLLEXCLUSIVE`, hands a burst of
/// connections to whichever worker wakes first: 50 keep-alive clients all
/// landed on one of two workers, leaving the other core idle.) Port 0 picks a
/// free port for the first; the others join it. `count` may grow later with
/// [`join`].
pub fn bind_group(addr: SocketAddr, backlog: u32, count: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        ensure_free(addr)?;
    }
    let first = bind_one(addr, backlog)?;
    let bound = first.local_addr()?;
    let mut group = vec![first];
    group.extend(join(bound, backlog, count.saturating_sub(1))?);
    Ok(group)
}

/// `count` more sockets for the group listening on `bound`.
pub fn join(bound: SocketAddr, backlog: u32, count: usize) -> io::Result<Vec<TcpListener>> {
    (0..count).map(|_| bind_one(bound, backlog)).collect()
}

/// Has the kernel give each new connection of the group that `socket`
/// belongs to the group's socket number `cpu % count`, `cpu` being the CPU
/// that handles the connection's first packet (the NIC queue's, or on
/// loopback the client's), instead of a hash of its addresses. With worker
/// `i` pinned to a CPU `c` where `c % count == i`, a connection is then
/// served on the CPU where its packets arrive, never handed across CPUs
/// (the cost every server paid in the two-worker benchmark). Sockets are
/// numbered in the order they joined the group; an out-of-range number
/// falls back to the hash.
pub fn steer_by_cpu(socket: &TcpListener, count: usize) -> io::Result<()> {
    /// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; not in libc's
    /// Linux module).
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    // Classic BPF: A = cpu; A %= count; return A.
    let ld_cpu = libc::sock_filter {
        code: 0x20, // BPF_LD | BPF_W | BPF_ABS
        jt: 0,
        jf: 0,
        k: (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    };
    let modulo = libc::sock_filter {
        code: 0x94, // BPF_ALU | BPF_MOD | BPF_K
        jt: 0,
        jf: 0,
        k: u32::try_from(count.max(1)).unwrap_or(u32::MAX),
    };
    let ret_a = libc::sock_filter {
        code: 0x16, // BPF_RET | BPF_A
        jt: 0,
        jf: 0,
        k: 0,
    };
    let mut program = [ld_cpu, modulo, ret_a];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // The kernel copies the program (`fprog` points at it, alive meanwhile).
    set_socket_option(socket, SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// Takes `steer_by_cpu`'s program off the group of `socket` (none
/// attached is fine: the kernel then says so, and nothing changes).
pub fn stop_steering(socket: &TcpListener) {
    /// `SO_DETACH_REUSEPORT_BPF` (Linux 5.8+; asm-generic/socket.h).
    const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;
    // It takes no value (an int is passed); failing changes nothing.
    let _ = set_socket_option(socket, SO_DETACH_REUSEPORT_BPF, &0 as &libc::c_int);
}

/// `setsockopt(socket, SOL_SOCKET, name, value)` with a value of type `T`,
/// for the options socket2 has no call for.
fn set_socket_option<T>(socket: &TcpListener, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and its exact size is passed; the
    // descriptor is owned by `socket`, alive for the call. The caller
    // passes the type the option `name` expects.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fails with "address in use" if anything listens on `addr`: a group
/// socket would otherwise join another server's group (of the same user)
/// and share its connections, where a second server must fail to start.
/// A socket without `SO_REUSEPORT` cannot bind where one listens.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into())
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std's TcpListener::bind: a restarted server can bind again at once.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second server on a port in use fails, as it did before groups.
    #[test]
    fn a_busy_port_is_refused_not_shared() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 16, 2).unwrap();
        let addr = group[0].local_addr().unwrap();
        let second = bind_group(addr, 16, 2).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::AddrInUse);
        // Joining the own group is what `join` is for.
        assert_eq!(join(addr, 16, 1).unwrap().len(), 1);
    }

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
                let v6 = bind_one("[::]:0".parse().unwrap(), 16).unwrap();
                let port = v6.local_addr().unwrap().port();
                let v4 = bind_one(SocketAddr::from(([0, 0, 0, 0], port)), 16).ok()?;
                Some((v4, port))
            })
            .expect("[::] took the IPv4 port too");
        // And the other way round, with the port the IPv4 listener holds.
        let v6 = bind_one(SocketAddr::from(([0u16; 8], port)), 16).unwrap();
        assert_eq!(v6.local_addr().unwrap().port(), port);
        // Loopback connections of each family reach their own listener.
        let c4 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let c6 = std::net::TcpStream::connect(("::1", port)).unwrap();
        assert_eq!(v4.accept().unwrap().1.ip(), c4.local_addr().unwrap().ip());
        assert_eq!(v6.accept().unwrap().1.ip(), c6.local_addr().unwrap().ip());
    }
}
