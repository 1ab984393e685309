//! What the lab's clients talk to: `direct` (the origin itself), `linger` (the real
//! binary), and `nginx` and `haproxy` from the system's packages, each started by the lab
//! in front of the scenario's origin from a config written from a template.
//!
//! Every target runs with its defaults, or the documented production settings of its
//! package, except the timeouts a scenario scales down (see [`Tuning`]) so that a race
//! that takes a minute in production takes a second here. The report lists the settings
//! each target ran with.

mod haproxy;
mod linger;
mod nginx;
pub mod process;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rustix::process::Signal;
use serde::Serialize;

use self::process::{Proc, Scratch};

/// A target the lab can run a scenario against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Direct,
    Linger,
    Nginx,
    Haproxy,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [Self::Direct, Self::Linger, Self::Nginx, Self::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Linger => "linger",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
        }
    }

    /// Parses one name of `direct,linger,nginx,haproxy`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s.trim())
            .ok_or_else(|| {
                format!("unknown target {s:?} (expected direct, linger, nginx or haproxy)")
            })
    }

    /// The signal that stops it gracefully.
    pub fn drain_signal(self) -> Signal {
        match self {
            Self::Nginx => Signal::QUIT,
            Self::Haproxy => Signal::USR1,
            Self::Direct | Self::Linger => Signal::TERM,
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Timeouts a scenario divides by a factor, the same for every target, so that the run
/// keeps the ratio between hops that makes the race happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Downstream idle timeouts (keep-alive between requests) divided by this (R2).
    pub downstream_idle: Option<u32>,
    /// Timeouts that end a request stuck on a dead upstream path divided by this (R6).
    pub upstream_dead_path: Option<u32>,
}

impl Tuning {
    /// Every timeout at its default.
    pub const NONE: Tuning = Tuning {
        downstream_idle: None,
        upstream_dead_path: None,
    };
}

/// `d / by`, for settings written into configs.
fn scaled(d: Duration, by: Option<u32>) -> Duration {
    d / by.unwrap_or(1).max(1)
}

/// A duration as config files want it: whole seconds when exact, else milliseconds.
fn config_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// One setting a target ran with, for the report.
fn setting(name: &str, value: Duration, default: Duration, by: Option<u32>) -> String {
    match by {
        Some(k) if k > 1 => format!(
            "{name} {} ({} / {k})",
            config_duration(value),
            config_duration(default)
        ),
        _ => format!("{name} {}", config_duration(value)),
    }
}

/// Reads the linger binary's defaults (`linger check --print-config`) for the settings
/// the report prints and the configs the lab writes; the first call wins.
pub fn load_linger_defaults(bin: &std::path::Path) -> Result<linger::Defaults, String> {
    linger::load_defaults(bin)
}

/// The settings `kind` runs with under `tuning`, as the report prints them.
pub fn settings(kind: TargetKind, tuning: Tuning) -> Vec<String> {
    match kind {
        TargetKind::Direct => vec!["no proxy: the client talks to the origin".into()],
        TargetKind::Linger => linger::settings(tuning),
        TargetKind::Nginx => nginx::settings(tuning),
        TargetKind::Haproxy => haproxy::settings(tuning),
    }
}

/// Where a run's processes and sockets live: this machine's loopback, or a network
/// namespace (R6), with a runtime whose tasks open their sockets there.
#[derive(Debug, Clone)]
pub struct Place {
    pub netns: Option<String>,
    rt: Option<tokio::runtime::Handle>,
}

impl Place {
    pub fn loopback() -> Self {
        Self {
            netns: None,
            rt: None,
        }
    }

    pub fn netns(name: &str, rt: tokio::runtime::Handle) -> Self {
        Self {
            netns: Some(name.to_owned()),
            rt: Some(rt),
        }
    }

    /// Runs `fut` in this place and waits for it.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = match &self.rt {
            Some(rt) => rt.spawn(fut),
            None => tokio::spawn(fut),
        };
        task.await.expect("a lab task panicked")
    }

    /// Spawns `fut` in this place.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.rt {
            Some(rt) => rt.spawn(fut),
            None => tokio::spawn(fut),
        }
    }

    /// A port free on 127.0.0.1 here, for a program that cannot be handed a bound
    /// socket: bound with port 0, read and released. A program that loses the port to
    /// another in between fails to start and is started again on a new one.
    async fn free_port(&self) -> std::io::Result<u16> {
        self.run(async {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            Ok(l.local_addr()?.port())
        })
        .await
    }

    async fn accepts(&self, addr: SocketAddr) -> bool {
        self.run(async move { tokio::net::TcpStream::connect(addr).await.is_ok() })
            .await
    }
}

