//! The downstream side: accept, drive each connection in one task (`driver.rs`), and
//! own its timers and its close.
//!
//! linger parses and frames; the lifecycle machine decides when a connection ends:
//! * idle timeout (no byte of a next request): graceful close, FIN then linger (R2);
//! * header read timeout (a request head started but did not finish): 408, then close;
//! * max age and drain: close when idle, `Connection: close` on the next response (R3, R10);
//! * at the end, [`linger_close`] drains what the peer still sends (R4) unless the
//!   peer already closed (R8: no wait when nothing can be unread).

pub(crate) mod deadlines;
mod driver;
pub(crate) mod inbound;
pub mod service;
pub(crate) mod spread;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::{ListenerConfig, RouteConfig};
use crate::io::{self, linger_close, IoStats, LingerOutcome};
use crate::lifecycle::connection::{Connection, Timers};
use crate::lifecycle::downstream::DownstreamPolicy;
use crate::observe::journal::Kind;
use crate::observe::metrics::{ListenerLabels, Name};
use crate::observe::{
    AccessLog, AccessRecord, CloseReason, ConnEntry, ConnState, Metrics, Registry, Side,
    Termination,
};
use crate::upstream::Cluster;

use self::driver::Ending;
pub use self::inbound::ReqBody;
use self::inbound::{Inbound, Shared};
use self::service::DsService;
use linger_h1::HeadError;

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
    /// The deadlines of this worker's connections' waits.
    pub deadlines: Arc<deadlines::Deadlines>,
    /// This worker's open downstream connections, as the other workers read them when
    /// they accept (`spread.rs`).
    pub share: spread::Share,
}

// === impl WorkerCtx ===

impl WorkerCtx {
    pub fn is_draining(&self) -> bool {
        *self.drain.borrow() != Drain::Running
    }

    /// Counts a downstream connection as open, and as this worker's.
    fn count_in(&self) {
        self.conns.inc();
        self.share.held.inc();
    }

    /// Takes back what [`WorkerCtx::count_in`] counted.
    fn count_out(&self) {
        self.share.held.dec();
        self.conns.dec();
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
    /// Its series of accepted and open connections, cached likewise.
    pub accepted: prometheus_client::metrics::counter::Counter,
    pub open: prometheus_client::metrics::gauge::Gauge,
    /// The connection timers, shared by every connection's lifecycle machine.
    pub timers: Arc<Timers>,
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
        let labels = ListenerLabels {
            listener: name.clone(),
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
            duration: metrics.request_duration.get_or_create(&labels).clone(),
            accepted: metrics.downstream_accepted.get_or_create(&labels).clone(),
            open: metrics.downstream_open.get_or_create(&labels).clone(),
            name,
            policy,
            cfg: cfg.clone(),
            routes,
            timers: Arc::new(Timers {
                idle_timeout: cfg.idle_timeout,
                header_read_timeout: cfg.header_read_timeout,
                max_age: cfg.max_connection_age,
            }),
            inherits: std::sync::atomic::AtomicU8::new(0),
        }
    }

