//! Golden sessions: session values stored by the rustls warmtls linked when they
//! were recorded, with the client side of each (an `openssl s_client` session
//! file), committed in `warmtls/tests/golden/`. Each must resume through the real
//! endpoint of *this* build, in a real TLS handshake that rustls resumes, so a
//! rustls upgrade that changes its session encoding fails here, in CI, not in
//! the fleet. Also here: a stored value in another encoding is counted as
//! `undecodable` (not just missed), and a cache file that records another
//! encoding is reported at start-up.
//!
//! Time: a golden session is as old as its recording, and both sides judge its
//! age (OpenSSL stops offering a TLS 1.3 ticket past its lifetime; rustls takes
//! 0-RTT data only when both sides agree on the ticket's age). Client and
//! endpoint therefore run under libfaketime, shifted by the same offset back to
//! the moment of the recording: the session bytes are the recorded ones, the
//! binaries are today's.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use warmtls::store::{
    Generation, Layout, ManualClock, SessionCache, SessionStore, StoreConfig, ValueKey,
};

use crate::support::*;

/// One golden session: how the device connected when it was recorded, and how
/// it resumes now.
struct Case {
    name: &'static str,
    /// `s_client` flags, for the recorded full handshake and the resumption alike.
    flags: &'static [&'static str],
    /// Without the extended master secret (OpenSSL 3.0's `s_client` has no flag
    /// for that: a configuration file, `no-ems.cnf`).
    no_ems: bool,
    /// The resumption sends its request as 0-RTT data, which must be accepted.
    early_data: bool,
    /// Stored sealed (encrypted at rest) in the golden cache file `sealed.cache`,
    /// under the test key `sealed.key`.
    sealed: bool,
}

const TLS12_SNI: &[&str] = &["-tls1_2", "-servername", "localhost"];
const TLS13_AES128_SNI: &[&str] = &[
    "-tls1_3",
    "-ciphersuites",
    "TLS_AES_128_GCM_SHA256",
    "-servername",
    "localhost",
];

const CASES: &[Case] = &[
    Case {
        name: "tls12-sni-ems",
        flags: TLS12_SNI,
        no_ems: false,
        early_data: false,
        sealed: false,
    },
    Case {
        name: "tls12-nosni-ems",
        flags: &["-tls1_2", "-noservername"],
        no_ems: false,
        early_data: false,
        sealed: false,
    },
    Case {
        name: "tls12-sni-noems",
        flags: TLS12_SNI,
        no_ems: true,
        early_data: false,
        sealed: false,
    },
    Case {
        name: "tls13-aes128-sni",
        flags: TLS13_AES128_SNI,
        no_ems: false,
        early_data: false,
        sealed: false,
    },
    Case {
        name: "tls13-aes256-nosni",
        flags: &[
            "-tls1_3",
            "-ciphersuites",
            "TLS_AES_256_GCM_SHA384",
            "-noservername",
        ],
        no_ems: false,
        early_data: false,
        sealed: false,
    },
    Case {
        name: "tls13-aes128-early-data",
        flags: TLS13_AES128_SNI,
        no_ems: false,
        early_data: true,
        sealed: false,
    },
    Case {
        name: "sealed-tls12-sni-ems",
        flags: TLS12_SNI,
        no_ems: false,
        early_data: false,
        sealed: true,
    },
    Case {
        name: "sealed-tls13-aes128-sni",
        flags: TLS13_AES128_SNI,
        no_ems: false,
        early_data: false,
        sealed: true,
    },
];

/// 0-RTT bytes the endpoint accepts (the recording's ticket announced this).
const EARLY_DATA: &str = "1024";
/// The golden cache file's shape (it is committed: small).
const SEALED_CAPACITY: u64 = 8;
const SEALED_SLOT_SIZE: u32 = 192;
/// The cache the unsealed goldens are loaded into.
const CAPACITY: u64 = 64;