/// What a target needs to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: TargetKind,
    pub upstream: SocketAddr,
    pub tuning: Tuning,
    pub place: Place,
    /// The `linger` binary to run.
    pub linger_bin: PathBuf,
}

/// Why a target did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// Not installed here; the message says how to install it.
    NotInstalled(String),
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled(m) => write!(f, "not installed: {m}"),
            Self::Failed(m) => write!(f, "failed to start: {m}"),
        }
    }
}

/// Says why `kind` cannot run here, if it cannot.
pub fn missing(kind: TargetKind, linger_bin: &std::path::Path) -> Option<String> {
    match kind {
        TargetKind::Direct => None,
        TargetKind::Linger => {
            (!linger_bin.is_file()).then(|| format!("{} does not exist", linger_bin.display()))
        }
        TargetKind::Nginx => process::find_program("nginx")
            .is_none()
            .then(|| "nginx (run `linger lab setup`, or apt-get install nginx-light)".into()),
        TargetKind::Haproxy => process::find_program("haproxy")
            .is_none()
            .then(|| "haproxy (run `linger lab setup`, or apt-get install haproxy)".into()),
    }
}

/// A started target.
#[derive(Debug)]
pub struct Running {
    pub kind: TargetKind,
    /// Where clients connect.
    pub addr: SocketAddr,
    proc: Option<Proc>,
    /// Config and logs, removed when the target is dropped.
    _scratch: Option<Scratch>,
}

impl Running {
    /// The origin itself.
    pub fn direct(origin: SocketAddr) -> Self {
        Self {
            kind: TargetKind::Direct,
            addr: origin,
            proc: None,
            _scratch: None,
        }
    }

    /// The process id of a proxy target.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Stops the process (by PID) and removes its scratch directory.
    pub async fn stop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.stop().await;
        }
    }
}

/// Starts the target of `spec` and waits until it accepts connections.
pub async fn start(spec: &Spec) -> Result<Running, StartError> {
    if let Some(why) = missing(spec.kind, &spec.linger_bin) {
        return Err(StartError::NotInstalled(why));
    }
    match spec.kind {
        TargetKind::Direct => Ok(Running::direct(spec.upstream)),
        TargetKind::Linger => linger::start(spec).await,
        TargetKind::Nginx | TargetKind::Haproxy => {
            // A port picked here can be taken by another program before the proxy binds
            // it: then the proxy fails to start and gets another port.
            let mut last = String::new();
            for _ in 0..3 {
                let port = spec
                    .place
                    .free_port()
                    .await
                    .map_err(|e| StartError::Failed(format!("no free port: {e}")))?;
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let started = if spec.kind == TargetKind::Nginx {
                    nginx::start(spec, addr).await
                } else {
                    haproxy::start(spec, addr).await
                };
                match started {
                    Ok(r) => return Ok(r),
                    Err(e) if e.contains("in use") => last = e,
                    Err(e) => return Err(StartError::Failed(e)),
                }
            }
            Err(StartError::Failed(last))
        }
    }
}

/// Starts `cmd` (its output to `output` in the scratch directory) and waits until it
/// accepts on `listen`; on failure the error quotes `log` and the directory is kept.
async fn launch(
    spec: &Spec,
    listen: SocketAddr,
    name: &'static str,
    mut cmd: std::process::Command,
    mut scratch: Scratch,
    output: &str,
    log: &std::path::Path,
) -> Result<Running, String> {
    let out = std::fs::File::create(scratch.file(output)).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(out).stderr(err);
    let mut proc = Proc::spawn(name, cmd).map_err(|e| e.to_string())?;
    if let Err(e) = wait_ready(&spec.place, &mut proc, listen, log).await {
        proc.stop().await;
        if !e.contains("in use") {
            scratch.keep();
        }
        return Err(format!("{e} (files in {})", scratch.path.display()));
    }
    Ok(Running {
        kind: spec.kind,
        addr: listen,
        proc: Some(proc),
        _scratch: Some(scratch),
    })
}

/// Waits until `addr` accepts, or the process exits (then the error quotes `log`).
async fn wait_ready(
    place: &Place,
    proc: &mut Proc,
    addr: SocketAddr,
    log: &std::path::Path,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if proc.exited() {
            return Err(format!(
                "{} exited at start: {}",
                proc.name,
                process::tail(log, 5)
            ));
        }
        if place.accepts(addr).await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{} did not accept on {addr} within 15 s: {}",
                proc.name,
                process::tail(log, 5)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
