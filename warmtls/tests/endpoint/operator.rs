//! What a new operator meets in the first hour: start-up errors that say their
//! cause once with the path and what to do, `check` refusing what `serve`
//! refuses, and a log that is plain text when it goes to a file.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn warmtls(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args(args)
        .arg("--cache")
        .arg(cache)
        .stdin(Stdio::null())
        .output()
        .expect("run warmtls")
}

fn failed_with(out: &Output) -> String {
    assert!(!out.status.success(), "must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn start_up_errors_say_their_cause_once_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();

    // The address is taken (std's listener has no SO_REUSEPORT to share it).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = failed_with(&warmtls(
        &["serve", "--listen", &addr],
        &dir.path().join("a.cache"),
    ));
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains(&addr) && err.contains("ss -ltnp"), "{err}");

    // The cache file's directory does not exist.
    let missing = dir.path().join("no/such/dir");
    let err = failed_with(&warmtls(
        &["serve", "--listen", "127.0.0.1:0"],
        &missing.join("c.cache"),
    ));
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(
        err.contains(&format!("mkdir -p {}", missing.display())),
        "{err}"
    );
    assert!(!missing.exists(), "nothing created");

    // The inspector names no flag it does not have.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .arg("stats")
        .arg(&junk)
        .output()
        .unwrap();
    let err = failed_with(&out);
    assert!(err.contains("not a warmtls cache file"), "{err}");
    assert!(!err.contains("--cache"), "{err}");
}

#[test]
fn check_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    let too_big = ["--cache-capacity", "100000000000"];
    let check = failed_with(&warmtls(&[&["check"][..], &too_big].concat(), &cache));
    let serve = failed_with(&warmtls(
        &[&["serve", "--listen", "127.0.0.1:0"][..], &too_big].concat(),
        &cache,
    ));
    assert!(check.contains("capacity 100000000000"), "{check}");
    assert_eq!(check, serve, "one validation, one message");
    assert!(!cache.exists());
    let ok = warmtls(&["check", "--cache-capacity", "1000"], &cache);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// Whether this network namespace lets servers take data in SYNs.
fn server_tfo_allowed() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|v| v & 0x2 != 0)
}

#[test]
fn a_default_start_logs_plain_text_to_a_file_and_no_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "100",
        ])
        .arg("--cache")
        .arg(dir.path().join("c.cache"))
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("warmtls: listening on"), "{line:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO") && text.contains("serving"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file: {text:?}"
    );
    assert!(!text.contains("WARN"), "{text}");
    let tfo_note = text.matches("TCP Fast Open is off for servers").count();
    assert_eq!(tfo_note, usize::from(!server_tfo_allowed()), "{text}");
}
