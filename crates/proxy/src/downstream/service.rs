//! The request path: one downstream request → route → upstream tries → one response.
//!
//! Cancel safety: hyper drops this future when the downstream closes while linger waits
//! for the upstream (R7). [`Inflight`]'s `Drop` then aborts the upstream connection (the
//! origin sees its connection close at once, nothing is written to the gone client) and
//! logs `downstream.waiting.closed`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{DsConn, ListenerCtx, WorkerCtx};
use crate::body::{BodyProgress, DownBody, Exchange, ExpectGate, StreamBody, UpBody};
use crate::config::{EarlyResponsePolicy, HostMatch};
use crate::forward;
use crate::io::PeerClose;
use crate::lifecycle::downstream::{ConnDecision, ResponseFacts};
use crate::lifecycle::upstream::{connection_has, Exchange as UpExchange, Reuse};
use crate::observe::access_log::unix_now;
use crate::observe::metrics::{RequestLabels, RetryLabels};
use crate::observe::{AccessRecord, CloseReason, ConnState, RetryEntry, Termination};
use crate::retry::{self, Decision, TryFailure};
use crate::upstream::{Cluster, ConnShared, ConnectError, UpstreamConn};

/// How long an `Expect: 100-continue` body waits for the upstream's 100 before it is sent
/// anyway (curl waits 1 s).
const EXPECT_WAIT: Duration = Duration::from_secs(1);
/// How long a response that arrived before the request body was fully forwarded waits for
/// the body to finish before it is treated as an early response (R4).
const EARLY_RESPONSE_GRACE: Duration = Duration::from_millis(20);
/// Pooled connections found closed at checkout that may be skipped per request.
const MAX_STALE_SKIPS: u32 = 16;

/// The hyper service for one downstream connection.
#[derive(Clone)]
pub struct DsService {
    pub worker: Arc<WorkerCtx>,
    pub listener: Arc<ListenerCtx>,
    pub conn: Arc<DsConn>,
}

impl std::fmt::Debug for DsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsService")
            .field("conn", &self.conn.id)
            .finish()
    }
}

impl hyper::service::Service<Request<Incoming>> for DsService {
    type Response = Response<DownBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<DownBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// What the access log needs, gathered along the way.
struct Record {
    started: Instant,
    index: u64,
    method: Method,
    path: String,
    version: Version,
    host: String,
    bytes_in: Option<Arc<BodyProgress>>,
    bytes_in_fixed: u64,
    connect_ms: Option<f64>,
    first_byte_ms: Option<f64>,
    cluster: Option<Arc<String>>,
    endpoint: Option<String>,
    upstream_conn: Option<u64>,
    upstream_reused: Option<bool>,
    upstream_conn_requests: Option<u64>,
    upstream_conn_age_ms: Option<f64>,
    upstream_conn_closed: Option<&'static str>,
    retries: Vec<RetryEntry>,
    downstream_close: Option<CloseReason>,
    detail: Option<String>,
    /// The request asked to close (or is HTTP/1.0 without keep-alive).
    wants_close: bool,
}

/// A request in progress. Dropping it before the response is handed to hyper means the
/// downstream went away while linger waited (R7).
struct Inflight {
    svc: DsService,
    record: Option<Record>,
    upstream: Option<Arc<ConnShared>>,
    endpoint_in_flight: Option<(Arc<Cluster>, usize)>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            if let Some(up) = self.upstream.take() {
                up.abort(CloseReason::Aborted);
            }
            if let Some((cluster, ep)) = self.endpoint_in_flight.take() {
                cluster.end_try(ep);
            }
            let mut record = record;
            if let Some(v) = self.svc.conn.stats.framing_violation() {
                // The request body broke its framing; the connection answers 400 and closes.
                self.svc
                    .conn
                    .violation_logged
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                record.detail = Some(format!("ambiguous request framing: {v}"));
                self.svc.finish(record, 400, 0, Termination::BadRequest);
                return;
            }
            if self.svc.conn.cut.load(std::sync::atomic::Ordering::Relaxed) {
                record.detail = Some("cut at the drain deadline while waiting".into());
                record.downstream_close = Some(CloseReason::DrainDeadline);
                self.svc.finish(record, 0, 0, Termination::DrainDeadline);
                return;
            }
            self.svc
                .worker
                .metrics
                .race("R7", "downstream_closed_while_waiting");
            let peer = self.svc.conn.stats.peer();
            record.detail = Some(format!(
                "client aborted while waiting (downstream {})",
                peer.as_str()
            ));
            self.svc
                .finish(record, 0, 0, Termination::DownstreamClosedWaiting);
        }
    }
}

/// Finishes an exchange when its response body ends (or fails, or is dropped).
struct Finish {
    svc: DsService,
    record: Option<Record>,
    status: u16,
    /// The code logged when the body completes: `ok`, or why linger answered itself.
    termination: Termination,
    upstream: Option<(Arc<Cluster>, UpstreamConn, Reuse)>,
}

