//! Upgrades and restarts: `warmtls upgrade` (or SIGUSR2) hands the very same
//! listening sockets to a new process while devices keep connecting — nothing
//! refused, reset or failed, every session resumed, the old process exits 0; a
//! new process that cannot start leaves the old one serving and says why; the
//! worker count may change; a second, unrelated instance is refused; a failed
//! start leaves no files; systemd hears READY/RELOADING/MAINPID/STOPPING and
//! the watchdog; socket-activated sockets are used, shared and passed on.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use rustls::{ClientConfig, HandshakeKind};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_warmtls");

/// Every `warmtls serve` a test started, directly or through upgrades. The test
/// process is their subreaper, so a successor whose parent (the old process)
/// has exited becomes our child and its exit status can be checked. Whatever is
/// still running when the test ends (a failed assertion) is killed.
struct Procs(Vec<u32>);

impl Procs {
    fn new() -> Procs {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        Procs(Vec::new())
    }

    /// `warmtls serve ARGS` (stdout piped for the readiness line), with `env`:
    /// its pid and port.
    fn serve<S: AsRef<OsStr>>(&mut self, args: &[S], env: &[(&str, &OsStr)]) -> (u32, u16) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(args)
            .args(matrix_args())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.start(cmd)
    }

    /// Spawn `cmd` (a `warmtls serve`, maybe through a shell that execs it) and
    /// wait for its readiness line.
    fn start(&mut self, mut cmd: Command) -> (u32, u16) {
        let mut child = cmd.spawn().expect("spawn warmtls serve");
        self.0.push(child.id());
        let port = ready_port(&mut child);
        (child.id(), port) // reaped by pid in `exit_status`
    }

    /// `warmtls upgrade` the process serving `ctl` (pid `old`): its successor
    /// is tracked, and the old process must have drained and exited 0.
    /// Returns the successor's pid.
    fn upgrade_from(&mut self, ctl: &Path, old: u32) -> u32 {
        let new = upgrade(ctl).expect("upgrade");
        self.track(new);
        assert_eq!(self.exit_status(old), 0, "the old process exits 0");
        new
    }

    fn track(&mut self, pid: u32) {
        self.0.push(pid);
    }

    /// Wait (up to 15 s) for `pid` to exit and return its exit code.
    fn exit_status(&self, pid: u32) -> i32 {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => panic!("pid {pid} killed by {sig}"),
                // Not (yet) our child: its parent, the older process, still runs.
                Ok(_) | Err(nix::errno::Errno::ECHILD) => {}
                Err(e) => panic!("waitpid {pid}: {e}"),
            }
            assert!(Instant::now() < end, "pid {pid} did not exit within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM `pid` and return its exit code.
    fn stop(&self, pid: u32) -> i32 {
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        self.exit_status(pid)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let pid = Pid::from_raw(pid as i32);
            if kill(pid, Signal::SIGKILL).is_ok() {
                let _ = waitpid(pid, None);
            }
        }
    }
}

/// `--runtime R` when the driver matrix asks for R (`WARMTLS_TEST_RUNTIME`):
/// these tests start `warmtls serve` themselves, and a successor inherits the
/// flag with the rest of the command line.
fn matrix_args() -> Vec<String> {
    matrix_runtime()
        .map(|r| vec!["--runtime".to_string(), r])
        .unwrap_or_default()
}

/// `warmtls upgrade --control-socket CTL`: the new pid, or what it printed.
fn upgrade(ctl: &Path) -> Result<u32, String> {
    let out = Command::new(BIN)
        .arg("upgrade")
        .arg("--control-socket")
        .arg(ctl)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    // "warmtls: pid NEW took over ADDR from pid OLD (draining)"
    stdout
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("unexpected output {stdout:?}"))
}

/// The pid the instance at `ctl` says it has.
fn status_pid(ctl: &Path) -> u32 {
    warmtls::handover::request_status(ctl).expect("status").pid
}

/// Inodes of the TCP sockets listening on `port` (IPv4 and IPv6): the same set
/// before and after an upgrade means the very same sockets, queues included.
fn listening_inodes(port: u16) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if f[3] == "0A" && local_port == Some(port) {
                set.insert(f[9].parse().unwrap());
            }
        }
    }
    set
}

