//! A two-host network on one machine for `warmtls-bench rtt`: two network
//! namespaces (a device side and a server side) joined by a link that delays
//! every packet by a fixed time each way, with both kernels' real TCP stacks in
//! the path.
//!
//! The link is a veth pair with `tc netem` when the kernel has netem, and
//! otherwise a userspace delay line: a TUN device in each namespace and threads
//! here that read each IP packet from one device, hold it for the one-way delay
//! (FIFO, per-packet timestamps) and write it to the other. Namespaces are
//! anonymous (no `ip netns` names): they live as long as their [`Namespace`]
//! value or anything inside them, so a crash leaves nothing behind.
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sched::CloneFlags;

/// The device side's address and the server side's, on the link.
pub const DEVICE_ADDR: &str = "10.213.0.1";
pub const SERVER_ADDR: &str = "10.213.0.2";
const DEVICE_IF: &str = "wtdev0";
const SERVER_IF: &str = "wtsrv0";

/// An anonymous network namespace, kept alive by an open handle.
pub struct Namespace {
    handle: File,
}

impl Namespace {
    /// A new namespace with its loopback up.
    pub fn new() -> anyhow::Result<Namespace> {
        let handle = std::thread::spawn(|| -> anyhow::Result<File> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .context("unshare(CLONE_NEWNET) (network namespaces need root)")?;
            File::open("/proc/thread-self/ns/net").context("opening the new namespace")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))??;
        let ns = Namespace { handle };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A path naming this namespace to other processes (`ip link set netns`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.handle.as_raw_fd()
        ))
    }

    /// Run `f` on a thread inside the namespace: sockets it opens, threads it
    /// starts and processes it spawns are in there too.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(self.handle.as_fd(), CloneFlags::CLONE_NEWNET)
                    .context("entering the network namespace")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in the namespace panicked"))?
        })
    }

    /// Run `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        self.command("ip", args)
    }

    /// Run `tc ARGS` inside the namespace.
    pub fn tc(&self, args: &[&str]) -> anyhow::Result<()> {
        self.command("tc", args)
    }

    fn command(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .run(|| Command::new(program).args(args).output())?
            .with_context(|| format!("running {program} (is iproute2 installed?)"))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Set a sysctl under /proc/sys/net for this namespace only.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("setting {key} = {value} in the namespace"))
    }
}

/// How the link delays packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DelayMethod {
    /// netem if the kernel has it, else the userspace delay line.
    Auto,
    /// A veth pair with `tc qdisc ... netem delay` on both ends.
    Netem,
    /// TUN devices and a userspace delay line.
    Tun,
}

/// The device and server namespaces and the delayed link between them.
pub struct Lab {
    pub device: Namespace,
    pub server: Namespace,
    /// What delays the packets (never `Auto`).
    pub method: DelayMethod,
    /// The userspace delay line, when that is the method.
    delay_line: Option<DelayLine>,
}

impl Lab {
    /// Two namespaces joined by a link delaying each packet `one_way`.
    pub fn new(one_way: Duration, method: DelayMethod) -> anyhow::Result<Lab> {
        let device = Namespace::new()?;
        let server = Namespace::new()?;
        let mut lab = Lab {
            device,
            server,
            method,
            delay_line: None,
        };
        match method {
            DelayMethod::Netem => lab.link_netem(one_way)?,
            DelayMethod::Tun => lab.link_tun(one_way)?,
            DelayMethod::Auto => {
                if let Err(e) = lab.link_netem(one_way) {
                    eprintln!("rtt: no netem ({e:#}); using the userspace delay line");
                    let _ = lab.device.ip(&["link", "del", DEVICE_IF]);
                    lab.link_tun(one_way)?;
                }
            }
        }
        Ok(lab)
    }

    fn link_netem(&mut self, one_way: Duration) -> anyhow::Result<()> {
        let server_ns = self.server.path();
        let server_ns = server_ns.to_string_lossy();
        self.device.ip(&[
            "link", "add", DEVICE_IF, "type", "veth", "peer", "name", SERVER_IF, "netns",
            &server_ns,
        ])?;
        let delay = format!("{}us", one_way.as_micros());
        // A queue long enough for a whole bandwidth-delay product of packets.
        let qdisc = ["root", "netem", "delay", &delay, "limit", "100000"];
        let mut args = vec!["qdisc", "add", "dev", DEVICE_IF];
        args.extend(qdisc);
        self.device.tc(&args)?;
        let mut args = vec!["qdisc", "add", "dev", SERVER_IF];
        args.extend(qdisc);
        self.server.tc(&args)?;
        self.address(DEVICE_IF, SERVER_IF)?;
        self.method = DelayMethod::Netem;
        Ok(())
    }

    fn link_tun(&mut self, one_way: Duration) -> anyhow::Result<()> {
        let dev = self
            .device
            .run(|| warmtls_bench::tun::create(DEVICE_IF))??;
        let srv = self
            .server
            .run(|| warmtls_bench::tun::create(SERVER_IF))??;
        self.address(DEVICE_IF, SERVER_IF)?;
        self.delay_line = Some(DelayLine::start(dev, srv, one_way)?);
        self.method = DelayMethod::Tun;
        Ok(())
    }

    fn address(&self, device_if: &str, server_if: &str) -> anyhow::Result<()> {
        for (ns, dev, me, peer) in [
            (&self.device, device_if, DEVICE_ADDR, SERVER_ADDR),
            (&self.server, server_if, SERVER_ADDR, DEVICE_ADDR),
        ] {
            ns.ip(&["addr", "add", me, "peer", peer, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Packets the userspace delay line carried (both ways), if it is in use.
    pub fn packets_delayed(&self) -> Option<u64> {
        self.delay_line
            .as_ref()
            .map(|d| d.packets.load(Ordering::Relaxed))
    }
}

/// Threads copying packets between two TUN devices after a fixed delay.
struct DelayLine {
    stop: Arc<AtomicBool>,
    packets: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// Largest packet a TUN device hands over (its MTU is 1500; no offloads).
const MAX_PACKET: usize = 65_536;
/// How often idle threads look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

impl DelayLine {
    fn start(a: File, b: File, delay: Duration) -> anyhow::Result<DelayLine> {
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (a2, b2) = (a.try_clone()?, b.try_clone()?);
        for (from, to) in [(a, b2), (b, a2)] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let s = stop.clone();
            threads.push(std::thread::spawn(move || receive(from, delay, tx, &s)));
            let (s, n) = (stop.clone(), packets.clone());
            threads.push(std::thread::spawn(move || deliver(to, rx, &s, &n)));
        }
        Ok(DelayLine {
            stop,
            packets,
            threads,
        })
    }
}

/// Read packets as they leave one namespace, stamping when each is due.
fn receive(
    mut from: File,
    delay: Duration,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; MAX_PACKET];
    let timeout = PollTimeout::from(STOP_POLL.as_millis() as u16);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        match from.read(&mut buf) {
            Ok(n) if n > 0 => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Write each packet into the other namespace when it is due, in order.
fn deliver(
    mut to: File,
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    stop: &AtomicBool,
    packets: &AtomicU64,
) {
    loop {
        match rx.recv_timeout(STOP_POLL) {
            Ok((due, packet)) => {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                // A packet the kernel refuses is a lost packet: TCP resends it.
                if to.write(&packet).is_ok() {
                    packets.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
            Err(_) => return,
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
