//! The interop matrix: the TLS stacks devices run — wolfSSL and Mbed TLS (small
//! C clients built here against Debian's libraries), GnuTLS, `openssl
//! s_client` and rustls — against the real endpoint, through a counting relay.
//! Per client and TLS version: a full handshake, five resumptions, a restart of
//! the endpoint, two more resumptions, 0-RTT where the client has it, the
//! constrained set-ups devices choose (one cipher suite, P-256 only, no SNI, a
//! record size limit), and the bytes on the wire per handshake kind.
//!
//! The table it prints is the one in bench/RESULTS.md:
//! `cargo test --release -p warmtls --test endpoint interop:: -- --nocapture`
//! (also written to `target/tmp/interop-matrix.md`). With
//! `WARMTLS_CAPTURE_HELLOS=DIR` it also writes each device's ClientHellos to
//! DIR (warmtls/tests/fixtures/hello/ was made so).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::interop_support::{self, backend, device, Attempt, DeviceSpec, Relay, Stack, Versions};
use crate::support::{wait_for, Server};

/// Resumptions before the restart, and after it.
const RESUMES: usize = 5;
const AFTER_RESTART: usize = 2;

/// The endpoint set-ups the matrix runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// The shipped defaults (the wolfSSL ticket rule on).
    Default,
    /// Defaults plus `early_data = 1024`.
    EarlyData,
    /// `ticket_rules = []`: what wolfSSL met before the rule existed.
    RulesOff,
    /// Defaults plus `max_record_size = 4096`.
    RecordCap,
}

impl Endpoint {
    const ALL: [Endpoint; 4] = [
        Endpoint::Default,
        Endpoint::EarlyData,
        Endpoint::RulesOff,
        Endpoint::RecordCap,
    ];

    fn config(self) -> &'static str {
        match self {
            Endpoint::Default => "",
            Endpoint::EarlyData => "early_data = 1024\n",
            Endpoint::RulesOff => "ticket_rules = []\n",
            Endpoint::RecordCap => "max_record_size = 4096\n",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Endpoint::Default => "defaults",
            Endpoint::EarlyData => "`early_data = 1024`",
            Endpoint::RulesOff => "`ticket_rules = []`",
            Endpoint::RecordCap => "`max_record_size = 4096`",
        }
    }
}

