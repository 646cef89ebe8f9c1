//! Descriptors that cross a process boundary: sockets passed over a unix socket
//! with SCM_RIGHTS (the hand-over to a successor process), and descriptors a
//! process finds already open at start (systemd's LISTEN_FDS, the hand-over
//! channel its predecessor left it).
//!
//! The only `unsafe` is adopting a descriptor number the kernel or the parent
//! process handed us as an [`OwnedFd`]; everything else goes through nix. Every
//! adopted descriptor is made close-on-exec at once, so it never leaks into a
//! process we start in turn.
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{
    recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockType,
};

/// The most descriptors one message carries (the control socket plus one
/// listener per worker of the largest machine we expect, with room to spare).
pub const MAX_FDS: usize = 253;

/// Send `msg` with `fds` attached (SCM_RIGHTS). The receiver gets its own
/// descriptors for the same open sockets; ours stay open.
pub fn send_with_fds(sock: &impl AsFd, msg: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    assert!(
        fds.len() <= MAX_FDS,
        "{} descriptors in one message",
        fds.len()
    );
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &[IoSlice::new(msg)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != msg.len() {
        return Err(std::io::Error::other(format!(
            "sent {sent} of {} bytes of a hand-over message",
            msg.len()
        )));
    }
    Ok(())
}

/// Receive one message into `buf` and the descriptors attached to it (made
/// close-on-exec by the kernel). Returns the message length (0: the peer is
/// gone). A message whose descriptors did not all fit is an error, and the ones
/// that did arrive are closed.
pub fn recv_with_fds(
    sock: &impl AsFd,
    buf: &mut [u8],
    flags: MsgFlags,
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this
                // message (SCM_RIGHTS); nothing else knows the number, so we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) || msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(std::io::Error::other(
            "a hand-over message was truncated (too many descriptors or too long)",
        ));
    }
    Ok((msg.bytes, fds))
}

/// Adopt descriptor `fd`, left open for us by the process that started us, and
/// make it close-on-exec. Fails if it is not open.
///
/// The caller must be the only owner of `fd` by the protocol that named it
/// (systemd's LISTEN_FDS, our own hand-over variable), and call this once.
pub fn adopt_inherited(fd: RawFd) -> std::io::Result<OwnedFd> {
    if fd < 3 {
        return Err(std::io::Error::other(format!(
            "descriptor {fd} is stdin, stdout or stderr, not an inherited socket"
        )));
    }
    // SAFETY: F_GETFD only reads the descriptor table entry; an fd that is not
    // open gives EBADF and nothing else happens.
    let probe = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(probe, FcntlArg::F_GETFD)
        .map_err(|e| std::io::Error::other(format!("inherited descriptor {fd}: {e}")))?;
    // SAFETY: `fd` is open (checked above) and, by the caller's protocol, ours
    // alone: no other OwnedFd or File in this process holds it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(owned)
}

/// Whether `fd` is a listening stream socket (what LISTEN_FDS and a hand-over
/// must give us).
pub fn is_listening_stream(fd: &impl AsFd) -> bool {
    let fd = fd.as_fd();
    matches!(
        nix::sys::socket::getsockopt(&fd, sockopt::SockType),
        Ok(SockType::Stream)
    ) && nix::sys::socket::getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag};
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    /// The very same listening socket arrives (same inode), with its options
    /// and with the connections already queued on it: nothing is reset.
    fn passes_listener_with_queue_and_options(addr: SocketAddr) {
        let l = crate::runtime::listener::bind(addr, 64, 17).unwrap();
        let bound = crate::runtime::listener::local_addr(&l).unwrap();
        let mut queued = TcpStream::connect(bound).unwrap();
        let (a, b) = pair();
        send_with_fds(&a, b"listeners", &[l.as_fd()]).unwrap();
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let before = ino(&l);
        drop(l); // the sender closes its copy: the socket lives on in the receiver
        let mut buf = [0u8; 64];
        let (n, mut fds) = recv_with_fds(&b, &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..n], b"listeners");
        assert_eq!(fds.len(), 1);
        let got = fds.pop().unwrap();
        assert_eq!(ino(&got), before, "the same socket, not a new one");
        assert!(is_listening_stream(&got));
        assert_eq!(
            fcntl(&got, FcntlArg::F_GETFD).unwrap() & libc::FD_CLOEXEC,
            libc::FD_CLOEXEC
        );
        assert_eq!(crate::runtime::sockopt::fastopen_queue(&got).unwrap(), 17);
        // The connection queued before the transfer is accepted from the copy.
        let (conn, _) = std::net::TcpListener::from(got).accept().unwrap();
        drop(conn);
        let mut rest = Vec::new();
        assert_eq!(
            queued.read_to_end(&mut rest).unwrap(),
            0,
            "a clean EOF, not a reset"
        );
    }

    #[test]
    fn passes_an_ipv4_listener_with_its_queue_and_options() {
        passes_listener_with_queue_and_options("127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn passes_an_ipv6_listener_with_its_queue_and_options() {
        assert!(
            std::net::TcpListener::bind("[::1]:0").is_ok(),
            "this test needs IPv6 on loopback (sysctl net.ipv6.conf.lo.disable_ipv6 = 0)"
        );
        passes_listener_with_queue_and_options("[::1]:0".parse().unwrap());
    }

    #[test]
    fn a_message_without_descriptors_and_a_closed_peer() {
        let (a, b) = pair();
        send_with_fds(&a, b"hello", &[]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"hello"[..], 0));
        drop(a);
        let (n, _) = recv_with_fds(&b, &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(n, 0, "EOF");
    }

    #[test]
    fn adopting_a_closed_or_standard_descriptor_fails() {
        assert!(adopt_inherited(1).is_err());
        // (Not a descriptor just closed: another test's thread could reuse it.)
        assert!(adopt_inherited(1 << 20).is_err());
    }
}