/// The worker threads of `pid`.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|c| c.starts_with("warmtls-w"))
        })
        .count()
}

/// What devices saw while connecting in a loop.
#[derive(Debug, Default)]
struct Seen {
    resumed: u64,
    full: u64,
    failures: Vec<String>,
}

/// Devices connecting one after another (request, whole answer, close) on a
/// few threads until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Seen>>,
}

impl Load {
    fn start(devices: &[Arc<ClientConfig>], addr: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = devices
            .chunks(devices.len().div_ceil(3))
            .map(|chunk| {
                let (chunk, addr, stop) = (chunk.to_vec(), addr.to_string(), stop.clone());
                std::thread::spawn(move || {
                    let mut seen = Seen::default();
                    for d in chunk.iter().cycle() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match request(d, &addr, GET) {
                            Ok((_, resp)) if !resp.ends_with(b"hello") => {
                                seen.failures.push(format!("short answer {resp:?}"))
                            }
                            Ok((HandshakeKind::Resumed, _)) => seen.resumed += 1,
                            Ok(_) => seen.full += 1,
                            Err(e) => seen.failures.push(format!("{:?}: {e}", e.kind())),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stop, and check that no device noticed anything: every connection
    /// answered, and every one resumed.
    fn finish_unnoticed(self) -> Seen {
        let seen = self.finish();
        assert!(seen.failures.is_empty(), "{:?}", seen.failures);
        assert_eq!(seen.full, 0, "every connection resumed: {seen:?}");
        seen
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for t in self.threads {
            let s = t.join().unwrap();
            all.resumed += s.resumed;
            all.full += s.full;
            all.failures.extend(s.failures);
        }
        all
    }
}

/// `n` devices trusting `cert`, each having done its full handshake.
fn primed_devices(cert: &Path, n: usize, addr: &str) -> Vec<Arc<ClientConfig>> {
    let devices = mixed_devices(cert, n);
    for d in &devices {
        let (kind, _) = request(d, addr, GET).expect("priming connection");
        assert_ne!(kind, HandshakeKind::Resumed);
    }
    devices
}

fn ctl_of(cache: &Path) -> PathBuf {
    let mut p = cache.as_os_str().to_owned();
    p.push(".ctl");
    p.into()
}

/// Three upgrades (two by `warmtls upgrade`, one by SIGUSR2) under a steady
/// stream of connections on `listen`.
fn upgrades_refuse_nothing(listen: &str, host: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let ctl = ctl_of(&cache);
    let mut procs = Procs::new();
    let args = [
        "--listen",
        listen,
        "--backend",
        &backend,
        "--workers",
        "2",
        "--cache-capacity",
        "20000",
        "--cache",
        cache.to_str().unwrap(),
    ];
    let (mut pid, port) = procs.serve(&args, &[]);
    let addr = format!("{host}:{port}");
    let mut cert = cache.as_os_str().to_owned();
    cert.push(".cert.pem");
    let devices = primed_devices(Path::new(&cert), 12, &addr);
    let sockets = listening_inodes(port);
    assert_eq!(sockets.len(), 2, "one listener per worker");

    let load = Load::start(&devices, &addr);
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let new = if round < 2 {
            upgrade(&ctl).expect("upgrade")
        } else {
            kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).unwrap();
            assert!(
                wait_for(Duration::from_secs(10), || status_pid(&ctl) != pid),
                "SIGUSR2 upgraded"
            );
            status_pid(&ctl)
        };
        procs.track(new);
        assert_ne!(new, pid);
        assert_eq!(
            procs.exit_status(pid),
            0,
            "the old process drained and exited 0"
        );
        assert_eq!(listening_inodes(port), sockets, "the very same sockets");
        assert_eq!(status_pid(&ctl), new);
        pid = new;
    }
    std::thread::sleep(Duration::from_millis(400));
    let seen = load.finish_unnoticed();
    assert!(seen.resumed > 100, "{seen:?}");

    assert_eq!(procs.stop(pid), 0);
    assert!(!ctl.exists(), "a real stop removes the control socket");
    assert!(listening_inodes(port).is_empty());
}

#[test]
fn upgrades_keep_the_sockets_and_refuse_no_connection() {
    upgrades_refuse_nothing("127.0.0.1:0", "127.0.0.1");
}

#[test]
fn upgrades_on_ipv6_keep_the_sockets_too() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "this test needs IPv6 on loopback (sysctl net.ipv6.conf.lo.disable_ipv6 = 0)"
    );
    upgrades_refuse_nothing("[::1]:0", "[::1]");
}

/// A config file for the endpoint: `top` lines (top-level keys, then any
/// `[[certs]]`), and `cache` lines under `[cache]`.
fn write_config(
    path: &Path,
    listen: &str,
    backend: &str,
    cache: &Path,
    top: &str,
    extra_cache: &str,
) {
    let text = format!(
        "listen = \"{listen}\"\nbackend = \"{backend}\"\n{top}\n[cache]\npath = \"{}\"\ncapacity = 20000\n{extra_cache}\n",
        cache.display()
    );
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let ctl = ctl_of(&cache);
    let (cert, key) = ecdsa_cert(dir.path(), "ecdsa");
    let certs = format!(
        "[[certs]]\ncert = \"{}\"\nkey = \"{}\"",
        cert.display(),
        key.display()
    );
    let cfg = dir.path().join("warmtls.toml");
    let good = |cfg: &Path| write_config(cfg, "127.0.0.1:0", &backend, &cache, &certs, "");
    good(&cfg);
    let mut procs = Procs::new();
    let (pid, port) = procs.serve(&[OsStr::new("--config"), cfg.as_os_str()], &[]);
    let addr = format!("127.0.0.1:{port}");
    let devices = primed_devices(&cert, 9, &addr);
    let load = Load::start(&devices, &addr);

    // A broken certificate.
    let pem = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let e = upgrade(&ctl).unwrap_err();
    assert!(
        e.contains("ecdsa.cert.pem") && e.contains("keeps serving"),
        "{e}"
    );
    std::fs::write(&cert, pem).unwrap();
    // A cache key file that does not exist.
    let missing = dir.path().join("keys").join("cache.key");
    let key_file = format!("key_file = \"{}\"", missing.display());
    write_config(&cfg, "127.0.0.1:0", &backend, &cache, &certs, &key_file);
    let e = upgrade(&ctl).unwrap_err();
    assert!(e.contains("cache.key"), "{e}");
    // A config file that does not parse.
    std::fs::write(&cfg, "listen = \n").unwrap();
    let e = upgrade(&ctl).unwrap_err();
    assert!(e.contains("warmtls.toml"), "{e}");
    // Another listen address: the sockets cannot move.
    write_config(&cfg, "127.0.0.2:0", &backend, &cache, &certs, "");
    let e = upgrade(&ctl).unwrap_err();
    assert!(e.contains("listen") && e.contains("127.0.0.2"), "{e}");
    // Another cache file: nor can the control socket beside it.
    let moved = dir.path().join("d.cache");
    write_config(&cfg, "127.0.0.1:0", &backend, &moved, &certs, "");
    let e = upgrade(&ctl).unwrap_err();
    assert!(
        e.contains("control socket") && e.contains("d.cache.ctl"),
        "{e}"
    );
    assert!(!moved.exists(), "the new cache file was not created");
    assert_eq!(status_pid(&ctl), pid, "the old process serves on");

    // Fixed: the upgrade goes through.
    good(&cfg);
    let new = procs.upgrade_from(&ctl, pid);
    std::thread::sleep(Duration::from_millis(300));
    load.finish_unnoticed();
    assert_eq!(procs.stop(new), 0);
}

#[test]
fn the_worker_count_may_change_across_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let ctl = ctl_of(&cache);
    let cfg = dir.path().join("warmtls.toml");
    write_config(&cfg, "127.0.0.1:0", &backend, &cache, "workers = 2", "");
    let mut procs = Procs::new();
    let (mut pid, port) = procs.serve(&[OsStr::new("--config"), cfg.as_os_str()], &[]);
    let addr = format!("127.0.0.1:{port}");
    let cert = tls_cert_of(&cache);
    let devices = primed_devices(&cert, 9, &addr);
    let two = listening_inodes(port);
    assert_eq!(two.len(), 2);
    let load = Load::start(&devices, &addr);
    // Fewer workers: one worker accepts from both sockets (closing one would
    // reset the connections queued on it).
    write_config(&cfg, "127.0.0.1:0", &backend, &cache, "workers = 1", "");
    let new = procs.upgrade_from(&ctl, pid);
    pid = new;
    assert_eq!(worker_threads(pid), 1);
    assert_eq!(listening_inodes(port), two);
    std::thread::sleep(Duration::from_millis(300));
    // More workers than sockets: one more joins the SO_REUSEPORT group.
    write_config(&cfg, "127.0.0.1:0", &backend, &cache, "workers = 3", "");
    let new = procs.upgrade_from(&ctl, pid);
    pid = new;
    assert_eq!(worker_threads(pid), 3);
    let three = listening_inodes(port);
    assert_eq!(three.len(), 3);
    assert!(three.is_superset(&two));
    std::thread::sleep(Duration::from_millis(300));
    load.finish_unnoticed();
    assert_eq!(procs.stop(pid), 0);
}

/// `GET /metrics` on `addr`: the status line and the body, or why not.
fn scrape(addr: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}

#[test]
fn the_metrics_page_moves_to_the_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let ctl = ctl_of(&cache);
    let cfg = dir.path().join("warmtls.toml");
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let top = format!("metrics_listen = \"{metrics}\"");
    write_config(&cfg, "127.0.0.1:0", &backend, &cache, &top, "");
    let mut procs = Procs::new();
    let (pid, _) = procs.serve(&[OsStr::new("--config"), cfg.as_os_str()], &[]);
    let (status, _) = scrape(&metrics).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    // The running process holds the port while the new one starts: the new
    // one must not fail for it, and takes the port once the old one lets go.
    let new = procs.upgrade_from(&ctl, pid);
    let end = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match scrape(&metrics) {
            Ok((status, body)) if status.contains(" 200 ") => break body,
            other if Instant::now() > end => {
                panic!("no metrics page after the hand-over: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(body.contains("warmtls_connections_total"), "{body}");
    assert_eq!(procs.stop(new), 0);
}

fn tls_cert_of(cache: &Path) -> PathBuf {
    let mut p = cache.as_os_str().to_owned();
    p.push(".cert.pem");
    p.into()
}

/// `warmtls serve ARGS` that must fail: its stderr.
fn serve_fails<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(matrix_args())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_second_unrelated_instance_is_refused_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let mut procs = Procs::new();
    let base = |cache: &Path, listen: &str| {
        vec![
            "--listen".to_string(),
            listen.into(),
            "--backend".into(),
            backend.clone(),
            "--cache-capacity".into(),
            "20000".into(),
            "--cache".into(),
            cache.display().to_string(),
        ]
    };
    let (pid, port) = procs.serve(&base(&cache, "127.0.0.1:0"), &[]);
    let before = files_in(dir.path());

    // The same cache file, even on another port: the control socket answers.
    let e = serve_fails(&base(&cache, "127.0.0.1:0"));
    assert!(
        e.contains(&format!("pid {pid}")) && e.contains("warmtls upgrade"),
        "{e}"
    );
    // The same port with another cache file: SO_REUSEPORT would have let it in.
    let other = tempfile::tempdir().unwrap();
    let e = serve_fails(&base(
        &other.path().join("d.cache"),
        &format!("127.0.0.1:{port}"),
    ));
    assert!(e.contains("already in use"), "{e}");
    assert!(files_in(other.path()).is_empty(), "it created nothing");
    assert_eq!(files_in(dir.path()), before);
    // A port some other server listens on.
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fport = foreign.local_addr().unwrap().port();
    let e = serve_fails(&base(
        &other.path().join("d.cache"),
        &format!("127.0.0.1:{fport}"),
    ));
    assert!(e.contains("already in use"), "{e}");
    assert!(files_in(other.path()).is_empty());

    // Killed without cleaning up: the stale control socket does not block a restart.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert_eq!(
        waitpid(Pid::from_raw(pid as i32), None).unwrap(),
        WaitStatus::Signaled(Pid::from_raw(pid as i32), Signal::SIGKILL, false)
    );
    assert!(ctl_of(&cache).exists());
    let (pid, _) = procs.serve(&base(&cache, &format!("127.0.0.1:{port}")), &[]);
    assert_eq!(status_pid(&ctl_of(&cache)), pid);
    assert_eq!(procs.stop(pid), 0);
}

#[test]
fn a_failed_start_leaves_no_files_behind() {
    let (backend, _) = responder();
    // A broken certificate: checked before the cache file is created.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, b"not a certificate").unwrap();
    let cache = dir.path().join("c.cache");
    let e = serve_fails(&[
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--backend"),
        OsStr::new(&backend),
        OsStr::new("--cache"),
        cache.as_os_str(),
        OsStr::new("--cert"),
        bad.as_os_str(),
        OsStr::new("--key"),
        bad.as_os_str(),
    ]);
    assert!(e.contains("bad.pem"), "{e}");
    assert_eq!(
        files_in(dir.path()),
        BTreeSet::from(["bad.pem".to_string()])
    );
    // A port that is taken, no certificate configured: the self-signed one is
    // not written, the cache not created.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    let e = serve_fails(&[
        OsStr::new("--listen"),
        OsStr::new(&format!("127.0.0.1:{port}")),
        OsStr::new("--backend"),
        OsStr::new(&backend),
        OsStr::new("--cache"),
        cache.as_os_str(),
    ]);
    assert!(e.contains("already in use"), "{e}");
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    // A step after the self-signed certificate is written fails (the cache
    // file is not one): the certificate is removed again, the file kept.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    std::fs::write(&cache, [0x5a; 4096]).unwrap();
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let e = serve_fails(&[
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--backend"),
        OsStr::new(&backend),
        OsStr::new("--cache"),
        cache.as_os_str(),
    ]);
    assert!(e.contains("not a warmtls cache file"), "{e}");
    assert_eq!(
        files_in(dir.path()),
        BTreeSet::from(["c.cache".to_string()])
    );
    assert_eq!(std::fs::read(&cache).unwrap(), vec![0x5a; 4096]);
}

