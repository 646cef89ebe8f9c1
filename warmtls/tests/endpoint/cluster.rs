//! Several endpoints sharing sessions through a real Redis (Debian's
//! `redis-server`, started here on loopback): devices that alternate between two
//! endpoints resume, devices of a killed endpoint resume on the other, a 0-RTT
//! first flight replayed to another endpoint never reaches the backend twice,
//! and the tier failing — stopped, frozen, restarted empty — costs full
//! handshakes, never a failed connection.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, HandshakeKind};

use crate::early_data::{early_device, early_request, replay};
use crate::redis_server::{RedisCluster, RedisServer};
use crate::support::*;

/// How long a parked connection waits for the tier here: generous, since a
/// busy 2-core CI machine runs the endpoints, Redis and the devices at once.
const LOOKUP_TIMEOUT: &str = "200ms";

/// Endpoints sharing one tier, all presenting the first one's certificate.
struct Fleet {
    // Declared first, dropped first: the endpoints stop before their directory goes.
    servers: Vec<Server>,
    dir: tempfile::TempDir,
    backend: String,
    tier: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
}

impl Fleet {
    /// `n` endpoints on the tier reached with `tier` (the `--cluster-*` flags).
    fn start(n: usize, backend: &str, tier: &[&str], extra: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fleet {
            cert: dir.path().join("e0.cache.cert.pem"),
            key: dir.path().join("e0.cache.key.pem"),
            dir,
            backend: backend.to_string(),
            tier: tier.iter().map(|s| s.to_string()).collect(),
            servers: Vec::new(),
        };
        for i in 0..n {
            let s = f.launch(i, extra);
            f.servers.push(s);
        }
        f
    }

