//! warmtls: a TLS-terminating endpoint for fleets of low-powered devices.
//!
//! The appliance and only the appliance: the endpoint, the session store and the
//! cache inspector; the binaries (`warmtls`, `warmtls-cache`) are thin shells
//! over it. The fleet simulator, the demo and the benchmarks live in the
//! `warmtls-bench` crate, which depends on this one.
//!
//! - [`store`]: the persistent, memory-mapped session store and its rustls adapter.
//! - [`runtime`]: the per-core event loop, io_uring or epoll (ring, listener, buffers, timers).
//! - [`conn`]: one client connection: TLS driving, backend pipe, lifecycle.
//! - [`config`]: the endpoint's configuration (TOML file + CLI overrides).
//! - [`tls`]: building the rustls `ServerConfig` (certificates, groups, tickets).
//! - [`tier`]: the session tier several endpoints share (Redis/Valkey).
//! - [`metrics`]: the counters, and the one reading of them every report shows.
//! - [`admin`]: the optional metrics listener (Prometheus text format).
//! - [`handover`]: the control socket, and handing the listening sockets to a
//!   new process (upgrades and restarts that refuse no connection).
//! - [`systemd`]: sd_notify, the watchdog and socket activation.
//! - [`cli`]: the `warmtls` command line.
#![deny(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod conn;
pub mod handover;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod store;
pub mod systemd;
pub mod tier;
pub mod tls;