/// What a stand-in for systemd's notify socket received: (sender pid, message).
type Notes = Arc<Mutex<Vec<(i32, String)>>>;

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET, recording
/// each message with its sender's pid (SO_PASSCRED).
fn notify_socket(path: &Path) -> Notes {
    use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let sock = UnixDatagram::bind(path).unwrap();
    setsockopt(&sock, sockopt::PassCred, &true).unwrap();
    let notes: Notes = Default::default();
    let n2 = notes.clone();
    std::thread::spawn(move || loop {
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let Ok(msg) = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        ) else {
            return;
        };
        let mut pid = 0;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmCredentials(cred) = c {
                pid = cred.pid();
            }
        }
        let len = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        n2.lock().unwrap().push((pid, text));
    });
    notes
}

fn wait_note(notes: &Notes, what: impl Fn(&(i32, String)) -> bool) -> (i32, String) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = notes.lock().unwrap().iter().find(|n| what(n)) {
            return n.clone();
        }
        assert!(
            Instant::now() < end,
            "no such notification in {:?}",
            notes.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn systemd_hears_ready_reloading_mainpid_stopping_and_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let ctl = ctl_of(&cache);
    let cfg = dir.path().join("warmtls.toml");
    write_config(&cfg, "127.0.0.1:0", &backend, &cache, "", "");
    let sock = dir.path().join("notify");
    let notes = notify_socket(&sock);
    let mut procs = Procs::new();
    let (old, _) = procs.serve(
        &[OsStr::new("--config"), cfg.as_os_str()],
        &[
            ("NOTIFY_SOCKET", sock.as_os_str()),
            ("WATCHDOG_USEC", OsStr::new("300000")),
        ],
    );
    let old_i = old as i32;
    wait_note(&notes, |(p, m)| *p == old_i && m.starts_with("READY=1"));
    std::thread::sleep(Duration::from_millis(700));
    let pings = |pid: i32| {
        notes
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, m)| *p == pid && m == "WATCHDOG=1")
            .count()
    };
    assert!(pings(old_i) >= 3, "{:?}", notes.lock().unwrap());

    // A failed upgrade (the config no longer parses): reloading, then ready again.
    std::fs::write(&cfg, "listen = \n").unwrap();
    assert!(upgrade(&ctl).is_err());
    wait_note(&notes, |(_, m)| {
        m.starts_with("RELOADING=1\nMONOTONIC_USEC=")
    });
    wait_note(&notes, |(p, m)| {
        *p == old_i && m.starts_with("READY=1") && m.contains("upgrade failed")
    });

    write_config(&cfg, "127.0.0.1:0", &backend, &cache, "", "");
    let new = upgrade(&ctl).unwrap();
    procs.track(new);
    let new_i = new as i32;
    wait_note(&notes, |(p, m)| {
        *p == old_i && m.starts_with(&format!("MAINPID={new}\n"))
    });
    wait_note(&notes, |(p, m)| {
        *p == new_i && m.starts_with("READY=1") && m.contains(&format!("MAINPID={new}"))
    });
    assert_eq!(procs.exit_status(old), 0);
    let old_pings = pings(old_i);
    std::thread::sleep(Duration::from_millis(700));
    assert!(pings(new_i) >= 3, "the new process feeds the watchdog");
    assert_eq!(pings(old_i), old_pings);
    assert!(
        !notes
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.contains("STOPPING=1")),
        "a hand-over is not a stop: {:?}",
        notes.lock().unwrap()
    );
    assert_eq!(procs.stop(new), 0);
    wait_note(&notes, |(p, m)| *p == new_i && m.starts_with("STOPPING=1"));
}