    pub fn set_inherits(&self, yes: bool) {
        self.inherits
            .store(if yes { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// Gives an accepted socket the listener's TCP options, unless it has them already.
    fn socket_options(&self, stream: &std::net::TcpStream) {
        let known = self.inherits.load(Ordering::Relaxed);
        if known == 1 {
            return;
        }
        if known == 0 {
            let yes = io::socket::inherited(socket2::SockRef::from(stream), &self.cfg.tcp);
            self.set_inherits(yes);
            if yes {
                return;
            }
        }
        if let Err(e) = io::socket::apply(socket2::SockRef::from(stream), &self.cfg.tcp) {
            tracing::warn!(error = %e, "setting downstream socket options failed");
        }
    }
}

#[derive(Debug)]
struct DsState {
    /// The connection's lifecycle machine.
    lc: Connection,
    /// After a `101`, the upstream connection the tunnel takes over (boxed: every
    /// connection carries the slot, few ever fill it).
    tunnel: Option<Box<crate::upstream::UpstreamConn>>,
}

/// One downstream connection, shared by its driver and its service.
#[derive(Debug)]
pub struct DsConn {
    /// Its entry in the registry: id, peer, counters, journal, request count.
    pub entry: Arc<ConnEntry>,
    state: Mutex<DsState>,
    /// The service already logged the request that broke its framing (a bad chunk).
    pub(crate) violation_logged: std::sync::atomic::AtomicBool,
    /// linger closed the connection at the drain deadline, whatever it was doing.
    pub(crate) cut: std::sync::atomic::AtomicBool,
}

// === impl DsConn ===

impl DsConn {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.entry.peer()
    }

    pub fn stats(&self) -> &Arc<IoStats> {
        &self.entry.stats
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.entry.journal().opened()
    }

    /// A request head was parsed and handed to the service.
    pub fn begin_request(&self) -> u64 {
        self.state
            .lock()
            .expect("conn state lock")
            .lc
            .request_started();
        self.stats().journal().set_state(ConnState::Waiting);
        self.entry.add_request()
    }

    /// The response is done (sent, failed or abandoned).
    pub fn end_request(&self) {
        {
            let mut s = self.state.lock().expect("conn state lock");
            // A close decided on the response: the driver closes after it.
            let _ = s.lc.response_ended(io::clock::now());
        }
        self.stats().journal().set_state(ConnState::Idle);
    }

    /// Hands the upstream connection of an upgrade to the tunnel that follows the `101`.
    pub fn set_tunnel(&self, up: crate::upstream::UpstreamConn) {
        self.state.lock().expect("conn state lock").tunnel = Some(Box::new(up));
    }

    fn take_tunnel(&self) -> Option<crate::upstream::UpstreamConn> {
        let up = self.state.lock().expect("conn state lock").tunnel.take();
        up.map(|b| *b)
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
            self.stats()
                .journal()
                .record_with(Kind::Closing, reason.as_str());
        }
    }
}

/// Accepts connections until the drain starts, spawning a driver for each. An accepted
/// socket joins the event loop only when it first has to wait (see [`io::transport::Tcp`]).
pub async fn accept_loop(
    worker: Arc<WorkerCtx>,
    listener: Arc<ListenerCtx>,
    socket: io::socket::Listening,
    workers: Arc<spread::Workers>,
    me: usize,
) {
    let mut drain = worker.drain.clone();
    // Bound to one address, every accepted connection's local address is that one: no
    // getsockname per connection. A wildcard bind asks each socket.
    let local = socket
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        if *drain.borrow() != Drain::Running {
            break;
        }
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => match workers.pick(me) {
                    None => spawn_connection(&worker, &listener, Accepted { stream, peer, local }),
                    Some(to) => spread::hand_off(to, listener.clone(), Accepted { stream, peer, local }),
                },
                Err(e) => match io::socket::accept_error(&e) {
                    io::socket::AcceptError::Connection => {
                        tracing::debug!(listener = %listener.name, error = %e, "a connection failed before it was accepted");
                    }
                    io::socket::AcceptError::Backoff => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            },
            _ = drain.changed() => {}
        }
    }
    // Serve what the kernel already accepted into the backlog: closing the listener with
    // connections in it would reset them.
    loop {
        match socket.try_accept() {
            Ok((stream, peer)) => {
                spawn_connection(
                    &worker,
                    &listener,
                    Accepted {
                        stream,
                        peer,
                        local,
                    },
                );
            }
            Err(e) if io::socket::accept_error(&e) == io::socket::AcceptError::Connection => {}
            Err(_) => break,
        }
    }
    tracing::info!(listener = %listener.name, "stopped accepting");
}

/// A connection as accepted: its socket, the peer's address and ours (when known without
/// asking the socket).
pub(crate) struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

fn spawn_connection(worker: &Arc<WorkerCtx>, listener: &Arc<ListenerCtx>, accepted: Accepted) {
    worker.count_in();
    start_counted(worker, listener, accepted);
}

