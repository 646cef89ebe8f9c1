//! kill -9 under load: every session a device completed before the kill resumes
//! after a restart on the same cache file, and the file verifies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use rustls::HandshakeKind;

#[test]
fn sessions_survive_repeated_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let mut server = Server::start(&cache, &backend, &[]);
    let cert = server.cert_path();
    let devices = mixed_devices(&cert, 300);
    // Whether each device's last connection completed (so it holds a session the
    // server has stored).
    let completed = Arc::new(Mutex::new(vec![false; devices.len()]));
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut checked = 0;
    for cycle in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.addr();
        let load: Vec<_> = (0..4)
            .map(|t| {
                let (devices, completed, stop, addr) = (devices.clone(), completed.clone(), stop.clone(), addr.clone());
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let ok = matches!(request(&devices[i], &addr, GET), Ok((_, ref body)) if body.ends_with(b"hello"));
                        completed.lock().unwrap()[i] = ok;
                        i = (i + 4) % devices.len();
                    }
                })
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Kill at a random moment once the load has completed some connections
        // (waiting on progress, not on a fixed time, keeps this meaningful on a
        // loaded machine).
        assert!(
            wait_for(Duration::from_secs(30), || completed
                .lock()
                .unwrap()
                .iter()
                .filter(|&&c| c)
                .count()
                > 60),
            "cycle {cycle}: the load completes connections"
        );
        std::thread::sleep(Duration::from_millis(rng % 500));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        for h in load {
            h.join().unwrap();
        }
        drop(server);

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
            .arg("verify")
            .arg(&cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cycle {cycle}: verify after kill -9:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );

        server = Server::start(&cache, &backend, &[]);
        let done: Vec<usize> = completed
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, &c)| c)
            .map(|(i, _)| i)
            .collect();
        assert!(
            done.len() > 50,
            "cycle {cycle}: the load must have completed connections ({})",
            done.len()
        );
        for &i in &done {
            let (kind, body) =
                request(&devices[i], &server.addr(), GET).expect("device reconnects");
            assert!(body.ends_with(b"hello"));
            assert_eq!(
                kind,
                HandshakeKind::Resumed,
                "cycle {cycle}: device {i}'s session was lost to kill -9"
            );
            checked += 1;
        }
    }
    assert!(checked > 150);
    let st = server.stats();
    assert_eq!(
        st["store"]["corrupt"], 0,
        "no corrupt session was ever met: {st}"
    );
}