impl Exchange for Finish {
    fn complete(&mut self, bytes_out: u64) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some((cluster, mut conn, reuse)) = self.upstream.take() {
            cluster.end_try(conn.endpoint);
            conn.shared.stats.journal().record("response_end");
            match reuse {
                Reuse::Keep {
                    idle_for,
                    requests_left,
                } => {
                    conn.requests_left = requests_left;
                    cluster.checkin(conn, idle_for);
                }
                Reuse::Close(reason) => {
                    record.upstream_conn_closed = Some(reason.as_str());
                    conn.abort(reason);
                }
            }
        }
        self.svc
            .finish(record, self.status, bytes_out, self.termination);
    }

    fn upstream_failed(&mut self, bytes_out: u64, error: &hyper::Error) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some((cluster, conn, _)) = self.upstream.take() {
            cluster.end_try(conn.endpoint);
            let reason = upstream_close_reason(conn.shared.stats.peer());
            record.upstream_conn_closed = Some(reason.as_str());
            conn.abort(reason);
        }
        // The downstream response is cut short: hyper closes the connection without the
        // final chunk, or before the announced length (R11).
        self.svc.conn.set_close_reason(CloseReason::ErrorResponse);
        self.svc
            .worker
            .metrics
            .race("R11", "upstream_failed_mid_body");
        record.detail = Some(format!("upstream failed mid-body: {error}"));
        self.svc.finish(
            record,
            self.status,
            bytes_out,
            Termination::UpstreamResetMidBody,
        );
    }

    fn dropped(&mut self, bytes_out: u64) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some((cluster, conn, _)) = self.upstream.take() {
            cluster.end_try(conn.endpoint);
            record.upstream_conn_closed = Some(CloseReason::Aborted.as_str());
            conn.abort(CloseReason::Aborted);
        }
        if self.svc.conn.cut.load(std::sync::atomic::Ordering::Relaxed) {
            record.detail = Some("cut at the drain deadline during the response body".into());
            record.downstream_close = Some(CloseReason::DrainDeadline);
            self.svc
                .finish(record, self.status, bytes_out, Termination::DrainDeadline);
            return;
        }
        self.svc
            .worker
            .metrics
            .race("R5", "downstream_closed_while_streaming");
        record.detail = Some(format!(
            "downstream closed during the response body ({})",
            self.svc.conn.stats.peer().as_str()
        ));
        self.svc.finish(
            record,
            self.status,
            bytes_out,
            Termination::DownstreamClosedStreaming,
        );
    }
}

/// Metric label of each `status_index`.
pub(crate) const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 1,
        200..=299 => 2,
        300..=399 => 3,
        400..=499 => 4,
        500..=599 => 5,
        _ => 0,
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// The request host without a port, lowercased.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    let host = if raw.starts_with('[') {
        raw.split(']').next().map(|h| format!("{h}]"))?
    } else {
        raw.split(':').next()?.to_owned()
    };
    Some(host.to_ascii_lowercase())
}

fn wants_close(req: &Request<Incoming>) -> bool {
    if connection_has(req.headers(), "close") {
        return true;
    }
    req.version() == Version::HTTP_10 && !connection_has(req.headers(), "keep-alive")
}

/// Sends `len` request-body bytes? Reads a whole body of known small length.
/// Why a request body could not be read whole.
enum BodyReadError {
    /// No bytes for the listener's `request_body_timeout`.
    Stalled,
    Failed(String),
}

