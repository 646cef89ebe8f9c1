//! The per-core runtime: one thread, one SO_REUSEPORT listener and one slab of
//! connections per worker, driven by io_uring (`worker`) or, where io_uring
//! cannot be set up or `runtime = "epoll"` says so, by epoll (`epoll`); what
//! both drivers share is in `slots`. `unsafe` lives here (and in `store::map`)
//! only: handing buffers and descriptors to the kernel. The crate denies it;
//! each file that needs it (`ring`, `sockopt`, `listener`, `worker`) allows it
//! for itself.

pub mod epoll;
pub mod fdpass;
pub mod listener;
pub mod pool;
pub mod ring;
pub mod slots;
pub mod sockopt;
pub mod timer;
pub mod token;
pub mod worker;

use crate::config::Runtime;

/// The event loop the workers run, as chosen at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EventLoop {
    #[serde(rename = "io_uring")]
    IoUring,
    #[serde(rename = "epoll")]
    Epoll,
}

impl EventLoop {
    /// The loop `wanted` asks for. `auto` takes io_uring if this process may
    /// set it up, else epoll, and says so once, with the reason; `io_uring`
    /// fails with the reason instead. Touches nothing but a probe ring.
    pub fn choose(wanted: Runtime) -> Result<EventLoop, ring::RingError> {
        match wanted {
            Runtime::Epoll => Ok(EventLoop::Epoll),
            Runtime::IoUring => ring::Ring::probe().map(|()| EventLoop::IoUring),
            Runtime::Auto => match ring::Ring::probe() {
                Ok(()) => Ok(EventLoop::IoUring),
                Err(why) => {
                    tracing::warn!(
                        "running the epoll driver: {why}. Connections, TLS, the cache and the \
                         stats work the same; io_uring costs fewer system calls per connection. \
                         `runtime = \"epoll\"` (--runtime epoll) says this is intended and \
                         silences this warning"
                    );
                    Ok(EventLoop::Epoll)
                }
            },
        }
    }

    /// Its name, as `runtime` spells it.
    pub fn name(self) -> &'static str {
        match self {
            EventLoop::IoUring => "io_uring",
            EventLoop::Epoll => "epoll",
        }
    }

    /// Run one worker on this thread until shutdown, reporting its start-up
    /// through `ready`.
    pub fn run(
        self,
        setup: slots::WorkerSetup,
        ready: std::sync::mpsc::Sender<Result<(), String>>,
    ) {
        match self {
            EventLoop::IoUring => worker::run(setup, ready),
            EventLoop::Epoll => epoll::run(setup, ready),
        }
    }
}
