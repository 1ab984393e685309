//! Runs scenarios against targets: for each scenario, every target at once, each with its
//! own origin (and, for R6, its own pair of network namespaces), all following the same
//! schedule.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{kill_process, Pid};
use serde::Serialize;
use tokio::time::Instant;

use crate::capture::{self, Tcpdump};
use crate::netns::NetLab;
use crate::peers::Origin;
use crate::scenarios::{Ctx, Measured, Scenario};
use crate::schedule::Schedule;
use crate::targets::{self, Place, Spec, StartError, TargetKind};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenarios: Vec<&'static Scenario>,
    pub targets: Vec<TargetKind>,
    /// Requests per scenario and target.
    pub requests: Requests,
    pub seed: u64,
    /// The `linger` binary to start for the `linger` target.
    pub linger_bin: PathBuf,
    /// Record each run's traffic with tcpdump into this directory, one file per scenario
    /// and target (`R1-nginx.pcap`).
    pub capture: Option<PathBuf>,
}

/// How many requests each scenario sends per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Each scenario's default (`linger lab run`).
    Default,
    /// Each scenario's small count that still shows its race (`linger demo`, the tests).
    Quick,
    /// This many for every scenario.
    Exactly(usize),
}

impl Requests {
    pub fn for_scenario(self, sc: &Scenario) -> usize {
        match self {
            Self::Default => sc.default_requests,
            Self::Quick => sc.quick_requests,
            Self::Exactly(n) => n,
        }
    }
}

/// Whether a scenario ran on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum Status {
    Ran,
    /// The target's program is missing.
    NotInstalled(String),
    /// The scenario needs something this machine lacks (network namespaces).
    Unavailable(String),
    Failed(String),
}

/// One scenario on one target.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub scenario: &'static str,
    pub name: &'static str,
    pub target: TargetKind,
    pub status: Status,
    pub seed: u64,
    /// The schedule's digest: the same seed gives the same one.
    pub schedule: String,
    pub scheduled_requests: usize,
    /// The settings the target ran with.
    pub settings: Vec<String>,
    #[serde(flatten)]
    pub measured: Measured,
    pub failures: u64,
    /// Requests the origin received more than once.
    pub duplicates: u64,
    pub origin_requests: u64,
    pub origin_connections: u64,
    pub duration_ms: u64,
    /// The run's packet capture (with `--capture`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<Captured>,
}

/// Where a run's packets went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Captured {
    /// The capture file.
    File(PathBuf),
    /// Why there is none.
    Skipped(String),
}

impl Record {
    fn new(sc: &Scenario, kind: TargetKind, schedule: &Schedule, status: Status) -> Self {
        Self {
            scenario: sc.id,
            name: sc.name,
            target: kind,
            status,
            seed: schedule.seed,
            schedule: schedule.fingerprint(),
            scheduled_requests: schedule.requests(),
            settings: targets::settings(kind, sc.tuning),
            measured: Measured::default(),
            failures: 0,
            duplicates: 0,
            origin_requests: 0,
            origin_connections: 0,
            duration_ms: 0,
            capture: None,
        }
    }

