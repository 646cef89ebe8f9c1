//! warmtls-bench's integration tests: the demo, the fleet simulator's accounting
//! against a real endpoint, devices through endpoint hand-overs, devices that sleep on simulated time, session
//! lineage, and the round-trip harness. One test binary (one link).
#![forbid(unsafe_code)]
#[path = "../../../warmtls/tests/common/needs.rs"]
mod needs;

mod accounting;
mod demo;
mod handover;
mod rtt_netns;
mod session_lineage;
mod sleep;
