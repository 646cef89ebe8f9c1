//! One worker's idle kept-alive backend connections (`backend_protocol =
//! "http"`): the sockets a connection handed back with
//! `Action::ReleaseBackend { reusable: true }`, waiting for the next
//! `Action::ConnectPooled`.
//!
//! Bounded (`backend_pool` per worker), most recently used first (so the
//! others age out), each kept at most `backend_idle_timeout`. Every idle
//! connection is watched, so a backend that closes it while it waits is seen
//! and the socket retired before anyone takes it. io_uring: one receive is
//! posted on it, which the connection that takes it inherits; an entry
//! outlives its socket's checkout until that receive completes, to route the
//! completion to its new owner. epoll: it stays registered for readability
//! under the entry's token, and is taken out whole (`checkout`). The pool
//! never decides whether a connection is reusable: the machine does.
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use slab::Slab;

use super::token::ConnToken;

/// One pooled backend connection.
pub struct Pooled {
    /// The socket while it is idle here; `None` once taken.
    pub fd: Option<OwnedFd>,
    /// The entry's incarnation (in its receive's token).
    pub gen: u32,
    /// When it went idle.
    pub since: Instant,
    /// The connection (slab key, generation) that took it, whose receive the
    /// entry's pending completion is.
    pub owner: Option<(usize, u32)>,
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

    /// Keep `fd` as an idle connection; returns the entry's key and the token
    /// of the receive to post on it, or the fd back if the pool is full.
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
        });
        self.idle.push_back(key);
        Ok(token(key, gen))
    }

    /// The most recently pooled idle connection, now owned by `owner`: its fd
    /// moves to the caller; its receive stays posted and is routed to `owner`.
    pub fn take(&mut self, owner: (usize, u32)) -> Option<OwnedFd> {
        let key = self.idle.pop_back()?;
        let e = &mut self.entries[key];
        e.owner = Some(owner);
        e.fd.take()
    }

    /// The most recently pooled idle connection, taken out whole (epoll: no
    /// receive is posted on it, so nothing is left to route).
    pub fn checkout(&mut self) -> Option<OwnedFd> {
        let key = self.idle.pop_back()?;
        self.entries.remove(key).fd
    }

    /// The entry a pool receive's token names, if it is still that entry.
    pub fn get(&self, key: usize, gen: u32) -> Option<&Pooled> {
        self.entries.get(key).filter(|e| e.gen == gen)
    }

    /// The entry's receive completed: forget the entry. Returns its socket if
    /// it was idle (to be closed: it is dead, or the backend spoke unasked),
    /// else `None` (the owner has the socket and gets the completion).
    pub fn finish(&mut self, key: usize) -> Option<OwnedFd> {
        let e = self.entries.remove(key);
        if e.owner.is_none() {
            self.idle.retain(|&k| k != key);
        }
        e.fd
    }

    /// Idle connections older than the idle timeout, taken out to be closed
    /// (their receive is cancelled by the caller; its completion then finds no
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
