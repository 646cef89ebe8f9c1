//! Devices through endpoint hand-overs: 1,000 devices (half TLS 1.2, half TLS
//! 1.3) at 500 connections/s through five consecutive `warmtls upgrade`s in one
//! run — no connection refused, reset or failed, every device resumes in every
//! phase, each old process exits 0, and the cache file verifies clean. (The
//! stop+start control is `warmtls-bench handover`'s second mode: it measures
//! refusals, it is not pass/fail; bench/RESULTS.md has both.) And the fleet
//! simulator reports refused and reset connections as their own reasons.
use std::net::TcpListener;
use std::time::Duration;

use warmtls_bench::demo::EndpointProgram;
use warmtls_bench::fleet::{Fleet, FleetConfig, Pacing, TlsMix, Verify};
use warmtls_bench::handover::{run_mode, HandoverConfig, Switch};

#[test]
fn five_handovers_at_500_connections_per_second_refuse_nothing_and_resume_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = HandoverConfig {
        exe: EndpointProgram::bench(env!("CARGO_BIN_EXE_warmtls-bench")),
        devices: 1000,
        rate: 500.0,
        switches: 5,
        tls: TlsMix::Mix,
        workers: 2,
        concurrency: 32,
        dir: dir.path().to_path_buf(),
    };
    let m = run_mode(&cfg, Switch::Handover).expect("the run completes");
    let summary = serde_json::to_string_pretty(&m).unwrap();
    assert_eq!(m.phases.len(), 6, "prime and five hand-overs");
    for p in &m.phases {
        assert_eq!(p.connections, 1000, "every device connected: {summary}");
        assert_eq!(p.refused, 0, "{summary}");
        assert_eq!(p.reset, 0, "{summary}");
        assert_eq!(p.failed_total, 0, "{summary}");
    }
    for p in &m.phases[1..] {
        assert!(
            p.resumed_pct >= 99.9,
            "{} resumed {}%: {summary}",
            p.name,
            p.resumed_pct
        );
    }
    assert_eq!(
        m.old_exit_codes, [0; 5],
        "each old process drained and exited 0"
    );
    assert_eq!(m.corrupt_slots, 0, "the cache file verifies clean");
    assert!(m.live_sessions >= 1000, "{summary}");
}

/// Nothing listening: refused. A server that accepts and resets: reset. Both
/// are their own fields, not in `failed`.
#[test]
fn refused_and_reset_connections_are_counted_apart_from_failures() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let fleet_against = |target: String| {
        let mut cfg = FleetConfig::new(target, 20, Verify::Insecure);
        cfg.server_name = Some("localhost".into());
        cfg.tls = TlsMix::Mix;
        cfg.pacing = Pacing::Unpaced;
        cfg.concurrency = 4;
        cfg.limits.total = Duration::from_secs(5);
        Fleet::new(cfg).unwrap()
    };
    let p = fleet_against(format!("127.0.0.1:{port}")).run_phase("closed", false, None);
    assert_eq!(
        (p.connections, p.refused, p.reset, p.failed_total),
        (20, 20, 0, 0),
        "{p:?}"
    );
    assert!(p.failed.is_empty());

    let resetter = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = resetter.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in resetter.incoming().flatten() {
            // Read the ClientHello, then close with SO_LINGER 0: an RST.
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut &s, &mut buf);
            let _ = nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        }
    });
    let p = fleet_against(target).run_phase("reset", false, None);
    assert_eq!(
        (p.connections, p.refused, p.reset, p.failed_total),
        (20, 0, 20, 0),
        "{p:?}"
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!((&json["refused"], &json["reset"]), (&0.into(), &20.into()));
}
