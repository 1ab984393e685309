//! The request path: one downstream request → route → upstream tries → one response.
//!
//! Cancel safety: the driver drops this future when the downstream closes while linger waits
//! for the upstream (R7). The upstream connection the try holds is dropped with it (the
//! origin sees its connection close at once, nothing is written to the gone client), and
//! [`Inflight`]'s `Drop` logs `downstream.waiting.closed`.

use std::sync::Arc;
use std::time::Duration;

use super::inbound::ReqBody as Incoming;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{DsConn, ListenerCtx, WorkerCtx};
use linger_h1::Framing;

use crate::body::{BodyProgress, DownBody, Exchange, ExpectGate, StreamBody, UpBody, UpstreamBody};
use crate::config::{EarlyResponsePolicy, HostMatch};
use crate::error::{BodyFailure, TryError, TryErrorKind};
use crate::forward;
use crate::lifecycle::downstream::{ConnDecision, ResponseFacts};
use crate::lifecycle::upstream::{connection_has, Exchange as UpExchange, Reuse};
use crate::observe::access_log::unix_now;
use crate::observe::journal::Detail;
use crate::observe::journal::Kind;
use crate::observe::metrics::{RequestLabels, RetryLabels};
use crate::observe::{AccessRecord, CloseReason, ConnState, RetryEntry, Termination};
use crate::retry::{self, Decision, TryFailure};
use crate::upstream::exchange::{
    exchange, write_fields, write_request_head, Answered, Outgoing, ResponseHead,
};
use crate::upstream::{Cluster, UpstreamConn};
/// How long a response that arrived before the request body was fully forwarded waits for
/// the body to finish before it is treated as an early response (R4).
const EARLY_RESPONSE_GRACE: Duration = Duration::from_millis(20);

/// The request path of one downstream connection.
#[derive(Clone)]
pub struct DsService {
    pub worker: Arc<WorkerCtx>,
    pub listener: Arc<ListenerCtx>,
    pub conn: Arc<DsConn>,
}

impl std::fmt::Debug for DsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsService")
            .field("conn", &self.conn.id())
            .finish()
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

impl Record {
    fn new(index: u64, method: Method, version: Version) -> Self {
        Self {
            started: crate::io::clock::now(),
            index,
            method,
            path: String::new(),
            version,
            host: String::new(),
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
            wants_close: false,
        }
    }
}

/// A request in progress. Dropping it before the response is handed to the driver means the
/// downstream went away while linger waited (R7).
struct Inflight {
    svc: DsService,
    record: Option<Record>,
    endpoint_in_flight: Option<(Arc<Cluster>, usize)>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            if let Some((cluster, ep)) = self.endpoint_in_flight.take() {
                cluster.end_try(ep);
            }
            let mut record = record;
            if let Some(v) = self.svc.conn.stats().framing_violation() {
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
            let peer = self.svc.conn.stats().peer();
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
    /// The cluster, the endpoint whose try this is, and what becomes of the connection.
    upstream: Option<(Arc<Cluster>, usize, Reuse)>,
}

impl Exchange for Finish {
    fn complete(&mut self, bytes_out: u64, conn: Option<UpstreamConn>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some((cluster, endpoint, reuse)) = self.upstream.take() {
            cluster.end_try(endpoint);
            if let Some(mut conn) = conn {
                conn.stats.journal().record(Kind::ResponseEnd);
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
                        conn.close(reason);
                    }
                }
            }
        }
        self.svc
            .finish(record, self.status, bytes_out, self.termination);
    }

    fn upstream_failed(&mut self, bytes_out: u64, error: BodyFailure, conn: Option<UpstreamConn>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some((cluster, endpoint, _)) = self.upstream.take() {
            cluster.end_try(endpoint);
        }
        if let Some(conn) = conn {
            let reason = error.close_reason();
            record.upstream_conn_closed = Some(reason.as_str());
            conn.close(reason);
        }
        // The downstream response is cut short: the driver closes the connection without the
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

    fn dropped(&mut self, bytes_out: u64, conn: Option<UpstreamConn>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some((cluster, endpoint, _)) = self.upstream.take() {
            cluster.end_try(endpoint);
        }
        if let Some(conn) = conn {
            record.upstream_conn_closed = Some(CloseReason::Aborted.as_str());
            conn.close(CloseReason::Aborted);
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
            self.svc.conn.stats().peer().as_str()
        ));
        self.svc.finish(
            record,
            self.status,
            bytes_out,
            Termination::DownstreamClosedStreaming,
        );
    }
}

