//! Packet captures of lab runs (`linger lab run --capture DIR`): tcpdump on the loopback
//! interface, filtered on one run's own ports, started before its traffic and stopped by PID
//! with SIGINT after it, so that `linger explain` can be run on what each target did.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};

use crate::targets::Place;

/// How long tcpdump may take to say it is listening, and to exit after SIGINT.
const READY_WITHIN: Duration = Duration::from_secs(10);
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// Why there is no capture: tcpdump is missing.
pub fn unavailable() -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("tcpdump").is_file()));
    (!found).then(|| {
        "tcpdump is not installed (sudo linger lab setup, or apt-get install tcpdump)".into()
    })
}

/// A running tcpdump.
#[derive(Debug)]
pub struct Tcpdump {
    child: Child,
    pub path: PathBuf,
    /// What tcpdump says on stderr after it is listening (its counts at the end).
    said: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    marker: std::net::UdpSocket,
    marker_addr: std::net::SocketAddr,
}

impl Tcpdump {
    /// Starts tcpdump where the clients of a run are (this machine's loopback interface, or
    /// every interface of their network namespace), writing to `path` the TCP packets from
    /// or to `ports`, and returns once it captures.
    pub async fn start(place: &Place, path: &Path, ports: &[u16]) -> Result<Self, String> {
        // A UDP socket that marks the moment the capture really runs (tcpdump says it is
        // listening a moment before its first packets reach the file), opened where the
        // capture is.
        let marker = place
            .run(async { std::net::UdpSocket::bind("127.0.0.1:0") })
            .await
            .map_err(|e| format!("cannot bind the capture's marker socket: {e}"))?;
        let marker_addr = marker
            .local_addr()
            .map_err(|e| format!("the capture's marker socket: {e}"))?;
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        let mut filter = ports
            .iter()
            .map(|p| format!("tcp port {p}"))
            .collect::<Vec<_>>();
        filter.push(format!("udp port {}", marker_addr.port()));
        let filter = filter.join(" or ");
        let (mut cmd, interface) = match &place.netns {
            None => (Command::new("tcpdump"), "lo"),
            Some(ns) => {
                // `ip netns exec` runs tcpdump in the namespace under the same PID.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "tcpdump"]);
                (c, "any")
            }
        };
        let mut child = cmd
            // Packets reach tcpdump in blocks of the kernel's ring, handed over when full
            // or after a timeout: the markers below tell when the file holds them all.
            // 64 MiB of ring absorb a run's bursts; 65600 bytes hold a whole loopback
            // packet; -U writes each packet to the file as soon as tcpdump has it.
            // (--immediate-mode would give each packet a slot of the snap length in a
            // small ring, and drop packets in bursts.)
            .args(["-i", interface, "-n", "-U", "-Z", "root"])
            .args(["-s", "65600", "-B", "65536"])
            .arg("-w")
            .arg(path)
            .arg(&filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start tcpdump: {e}"))?;
        let stderr = child.stderr.take().ok_or("tcpdump has no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let later = said.clone();
        // Reads tcpdump's stderr to its end, so that tcpdump never blocks on it; the first
        // "listening on" line (or the end, when it failed) is reported, and what follows
        // is kept.
        let reader = std::thread::spawn(move || {
            let mut before = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("listening on") {
                    sent = true;
                    let _ = tx.send(Ok(()));
                } else if !sent {
                    before.push(line);
                } else if let Ok(mut s) = later.lock() {
                    s.push(line);
                }
            }
            if !sent {
                let _ = tx.send(Err(before.join("; ")));
            }
        });
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(READY_WITHIN))
            .await
            .map_err(|e| format!("waiting for tcpdump: {e}"))?;
        let mut me = Self {
            child,
            path: path.to_path_buf(),
            said,
            reader: Some(reader),
            marker,
            marker_addr,
        };
        match ready {
            Ok(Ok(())) => match wait_for_marker(&me.marker, marker_addr, path, START).await {
                Ok(()) => Ok(me),
                Err(e) => {
                    me.kill();
                    Err(e)
                }
            },
            Ok(Err(said)) => {
                me.kill();
                Err(format!("tcpdump failed: {said}"))
            }
            Err(_) => {
                me.kill();
                Err(format!(
                    "tcpdump did not say it was listening within {} s",
                    READY_WITHIN.as_secs()
                ))
            }
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    fn kill(&mut self) {
        self.signal(Signal::KILL);
        let _ = self.child.wait();
    }

    /// Stops tcpdump with SIGINT (it writes out what it holds) and waits for it.
    pub async fn stop(mut self) -> Result<PathBuf, String> {
        // Every packet of the run is in the file once a marker sent after it is.
        let flushed = wait_for_marker(&self.marker, self.marker_addr, &self.path, END).await;
        if let Err(e) = flushed {
            self.kill();
            return Err(e);
        }
        self.signal(Signal::INT);
        let path = self.path.clone();
        let said = self.said.clone();
        let reader = self.reader.take();
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + EXIT_WITHIN;
            loop {
                match self.child.try_wait() {
                    Ok(Some(_)) => {
                        if let Some(r) = reader {
                            let _ = r.join();
                        }
                        return Ok(());
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        self.kill();
                        return Err("tcpdump did not exit after SIGINT; killed".to_string());
                    }
                    Err(e) => return Err(format!("waiting for tcpdump: {e}")),
                }
            }
        })
        .await
        .map_err(|e| format!("waiting for tcpdump: {e}"))?;
        waited?;
        let said = said.lock().map(|s| s.clone()).unwrap_or_default();
        match Self::dropped(&said) {
            0 => Ok(path),
            n => Err(format!(
                "tcpdump: {n} packets dropped by the kernel; {} is incomplete",
                path.display()
            )),
        }
    }

    /// Packets the kernel dropped before tcpdump read them, as tcpdump counted at its exit.
    fn dropped(said: &[String]) -> u64 {
        said.iter()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

const START: &[u8] = b"linger lab: capture starts";
const END: &[u8] = b"linger lab: capture ends";

/// Sends marker datagrams carrying `payload` until the capture file ends with one (tcpdump
/// writes each packet as it gets it, `-U`): at the start, the capture then sees every
/// packet; at the end, every packet before the marker is in the file.
async fn wait_for_marker(
    marker: &std::net::UdpSocket,
    to: std::net::SocketAddr,
    path: &Path,
    payload: &[u8],
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        marker
            .send_to(payload, to)
            .map_err(|e| format!("the capture's marker socket: {e}"))?;
        tick.tick().await;
        if ends_with(path, payload) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "tcpdump did not write its marker to {} within {} s",
                path.display(),
                READY_WITHIN.as_secs()
            ));
        }
    }
}

fn ends_with(path: &Path, payload: &[u8]) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = payload.len() as i64;
    if f.seek(SeekFrom::End(-n)).is_err() {
        return false;
    }
    let mut tail = vec![0; payload.len()];
    std::io::Read::read_exact(&mut f, &mut tail).is_ok() && tail == payload
}

impl Drop for Tcpdump {
    /// A run that ends without [`Tcpdump::stop`] (it failed, or ran out of time) still
    /// stops its tcpdump.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