    fn launch(&self, i: usize, extra: &[&str]) -> Server {
        let cache = self.dir.path().join(format!("e{i}.cache"));
        let mut args: Vec<String> = self.tier.clone();
        args.extend(["--cluster-lookup-timeout".into(), LOOKUP_TIMEOUT.into()]);
        if i > 0 {
            args.extend([
                "--cert".into(),
                self.cert.display().to_string(),
                "--key".into(),
                self.key.display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(&cache, &self.backend, &args)
    }

    fn addr(&self, i: usize) -> String {
        self.servers[i].addr()
    }

    /// Wait until every endpoint says its tier is up.
    fn wait_tier_up(&self) {
        for s in &self.servers {
            assert!(
                wait_for(Duration::from_secs(20), || s.stats()["cluster"]["up"]
                    == true),
                "the tier did not come up: {}",
                s.stats()["cluster"]
            );
        }
    }
}

/// What one round of connections did.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    full: usize,
    resumed: usize,
    failed: usize,
    slowest: Duration,
}

impl Round {
    fn total(&self) -> usize {
        self.full + self.resumed + self.failed
    }

    /// At least 99.9% resumed (all of them, below 1,000 connections).
    fn resumed_nearly_all(&self) -> bool {
        self.failed == 0 && self.resumed * 1000 >= self.total() * 999
    }
}

/// Each device connects once, to the endpoint `target(device index)`, 8 at a
/// time; failures are counted, not fatal.
fn round(devices: &[Arc<ClientConfig>], target: impl Fn(usize) -> String + Sync) -> Round {
    let idx: Vec<usize> = (0..devices.len()).collect();
    let chunks: Vec<&[usize]> = idx.chunks(devices.len().div_ceil(8)).collect();
    let target = &target;
    let parts: Vec<Round> = std::thread::scope(|sc| {
        let hs: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                sc.spawn(move || {
                    let mut r = Round::default();
                    for &i in chunk {
                        let started = Instant::now();
                        match request(&devices[i], &target(i), GET) {
                            Ok((kind, resp)) if resp.ends_with(b"hello") => match kind {
                                HandshakeKind::Resumed => r.resumed += 1,
                                _ => r.full += 1,
                            },
                            _ => r.failed += 1,
                        }
                        r.slowest = r.slowest.max(started.elapsed());
                    }
                    r
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    parts.iter().fold(Round::default(), |a, b| Round {
        full: a.full + b.full,
        resumed: a.resumed + b.resumed,
        failed: a.failed + b.failed,
        slowest: a.slowest.max(b.slowest),
    })
}

/// Wait until the tier holds at least `n` keys (the writes are asynchronous).
fn wait_keys(redis: &RedisServer, n: u64) {
    assert!(
        wait_for(Duration::from_secs(10), || redis.dbsize() >= n),
        "the tier holds {} keys, expected at least {n}",
        redis.dbsize()
    );
}

#[test]
fn devices_alternating_between_two_endpoints_resume_every_time() {
    let redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let fleet = Fleet::start(2, &backend, &["--cluster-url", &url], &[]);
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 100);
    let prime = round(&devices, |_| fleet.addr(0));
    assert_eq!((prime.full, prime.failed), (100, 0), "{prime:?}");
    wait_keys(&redis, 100);
    // Every reconnect lands on the other endpoint than the last one.
    let mut total = Round::default();
    for r in 1..=4 {
        let got = round(&devices, |_| fleet.addr(r % 2));
        assert!(got.resumed_nearly_all(), "round {r}: {got:?}");
        total.resumed += got.resumed;
        total.full += got.full;
    }
    assert_eq!(total.resumed, 400, "{total:?}");
    for s in &fleet.servers {
        let c = &s.stats()["cluster"];
        assert_eq!(c["enabled"], true, "{c}");
        assert!(c["found"].as_u64() > Some(0), "{c}");
        assert_eq!(c["timeouts"], 0, "{c}");
        assert_eq!(c["writes_dropped"], 0, "{c}");
    }
}

/// `GET /metrics` from the metrics page at `addr`: the body.
fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    page
}

/// The value of the sample `name` (no labels) on a metrics page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn the_metrics_page_shows_every_tier_counter() {
    let redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let metrics_at = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let fleet = Fleet::start(
        1,
        &backend,
        &["--cluster-url", &url],
        &["--metrics-listen", &metrics_at],
    );
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 20);
    let prime = round(&devices, |_| fleet.addr(0));
    assert_eq!((prime.full, prime.failed), (20, 0), "{prime:?}");
    wait_keys(&redis, 20);
    assert!(fleet.servers[0].wait_idle(Duration::from_secs(10)));
    let stats = fleet.servers[0].stats();
    let page = scrape(&metrics_at);
    let c = stats["cluster"].as_object().unwrap();
    assert!(c["writes"].as_u64() >= Some(20), "{stats}");
    assert_eq!(
        sample(&page, "warmtls_cluster_enabled"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(sample(&page, "warmtls_cluster_up"), Some(1.0), "{page}");
    // Every counter of `cluster` (the connections' and the tier thread's) is on
    // the page under its own name, so one the tier gains cannot be left off.
    let mut counters = 0;
    for (field, v) in c {
        let Some(v) = v.as_u64() else {
            continue; // enabled, up, sealed
        };
        counters += 1;
        let name = format!("warmtls_cluster_{field}_total");
        assert_eq!(
            sample(&page, &name),
            Some(v as f64),
            "{name} in {stats}\n{page}"
        );
    }
    assert!(counters >= 20, "{stats}");
}

#[test]
fn the_devices_of_a_killed_endpoint_resume_on_the_other() {
    let redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let mut fleet = Fleet::start(2, &backend, &["--cluster-url", &url], &[]);
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 100);
    let prime = round(&devices, |_| fleet.addr(0));
    assert_eq!(prime.full, 100, "{prime:?}");
    wait_keys(&redis, 100);
    let a = fleet.servers.remove(0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    drop(a);
    let b = fleet.addr(0);
    let moved = round(&devices, |_| b.clone());
    assert!(moved.resumed_nearly_all(), "{moved:?}");
    let again = round(&devices, |_| b.clone());
    assert!(again.resumed_nearly_all(), "{again:?}");
}

fn seen(requests: &Requests, marker: &[u8]) -> usize {
    requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.windows(marker.len()).any(|w| w == marker))
        .count()
}

#[test]
fn a_0rtt_first_flight_replayed_to_another_endpoint_reaches_the_backend_once() {
    let redis = RedisServer::start();
    let (backend, requests, _) = logging_responder();
    let url = redis.url();
    let fleet = Fleet::start(
        2,
        &backend,
        &["--cluster-url", &url],
        &["--early-data", "4096"],
    );
    fleet.wait_tier_up();
    let (a, b) = (fleet.addr(0), fleet.addr(1));
    let dev = early_device(&fleet.cert);
    let r = early_request(&dev, &a, b"GET /prime HTTP/1.0\r\n\r\n");
    assert_eq!((r.accepted, r.kind), (false, HandshakeKind::Full));
    assert!(r.response.ends_with(b"hello"), "answered");
    wait_keys(&redis, 1);

    // Resumed on A with 0-RTT: A redeemed the ticket in the tier first.
    let r = early_request(&dev, &a, b"GET /early-on-a HTTP/1.0\r\n\r\n");
    assert_eq!((r.accepted, r.kind), (true, HandshakeKind::Resumed));
    assert!(r.response.ends_with(b"hello"), "answered");
    let flight = r.first_flight;
    assert_eq!(seen(&requests, b"/early-on-a"), 1);
    // Captured and replayed to B, and to A: never a second time.
    replay(&b, &flight);
    replay(&a, &flight);
    assert_eq!(
        seen(&requests, b"/early-on-a"),
        1,
        "a replayed 0-RTT request reached the backend again"
    );
    let sb = fleet.servers[1].stats();
    assert_eq!(sb["early_data_accepted"], 0, "{sb}");
    assert!(
        sb["cluster"]["zero_rtt_refused"].as_u64() >= Some(1),
        "{}",
        sb["cluster"]
    );

    // The device's next ticket was issued by A (and is still in A's store):
    // the device takes it to B, which redeems it in the tier and accepts 0-RTT.
    wait_keys(&redis, 1);
    let r = early_request(&dev, &b, b"GET /early-on-b HTTP/1.0\r\n\r\n");
    assert_eq!((r.accepted, r.kind), (true, HandshakeKind::Resumed));
    assert!(r.response.ends_with(b"hello"), "answered");
    let flight = r.first_flight;
    // Replayed to A, which still holds its own copy of that ticket: A must
    // redeem it in the tier before accepting early data, and cannot.
    replay(&a, &flight);
    replay(&b, &flight);
    assert_eq!(seen(&requests, b"/early-on-b"), 1);
    let sa = fleet.servers[0].stats();
    assert_eq!(
        sa["early_data_accepted"], 1,
        "only the device's own 0-RTT on A: {sa}"
    );
    assert!(
        sa["cluster"]["zero_rtt_refused"].as_u64() >= Some(2),
        "{}",
        sa["cluster"]
    );
}

#[test]
fn redis_stopped_mid_run_costs_full_handshakes_and_no_connection() {
    let mut redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let fleet = Fleet::start(2, &backend, &["--cluster-url", &url], &[]);
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 60);
    // Device i's last endpoint after each round, to send it back (stay) or on (move).
    let home = |i: usize, r: usize| (i + r) % 2;
    assert_eq!(round(&devices, |i| fleet.addr(home(i, 0))).full, 60);
    wait_keys(&redis, 60);
    let moved = round(&devices, |i| fleet.addr(home(i, 1)));
    assert!(moved.resumed_nearly_all(), "{moved:?}");

    redis.kill();
    // Devices that stay resume from the local store; devices that move do a
    // full handshake; nobody fails, nobody waits.
    let stayed = round(&devices, |i| fleet.addr(home(i, 1)));
    assert!(
        stayed.resumed_nearly_all(),
        "tier down, staying: {stayed:?}"
    );
    let moved = round(&devices, |i| fleet.addr(home(i, 2)));
    assert_eq!(moved.failed, 0, "tier down, moving: {moved:?}");
    assert!(moved.slowest < Duration::from_secs(2), "{moved:?}");
    for s in &fleet.servers {
        let c = &s.stats()["cluster"];
        assert_eq!(c["up"], false, "{c}");
        assert!(c["down_events"].as_u64() >= Some(1), "{c}");
    }

    // Back, empty: what devices resume with from now on is shared again.
    redis.restart();
    fleet.wait_tier_up();
    let stayed = round(&devices, |i| fleet.addr(home(i, 2)));
    assert!(stayed.resumed_nearly_all(), "{stayed:?}");
    wait_keys(&redis, 60);
    let moved = round(&devices, |i| fleet.addr(home(i, 3)));
    assert!(
        moved.resumed_nearly_all(),
        "after the tier came back: {moved:?}"
    );
    for s in &fleet.servers {
        assert!(s.stats()["cluster"]["reconnects"].as_u64() >= Some(1));
    }
}

#[test]
fn a_frozen_tier_costs_at_most_the_lookup_timeout_per_moving_device() {
    let redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let fleet = Fleet::start(2, &backend, &["--cluster-url", &url], &[]);
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 40);
    assert_eq!(round(&devices, |_| fleet.addr(0)).full, 40);
    wait_keys(&redis, 40);
    redis.pause();
    let moved = round(&devices, |_| fleet.addr(1));
    redis.resume();
    assert_eq!(moved.failed, 0, "{moved:?}");
    assert_eq!(moved.full, 40, "{moved:?}");
    // A parked connection gives up after lookup_timeout (200 ms here, plus the
    // endpoint's 100 ms tick at worst); after a run of them the tier is marked
    // down and the rest do not wait at all.
    assert!(moved.slowest < Duration::from_secs(1), "{moved:?}");
    let c = &fleet.servers[1].stats()["cluster"];
    assert!(c["timeouts"].as_u64() >= Some(1), "{c}");
    assert!(c["unavailable"].as_u64() >= Some(1), "{c}");
    assert_eq!(
        c["timeouts"].as_u64().unwrap() + c["unavailable"].as_u64().unwrap(),
        40,
        "{c}"
    );
}

#[test]
fn sealed_sessions_in_the_tier_hide_ids_and_secrets_and_need_the_same_key() {
    let redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let keys = tempfile::tempdir().unwrap();
    let (k1, k2) = (keys.path().join("k1"), keys.path().join("k2"));
    for k in [&k1, &k2] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmtls"))
            .arg("keygen")
            .arg(k)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    // 192-byte slots: a sealed TLS 1.2 session with SNI does not fit 128.
    let k1s = k1.display().to_string();
    let fleet = Fleet::start(
        2,
        &backend,
        &["--cluster-url", &url],
        &["--cache-key", &k1s, "--cache-slot-size", "192"],
    );
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 20);
    assert_eq!(round(&devices, |_| fleet.addr(0)).full, 20);
    wait_keys(&redis, 20);
    let moved = round(&devices, |_| fleet.addr(1));
    assert!(moved.resumed_nearly_all(), "{moved:?}");
    assert_eq!(fleet.servers[0].stats()["cluster"]["sealed"], true);

