//! One io_uring per worker, and the only code that hands memory to the kernel.
//!
//! Receives take a buffer from the worker's provided-buffer ring
//! ([`RecvBuffers`]) only when bytes arrive, so a connection waiting for its
//! device holds none. Every `push_*` that passes a buffer of ours is `unsafe`:
//! the caller promises the buffer stays alive and unmoved until the operation's
//! completion is reaped. The worker keeps that promise by never freeing a
//! connection (and the outbox buffers it lent) with operations in flight.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::slots::TICK;
use super::token::{ConnToken, Op};

/// Why the ring could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("io_uring is not available ({0}): check `sysctl kernel.io_uring_disabled` (must be 0, or 1 with this user in kernel.io_uring_group) and that no seccomp profile (e.g. a container runtime's default) blocks io_uring_setup")]
    Unavailable(std::io::Error),
    #[error("cannot create io_uring: {0}")]
    Setup(std::io::Error),
    #[error("this kernel's io_uring cannot take a provided-buffer ring ({0}): Linux 5.19 or later is needed")]
    NoBufferRing(std::io::Error),
}

/// The buffer group of the worker's receive buffers (one group per ring).
const RECV_GROUP: u16 = 0;

/// A worker's ring.
pub struct Ring {
    ring: IoUring,
    /// The kernel's timespec for the periodic tick must outlive its SQE.
    tick: Box<types::Timespec>,
    /// IOSQE_CQE_SKIP_SUCCESS is supported (Linux 5.17+).
    skip_success: bool,
    /// IORING_OP_SOCKET is supported (Linux 5.19+).
    sockets: bool,
    /// Registered with the ring by [`Ring::with_recv_buffers`].
    recv: Option<RecvBuffers>,
}

/// The worker's receive buffers: `count` buffers of `size` bytes in one
/// allocation, lent to the kernel through a provided-buffer ring
/// (IORING_REGISTER_PBUF_RING, Linux 5.19+). A receive posted with buffer
/// selection takes one only when bytes arrive; its completion names it, and it
/// goes back to the ring once its bytes are consumed ([`RecvBuffers::recycle`]).
pub struct RecvBuffers {
    /// The ring of `count` entries shared with the kernel (page-aligned).
    entries: NonNull<types::BufRingEntry>,
    /// The buffers themselves.
    memory: NonNull<u8>,
    count: u16,
    size: usize,
    /// Our copy of the ring's tail (the kernel only reads it).
    tail: u16,
}

impl RecvBuffers {
    fn entries_layout(count: u16) -> Layout {
        Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("a valid ring layout")
    }

    fn memory_layout(count: u16, size: usize) -> Layout {
        Layout::from_size_align(usize::from(count) * size, 64).expect("a valid buffer layout")
    }

    fn new(count: u16, size: usize) -> RecvBuffers {
        assert!(count.is_power_of_two() && count <= 32_768 && size > 0);
        let el = Self::entries_layout(count);
        let ml = Self::memory_layout(count, size);
        // SAFETY: both layouts have a non-zero size (count, size > 0).
        let (entries, memory) = unsafe { (std::alloc::alloc_zeroed(el), std::alloc::alloc(ml)) };
        let (Some(entries), Some(memory)) = (NonNull::new(entries), NonNull::new(memory)) else {
            std::alloc::handle_alloc_error(el);
        };
        let mut b = RecvBuffers {
            entries: entries.cast(),
            memory,
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            b.put(bid);
        }
        b.publish();
        b
    }