/// What a cell must show.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Full, then every reconnect resumed, before and after the restart.
    Resumes(&'static str),
    /// Every reconnect resumed with its request accepted as 0-RTT data.
    ZeroRtt,
    /// Every connection succeeds as a full handshake of this version.
    FullOnly(&'static str),
    /// Every connection fails, the device's error containing this.
    Fails(&'static str),
}

struct Cell {
    /// Names its captured ClientHellos (tests/fixtures/hello/ID.bin).
    id: &'static str,
    label: &'static str,
    spec: DeviceSpec,
    endpoint: Endpoint,
    expect: Expect,
}

fn cell(
    id: &'static str,
    label: &'static str,
    spec: DeviceSpec,
    endpoint: Endpoint,
    expect: Expect,
) -> Cell {
    Cell {
        id,
        label,
        spec,
        endpoint,
        expect,
    }
}

fn cells() -> Vec<Cell> {
    use Endpoint::*;
    use Expect::*;
    use Stack::*;
    use Versions::*;
    let d = DeviceSpec::new;
    let early = |stack| DeviceSpec {
        early_data: true,
        ..d(stack, Tls13)
    };
    // What a constrained device configures: one AES-128-GCM suite, P-256
    // only, no SNI, a 4 KiB record limit, and an answer bigger than that.
    let small = |stack, versions, suites| DeviceSpec {
        sni: false,
        suites: Some(suites),
        p256_only: true,
        record_limit: Some(4096),
        path: "/8k",
        ..d(stack, versions)
    };
    let only = |stack, versions, suites| DeviceSpec {
        suites: Some(suites),
        ..d(stack, versions)
    };
    vec![
        cell(
            "rustls-tls13",
            "",
            d(Rustls, Tls13),
            Default,
            Resumes("TLSv1.3"),
        ),
        cell(
            "rustls-tls12",
            "",
            d(Rustls, Tls12),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell(
            "openssl-tls13",
            "",
            d(OpenSsl, Tls13),
            Default,
            Resumes("TLSv1.3"),
        ),
        cell(
            "openssl-tls12",
            "",
            d(OpenSsl, Tls12),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell(
            "gnutls-tls13",
            "",
            d(GnuTls, Tls13),
            Default,
            Resumes("TLSv1.3"),
        ),
        cell(
            "gnutls-tls12",
            "",
            d(GnuTls, Tls12),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell(
            "wolfssl-tls13",
            "TLS 1.3 method",
            d(WolfSsl, Tls13),
            Default,
            FullOnly("TLSv1.3"),
        ),
        cell(
            "wolfssl-any",
            "any-version method",
            d(WolfSsl, Any),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell(
            "wolfssl-tls12",
            "",
            d(WolfSsl, Tls12),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell(
            "mbedtls-tls12",
            "",
            d(MbedTls, Tls12),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell("rustls-0rtt", "0-RTT", early(Rustls), EarlyData, ZeroRtt),
        cell("openssl-0rtt", "0-RTT", early(OpenSsl), EarlyData, ZeroRtt),
        cell("gnutls-0rtt", "0-RTT", early(GnuTls), EarlyData, ZeroRtt),
        cell(
            "wolfssl-tls13-no-rule",
            "TLS 1.3 method, no rule",
            d(WolfSsl, Tls13),
            RulesOff,
            Fails("-425"),
        ),
        cell(
            "wolfssl-any-no-rule",
            "any-version method, no rule",
            d(WolfSsl, Any),
            RulesOff,
            Fails("-425"),
        ),
        cell(
            "wolfssl-tls12-ccm8",
            "ECDHE-ECDSA-AES128-CCM-8 only",
            only(WolfSsl, Tls12, "ECDHE-ECDSA-AES128-CCM-8"),
            Default,
            Fails("handshake"),
        ),
        cell(
            "wolfssl-tls13-ccm8",
            "TLS13-AES128-CCM-8-SHA256 only",
            only(WolfSsl, Tls13, "TLS13-AES128-CCM-8-SHA256"),
            Default,
            Fails("handshake"),
        ),
        cell(
            "mbedtls-tls12-ccm8",
            "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8 only",
            only(MbedTls, Tls12, "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8"),
            Default,
            Fails("handshake"),
        ),
        cell(
            "wolfssl-tls12-small",
            "small: AES-128-GCM, P-256, no SNI, MFL 4096",
            small(WolfSsl, Tls12, "ECDHE-ECDSA-AES128-GCM-SHA256"),
            Default,
            Resumes("TLSv1.2"),
        ),
        cell(
            "wolfssl-tls12-small-capped",
            "small: AES-128-GCM, P-256, no SNI, MFL 4096",
            small(WolfSsl, Tls12, "ECDHE-ECDSA-AES128-GCM-SHA256"),
            RecordCap,
            Resumes("TLSv1.2"),
        ),
        cell(
            "wolfssl-tls13-small",
            "small: TLS 1.3 AES-128-GCM, P-256, no SNI, MFL 4096",
            small(WolfSsl, Tls13, "TLS13-AES128-GCM-SHA256"),
            RecordCap,
            FullOnly("TLSv1.3"),
        ),
        cell(
            "mbedtls-tls12-small",
            "small: AES-128-GCM, P-256, no SNI, MFL 4096",
            small(MbedTls, Tls12, "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"),
            RecordCap,
            Resumes("TLSv1.2"),
        ),
        cell(
            "gnutls-tls13-small",
            "small: AES-128-GCM, P-256, no SNI, record_size_limit 4096",
            small(GnuTls, Tls13, "NORMAL:-CIPHER-ALL:+AES-128-GCM"),
            RecordCap,
            Resumes("TLSv1.3"),
        ),
    ]
}

/// A running endpoint for each set-up, restartable on the same cache file.
struct Endpoints {
    dir: std::path::PathBuf,
    backend: String,
    running: Vec<(Endpoint, Server)>,
}

impl Endpoints {
    fn start(dir: &Path, backend: String) -> Endpoints {
        let mut e = Endpoints {
            dir: dir.to_path_buf(),
            backend,
            running: Vec::new(),
        };
        for which in Endpoint::ALL {
            let s = e.start_one(which);
            e.running.push((which, s));
        }
        e
    }

    fn start_one(&self, which: Endpoint) -> Server {
        let name = format!("{which:?}").to_lowercase();
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, which.config()).unwrap();
        let config = config.to_str().unwrap().to_string();
        Server::start(
            &self.dir.join(format!("{name}.cache")),
            &self.backend,
            &["--config", &config],
        )
    }

    fn get(&self, which: Endpoint) -> &Server {
        &self.running.iter().find(|(w, _)| *w == which).unwrap().1
    }

    /// SIGTERM every endpoint and start it again on its cache file.
    fn restart(&mut self) {
        for i in 0..self.running.len() {
            let which = self.running[i].0;
            assert!(self.running[i].1.stop(), "{which:?} stopped cleanly");
            self.running[i].1 = self.start_one(which);
        }
    }
}

struct Outcome {
    before: Vec<Attempt>,
    after: Vec<Attempt>,
}

#[test]
fn interop_matrix() {
    let dir = tempfile::tempdir().unwrap();
    interop_support::c_devices(); // build once, before the clock matters
    let mut endpoints = Endpoints::start(dir.path(), backend());
    let cells = cells();
    let relays: Vec<Arc<Relay>> = cells
        .iter()
        .map(|c| Arc::new(Relay::start(&endpoints.get(c.endpoint).addr())))
        .collect();
    let mut devices: Vec<_> = cells
        .iter()
        .zip(&relays)
        .map(|(c, r)| {
            let ca = endpoints.get(c.endpoint).cert_path();
            device(&c.spec, r.clone(), &ca, dir.path())
        })
        .collect();

    let run = |devices: &mut Vec<Box<dyn interop_support::Device>>, n: usize| {
        std::thread::scope(|sc| {
            let hs: Vec<_> = devices
                .iter_mut()
                .map(|d| sc.spawn(move || (0..n).map(|_| d.connect()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let before = run(&mut devices, 1 + RESUMES);
    endpoints.restart();
    for (c, r) in cells.iter().zip(&relays) {
        r.set_upstream(&endpoints.get(c.endpoint).addr());
    }
    let after = run(&mut devices, AFTER_RESTART);
    drop(devices);

    let outcomes: Vec<Outcome> = before
        .into_iter()
        .zip(after)
        .map(|(before, after)| Outcome { before, after })
        .collect();
    if let Some(out) = std::env::var_os("WARMTLS_CAPTURE_HELLOS") {
        capture_hellos(Path::new(&out), &cells, &outcomes);
    }
    let table = table(&cells, &outcomes);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-matrix.md");
    std::fs::write(&path, &table).unwrap();
    println!("{table}\n(written to {})", path.display());

    let mut wrong = Vec::new();
    for (c, o) in cells.iter().zip(&outcomes) {
        if let Err(why) = check(c, o) {
            wrong.push(format!("{} {}: {why}", c.spec.stack.name(), c.label));
        }
    }
    assert!(wrong.is_empty(), "cells that failed:\n{}", wrong.join("\n"));
}

/// Does the cell show what it must?
fn check(c: &Cell, o: &Outcome) -> Result<(), String> {
    let all: Vec<&Attempt> = o.before.iter().chain(&o.after).collect();
    let first = &o.before[0];
    let later = || all.iter().skip(1);
    match c.expect {
        Expect::Fails(what) => {
            if let Some(a) = all.iter().find(|a| a.ok || !a.detail.contains(what)) {
                return Err(format!(
                    "expected a failure with {what:?}, got {:?}",
                    a.detail
                ));
            }
            return Ok(());
        }
        _ => {
            if let Some(a) = all.iter().find(|a| !a.ok) {
                return Err(format!("a connection failed: {}", a.detail));
            }
        }
    }
    match c.expect {
        Expect::Resumes(v) | Expect::FullOnly(v) => {
            if let Some(a) = all.iter().find(|a| a.version != v) {
                return Err(format!("expected {v}, got {:?}", a.detail));
            }
        }
        _ => {}
    }
    if first.resumed {
        return Err("the first connection resumed".into());
    }
    match c.expect {
        Expect::Resumes(_) => {
            if let Some(a) = later().find(|a| !a.resumed) {
                return Err(format!("a reconnect did not resume: {}", a.detail));
            }
        }
        Expect::ZeroRtt => {
            if let Some(a) = later().find(|a| !a.resumed || !a.early_data_accepted) {
                return Err(format!("a reconnect without accepted 0-RTT: {}", a.detail));
            }
        }
        Expect::FullOnly(_) => {
            if let Some(a) = later().find(|a| a.resumed) {
                return Err(format!("resumed unexpectedly: {}", a.detail));
            }
        }
        Expect::Fails(_) => unreachable!(),
    }
    if c.endpoint == Endpoint::RecordCap {
        // 4096 plaintext bytes, plus the AEAD expansion (TLS 1.2 GCM: 8-byte
        // explicit nonce + 16-byte tag; TLS 1.3: content type + tag).
        if let Some(a) = all
            .iter()
            .find(|a| a.wire.largest_server_record() > 4096 + 24)
        {
            return Err(format!(
                "a {}-byte record exceeds max_record_size",
                a.wire.largest_server_record()
            ));
        }
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn bytes(a: Option<&Attempt>) -> String {
    match a {
        Some(a) if a.ok => format!("{} / {}", thousands(a.wire.up), thousands(a.wire.down)),
        _ => "–".into(),
    }
}

fn table(cells: &[Cell], outcomes: &[Outcome]) -> String {
    let mut t = String::new();
    t.push_str(
        "| device | TLS | endpoint | full ↑/↓ B | reconnect ↑/↓ B | after restart ↑/↓ B | \
         NST record | largest record | outcome |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (c, o) in cells.iter().zip(outcomes) {
        let all: Vec<&Attempt> = o.before.iter().chain(&o.after).collect();
        let first = &o.before[0];
        let version = all
            .iter()
            .find(|a| a.ok)
            .map(|a| a.version.replace("TLSv", ""))
            .unwrap_or_else(|| match c.spec.versions {
                Versions::Tls12 => "1.2".into(),
                Versions::Tls13 => "1.3".into(),
                Versions::Any => "1.3+1.2".into(),
            });
        let resumed_before = o.before[1..].iter().filter(|a| a.resumed).count();
        let resumed_after = o.after.iter().filter(|a| a.resumed).count();
        let early = all.iter().filter(|a| a.early_data_accepted).count();
        let failed = all.iter().filter(|a| !a.ok).count();
        let outcome = if failed == all.len() {
            format!("**fails {failed}/{}**: {}", all.len(), first.detail.trim())
        } else if failed > 0 {
            format!("**{failed}/{} failed**: {}", all.len(), first.detail.trim())
        } else if early > 0 {
            format!(
                "0-RTT accepted {}/{RESUMES}, {}/{AFTER_RESTART} after restart",
                o.before.iter().filter(|a| a.early_data_accepted).count(),
                o.after.iter().filter(|a| a.early_data_accepted).count()
            )
        } else if resumed_before + resumed_after == 0 {
            "connects every time, never resumes".into()
        } else {
            format!(
                "resumed {resumed_before}/{RESUMES}, {resumed_after}/{AFTER_RESTART} after restart"
            )
        };
        let nst = all
            .iter()
            .filter(|a| a.ok && a.version == "TLSv1.3" && !a.early_data_accepted)
            .filter_map(|a| a.wire.ticket_record())
            .next();
        let nst = match (nst, version.as_str()) {
            (Some(n), "1.3") if !matches!(c.expect, Expect::FullOnly(_)) => format!("{n} B"),
            _ => "–".into(),
        };
        let largest = all
            .iter()
            .filter(|a| a.ok)
            .map(|a| a.wire.largest_server_record())
            .max()
            .map(|n| thousands(n as u64))
            .unwrap_or_else(|| "–".into());
        let label = if c.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.label)
        };
        let _ = writeln!(
            t,
            "| {}{label} | {version} | {} | {} | {} | {} | {nst} | {largest} | {outcome} |",
            c.spec.stack.name(),
            c.endpoint.name(),
            bytes(Some(first)),
            bytes(o.before.get(1)),
            bytes(o.after.first()),
        );
    }
    t
}

/// Each device's first ClientHello, named after the cell.
fn capture_hellos(dir: &Path, cells: &[Cell], outcomes: &[Outcome]) {
    std::fs::create_dir_all(dir).unwrap();
    for (c, o) in cells.iter().zip(outcomes) {
        let name = c.id;
        let hello = &o.before[0].wire.first_flight;
        std::fs::write(dir.join(format!("{name}.bin")), hello).unwrap();
        if o.before.len() > 1 {
            let resumed = &o.before[1].wire.first_flight;
            std::fs::write(dir.join(format!("{name}-reconnect.bin")), resumed).unwrap();
        }
    }
}

/// `openssl s_server` on a free loopback port: stateful TLS 1.3 tickets
/// (`-no_ticket`: the ticket is a 32-byte session ID, like warmtls' stateful
/// tickets), one per handshake, OpenSSL's 8-byte ticket nonce; `GET /hello`
/// answers `hello` (`-WWW` serves files from its directory).
struct OpenSslServer(std::process::Child, String);

impl OpenSslServer {
    fn start(cert: &Path, key: &Path, dir: &Path) -> OpenSslServer {
        std::fs::write(dir.join("hello"), "hello").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = std::process::Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &addr,
                "-WWW",
                "-num_tickets",
                "1",
                "-no_ticket",
            ])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server (apt-get install openssl)");
        assert!(
            wait_for(std::time::Duration::from_secs(10), || {
                std::net::TcpStream::connect(&addr).is_ok()
            }),
            "openssl s_server listens on {addr}"
        );
        OpenSslServer(child, addr)
    }
}

impl Drop for OpenSslServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// rustls' 32-byte ticket nonce, measured: the same device against warmtls and
/// against OpenSSL (8-byte nonce), both issuing one stateful ticket with a
/// 32-byte identity per handshake. Every TLS 1.3 handshake, full or resumed,
/// carries the difference. wolfSSL's defaults resume against the OpenSSL
/// server: the nonce length is the only thing in its way.
#[test]
fn rustls_ticket_nonce_costs_24_bytes_per_tls13_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = Server::start(&dir.path().join("c.cache"), &backend(), &[]);
    let cert = endpoint.cert_path();
    let key = dir.path().join("c.cache.key.pem");
    let openssl = OpenSslServer::start(&cert, &key, dir.path());
    let spec = |stack| DeviceSpec {
        path: "/hello",
        ..DeviceSpec::new(stack, Versions::Tls13)
    };

    // The NewSessionTicket record of a full and of a resumed handshake.
    let tickets = |addr: &str, stack: Stack| -> Vec<usize> {
        let relay = Arc::new(Relay::start(addr));
        let mut d = device(&spec(stack), relay, &cert, dir.path());
        (0..2)
            .map(|i| {
                let a = d.connect();
                assert!(
                    a.ok && a.resumed == (i > 0),
                    "{stack:?} via {addr}: {}",
                    a.detail
                );
                a.wire.ticket_record().expect("a NewSessionTicket")
            })
            .collect()
    };
    for stack in [Stack::GnuTls, Stack::Rustls] {
        let ours = tickets(&endpoint.addr(), stack);
        let theirs = tickets(&openssl.1, stack);
        println!(
            "{stack:?}: NewSessionTicket record {ours:?} B from warmtls, {theirs:?} B from OpenSSL"
        );
        assert_eq!(
            ours[0], ours[1],
            "the same for a full and a resumed handshake"
        );
        assert_eq!(ours[0], theirs[0] + 24, "32-byte nonce against 8");
    }
    // wolfSSL's library defaults resume against 8-byte nonces.
    let relay = Arc::new(Relay::start(&openssl.1));
    let mut wolf = device(&spec(Stack::WolfSsl), relay, &cert, dir.path());
    let full = wolf.connect();
    let resumed = wolf.connect();
    assert!(full.ok && !full.resumed, "{}", full.detail);
    assert!(resumed.ok && resumed.resumed, "{}", resumed.detail);
    if let Some(out) = std::env::var_os("WARMTLS_CAPTURE_HELLOS") {
        let out = Path::new(&out);
        std::fs::create_dir_all(out).unwrap();
        std::fs::write(
            out.join("wolfssl-tls13-resumption-8-byte-nonce.bin"),
            &resumed.wire.first_flight,
        )
        .unwrap();
    }
}
