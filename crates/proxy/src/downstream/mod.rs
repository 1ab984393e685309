//! The downstream side: accept, drive each connection through hyper's server `conn`, and
//! own its timers and its close.
//!
//! hyper parses and frames; the driver here decides when a connection ends:
//! * idle timeout (no byte of a next request): graceful close, FIN then linger (R2);
//! * header read timeout (a request head started but did not finish): 408, then close;
//! * max age and drain: close when idle, `Connection: close` on the next response (R3, R10);
//! * after hyper is done, [`linger_close`] drains what the peer still sends (R4) unless the
//!   peer already closed (R8: no wait when nothing can be unread).

pub mod service;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::{HalfClosePolicy, ListenerConfig, RouteConfig};
use crate::io::{self, linger_close, IoStats, LingerOutcome, SensorIo};
use crate::lifecycle::connection::{Action, Connection, Timers};
use crate::lifecycle::downstream::DownstreamPolicy;
use crate::observe::metrics::{CloseLabels, ListenerLabels, Name};
use crate::observe::{
    AccessLog, AccessRecord, CloseReason, ConnEntry, ConnState, Metrics, Registry, Side,
    Termination,
};
use crate::upstream::Cluster;

use self::service::DsService;

static DOWNSTREAM_CONN_IDS: AtomicU64 = AtomicU64::new(1);

pub use crate::lifecycle::connection::Drain;

/// Counts open downstream connections so a drain can wait for them.
#[derive(Debug, Default)]
pub struct ConnCounter {
    open: AtomicU64,
    zero: Notify,
}

// === impl ConnCounter ===

impl ConnCounter {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    fn inc(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn dec(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.zero.notify_waiters();
        }
    }

    /// Waits until no downstream connection is open.
    pub async fn wait_zero(&self) {
        loop {
            let n = self.zero.notified();
            if self.open() == 0 {
                return;
            }
            n.await;
        }
    }
}

/// What every connection of one worker shares.
#[derive(Debug)]
pub struct WorkerCtx {
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub clusters: Vec<Arc<Cluster>>,
    pub drain: watch::Receiver<Drain>,
    pub conns: Arc<ConnCounter>,
    pub registry: Arc<Registry>,
}

// === impl WorkerCtx ===

impl WorkerCtx {
    pub fn is_draining(&self) -> bool {
        *self.drain.borrow() != Drain::Running
    }
}

/// One listener's settings and routes.
#[derive(Debug)]
pub struct ListenerCtx {
    pub cfg: ListenerConfig,
    pub name: Name,
    pub routes: Vec<RouteConfig>,
    pub policy: DownstreamPolicy,
    /// Does any route look at the host? (If not, the host is not parsed.)
    pub routes_need_host: bool,
    /// `Keep-Alive: timeout=N`, ready to insert.
    pub keep_alive_value: Option<http::HeaderValue>,
    /// Counters for completed requests, by status class (1xx..5xx), and the duration
    /// histogram: cached so the request path does not look them up.
    pub ok_requests: [prometheus_client::metrics::counter::Counter; 6],
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// Do accepted sockets inherit the listening socket's options? 0: not known yet,
    /// 1: yes (nothing to set per connection), 2: no.
    inherits: std::sync::atomic::AtomicU8,
}

// === impl ListenerCtx ===

