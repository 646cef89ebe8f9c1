//! warmtls: a TLS-terminating endpoint for fleets of low-powered devices.
//!
//! The library holds every part; the three binaries (`warmtls`, `warmtls-bench`,
//! `warmtls-cache`) are thin shells over it.
//!
//! - [`store`]: the persistent, memory-mapped session store and its rustls adapter.
//! - [`runtime`]: the per-core io_uring event loop (ring, listener, buffers, timers).
//! - [`conn`]: one client connection: TLS driving, backend pipe, lifecycle.
//! - [`config`]: the endpoint's configuration (TOML file + CLI overrides).
//! - [`tls`]: building the rustls `ServerConfig` (certificates, groups, tickets).
//! - [`fleet`]: the fleet simulator behind `warmtls-bench fleet` and the demo.
//! - [`demo`]: the one-command demo (`warmtls demo`).
#![deny(unsafe_code)]

pub mod config;
pub mod conn;
pub mod demo;
pub mod fleet;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod store;
pub mod tls;
