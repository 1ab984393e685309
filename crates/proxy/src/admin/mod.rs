//! The admin listener (127.0.0.1 by default):
//! * `/` the live page: connections by state, closes by reason over time, the connection
//!   table and a chosen connection's journal as a timeline (one self-contained file);
//! * `/metrics` Prometheus: the text format 0.0.4, or OpenMetrics text when the `Accept`
//!   header asks for it first;
//! * `/stats` the page's numbers as JSON; `/connections` and `/connections/{id}` the
//!   registry and journals as JSON;
//! * `/upstreams` what linger learned of each endpoint's closes, with each endpoint's
//!   journal of changes;
//! * `/ready` (503 once a drain starts) and `/live`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::observe::exposition::{self, Format};
use crate::observe::journal::{wall_ms, EventView};
use crate::server::Server;
use crate::upstream::learn::{Learned, LearnedView};

/// The live page, embedded so the binary serves it offline.
const PAGE: &str = include_str!("page.html");

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(server: Arc<Server>, socket: TcpListener) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(route(&server, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

const JSON: &str = "application/json";

fn route(server: &Server, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match path {
        "/" => text(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        "/metrics" => {
            let format = Format::negotiate(accept(req).as_deref());
            let openmetrics = metrics_text(server);
            let body = match format {
                Format::OpenMetrics => openmetrics,
                Format::Text => exposition::to_text(&openmetrics),
            };
            text(StatusCode::OK, format.content_type(), body)
        }
        "/stats" => text(StatusCode::OK, JSON, stats_json(server)),
        "/connections" => text(StatusCode::OK, JSON, server.registry.list_json()),
        "/upstreams" => text(StatusCode::OK, JSON, upstreams_json(server)),
        "/live" => text(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            if server.ready() {
                text(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "draining\n".into(),
                )
            }
        }
        _ => match path.strip_prefix("/connections/") {
            Some(id) => match server.registry.detail_json(id) {
                Some(body) => text(StatusCode::OK, JSON, body),
                None => text(
                    StatusCode::NOT_FOUND,
                    JSON,
                    serde_json::json!({
                        "error": format!(
                            "no open or recently closed connection {id:?} (ids look like d12 or u3)"
                        )
                    })
                    .to_string(),
                ),
            },
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: try /, /metrics, /stats, /upstreams, /connections, /ready or /live\n"
                    .into(),
            ),
        },
    }
}

/// The request's `Accept` header lines, joined as one list; `None` without any.
fn accept(req: &Request<Incoming>) -> Option<String> {
    let values: Vec<&str> = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The registered metrics plus open connections by side and state, computed at scrape time
/// from the registry, as OpenMetrics text.
fn metrics_text(server: &Server) -> String {
    let mut out = server.metrics.encode();
    if out.ends_with("# EOF\n") {
        out.truncate(out.len() - "# EOF\n".len());
    }
    out.push_str(
        "# HELP linger_connections_open Open connections by side and state.\n\
         # TYPE linger_connections_open gauge\n",
    );
    for (side, states) in server.registry.open_by_state() {
        for (state, n) in states {
            let _ = writeln!(
                out,
                "linger_connections_open{{side=\"{side}\",state=\"{state}\"}} {n}"
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

#[derive(Serialize)]
struct Stats {
    now_ms: f64,
    open: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    closes: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    requests: BTreeMap<String, u64>,
    retries: BTreeMap<String, u64>,
    /// What linger learned of each endpoint's closes.
    upstreams: Vec<LearnedView>,
}

/// One endpoint on `/upstreams`: the learned values and the journal of their changes.
#[derive(Serialize)]
struct Upstream {
    #[serde(flatten)]
    learned: LearnedView,
    /// Wall-clock milliseconds the journal's `t_ms` count from.
    journal_opened_ms: f64,
    journal: Vec<EventView>,
    journal_dropped: u32,
}

fn learned(server: &Server) -> impl Iterator<Item = &Learned> {
    server.learned.iter().flatten().map(|l| &**l)
}

fn upstreams_json(server: &Server) -> String {
    let list: Vec<Upstream> = learned(server)
        .map(|l| {
            let (journal, journal_dropped) = l.events();
            Upstream {
                learned: l.view(),
                journal_opened_ms: l.journal_opened_ms(),
                journal,
                journal_dropped,
            }
        })
        .collect();
    serde_json::to_string(&serde_json::json!({ "upstreams": list })).expect("upstreams serialize")
}

fn stats_json(server: &Server) -> String {
    let metrics = server.metrics.encode();
    let stats = Stats {
        now_ms: wall_ms(std::time::SystemTime::now()),
        open: server.registry.open_by_state(),
        closes: server.registry.closes(),
        requests: sum_by_label(&metrics, "linger_requests_total", "termination"),
        retries: sum_by_label(&metrics, "linger_retries_total", "reason"),
        upstreams: learned(server).map(Learned::view).collect(),
    };
    serde_json::to_string(&stats).expect("stats serialize")
}

/// Sums the samples of one counter by the value of one label, from the text exposition.
fn sum_by_label(text: &str, metric: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let key = format!("{label}=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !rest.starts_with('{') {
            continue;
        }
        let Some(v) = rest.split(&key).nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let n = rest
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
        *out.entry(v.to_owned()).or_insert(0) += n as u64;
    }
    out
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_counter_by_one_label() {
        let text = "\
linger_requests_total{listener=\"a\",status=\"2xx\",termination=\"ok\"} 5
linger_requests_total{listener=\"b\",status=\"2xx\",termination=\"ok\"} 2
linger_requests_total{listener=\"a\",status=\"5xx\",termination=\"upstream.waiting.rst\"} 1
linger_requests_total_created 3
# EOF
";
        let m = sum_by_label(text, "linger_requests_total", "termination");
        assert_eq!(m["ok"], 7);
        assert_eq!(m["upstream.waiting.rst"], 1);
        assert_eq!(m.len(), 2);
    }
}