/// Opens and spawns a connection already counted as open and as `worker`'s, on the
/// current runtime (`worker`'s).
fn start_counted(worker: &Arc<WorkerCtx>, listener: &Arc<ListenerCtx>, accepted: Accepted) {
    let opened = open_connection(worker, listener, accepted);
    tokio::spawn(io::clock::Clocked::new(serve_connection(opened)));
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 48\r\n\r\n408 Request Timeout: request head not received\n";

/// An accepted connection as its task holds it. Everything it needs is behind these two
/// pointers: the task's future, which every idle connection keeps, holds nothing else.
#[derive(Debug)]
pub(crate) struct Opened {
    pub svc: DsService,
    pub shared: Arc<Shared>,
}

/// Counts, registers and builds what one accepted connection needs, before its task runs.
fn open_connection(
    worker: &Arc<WorkerCtx>,
    listener: &Arc<ListenerCtx>,
    Accepted {
        stream,
        peer,
        local,
    }: Accepted,
) -> Opened {
    listener.socket_options(&stream);
    listener.accepted.inc();
    listener.open.inc();

    let local = local.or_else(|| stream.local_addr().ok());
    let stats = Arc::new(IoStats::default());
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
    let conn = Arc::new(DsConn {
        entry,
        state: Mutex::new(DsState {
            lc: Connection::new(listener.timers.clone(), now),
            tunnel: None,
        }),
        violation_logged: std::sync::atomic::AtomicBool::new(false),
        cut: std::sync::atomic::AtomicBool::new(false),
    });
    // Plain TCP: the one transport so far.
    let shared: Arc<Shared> = Arc::new(Shared {
        stats,
        inbound: Mutex::new(Inbound::default()),
        stream: io::transport::Tcp::new(stream),
    });
    Opened {
        svc: DsService {
            worker: worker.clone(),
            listener: listener.clone(),
            conn,
        },
        shared,
    }
}

/// Drives one downstream connection from accept to close. (A block that borrows what it
/// owns: an `async fn` would keep its argument twice in the task.)
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its argument twice: 40 bytes more per connection"
)]
fn serve_connection(o: Opened) -> impl std::future::Future<Output = ()> {
    async move {
        let ending = driver::run(&o).await;
        // The close's futures live on the heap: an open connection's task stays small.
        // Only an ending that is answered builds an answer's future; `bad_request` is
        // whether the connection closes as one.
        let (worker, listener, conn) = (&o.svc.worker, &o.svc.listener, &o.svc.conn);
        let bad_request = match &ending {
            Ending::HeaderTimeout => {
                Box::pin(answer_timeout(worker, listener, conn, &o.shared)).await;
                false
            }
            Ending::BadHead(e) => {
                Box::pin(answer_bad_head(e, worker, listener, conn, &o.shared)).await;
                true
            }
            Ending::Cut => {
                tracing::info!(downstream_conn = conn.id(), "closed at the drain deadline");
                false
            }
            Ending::Closed | Ending::ClientGone | Ending::Tunneled => false,
        };
        Box::pin(close_connection(
            &ending,
            bad_request,
            &o.svc.worker,
            &o.svc.listener,
            &o.svc.conn,
            &o.shared,
        ))
        .await;
        o.svc.worker.count_out();
    }
}

/// How long an answer to a head that ends the connection (408, 400, 431) may take to
/// write.
const ANSWER_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// Answers a head that never completed: 408.
async fn answer_timeout(
    worker: &WorkerCtx,
    listener: &ListenerCtx,
    conn: &DsConn,
    shared: &Shared,
) {
    driver::write_best_effort(shared, RESPONSE_408, ANSWER_WRITE_LIMIT).await;
    let detail = format!(
        "request head not complete within {:?}",
        listener.cfg.header_read_timeout
    );
    log_refusal(
        worker,
        listener,
        conn,
        408,
        Termination::RequestHeadTimeout,
        detail,
    );
}

/// Answers a head linger refuses: 400 or 431.
async fn answer_bad_head(
    e: &HeadError,
    worker: &WorkerCtx,
    listener: &ListenerCtx,
    conn: &DsConn,
    shared: &Shared,
) {
    let (status, term, detail) = match e {
        HeadError::Violation(v) => {
            worker.metrics.race("R12", "ambiguous_framing_refused");
            tracing::info!(downstream_conn = conn.id(), violation = %v, "ambiguous request framing refused");
            (
                400,
                Termination::BadRequest,
                format!("ambiguous request framing: {v}"),
            )
        }
        HeadError::TooLarge => (
            431,
            Termination::HeadTooLarge,
            "request head over the size or field-count limit".to_owned(),
        ),
        HeadError::Malformed => (
            400,
            Termination::BadRequest,
            "malformed request head".to_owned(),
        ),
    };
    let reason = if status == 431 {
        "Request Header Fields Too Large"
    } else {
        "Bad Request"
    };
    let body = format!("{status} {reason}: {detail}\n");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    driver::write_best_effort(shared, resp.as_bytes(), ANSWER_WRITE_LIMIT).await;
    log_refusal(worker, listener, conn, status, term, detail);
}

