//! The tier thread: redis-rs's async client on a one-thread tokio runtime.
//!
//! Every request is its own command (a Redis Cluster routes each key to its
//! shard; redis-rs writes the commands in flight on a node's connection
//! together, so a burst goes out pipelined). Lookups carry the deadline their
//! connection waits until; writes have their own bound. A run of failures marks
//! the tier down: the connection is dropped, requests are answered or dropped
//! at once, and one probe reconnects with back-off. This thread is the only
//! one that ever waits on Redis.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

use super::{Lookup, LookupOp, Outcome, Shared, TierError, TierKeys, Write, WRITE_MAX_AGE};
use crate::config::TierMode;
use crate::store::SessionCache;

/// Consecutive failed commands (errors or timeouts, none succeeding) that mark
/// the tier down. High enough that one dead shard of a cluster, failing a third
/// of the commands, does not take the healthy ones down with it.
const FAILURES_TO_TRIP: u32 = 8;
/// Connecting (and the probe's PING) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect back-off: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A write gives up after this long (counted as an error; the local copy stays).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Writes in flight at most; beyond, they wait in the queue (and are dropped
/// when it is full).
const WRITES_IN_FLIGHT: usize = 4096;
/// At shutdown, queued writes get this long to go out.
const FLUSH_AT_EXIT: Duration = Duration::from_millis(500);

/// A ticket's redemption: read and delete in one step, or (when asked, for a
/// ClientHello carrying 0-RTT data) leave a tombstone if it is not there, so a
/// write of it still on its way cannot land. A tombstone (empty value) reads as
/// not there.
const REDEEM: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  local ttl = tonumber(ARGV[1])
  if ttl and ttl > 0 then redis.call('SET', KEYS[1], '', 'PX', ttl) end
  return false
end
if v == '' then return false end
redis.call('DEL', KEYS[1])
return v
";

/// Where the tier is.
pub(super) enum Target {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Target {
    pub(super) fn parse(mode: TierMode, urls: &[String]) -> Result<Target, TierError> {
        let bad = |url: &str, e: RedisError| TierError::Url {
            url: url.to_string(),
            message: e.to_string(),
        };
        match mode {
            TierMode::Standalone => {
                let url = urls.first().map(String::as_str).unwrap_or_default();
                redis::Client::open(url)
                    .map(Target::Single)
                    .map_err(|e| bad(url, e))
            }
            TierMode::Cluster => {
                for u in urls {
                    redis::Client::open(u.as_str()).map_err(|e| bad(u, e))?;
                }
                redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(WRITE_TIMEOUT)
                    .retries(1)
                    .build()
                    .map(|c| Target::Cluster(Box::new(c)))
                    .map_err(|e| bad(&urls.join(","), e))
            }
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        let mut conn = match self {
            Target::Single(c) => {
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                Conn::Single(c.get_multiplexed_async_connection_with_config(&cfg).await?)
            }
            Target::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
        };
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(conn)
    }
}

/// GETEX (a TLS 1.2 session's fetch) is Redis 6.2's; Valkey has it from its
/// first release and reports a Redis-compatible `redis_version`.
const OLDEST_REDIS: (u32, u32) = (6, 2);

/// The server's `redis_version`, from `INFO server` (a cluster answers from one node).
async fn server_version(conn: &mut Conn) -> Option<(u32, u32)> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .ok()?;
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

impl Target {
    /// Say once, loudly, when the tier is too old for what warmtls asks of it.
    async fn check_version(&self, conn: &mut Conn) {
        if let Some(v) = server_version(conn).await {
            if v < OLDEST_REDIS {
                tracing::error!(
                    "the session tier runs Redis {}.{}: warmtls needs {}.{} or later (GETEX); \
                     TLS 1.2 sessions will not be found there",
                    v.0,
                    v.1,
                    OLDEST_REDIS.0,
                    OLDEST_REDIS.1
                );
            }
        }
    }
}

/// A connection to the tier (clones share it).
#[derive(Clone)]
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error says the tier (or the way to it) is failing, as opposed to
/// one command being refused (out of memory, a script error).
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::ClusterDown)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::TryAgain)
        )
}

/// What the tier thread is given at start.
pub(super) struct Runner {
    pub(super) shared: Arc<Shared>,
    pub(super) keys: TierKeys,
    pub(super) target: Target,
    pub(super) cache: SessionCache,
}

/// What the thread's tasks share.
struct Ctx {
    shared: Arc<Shared>,
    keys: TierKeys,
    target: Target,
    cache: SessionCache,
    redeem: redis::Script,
    conn: Mutex<Option<Conn>>,
    failures: AtomicU32,
    /// Wakes the probe when the tier goes down.
    down: tokio::sync::Notify,
    writes_in_flight: Arc<tokio::sync::Semaphore>,
    target_name: String,
}

