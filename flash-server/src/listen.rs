//! Listening sockets: one `SO_REUSEPORT` group per address, a socket per
//! worker, with a backlog the server chooses (`TcpListener::bind` listens
//! with 128, which a burst of connections overflows long before the event
//! loop gets to them).

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

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std's TcpListener::bind: a restarted server can bind again at once.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}