impl ListenerCtx {
    pub fn new(cfg: &ListenerConfig, all_routes: &[RouteConfig], metrics: &Metrics) -> Self {
        let routes: Vec<RouteConfig> = all_routes
            .iter()
            .filter(|r| r.listener.as_ref().is_none_or(|l| *l == cfg.name))
            .cloned()
            .collect();
        let name: Name = Arc::new(cfg.name.clone());
        let policy = DownstreamPolicy {
            idle_timeout: cfg.idle_timeout,
            announce_keep_alive: cfg.announce_keep_alive,
            max_requests: cfg.max_requests_per_connection,
            max_age: cfg.max_connection_age,
        };
        let ok = |status: &'static str| {
            metrics
                .requests
                .get_or_create(&crate::observe::metrics::RequestLabels {
                    listener: name.clone(),
                    status,
                    termination: crate::observe::Termination::Ok.as_str(),
                })
                .clone()
        };
        Self {
            routes_need_host: routes
                .iter()
                .any(|r| r.host != crate::config::HostMatch::Any),
            keep_alive_value: policy.announce().map(|secs| {
                http::HeaderValue::from_str(&format!("timeout={secs}"))
                    .expect("a number is a valid header value")
            }),
            ok_requests: [
                ok("none"),
                ok("1xx"),
                ok("2xx"),
                ok("3xx"),
                ok("4xx"),
                ok("5xx"),
            ],
            duration: metrics
                .request_duration
                .get_or_create(&ListenerLabels {
                    listener: name.clone(),
                })
                .clone(),
            name,
            policy,
            cfg: cfg.clone(),
            routes,
            inherits: std::sync::atomic::AtomicU8::new(0),
        }
    }

    pub fn set_inherits(&self, yes: bool) {
        self.inherits
            .store(if yes { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// Gives an accepted socket the listener's TCP options, unless it has them already.
    fn socket_options(&self, stream: &TcpStream) {
        let known = self.inherits.load(Ordering::Relaxed);
        if known == 1 {
            return;
        }
        if known == 0 {
            let yes = io::socket::inherited(stream, &self.cfg.tcp);
            self.set_inherits(yes);
            if yes {
                return;
            }
        }
        if let Err(e) = io::socket::apply(stream, &self.cfg.tcp) {
            tracing::warn!(error = %e, "setting downstream socket options failed");
        }
    }
}

#[derive(Debug)]
struct DsState {
    /// The connection's lifecycle machine.
    lc: Connection,
    /// Bytes written to the socket when the last response ended.
    written_at_idle: u64,
}

/// One downstream connection, shared by its driver and its service.
#[derive(Debug)]
pub struct DsConn {
    pub id: u64,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    pub peer_ip_value: http::HeaderValue,
    pub started: Instant,
    pub stats: Arc<IoStats>,
    /// Its entry in the registry (journal, request count).
    pub entry: Arc<ConnEntry>,
    state: Mutex<DsState>,
    /// The service already logged the request that broke its framing (a bad chunk).
    pub(crate) violation_logged: std::sync::atomic::AtomicBool,
    /// linger closed the connection at the drain deadline, whatever it was doing.
    pub(crate) cut: std::sync::atomic::AtomicBool,
}

// === impl DsConn ===

impl DsConn {
    /// A request head was parsed and handed to the service.
    pub fn begin_request(&self) -> u64 {
        self.state
            .lock()
            .expect("conn state lock")
            .lc
            .request_started();
        self.stats.journal().set_state(ConnState::Waiting);
        self.entry.add_request()
    }

    /// The response is done (sent, failed or abandoned).
    pub fn end_request(&self) {
        {
            let mut s = self.state.lock().expect("conn state lock");
            // A close decided on the response: hyper closes after it.
            let _ = s.lc.response_ended(Instant::now());
            s.written_at_idle = self.stats.bytes_written();
        }
        self.stats.journal().set_state(ConnState::Idle);
        self.stats.arm_first_read();
    }

    fn written_at_idle(&self) -> u64 {
        self.state.lock().expect("conn state lock").written_at_idle
    }

    /// Runs `f` on the lifecycle machine.
    fn lifecycle<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut self.state.lock().expect("conn state lock").lc)
    }

    pub fn requests(&self) -> u64 {
        self.entry.requests()
    }

    /// The response in flight carries `Connection: close` for `reason`; the connection
    /// closes after it.
    pub fn set_close_reason(&self, reason: CloseReason) {
        let named = self.lifecycle(|lc| {
            lc.close_after_response(reason);
            lc.close_reason() == Some(reason)
        });
        if named {
            self.stats.journal().record_with("closing", reason.as_str());
        }
    }
}

