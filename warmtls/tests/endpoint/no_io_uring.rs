//! Where io_uring is forbidden (a seccomp profile, kernel.io_uring_disabled), the
//! endpoint exits non-zero at start-up and says what is wrong and how to check,
//! instead of half-starting. Simulated with a seccomp filter that fails
//! io_uring_setup with EPERM, as container runtimes' default profiles do.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
// The seccomp filter has to be installed between fork and exec (pre_exec).
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
fn io_uring_blocked_by_seccomp_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
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
    let prog_addr = &prog as *const libc::sock_fprog as usize;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmtls"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--cache"])
        .arg(dir.path().join("c.cache"))
        .args(["--cache-capacity", "1000"]);
    // SAFETY: the closure only makes two prctl(2) calls (async-signal-safe) on
    // memory (`filter`, `prog`) that lives until `output()` returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    prog_addr as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