/// Closes the connection gracefully (FIN, then linger), and counts and explains it.
async fn close_connection(
    ending: &Ending,
    bad_request: bool,
    worker: &WorkerCtx,
    listener: &ListenerCtx,
    conn: &DsConn,
    shared: &Shared,
) {
    let stats = &conn.stats();
    stats.journal().set_state(ConnState::Closing);
    // What arrived after linger's FIN: a request that met the close, if it parses as one.
    let mut late = Vec::new();
    let outcome = match ending {
        // The tunnel closed both sides already.
        Ending::Tunneled => LingerOutcome::PeerAlreadyClosed,
        // At the drain deadline there is no time left to linger: FIN, and close.
        Ending::Cut => linger_close(&shared.stream, stats, Duration::ZERO, &mut late).await,
        // The client asked for the close (`Connection: close`, HTTP/1.0) and sent nothing
        // more: it sends nothing after its request, so there is nothing to drain and no
        // late request to catch. The close sends the FIN (as nginx's lingering_close does
        // when no more data is expected).
        Ending::Closed if asked_to_close(conn, shared) => LingerOutcome::NotNeeded,
        _ => linger_close(&shared.stream, stats, listener.cfg.linger_time, &mut late).await,
    };
    let reason = if bad_request {
        CloseReason::BadRequest
    } else {
        conn.lifecycle(|lc| lc.ended(stats.peer(), stats.peer_closed_busy()))
    };
    match outcome {
        LingerOutcome::TimedOut { discarded } => {
            stats
                .journal()
                .record_with(Kind::LingerTimeout, format!("{discarded} bytes discarded"));
            tracing::debug!(
                downstream_conn = conn.id(),
                discarded,
                "linger time ran out"
            );
        }
        LingerOutcome::PeerClosed { discarded } | LingerOutcome::PeerReset { discarded }
            if discarded > 0 =>
        {
            stats
                .journal()
                .record_with(Kind::Lingered, format!("{discarded} bytes discarded"));
        }
        _ => {}
    }
    if Connection::closed_idle(reason) && !late.is_empty() {
        log_request_at_idle_close(worker, listener, conn, reason, &late);
    }
    worker.registry.close(&conn.entry, reason);
    if reason.is_abnormal() {
        log_journal(&conn.entry, reason);
    }
    let series = worker.metrics.closed(Side::Downstream, reason);
    series.closes.inc();
    series
        .lifetime
        .observe(conn.started().elapsed().as_secs_f64());
    if let Some(h) = &series.requests {
        h.observe(conn.requests() as f64);
    }
    listener.open.dec();
    tracing::debug!(
        downstream_conn = conn.id(),
        reason = reason.as_str(),
        requests = conn.requests(),
        linger = ?outcome,
        "downstream connection closed"
    );
}

/// Did the client ask for this close, with nothing of its unread?
fn asked_to_close(conn: &DsConn, shared: &Shared) -> bool {
    conn.lifecycle(|lc| lc.close_reason()) == Some(CloseReason::RequestedClose)
        && conn.stats().peer() == crate::io::PeerClose::Open
        && {
            let ib = shared.inbound.lock().expect("inbound lock");
            ib.buf.is_empty() && !ib.body_pending()
        }
}

/// Logs a request that linger refused before it became a request (the parser or the framing
/// guard refused its head, or it never finished): the access log gets a line for it too.
fn log_refusal(
    worker: &WorkerCtx,
    listener: &ListenerCtx,
    conn: &DsConn,
    status: u16,
    term: Termination,
    detail: String,
) {
    conn.stats()
        .journal()
        .record_with(Kind::Refused, format!("{status} {term}"));
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
    conn.stats().journal().record_with(
        Kind::RequestLost,
        format!("{} bytes after {reason}", late.len()),
    );
    count_unserved(worker, listener, 0, term);
    tracing::info!(
        downstream_conn = conn.id(),
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
        downstream_conn: conn.id(),
        request_index: conn.requests() + 1,
        client: conn.peer().to_string(),
        ..AccessRecord::default()
    }
}

/// Writes the journal of a connection that ended abnormally to the log.
pub(crate) fn log_journal(entry: &ConnEntry, reason: CloseReason) {
    let (events, dropped) = entry.events();
    let journal = serde_json::to_string(&events).unwrap_or_default();
    tracing::info!(
        target: "linger::journal",
        conn = %entry.key(),
        side = entry.side.as_str(),
        peer = %entry.peer(),
        reason = reason.as_str(),
        dropped,
        %journal,
        "connection ended abnormally"
    );
}
