//! The endpoint's integration tests: the real `warmtls serve` binary as a child
//! process, driven over real sockets by real TLS clients. One test binary (one
//! link) for all of them; `cargo test --release --test endpoint faults::` runs one
//! module.
mod support;

mod certs;
mod crash;
mod early_data;
mod faults;
mod hostile;
mod load;
mod migration;
mod no_io_uring;
mod openssl;
mod pipe;
mod proxy;
mod rustls_client;
mod sealed;
mod shutdown;