    // Every value is sealed (format 2), every name a 16-byte keyed hash.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let names: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("warmtls:*")
        .query(&mut conn)
        .unwrap();
    assert!(names.len() >= 20, "{}", names.len());
    for n in &names {
        assert_eq!(n.len(), "warmtls:".len() + 16);
        let v: Vec<u8> = redis::cmd("GET").arg(n).query(&mut conn).unwrap();
        assert_eq!(v[0], 2, "sealed");
        assert!(
            !v.windows(9).any(|w| w == b"localhost"),
            "no SNI in the clear"
        );
    }

    // An endpoint with another key finds nothing it can use: full handshakes.
    let k2s = k2.display().to_string();
    let other = fleet.launch(2, &["--cache-key", &k2s, "--cache-slot-size", "192"]);
    let got = round(&devices, |_| other.addr());
    assert_eq!((got.full, got.failed), (20, 0), "{got:?}");
}

#[test]
fn a_three_master_redis_cluster_shares_sessions_over_its_shards() {
    let cluster = RedisCluster::start();
    let (backend, _) = responder();
    let urls = cluster.urls();
    let fleet = Fleet::start(
        2,
        &backend,
        &["--cluster-url", &urls, "--cluster-mode", "cluster"],
        &[],
    );
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 90);
    assert_eq!(round(&devices, |_| fleet.addr(0)).full, 90);
    assert!(
        wait_for(Duration::from_secs(10), || {
            cluster.nodes.iter().map(RedisServer::dbsize).sum::<u64>() >= 90
        }),
        "sessions reached the cluster"
    );
    for n in &cluster.nodes {
        assert!(
            n.dbsize() > 0,
            "every shard holds sessions (port {})",
            n.port
        );
    }
    for r in 1..=2 {
        let got = round(&devices, |_| fleet.addr(r % 2));
        assert!(got.resumed_nearly_all(), "round {r}: {got:?}");
    }
}

