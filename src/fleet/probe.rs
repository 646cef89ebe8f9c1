//! Looking at the server under test from outside: its CPU time and memory from
//! /proc (any server, given its pid), and waiting until it accepts TCP again
//! after a restart.
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Ticks per second of the utime/stime fields in /proc/PID/stat: Linux's
/// USER_HZ, an ABI constant of 100 on every architecture we run on.
const USER_HZ: u64 = 100;

/// CPU time (user + system, all threads) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it don't.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / USER_HZ))
}

/// Resident memory of a process, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
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
        assert!(cpu_time(u32::MAX).is_none(), "no such process");
    }
}