/// The listening socket systemd would pass: `listener` as descriptor 3, with
/// LISTEN_PID naming the process (bash sets it to its own pid, then execs; dash
/// cannot redirect descriptors above 9).
fn activated(listener: &std::net::TcpListener, args: &[String]) -> Command {
    let inherited = nix::unistd::dup(listener).unwrap(); // no close-on-exec
    use std::os::fd::AsRawFd;
    let fd = inherited.as_raw_fd();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" serve \"$@\""
        ))
        .arg(BIN)
        .args(args)
        .args(matrix_args())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    // The dup stays open in this process until the child has it.
    std::mem::forget(inherited);
    cmd
}

#[test]
fn socket_activated_sockets_are_shared_by_workers_and_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = responder();
    let cache = dir.path().join("c.cache");
    let ctl = ctl_of(&cache);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // systemd's socket
    let port = held.local_addr().unwrap().port();
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:1", // overridden by the activated socket
        "--backend",
        &backend,
        "--workers",
        "2",
        "--cache-capacity",
        "20000",
        "--cache",
        cache.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut procs = Procs::new();
    let (pid, got) = procs.start(activated(&held, &args));
    assert_eq!(got, port, "it serves on systemd's socket");
    let addr = format!("127.0.0.1:{port}");
    let devices = primed_devices(&tls_cert_of(&cache), 9, &addr);
    let one = listening_inodes(port);
    assert_eq!(one.len(), 1, "two workers share it, none bound");
    let load = Load::start(&devices, &addr);

    std::thread::sleep(Duration::from_millis(300));
    let new = procs.upgrade_from(&ctl, pid);
    assert_eq!(listening_inodes(port), one, "passed on, not re-bound");
    assert_eq!(worker_threads(new), 2);

    // A plain stop and start, as `systemctl restart` with socket activation:
    // systemd (here, the test) holds the socket, so connections wait in its
    // queue instead of being refused.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(procs.stop(new), 0);
    std::thread::sleep(Duration::from_millis(200));
    let (last, _) = procs.start(activated(&held, &args));
    std::thread::sleep(Duration::from_millis(300));
    load.finish_unnoticed();
    assert_eq!(procs.stop(last), 0);
}

/// The unit files in packaging/ parse, with no unknown settings
/// (`systemd-analyze verify`, its ExecStart= pointed at this build's binary).
#[test]
fn the_systemd_units_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["warmtls.service", "warmtls.socket"] {
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        std::fs::write(dir.path().join(unit), text.replace("/usr/bin/warmtls", BIN)).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("warmtls.service"))
        .arg(dir.path().join("warmtls.socket"))
        .output()
        .expect("systemd-analyze (Debian package systemd; .ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The dedicated user does not exist on a build machine; everything else must be clean.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("User") && !l.contains("user"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "{stderr}");
}