/// linger answers the request itself instead of forwarding it.
struct Refusal {
    status: StatusCode,
    term: Termination,
    detail: String,
    /// The connection closes after the answer, for this reason.
    close: Option<CloseReason>,
}

impl Refusal {
    fn new(
        status: StatusCode,
        term: Termination,
        detail: String,
        close: Option<CloseReason>,
    ) -> Self {
        Self {
            status,
            term,
            detail,
            close,
        }
    }
}

/// The checks a request head must pass before it is routed.
fn validate(req: &Request<Incoming>) -> Result<(), Refusal> {
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Termination::MissingHost,
            "HTTP/1.1 request without a Host header".into(),
            Some(CloseReason::BadRequest),
        ));
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Termination::BadRequest,
            "more than one Host header".into(),
            Some(CloseReason::BadRequest),
        ));
    }
    Ok(())
}

/// What the request path needs to know of the client's request.
struct RequestFacts {
    /// The request asked to close (or is HTTP/1.0 without keep-alive).
    wants_close: bool,
    /// A body on GET or HEAD: backends that ignore it would read it as the next request,
    /// so neither connection is reused after this exchange.
    ambiguous_body: bool,
    idempotent: bool,
}

impl RequestFacts {
    fn of(req: &Request<Incoming>) -> Self {
        Self {
            wants_close: wants_close(req),
            ambiguous_body: (req.method() == Method::GET || req.method() == Method::HEAD)
                && !req.body().is_end_stream(),
            idempotent: retry::is_idempotent(req),
        }
    }
}

/// The request head as it goes upstream.
struct UpstreamHead {
    method: Method,
    /// The origin-form target.
    target: String,
    headers: HeaderMap,
    /// The forwarding fields the request did not have, written after `headers`.
    added: forward::Added,
    /// The client sent a `Host`.
    has_host: bool,
    /// The protocol the client asked to upgrade to, if it did.
    upgrade: Option<HeaderValue>,
    expect_continue: bool,
}

/// A request past its checks and its route, taken apart: what the phases that wait need
/// of it.
struct Routed {
    cluster: Arc<Cluster>,
    request_buffer: usize,
    facts: RequestFacts,
    body: Incoming,
    head: UpstreamHead,
}

/// What becomes of the request body.
#[derive(Default)]
struct BodyPlan {
    progress: Arc<BodyProgress>,
    /// Read whole (replayable).
    replay: Option<Bytes>,
    /// Streamed as it arrives.
    stream: Option<Box<StreamBody>>,
    gate: Option<Arc<ExpectGate>>,
}

/// The request as every try sends it.
struct Prepared {
    method: Method,
    /// The origin-form target.
    target: String,
    /// The header fields as forwarded with linger's other changes, serialized once (the
    /// map goes as soon as they are, while it is in the cache); `Host` is left out when
    /// each try sets its own.
    fields: Vec<u8>,
    added: forward::Added,
    preserve_host: bool,
    /// A body read whole (sent again on a retry).
    replay: Option<Bytes>,
    /// A body that streams from the client.
    stream: Option<UpBody>,
    /// The streamed body goes with chunked encoding (its length is unknown).
    chunked: bool,
    gate: Option<Arc<ExpectGate>>,
    /// How long a response that came before the body ended waits for the body (R4).
    early_wait: Duration,
    /// Could a try that failed after sending be sent again (idempotent, body replayable)?
    may_retry: bool,
}