/// Accepts connections until the drain starts, spawning a driver for each.
pub async fn accept_loop(worker: Arc<WorkerCtx>, listener: Arc<ListenerCtx>, socket: TcpListener) {
    let mut drain = worker.drain.clone();
    loop {
        if *drain.borrow() != Drain::Running {
            break;
        }
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => spawn_connection(&worker, &listener, stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = drain.changed() => {}
        }
    }
    // Serve what the kernel already accepted into the backlog: closing the listener with
    // connections in it would reset them.
    while let Some(Ok((stream, peer))) = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match socket.poll_accept(cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        })
    })
    .await
    {
        spawn_connection(&worker, &listener, stream, peer);
    }
    tracing::info!(listener = %listener.name, "stopped accepting");
}

fn spawn_connection(
    worker: &Arc<WorkerCtx>,
    listener: &Arc<ListenerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let w = worker.clone();
    let l = listener.clone();
    worker.conns.inc();
    tokio::spawn(async move {
        let conns = w.conns.clone();
        serve_connection(w, l, stream, peer).await;
        conns.dec();
    });
}

/// What ended the driver's loop.
enum Ending {
    Hyper(Result<(), hyper::Error>),
    HeaderTimeout,
    /// The drain deadline passed with the connection still open.
    Cut,
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 48\r\n\r\n408 Request Timeout: request head not received\n";

/// Drives one downstream connection from accept to close.
pub async fn serve_connection(
    worker: Arc<WorkerCtx>,
    listener: Arc<ListenerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let cfg = &listener.cfg;
    listener.socket_options(&stream);
    let labels = ListenerLabels {
        listener: listener.name.clone(),
    };
    worker
        .metrics
        .downstream_accepted
        .get_or_create(&labels)
        .inc();
    worker.metrics.downstream_open.get_or_create(&labels).inc();

    let local = stream.local_addr().ok();
    let io = SensorIo::with_framing_guard(stream, cfg.max_header_bytes);
    let stats = io.stats();
    stats.arm_first_read();
    let now = Instant::now();
    let id = DOWNSTREAM_CONN_IDS.fetch_add(1, Ordering::Relaxed);
    let entry = worker.registry.open(ConnEntry::new(
        id,
        Side::Downstream,
        listener.name.clone(),
        peer,
        local,
        stats.clone(),
    ));
    stats.journal().record_with("accepted", peer.to_string());
    let conn = Arc::new(DsConn {
        id,
        peer,
        peer_ip_value: http::HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value"),
        started: now,
        stats: stats.clone(),
        entry,
        state: Mutex::new(DsState {
            lc: Connection::new(
                Timers {
                    idle_timeout: cfg.idle_timeout,
                    header_read_timeout: cfg.header_read_timeout,
                    max_age: cfg.max_connection_age,
                },
                now,
            ),
            written_at_idle: 0,
        }),
        violation_logged: std::sync::atomic::AtomicBool::new(false),
        cut: std::sync::atomic::AtomicBool::new(false),
    });
    let svc = DsService {
        worker: worker.clone(),
        listener: listener.clone(),
        conn: conn.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        .half_close(cfg.half_close == HalfClosePolicy::Allow)
        .keep_alive(true);
    let mut hconn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();

    let ending = drive(&worker, &conn, &stats, &mut hconn).await;

    // --- close: take the socket back from hyper ---
    let stream = hconn
        .into_parts()
        .map(|parts| parts.io.into_inner().into_stream());
    let mut bad_request = false;
    let cut = matches!(ending, Ending::Cut);
    match ending {
        Ending::Cut => {
            tracing::info!(downstream_conn = conn.id, "closed at the drain deadline");
        }
        Ending::HeaderTimeout => {
            // hyper never sent a response for the half-read head and is no longer polled;
            // answer 408 ourselves.
            if let Some(stream) = &stream {
                write_all_best_effort(stream, RESPONSE_408, Duration::from_secs(1)).await;
            }
            log_refusal(
                &worker,
                &listener,
                &conn,
                408,
                Termination::RequestHeadTimeout,
                format!(
                    "request head not complete within {:?}",
                    cfg.header_read_timeout
                ),
            );
        }
        Ending::Hyper(result) => {
            if let Some(v) = stats.framing_violation() {
                // The guard withheld the request (R12): hyper never saw it and no upstream
                // got a byte. hyper may report that as a quiet close or as an error. Answer
                // 400 unless part of a response already went out.
                bad_request = true;
                tracing::info!(downstream_conn = conn.id, violation = %v, "ambiguous request framing refused");
                worker.metrics.race("R12", "ambiguous_framing_refused");
                if stats.bytes_written() == conn.written_at_idle() {
                    if let Some(stream) = &stream {
                        let body = format!("400 Bad Request: {v}\n");
                        let resp = format!(
                            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        write_all_best_effort(stream, resp.as_bytes(), Duration::from_secs(1))
                            .await;
                    }
                }
                if !conn.violation_logged.load(Ordering::Relaxed) {
                    log_refusal(
                        &worker,
                        &listener,
                        &conn,
                        400,
                        Termination::BadRequest,
                        format!("ambiguous request framing: {v}"),
                    );
                }
            } else if let Err(e) = result {
                if e.is_parse() || e.is_parse_too_large() {
                    // hyper answered 400/431/414 with `Connection: close` itself.
                    bad_request = true;
                    tracing::info!(downstream_conn = conn.id, error = %e, "malformed request");
                    let (status, term) = if e.is_parse_too_large() {
                        (431, Termination::HeadTooLarge)
                    } else {
                        (400, Termination::BadRequest)
                    };
                    log_refusal(&worker, &listener, &conn, status, term, e.to_string());
                } else {
                    tracing::debug!(downstream_conn = conn.id, error = %e, "downstream connection error");
                }
            }
        }
    }
    stats.journal().set_state(ConnState::Closing);
    // What arrived after linger's FIN: a request that met the close, if it parses as one.
    let mut late = Vec::new();
    let outcome = match &stream {
        // At the drain deadline there is no time left to linger: FIN, and close.
        Some(stream) => {
            let linger = if cut { Duration::ZERO } else { cfg.linger_time };
            linger_close(stream, &stats, linger, &mut late).await
        }
        // Upgraded: the socket belongs to the tunnel now; it closes when the tunnel ends.
        None => LingerOutcome::PeerAlreadyClosed,
    };
    drop(stream);
    let reason = if bad_request {
        CloseReason::BadRequest
    } else {
        conn.lifecycle(|lc| lc.ended(stats.peer(), stats.peer_closed_busy()))
    };
    match outcome {
        LingerOutcome::TimedOut { discarded } => {
            stats
                .journal()
                .record_with("linger_timeout", format!("{discarded} bytes discarded"));
            tracing::debug!(downstream_conn = conn.id, discarded, "linger time ran out");
        }
        LingerOutcome::PeerClosed { discarded } | LingerOutcome::PeerReset { discarded }
            if discarded > 0 =>
        {
            stats
                .journal()
                .record_with("lingered", format!("{discarded} bytes discarded"));
        }
        _ => {}
    }
    if Connection::closed_idle(reason) && !late.is_empty() {
        log_request_at_idle_close(&worker, &listener, &conn, reason, &late);
    }
    worker.registry.close(&conn.entry, reason.as_str());
    if reason.is_abnormal() {
        log_journal(&conn.entry, reason);
    }
    let close = CloseLabels {
        side: "downstream",
        reason: reason.as_str(),
    };
    worker.metrics.closes.get_or_create(&close).inc();
    worker
        .metrics
        .connection_lifetime
        .get_or_create(&close)
        .observe(conn.started.elapsed().as_secs_f64());
    worker
        .metrics
        .requests_per_connection
        .get_or_create(&close)
        .observe(conn.requests() as f64);
    worker.metrics.downstream_open.get_or_create(&labels).dec();
    tracing::debug!(
        downstream_conn = conn.id,
        reason = reason.as_str(),
        requests = conn.requests(),
        linger = ?outcome,
        "downstream connection closed"
    );
}

/// Logs a request that linger refused before it became a request (hyper or the framing
/// guard refused its head, or it never finished): the access log gets a line for it too.
fn log_refusal(
    worker: &WorkerCtx,
    listener: &ListenerCtx,
    conn: &DsConn,
    status: u16,
    term: Termination,
    detail: String,
) {
    conn.stats
        .journal()
        .record_with("refused", format!("{status} {term}"));
    count_unserved(worker, listener, status, term);
    if !worker.access_log.enabled() {
        return;
    }
    // No request was parsed: no method, path, upstream or timings.
    let rec = AccessRecord {
        status,
        downstream_close: Some(if term == Termination::RequestHeadTimeout {
            CloseReason::HeaderReadTimeout.as_str()
        } else {
            CloseReason::BadRequest.as_str()
        }),
        termination: term.as_str(),
        detail: Some(detail),
        ..unserved_record(listener, conn)
    };
    worker.access_log.write(&rec);
}

/// A request that reached linger just as it closed an idle connection (R2; R10 during a
/// drain): it was never served, and the client saw the connection end without an answer.
/// It gets its access-log line (with the method and path when its bytes parse), its
/// termination code and a race count.
fn log_request_at_idle_close(
    worker: &WorkerCtx,
    listener: &ListenerCtx,
    conn: &DsConn,
    reason: CloseReason,
    late: &[u8],
) {
    let term = Termination::RequestAtIdleClose;
    worker.metrics.race(
        if reason == CloseReason::Drain {
            "R10"
        } else {
            "R2"
        },
        "request_at_idle_close",
    );
    conn.stats.journal().record_with(
        "request_lost",
        format!("{} bytes after {reason}", late.len()),
    );
    count_unserved(worker, listener, 0, term);
    tracing::info!(
        downstream_conn = conn.id,
        close = reason.as_str(),
        bytes = late.len(),
        "a request arrived as linger closed the idle connection"
    );
    if !worker.access_log.enabled() {
        return;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    // A head cut short still names its method and path once its first line is in; bytes
    // that are no request leave them empty.
    let parsed = req.parse(late).is_ok();
    let rec = AccessRecord {
        method: req.method.filter(|_| parsed).unwrap_or_default().to_owned(),
        path: req.path.filter(|_| parsed).unwrap_or_default().to_owned(),
        downstream_close: Some(reason.as_str()),
        termination: term.as_str(),
        detail: Some(format!(
            "{} bytes arrived after linger closed the idle connection ({reason}); the client \
             saw the connection end without an answer",
            late.len()
        )),
        ..unserved_record(listener, conn)
    };
    worker.access_log.write(&rec);
}

/// Counts a request linger never served (refused, or lost to a close) in
/// `linger_requests_total`.
fn count_unserved(worker: &WorkerCtx, listener: &ListenerCtx, status: u16, term: Termination) {
    worker
        .metrics
        .requests
        .get_or_create(&crate::observe::metrics::RequestLabels {
            listener: listener.name.clone(),
            status: service::status_class(status),
            termination: term.as_str(),
        })
        .inc();
}

/// The access-log record of a request linger never served: what the connection knows;
/// the rest is the record's default.
fn unserved_record(listener: &ListenerCtx, conn: &DsConn) -> AccessRecord {
    AccessRecord {
        ts: crate::observe::access_log::unix_now(),
        listener: listener.name.clone(),
        downstream_conn: conn.id,
        request_index: conn.requests() + 1,
        client: conn.peer.to_string(),
        ..AccessRecord::default()
    }
}

/// Writes the journal of a connection that ended abnormally to the log.
pub(crate) fn log_journal(entry: &ConnEntry, reason: CloseReason) {
    let (events, dropped) = entry.journal().events();
    let journal = serde_json::to_string(&events).unwrap_or_default();
    tracing::info!(
        target: "linger::journal",
        conn = %entry.key(),
        side = entry.side.as_str(),
        peer = %entry.peer,
        reason = reason.as_str(),
        dropped,
        %journal,
        "connection ended abnormally"
    );
}

/// Polls hyper's connection and the connection's one timer in the same task. Every state
/// change (a request starts or ends, a head's first byte arrives) happens inside hyper's
/// poll, so the timer is re-armed from the lifecycle machine right after it, with no
/// cross-task notification.
async fn drive(
    worker: &WorkerCtx,
    conn: &DsConn,
    stats: &IoStats,
    hconn: &mut HyperConn,
) -> Ending {
    let far = || Instant::now() + Duration::from_secs(86_400);
    let mut sleep = Box::pin(tokio::time::sleep_until(far()));
    // One watch on the drain state, in two stages: until the drain starts, then until the
    // deadline cuts what is left.
    let mut drain_watch = Box::pin(drain_reaches(worker.drain.clone(), Drain::Draining));
    let mut shutting_down = false;
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(r) = Pin::new(&mut *hconn).poll(cx) {
            return Poll::Ready(Ending::Hyper(r));
        }
        let now = Instant::now();
        let action = if drain_watch.as_mut().poll(cx).is_ready() {
            let d = *worker.drain.borrow();
            if d == Drain::Draining {
                drain_watch.set(drain_reaches(worker.drain.clone(), Drain::Cut));
            }
            conn.lifecycle(|lc| lc.drain(d, now))
        } else {
            let deadline = conn.lifecycle(|lc| {
                if let Some(t) = stats.first_read_at() {
                    lc.head_started(t);
                }
                lc.deadline()
            });
            let deadline = match deadline {
                Some(d) if !shutting_down => d,
                // No timer: leave the sleep far away (re-armed at most once an hour).
                _ if sleep.deadline() > now + Duration::from_secs(3600) => sleep.deadline(),
                _ => far(),
            };
            if deadline != sleep.deadline() {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            conn.lifecycle(|lc| lc.on_timer(now))
        };
        match action {
            Action::Wait => {}
            Action::Cut => {
                conn.cut.store(true, Ordering::Relaxed);
                conn.stats
                    .journal()
                    .record_with("closing", CloseReason::DrainDeadline.as_str());
                return Poll::Ready(Ending::Cut);
            }
            Action::AnswerTimeout => return Poll::Ready(Ending::HeaderTimeout),
            Action::Close(reason) if !shutting_down => {
                conn.stats.journal().record_with("closing", reason.as_str());
                Pin::new(&mut *hconn).graceful_shutdown();
                shutting_down = true;
            }
            Action::Close(_) => {}
        }
    })
    .await
}

/// Resolves once the drain state is `at` or past it; never, if the server is gone.
async fn drain_reaches(mut rx: watch::Receiver<Drain>, at: Drain) {
    if rx.wait_for(|d| *d >= at).await.is_err() {
        std::future::pending::<()>().await;
    }
}

type HyperConn = hyper::server::conn::http1::UpgradeableConnection<TokioIo<SensorIo>, DsService>;

async fn write_all_best_effort(stream: &TcpStream, mut bytes: &[u8], limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        while !bytes.is_empty() {
            if stream.writable().await.is_err() {
                return;
            }
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    })
    .await;
}
