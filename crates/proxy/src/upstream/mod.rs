//! The upstream side: clusters of endpoints, our own per-endpoint connection pool, the
//! connector, and the balancer.
//!
//! Each upstream connection is a hyper client `conn` driven by its own task. The task keeps
//! reading while the connection sits idle in the pool, so an upstream FIN or unexpected
//! bytes end it at once (R1, R9); checkout skips connections whose task saw that, and takes
//! the most recently used connection first.

mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::body::UpBody;
use crate::config::{Balance, ClusterConfig};
use crate::io::{self, IoStats, PeerClose, SensorIo};
use crate::lifecycle::upstream::ReusePolicy;
use crate::observe::metrics::{CloseLabels, ClusterLabels, Name};
use crate::observe::{CloseReason, ConnEntry, ConnState, Metrics, Registry, Side};

pub use self::pool::Pool;

static UPSTREAM_CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// How long a connection's task waits, after the connection ended, for the request in
/// flight to name the close.
const JUDGEMENT_WAIT: Duration = Duration::from_secs(1);
/// The most an upstream connection reads ahead of its client. A response body moves one
/// read at a time: with a slow reader, one read waits in linger while the next fills this
/// buffer, so it bounds the memory a slow client costs (256 KiB made 0.5 MiB per slow
/// reader of a 1 MiB response; HAProxy's buffers are 16 KiB). 64 KiB reads still move a
/// large body in few wake-ups.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// State shared by an upstream connection's task and whoever holds the connection.
#[derive(Debug)]
pub struct ConnShared {
    pub id: u64,
    pub stats: Arc<IoStats>,
    /// Its entry in the registry (journal).
    pub entry: Arc<ConnEntry>,
    abort: Mutex<Option<oneshot::Sender<()>>>,
    reason: Mutex<Option<CloseReason>>,
    /// Set before an upgrade request is sent: when hyper hands the socket over after a
    /// 101, the connection task must not close it.
    upgrading: std::sync::atomic::AtomicBool,
    /// A request was sent and its outcome (response head or error) is not judged yet.
    exchange_open: std::sync::atomic::AtomicBool,
    judged: tokio::sync::Notify,
}

/// Held while a request's outcome is being judged; dropping it says the judgement (and
/// any close reason it names) is done.
#[derive(Debug)]
pub struct ExchangeGuard(Arc<ConnShared>);

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        self.0.exchange_open.store(false, Ordering::Release);
        self.0.judged.notify_waiters();
    }
}

// === impl ConnShared ===

impl ConnShared {
    pub fn mark_upgrading(&self) {
        self.upgrading.store(true, Ordering::Release);
    }

    /// Closes the connection now, recording why (the first reason wins).
    pub fn abort(&self, reason: CloseReason) {
        self.set_reason(reason);
        if let Some(tx) = self.abort.lock().expect("abort lock").take() {
            let _ = tx.send(());
        }
    }

    /// Marks a request as sent; its outcome is judged until the guard drops. hyper can end
    /// the connection (a `Connection: close` response, the upstream's FIN) before the
    /// request's task has read the response head and named the close: the connection's
    /// task waits for that judgement before it counts the close.
    pub fn open_exchange(self: &Arc<Self>) -> ExchangeGuard {
        self.exchange_open.store(true, Ordering::Release);
        ExchangeGuard(self.clone())
    }

    /// Waits (at most `bound`) until no request's outcome is still being judged.
    async fn judgement(&self, bound: Duration) {
        let judged = self.judged.notified();
        tokio::pin!(judged);
        judged.as_mut().enable();
        if self.exchange_open.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(bound, judged).await;
        }
    }

    /// Records why the connection will close, without closing it yet (the first reason
    /// wins).
    pub fn note_close_reason(&self, reason: CloseReason) {
        self.set_reason(reason);
    }

    fn set_reason(&self, reason: CloseReason) {
        let mut r = self.reason.lock().expect("close reason lock");
        if r.is_none() {
            *r = Some(reason);
        }
    }
}

/// A connection checked out of the pool (or fresh), owned by one request at a time.
#[derive(Debug)]
pub struct UpstreamConn {
    pub sender: SendRequest<UpBody>,
    pub shared: Arc<ConnShared>,
    pub endpoint: usize,
    pub created: Instant,
    /// Requests sent on it so far.
    pub requests: u64,
    /// Further requests allowed by a `Keep-Alive: max` hint or the configured limit.
    pub requests_left: Option<u64>,
    /// Did this request get it from the pool?
    pub reused: bool,
}

// === impl UpstreamConn ===

impl UpstreamConn {
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    pub fn abort(self, reason: CloseReason) {
        self.shared.abort(reason);
    }
}

