//! The per-core runtime: one io_uring, one SO_REUSEPORT listener and one slab of
//! connections per worker thread. `unsafe` lives here (and in `store::map`)
//! only: handing buffers and descriptors to the kernel. The crate denies it;
//! each file that needs it (`ring`, `sockopt`, `worker`) allows it for itself.

pub mod fdpass;
pub mod listener;
pub mod pool;
pub mod ring;
pub mod sockopt;
pub mod timer;
pub mod token;
pub mod worker;
