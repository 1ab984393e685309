//! Prometheus metrics (prometheus-client, the Prometheus project's own Rust client).
//!
//! Label values are `Arc<String>` or `&'static str` so the request path never allocates a
//! label.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub type Name = Arc<String>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Name,
    pub status: &'static str,
    pub termination: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub side: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReuseLabels {
    pub cluster: Name,
    pub reused: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub cluster: Name,
    pub reason: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RaceLabels {
    pub race: &'static str,
    pub what: &'static str,
}

/// Every metric linger exports.
#[derive(Debug)]
pub struct Metrics {
    /// Unprefixed: the `process_*` collector, and the `linger_` sub-registry.
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<ListenerLabels, Histogram>,
    pub downstream_accepted: Family<ListenerLabels, Counter>,
    pub downstream_open: Family<ListenerLabels, Gauge>,
    pub closes: Family<CloseLabels, Counter>,
    pub connection_lifetime: Family<CloseLabels, Histogram>,
    pub requests_per_connection: Family<CloseLabels, Histogram>,
    pub upstream_connects: Family<ClusterLabels, Counter>,
    pub upstream_connect_errors: Family<ClusterLabels, Counter>,
    pub upstream_open: Family<ClusterLabels, Gauge>,
    pub pool_idle: Family<ClusterLabels, Gauge>,
    pub upstream_requests: Family<ReuseLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    /// Residual races linger detected and handled (or could not), by race number.
    pub races: Family<RaceLabels, Counter>,
}

fn seconds_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

fn lifetime_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
    ])
}

fn count_buckets() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10000.0,
    ])
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        #[cfg(target_os = "linux")]
        root.register_collector(Box::new(super::process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("linger");
        registry.register(
            "build",
            "linger's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by listener, status and termination code",
            requests.clone(),
        );
        let request_duration =
            Family::<ListenerLabels, Histogram>::new_with_constructor(seconds_buckets as fn() -> _);
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response",
            request_duration.clone(),
        );
        let downstream_accepted = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "downstream_connections",
            "Downstream connections accepted",
            downstream_accepted.clone(),
        );
        let downstream_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "downstream_connections_open",
            "Downstream connections open now",
            downstream_open.clone(),
        );
        let closes = Family::<CloseLabels, Counter>::default();
        registry.register(
            "connection_closes",
            "Connection closes by side and reason",
            closes.clone(),
        );
        let connection_lifetime =
            Family::<CloseLabels, Histogram>::new_with_constructor(lifetime_buckets as fn() -> _);
        registry.register(
            "connection_lifetime_seconds",
            "Connection lifetime by side and close reason",
            connection_lifetime.clone(),
        );
        let requests_per_connection =
            Family::<CloseLabels, Histogram>::new_with_constructor(count_buckets as fn() -> _);
        registry.register(
            "requests_per_connection",
            "Requests served on a connection by side and close reason",
            requests_per_connection.clone(),
        );
        let upstream_connects = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_connects",
            "Upstream connections opened",
            upstream_connects.clone(),
        );
        let upstream_connect_errors = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Upstream connect failures and timeouts",
            upstream_connect_errors.clone(),
        );
        let upstream_open = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "upstream_connections_open",
            "Upstream connections open now",
            upstream_open.clone(),
        );
        let pool_idle = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "upstream_pool_idle",
            "Idle upstream connections in the pools",
            pool_idle.clone(),
        );
        let upstream_requests = Family::<ReuseLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Upstream tries by whether the connection was reused",
            upstream_requests.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "retries",
            "Retry decisions by reason and outcome (retried or refused)",
            retries.clone(),
        );
        let races = Family::<RaceLabels, Counter>::default();
        registry.register(
            "races",
            "Connection-lifecycle races seen, by race (R1..R12) and what linger did",
            races.clone(),
        );
        Self {
            registry: root,
            requests,
            request_duration,
            downstream_accepted,
            downstream_open,
            closes,
            connection_lifetime,
            requests_per_connection,
            upstream_connects,
            upstream_connect_errors,
            upstream_open,
            pool_idle,
            upstream_requests,
            retries,
            races,
        }
    }

    /// The OpenMetrics text exposition (see [`super::exposition`] for the Prometheus text
    /// format).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn race(&self, race: &'static str, what: &'static str) {
        self.races.get_or_create(&RaceLabels { race, what }).inc();
    }
}