/// Why a connect failed.
#[derive(Debug)]
pub enum ConnectError {
    Timeout(Duration),
    Io(std::io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "connect timed out after {d:?}"),
            Self::Io(e) => write!(f, "connect failed: {e}"),
            Self::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// One upstream endpoint and its idle connections (per worker).
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub label: String,
    pub pool: Pool,
    pub in_flight: AtomicUsize,
}

/// A cluster as one worker sees it: endpoints, pools, balancer state, retry budget.
#[derive(Debug)]
pub struct Cluster {
    pub cfg: ClusterConfig,
    pub name: Name,
    pub endpoints: Vec<Endpoint>,
    pub reuse: ReusePolicy,
    pub budget: crate::retry::RetryBudget,
    /// Upstream tries on reused and on new connections (cached metric handles).
    pub reused_requests: prometheus_client::metrics::counter::Counter,
    pub fresh_requests: prometheus_client::metrics::counter::Counter,
    pool_idle: prometheus_client::metrics::gauge::Gauge,
    rr: AtomicUsize,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

// === impl Cluster ===

impl Cluster {
    pub fn new(cfg: &ClusterConfig, metrics: Arc<Metrics>, registry: Arc<Registry>) -> Self {
        let name: Name = Arc::new(cfg.name.clone());
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|a| Endpoint {
                addr: *a,
                label: a.to_string(),
                pool: Pool::new(cfg.max_idle_per_endpoint),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        let reuse_counter = |reused: &'static str| {
            metrics
                .upstream_requests
                .get_or_create(&crate::observe::metrics::ReuseLabels {
                    cluster: name.clone(),
                    reused,
                })
                .clone()
        };
        let reused_requests = reuse_counter("true");
        let fresh_requests = reuse_counter("false");
        let pool_idle = metrics
            .pool_idle
            .get_or_create(&ClusterLabels {
                cluster: name.clone(),
            })
            .clone();
        Self {
            reused_requests,
            fresh_requests,
            pool_idle,
            reuse: ReusePolicy {
                idle_timeout: cfg.idle_timeout,
                learn_keep_alive: cfg.learn_keep_alive,
                margin: cfg.keep_alive_margin,
                max_requests: cfg.max_requests_per_connection,
            },
            budget: crate::retry::RetryBudget::new(
                cfg.retry.budget_ratio,
                cfg.retry.budget_min_per_sec,
            ),
            cfg: cfg.clone(),
            name,
            endpoints,
            rr: AtomicUsize::new(fastrand::usize(..1024)),
            metrics,
            registry,
        }
    }

    fn labels(&self) -> ClusterLabels {
        ClusterLabels {
            cluster: self.name.clone(),
        }
    }

    /// Picks an endpoint, skipping those in `avoid` when another exists.
    pub fn pick(&self, avoid: &[usize]) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        let ok = |i: usize| !avoid.contains(&i) || avoid.len() >= n;
        match self.cfg.balance {
            Balance::RoundRobin => {
                for _ in 0..n {
                    let i = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                    if ok(i) {
                        return i;
                    }
                }
                0
            }
            Balance::LeastRequest => {
                // Power of two choices on in-flight requests.
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = match (ok(a), ok(b)) {
                    (true, true) => (a, b),
                    (true, false) => return a,
                    (false, true) => return b,
                    (false, false) => return (0..n).find(|&i| ok(i)).unwrap_or(0),
                };
                let la = self.endpoints[a].in_flight.load(Ordering::Relaxed);
                let lb = self.endpoints[b].in_flight.load(Ordering::Relaxed);
                if la <= lb {
                    a
                } else {
                    b
                }
            }
        }
    }

