//! Bytes waiting to go out on one socket, in buffers lent by the worker's
//! [`BufPool`] only while bytes wait: an idle connection holds none.
//!
//! Two buffers: one lent to the kernel while a send is in flight, one collecting
//! what comes next. Neither is touched in a way that moves its memory while
//! lent; both go back to the pool (keeping their capacity) once everything is
//! sent, so steady state allocates nothing.

/// Capacity of a pooled buffer: one full TLS record (16 KiB of plaintext plus
/// header, tag and padding) with room to spare, so a record never makes a
/// pooled buffer grow.
pub const POOLED_CAPACITY: usize = 16 * 1024 + 1024;
/// A returned buffer that grew beyond this is dropped instead of kept, so a
/// burst cannot pin memory in the pool for ever.
const KEEP_AT_MOST: usize = 4 * POOLED_CAPACITY;

/// Free send buffers of one worker. Bounded: at most `limit` buffers are kept.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    limit: usize,
}

impl BufPool {
    /// A pool keeping at most `limit` free buffers, `warm` of them made now.
    pub fn new(limit: usize, warm: usize) -> BufPool {
        let mut free = Vec::with_capacity(limit);
        free.extend((0..warm.min(limit)).map(|_| Vec::with_capacity(POOLED_CAPACITY)));
        BufPool { free, limit }
    }

    /// An empty buffer, reused when one is free.
    pub fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(POOLED_CAPACITY))
    }

    /// Return a buffer nobody uses any more.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEEP_AT_MOST || self.free.len() >= self.limit {
            return;
        }
        buf.clear();
        self.free.push(buf);
    }

    /// Buffers kept for reuse.
    pub fn free(&self) -> usize {
        self.free.len()
    }
}

/// A two-buffer send queue.
#[derive(Debug, Default)]
pub struct Outbox {
    lent: Vec<u8>,
    sent: usize,
    pending: Vec<u8>,
    posted: bool,
}

impl Outbox {
    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.lent.len() - self.sent + self.pending.len()
    }

    /// Nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer that collects bytes to send later (a `Write`), taken from the
    /// pool if this outbox holds none.
    pub fn writer(&mut self, pool: &mut BufPool) -> &mut Vec<u8> {
        if self.pending.capacity() == 0 {
            self.pending = pool.take();
        }
        &mut self.pending
    }

    /// Append bytes to send later.
    pub fn queue(&mut self, data: &[u8], pool: &mut BufPool) {
        self.writer(pool).extend_from_slice(data);
    }

    /// Put bytes in front of everything not yet handed to the kernel (the PROXY
    /// header ahead of early data queued before the backend connect).
    pub fn prepend(&mut self, data: &[u8], pool: &mut BufPool) {
        debug_assert!(self.lent.is_empty() && !self.posted, "nothing sent yet");
        self.writer(pool).splice(0..0, data.iter().copied());
    }

    /// Whether a send is in flight.
    pub fn posted(&self) -> bool {
        self.posted
    }

    /// Mark the next bytes as lent to the kernel, if no send is in flight and
    /// there are any; the caller posts exactly one send of [`Outbox::lent`] and
    /// calls [`Outbox::sent`] or [`Outbox::failed`] when it completes.
    pub fn lend(&mut self) -> bool {
        if self.posted {
            return false;
        }
        if self.sent == self.lent.len() {
            if self.pending.is_empty() {
                return false;
            }
            self.lent.clear();
            self.sent = 0;
            std::mem::swap(&mut self.lent, &mut self.pending);
        }
        self.posted = true;
        true
    }

    /// The bytes lent to the in-flight send.
    pub fn lent(&self) -> &[u8] {
        debug_assert!(self.posted);
        &self.lent[self.sent..]
    }

    /// The in-flight send completed with `n` bytes written. Once everything is
    /// out, both buffers go back to the pool.
    pub fn sent(&mut self, n: usize, pool: &mut BufPool) {
        debug_assert!(self.posted);
        self.posted = false;
        self.sent = (self.sent + n).min(self.lent.len());
        if self.is_empty() {
            self.release(pool);
        }
    }

    /// The in-flight send failed: forget it (the connection is going away).
    pub fn failed(&mut self) {
        self.posted = false;
    }

    /// Give both buffers back, dropping whatever was not sent. Only while no
    /// send is in flight.
    pub fn release(&mut self, pool: &mut BufPool) {
        debug_assert!(!self.posted, "a lent buffer stays until its send completes");
        self.sent = 0;
        pool.give(std::mem::take(&mut self.lent));
        pool.give(std::mem::take(&mut self.pending));
    }

    /// Whether this outbox holds pooled buffers.
    pub fn holds_buffers(&self) -> bool {
        self.lent.capacity() > 0 || self.pending.capacity() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_sends_resume_and_pending_waits_its_turn() {
        let mut pool = BufPool::new(4, 0);
        let mut o = Outbox::default();
        o.queue(b"hello", &mut pool);
        assert!(o.lend());
        assert_eq!(o.lent(), b"hello");
        assert!(!o.lend(), "one send at a time");
        o.queue(b" world", &mut pool);
        o.sent(2, &mut pool);
        assert_eq!(o.len(), 9);
        assert!(o.lend());
        assert_eq!(o.lent(), b"llo");
        o.sent(3, &mut pool);
        assert!(o.lend());
        assert_eq!(o.lent(), b" world");
        o.sent(6, &mut pool);
        assert!(o.is_empty());
        assert!(!o.lend());
    }

    #[test]
    fn an_empty_outbox_holds_no_buffer_and_buffers_are_reused() {
        let mut pool = BufPool::new(4, 2);
        let mut o = Outbox::default();
        assert!(!o.holds_buffers());
        o.queue(b"x", &mut pool);
        assert_eq!(pool.free(), 1);
        assert!(o.lend());
        o.sent(1, &mut pool);
        assert!(
            !o.holds_buffers(),
            "everything sent: buffers back in the pool"
        );
        assert_eq!(pool.free(), 2);
        o.queue(b"y", &mut pool);
        assert_eq!(pool.free(), 1, "taken from the pool, not allocated");
    }
}
