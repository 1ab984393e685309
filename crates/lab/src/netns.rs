//! Two hosts joined by a cable, inside this machine: network namespaces `a` and `b`, a veth
//! pair between them, and nftables in either to drop packets silently (R6).
//!
//! Nothing here can reach a real network. The pair's addresses come from `10.231.0.0/16`,
//! and the root namespace gets a blackhole route for the pair's /24 while it exists, so a
//! packet for those addresses from outside the namespaces goes nowhere instead of out
//! through the default route.
//!
//! Code runs inside a namespace on an [`NsRuntime`]: a thread that joins the namespace and
//! then runs a single-threaded tokio runtime, so every socket its tasks create (listeners,
//! connects, linger's own upstream connections) belongs to that namespace.
//!
//! Creating namespaces needs root (`CAP_NET_ADMIN`), `ip` (iproute2) and `nft` (nftables).

use std::future::Future;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::oneshot;

/// Each lab in this process gets its own /24 and namespace names.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// One end of the cable.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// Namespaces `a` and `b`, joined by veth; removed on drop.
#[derive(Debug)]
pub struct NetLab {
    pub a: Ns,
    pub b: Ns,
    guard_route: String,
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        let _ = ip(&["netns", "del", &self.a.name]);
        let _ = ip(&["netns", "del", &self.b.name]);
        let _ = ip(&["route", "del", "blackhole", &self.guard_route]);
    }
}

// === impl NetLab ===

impl NetLab {
    /// Says why namespaces cannot be made here, if they cannot.
    pub fn unavailable() -> Option<String> {
        for tool in ["ip", "nft"] {
            let found = Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !found {
                return Some(format!(
                    "`{tool}` is not installed (apt-get install iproute2 nftables)"
                ));
            }
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let probe = format!("lgr-{}-{k}-probe", std::process::id());
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Err(e) => Some(format!(
                "cannot create a network namespace (needs root): {e}"
            )),
        }
    }

    /// Creates the namespaces, the veth pair, the addresses and the guard route.
    pub fn create() -> std::io::Result<Self> {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // A /24 per lab: spread by pid so that parallel test processes rarely meet; a
        // collision only shares a blackhole route, never an address in use by two labs
        // (each lab's addresses live in its own namespaces).
        let net = ((pid.wrapping_mul(7) + k) % 250) as u8 + 1;
        let a = Ns {
            name: format!("lgr-{pid}-{k}-a"),
            addr: Ipv4Addr::new(10, 231, net, 1),
        };
        let b = Ns {
            name: format!("lgr-{pid}-{k}-b"),
            addr: Ipv4Addr::new(10, 231, net, 2),
        };
        let guard_route = format!("10.231.{net}.0/24");
        // The guard first: from here on nothing for the range leaves the machine.
        ip(&["route", "replace", "blackhole", &guard_route])?;
        let lab = Self { a, b, guard_route };
        let (va, vb) = (format!("lgr{pid}x{k}a"), format!("lgr{pid}x{k}b"));
        // Interface names are at most 15 bytes.
        let (va, vb) = (tail(&va, 15), tail(&vb, 15));
        ip(&["netns", "add", &lab.a.name])?;
        ip(&["netns", "add", &lab.b.name])?;
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            &lab.a.name,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &lab.b.name,
        ])?;
        for (ns, dev) in [(&lab.a, &va), (&lab.b, &vb)] {
            let cidr = format!("{}/24", ns.addr);
            ip(&["-n", &ns.name, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", &ns.name, "link", "set", dev, "up"])?;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Starts a runtime whose tasks live in `ns`.
    pub fn runtime(&self, ns: &Ns) -> std::io::Result<NsRuntime> {
        NsRuntime::start(&ns.name)
    }

    /// Loads an nftables script into `ns` (`nft -f -`).
    pub fn nft(&self, ns: &Ns, script: &str) -> std::io::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "nft in {}: {}",
                ns.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Drops, in `ns`, every packet of the TCP flows that use local or remote `port`: the
    /// silent drop of a middlebox that forgot the flow (R6). Neither end is told.
    pub fn drop_flow(&self, ns: &Ns, port: u16) -> std::io::Result<()> {
        self.nft(
            ns,
            &format!(
                "table inet lgr_drop_{port} {{\n\
                 \x20 chain input {{ type filter hook input priority 0; tcp sport {port} drop; tcp dport {port} drop; }}\n\
                 \x20 chain output {{ type filter hook output priority 0; tcp sport {port} drop; tcp dport {port} drop; }}\n\
                 }}\n"
            ),
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    s[s.len().saturating_sub(n)..].to_owned()
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A single-threaded tokio runtime on a thread that joined a network namespace.
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// === impl NsRuntime ===

impl NsRuntime {
    fn start(ns: &str) -> std::io::Result<Self> {
        let path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{ns}"))
            .spawn(move || {
                let joined = std::fs::File::open(&path).and_then(|f| {
                    rustix::thread::move_into_link_name_space(
                        f.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(std::io::Error::from)
                });
                let rt = joined.and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                });
                match rt {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("namespace thread died"))??;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` inside the namespace and waits for its output.
    pub async fn run<F, T>(&self, fut: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .expect("task in namespace panicked")
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}