// === impl Prepared ===

impl Prepared {
    /// The head for a try on `endpoint` (its `Host`, unless the client's is preserved),
    /// with a buffered body after it.
    fn head(&self, endpoint: &str) -> Vec<u8> {
        let host = (!self.preserve_host).then_some(endpoint);
        let mut out = Vec::with_capacity(512 + self.replay.as_ref().map_or(0, Bytes::len));
        write_request_head(
            &mut out,
            &self.method,
            &self.target,
            &self.fields,
            &self.added,
            host,
            self.chunked,
        );
        if let Some(b) = &self.replay {
            out.extend_from_slice(b);
        }
        out
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

/// Why a request body could not be read whole.
enum BodyReadError {
    /// No bytes for the listener's `request_body_timeout`.
    Stalled,
    Failed(String),
}

impl BodyReadError {
    fn refusal(self, timeout: Duration) -> Refusal {
        match self {
            Self::Stalled => Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                Termination::RequestBodyTimeout,
                format!("no request body bytes for {timeout:?}"),
                Some(CloseReason::RequestBodyTimeout),
            ),
            Self::Failed(e) => Refusal::new(
                StatusCode::BAD_REQUEST,
                Termination::DownstreamBodyError,
                format!("request body could not be read: {e}"),
                Some(CloseReason::BadRequest),
            ),
        }
    }
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
        self.conn.stats().journal()
    }

    /// A response head is handed to the driver.
    fn responding(&self, status: u16) {
        let j = self.journal();
        j.set_state(ConnState::Responding);
        j.record_with(Kind::ResponseHead, Detail::Status(status));
    }