/// `sessions.json`: what was recorded, by what, when.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    /// Session encoding generation of the values (warmtls' numbering, store/encoding.rs).
    generation: u32,
    /// The rustls that wrote the values, and the OpenSSL that was the client.
    rustls: String,
    openssl: String,
    /// Unix seconds just after the recording's last handshake.
    recorded_at: u64,
    sessions: Vec<Golden>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Golden {
    name: String,
    /// The store key rustls used (TLS 1.2 session ID, TLS 1.3 stateful ticket), hex.
    key: String,
    /// The value rustls stored, in plaintext, hex (sealed ones: as they open).
    value: String,
}

impl Manifest {
    fn golden(&self, name: &str) -> &Golden {
        self.sessions
            .iter()
            .find(|g| g.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no golden session {name:?} in {}",
                    manifest_path().display()
                )
            })
    }
}

impl Golden {
    fn key(&self) -> Vec<u8> {
        unhex(&self.key)
    }
    fn value(&self) -> Vec<u8> {
        unhex(&self.value)
    }
}

/// Where the goldens of the generation this build writes are kept. Goldens of a
/// generation this build reads only through a converter would sit beside them.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/generation-1")
}

fn manifest_path() -> PathBuf {
    golden_dir().join("sessions.json")
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(manifest_path()).expect("golden sessions.json");
    serde_json::from_str(&text).expect("golden sessions.json parses")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The environment that runs a process under libfaketime, its wall clock set back
/// to `at` (unix seconds) from now on; monotonic time is left alone.
fn faketime_env(at: u64) -> Vec<(String, String)> {
    let lib = ["/usr/lib", "/usr/local/lib", "/usr/lib64"]
        .iter()
        .flat_map(|root| {
            let mut dirs = vec![PathBuf::from(root)];
            if let Ok(d) = std::fs::read_dir(root) {
                dirs.extend(d.flatten().map(|e| e.path()));
            }
            dirs
        })
        .map(|d| d.join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect(
            "libfaketime is not installed: the golden-session tests replay the moment the \
             sessions were recorded under it (Debian: apt-get install faketime; .ci/run does)",
        );
    let offset = unix_now() - at;
    let env = vec![
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("FAKETIME".to_string(), format!("-{offset}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ];
    // Fail here, with the reason, rather than as a resumption that did not happen.
    let out = Command::new("date")
        .arg("+%s")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run date");
    let faked: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date +%s");
    assert!(
        faked.abs_diff(at) < 60,
        "libfaketime ({}) did not set the clock back to {at}: date says {faked}",
        lib.display()
    );
    env
}

/// One `openssl s_client` connection for `case`: a full handshake writing its
/// session to `sess_out`, or a resumption of `sess_in` (its request as 0-RTT
/// data if the case says so). Returns stdout and stderr together.
fn s_client(
    addr: &str,
    case: &Case,
    env: &[(String, String)],
    sess_in: Option<&Path>,
    sess_out: Option<&Path>,
    early: Option<&Path>,
) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", addr, "-ign_eof"])
        .args(case.flags);
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    if let Some(p) = sess_out {
        cmd.arg("-sess_out").arg(p);
    }
    if let Some(p) = early {
        cmd.arg("-early_data").arg(p);
    }
    if case.no_ems {
        cmd.env("OPENSSL_CONF", golden_dir().join("no-ems.cnf"));
    }
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (install openssl)");
    let stdin: &[u8] = if early.is_some() { b"" } else { GET };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a resumption of `case` printed, if it was not the resumption expected.
fn resumption_problem(case: &Case, out: &str) -> Option<String> {
    let says = |what: &str| out.contains(what);
    let problem = if !says("Reused,") {
        "the handshake was not resumed"
    } else if case.early_data && !says("Early data was accepted") {
        "resumed, but its 0-RTT request was not accepted"
    } else if !says("hello") {
        "resumed, but no response arrived"
    } else {
        return None;
    };
    let gist: Vec<&str> = out
        .lines()
        .filter(|l| {
            // (Certificate verification is not the point: s_client only reports it.)
            ["New,", "Reused,", "Early data", "error", "alert"]
                .iter()
                .any(|w| l.contains(w))
                && !l.to_ascii_lowercase().contains("verif")
        })
        .collect();
    Some(format!("{problem} (s_client: {})", gist.join(" | ")))
}

/// A cache file at `dir/c.cache` holding every unsealed golden, stored through
/// the rustls adapter at the moment of the recording.
fn unsealed_cache(dir: &Path, m: &Manifest) -> PathBuf {
    let path = dir.join("c.cache");
    let store = SessionStore::open_or_create_with_clock(
        &StoreConfig {
            path: path.clone(),
            capacity: CAPACITY,
            slot_size: 128,
        },
        Arc::new(ManualClock::new(m.recorded_at)),
    )
    .expect("cache");
    let cache = SessionCache::new(Arc::new(store), Duration::from_secs(7 * 86_400))
        .with_stateful_ticket_cap();
    use rustls::server::StoresServerSessions;
    for case in CASES.iter().filter(|c| !c.sealed) {
        let g = m.golden(case.name);
        assert!(cache.put(g.key(), g.value()), "{} stored", case.name);
    }
    path
}

/// The committed golden cache file and its key, copied where the endpoint
/// accepts them (mode 0600, the key apart from the cache).
fn sealed_cache(dir: &Path, keys: &Path) -> (PathBuf, PathBuf) {
    let cache = dir.join("c.cache");
    let key = keys.join("cache.key");
    for (from, to) in [("sealed.cache", &cache), ("sealed.key", &key)] {
        std::fs::copy(golden_dir().join(from), to).expect("copy a golden file");
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (cache, key)
}

/// A config file giving the sealed golden cache its slot size.
fn sealed_config(dir: &Path) -> PathBuf {
    let p = dir.join("warmtls.toml");
    std::fs::write(&p, format!("[cache]\nslot_size = {SEALED_SLOT_SIZE}\n")).unwrap();
    p
}

/// Resume every case in `cases` through the endpoint at `addr`; one line per
/// case that did not resume as expected.
fn resume_all(
    addr: &str,
    cases: &[&Case],
    env: &[(String, String)],
    dir: &Path,
    requests: &Requests,
) -> Vec<String> {
    let early = dir.join("early.txt");
    let mut failures = Vec::new();
    for case in cases {
        let path = format!("/golden/{}", case.name);
        std::fs::write(&early, format!("GET {path} HTTP/1.0\r\n\r\n")).unwrap();
        let pem = golden_dir().join(format!("{}.pem", case.name));
        let out = s_client(
            addr,
            case,
            env,
            Some(&pem),
            None,
            case.early_data.then_some(early.as_path()),
        );
        if let Some(p) = resumption_problem(case, &out) {
            failures.push(format!("{}: {p}", case.name));
        } else if case.early_data {
            let reached = requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.windows(path.len()).any(|w| w == path.as_bytes()))
                .count();
            if reached != 1 {
                failures.push(format!(
                    "{}: its 0-RTT request reached the backend {reached} times",
                    case.name
                ));
            }
        }
    }
    failures
}

/// The message a failed golden resumption ends with: what it means, what to do.
fn golden_failure(m: &Manifest, failures: &[String], undecodable: u64) -> String {
    format!(
        "GOLDEN SESSIONS NO LONGER RESUME. Sessions stored by rustls {} (session encoding \
         generation {}, as every cache file in the fleet holds them today) failed through \
         this build:\n  - {}\n(the store counted {undecodable} of them as undecodable.) \
         After this change every device would do a full handshake, and nothing but the \
         resumption rate would show it. If a dependency bump changed rustls' session \
         encoding (ServerSessionValue), do not ship it as is: keep rustls where it was (the \
         pin in the workspace Cargo.toml), or give this build a reader for generation {} \
         that converts on read (warmtls/src/store/encoding.rs) and record goldens for the \
         new encoding beside these, keeping these: the converter must keep resuming them \
         (warmtls/tests/golden/README.md). README, \"Upgrading warmtls\", has the \
         two-release policy. Do not re-record these to make this pass.",
        m.rustls,
        m.generation,
        failures.join("\n  - "),
        m.generation,
    )
}

#[test]
fn golden_sessions_resume_through_this_build() {
    let m = manifest();
    assert!(
        Generation(m.generation).readable(),
        "the goldens are generation {}, which this build does not claim to read \
         (Generation::readable): a cache file of that generation would be all misses",
        m.generation
    );
    let env = faketime_env(m.recorded_at);
    let (backend, requests, _) = logging_responder();
    let mut failures = Vec::new();
    let mut undecodable = 0;

    // Unsealed, loaded through the store's rustls adapter.
    let dir = tempfile::tempdir().unwrap();
    let cache = unsealed_cache(dir.path(), &m);
    let unsealed: Vec<&Case> = CASES.iter().filter(|c| !c.sealed).collect();
    let mut server = Server::launch(
        &cache,
        &backend,
        &["--early-data", EARLY_DATA],
        &Launch {
            capacity: Some(CAPACITY),
            env: &env,
            ..Launch::default()
        },
    );
    failures.extend(resume_all(
        &server.addr(),
        &unsealed,
        &env,
        dir.path(),
        &requests,
    ));
    let st = server.stats();
    undecodable += st["store"]["undecodable"].as_u64().unwrap();
    assert_eq!(st["tls_errors"], 0, "{st}");
    assert!(server.stop());

    // Sealed, in the committed cache file: pins the file format and the sealing
    // as well as rustls' encoding.
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (cache, key) = sealed_cache(dir.path(), keys.path());
    let config = sealed_config(dir.path());
    let sealed: Vec<&Case> = CASES.iter().filter(|c| c.sealed).collect();
    let mut server = Server::launch(
        &cache,
        &backend,
        &[
            "--config",
            config.to_str().unwrap(),
            "--cache-key",
            key.to_str().unwrap(),
        ],
        &Launch {
            capacity: Some(SEALED_CAPACITY),
            env: &env,
            ..Launch::default()
        },
    );
    failures.extend(resume_all(
        &server.addr(),
        &sealed,
        &env,
        dir.path(),
        &requests,
    ));
    let st = server.stats();
    undecodable += st["store"]["undecodable"].as_u64().unwrap();
    assert_eq!(st["store"]["decrypt_failures"], 0, "sealing changed: {st}");
    assert!(server.stop());

    assert!(
        failures.is_empty(),
        "{}",
        golden_failure(&m, &failures, undecodable)
    );
    assert_eq!(undecodable, 0);
}

/// rustls 0.23's fields of a golden value (the layout store/encoding.rs checks).
struct Fields {
    sni: Option<Vec<u8>>,
    version: [u8; 2],
    suite: [u8; 2],
    secret: Vec<u8>,
    ems: u8,
    created: [u8; 8],
    age_add: [u8; 4],
}

impl Fields {
    /// A golden value without client chain, ALPN or application data (what the
    /// endpoint stores: it asks for neither).
    fn of(v: &[u8]) -> Fields {
        let (sni, rest) = match v[0] {
            1 => {
                let n = usize::from(v[1]);
                (Some(v[2..2 + n].to_vec()), &v[2 + n..])
            }
            _ => (None, &v[1..]),
        };
        let n = usize::from(rest[4]);
        let (secret, tail) = rest[5..].split_at(n);
        assert_eq!(&tail[1..5], &[0, 0, 0, 0], "no chain, ALPN or app data");
        Fields {
            sni,
            version: [rest[0], rest[1]],
            suite: [rest[2], rest[3]],
            secret: secret.to_vec(),
            ems: tail[0],
            created: tail[5..13].try_into().unwrap(),
            age_add: tail[13..17].try_into().unwrap(),
        }
    }

    /// The same session as rustls' development line after 0.23 encodes it
    /// (0.24.0-dev.2, server/mod.rs, tls12.rs, tls13.rs): version, creation time,
    /// SNI, suite, peer identity, ALPN, application data, then for TLS 1.2 the
    /// 48-byte master secret and EMS, for TLS 1.3 the secret and the age offset.
    fn version_first(&self) -> Vec<u8> {
        let mut v = self.version.to_vec();
        v.extend_from_slice(&self.created);
        match &self.sni {
            Some(name) => {
                v.extend_from_slice(&[1, name.len() as u8]);
                v.extend_from_slice(name);
            }
            None => v.push(0),
        }
        v.extend_from_slice(&self.suite);
        v.extend_from_slice(&[0, 0, 0, 0]); // no peer identity, no ALPN, no app data
        if self.version == [3, 3] {
            v.extend_from_slice(&self.secret);
            v.push(self.ems);
        } else {
            v.push(self.secret.len() as u8);
            v.extend_from_slice(&self.secret);
            v.extend_from_slice(&self.age_add);
        }
        v
    }
}

/// `warmtls-cache stats --json FILE`.
fn cache_stats(file: &Path) -> (serde_json::Value, String) {
    let json = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .args(["stats", "--json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(json.status.success());
    let text = Command::new(env!("CARGO_BIN_EXE_warmtls-cache"))
        .arg("stats")
        .arg(file)
        .output()
        .unwrap();
    (
        serde_json::from_slice(&json.stdout).unwrap(),
        String::from_utf8_lossy(&text.stdout).into_owned(),
    )
}

/// A session stored in another encoding (as the next rustls writes it) is a full
/// handshake, not an error, and it is counted and logged as what it is, not
/// folded into plain misses.
#[test]
fn a_session_in_another_encoding_is_counted_as_undecodable() {
    let m = manifest();
    let env = faketime_env(m.recorded_at);
    let (backend, _, _) = logging_responder();
    let dir = tempfile::tempdir().unwrap();
    let cache = unsealed_cache(dir.path(), &m);
    // Two devices whose stored sessions a newer rustls wrote.
    let foreign = ["tls12-sni-ems", "tls13-aes128-sni"];
    {
        let store = SessionStore::open_or_create_with_clock(
            &StoreConfig {
                path: cache.clone(),
                capacity: CAPACITY,
                slot_size: 128,
            },
            Arc::new(ManualClock::new(m.recorded_at)),
        )
        .unwrap();
        for name in foreign {
            let g = m.golden(name);
            let v = Fields::of(&g.value()).version_first();
            assert_eq!(Layout::of(&v), Layout::VersionFirst);
            assert!(store.put(&g.key(), &v, Duration::from_secs(86_400)));
        }
    }
    let log = dir.path().join("serve.log");
    let server = Server::launch(
        &cache,
        &backend,
        &[],
        &Launch {
            capacity: Some(CAPACITY),
            env: &env,
            stderr: Some(&log),
            ..Launch::default()
        },
    );
    for name in foreign {
        let case = CASES.iter().find(|c| c.name == name).unwrap();
        let pem = golden_dir().join(format!("{name}.pem"));
        let out = s_client(&server.addr(), case, &env, Some(&pem), None, None);
        assert!(
            out.contains("New,") && out.contains("hello"),
            "{name}: a full handshake, answered:\n{out}"
        );
    }
    let st = server.stats();
    assert_eq!(st["store"]["undecodable"], 2, "{st}");
    assert_eq!(st["resumed_handshakes"], 0, "{st}");
    assert_eq!(st["tls_errors"], 0, "{st}");
    drop(server);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("not in this build's session encoding")
            && log.contains("version first")
            && log.contains(&cache.display().to_string()),
        "the first one is logged, naming the file and what the bytes look like:\n{log}"
    );
    let (json, _) = cache_stats(&cache);
    assert_eq!(json["counters"]["undecodable"], 2, "{json}");
}

/// A cache file whose header records another session encoding (here: a marker
/// set to generation 2, as a newer build would) is reported loudly at start-up,
/// in the stats and by the inspector; this build then records its own.
/// The marker is the early warning; the per-value check stays the ground truth:
/// these values are in fact this build's, and still resume.
#[test]
fn a_cache_file_recording_another_encoding_is_reported_at_startup() {
    let m = manifest();
    let env = faketime_env(m.recorded_at);
    let (backend, _, _) = logging_responder();
    let dir = tempfile::tempdir().unwrap();
    let cache = unsealed_cache(dir.path(), &m);
    let marker = warmtls::store::format::hdr::ENCODING as u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&cache)
        .unwrap();
    file.write_all_at(&2u32.to_le_bytes(), marker).unwrap();
    drop(file);

    let (json, text) = cache_stats(&cache);
    assert_eq!(json["session_encoding"]["generation"], 2, "{json}");
    assert_eq!(json["session_encoding"]["readable"], false, "{json}");
    assert_eq!(json["session_encoding"]["this_build"], 1, "{json}");
    assert!(text.contains("THIS BUILD CANNOT READ IT"), "{text}");

    let log = dir.path().join("serve.log");
    let launch = |log: &Path| {
        Server::launch(
            &cache,
            &backend,
            &[],
            &Launch {
                capacity: Some(CAPACITY),
                env: &env,
                stderr: Some(log),
                ..Launch::default()
            },
        )
    };
    let mut server = launch(&log);
    let st = server.stats();
    assert_eq!(st["session_encoding"]["generation"], 2, "{st}");
    assert_eq!(st["session_encoding"]["readable"], false, "{st}");
    let case = CASES.iter().find(|c| c.name == "tls12-sni-ems").unwrap();
    let pem = golden_dir().join("tls12-sni-ems.pem");
    let out = s_client(&server.addr(), case, &env, Some(&pem), None, None);
    assert!(
        out.contains("Reused,"),
        "mislabelled, not unreadable:\n{out}"
    );
    assert_eq!(server.stats()["store"]["undecodable"], 0);
    assert!(server.stop());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("SESSION ENCODING MISMATCH")
            && text.contains(&cache.display().to_string())
            && text.contains("generation 2 (unknown to this build)")
            && text.contains("generation 1 (rustls-0.23)")
            && text.contains("Upgrading warmtls"),
        "a loud start-up warning naming the file, both generations and what to do:\n{text}"
    );

    // This build recorded its own generation, and remembers the one before.
    let (json, text) = cache_stats(&cache);
    assert_eq!(json["session_encoding"]["generation"], 1, "{json}");
    assert_eq!(json["session_encoding"]["previous"], 2, "{json}");
    assert_eq!(json["session_encoding"]["readable"], true, "{json}");
    assert!(text.contains("generation 2"), "{text}");

    // Restarted within the session lifetime: values from before the change may
    // still be there, and it says so.
    let log2 = dir.path().join("serve2.log");
    let server = launch(&log2);
    assert_eq!(server.stats()["session_encoding"]["previous"], 2);
    drop(server);
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(
        text.contains("changed session encoding") && !text.contains("MISMATCH"),
        "{text}"
    );
}

/// The key rustls stored a session under, from the client's session file:
/// the TLS 1.3 ticket if there is one, else the TLS 1.2 session ID
/// (OpenSSL's SSL_SESSION ASN.1, ssl/ssl_asn1.c).
fn client_session_key(pem: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(["sess_id", "-outform", "DER", "-in"])
        .arg(pem)
        .output()
        .expect("openssl sess_id");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    /// The (tag, content) elements of DER bytes.
    fn tlvs(mut b: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while b.len() >= 2 {
            let (len, at) = match b[1] {
                n if n < 0x80 => (usize::from(n), 2),
                0x81 => (usize::from(b[2]), 3),
                0x82 => (usize::from(b[2]) << 8 | usize::from(b[3]), 4),
                n => panic!("DER length form {n:#x}"),
            };
            out.push((b[0], &b[at..at + len]));
            b = &b[at + len..];
        }
        out
    }
    let top = tlvs(&out.stdout);
    assert_eq!(top[0].0, 0x30, "a SEQUENCE");
    let fields = tlvs(top[0].1);
    // [10] EXPLICIT OCTET STRING tlsext_tick; the 4th field is the session ID.
    match fields.iter().find(|(tag, _)| *tag == 0xAA) {
        Some((_, tick)) => tlvs(tick)[0].1.to_vec(),
        None => fields[3].1.to_vec(),
    }
}

/// `rustls` version in the workspace's lock file.
fn locked_rustls() -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
        .expect("Cargo.lock");
    let at = lock
        .find("name = \"rustls\"\nversion = \"")
        .expect("rustls in Cargo.lock");
    let rest = &lock[at + "name = \"rustls\"\nversion = \"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Records the golden sessions of this build's generation: every case as a full
/// handshake through the endpoint, its client session file, its stored (key,
/// value), and the sealed cache file. Run by hand, only when adopting a new
/// session encoding (warmtls/tests/golden/README.md):
/// `WARMTLS_RECORD_GOLDEN=1 cargo test --release --test endpoint golden::record -- --ignored`
#[test]
#[ignore = "records new golden sessions into warmtls/tests/golden/: by hand, see its README"]
fn record_golden_sessions() {
    assert_eq!(
        std::env::var("WARMTLS_RECORD_GOLDEN").as_deref(),
        Ok("1"),
        "set WARMTLS_RECORD_GOLDEN=1 to overwrite the golden sessions"
    );
    let out_dir = golden_dir();
    std::fs::create_dir_all(&out_dir).unwrap();
    let (backend, _, _) = logging_responder();
    let full = |addr: &str, case: &Case| {
        let pem = out_dir.join(format!("{}.pem", case.name));
        let out = s_client(addr, case, &[], None, Some(&pem), None);
        assert!(
            out.contains("New,") && out.contains("hello"),
            "{}: a full handshake:\n{out}",
            case.name
        );
        pem
    };

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.cache");
    let mut server = Server::launch(
        &cache,
        &backend,
        &["--early-data", EARLY_DATA],
        &Launch {
            capacity: Some(CAPACITY),
            ..Launch::default()
        },
    );
    let unsealed: Vec<(&Case, PathBuf)> = CASES
        .iter()
        .filter(|c| !c.sealed)
        .map(|c| (c, full(&server.addr(), c)))
        .collect();
    assert!(server.stop());

    let sealed_dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("cache.key");
    ValueKey::generate(&key).unwrap();
    let sealed_cache = sealed_dir.path().join("c.cache");
    let config = sealed_config(sealed_dir.path());
    let mut server = Server::launch(
        &sealed_cache,
        &backend,
        &[
            "--config",
            config.to_str().unwrap(),
            "--cache-key",
            key.to_str().unwrap(),
        ],
        &Launch {
            capacity: Some(SEALED_CAPACITY),
            ..Launch::default()
        },
    );
    let sealed: Vec<(&Case, PathBuf)> = CASES
        .iter()
        .filter(|c| c.sealed)
        .map(|c| (c, full(&server.addr(), c)))
        .collect();
    let recorded_at = unix_now();
    assert!(server.stop());

    let mut sessions = Vec::new();
    let plain = SessionStore::open_existing(&cache, warmtls::store::Access::ReadOnly).unwrap();
    let opened = SessionStore::open_existing(&sealed_cache, warmtls::store::Access::ReadOnly)
        .unwrap()
        .seal_values_with(ValueKey::load(&key).unwrap());
    for (store, cases) in [(&plain, &unsealed), (&opened, &sealed)] {
        for (case, pem) in cases {
            let k = client_session_key(pem);
            let v = store
                .get(&k)
                .unwrap_or_else(|| panic!("{}: its session is in the cache", case.name));
            assert_eq!(Layout::of(&v), warmtls::store::encoding::THIS_BUILD_LAYOUT);
            sessions.push(Golden {
                name: case.name.to_string(),
                key: hex(&k),
                value: hex(&v),
            });
        }
    }
    let openssl = Command::new("openssl").arg("version").output().unwrap();
    let m = Manifest {
        generation: Generation::THIS_BUILD.0,
        rustls: locked_rustls(),
        openssl: String::from_utf8_lossy(&openssl.stdout).trim().to_string(),
        recorded_at,
        sessions,
    };
    std::fs::write(
        manifest_path(),
        serde_json::to_string_pretty(&m).unwrap() + "\n",
    )
    .unwrap();
    std::fs::copy(&sealed_cache, out_dir.join("sealed.cache")).unwrap();
    std::fs::copy(&key, out_dir.join("sealed.key")).unwrap();
    // The header this build wrote says what the values are.
    let s = SessionStore::open_existing(&sealed_cache, warmtls::store::Access::ReadOnly).unwrap();
    assert_eq!(s.encoding_status().generation, Generation::THIS_BUILD.0);
}