impl Runner {
    /// Run until `stop`: the lookup and write loops and the probe.
    pub(super) fn run(
        self,
        lookups: tokio::sync::mpsc::Receiver<Lookup>,
        writes: tokio::sync::mpsc::Receiver<Write>,
        stop: Arc<tokio::sync::Notify>,
    ) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(
                    "cannot start the session tier's runtime: {e}; every lookup will be a local one"
                );
                return;
            }
        };
        let target_name = match &self.target {
            Target::Single(c) => c.get_connection_info().addr().to_string(),
            Target::Cluster(_) => "the Redis Cluster".to_string(),
        };
        let ctx = Arc::new(Ctx {
            shared: self.shared,
            keys: self.keys,
            target: self.target,
            cache: self.cache,
            redeem: redis::Script::new(REDEEM),
            conn: Mutex::new(None),
            failures: AtomicU32::new(0),
            down: tokio::sync::Notify::new(),
            writes_in_flight: Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT)),
            target_name,
        });
        rt.block_on(async move {
            tokio::spawn(ctx.clone().keep_connected());
            tokio::spawn(ctx.clone().lookups(lookups));
            tokio::spawn(ctx.clone().writes(writes));
            stop.notified().await;
            // Let what the last handshakes queued go out.
            let end = tokio::time::Instant::now() + FLUSH_AT_EXIT;
            while tokio::time::Instant::now() < end
                && ctx.shared.up.load(Ordering::Relaxed)
                && (ctx.shared.writes.capacity() < ctx.shared.writes.max_capacity()
                    || ctx.writes_in_flight.available_permits() < WRITES_IN_FLIGHT)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
}

impl Ctx {
    fn conn(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A command failed the way an outage does; enough in a row take the tier down.
    fn failed(&self, why: &dyn std::fmt::Display) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FAILURES_TO_TRIP && self.shared.up.swap(false, Ordering::Relaxed) {
            *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.shared.count(&self.shared.counters.down_events);
            tracing::warn!(
                "session tier {} is down ({n} failed commands in a row, the last: {why}): \
                 sessions resume from this host's store only, new ones are not shared; \
                 reconnecting with back-off",
                self.target_name
            );
            self.down.notify_one();
        }
    }

    fn counted_error(&self, e: &RedisError) {
        if is_outage(e) {
            self.failed(e);
        }
    }

    /// Keep a connection: connect at start, and again (with back-off) each time
    /// the tier goes down.
    async fn keep_connected(self: Arc<Ctx>) {
        let mut ever_up = false;
        loop {
            let mut backoff = BACKOFF_FIRST;
            let mut said = false;
            loop {
                match tokio::time::timeout(CONNECT_TIMEOUT, self.target.connect()).await {
                    Ok(Ok(mut conn)) => {
                        if !ever_up {
                            self.target.check_version(&mut conn).await;
                        }
                        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                        self.failures.store(0, Ordering::Relaxed);
                        self.shared.up.store(true, Ordering::Relaxed);
                        if ever_up {
                            self.shared.count(&self.shared.counters.reconnects);
                            tracing::info!("session tier {} is back", self.target_name);
                        } else {
                            tracing::info!(
                                sealed = self.keys.seals(),
                                "session tier {} connected",
                                self.target_name
                            );
                        }
                        ever_up = true;
                        break;
                    }
                    result => {
                        if !said && !ever_up {
                            let why = match result {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
                            };
                            tracing::warn!(
                                "cannot reach the session tier {}: {why}; sessions resume from \
                                 this host's store only until it answers (retrying with back-off)",
                                self.target_name
                            );
                            said = true;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            self.down.notified().await;
        }
    }

    async fn lookups(self: Arc<Ctx>, mut rx: tokio::sync::mpsc::Receiver<Lookup>) {
        while let Some(l) = rx.recv().await {
            tokio::spawn(self.clone().lookup(l));
        }
    }

    async fn writes(self: Arc<Ctx>, mut rx: tokio::sync::mpsc::Receiver<Write>) {
        while let Some(w) = rx.recv().await {
            let counters = &self.shared.counters;
            if !self.shared.up.load(Ordering::Relaxed) || w.queued().elapsed() > WRITE_MAX_AGE {
                self.shared.count(&counters.writes_dropped);
                continue;
            }
            let Ok(permit) = self.writes_in_flight.clone().acquire_owned().await else {
                return;
            };
            let ctx = self.clone();
            tokio::spawn(async move {
                ctx.write(w).await;
                drop(permit);
            });
        }
    }

    async fn lookup(self: Arc<Ctx>, l: Lookup) {
        let s = &self.shared;
        let outcome = self.redeem_or_fetch(&l).await;
        match outcome {
            Outcome::Found => s.count(&s.counters.tier_found),
            Outcome::Missing => s.count(&s.counters.tier_missing),
            Outcome::TimedOut => s.count(&s.counters.tier_timeouts),
            Outcome::Unavailable => {}
        }
        s.inboxes[l.worker].push(l.token, outcome);
    }

    async fn redeem_or_fetch(&self, l: &Lookup) -> Outcome {
        let s = &self.shared;
        let Some(mut conn) = self.conn() else {
            s.count(&s.counters.tier_unavailable);
            return Outcome::Unavailable;
        };
        let deadline = tokio::time::Instant::from_std(l.queued + s.lookup_timeout);
        if tokio::time::Instant::now() >= deadline {
            // It waited its whole time in our own queue: nothing to ask Redis,
            // and nothing Redis did wrong.
            return Outcome::TimedOut;
        }
        let key = l.req.key.as_bytes();
        let name = self.keys.name(key);
        s.count(&s.counters.tier_lookups);
        let started = Instant::now();
        let asked = async {
            match l.req.op {
                LookupOp::Fetch => {
                    let ttl = self.cache.lifetime().as_millis().max(1) as u64;
                    redis::cmd("GETEX")
                        .arg(&name)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                }
                LookupOp::Redeem { tombstone } => {
                    let ttl = if tombstone {
                        super::TOMBSTONE_TTL.as_millis() as u64
                    } else {
                        0
                    };
                    self.redeem
                        .key(&name)
                        .arg(ttl)
                        .invoke_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                }
            }
        };
        let answer = tokio::time::timeout_at(deadline, asked).await;
        s.counters
            .lookup_rtt_us_sum
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match answer {
            Err(_) => {
                self.failed(&"a lookup got no answer within lookup_timeout");
                Outcome::TimedOut
            }
            Ok(Err(e)) => {
                s.count(&s.counters.tier_errors);
                self.counted_error(&e);
                Outcome::Unavailable
            }
            Ok(Ok(None)) => {
                self.succeeded();
                Outcome::Missing
            }
            Ok(Ok(Some(stored))) => {
                self.succeeded();
                match self.keys.open(&name, &stored) {
                    Ok((value, born)) => {
                        if self.cache.adopt(key, &value, born) {
                            Outcome::Found
                        } else {
                            s.count(&s.counters.adopt_failures);
                            Outcome::Missing
                        }
                    }
                    Err(e) => {
                        if s.counters.decrypt_failures.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(
                                "a session in the tier did not open: {e} (do all endpoints \
                                 sharing it use the same cache key file?); counted as \
                                 cluster.decrypt_failures, each one a full handshake"
                            );
                        }
                        Outcome::Missing
                    }
                }
            }
        }
    }

    async fn write(&self, w: Write) {
        let s = &self.shared;
        let Some(mut conn) = self.conn() else {
            s.count(&s.counters.writes_dropped);
            return;
        };
        let ms = |d: Duration| d.as_millis().max(1) as u64;
        let (cmd, counter) = match &w {
            Write::Put {
                key,
                value,
                ttl,
                born,
                ..
            } => {
                let name = self.keys.name(key);
                let stored = self.keys.seal(&name, value, *born);
                let mut c = redis::cmd("SET");
                // NX: a write never replaces a tombstone, nor anything else.
                c.arg(&name).arg(stored).arg("PX").arg(ms(*ttl)).arg("NX");
                (c, &s.counters.writes)
            }
            Write::Delete { key, .. } => {
                let mut c = redis::cmd("DEL");
                c.arg(self.keys.name(key));
                (c, &s.counters.deletes)
            }
            Write::Refresh {
                key,
                value,
                ttl,
                born,
                ..
            } => {
                let name = self.keys.name(key);
                let stored = self.keys.seal(&name, value, *born);
                let mut c = redis::cmd("SET");
                c.arg(&name).arg(stored).arg("PX").arg(ms(*ttl));
                (c, &s.counters.refreshes)
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, cmd.query_async::<redis::Value>(&mut conn)).await
        {
            Ok(Ok(_)) => {
                self.succeeded();
                s.count(counter);
            }
            Ok(Err(e)) => {
                s.count(&s.counters.write_errors);
                self.counted_error(&e);
            }
            Err(_) => {
                s.count(&s.counters.write_errors);
                self.failed(&"a write got no answer within 1s");
            }
        }
    }
}
