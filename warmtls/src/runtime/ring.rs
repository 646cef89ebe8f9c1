//! One io_uring per worker, and the only code that hands memory to the kernel.
//!
//! Every `push_*` that passes a buffer is `unsafe`: the caller promises the buffer
//! stays alive and unmoved until the operation's completion is reaped. The
//! worker keeps that promise by giving each connection boxed buffers and never
//! freeing a connection with operations in flight.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::token::{ConnToken, Op};

/// Why the ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("io_uring is not available ({0}): check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in kernel.io_uring_group) and that no seccomp profile (e.g. a container runtime's default) blocks io_uring_setup")]
    Unavailable(std::io::Error),
    #[error("cannot create io_uring: {0}")]
    Setup(std::io::Error),
}

/// The period of the worker's tick (timeouts, drain, accept re-arm).
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// A worker's ring.
pub struct Ring {
    ring: IoUring,
    /// The kernel's timespec for the periodic tick must outlive its SQE.
    tick: Box<types::Timespec>,
    /// IOSQE_CQE_SKIP_SUCCESS is supported (Linux 5.17+).
    skip_success: bool,
}

impl Ring {
    /// A ring with SINGLE_ISSUER|DEFER_TASKRUN|COOP_TASKRUN when the kernel has
    /// them, falling back to fewer flags; must be called on the worker's thread.
    pub fn new(entries: u32) -> Result<Ring, RingError> {
        let attempts: [fn(&mut io_uring::Builder); 3] = [
            |b| {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_coop_taskrun();
            },
            |b| {
                b.setup_coop_taskrun();
            },
            |_| {},
        ];
        let mut last = None;
        for set in attempts {
            let mut b = IoUring::builder();
            set(&mut b);
            match b.setup_cqsize(entries * 4).build(entries) {
                Ok(ring) => {
                    let skip_success = ring.params().is_feature_skip_cqe_on_success();
                    return Ok(Ring {
                        ring,
                        tick: Box::new(types::Timespec::from(TICK)),
                        skip_success,
                    });
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES)
                    ) =>
                {
                    return Err(RingError::Unavailable(e))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(RingError::Setup(
            last.unwrap_or_else(|| std::io::Error::other("no attempt")),
        ))
    }

    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: the entry's buffers are valid per the caller's contract of
            // the `push_*` method that built it.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            // The submission queue is full: hand what is there to the kernel.
            if let Err(err) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {err}");
            }
        }
    }

    /// Multishot accept on `fd`.
    pub fn push_accept(&mut self, fd: RawFd, token: ConnToken) {
        let e = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// The periodic 100 ms tick that drives timeouts and shutdown.
    pub fn push_tick(&mut self) {
        let e = opcode::Timeout::new(&*self.tick)
            .build()
            .user_data(ConnToken::new(u32::MAX as usize, 0, Op::Tick).encode());
        self.push(e);
    }

    /// Receive into `buf`.
    ///
    /// # Safety
    /// `buf` must stay alive, unmoved and unread until this operation completes.
    pub unsafe fn push_recv(&mut self, fd: RawFd, buf: &mut [u8], token: ConnToken) {
        let e = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Send `buf`.
    ///
    /// # Safety
    /// `buf` must stay alive and unmodified until this operation completes.
    pub unsafe fn push_send(&mut self, fd: RawFd, buf: &[u8], token: ConnToken) {
        let e = opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Connect `fd` to `addr`.
    ///
    /// # Safety
    /// `addr` must stay alive and unmoved until this operation completes.
    pub unsafe fn push_connect(
        &mut self,
        fd: RawFd,
        addr: &nix::sys::socket::SockaddrStorage,
        token: ConnToken,
    ) {
        use nix::sys::socket::SockaddrLike;
        let e = opcode::Connect::new(types::Fd(fd), addr.as_ptr(), addr.len())
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Close `fd`, which the caller gives up: nothing may use it afterwards.
    /// Done inline at the next submit for a socket; where the kernel can, a
    /// successful close posts no completion (so it wakes nobody).
    pub fn push_close(&mut self, fd: std::os::fd::OwnedFd, token: ConnToken) {
        use std::os::fd::IntoRawFd;
        let mut e = opcode::Close::new(types::Fd(fd.into_raw_fd()))
            .build()
            .user_data(token.encode());
        if self.skip_success {
            e = e.flags(squeue::Flags::SKIP_SUCCESS);
        }
        self.push(e);
    }

    /// Hand queued submissions to the kernel without waiting.
    pub fn submit(&mut self) -> std::io::Result<usize> {
        self.ring.submit()
    }

    /// Cancel the operation whose user_data is `target`.
    pub fn push_cancel(&mut self, target: ConnToken, token: ConnToken) {
        let e = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Submit and wait for at least one completion.
    pub fn submit_and_wait(&mut self) -> std::io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Take the completions that are ready.
    pub fn drain(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        out.clear();
        for cqe in self.ring.completion() {
            out.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }
}

/// Whether a multishot completion will be followed by more.
pub fn more(flags: u32) -> bool {
    cqueue::more(flags)
}