/// Reads a body of at most `limit` bytes whole, waiting at most `stall` for each frame.
async fn collect_bounded(
    body: Incoming,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, BodyReadError> {
    let mut body = http_body_util::Limited::new(body, limit);
    let mut out = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(stall, body.frame()).await {
            Err(_) => return Err(BodyReadError::Stalled),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(e))) => return Err(BodyReadError::Failed(e.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

// === impl DsService ===

impl DsService {
    fn journal(&self) -> &crate::observe::Journal {
        self.conn.stats.journal()
    }

    /// A response head is handed to hyper.
    fn responding(&self, status: u16) {
        let j = self.journal();
        j.set_state(ConnState::Responding);
        j.record_with("response_head", status.to_string());
    }

    fn finish(&self, record: Record, status: u16, bytes_out: u64, term: Termination) {
        self.journal().record_with(
            "response_end",
            format!("{status} {term}, {bytes_out} bytes"),
        );
        let m = &self.worker.metrics;
        let elapsed = record.started.elapsed();
        if term == Termination::Ok {
            self.listener.ok_requests[status_index(status)].inc();
        } else {
            m.requests
                .get_or_create(&RequestLabels {
                    listener: self.listener.name.clone(),
                    status: status_class(status),
                    termination: term.as_str(),
                })
                .inc();
        }
        self.listener.duration.observe(elapsed.as_secs_f64());
        if self.worker.access_log.enabled() {
            let bytes_in = record
                .bytes_in
                .as_ref()
                .map_or(record.bytes_in_fixed, |p| p.bytes());
            let rec = AccessRecord {
                ts: unix_now(),
                listener: self.listener.name.clone(),
                downstream_conn: self.conn.id,
                request_index: record.index,
                client: self.conn.peer.to_string(),
                method: record.method.to_string(),
                path: record.path,
                version: version_str(record.version),
                host: record.host,
                status,
                bytes_in,
                bytes_out,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_connect_ms: record.connect_ms,
                upstream_first_byte_ms: record.first_byte_ms,
                cluster: record.cluster,
                endpoint: record.endpoint,
                upstream_conn: record.upstream_conn,
                upstream_reused: record.upstream_reused,
                upstream_conn_requests: record.upstream_conn_requests,
                upstream_conn_age_ms: record.upstream_conn_age_ms,
                upstream_conn_closed: record.upstream_conn_closed,
                retries: record.retries,
                downstream_close: record.downstream_close.map(CloseReason::as_str),
                termination: term.as_str(),
                detail: record.detail,
            };
            self.worker.access_log.write(&rec);
        }
        if term != Termination::Ok {
            tracing::debug!(
                downstream_conn = self.conn.id,
                termination = term.as_str(),
                "request ended abnormally"
            );
        }
        self.conn.end_request();
    }

    /// A response linger makes itself (400, 404, 502, 504...).
    fn local(
        &self,
        inflight: &mut Inflight,
        status: StatusCode,
        term: Termination,
        detail: String,
        close: Option<CloseReason>,
    ) -> Response<DownBody> {
        let mut record = inflight.record.take().expect("record is taken once");
        if let Some(up) = inflight.upstream.take() {
            up.abort(CloseReason::Aborted);
        }
        if let Some((cluster, ep)) = inflight.endpoint_in_flight.take() {
            cluster.end_try(ep);
        }
        let body_unread = record
            .bytes_in
            .as_ref()
            .is_some_and(|p| !p.is_done() && !p.failed());
        tracing::info!(
            downstream_conn = self.conn.id,
            status = status.as_u16(),
            termination = term.as_str(),
            endpoint = record.endpoint.as_deref().unwrap_or("-"),
            "{detail}"
        );
        record.detail = Some(detail.clone());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let decision = self.listener.policy.decide(ResponseFacts {
            request_index: record.index,
            age: self.conn.started.elapsed(),
            draining: self.worker.is_draining(),
            request_wants_close: record.wants_close,
            request_body_unread: body_unread,
            ambiguous_request: false,
            fatal_error: close.is_some(),
        });
        let decision = match (close, decision) {
            (Some(r), _) => ConnDecision::Close(r),
            (None, d) => d,
        };
        self.apply_decision(&mut headers, decision, &mut record);
        self.responding(status.as_u16());
        // What a client may know: the status, linger's code for what happened, and the
        // request's name in the log and in /connections. The detail (addresses, errors)
        // is in the log line above and in the access log.
        let body = format!(
            "{} {}\n{} (request d{}#{})\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            term.as_str(),
            self.conn.id,
            record.index
        );
        let mut resp = Response::new(DownBody::full(
            body,
            Some(Box::new(Finish {
                svc: self.clone(),
                record: Some(record),
                status: status.as_u16(),
                termination: term,
                upstream: None,
            })),
        ));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    fn apply_decision(&self, headers: &mut HeaderMap, decision: ConnDecision, record: &mut Record) {
        match decision {
            ConnDecision::KeepAlive { announce } => {
                if announce.is_some() {
                    if let Some(v) = &self.listener.keep_alive_value {
                        headers.insert("keep-alive", v.clone());
                    }
                }
            }
            ConnDecision::Close(reason) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                record.downstream_close = Some(reason);
                self.conn.set_close_reason(reason);
            }
        }
    }

    async fn handle(self, mut req: Request<Incoming>) -> Response<DownBody> {
        let index = self.conn.begin_request();
        self.journal().record_with(
            "request_head",
            format!(
                "{} {} #{index}",
                req.method(),
                truncated(req.uri().path(), JOURNAL_PATH_CHARS)
            ),
        );
        let logging = self.worker.access_log.enabled();
        let record = Record {
            started: Instant::now(),
            index,
            method: req.method().clone(),
            path: if logging {
                req.uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned())
            } else {
                String::new()
            },
            version: req.version(),
            host: if logging {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            } else {
                String::new()
            },
            bytes_in: None,
            bytes_in_fixed: 0,
            connect_ms: None,
            first_byte_ms: None,
            cluster: None,
            endpoint: None,
            upstream_conn: None,
            upstream_reused: None,
            upstream_conn_requests: None,
            upstream_conn_age_ms: None,
            upstream_conn_closed: None,
            retries: Vec::new(),
            downstream_close: None,
            detail: None,
            wants_close: wants_close(&req),
        };
        let mut inflight = Inflight {
            svc: self.clone(),
            record: Some(record),
            upstream: None,
            endpoint_in_flight: None,
        };

        // --- validate ---
        if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            return self.local(
                &mut inflight,
                StatusCode::BAD_REQUEST,
                Termination::MissingHost,
                "HTTP/1.1 request without a Host header".into(),
                Some(CloseReason::BadRequest),
            );
        }
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return self.local(
                &mut inflight,
                StatusCode::BAD_REQUEST,
                Termination::BadRequest,
                "more than one Host header".into(),
                Some(CloseReason::BadRequest),
            );
        }

        // --- route ---
        let host = if self.listener.routes_need_host {
            request_host(&req).unwrap_or_default()
        } else {
            String::new()
        };
        let Some((cluster_idx, request_buffer)) = self.route(&host, req.uri().path()) else {
            let detail = format!(
                "no route for host {:?} path {:?}",
                request_host(&req).unwrap_or_default(),
                req.uri().path()
            );
            return self.local(
                &mut inflight,
                StatusCode::NOT_FOUND,
                Termination::NoRoute,
                detail,
                None,
            );
        };
        let cluster = self.worker.clusters[cluster_idx].clone();
        if let Some(r) = inflight.record.as_mut() {
            r.cluster = Some(cluster.name.clone());
        }

        // --- build the upstream request head ---
        let ds_wants_close = wants_close(&req);
        // A body on GET or HEAD: backends that ignore it would read it as the next request,
        // so neither connection is reused after this exchange.
        let ambiguous_body = (req.method() == Method::GET || req.method() == Method::HEAD)
            && !req.body().is_end_stream();
        let idempotent = retry::is_idempotent(&req);
        let ds_upgrade = req
            .headers()
            .get(header::UPGRADE)
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let original_host = headers.get(header::HOST).cloned();
        let upgrade = forward::strip_hop_by_hop(&mut headers);
        let ds_upgrade = if upgrade.is_some() { ds_upgrade } else { None };
        forward::add_forwarding(
            &mut headers,
            &self.listener.cfg.headers,
            self.conn.peer.ip(),
            &self.conn.peer_ip_value,
            original_host.as_ref(),
            parts.version,
        );
        if let Some(u) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, u.clone());
        } else if ambiguous_body {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let expect_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let uri: Uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        let method = parts.method;

        // --- the request body ---
        let progress = Arc::new(BodyProgress::default());
        let mut replay: Option<Bytes> = None;
        let mut stream: Option<Box<StreamBody>> = None;
        let mut gate: Option<Arc<ExpectGate>> = None;
        if body.is_end_stream() {
            progress.mark_done();
        } else {
            // Read whole before an upstream is chosen: bodies the route buffers (a slow
            // client then holds no upstream connection), and small bodies of idempotent
            // requests (replayable on a retry). `Expect: 100-continue` leaves the choice to
            // the origin, so such bodies stream.
            let exact = body.size_hint().exact();
            let fits = |limit: usize| exact.is_some_and(|n| n <= limit as u64);
            let retry_buffer = cluster.cfg.retry.buffer_bytes;
            let buffer = if expect_continue {
                None
            } else if fits(request_buffer) {
                Some(request_buffer)
            } else if idempotent && fits(retry_buffer) {
                Some(retry_buffer)
            } else {
                None
            };
            if let Some(limit) = buffer {
                let timeout = self.listener.cfg.request_body_timeout;
                match collect_bounded(body, limit, timeout).await {
                    Ok(b) => {
                        progress.mark_done();
                        if let Some(r) = inflight.record.as_mut() {
                            r.bytes_in_fixed = b.len() as u64;
                        }
                        replay = Some(b);
                    }
                    Err(BodyReadError::Stalled) => {
                        return self.local(
                            &mut inflight,
                            StatusCode::REQUEST_TIMEOUT,
                            Termination::RequestBodyTimeout,
                            format!("no request body bytes for {timeout:?}"),
                            Some(CloseReason::RequestBodyTimeout),
                        )
                    }
                    Err(BodyReadError::Failed(e)) => {
                        return self.local(
                            &mut inflight,
                            StatusCode::BAD_REQUEST,
                            Termination::DownstreamBodyError,
                            format!("request body could not be read: {e}"),
                            Some(CloseReason::BadRequest),
                        )
                    }
                }
            } else {
                let mut body = body;
                let mut first = None;
                if expect_continue {
                    let g = Arc::new(ExpectGate::default());
                    let timer = g.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(EXPECT_WAIT).await;
                        timer.open();
                    });
                    gate = Some(g);
                } else {
                    // Wait for the first body bytes before touching an upstream: a body
                    // that is broken from its first byte never reaches one (R12).
                    match body.frame().await {
                        Some(Ok(f)) => {
                            first = Some(f);
                            if body.is_end_stream() {
                                progress.mark_done();
                            }
                        }
                        Some(Err(e)) => {
                            return self.local(
                                &mut inflight,
                                StatusCode::BAD_REQUEST,
                                Termination::BadRequest,
                                format!("malformed request body: {e}"),
                                Some(CloseReason::BadRequest),
                            )
                        }
                        None => progress.mark_done(),
                    }
                }
                if let Some(r) = inflight.record.as_mut() {
                    r.bytes_in = Some(progress.clone());
                }
                stream = Some(Box::new(StreamBody {
                    ended: first.is_none() && progress.is_done(),
                    first,
                    inner: body,
                    progress: progress.clone(),
                    gate: gate.clone(),
                }));
            }
        }
        let replayable = stream.is_none();
        cluster.budget.deposit();

        // --- tries ---
        let mut retries_done = 0u32;
        let mut stale_skips = 0u32;
        let mut avoid: Vec<usize> = Vec::new();
        let mut stream = stream;
        let m = self.worker.metrics.clone();
        let result = 'tries: loop {
            let ep_idx = cluster.pick(&avoid);
            let endpoint_label = cluster.endpoints[ep_idx].label.as_str();
            if logging {
                if let Some(r) = inflight.record.as_mut() {
                    r.endpoint = Some(endpoint_label.to_owned());
                }
            }
            let failed: FailedTry = 'attempt: {
                let conn = match cluster.checkout(ep_idx) {
                    Some(mut c) => {
                        c.reused = true;
                        c
                    }
                    None => {
                        let t0 = Instant::now();
                        match cluster.connect(ep_idx).await {
                            Ok(c) => {
                                if let Some(r) = inflight.record.as_mut() {
                                    r.connect_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                                }
                                c
                            }
                            Err(e) => {
                                let (term, reason) = match e {
                                    ConnectError::Timeout(_) => {
                                        (Termination::ConnectTimeout, "connect_timeout")
                                    }
                                    _ => (Termination::ConnectFailed, "connect_failed"),
                                };
                                break 'attempt FailedTry {
                                    failure: TryFailure::Unsent,
                                    replayable,
                                    reason,
                                    status: StatusCode::BAD_GATEWAY,
                                    term,
                                    detail: format!("upstream {endpoint_label}: {e}"),
                                    upstream_health: true,
                                };
                            }
                        }
                    }
                };
                let mut conn = conn;
                if conn.sender.ready().await.is_err() {
                    // Closed between checkout and use: nothing was sent.
                    m.race("R9", "closed_after_checkout");
                    stale_skips += 1;
                    if stale_skips > MAX_STALE_SKIPS {
                        break 'tries Err((
                            StatusCode::BAD_GATEWAY,
                            Termination::RetriesExhausted,
                            format!(
                                "upstream {endpoint_label}: every pooled connection was closed"
                            ),
                        ));
                    }
                    continue 'tries;
                }
                conn.requests += 1;
                conn.shared.entry.add_request();
                if conn.reused {
                    cluster.reused_requests.inc();
                } else {
                    cluster.fresh_requests.inc();
                }
                self.journal().record_with(
                    "upstream",
                    format!(
                        "u{} {} ({endpoint_label})",
                        conn.id(),
                        if conn.reused { "reused" } else { "new" }
                    ),
                );
                conn.shared
                    .stats
                    .journal()
                    .record_with("request_head", format!("{method} for d{}", self.conn.id));
                if let Some(r) = inflight.record.as_mut() {
                    r.upstream_conn = Some(conn.id());
                    r.upstream_reused = Some(conn.reused);
                    r.upstream_conn_requests = Some(conn.requests);
                    r.upstream_conn_age_ms = Some(conn.created.elapsed().as_secs_f64() * 1000.0);
                }
                let body = if let Some(b) = &replay {
                    UpBody::Full(Some(b.clone()))
                } else if let Some(s) = stream.take() {
                    UpBody::Stream(s)
                } else {
                    UpBody::Empty
                };
                let mut up_req = Request::new(body);
                *up_req.method_mut() = method.clone();
                *up_req.uri_mut() = uri.clone();
                *up_req.version_mut() = Version::HTTP_11;
                *up_req.headers_mut() = headers.clone();
                if !self.listener.cfg.headers.preserve_host || original_host.is_none() {
                    if let Ok(v) = HeaderValue::from_str(endpoint_label) {
                        up_req.headers_mut().insert(header::HOST, v);
                    }
                }
                if let Some(g) = &gate {
                    let g = g.clone();
                    hyper::ext::on_informational(&mut up_req, move |res| {
                        if res.status() == StatusCode::CONTINUE {
                            g.open();
                        }
                    });
                }
                if upgrade.is_some() {
                    conn.shared.mark_upgrading();
                }
                inflight.upstream = Some(conn.shared.clone());
                cluster.begin_try(ep_idx);
                inflight.endpoint_in_flight = Some((cluster.clone(), ep_idx));
                let written_before = conn.shared.stats.bytes_written();
                let sent_at = Instant::now();
                let _judging = conn.shared.open_exchange();
                let fut = conn.sender.try_send_request(up_req);
                let outcome = tokio::time::timeout(cluster.cfg.response_timeout, fut).await;
                inflight.endpoint_in_flight = None;
                match outcome {
                    Ok(Ok(resp)) => {
                        conn.shared
                            .stats
                            .journal()
                            .record_with("response_head", resp.status().as_str().to_owned());
                        // `Connection: close` or HTTP/1.0 ends the connection as soon as the
                        // body is read, maybe before linger is done with the exchange: name
                        // the close now (R9).
                        let may_close = resp.version() != Version::HTTP_11
                            || resp.headers().contains_key(header::CONNECTION);
                        if ambiguous_body {
                            // linger asked for the close (`Connection: close` went up).
                            conn.shared.note_close_reason(CloseReason::AmbiguousRequest);
                        } else if may_close {
                            if let Reuse::Close(reason) = cluster.reuse.after_response(UpExchange {
                                version: resp.version(),
                                headers: resp.headers(),
                                served: conn.requests,
                                requests_left: conn.requests_left,
                                request_body_complete: true,
                            }) {
                                conn.shared.note_close_reason(reason);
                            }
                        }
                        if let Some(r) = inflight.record.as_mut() {
                            r.first_byte_ms = Some(sent_at.elapsed().as_secs_f64() * 1000.0);
                        }
                        break 'tries Ok((conn, resp));
                    }
                    Ok(Err(mut e)) => {
                        cluster.end_try(ep_idx);
                        inflight.upstream = None;
                        let returned = e.take_message();
                        let peer = conn.shared.stats.peer();
                        let nothing_written = conn.shared.stats.bytes_written() == written_before;
                        let err = e.into_error();
                        let (term, reason) = classify(&err, peer, conn.reused);
                        let detail = format!(
                            "upstream {endpoint_label} (conn {}, {}): {err}",
                            conn.id(),
                            if conn.reused { "reused" } else { "new" }
                        );
                        let close = upstream_close_reason(peer);
                        let reused = conn.reused;
                        conn.shared.stats.journal().record_with("failed", reason);
                        conn.abort(close);
                        if let Some(r) = inflight.record.as_mut() {
                            // The last try's connection, as the line's other upstream_* fields.
                            r.upstream_conn_closed = Some(close.as_str());
                        }
                        if progress.failed() {
                            break 'tries Err((
                                StatusCode::BAD_REQUEST,
                                Termination::DownstreamBodyError,
                                "the request body failed while it was forwarded".into(),
                            ));
                        }
                        let failure = if returned.is_some() || nothing_written {
                            TryFailure::Unsent
                        } else {
                            TryFailure::MaybeSent
                        };
                        // A body handed back unsent can be sent again as it is.
                        if let Some(req) = returned {
                            if let UpBody::Stream(s) = req.into_body() {
                                stream = Some(s);
                            }
                        }
                        if reused {
                            m.race("R1", "reused_connection_failed");
                        }
                        FailedTry {
                            failure,
                            replayable: replayable || stream.is_some(),
                            reason,
                            status: StatusCode::BAD_GATEWAY,
                            term,
                            detail,
                            // A stale pooled connection says nothing about the upstream's health.
                            upstream_health: !reused,
                        }
                    }
                    Err(_elapsed) => {
                        cluster.end_try(ep_idx);
                        inflight.upstream = None;
                        conn.shared
                            .stats
                            .journal()
                            .record_with("failed", "per_try_timeout");
                        conn.abort(CloseReason::Aborted);
                        FailedTry {
                            failure: TryFailure::MaybeSent,
                            replayable,
                            reason: "per_try_timeout",
                            status: StatusCode::GATEWAY_TIMEOUT,
                            term: Termination::ResponseTimeout,
                            detail: format!(
                                "upstream {endpoint_label}: no response head within {:?}",
                                cluster.cfg.response_timeout
                            ),
                            upstream_health: true,
                        }
                    }
                }
            };
            // One step for every failed try: retry (after a backoff, on another endpoint
            // when the failure says something about this one), or answer the refusal.
            match self.retry_decision(
                &cluster,
                &mut inflight,
                failed.failure,
                idempotent,
                failed.replayable,
                retries_done,
                failed.reason,
            ) {
                Decision::Retry => {
                    retries_done += 1;
                    if failed.upstream_health {
                        avoid.push(ep_idx);
                        self.backoff(&cluster, retries_done).await;
                    }
                }
                d => break Err((failed.status, refusal_term(d, failed.term), failed.detail)),
            }
        };

        let (conn, resp) = match result {
            Ok(ok) => ok,
            Err((status, term, detail)) => {
                return self.local(&mut inflight, status, term, detail, None);
            }
        };

        // --- the response ---
        let (mut parts, up_body) = resp.into_parts();
        let mut body_complete = replay.is_some() || progress.is_done();
        if !body_complete {
            // The response head came before the whole request body was forwarded. Often the
            // rest is already on its way and done in microseconds; a true early response
            // (R4) is held (policy `hold`) or sent with `Connection: close` after a grace.
            let wait = match self.listener.cfg.early_response {
                EarlyResponsePolicy::Hold => self.listener.cfg.early_response_hold,
                EarlyResponsePolicy::Close => EARLY_RESPONSE_GRACE,
            };
            let _ = tokio::time::timeout(wait, progress.finished()).await;
            body_complete = progress.is_done();
        }
        if !body_complete {
            m.race("R4", "early_response");
        }
        let reuse = if ambiguous_body {
            Reuse::Close(CloseReason::AmbiguousRequest)
        } else {
            cluster.reuse.after_response(UpExchange {
                version: parts.version,
                headers: &parts.headers,
                served: conn.requests,
                requests_left: conn.requests_left,
                request_body_complete: body_complete,
            })
        };
        if let Reuse::Close(reason) = reuse {
            // Decided now, on the head: if the upstream's FIN ends the connection before the
            // body is done, the close is still explained by this reason.
            conn.shared.note_close_reason(reason);
        }

        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(ds_upgrade) = ds_upgrade {
                return self.upgrade(&mut inflight, conn, parts, up_body, ds_upgrade, upgrade);
            }
        }

        let mut record = inflight.record.take().expect("record is taken once");
        inflight.upstream = None;
        forward::strip_hop_by_hop(&mut parts.headers);
        if self.listener.cfg.headers.via {
            forward::append_via(&mut parts.headers, parts.version);
        }
        let decision = self.listener.policy.decide(ResponseFacts {
            request_index: record.index,
            age: self.conn.started.elapsed(),
            draining: self.worker.is_draining(),
            request_wants_close: ds_wants_close,
            request_body_unread: !body_complete,
            ambiguous_request: ambiguous_body,
            fatal_error: false,
        });
        self.apply_decision(&mut parts.headers, decision, &mut record);
        parts.version = Version::HTTP_11;
        let status = parts.status.as_u16();
        self.responding(status);
        let finish = Finish {
            svc: self.clone(),
            record: Some(record),
            status,
            termination: Termination::Ok,
            upstream: Some((cluster, conn, reuse)),
        };
        Response::from_parts(parts, DownBody::upstream(up_body, Box::new(finish)))
    }

    fn upgrade(
        &self,
        inflight: &mut Inflight,
        conn: UpstreamConn,
        mut parts: http::response::Parts,
        up_body: Incoming,
        ds_upgrade: hyper::upgrade::OnUpgrade,
        upgrade: Option<HeaderValue>,
    ) -> Response<DownBody> {
        let mut record = inflight.record.take().expect("record is taken once");
        inflight.upstream = None;
        let up_resp = Response::from_parts(parts.clone(), up_body);
        let up_upgrade = hyper::upgrade::on(up_resp);
        let conn_id = self.conn.id;
        let shared = conn.shared.clone();
        tokio::spawn(async move {
            let (ds, up) = match tokio::join!(ds_upgrade, up_upgrade) {
                (Ok(ds), Ok(up)) => (ds, up),
                (ds, up) => {
                    tracing::info!(
                        downstream_conn = conn_id,
                        downstream_ok = ds.is_ok(),
                        upstream_ok = up.is_ok(),
                        "upgrade failed"
                    );
                    shared.abort(CloseReason::Aborted);
                    return;
                }
            };
            let mut ds = hyper_util::rt::TokioIo::new(ds);
            let mut up = hyper_util::rt::TokioIo::new(up);
            let r = tokio::io::copy_bidirectional(&mut ds, &mut up).await;
            tracing::debug!(downstream_conn = conn_id, result = ?r, "upgraded tunnel ended");
            drop(conn);
        });
        let upgrade_value = parts.headers.get(header::UPGRADE).cloned().or(upgrade);
        forward::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade_value {
            parts.headers.insert(header::UPGRADE, u);
        }
        record.downstream_close = Some(CloseReason::UpgradeEnded);
        self.conn.set_close_reason(CloseReason::UpgradeEnded);
        let finish = Finish {
            svc: self.clone(),
            record: Some(record),
            status: 101,
            termination: Termination::Ok,
            upstream: None,
        };
        Response::from_parts(parts, DownBody::full(Bytes::new(), Some(Box::new(finish))))
    }

    /// The first route that matches: its cluster and its request buffer.
    fn route(&self, host: &str, path: &str) -> Option<(usize, usize)> {
        // `OPTIONS *` asks about the server as a whole: it goes where `/` goes.
        let path = if path == "*" { "/" } else { path };
        self.listener.routes.iter().find_map(|r| {
            let host_ok = match &r.host {
                HostMatch::Any => true,
                HostMatch::Exact(h) => h == host,
                HostMatch::Suffix(s) => host.ends_with(s.as_str()),
            };
            (host_ok && path.starts_with(&r.path_prefix))
                .then_some((r.cluster, r.request_buffer_bytes))
        })
    }

    #[allow(clippy::too_many_arguments)] // each argument is one fact of the decision
    fn retry_decision(
        &self,
        cluster: &Cluster,
        inflight: &mut Inflight,
        failure: TryFailure,
        idempotent: bool,
        replayable: bool,
        retries_done: u32,
        reason: &'static str,
    ) -> Decision {
        let mut d = retry::decide(
            failure,
            idempotent,
            replayable,
            retries_done,
            cluster.cfg.retry.max_retries,
        );
        // The budget guards a struggling upstream against retry storms. A failure on a
        // reused connection before any response (the idle-close race, R1) says nothing
        // about the upstream's health, and the retry goes to a fresh connection whose
        // failures do count: it is bounded by max_retries, not by the budget.
        let stale_connection = reason.starts_with("reused_connection");
        if d == Decision::Retry
            && failure == TryFailure::MaybeSent
            && !stale_connection
            && !cluster.budget.try_withdraw()
        {
            d = Decision::RefuseBudget;
        }
        self.worker
            .metrics
            .retries
            .get_or_create(&RetryLabels {
                cluster: cluster.name.clone(),
                reason,
                outcome: d.as_str(),
            })
            .inc();
        self.journal().record_with(
            "retry",
            format!("try {} failed: {reason}; {}", retries_done + 1, d.as_str()),
        );
        if let Some(r) = inflight.record.as_mut() {
            r.retries.push(RetryEntry {
                attempt: retries_done + 1,
                reason,
                decision: d.as_str(),
            });
        }
        d
    }

    async fn backoff(&self, cluster: &Cluster, attempt: u32) {
        let d = retry::backoff(
            cluster.cfg.retry.backoff_base,
            cluster.cfg.retry.backoff_max,
            attempt,
        );
        tokio::time::sleep(d).await;
    }
}

