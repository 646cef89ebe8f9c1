//! One device connection, start to finish, on the calling thread: TCP connect,
//! handshake (resuming if the device holds a session), the request (0-RTT when
//! asked and allowed), the response until the server's close_notify and EOF,
//! close.
//!
//! Bytes are counted at the socket, so they are what the server reads and
//! writes. The device answers the server's close_notify with its own and closes
//! TCP at once (OpenSSL servers forget sessions of connections not shut down
//! cleanly; waiting for the server's FIN would stall on servers that wait for
//! the client to close first).
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

use super::devices::{CurrentDevice, DeviceId};

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TCP connect timeout.
    pub connect: Duration,
    /// The whole connection, connect to close.
    pub total: Duration,
    /// After the server's close_notify, how long to wait for its EOF (zero: close
    /// at once).
    pub linger: Duration,
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The target refused the TCP connection.
    ConnectRefused,
    /// TCP connect did not finish in time.
    ConnectTimeout,
    /// TCP connect failed otherwise.
    Connect,
    /// The connection ran past its time limit.
    Timeout,
    /// The server reset the connection.
    Reset,
    /// The server closed before the handshake finished or before any response.
    Eof,
    /// The server sent a TLS alert.
    TlsAlert,
    /// The server's certificate was refused.
    TlsCertificate,
    /// Any other TLS error.
    Tls,
    /// Any other socket error.
    Io,
}

impl Failure {
    /// The reason as a JSON key.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::ConnectRefused => "connect_refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Eof => "eof_before_response",
            Failure::TlsAlert => "tls_alert",
            Failure::TlsCertificate => "tls_certificate",
            Failure::Tls => "tls_error",
            Failure::Io => "io_error",
        }
    }

    fn from_io(e: &io::Error) -> Failure {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Failure::from_tls(tls);
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Failure::Reset,
            io::ErrorKind::UnexpectedEof => Failure::Eof,
            _ => Failure::Io,
        }
    }

    fn from_tls(e: &rustls::Error) -> Failure {
        match e {
            rustls::Error::AlertReceived(_) => Failure::TlsAlert,
            rustls::Error::InvalidCertificate(_) => Failure::TlsCertificate,
            _ => Failure::Tls,
        }
    }
}

/// What one connection did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// `Ok(resumed)` or why it failed.
    pub result: Result<Handshake, Failure>,
    /// Bytes the device wrote to the socket.
    pub bytes_c2s: u64,
    /// Bytes the device read from the socket.
    pub bytes_s2c: u64,
    /// Application bytes in those: the request sent, the response received.
    pub payload_c2s: u64,
    pub payload_s2c: u64,
    /// Connect to close.
    pub elapsed: Duration,
    /// CPU time (user + system) the device's thread spent on the connection:
    /// what a device's processor would pay, on this machine's cores.
    pub client_cpu: Duration,
    /// Until TCP connect returned (zero-ish with TCP Fast Open: the SYN leaves
    /// with the first write).
    pub connected: Option<Duration>,
    /// Until the first byte of the response was decrypted.
    pub first_byte: Option<Duration>,
    /// The SYN carried data and the server took it (TCP Fast Open).
    pub syn_data: bool,
}

impl Outcome {
    /// Wire bytes (TCP payload, both ways) that were not application data:
    /// records' headers and tags, the handshake, alerts and close_notify.
    pub fn tls_overhead(&self) -> u64 {
        (self.bytes_c2s + self.bytes_s2c).saturating_sub(self.payload_c2s + self.payload_s2c)
    }
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// A completed connection's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// The device resumed its session.
    pub resumed: bool,
    /// The request went as 0-RTT and the server accepted it.
    pub early_data_accepted: bool,
    /// The server closed without close_notify (after a response).
    pub unclean_close: bool,
}

