//! Bytes waiting to go out on one socket: one buffer lent to the kernel while a
//! send is in flight, one collecting what comes next. Neither is touched in a way
//! that moves its memory while lent, and both keep their capacity, so steady
//! state allocates nothing.

/// A two-buffer send queue.
#[derive(Debug, Default)]
pub struct Outbox {
    lent: Vec<u8>,
    sent: usize,
    pending: Vec<u8>,
    posted: bool,
}

impl Outbox {
    pub fn with_capacity(n: usize) -> Outbox {
        Outbox {
            lent: Vec::with_capacity(n),
            sent: 0,
            pending: Vec::with_capacity(n),
            posted: false,
        }
    }

    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.lent.len() - self.sent + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append bytes to send later.
    pub fn queue(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// Put bytes in front of everything not yet handed to the kernel (the PROXY
    /// header ahead of early data queued before the backend connect).
    pub fn prepend(&mut self, data: &[u8]) {
        debug_assert!(self.lent.is_empty() && !self.posted, "nothing sent yet");
        self.pending.splice(0..0, data.iter().copied());
    }

    /// A `Write` that appends to the pending buffer.
    pub fn writer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// The bytes to hand to the kernel next, if no send is in flight. The caller
    /// must post exactly one send of them and call [`Outbox::sent`] on completion.
    pub fn next_send(&mut self) -> Option<&[u8]> {
        if self.posted {
            return None;
        }
        if self.sent == self.lent.len() {
            if self.pending.is_empty() {
                return None;
            }
            self.lent.clear();
            self.sent = 0;
            std::mem::swap(&mut self.lent, &mut self.pending);
        }
        self.posted = true;
        Some(&self.lent[self.sent..])
    }

    /// Whether a send is in flight.
    pub fn posted(&self) -> bool {
        self.posted
    }

    /// The in-flight send completed with `n` bytes written.
    pub fn sent(&mut self, n: usize) {
        debug_assert!(self.posted);
        self.posted = false;
        self.sent = (self.sent + n).min(self.lent.len());
    }

    /// The in-flight send failed: forget it.
    pub fn failed(&mut self) {
        self.posted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_sends_resume_and_pending_waits_its_turn() {
        let mut o = Outbox::with_capacity(16);
        o.queue(b"hello");
        assert_eq!(o.next_send(), Some(&b"hello"[..]));
        assert_eq!(o.next_send(), None, "one send at a time");
        o.queue(b" world");
        o.sent(2);
        assert_eq!(o.len(), 9);
        assert_eq!(o.next_send(), Some(&b"llo"[..]));
        o.sent(3);
        assert_eq!(o.next_send(), Some(&b" world"[..]));
        o.sent(6);
        assert!(o.is_empty());
        assert_eq!(o.next_send(), None);
    }
}
