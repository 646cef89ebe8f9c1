//! One worker's idle kept-alive backend connections (`backend_protocol =
//! "http"`): the sockets a connection handed back with
//! `Action::ReleaseBackend { reusable: true }`, waiting for the next
//! `Action::ConnectPooled`.
//!
//! Bounded (`backend_pool` per worker), most recently used first (so the
//! others age out), each kept at most `backend_idle_timeout`. Every idle
//! connection is watched, so a backend that closes it while it waits is seen
//! and the socket retired before anyone takes it.
//!
//! io_uring: one poll for the peer's close (POLLRDHUP; errors and hang-ups
//! always report) is posted when a socket first comes to the pool and stays
//! posted for as long as the socket is pooled or lent out: the entry belongs
//! to the socket, not to one idle spell. The connection that takes it posts
//! its own receive, linked behind its request, and the answer arriving does
//! not wake the poll (two waiters on the same input would, each with a
//! completion that need not come in the same batch). The owner hands the
//! socket back ([`BackendPool::give_back`]) or gives the entry up
//! ([`BackendPool::forget`]; the caller cancels the poll before the close).
//! The price: a backend that sends bytes unasked on an idle connection without
//! closing it is not seen until the next exchange (HTTP servers close after
//! such a message, e.g. a 408, and the close is seen).
//!
//! epoll: it stays registered for readability under the entry's token, and is
//! taken out whole (`checkout`). The pool never decides whether a connection
//! is reusable: the machine does.
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use slab::Slab;

use super::token::ConnToken;

/// One pooled backend connection.
pub struct Pooled {
    /// The socket while it is idle here; `None` while lent out.
    pub fd: Option<OwnedFd>,
    /// The entry's incarnation (in its poll's token).
    pub gen: u32,
    /// When it went idle.
    pub since: Instant,
    /// The connection (slab key, generation) it is lent to.
    pub owner: Option<(usize, u32)>,
    /// io_uring: its poll is posted (it completes on the peer's close, or
    /// cancelled).
    pub watched: bool,
}

/// A worker's pool.
pub struct BackendPool {
    entries: Slab<Pooled>,
    /// Idle entries, oldest first.
    idle: VecDeque<usize>,
    limit: usize,
    idle_timeout: Duration,
    next_gen: u32,
}

impl BackendPool {
    /// A pool keeping at most `limit` idle connections for `idle_timeout` each.
    pub fn new(limit: usize, idle_timeout: Duration) -> BackendPool {
        BackendPool {
            entries: Slab::with_capacity(limit),
            idle: VecDeque::with_capacity(limit),
            limit,
            idle_timeout,
            next_gen: 0,
        }
    }

    /// Keep `fd`, new to the pool, as an idle connection; returns the token of
    /// the watch to post on it, or the fd back if the pool is full.
    pub fn put(
        &mut self,
        fd: OwnedFd,
        now: Instant,
        token: impl Fn(usize, u32) -> ConnToken,
    ) -> Result<ConnToken, OwnedFd> {
        if self.idle.len() >= self.limit {
            return Err(fd);
        }
        self.next_gen = self.next_gen.wrapping_add(1) & ConnToken::GEN_MASK;
        let gen = self.next_gen;
        let key = self.entries.insert(Pooled {
            fd: Some(fd),
            gen,
            since: now,
            owner: None,
            watched: true,
        });
        self.idle.push_back(key);
        Ok(token(key, gen))
    }

    /// The most recently pooled idle connection, lent to `owner` (io_uring):
    /// its fd and the entry's (key, generation) move to the caller, which
    /// hands the socket back or gives the entry up; its poll stays posted.
    pub fn take(&mut self, owner: (usize, u32)) -> Option<(OwnedFd, (usize, u32))> {
        let key = self.idle.pop_back()?;
        let e = &mut self.entries[key];
        e.owner = Some(owner);
        Some((e.fd.take()?, (key, e.gen)))
    }

    /// The socket lent out as entry `entry` comes back reusable at `now`:
    /// idle again (`Ok(true)`: its poll completed meanwhile, post the watch
    /// again under the entry's token), or, the pool being full, the fd back
    /// with the entry forgotten (cancel its poll, then close it).
    pub fn give_back(
        &mut self,
        entry: (usize, u32),
        fd: OwnedFd,
        now: Instant,
    ) -> Result<bool, OwnedFd> {
        let (key, gen) = entry;
        if self.get(key, gen).is_none() || self.idle.len() >= self.limit {
            self.forget(entry);
            return Err(fd);
        }
        let e = &mut self.entries[key];
        e.owner = None;
        e.fd = Some(fd);
        e.since = now;
        let rewatch = !std::mem::replace(&mut e.watched, true);
        self.idle.push_back(key);
        Ok(rewatch)
    }

    /// The socket lent out as entry `entry` is being closed by its owner:
    /// forget the entry (the caller cancels its poll first).
    pub fn forget(&mut self, entry: (usize, u32)) {
        let (key, gen) = entry;
        if self.get(key, gen).is_some_and(|e| e.owner.is_some()) {
            self.entries.remove(key);
        }
    }

    /// The most recently pooled idle connection, taken out whole (epoll: no
    /// poll is posted on it, so nothing is left to route).
    pub fn checkout(&mut self) -> Option<OwnedFd> {
        let key = self.idle.pop_back()?;
        self.entries.remove(key).fd
    }

    /// The entry a pool watch's token names, if it is still that entry.
    pub fn get(&self, key: usize, gen: u32) -> Option<&Pooled> {
        self.entries.get(key).filter(|e| e.gen == gen)
    }

    /// The entry's watch reported (the backend closed it, or it errored; or
    /// the poll was cancelled). An idle connection is forgotten and its socket
    /// returned, to be closed; a lent one stays its owner's (whose own
    /// receive sees the close), now unwatched: `None`.
    pub fn finish(&mut self, key: usize) -> Option<OwnedFd> {
        let e = &mut self.entries[key];
        if e.owner.is_some() {
            e.watched = false;
            return None;
        }
        self.idle.retain(|&k| k != key);
        self.entries.remove(key).fd
    }

    /// Idle connections older than the idle timeout, taken out to be closed
    /// (their poll is cancelled by the caller; its completion then finds no
    /// entry).
    pub fn expire(&mut self, now: Instant, out: &mut Vec<OwnedFd>) {
        while let Some(&key) = self.idle.front() {
            if now.duration_since(self.entries[key].since) < self.idle_timeout {
                break;
            }
            self.idle.pop_front();
            if let Some(fd) = self.entries.remove(key).fd {
                out.push(fd);
            }
        }
    }

    /// Every idle connection, taken out to be closed (shutdown).
    pub fn drain(&mut self, out: &mut Vec<OwnedFd>) {
        while let Some(key) = self.idle.pop_front() {
            if let Some(fd) = self.entries.remove(key).fd {
                out.push(fd);
            }
        }
    }

    /// Idle connections held.
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}