/// A `TcpStream` that counts the bytes through it.
struct Counting {
    sock: TcpStream,
    read: u64,
    written: u64,
    /// Response plaintext received (counted by the caller, after decryption).
    response: u64,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    // rustls hands its queued records over as one vector: one syscall, and with
    // TCP Fast Open the ClientHello and any 0-RTT data leave together in the SYN.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.sock.write_vectored(bufs)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// One device connection to `addr`; with `tfo`, TCP Fast Open
/// (TCP_FASTOPEN_CONNECT: the ClientHello rides in the SYN once the kernel holds
/// a cookie for the server).
#[allow(clippy::too_many_arguments)]
pub fn connect(
    device: DeviceId,
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &ServerName<'static>,
    request: &[u8],
    early_data: usize,
    limits: Limits,
    tfo: bool,
) -> Outcome {
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let sock = if tfo {
        connect_fastopen(addr, limits.connect)
    } else {
        TcpStream::connect_timeout(&addr, limits.connect)
    };
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            let why = match e.kind() {
                io::ErrorKind::ConnectionRefused => Failure::ConnectRefused,
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::ConnectTimeout,
                _ => Failure::Connect,
            };
            return Outcome {
                result: Err(why),
                bytes_c2s: 0,
                bytes_s2c: 0,
                payload_c2s: 0,
                payload_s2c: 0,
                elapsed: start.elapsed(),
                client_cpu: thread_cpu().saturating_sub(cpu_start),
                connected: None,
                first_byte: None,
                syn_data: false,
            };
        }
    };
    let connected = start.elapsed();
    let mut io = Counting {
        sock,
        read: 0,
        written: 0,
        response: 0,
    };
    let _device = CurrentDevice::enter(device);
    let mut first_byte = None;
    let result = drive(
        &mut io,
        config,
        server_name,
        request,
        early_data,
        start,
        limits,
        &mut first_byte,
    );
    let elapsed = start.elapsed();
    let syn_data = tfo && warmtls::runtime::sockopt::syn_data_acked(&io.sock).unwrap_or(false);
    Outcome {
        payload_c2s: if result.is_ok() {
            request.len() as u64
        } else {
            0
        },
        payload_s2c: io.response,
        result,
        bytes_c2s: io.written,
        bytes_s2c: io.read,
        elapsed,
        client_cpu: thread_cpu().saturating_sub(cpu_start),
        connected: Some(connected),
        first_byte,
        syn_data,
    }
}

/// A TCP connection with TCP_FASTOPEN_CONNECT set before connect: with a cookie
/// cached, connect returns at once and the SYN leaves with the first write;
/// without one, the SYN asks for a cookie and this waits for the handshake.
fn connect_fastopen(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{self, sockopt, SockaddrStorage};
    let fd = warmtls::runtime::listener::tcp_socket(addr)?;
    socket::setsockopt(&fd, sockopt::TcpFastOpenConnect, &true)?;
    match socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    ) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => {
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                PollFlags::POLLOUT,
            )];
            if poll(&mut fds, PollTimeout::from(ms))? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TCP connect timed out",
                ));
            }
            let err = socket::getsockopt(&fd, sockopt::SocketError)?;
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
        }
        Err(e) => return Err(e.into()),
    }
    let sock = TcpStream::from(fd);
    sock.set_nonblocking(false)?;
    Ok(sock)
}