    pub fn ran(&self) -> bool {
        self.status == Status::Ran
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub targets: Vec<TargetKind>,
    pub records: Vec<Record>,
}

/// Runs `opts`; `progress` gets a line as each scenario starts and ends.
pub async fn run(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Report {
    if opts.targets.contains(&TargetKind::Linger) {
        // The settings in the report are the binary's own.
        if let Err(e) = targets::load_linger_defaults(&opts.linger_bin) {
            progress(&format!("cannot read linger's defaults: {e}"));
        }
    }
    let mut records = Vec::new();
    for &sc in &opts.scenarios {
        let n = opts.requests.for_scenario(sc);
        let schedule = Arc::new(sc.schedule(opts.seed, n));
        progress(&format!(
            "{} {}: {} requests per target, schedule {}",
            sc.id,
            sc.name,
            schedule.requests(),
            schedule.fingerprint()
        ));
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (i, &kind) in opts.targets.iter().enumerate() {
            let (schedule, bin) = (schedule.clone(), opts.linger_bin.clone());
            let capture = opts.capture.clone();
            set.spawn(async move { (i, run_one(sc, kind, schedule, bin, capture).await) });
        }
        let mut got: Vec<(usize, Record)> = Vec::new();
        while let Some(r) = set.join_next().await {
            got.push(r.expect("a target's run panicked"));
        }
        got.sort_by_key(|(i, _)| *i);
        progress(&format!(
            "{} done in {:.1} s",
            sc.id,
            started.elapsed().as_secs_f64()
        ));
        records.extend(got.into_iter().map(|(_, r)| r));
    }
    Report {
        seed: opts.seed,
        targets: opts.targets.clone(),
        records,
    }
}

/// The longest a single run may take before it is reported as failed.
const RUN_LIMIT: Duration = Duration::from_secs(120);

async fn run_one(
    sc: &'static Scenario,
    kind: TargetKind,
    schedule: Arc<Schedule>,
    linger_bin: PathBuf,
    capture: Option<PathBuf>,
) -> Record {
    if let Some(why) = targets::missing(kind, &linger_bin) {
        return Record::new(sc, kind, &schedule, Status::NotInstalled(why));
    }
    if sc.netns {
        if let Some(why) = NetLab::unavailable() {
            return Record::new(sc, kind, &schedule, Status::Unavailable(why));
        }
    }
    let started = Instant::now();
    let mut record = match tokio::time::timeout(
        RUN_LIMIT,
        run_placed(sc, kind, schedule.clone(), linger_bin, capture),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(status)) => Record::new(sc, kind, &schedule, status),
        Err(_) => Record::new(
            sc,
            kind,
            &schedule,
            Status::Failed(format!("did not finish within {} s", RUN_LIMIT.as_secs())),
        ),
    };
    record.duration_ms = started.elapsed().as_millis() as u64;
    record
}

async fn run_placed(
    sc: &'static Scenario,
    kind: TargetKind,
    schedule: Arc<Schedule>,
    linger_bin: PathBuf,
    capture: Option<PathBuf>,
) -> Result<Record, Status> {
    let failed = |what: &str, e: std::io::Error| Status::Failed(format!("{what}: {e}"));
    // Where the clients and the proxy run, and where the origin runs.
    let (netlab, runtimes, front, back, origin_ip) = if sc.netns {
        let lab = NetLab::create().map_err(|e| failed("creating namespaces", e))?;
        let a = lab
            .runtime(&lab.a)
            .map_err(|e| failed("namespace runtime", e))?;
        let b = lab
            .runtime(&lab.b)
            .map_err(|e| failed("namespace runtime", e))?;
        let front = Place::netns(&lab.a.name, a.handle().clone());
        let back = Place::netns(&lab.b.name, b.handle().clone());
        let ip = lab.b.addr;
        (Some(Arc::new(lab)), Some((a, b)), front, back, ip)
    } else {
        let here = Place::loopback();
        (
            None,
            None,
            here.clone(),
            here,
            std::net::Ipv4Addr::LOCALHOST,
        )
    };
    let cfg = sc.origin(kind);
    let origin = back
        .run(async move {
            let l = tokio::net::TcpListener::bind((origin_ip, 0)).await?;
            Ok::<_, std::io::Error>(Origin::serve(l, cfg))
        })
        .await
        .map_err(|e| failed("starting the origin", e))?;
    let origin = Arc::new(origin);
    let spec = Spec {
        kind,
        upstream: origin.addr,
        tuning: sc.tuning,
        place: front.clone(),
        linger_bin,
    };
    let mut running = match targets::start(&spec).await {
        Ok(r) => r,
        Err(StartError::NotInstalled(m)) => return Err(Status::NotInstalled(m)),
        Err(StartError::Failed(m)) => return Err(Status::Failed(m)),
    };
    let drain: Arc<dyn Fn() -> std::io::Result<()> + Send + Sync> = match running.pid() {
        None => {
            let o = origin.clone();
            Arc::new(move || {
                o.drain();
                Ok(())
            })
        }
        Some(pid) => {
            let sig = kind.drain_signal();
            Arc::new(move || {
                let pid = Pid::from_raw(pid as i32).ok_or(std::io::ErrorKind::InvalidInput)?;
                kill_process(pid, sig).map_err(std::io::Error::from)
            })
        }
    };
    let capture_place = front.clone();
    let ctx = Ctx {
        target: kind,
        addr: running.addr,
        origin: origin.clone(),
        schedule: schedule.clone(),
        place: front,
        drain,
        netlab: netlab.clone(),
    };
    let tcpdump = match &capture {
        None => None,
        Some(dir) => {
            let ports = [running.addr.port(), origin.addr.port()];
            Some(start_capture(sc, kind, dir, &capture_place, &ports).await)
        }
    };
    let measured = sc.drive(ctx).await;
    let captured = match tcpdump {
        None => None,
        Some(Ok(t)) => Some(match t.stop().await {
            Ok(path) => Captured::File(path),
            Err(e) => Captured::Skipped(e),
        }),
        Some(Err(why)) => Some(Captured::Skipped(why)),
    };
    running.stop().await;
    let mut record = Record::new(sc, kind, &schedule, Status::Ran);
    record.failures = measured.failures();
    record.measured = measured;
    record.duplicates = origin.stats.duplicates();
    record.origin_requests = origin.stats.requests();
    record.origin_connections = origin.stats.connections();
    record.capture = captured;
    // Processes first, then the origin, the runtimes, and last the namespaces.
    drop(running);
    drop(origin);
    drop(runtimes);
    drop(netlab);
    Ok(record)
}

/// Starts tcpdump for one run, where its clients are (in R6, the namespace of the clients
/// and the proxy, whose packets to the origin the middlebox drops), on the run's own ports.
async fn start_capture(
    sc: &Scenario,
    kind: TargetKind,
    dir: &std::path::Path,
    place: &Place,
    ports: &[u16],
) -> Result<Tcpdump, String> {
    if let Some(why) = capture::unavailable() {
        return Err(why);
    }
    let path = dir.join(format!("{}-{}.pcap", sc.id, kind.name()));
    Tcpdump::start(place, &path, ports).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios;

    #[tokio::test]
    async fn a_missing_target_is_reported_and_the_others_still_run() {
        let opts = Options {
            scenarios: vec![scenarios::find("R8").unwrap()],
            targets: vec![TargetKind::Direct, TargetKind::Linger],
            requests: Requests::Exactly(3),
            seed: 1,
            linger_bin: PathBuf::from("/nonexistent/linger"),
            capture: None,
        };
        let report = run(&opts, &|_| {}).await;
        assert_eq!(report.records.len(), 2);
        assert_eq!(report.records[0].status, Status::Ran);
        assert_eq!(report.records[0].measured.sent, 3);
        assert!(
            matches!(&report.records[1].status, Status::NotInstalled(w) if w.contains("/nonexistent/linger")),
            "{:?}",
            report.records[1].status
        );
        let table = crate::report::render(&report);
        assert!(
            table.contains("not installed: /nonexistent/linger"),
            "{table}"
        );
    }
}
