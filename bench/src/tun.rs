//! TUN devices, for the round-trip harness's userspace delay line
//! (`warmtls-bench rtt`): IP packets a network namespace routes to the device
//! are read from its file, and packets written to the file arrive in that
//! namespace as if received from a wire. Nothing in the endpoint uses this.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

/// Create the TUN device `name` (IFF_TUN | IFF_NO_PI: bare IP packets, no
/// header) in the calling thread's network namespace. The device lives as long
/// as the returned file; configure it with `ip` afterwards.
pub fn create(name: &str) -> std::io::Result<File> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name (1-15 bytes)"),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?;
    // SAFETY: ifreq is a C struct of integers and a union of plain data, valid
    // when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and may write back the name into) an ifreq; `req`
    // is a live, NUL-terminated ifreq on our stack and `file` is /dev/net/tun.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("creating TUN device {name}: {e}"),
        ));
    }
    Ok(file)
}