    /// Write buffer `bid` into the ring entry at our tail (not yet visible).
    fn put(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot` < count, the ring has `count` entries, and the kernel
        // never writes entries (it only reads those before the published tail,
        // and this one is past it).
        let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
        // SAFETY: `bid` < count, so the offset stays inside the allocation.
        let addr = unsafe { self.memory.as_ptr().add(usize::from(bid) * self.size) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make the entries written so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring base is valid and initialised; the tail field sits in
        // the first entry's reserved field and is a naturally aligned u16 the
        // kernel reads with acquire semantics.
        let tail =
            unsafe { &*(types::BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes the kernel wrote into buffer `bid`.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size);
        // SAFETY: a completion named `bid`, so the kernel is done with it and
        // no longer owns it until `recycle`; it lies inside the allocation.
        unsafe {
            std::slice::from_raw_parts(self.memory.as_ptr().add(usize::from(bid) * self.size), len)
        }
    }

    /// Give buffer `bid` back to the kernel once its bytes have been consumed.
    pub fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        self.put(bid);
        self.publish();
    }

    /// Size of each buffer.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the ring unregistered
        // them first (see `Drop for Ring`), so the kernel no longer uses them.
        unsafe {
            std::alloc::dealloc(
                self.entries.as_ptr().cast(),
                Self::entries_layout(self.count),
            );
            std::alloc::dealloc(
                self.memory.as_ptr(),
                Self::memory_layout(self.count, self.size),
            );
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let Some(bufs) = self.recv.take() {
            if self
                .ring
                .submitter()
                .unregister_buf_ring(RECV_GROUP)
                .is_err()
            {
                // The kernel may still hold them: leak rather than free memory it
                // could write into (only at exit).
                std::mem::forget(bufs);
            }
        }
    }
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
                    let mut probe = io_uring::Probe::new();
                    let sockets = ring.submitter().register_probe(&mut probe).is_ok()
                        && probe.is_supported(opcode::Socket::CODE);
                    return Ok(Ring {
                        ring,
                        tick: Box::new(types::Timespec::from(TICK)),
                        skip_success,
                        sockets,
                        recv: None,
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

    /// Whether this process may run the io_uring driver: a ring with a
    /// provided-buffer ring, as each worker makes (nothing else is touched).
    pub fn probe() -> Result<(), RingError> {
        Ring::new(8)?
            .with_recv_buffers(2, 64)
            .map(drop)
            .map_err(RingError::NoBufferRing)
    }

    /// Register `count` receive buffers of `size` bytes (a power of two count,
    /// at most 32768) for [`Ring::push_recv_select`].
    pub fn with_recv_buffers(mut self, count: u16, size: usize) -> std::io::Result<Ring> {
        let bufs = RecvBuffers::new(count, size);
        // SAFETY: the ring memory stays valid until unregistered in `Drop for
        // Ring`, which runs before the buffers are freed.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                bufs.entries.as_ptr() as u64,
                count,
                RECV_GROUP,
                0,
            )?;
        }
        self.recv = Some(bufs);
        Ok(self)
    }

    /// The registered receive buffers.
    pub fn recv_buffers(&mut self) -> &mut RecvBuffers {
        self.recv
            .as_mut()
            .expect("receive buffers registered at start-up")
    }

    /// Receive on `fd` into one of the ring's buffers, taken when bytes arrive
    /// (the completion names it: [`buffer_id`]).
    pub fn push_recv_select(&mut self, fd: RawFd, token: ConnToken) {
        let size = self.recv.as_ref().map_or(0, |b| b.size);
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), size as u32)
            .buf_group(RECV_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(token.encode());
        self.push(e);
    }

    /// Wait until the peer of `fd` closes its side, or an error or hang-up (a
    /// one-shot poll; input does not end it and nothing is read).
    pub fn push_poll_closed(&mut self, fd: RawFd, token: ConnToken) {
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLRDHUP as u32)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Cancel every operation in flight on `fd` (each completes, cancelled).
    pub fn push_cancel_fd(&mut self, fd: RawFd, token: ConnToken) {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Make room for `n` entries in the submission queue (handing what is
    /// there to the kernel if need be), so that a link of `n` entries is
    /// submitted whole: a link cut by a submission ends where it is cut.
    fn reserve(&mut self, n: usize) {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            if let Err(err) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {err}");
            }
        }
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

    /// Read up to `buf.len()` bytes from `fd` (an eventfd's counter).
    ///
    /// # Safety
    /// `buf` must stay alive, unmoved and untouched until this operation completes.
    pub unsafe fn push_read(&mut self, fd: RawFd, buf: &mut [u8], token: ConnToken) {
        let e = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Whether [`Ring::push_send_then_recv`] is available (CQE_SKIP_SUCCESS,
    /// Linux 5.17+).
    pub fn can_link_sends(&self) -> bool {
        self.skip_success
    }

    /// Send all of `buf`, then receive (as [`Ring::push_recv_select`]) once it
    /// is out: one link, and the send posts a completion only if it failed or
    /// fell short (MSG_WAITALL), so a successful send costs no wakeup — the
    /// receive's completion says it is done. A failed send's completion comes
    /// before the receive's (which is then cancelled).
    ///
    /// # Safety
    /// `buf` must stay alive and unmodified until the receive completes.
    pub unsafe fn push_send_then_recv(
        &mut self,
        fd: RawFd,
        buf: &[u8],
        send: ConnToken,
        recv: ConnToken,
    ) {
        debug_assert!(self.skip_success);
        // The receive must be submitted with the send, or its completion
        // could say nothing of the send's.
        self.reserve(2);
        let e = opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
            .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
            .build()
            .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
            .user_data(send.encode());
        self.push(e);
        self.push_recv_select(fd, recv);
    }

    /// The peer's address of socket `fd` into `addr` (`getsockopt(SO_PEERNAME)`
    /// through the ring, Linux 6.7+; older kernels fail it with EOPNOTSUPP).
    /// `len` must be the address's exact size (16 for IPv4, 28 for IPv6: the
    /// kernel refuses a larger buffer with EINVAL). It completes at submission,
    /// and where the kernel can, posts a completion only if it failed: a
    /// success costs no wakeup (the caller reads `addr` once a later operation
    /// on the socket completes).
    ///
    /// # Safety
    /// `addr` must stay alive and unmoved until this operation completes.
    pub unsafe fn push_peer_name(
        &mut self,
        fd: RawFd,
        addr: *mut libc::sockaddr_storage,
        len: u32,
        token: ConnToken,
    ) {
        debug_assert!(len as usize <= std::mem::size_of::<libc::sockaddr_storage>());
        let mut e = opcode::GetSockOpt::new(
            types::Fd(fd),
            libc::SOL_SOCKET as u32,
            libc::SO_PEERNAME as u32,
            addr.cast(),
            len,
        )
        .build()
        .user_data(token.encode());
        if self.skip_success {
            e = e.flags(squeue::Flags::SKIP_SUCCESS);
        }
        self.push(e);
    }

    /// Whether [`Ring::push_socket`] is available (IORING_OP_SOCKET, Linux
    /// 5.19+) and [`Ring::push_set_nodelay`] can post no completion on success
    /// (CQE_SKIP_SUCCESS, 5.17+).
    pub fn can_open_sockets(&self) -> bool {
        self.sockets && self.skip_success
    }

    /// A non-blocking, close-on-exec stream socket of `family` (as socket(2));
    /// the completion's result is the descriptor. It completes at submission.
    pub fn push_socket(&mut self, family: i32, token: ConnToken) {
        let e = opcode::Socket::new(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
        .build()
        .user_data(token.encode());
        self.push(e);
    }

    /// TCP_NODELAY on socket `fd` (`setsockopt` through the ring, Linux 6.7+;
    /// older kernels fail it with EOPNOTSUPP). It completes at submission and
    /// posts a completion only if it failed.
    pub fn push_set_nodelay(&mut self, fd: RawFd, token: ConnToken) {
        debug_assert!(self.skip_success);
        static ONE: libc::c_int = 1;
        // The option's value is a static: it outlives the operation.
        let e = opcode::SetSockOpt::new(
            types::Fd(fd),
            libc::IPPROTO_TCP as u32,
            libc::TCP_NODELAY as u32,
            (&ONE as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .flags(squeue::Flags::SKIP_SUCCESS)
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

/// The receive buffer a completion filled, if it took one.
pub fn buffer_id(flags: u32) -> Option<u16> {
    cqueue::buffer_select(flags)
}
