//! The endpoint's integration tests: the real `warmtls serve` binary as a child
//! process, driven over real sockets by real TLS clients. One test binary (one
//! link) for all of them; `cargo test --release --test endpoint faults::` runs one
//! module. `unsafe` only where a test must (the seccomp filter in `no_io_uring`).
#![deny(unsafe_code)]
mod redis_server;
mod support;

mod certs;
mod cluster;
mod crash;
mod early_data;
mod faults;
mod golden;
mod handover;
mod hostile;
mod http;
mod interop;
mod interop_support;
mod load;
mod lossy;
mod migration;
mod no_io_uring;
mod observability;
mod openssl;
mod operator;
mod pipe;
mod proxy;
mod rustls_client;
mod sealed;
mod shutdown;
