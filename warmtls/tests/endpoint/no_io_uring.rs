//! Where io_uring is forbidden — a container runtime's default seccomp profile,
//! `kernel.io_uring_disabled` — the endpoint runs its epoll driver (`runtime =
//! "auto"`, the default) and says so once; asked for io_uring explicitly, it
//! exits non-zero at start-up saying what is wrong and how to check, instead
//! of half-starting. Simulated with a seccomp filter that fails io_uring_setup
//! with EPERM, as Docker's, containerd's and Kubernetes' default profiles do.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
// The seccomp filter has to be installed between fork and exec (pre_exec).
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::support::{mixed_devices, responder, round, Launch, Server};

/// Make `cmd`'s process run under a seccomp filter that fails io_uring_setup
/// with EPERM and allows everything else.
fn block_io_uring(cmd: &mut Command) {
    // SAFETY: the closure only builds a filter on its stack and makes two
    // prctl(2) calls (async-signal-safe, no allocation) in the forked child.
    unsafe {
        cmd.pre_exec(|| {
            // nr == io_uring_setup ? ERRNO(EPERM) : ALLOW
            let filter = [
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0, // offsetof(struct seccomp_data, nr)
                },
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_io_uring_setup as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn io_uring_blocked_by_seccomp_falls_back_to_epoll_and_resumes_2000_devices_across_a_restart() {
    const DEVICES: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    let (backend, _) = responder();
    let logs = [dir.path().join("first.log"), dir.path().join("second.log")];
    // `auto` whatever the driver matrix asks for: the fallback is the point.
    let info = [("RUST_LOG".to_string(), "info".to_string())];
    let start = |log| {
        Server::launch(
            &cache,
            &backend,
            &["--runtime", "auto"],
            &Launch {
                env: &info,
                stderr: Some(log),
                prepare: Some(&block_io_uring),
                ..Launch::default()
            },
        )
    };
    let mut server = start(&logs[0]);
    let devices = mixed_devices(&server.cert_path(), DEVICES);
    assert_eq!(
        round(&devices, &server.addr()),
        (DEVICES, 0),
        "first round: full handshakes"
    );
    let st = server.stats();
    assert_eq!(st["runtime"], "epoll", "{st}");
    assert_eq!(st["full_handshakes"], DEVICES as u64, "{st}");
    assert!(server.stop(), "a clean exit on SIGTERM");

    let mut server = start(&logs[1]);
    assert_eq!(
        round(&devices, &server.addr()),
        (0, DEVICES),
        "every device resumes after the restart"
    );
    let st = server.stats();
    assert_eq!(st["runtime"], "epoll", "{st}");
    assert_eq!(st["resumed_handshakes"], DEVICES as u64, "{st}");
    assert!(server.stop(), "a clean exit on SIGTERM");

    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        let said: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("running the epoll driver"))
            .collect();
        assert_eq!(said.len(), 1, "the fallback is said once per start: {text}");
        assert!(said[0].contains("WARN"), "{text}");
        for why in [
            "io_uring is not available",
            "seccomp",
            "kernel.io_uring_disabled",
        ] {
            assert!(said[0].contains(why), "names {why:?}: {text}");
        }
        assert!(
            text.contains("runtime=\"epoll\""),
            "the serving line names the driver: {text}"
        );
    }
}

#[test]
fn io_uring_asked_for_but_blocked_by_seccomp_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmtls"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cache"])
        .arg(dir.path().join("c.cache"))
        .args(["--cache-capacity", "1000", "--runtime", "io_uring"]);
    block_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(!out.status.success(), "must not start: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no readiness line"
    );
    assert!(err.contains("io_uring is not available"), "{err}");
    assert!(
        err.contains("kernel.io_uring_disabled"),
        "how to check: {err}"
    );
    assert!(err.contains("seccomp"), "names seccomp: {err}");
    assert!(
        !dir.path().join("c.cache").exists(),
        "nothing created before the check"
    );
}
