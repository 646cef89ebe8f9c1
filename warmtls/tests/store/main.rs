//! The session store's integration tests: real cache files, real threads and
//! processes, the rustls adapter and the `warmtls-cache` inspector. One test
//! binary (one link) for all of them.
#![forbid(unsafe_code)]
#[path = "../common/needs.rs"]
mod needs;
mod support;

mod cache_cli;
mod crash;
mod encoding;
mod migrate;
mod pending;
mod rustls_adapter;
mod sealed;
mod table;