    fn finish(&self, record: Record, status: u16, bytes_out: u64, term: Termination) {
        self.journal().record_with(
            Kind::ResponseEnd,
            Detail::End {
                status,
                term,
                bytes: bytes_out,
            },
        );
        let m = &self.worker.metrics;
        let elapsed = crate::io::clock::since(record.started);
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
                downstream_conn: self.conn.id(),
                request_index: record.index,
                client: self.conn.peer().to_string(),
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
                downstream_conn = self.conn.id(),
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
        if let Some((cluster, ep)) = inflight.endpoint_in_flight.take() {
            cluster.end_try(ep);
        }
        let body_unread = record
            .bytes_in
            .as_ref()
            .is_some_and(|p| !p.is_done() && !p.failed());
        tracing::info!(
            downstream_conn = self.conn.id(),
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
            age: crate::io::clock::since(self.conn.started()),
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
        let keep_alive = self.apply_decision(&mut headers, decision, &mut record);
        self.responding(status.as_u16());
        // What a client may know: the status, linger's code for what happened, and the
        // request's name in the log and in /connections. The detail (addresses, errors)
        // is in the log line above and in the access log.
        let body = format!(
            "{} {}\n{} (request d{}#{})\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            term.as_str(),
            self.conn.id(),
            record.index
        );
        let mut body = DownBody::full(
            body,
            Some(Box::new(Finish {
                svc: self.clone(),
                record: Some(record),
                status: status.as_u16(),
                termination: term,
                upstream: None,
            })),
        );
        body.added.keep_alive = keep_alive;
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// Applies the connection's decision to a response's head. Returns whether the head
    /// announces the idle timeout (`Keep-Alive`, written with the head).
    fn apply_decision(
        &self,
        headers: &mut HeaderMap,
        decision: ConnDecision,
        record: &mut Record,
    ) -> bool {
        match decision {
            ConnDecision::KeepAlive { announce } => announce.is_some(),
            ConnDecision::Close(reason) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                record.downstream_close = Some(reason);
                self.conn.set_close_reason(reason);
                false
            }
        }
    }

    /// The request path for one request. What needs only the request (its checks, its
    /// route, the head as it goes upstream) is done here, before the future is built: the
    /// request, taken apart, is not kept in the future, which is copied into its box and
    /// lives on the heap while the exchange runs.
    pub(super) fn handle(
        self,
        req: Request<Incoming>,
    ) -> impl std::future::Future<Output = Response<DownBody>> {
        let mut inflight = self.begin(&req);
        let routed = self.routed(req, &mut inflight);
        async move {
            let result = match routed {
                Ok(routed) => self.forward(routed, &mut inflight).await,
                Err(r) => Err(r),
            };
            match result {
                Ok(resp) => resp,
                Err(r) => self.local(&mut inflight, r.status, r.term, r.detail, r.close),
            }
        }
    }

    /// The phases that need only the request: check, route, the upstream head.
    fn routed(&self, req: Request<Incoming>, inflight: &mut Inflight) -> Result<Routed, Refusal> {
        validate(&req)?;
        let (cluster, request_buffer) = self.route_request(&req, inflight)?;
        let facts = RequestFacts::of(&req);
        let (parts, body) = req.into_parts();
        let head = self.upstream_head(parts, facts.ambiguous_body);
        Ok(Routed {
            cluster,
            request_buffer,
            facts,
            body,
            head,
        })
    }

    /// The phases that wait: the body, the tries, the response. Every refusal comes back
    /// as a [`Refusal`] that `handle` answers. (A block rather than an `async fn`, whose
    /// argument the future would hold twice; and `routed` is used in place, as its fields
    /// bound to locals would take their size again.)
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its argument twice: 272 bytes more in every request's future"
    )]
    fn forward<'a>(
        &'a self,
        routed: Routed,
        inflight: &'a mut Inflight,
    ) -> impl std::future::Future<Output = Result<Response<DownBody>, Refusal>> + 'a {
        async move {
            let ds_upgrade = routed.head.upgrade.is_some();
            let plan = self
                .request_body(
                    routed.body,
                    &routed.cluster,
                    routed.request_buffer,
                    &routed.facts,
                    &routed.head,
                    inflight,
                )
                .await?;
            routed.cluster.budget.deposit();
            let replayable = plan.stream.is_none();
            let preserve_host = self.listener.cfg.headers.preserve_host && routed.head.has_host;
            let chunked =
                plan.stream.is_some() && !routed.head.headers.contains_key(header::CONTENT_LENGTH);
            let mut fields = Vec::new();
            write_fields(&mut fields, &routed.head.headers, !preserve_host);
            // The map goes now, while it is in the cache: dropped after the response, with
            // many connections, it is read back from memory.
            drop(routed.head.headers);
            let mut prepared = Prepared {
                chunked,
                method: routed.head.method,
                target: routed.head.target,
                preserve_host,
                fields,
                added: routed.head.added,
                replay: plan.replay,
                stream: plan.stream.map(UpBody::Stream),
                gate: plan.gate,
                early_wait: match self.listener.cfg.early_response {
                    EarlyResponsePolicy::Hold => self.listener.cfg.early_response_hold,
                    EarlyResponsePolicy::Close => EARLY_RESPONSE_GRACE,
                },
                may_retry: routed.facts.idempotent && replayable,
            };
            let (conn, answered) = self
                .tries(
                    &routed.cluster,
                    &mut prepared,
                    &plan.progress,
                    &routed.facts,
                    inflight,
                )
                .await?;
            let rest = prepared.stream.take();
            Ok(self.respond(
                inflight,
                routed.cluster,
                conn,
                answered,
                rest,
                ds_upgrade,
                routed.head.upgrade,
                routed.facts.ambiguous_body,
                routed.facts.wants_close,
            ))
        }
    }

    /// A request head arrived: count it, note it, and start its access record.
    fn begin(&self, req: &Request<Incoming>) -> Inflight {
        let index = self.conn.begin_request();
        self.journal().record_with(
            Kind::RequestHead,
            Detail::Request {
                method: req.method().into(),
                index: u32::try_from(index).unwrap_or(u32::MAX),
                path: truncated(req.uri().path(), JOURNAL_PATH_CHARS).into(),
            },
        );
        let logging = self.worker.access_log.enabled();
        let text = |f: &dyn Fn() -> String| if logging { f() } else { String::new() };
        let record = Record {
            path: text(&|| {
                req.uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned())
            }),
            host: text(&|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            }),
            wants_close: wants_close(req),
            ..Record::new(index, req.method().clone(), req.version())
        };
        Inflight {
            svc: self.clone(),
            record: Some(record),
            endpoint_in_flight: None,
        }
    }

    /// The request's route: its cluster and its request buffer.
    fn route_request(
        &self,
        req: &Request<Incoming>,
        inflight: &mut Inflight,
    ) -> Result<(Arc<Cluster>, usize), Refusal> {
        let host = if self.listener.routes_need_host {
            request_host(req).unwrap_or_default()
        } else {
            String::new()
        };
        let Some((cluster_idx, request_buffer)) = self.route(&host, req.uri().path()) else {
            let detail = format!(
                "no route for host {:?} path {:?}",
                request_host(req).unwrap_or_default(),
                req.uri().path()
            );
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                Termination::NoRoute,
                detail,
                None,
            ));
        };
        let cluster = self.worker.clusters[cluster_idx].clone();
        if let Some(r) = inflight.record.as_mut() {
            r.cluster = Some(cluster.name.clone());
        }
        Ok((cluster, request_buffer))
    }

    /// The head as it goes upstream: hop-by-hop fields out, forwarding fields in, the
    /// upgrade or the close the exchange needs.
    fn upstream_head(&self, parts: http::request::Parts, ambiguous_body: bool) -> UpstreamHead {
        let mut headers = parts.headers;
        let original_host = headers.get(header::HOST).cloned();
        let upgrade = forward::strip_hop_by_hop(&mut headers);
        let added = forward::add_forwarding(
            &mut headers,
            &self.listener.cfg.headers,
            self.conn.peer().ip(),
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
        UpstreamHead {
            method: parts.method,
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            headers,
            added,
            has_host: original_host.is_some(),
            upgrade,
            expect_continue,
        }
    }

    /// What becomes of the request body: read whole before an upstream is chosen (bodies
    /// the route buffers, so a slow client holds no upstream connection, and small bodies
    /// of idempotent requests, replayable on a retry), or streamed. `Expect: 100-continue`
    /// leaves the choice to the origin, so such bodies stream.
    async fn request_body(
        &self,
        body: Incoming,
        cluster: &Cluster,
        request_buffer: usize,
        facts: &RequestFacts,
        head: &UpstreamHead,
        inflight: &mut Inflight,
    ) -> Result<BodyPlan, Refusal> {
        let mut plan = BodyPlan::default();
        if body.is_end_stream() {
            plan.progress.mark_done();
            return Ok(plan);
        }
        let exact = body.size_hint().exact();
        let fits = |limit: usize| exact.is_some_and(|n| n <= limit as u64);
        let retry_buffer = cluster.cfg.retry.buffer_bytes;
        let buffer = if head.expect_continue {
            None
        } else if fits(request_buffer) {
            Some(request_buffer)
        } else if facts.idempotent && fits(retry_buffer) {
            Some(retry_buffer)
        } else {
            None
        };
        if let Some(limit) = buffer {
            let timeout = self.listener.cfg.request_body_timeout;
            let b = collect_bounded(body, limit, timeout)
                .await
                .map_err(|e| e.refusal(timeout))?;
            plan.progress.mark_done();
            if let Some(r) = inflight.record.as_mut() {
                r.bytes_in_fixed = b.len() as u64;
            }
            plan.replay = Some(b);
            return Ok(plan);
        }
        let mut body = body;
        let mut first = None;
        if head.expect_continue {
            // Opened by the upstream's 100, or by the exchange's timer.
            plan.gate = Some(Arc::new(ExpectGate::default()));
        } else {
            // Wait for the first body bytes before touching an upstream: a body that is
            // broken from its first byte never reaches one (R12).
            match body.frame().await {
                Some(Ok(f)) => {
                    first = Some(f);
                    if body.is_end_stream() {
                        plan.progress.mark_done();
                    }
                }
                Some(Err(e)) => {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        Termination::BadRequest,
                        format!("malformed request body: {e}"),
                        Some(CloseReason::BadRequest),
                    ))
                }
                None => plan.progress.mark_done(),
            }
        }
        if let Some(r) = inflight.record.as_mut() {
            r.bytes_in = Some(plan.progress.clone());
        }
        plan.stream = Some(Box::new(StreamBody {
            ended: first.is_none() && plan.progress.is_done(),
            first,
            inner: body,
            progress: plan.progress.clone(),
            gate: plan.gate.clone(),
        }));
        Ok(plan)
    }

    /// Tries until a response head comes back or the retry rules refuse.
    async fn tries(
        &self,
        cluster: &Arc<Cluster>,
        req: &mut Prepared,
        progress: &BodyProgress,
        facts: &RequestFacts,
        inflight: &mut Inflight,
    ) -> Result<(UpstreamConn, Answered), Refusal> {
        let replayable = req.stream.is_none();
        let mut retries_done = 0u32;
        let mut avoid: Vec<usize> = Vec::new();
        loop {
            let ep_idx = cluster.pick(&avoid);
            let err = match self.attempt(cluster, ep_idx, req, inflight).await {
                Ok(ok) => return Ok(ok),
                Err(e) => e,
            };
            if progress.failed() {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    Termination::DownstreamBodyError,
                    "the request body failed while it was forwarded".into(),
                    None,
                ));
            }
            let (term, reason) = err.classify();
            if err.reused && matches!(err.kind, TryErrorKind::PeerGone(_)) {
                self.worker.metrics.race("R1", "reused_connection_failed");
            }
            // A body handed on in part cannot be sent again; one never touched can.
            let replayable = replayable || !err.written;
            let decision = self.retry_decision(
                cluster,
                inflight,
                err.failure(),
                facts.idempotent,
                replayable,
                retries_done,
                reason,
            );
            if decision != Decision::Retry {
                let label = &cluster.endpoints[ep_idx].label;
                let detail = match err.conn {
                    Some(id) => format!(
                        "upstream {label} (conn {id}, {}): {err}",
                        if err.reused { "reused" } else { "new" }
                    ),
                    None => format!("upstream {label}: {err}"),
                };
                let status = if term == Termination::ResponseTimeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                return Err(Refusal::new(
                    status,
                    refusal_term(decision, term),
                    detail,
                    None,
                ));
            }
            retries_done += 1;
            if err.says_upstream_unhealthy() {
                avoid.push(ep_idx);
                self.backoff(cluster, retries_done).await;
            }
        }
    }

    /// The response head came back: decide both connections' reuse and hand the response
    /// to the downstream, its body read from the upstream connection as it goes.
    #[allow(clippy::too_many_arguments)] // each argument is one fact of the exchange
    fn respond(
        &self,
        inflight: &mut Inflight,
        cluster: Arc<Cluster>,
        conn: UpstreamConn,
        answered: Answered,
        rest: Option<UpBody>,
        ds_upgrade: bool,
        upgrade: Option<HeaderValue>,
        ambiguous_body: bool,
        ds_wants_close: bool,
    ) -> Response<DownBody> {
        let Answered {
            head:
                ResponseHead {
                    mut parts,
                    framing,
                    conn: fields,
                    upgrade: up_upgrade,
                },
            body_complete,
            tail,
        } = answered;
        if !body_complete {
            self.worker.metrics.race("R4", "early_response");
        }
        // The upstream's own announcement names the close first; then what linger knows
        // of the exchange.
        let announced = cluster.reuse.after_response(UpExchange {
            version: parts.version,
            conn: fields,
            served: conn.requests,
            requests_left: conn.requests_left,
            request_body_complete: true,
        });
        let reuse = match announced {
            _ if ambiguous_body => Reuse::Close(CloseReason::AmbiguousRequest),
            Reuse::Close(r) => Reuse::Close(r),
            // Both Content-Length and Transfer-Encoding: another hop may read it otherwise.
            _ if framing.must_close && framing.framing != Framing::UntilClose => {
                Reuse::Close(CloseReason::UnknownState)
            }
            // A final status before the whole body went up: the upstream's view of the
            // framing is unknown (R12).
            _ if !body_complete => Reuse::Close(CloseReason::UnknownState),
            keep => keep,
        };
        if parts.status == StatusCode::SWITCHING_PROTOCOLS && ds_upgrade {
            return self.upgrade(inflight, conn, parts, up_upgrade.or(upgrade));
        }
        let mut record = inflight.record.take().expect("record is taken once");
        // The try goes on until the body ends: the exchange's finish ends it.
        inflight.endpoint_in_flight = None;
        // The parse left the hop-by-hop fields out already.
        let via = if self.listener.cfg.headers.via {
            forward::append_via(&mut parts.headers, parts.version)
        } else {
            forward::Via::None
        };
        let decision = self.listener.policy.decide(ResponseFacts {
            request_index: record.index,
            age: crate::io::clock::since(self.conn.started()),
            draining: self.worker.is_draining(),
            request_wants_close: ds_wants_close,
            request_body_unread: !body_complete,
            ambiguous_request: ambiguous_body,
            fatal_error: false,
        });
        let keep_alive = self.apply_decision(&mut parts.headers, decision, &mut record);
        parts.version = Version::HTTP_11;
        let status = parts.status.as_u16();
        self.responding(status);
        let finish = Finish {
            svc: self.clone(),
            record: Some(record),
            status,
            termination: Termination::Ok,
            upstream: Some((cluster, conn.endpoint, reuse)),
        };
        let body = UpstreamBody::new(conn, framing.framing, tail.zip(rest));
        let mut body = DownBody::upstream(body, Box::new(finish));
        body.added = forward::ResponseAdded { via, keep_alive };
        Response::from_parts(parts, body)
    }

    /// One try: a pooled or new connection to `ep_idx`, the request, the response head.
    async fn attempt(
        &self,
        cluster: &Arc<Cluster>,
        ep_idx: usize,
        req: &mut Prepared,
        inflight: &mut Inflight,
    ) -> Result<(UpstreamConn, Answered), TryError> {
        let label = cluster.endpoints[ep_idx].label.as_str();
        let logging = self.worker.access_log.enabled();
        if logging {
            if let Some(r) = inflight.record.as_mut() {
                r.endpoint = Some(label.to_owned());
            }
        }
        let mut conn = match cluster.checkout(ep_idx, req.may_retry) {
            Some(mut c) => {
                c.reused = true;
                c
            }
            None => {
                let t0 = crate::io::clock::now();
                let c = cluster.connect(ep_idx).await?;
                if let Some(r) = inflight.record.as_mut() {
                    r.connect_ms = Some(crate::io::clock::since(t0).as_secs_f64() * 1000.0);
                }
                c
            }
        };
        self.note_try(cluster, &mut conn, &req.method, inflight);
        let head = req.head(label);
        cluster.begin_try(ep_idx);
        inflight.endpoint_in_flight = Some((cluster.clone(), ep_idx));
        let written_before = conn.stats.bytes_written();
        let read_before = conn.stats.bytes_read();
        let sent_at = crate::io::clock::now();
        let out = Outgoing {
            head,
            body: req.stream.as_mut(),
            chunked: req.chunked,
            gate: req.gate.as_deref(),
            early_wait: req.early_wait,
            hold: self.listener.cfg.early_response == EarlyResponsePolicy::Hold,
            method: &req.method,
            in_run: !inflight.record.as_ref().is_some_and(|r| r.wants_close),
        };
        let outcome = tokio::time::timeout(cluster.cfg.response_timeout, exchange(&mut conn, out))
            .await
            .unwrap_or(Err(TryErrorKind::ResponseTimeout(
                cluster.cfg.response_timeout,
            )));
        let written = conn.stats.bytes_written() > written_before;
        match outcome {
            Ok(answered) => {
                conn.stats.journal().record_with(
                    Kind::ResponseHead,
                    Detail::Status(answered.head.parts.status.as_u16()),
                );
                if let Some(r) = inflight.record.as_mut() {
                    r.first_byte_ms = Some(crate::io::clock::since(sent_at).as_secs_f64() * 1000.0);
                }
                Ok((conn, answered))
            }
            Err(kind) => {
                inflight.endpoint_in_flight = None;
                cluster.end_try(ep_idx);
                let mut err = TryError::new(kind, written, conn.reused);
                err.conn = Some(conn.id);
                if conn.reused
                    && matches!(err.kind, TryErrorKind::PeerGone(_))
                    && conn.stats.bytes_read() == read_before
                {
                    cluster.reuse_failed(&conn);
                }
                let (_, reason) = err.classify();
                conn.stats.journal().record_with(Kind::Failed, reason);
                let close = err.close_reason();
                if let Some(r) = inflight.record.as_mut() {
                    // The last try's connection, as the line's other upstream_* fields.
                    r.upstream_conn_closed = Some(close.as_str());
                }
                conn.close(close);
                Err(err)
            }
        }
    }

    /// Counts a try on `conn` and notes it in both journals and the access record.
    fn note_try(
        &self,
        cluster: &Cluster,
        conn: &mut UpstreamConn,
        method: &Method,
        inflight: &mut Inflight,
    ) {
        conn.requests += 1;
        conn.entry.add_request();
        if conn.reused {
            cluster.reused_requests.inc();
        } else {
            cluster.fresh_requests.inc();
        }
        self.journal().record_with(
            Kind::Upstream,
            Detail::Upstream {
                id: conn.id,
                reused: conn.reused,
                endpoint: cluster.endpoints[conn.endpoint].name.clone(),
            },
        );
        conn.stats.journal().record_with(
            Kind::RequestHead,
            Detail::For {
                method: method.into(),
                id: self.conn.id(),
            },
        );
        if let Some(r) = inflight.record.as_mut() {
            r.upstream_conn = Some(conn.id);
            r.upstream_reused = Some(conn.reused);
            r.upstream_conn_requests = Some(conn.requests);
            r.upstream_conn_age_ms =
                Some(crate::io::clock::since(conn.created).as_secs_f64() * 1000.0);
        }
    }

    /// A `101`: the connection's driver writes it, then hands both sockets to a tunnel.
    fn upgrade(
        &self,
        inflight: &mut Inflight,
        mut conn: UpstreamConn,
        mut parts: http::response::Parts,
        upgrade: Option<HeaderValue>,
    ) -> Response<DownBody> {
        let mut record = inflight.record.take().expect("record is taken once");
        if let Some((cluster, ep)) = inflight.endpoint_in_flight.take() {
            cluster.end_try(ep);
        }
        conn.stats.journal().record(Kind::Upgraded);
        conn.set_close_reason(CloseReason::UpgradeEnded);
        self.conn.set_tunnel(conn);
        // `upgrade`: the upstream's `Upgrade` if it sent one (the parse took it out of the
        // map), else the request's.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade {
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
            Kind::Retry,
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

/// Path characters kept in a journal event.
const JOURNAL_PATH_CHARS: usize = 64;

fn truncated(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
