//! The upstream side: clusters of endpoints, our own per-endpoint connection pool, the
//! connector, the balancer, and linger's own HTTP/1.1 client exchange.
//!
//! An upstream connection is a bare socket with its reuse state ([`UpstreamConn`]). The
//! request that holds it drives the exchange in its own task; in the pool, a peek at
//! checkout and the reaper's sweeps catch an upstream FIN, an RST or stray bytes (R1, R9).

pub(crate) mod conn;
pub mod exchange;
pub mod learn;
mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{Balance, ClusterConfig};
use crate::error::{TryError, TryErrorKind};
use crate::io::{self, IoStats};
use crate::lifecycle::upstream::ReusePolicy;
use crate::observe::journal::Detail;
use crate::observe::journal::Kind;
use crate::observe::metrics::{ClusterLabels, Name};
use crate::observe::{ConnEntry, ConnState, Metrics, Registry, Side};

use self::conn::ConnCtx;
pub use self::conn::UpstreamConn;
pub use self::pool::Pool;

static UPSTREAM_CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// One upstream endpoint and its idle connections (per worker).
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub label: String,
    /// The label, shared by the journal events that name the endpoint.
    pub name: Arc<String>,
    pub pool: Pool,
    pub in_flight: AtomicUsize,
    /// What linger learned of how it closes connections (shared by the workers).
    pub learned: Arc<learn::Learned>,
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
    ctx: Arc<ConnCtx>,
}

// === impl Cluster ===

impl Cluster {
    /// `learned` holds one entry per endpoint of `cfg`, shared with the other workers.
    pub fn new(
        cfg: &ClusterConfig,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        learned: &[Arc<learn::Learned>],
    ) -> Self {
        let name: Name = Arc::new(cfg.name.clone());
        let endpoints = cfg
            .endpoints
            .iter()
            .zip(learned)
            .map(|(a, learned)| Endpoint {
                addr: *a,
                label: a.to_string(),
                name: Arc::new(a.to_string()),
                pool: Pool::new(cfg.max_idle_per_endpoint),
                in_flight: AtomicUsize::new(0),
                learned: learned.clone(),
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
        let labels = ClusterLabels {
            cluster: name.clone(),
        };
        let pool_idle = metrics.pool_idle.get_or_create(&labels).clone();
        let ctx = Arc::new(ConnCtx {
            metrics: metrics.clone(),
            registry: registry.clone(),
            connects: metrics.upstream_connects.get_or_create(&labels).clone(),
            open: metrics.upstream_open.get_or_create(&labels).clone(),
        });
        Self {
            ctx,
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
    /// A request that may not be retried (`may_retry` false) takes none when the endpoint
    /// is known to close right after its responses (R9): it goes on a fresh connection.
    pub fn checkout(&self, endpoint: usize, may_retry: bool) -> Option<UpstreamConn> {
        let ep = &self.endpoints[endpoint];
        let now = crate::io::clock::now();
        if !may_retry && ep.learned.closes_after_response(now) {
            return None;
        }
        let conn = ep
            .pool
            .checkout(now, &self.metrics, &self.pool_idle, &ep.learned, may_retry)?;
        let journal = conn.stats.journal();
        journal.set_state(ConnState::Active);
        journal.record(Kind::Reused);
        Some(conn)
    }

    /// Returns a connection after a complete exchange, or closes it.
    pub fn checkin(&self, conn: UpstreamConn, idle_for: Duration) {
        let journal = conn.stats.journal();
        journal.set_state(ConnState::Pooled);
        journal.record_with(Kind::Pooled, Detail::ReusableFor(idle_for));
        let ep = &self.endpoints[conn.endpoint];
        if conn.reused {
            ep.learned.reuse_worked(conn.idle_age);
        }
        ep.learned.hinted(idle_for);
        ep.pool.checkin(
            conn,
            crate::io::clock::now() + idle_for,
            &self.pool_idle,
            &self.metrics,
            &ep.learned,
        );
    }

    /// Closes idle connections past their deadline; the worker's reaper calls this.
    pub fn reap(&self) {
        let now = Instant::now();
        for ep in &self.endpoints {
            ep.pool
                .reap(now, &self.pool_idle, &self.metrics, &ep.learned);
        }
    }

    /// A reused connection failed before any byte of a response: the upstream had
    /// dropped it while it sat idle (R1).
    pub fn reuse_failed(&self, conn: &UpstreamConn) {
        self.endpoints[conn.endpoint]
            .learned
            .reuse_failed(conn.idle_age);
    }

    /// Connects a socket in the cluster's ACK mode from before its SYN; its other options
    /// are set once it is connected.
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let sock = socket2::SockRef::from(&socket);
        if let Err(e) = io::socket::apply_before_connect(sock, &self.cfg.tcp) {
            tracing::warn!(error = %e, "setting upstream socket options failed");
        }
        let stream = socket.connect(addr).await?;
        let sock = socket2::SockRef::from(&stream);
        if let Err(e) = io::socket::apply_after_connect(sock, &self.cfg.tcp) {
            tracing::warn!(error = %e, "setting upstream socket options failed");
        }
        Ok(stream)
    }

    /// Opens a new connection.
    pub async fn connect(&self, endpoint: usize) -> Result<UpstreamConn, TryError> {
        let ep = &self.endpoints[endpoint];
        let started = Instant::now();
        let connect = tokio::time::timeout(self.cfg.connect_timeout, self.dial(ep.addr));
        let stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.connect_failed(TryErrorKind::Connect(e))),
            Err(_) => {
                let kind = TryErrorKind::ConnectTimeout(self.cfg.connect_timeout);
                return Err(self.connect_failed(kind));
            }
        };
        let local = stream.local_addr().ok();
        let stats = Arc::new(IoStats::default());
        let id = UPSTREAM_CONN_IDS.fetch_add(1, Ordering::Relaxed);
        let entry = self.registry.open(ConnEntry::new(
            id,
            Side::Upstream,
            self.name.clone(),
            ep.addr,
            local,
            stats.clone(),
        ));
        let journal = stats.journal();
        journal.set_state(ConnState::Active);
        journal.record_with(
            Kind::Connected,
            format!("{} in {:?}", ep.label, started.elapsed()),
        );
        let mut conn = UpstreamConn::new(id, stream, stats, entry, endpoint, self.ctx.clone());
        conn.requests_left = self.cfg.max_requests_per_connection;
        Ok(conn)
    }

    fn connect_failed(&self, kind: TryErrorKind) -> TryError {
        self.metrics
            .upstream_connect_errors
            .get_or_create(&self.labels())
            .inc();
        TryError::new(kind, false, false)
    }
}