fn refusal_term(d: Decision, failed: Termination) -> Termination {
    match d {
        Decision::RefuseBudget => Termination::RetryBudgetExhausted,
        _ => failed,
    }
}

/// A try that failed, and what the retry decision needs to know about it.
struct FailedTry {
    failure: TryFailure,
    /// Can the request body be sent again?
    replayable: bool,
    /// The retry reason logged with the decision.
    reason: &'static str,
    /// The answer, and its termination code, if no retry follows.
    status: StatusCode,
    term: Termination,
    detail: String,
    /// Does the failure say something about the endpoint's health? Then the retry backs
    /// off and prefers another endpoint.
    upstream_health: bool,
}

/// Why an upstream connection that failed during an exchange is closed.
fn upstream_close_reason(peer: PeerClose) -> CloseReason {
    match peer {
        PeerClose::Rst => CloseReason::UpstreamRst,
        PeerClose::TimedOut => CloseReason::UpstreamDeadPeer,
        // The upstream's own close: never named as one linger made.
        PeerClose::Fin => CloseReason::UpstreamFinBusy,
        _ => CloseReason::Aborted,
    }
}

/// Path characters kept in a journal event.
const JOURNAL_PATH_CHARS: usize = 64;

fn truncated(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Names a failed try: its termination code and the retry reason.
fn classify(err: &hyper::Error, peer: PeerClose, reused: bool) -> (Termination, &'static str) {
    if err.is_parse() {
        return (
            Termination::UpstreamProtocolError,
            "upstream_protocol_error",
        );
    }
    match (peer, reused) {
        (PeerClose::TimedOut, true) => (
            Termination::UpstreamDeadBeforeResponse,
            "reused_connection_dead",
        ),
        (PeerClose::TimedOut, false) => {
            (Termination::UpstreamDeadBeforeResponse, "connection_dead")
        }
        (PeerClose::Rst, true) => (
            Termination::UpstreamResetBeforeResponse,
            "reused_connection_reset",
        ),
        (PeerClose::Rst, false) => (Termination::UpstreamResetBeforeResponse, "connection_reset"),
        (_, true) => (
            Termination::UpstreamClosedBeforeResponse,
            "reused_connection_closed",
        ),
        (_, false) => (
            Termination::UpstreamClosedBeforeResponse,
            "connection_closed",
        ),
    }
}
