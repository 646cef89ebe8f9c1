//! The `warmtls-bench` subcommands, one module each.
pub mod economy;
pub mod fleet;
pub mod handover;
pub mod hold;
pub mod lossy;
pub mod netlab;
pub mod rtt;
pub mod sleep;
pub mod store;
