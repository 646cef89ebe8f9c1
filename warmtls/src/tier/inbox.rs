//! Outcomes of one worker's lookups, handed back from the tier thread: a queue
//! and an eventfd that is written when the queue goes from empty to not empty.
//! Any event loop can wait on the fd (the io_uring worker keeps a read posted
//! on it; an epoll loop would register it for reading) and then drains the
//! queue. Driver-agnostic on purpose: it knows tokens, not connections.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Mutex;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Outcome;

/// One worker's completed lookups: `(token, outcome)`.
#[derive(Debug)]
pub struct Inbox {
    queue: Mutex<Vec<(u64, Outcome)>>,
    wake: EventFd,
}

impl Inbox {
    pub(super) fn new() -> Result<Inbox, nix::errno::Errno> {
        Ok(Inbox {
            queue: Mutex::new(Vec::with_capacity(256)),
            // Blocking: io_uring returns EAGAIN for a read of an O_NONBLOCK
            // file instead of waiting for it; an epoll loop reads it only
            // once it is readable, so never blocks either.
            wake: EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?,
        })
    }

    /// The fd that becomes readable when outcomes wait (read 8 bytes to reset
    /// it; a read blocks while none wait).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The same, raw (for an SQE).
    pub fn wake_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Take every waiting outcome (appended to `out`). Call after each wake-up.
    pub fn drain(&self, out: &mut Vec<(u64, Outcome)>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut q);
    }

    /// Hand an outcome to the worker (tier thread side).
    pub(super) fn push(&self, token: u64, outcome: Outcome) {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let was_empty = q.is_empty();
            q.push((token, outcome));
            was_empty
        };
        // Only the first outcome of a batch wakes the worker: it drains the
        // whole queue once its read of the fd completes.
        if was_empty {
            let _ = self.wake.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_outcome_of_a_batch_wakes_and_a_drain_takes_them_all() {
        let inbox = Inbox::new().unwrap();
        let mut buf = [0u8; 8];
        inbox.push(1, Outcome::Found);
        inbox.push(2, Outcome::Missing);
        assert_eq!(nix::unistd::read(inbox.wake_fd(), &mut buf), Ok(8));
        assert_eq!(u64::from_ne_bytes(buf), 1, "one wake-up for the batch");
        let mut out = Vec::new();
        inbox.drain(&mut out);
        assert_eq!(out, [(1, Outcome::Found), (2, Outcome::Missing)]);
        inbox.push(3, Outcome::TimedOut);
        assert_eq!(nix::unistd::read(inbox.wake_fd(), &mut buf), Ok(8));
    }
}