#[test]
fn a_dead_cluster_shard_costs_its_share_of_full_handshakes_and_nothing_else() {
    let mut cluster = RedisCluster::start();
    let (backend, _) = responder();
    let urls = cluster.urls();
    let fleet = Fleet::start(
        2,
        &backend,
        &["--cluster-url", &urls, "--cluster-mode", "cluster"],
        &[],
    );
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 90);
    assert_eq!(round(&devices, |_| fleet.addr(0)).full, 90);
    assert!(wait_for(Duration::from_secs(10), || {
        cluster.nodes.iter().map(RedisServer::dbsize).sum::<u64>() >= 90
    }));
    let lost = cluster.nodes[2].dbsize() as usize;
    cluster.nodes[2].kill();
    let moved = round(&devices, |_| fleet.addr(1));
    assert_eq!(moved.failed, 0, "{moved:?}");
    // The sessions on the dead shard do a full handshake; the rest resume.
    assert!(
        moved.resumed >= 90 - lost - 5 && moved.resumed < 90,
        "{lost} sessions were on the dead shard: {moved:?}"
    );
    assert!(moved.slowest < Duration::from_secs(2), "{moved:?}");
}

/// backend_protocol = "http" with a tier: devices that alternate between two
/// endpoints park, resume through the tier, and each request reaches the
/// backend once, with the device's address in X-Forwarded-For.
#[test]
fn http_mode_endpoints_share_sessions_through_the_tier_too() {
    let redis = RedisServer::start();
    let (backend, requests, _) = logging_responder();
    let url = redis.url();
    let fleet = Fleet::start(
        2,
        &backend,
        &["--cluster-url", &url],
        &["--backend-protocol", "http"],
    );
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 40);
    let prime = round(&devices, |_| fleet.addr(0));
    assert_eq!((prime.full, prime.failed), (40, 0), "{prime:?}");
    wait_keys(&redis, 40);
    for r in 1..=2 {
        let got = round(&devices, |_| fleet.addr(r % 2));
        assert!(got.resumed_nearly_all(), "round {r}: {got:?}");
    }
    for s in &fleet.servers {
        let st = s.stats();
        assert!(st["cluster"]["found"].as_u64() > Some(0), "{st}");
        assert!(st["http"]["requests"].as_u64() >= Some(40), "{st}");
    }
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 120, "one copy of each request");
    for r in requests.iter() {
        let head = String::from_utf8_lossy(r);
        assert!(
            head.contains("X-Forwarded-For: 127.0.0.1\r\n"),
            "http mode rewrote the head: {head}"
        );
    }
}

