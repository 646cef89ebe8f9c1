//! Listening sockets: one SO_REUSEPORT listener per worker, so the kernel spreads
//! connections across cores with no shared accept queue; or sockets made by
//! someone else (systemd, the process we took over from), set up the same way;
//! and taking ownership of the descriptors accept hands back (the only `unsafe`
//! here: owning an fd).
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr,
};

/// Bind a listener on `addr` with SO_REUSEPORT (and SO_REUSEADDR, so a restart
/// does not wait out TIME_WAIT), TCP_NODELAY (a device's records go out at
/// once) and, when `fastopen_queue` > 0, TCP Fast Open (a device holding a TFO
/// cookie sends its ClientHello in the SYN and saves a round trip).
pub fn bind(addr: SocketAddr, backlog: i32, fastopen_queue: u32) -> std::io::Result<OwnedFd> {
    let fd = tcp_socket(addr)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    // Accepted sockets inherit TCP_NODELAY on Linux: no setsockopt per connection.
    socket::setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    if fastopen_queue > 0 {
        super::sockopt::set_fastopen_queue(&fd, fastopen_queue)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(
        &fd,
        socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(fd)
}

/// Set up a listening socket we did not bind (from systemd or a predecessor)
/// the way [`bind`] would: TCP_NODELAY for accepted sockets, this
/// configuration's TCP Fast Open queue (0 turns it off). Its queue of pending
/// connections and every other option set on it are kept.
pub fn adopt(fd: &OwnedFd, fastopen_queue: u32) -> std::io::Result<()> {
    socket::setsockopt(fd, sockopt::TcpNoDelay, &true)?;
    let had = super::sockopt::fastopen_queue(fd).unwrap_or(0);
    if fastopen_queue > 0 || had > 0 {
        super::sockopt::set_fastopen_queue(fd, fastopen_queue)?;
    }
    Ok(())
}

/// Whether some other socket already listens on `addr`: bind a plain socket
/// (no SO_REUSEPORT) there and drop it. SO_REUSEPORT lets every process of the
/// same user join a port's group, and the kernel would then split devices
/// between two unrelated endpoints; this is how a second one notices.
/// `Err(AddrInUse)` means taken; port 0 is never taken.
pub fn probe_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let fd = tcp_socket(addr)?;
    // Connections of an earlier process in TIME_WAIT or still draining do not
    // count: only a listener does.
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(())
}

/// A non-blocking, close-on-exec TCP socket of `addr`'s family.
pub fn tcp_socket(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    Ok(socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?)
}

/// The address a socket is bound to (to learn the port after binding port 0).
pub fn local_addr(fd: &OwnedFd) -> std::io::Result<SocketAddr> {
    let a: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(v4) = a.as_sockaddr_in() {
        return Ok(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Ok(SocketAddr::from(std::net::SocketAddrV6::from(*v6)));
    }
    Err(std::io::Error::other("listener has no IP address"))
}

/// Accept one connection from a non-blocking listener: a non-blocking,
/// close-on-exec socket (TCP_NODELAY is inherited from the listener).
/// `WouldBlock` when none is waiting.
pub fn accept(listener: &impl AsFd) -> std::io::Result<OwnedFd> {
    let fd = socket::accept4(
        listener.as_fd().as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    Ok(own_accepted(fd))
}

/// Own the descriptor a successful accept returned (accept4, or an io_uring
/// accept completion), or an io_uring socket completion.
pub fn own_accepted(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful accept: it is open and
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A unix socket address as a `SockaddrStorage` (what a connect takes).
pub fn unix_storage(u: &UnixAddr) -> SockaddrStorage {
    // SAFETY: `u` is a valid sockaddr_un of length `u.len()`; SockaddrStorage
    // copies it.
    unsafe { SockaddrStorage::from_raw(u.as_ptr().cast(), Some(u.len())) }
        .expect("a unix address fits a sockaddr_storage")
}
