//! Backend failures, said at warn level without flooding the log: the first
//! failure after a quiet spell is logged at once, with the backend's address and
//! the reason; the ones that follow within [`WINDOW`] are counted and summed up
//! in one line when the window closes ("backend 127.0.0.1:8080: connection
//! refused, 37 times in the last 10 s").

use std::time::{Duration, Instant};

/// How long failures are counted before they are summed up in one line.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Why a backend connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendFailure {
    /// The connect failed with this errno.
    Connect(i32),
    /// The connect did not complete within `backend_connect_timeout`.
    ConnectTimeout(Duration),
    /// A receive or send on an open backend connection failed with this errno.
    Io(i32),
    /// The backend closed the connection before its response was complete.
    Closed,
    /// The backend's response broke HTTP/1.1 (http mode).
    Http(super::http::ResponseError),
}

impl std::fmt::Display for BackendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BackendFailure::Connect(e) => {
                write!(f, "{}", std::io::Error::from_raw_os_error(e).kind())
            }
            BackendFailure::ConnectTimeout(t) => {
                write!(f, "no answer within {}", humantime::format_duration(t))
            }
            BackendFailure::Io(e) => write!(
                f,
                "connection lost: {}",
                std::io::Error::from_raw_os_error(e).kind()
            ),
            BackendFailure::Closed => f.write_str("closed before its response was complete"),
            BackendFailure::Http(e) => write!(f, "{e}"),
        }
    }
}

/// One worker's rate-limited log of backend failures.
#[derive(Debug)]
pub struct BackendLog {
    /// The backend's address as configured, for the message.
    backend: String,
    worker: usize,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Failures since the window opened, the first one (logged) excluded.
    more: u32,
    last: BackendFailure,
}

impl BackendLog {
    /// A log for worker `worker`'s failures reaching `backend`.
    pub fn new(backend: String, worker: usize) -> BackendLog {
        BackendLog {
            backend,
            worker,
            window: None,
        }
    }

    /// A backend connection failed.
    pub fn failed(&mut self, why: BackendFailure, now: Instant) {
        self.tick(now);
        match &mut self.window {
            Some(w) => {
                w.more += 1;
                w.last = why;
            }
            None => {
                tracing::warn!(
                    worker = self.worker,
                    "backend {}: {why}; devices get close_notify (http mode: a 502) instead of an answer",
                    self.backend
                );
                self.window = Some(Window {
                    opened: now,
                    more: 0,
                    last: why,
                });
            }
        }
    }

    /// Close the window once it is over, summing up what it counted.
    pub fn tick(&mut self, now: Instant) {
        let Some(w) = &self.window else {
            return;
        };
        if now < w.opened + WINDOW {
            return;
        }
        if w.more > 0 {
            tracing::warn!(
                worker = self.worker,
                "backend {}: {}, {} more times in the last {} s",
                self.backend,
                w.last,
                w.more,
                WINDOW.as_secs()
            );
        }
        self.window = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_said_once_in_plain_words() {
        assert_eq!(
            BackendFailure::Connect(libc::ECONNREFUSED).to_string(),
            "connection refused"
        );
        assert_eq!(
            BackendFailure::ConnectTimeout(Duration::from_secs(3)).to_string(),
            "no answer within 3s"
        );
    }

    #[test]
    fn a_burst_opens_one_window_and_a_quiet_spell_closes_it() {
        let t0 = Instant::now();
        let mut log = BackendLog::new("127.0.0.1:8080".into(), 0);
        log.failed(BackendFailure::Connect(libc::ECONNREFUSED), t0);
        for i in 1..=36 {
            log.failed(
                BackendFailure::Connect(libc::ECONNREFUSED),
                t0 + Duration::from_millis(i * 100),
            );
        }
        assert_eq!(log.window.as_ref().map(|w| w.more), Some(36));
        log.tick(t0 + WINDOW);
        assert!(log.window.is_none());
    }
}