    /// A try on `endpoint` starts (least-request balancing counts these).
    pub fn begin_try(&self, endpoint: usize) {
        self.endpoints[endpoint]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A try on `endpoint` is over.
    pub fn end_try(&self, endpoint: usize) {
        self.endpoints[endpoint]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// The most recently used live idle connection, if any.
    pub fn checkout(&self, endpoint: usize) -> Option<UpstreamConn> {
        let conn = self.endpoints[endpoint].pool.checkout(
            Instant::now(),
            &self.metrics,
            &self.pool_idle,
        )?;
        let journal = conn.shared.stats.journal();
        journal.set_state(ConnState::Active);
        journal.record("reused");
        Some(conn)
    }

    /// Returns a connection after a complete exchange, or closes it.
    pub fn checkin(&self, conn: UpstreamConn, idle_for: Duration) {
        let journal = conn.shared.stats.journal();
        journal.set_state(ConnState::Pooled);
        journal.record_with("pooled", format!("reusable for {idle_for:?}"));
        let ep = &self.endpoints[conn.endpoint];
        ep.pool
            .checkin(conn, Instant::now() + idle_for, &self.pool_idle);
    }

    /// Closes idle connections past their deadline; the worker's reaper calls this.
    pub fn reap(&self) {
        let now = Instant::now();
        for ep in &self.endpoints {
            ep.pool.reap(now, &self.pool_idle);
        }
    }

    /// Opens a new connection and starts its task.
    pub async fn connect(&self, endpoint: usize) -> Result<UpstreamConn, ConnectError> {
        let ep = &self.endpoints[endpoint];
        let labels = self.labels();
        let started = Instant::now();
        let stream =
            match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(ep.addr)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.metrics
                        .upstream_connect_errors
                        .get_or_create(&labels)
                        .inc();
                    return Err(ConnectError::Io(e));
                }
                Err(_) => {
                    self.metrics
                        .upstream_connect_errors
                        .get_or_create(&labels)
                        .inc();
                    return Err(ConnectError::Timeout(self.cfg.connect_timeout));
                }
            };
        if let Err(e) = io::socket::apply(&stream, &self.cfg.tcp) {
            tracing::warn!(error = %e, "setting upstream socket options failed");
        }
        let local = stream.local_addr().ok();
        let io = SensorIo::upstream(stream);
        let (abort_tx, abort_rx) = oneshot::channel::<()>();
        let id = UPSTREAM_CONN_IDS.fetch_add(1, Ordering::Relaxed);
        let entry = self.registry.open(ConnEntry::new(
            id,
            Side::Upstream,
            self.name.clone(),
            ep.addr,
            local,
            io.stats(),
        ));
        let journal = io.stats();
        let journal = journal.journal();
        journal.set_state(ConnState::Active);
        journal.record_with(
            "connected",
            format!("{} in {:?}", ep.label, started.elapsed()),
        );
        let shared = Arc::new(ConnShared {
            id,
            stats: io.stats(),
            entry,
            abort: Mutex::new(Some(abort_tx)),
            reason: Mutex::new(None),
            upgrading: std::sync::atomic::AtomicBool::new(false),
            exchange_open: std::sync::atomic::AtomicBool::new(false),
            judged: tokio::sync::Notify::new(),
        });
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake::<_, UpBody>(TokioIo::new(io))
            .await
            .map_err(ConnectError::Handshake)?;
        self.metrics.upstream_connects.get_or_create(&labels).inc();
        self.metrics.upstream_open.get_or_create(&labels).inc();
        let created = Instant::now();
        let task_shared = shared.clone();
        let metrics = self.metrics.clone();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            let (result, aborted) = tokio::select! {
                biased;
                r = conn => (r.err(), false),
                _ = abort_rx => (None, true),
            };
            if !aborted && result.is_none() && task_shared.upgrading.load(Ordering::Acquire) {
                // hyper handed the socket to the upgraded tunnel; the tunnel owns it now.
                metrics.upstream_open.get_or_create(&labels).dec();
                registry.close(&task_shared.entry, "upgraded");
                return;
            }
            // A request whose response head or error is still being judged names the
            // close (R9: `Connection: close`); wait for it, briefly.
            task_shared.judgement(JUDGEMENT_WAIT).await;
            let reason = {
                let r = task_shared.reason.lock().expect("close reason lock");
                *r
            };
            let reason = reason.unwrap_or_else(|| match (task_shared.stats.peer(), &result) {
                (PeerClose::Rst, _) => CloseReason::UpstreamRst,
                (_, Some(e)) if e.is_parse() || e.to_string().contains("unexpected") => {
                    CloseReason::UpstreamUnexpectedData
                }
                (PeerClose::Fin, _) => CloseReason::UpstreamFinIdle,
                (PeerClose::TimedOut, _) => CloseReason::UpstreamDeadPeer,
                (PeerClose::Error, _) => CloseReason::SocketError,
                (PeerClose::Open, _) => CloseReason::Aborted,
            });
            // Dropping the connection closes the socket: hyper already sent FIN on a clean
            // close; an aborted exchange is cut short on purpose.
            let close = CloseLabels {
                side: "upstream",
                reason: reason.as_str(),
            };
            metrics.closes.get_or_create(&close).inc();
            metrics
                .connection_lifetime
                .get_or_create(&close)
                .observe(created.elapsed().as_secs_f64());
            metrics.upstream_open.get_or_create(&labels).dec();
            registry.close(&task_shared.entry, reason.as_str());
            if reason.is_abnormal() {
                crate::downstream::log_journal(&task_shared.entry, reason);
            }
            tracing::debug!(
                upstream_conn = task_shared.id,
                reason = reason.as_str(),
                "upstream connection closed"
            );
        });
        Ok(UpstreamConn {
            sender,
            shared,
            endpoint,
            created,
            requests: 0,
            requests_left: self.cfg.max_requests_per_connection,
            reused: false,
        })
    }
}
