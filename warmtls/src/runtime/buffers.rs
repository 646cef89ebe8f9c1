//! Receive buffers for the ring: fixed-size boxed slices lent to connections and
//! taken back when a connection is freed, so after warm-up a new connection
//! allocates no receive buffer. A boxed slice never moves while the kernel
//! writes into it, even as the slab holding its connection grows.
//!
//! Bounded: a connection holds at most two (client, and backend once it is
//! connecting), and the slab is bounded, so at most `2 × max_connections` exist.

/// A free list of equally sized receive buffers.
pub struct BufferPool {
    free: Vec<Box<[u8]>>,
    size: usize,
    lent: usize,
    limit: usize,
}

impl BufferPool {
    /// A pool of `size`-byte buffers, at most `limit` lent at once, `warm` made now.
    pub fn new(size: usize, limit: usize, warm: usize) -> BufferPool {
        BufferPool {
            free: (0..warm.min(limit))
                .map(|_| vec![0u8; size].into_boxed_slice())
                .collect(),
            size,
            lent: 0,
            limit,
        }
    }

    /// A buffer, reused when one is free.
    pub fn take(&mut self) -> Box<[u8]> {
        assert!(self.lent < self.limit, "buffer pool bound exceeded");
        self.lent += 1;
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    /// Return a buffer no operation uses any more.
    pub fn give(&mut self, buf: Box<[u8]>) {
        debug_assert_eq!(buf.len(), self.size);
        self.lent -= 1;
        self.free.push(buf);
    }

    /// Buffers currently lent out.
    pub fn lent(&self) -> usize {
        self.lent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_not_reallocated() {
        let mut p = BufferPool::new(1024, 4, 1);
        let a = p.take();
        let addr = a.as_ptr();
        p.give(a);
        let b = p.take();
        assert_eq!(b.as_ptr(), addr);
        assert_eq!(p.lent(), 1);
        p.give(b);
        assert_eq!(p.lent(), 0);
    }
}
