//! Tests that need what an ordinary user lacks (root for network namespaces and
//! mounts). CI runs as root and runs them. Anywhere else such a test fails and
//! says what it needs, unless `WARMTLS_SKIP_ROOT_TESTS=1` asks to skip it; a
//! skipped test then prints a SKIPPED line past cargo's output capture, so a
//! skip is never a silent "ok".
//!
//! Shared by the test binaries of both crates (`#[path]`-included).
#![allow(dead_code)]

use std::io::Write;

/// Set to 1 to skip, loudly, the tests this host cannot run.
pub const SKIP_VAR: &str = "WARMTLS_SKIP_ROOT_TESTS";

/// Whether the process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The calling test cannot run here because it lacks `what`: fail with the
/// reason, or, with [`SKIP_VAR`] set, print a SKIPPED line and return so the
/// test can return.
pub fn unavailable(what: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| v == "1");
    if !skip {
        panic!(
            "{test} needs {what}, which this run lacks. Run the tests as root (CI does), \
             or set {SKIP_VAR}=1 to skip the tests that need it (they are then reported \
             as SKIPPED)"
        );
    }
    // Straight to the process's stderr: libtest captures print!/eprint! of a
    // passing test, not writes to the handle.
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED {test}: needs {what} ({SKIP_VAR}=1)"
    );
}

/// True if running as root; else [`unavailable`] and false.
pub fn root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    unavailable(&format!("root ({what})"));
    false
}
