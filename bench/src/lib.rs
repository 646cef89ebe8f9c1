//! warmtls-bench: everything that measures or demonstrates the warmtls appliance,
//! kept out of it so the endpoint links only what it runs.
//!
//! - [`fleet`]: the fleet simulator behind `warmtls-bench fleet` and the demo.
//! - [`demo`]: the one-command demo (`cargo run --release -- demo`).
//! - [`handover`]: devices connecting through endpoint hand-overs and, as the
//!   control, plain stop+start restarts (`warmtls-bench handover`).
//! - [`tun`]: TUN devices for the round-trip harness's userspace delay line.
#![deny(unsafe_code)]

pub mod demo;
pub mod fleet;
pub mod handover;
pub mod tun;