#[allow(clippy::too_many_arguments)]
fn drive(
    io: &mut Counting,
    config: &Arc<ClientConfig>,
    server_name: &ServerName<'static>,
    request: &[u8],
    early_data: usize,
    start: Instant,
    limits: Limits,
    first_byte: &mut Option<Duration>,
) -> Result<Handshake, Failure> {
    let deadline = start + limits.total;
    // One socket timeout for every read and write (each bounded by the whole
    // connection's limit), and the deadline checked between them: a stalled
    // server costs at most twice the limit, with two syscalls per connection.
    let in_time = || -> Result<(), Failure> {
        if Instant::now() >= deadline {
            return Err(Failure::Timeout);
        }
        Ok(())
    };
    io.sock
        .set_read_timeout(Some(limits.total))
        .and_then(|_| io.sock.set_write_timeout(Some(limits.total)))
        .map_err(|e| Failure::from_io(&e))?;
    in_time()?;
    let _ = io.sock.set_nodelay(true);
    let mut conn = ClientConnection::new(config.clone(), server_name.clone())
        .map_err(|e| Failure::from_tls(&e))?;

    let mut sent_early = 0;
    if early_data > 0 {
        if let Some(mut ed) = conn.early_data() {
            let n = early_data.min(request.len()).min(ed.bytes_left());
            sent_early = ed.write(&request[..n]).map_err(|e| Failure::from_io(&e))?;
        }
    }
    while conn.is_handshaking() {
        in_time()?;
        match conn.complete_io(io) {
            Ok((0, 0)) if conn.is_handshaking() => return Err(Failure::Eof),
            Ok(_) => {}
            Err(e) => return Err(fail(&mut conn, io, &e)),
        }
    }
    let early_data_accepted = sent_early > 0 && conn.is_early_data_accepted();
    if !early_data_accepted {
        // Rejected 0-RTT is not retransmitted by rustls: send it all again.
        sent_early = 0;
    }
    conn.writer()
        .write_all(&request[sent_early..])
        .map_err(|e| Failure::from_io(&e))?;
    while conn.wants_write() {
        in_time()?;
        conn.write_tls(io).map_err(|e| Failure::from_io(&e))?;
    }

    let mut plain = [0u8; 4096];
    let mut closed_cleanly = false;
    // The first pass reads nothing: the handshake's last read may already hold
    // the response (a server's 0.5-RTT answer to 0-RTT data) and its close.
    let mut read_socket = false;
    loop {
        if read_socket {
            in_time()?;
            let n = conn.read_tls(io).map_err(|e| Failure::from_io(&e))?;
            if n == 0 {
                break;
            }
        }
        read_socket = true;
        let state = match conn.process_new_packets() {
            Ok(s) => s,
            Err(e) => {
                let e = io::Error::new(io::ErrorKind::InvalidData, e);
                return Err(fail(&mut conn, io, &e));
            }
        };
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            match conn.reader().read(&mut plain) {
                Ok(0) => break,
                Ok(k) => {
                    if io.response == 0 {
                        *first_byte = Some(start.elapsed());
                    }
                    io.response += k as u64;
                    left = left.saturating_sub(k);
                }
                Err(_) => break,
            }
        }
        while conn.wants_write() {
            conn.write_tls(io).map_err(|e| Failure::from_io(&e))?;
        }
        if state.peer_has_closed() {
            closed_cleanly = true;
            // Answer with our close_notify: OpenSSL servers (nginx, HAProxy) drop
            // the session of a connection that was not shut down cleanly.
            conn.send_close_notify();
            while conn.wants_write() {
                if conn.write_tls(io).is_err() {
                    break;
                }
            }
            // Wait briefly for the TCP FIN, so the server closes first and keeps
            // the TIME_WAIT, not the device.
            let linger = limits
                .linger
                .min(deadline.saturating_duration_since(Instant::now()));
            if linger.is_zero() {
                break;
            }
            io.sock
                .set_read_timeout(Some(linger))
                .map_err(|e| Failure::from_io(&e))?;
            // rustls reads nothing after close_notify; read the socket itself.
            let mut rest = [0u8; 512];
            let _ = io.read(&mut rest);
            break;
        }
    }
    if io.response == 0 {
        return Err(Failure::Eof);
    }
    Ok(Handshake {
        resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        early_data_accepted,
        unclean_close: !closed_cleanly,
    })
}

/// Classify an error, and send the alert rustls queued for it.
fn fail(conn: &mut ClientConnection, io: &mut Counting, e: &io::Error) -> Failure {
    let why = Failure::from_io(e);
    if matches!(
        why,
        Failure::Tls | Failure::TlsAlert | Failure::TlsCertificate
    ) {
        let _ = conn.write_tls(io);
    }
    why
}

/// The request every device sends: an HTTP/1.0 GET, padded with a header to
/// exactly `size` bytes (or the shortest such request, if `size` is smaller).
pub fn http_request(size: usize, host: &str) -> Vec<u8> {
    let head = format!("GET / HTTP/1.0\r\nHost: {host}\r\n");
    let pad_header = "X-Pad: \r\n";
    let end = "\r\n";
    let bare = head.len() + end.len();
    if size < bare + pad_header.len() {
        return format!("{head}{end}").into_bytes();
    }
    let pad = size - bare - pad_header.len();
    format!("{head}X-Pad: {}\r\n{end}", "p".repeat(pad)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_padded_to_the_asked_size() {
        for size in [64, 100, 1000] {
            let r = http_request(size, "localhost");
            assert_eq!(r.len(), size);
            assert!(r.ends_with(b"\r\n\r\n"));
        }
        let short = http_request(10, "localhost");
        assert_eq!(short, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    }
}
