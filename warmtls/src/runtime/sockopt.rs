//! TCP socket options that nix does not wrap: the listener's TCP Fast Open queue
//! and whether a connection's SYN carried data (TCP_INFO). Used by the endpoint's
//! listener and by the fleet simulator's devices.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

/// Where the kernel says which TCP Fast Open roles are allowed in this network
/// namespace: bit 0x1 clients, bit 0x2 servers.
pub const FASTOPEN_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_fastopen";

/// Accept data in SYNs on this listener, with up to `queue` pending Fast Open
/// requests (TCP_FASTOPEN). The kernel only uses it while bit 0x2 of
/// `net.ipv4.tcp_fastopen` is set ([`server_fastopen_allowed`]).
pub fn set_fastopen_queue(fd: &impl AsFd, queue: u32) -> std::io::Result<()> {
    let qlen = libc::c_int::try_from(queue).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is a live socket borrowed for the call; the option value
    // is a c_int on our stack and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&qlen as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The TCP Fast Open queue length set on a listener (0: off), as the kernel
/// holds it: what a socket handed to a successor process keeps.
pub fn fastopen_queue(fd: &impl AsFd) -> std::io::Result<u32> {
    let mut qlen: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; the kernel writes at
    // most `len` bytes into `qlen`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&mut qlen as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u32::try_from(qlen).unwrap_or(0))
}

/// Whether this connection's SYN carried data that the server acknowledged (a
/// TCP Fast Open connection: TCP_INFO `tcpi_options & TCPI_OPT_SYN_DATA`).
pub fn syn_data_acked(fd: &impl AsFd) -> std::io::Result<bool> {
    /// linux/tcp.h: "data in SYN was acked".
    const TCPI_OPT_SYN_DATA: u8 = 32;
    // SAFETY: tcp_info is plain integers, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is a live socket; the kernel writes at most `len` bytes
    // into `info`, which is that large, and stores the length it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // tcpi_options is the sixth byte: any kernel's answer covers it.
    if (len as usize) < 6 {
        return Err(std::io::Error::other("TCP_INFO answer too short"));
    }
    Ok(info.tcpi_options & TCPI_OPT_SYN_DATA != 0)
}

/// Whether `net.ipv4.tcp_fastopen` in this network namespace lets servers accept
/// data in SYNs (bit 0x2), or `None` if it cannot be read.
pub fn server_fastopen_allowed() -> Option<bool> {
    let text = std::fs::read_to_string(FASTOPEN_SYSCTL).ok()?;
    let v: u32 = text.trim().parse().ok()?;
    Some(v & 0x2 != 0)
}
