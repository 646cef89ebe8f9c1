//! Looking at the server under test from outside: its CPU time and memory from
//! /proc (any server, given its pid), and waiting until it accepts TCP again
//! after a restart.
//!
//! A server may be one process (warmtls, HAProxy) or a master with worker
//! processes (nginx): the figures cover the pid and all its descendants.
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Ticks per second of the utime/stime fields in /proc/PID/stat: Linux's
/// USER_HZ, an ABI constant of 100 on every architecture we run on.
const USER_HZ: u64 = 100;

/// `pid` and its descendants (bounded depth), from one scan of /proc.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parent_of.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut frontier = vec![pid];
    for _ in 0..4 {
        let next: Vec<u32> = parent_of
            .iter()
            .filter(|(_, pp)| frontier.contains(pp))
            .map(|(p, _)| *p)
            .collect();
        if next.is_empty() {
            break;
        }
        tree.extend(&next);
        frontier = next;
    }
    tree
}

/// The fields of /proc/PID/stat after the command name: index 0 is field 3
/// (state), 1 is the parent pid, 11 and 12 are utime and stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it don't.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU time (user + system, all threads) one process has used so far.
fn own_cpu_time(pid: u32) -> Option<Duration> {
    let f = stat_fields(pid)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / USER_HZ))
}

/// CPU time a process and its descendants have used so far (descendants that
/// exited in between are not counted).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let own = own_cpu_time(pid)?;
    let children = process_tree(pid)
        .into_iter()
        .skip(1)
        .filter_map(own_cpu_time)
        .sum::<Duration>();
    Some(own + children)
}

/// Resident memory of one process, bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kb(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Memory of a process and its descendants, bytes: the sum of their
/// proportional set sizes (shared pages counted once overall), or VmRSS where
/// PSS is not available.
pub fn tree_memory_bytes(pid: u32) -> Option<u64> {
    let tree = process_tree(pid);
    let mut total = None;
    for p in tree {
        let b = status_kb(&format!("/proc/{p}/smaps_rollup"), "Pss:").or_else(|| rss_bytes(p));
        if let Some(b) = b {
            total = Some(total.unwrap_or(0) + b);
        }
    }
    total
}

fn status_kb(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory of this process, bytes.
pub fn own_rss_bytes() -> Option<u64> {
    rss_bytes(std::process::id())
}

/// Wait until `addr` accepts a TCP connection, up to `timeout`. Returns how long
/// it took, or `None` if it never did.
pub fn wait_for_accept(addr: SocketAddr, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        if TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))).is_ok() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20).min(left));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let me = std::process::id();
        assert!(cpu_time(me).is_some());
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert!(tree_memory_bytes(me).is_some_and(|b| b > 0));
        assert_eq!(process_tree(me)[0], me);
        assert!(cpu_time(u32::MAX).is_none(), "no such process");
    }
}