/// Kills a process by pid when dropped (a successor started by a hand-over is
/// not the test's child).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::SIGKILL,
        );
    }
}

/// A hand-over (`warmtls upgrade`) on an endpoint with a tier: the new process
/// opens its own tier client, up before it takes over — devices whose sessions
/// were made on the other endpoint resume on it through the tier at once, and
/// the tickets it issues reach the tier for the other endpoint.
#[test]
fn after_a_hand_over_the_successor_shares_sessions_through_its_own_tier_client() {
    let redis = RedisServer::start();
    let (backend, _) = responder();
    let url = redis.url();
    let mut fleet = Fleet::start(2, &backend, &["--cluster-url", &url], &[]);
    fleet.wait_tier_up();
    let devices = mixed_devices(&fleet.cert, 40);
    let prime = round(&devices, |_| fleet.addr(1));
    assert_eq!((prime.full, prime.failed), (40, 0), "{prime:?}");
    wait_keys(&redis, 40);

    let mut ctl = fleet.servers[0].cache.as_os_str().to_owned();
    ctl.push(".ctl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warmtls"))
        .arg("upgrade")
        .arg("--control-socket")
        .arg(&ctl)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "upgrade: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "warmtls: pid NEW took over ADDR from pid OLD (draining)"
    let new: u32 = stdout
        .split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
    let _successor = KillOnDrop(new);
    assert_ne!(new, fleet.servers[0].pid());
    assert!(fleet.servers[0].stop(), "the old process exited 0");
    // The successor took over with its tier client up (it waits for it): the
    // first devices that move to it resume.
    let moved = round(&devices, |_| fleet.addr(0));
    assert!(moved.resumed_nearly_all(), "onto the successor: {moved:?}");
    // Only the successor writes the stats file now.
    let c = &fleet.servers[0].stats()["cluster"];
    assert_eq!(c["up"], true, "{c}");
    assert!(c["found"].as_u64() >= Some(38), "{c}");
    // TLS 1.3 devices hold tickets the successor issued: B gets them from the tier.
    let found_before = fleet.servers[1].stats()["cluster"]["found"].as_u64();
    let back = round(&devices, |_| fleet.addr(1));
    assert!(
        back.resumed_nearly_all(),
        "back from the successor: {back:?}"
    );
    let c = &fleet.servers[1].stats()["cluster"];
    assert!(
        c["found"].as_u64() > found_before,
        "the successor's tickets reached the tier: {c}"
    );
}
