//! Prometheus metrics (prometheus-client, the Prometheus project's own Rust client).
//!
//! Label values are `Arc<String>` or `&'static str` so the request path never allocates a
//! label.
//!
//! Every family is listed from start-up, with a zero sample for each label set known then
//! (each listener, each cluster, each race): a scrape before any traffic already shows what
//! can be counted.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

use super::{CloseReason, Side};
use crate::config::Config;

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
pub struct EndpointLabels {
    pub cluster: Name,
    pub endpoint: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LearnedLabels {
    pub cluster: Name,
    pub endpoint: Name,
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RaceLabels {
    pub race: &'static str,
    pub what: &'static str,
}

/// Every race counter linger has, as `(race, what)`: each is listed with a zero from
/// start-up. A test checks this list against the `race(...)` calls in the source.
pub const RACES: &[(&str, &str)] = &[
    ("R1", "idle_close_detected_before_reuse"),
    ("R1", "reused_connection_failed"),
    ("R2", "request_at_idle_close"),
    ("R4", "early_response"),
    ("R5", "downstream_closed_while_streaming"),
    ("R7", "downstream_closed_while_waiting"),
    ("R9", "close_after_response_learned"),
    ("R10", "request_at_idle_close"),
    ("R11", "upstream_failed_mid_body"),
    ("R12", "ambiguous_framing_refused"),
];

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
    /// The idle limit each endpoint's pool uses now (configured, hinted or learned).
    pub learned_idle: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// Changes of what linger learned of an endpoint, by cause.
    pub learned_changes: Family<LearnedLabels, Counter>,
    /// Downstream connections each worker holds (the spread over the workers).
    pub worker_connections: Family<WorkerLabels, Gauge>,
    /// Connections another worker accepted and handed to this one, to even the spread.
    pub worker_handoffs: Family<WorkerLabels, Counter>,
    /// CPU time each worker's thread used (`io::cpu_time`).
    pub worker_cpu: Family<WorkerLabels, crate::io::cpu_time::CpuCounter>,
    /// The close families' series, kept per side and reason once first used: a close
    /// neither hashes labels nor takes a family's lock. (A series still appears only once
    /// something closed for its reason.)
    closed: [[OnceLock<ClosedSeries>; CloseReason::COUNT]; 2],
}

/// The series a connection's close feeds, for one side and reason.
#[derive(Debug, Clone)]
pub struct ClosedSeries {
    /// `linger_connection_closes_total`.
    pub closes: Counter,
    /// `linger_connection_lifetime_seconds`.
    pub lifetime: Histogram,
    /// `linger_requests_per_connection`: downstream connections only.
    pub requests: Option<Histogram>,
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

/// A family registered so that its HELP and TYPE are written even before its first label
/// set exists (prometheus-client leaves an empty family out of the exposition).
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Registers `metric` as a family listed from start-up and hands it back.
fn listed<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, Listed(metric.clone()));
    metric
}

impl Metrics {
    /// The families, with no label set yet.
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
        let r = registry;
        Self {
            requests: listed(
                r,
                "requests",
                "Requests by listener, status and termination code",
                Family::default(),
            ),
            request_duration: listed(
                r,
                "request_duration_seconds",
                "Time from request head to the end of the response",
                Family::new_with_constructor(seconds_buckets as fn() -> _),
            ),
            downstream_accepted: listed(
                r,
                "downstream_connections",
                "Downstream connections accepted",
                Family::default(),
            ),
            downstream_open: listed(
                r,
                "downstream_connections_open",
                "Downstream connections open now",
                Family::default(),
            ),
            closes: listed(
                r,
                "connection_closes",
                "Connection closes by side and reason",
                Family::default(),
            ),
            connection_lifetime: listed(
                r,
                "connection_lifetime_seconds",
                "Connection lifetime by side and close reason",
                Family::new_with_constructor(lifetime_buckets as fn() -> _),
            ),
            requests_per_connection: listed(
                r,
                "requests_per_connection",
                "Requests served on a connection by side and close reason",
                Family::new_with_constructor(count_buckets as fn() -> _),
            ),
            upstream_connects: listed(
                r,
                "upstream_connects",
                "Upstream connections opened",
                Family::default(),
            ),
            upstream_connect_errors: listed(
                r,
                "upstream_connect_errors",
                "Upstream connect failures and timeouts",
                Family::default(),
            ),
            upstream_open: listed(
                r,
                "upstream_connections_open",
                "Upstream connections open now",
                Family::default(),
            ),
            pool_idle: listed(
                r,
                "upstream_pool_idle",
                "Idle upstream connections in the pools",
                Family::default(),
            ),
            upstream_requests: listed(
                r,
                "upstream_requests",
                "Upstream tries by whether the connection was reused",
                Family::default(),
            ),
            retries: listed(
                r,
                "retries",
                "Retry decisions by reason and outcome (retried or refused)",
                Family::default(),
            ),
            races: listed(
                r,
                "races",
                "Connection-lifecycle races seen, by race (R1..R12) and what linger did",
                Family::default(),
            ),
            learned_idle: listed(
                r,
                "upstream_learned_idle_seconds",
                "The idle time after which an endpoint's pooled connections are no longer \
                 reused: the configured idle_timeout, or shorter as announced or learned",
                Family::default(),
            ),
            learned_changes: listed(
                r,
                "upstream_learned_changes",
                "Changes of what linger learned of an endpoint's closes, by cause",
                Family::default(),
            ),
            worker_connections: listed(
                r,
                "worker_connections_open",
                "Downstream connections open now, by worker",
                Family::default(),
            ),
            worker_handoffs: listed(
                r,
                "worker_handoffs",
                "Connections another worker accepted and handed to this one, by worker",
                Family::default(),
            ),
            worker_cpu: listed(
                r,
                "worker_cpu_seconds",
                "CPU time each worker's thread used, read at most 100 microseconds of its \
                 work behind",
                Family::default(),
            ),
            registry: root,
            closed: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    /// The families, with a zero sample for every label set `config` makes known: each
    /// listener's and each cluster's, and every race. Retries, closes and requests that did
    /// not end cleanly are labelled by reasons met only at run time: those families are
    /// listed without samples until then.
    pub fn for_config(config: &Config) -> Self {
        let m = Self::new();
        // Each listener's clean requests and request durations are created with its
        // context (`downstream::ListenerCtx`), which keeps them.
        for l in &config.listeners {
            let labels = ListenerLabels {
                listener: Name::new(l.name.clone()),
            };
            m.downstream_accepted.get_or_create_owned(&labels);
            m.downstream_open.get_or_create_owned(&labels);
        }
        for c in &config.clusters {
            let labels = ClusterLabels {
                cluster: Name::new(c.name.clone()),
            };
            m.upstream_connects.get_or_create_owned(&labels);
            m.upstream_connect_errors.get_or_create_owned(&labels);
            m.upstream_open.get_or_create_owned(&labels);
            m.pool_idle.get_or_create_owned(&labels);
            for reused in ["true", "false"] {
                m.upstream_requests.get_or_create_owned(&ReuseLabels {
                    cluster: labels.cluster.clone(),
                    reused,
                });
            }
        }
        for &(race, what) in RACES {
            m.races.get_or_create_owned(&RaceLabels { race, what });
        }
        m
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

    /// The series a close on `side` for `reason` feeds.
    pub fn closed(&self, side: Side, reason: CloseReason) -> &ClosedSeries {
        self.closed[side.index()][reason.index()].get_or_init(|| {
            let labels = CloseLabels {
                side: side.as_str(),
                reason: reason.as_str(),
            };
            ClosedSeries {
                closes: self.closes.get_or_create(&labels).clone(),
                lifetime: self.connection_lifetime.get_or_create(&labels).clone(),
                requests: (side == Side::Downstream)
                    .then(|| self.requests_per_connection.get_or_create(&labels).clone()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILIES: &[(&str, &str)] = &[
        ("linger_requests", "counter"),
        ("linger_request_duration_seconds", "histogram"),
        ("linger_downstream_connections", "counter"),
        ("linger_downstream_connections_open", "gauge"),
        ("linger_connection_closes", "counter"),
        ("linger_connection_lifetime_seconds", "histogram"),
        ("linger_requests_per_connection", "histogram"),
        ("linger_upstream_connects", "counter"),
        ("linger_upstream_connect_errors", "counter"),
        ("linger_upstream_connections_open", "gauge"),
        ("linger_upstream_pool_idle", "gauge"),
        ("linger_upstream_requests", "counter"),
        ("linger_retries", "counter"),
        ("linger_races", "counter"),
        ("linger_build", "info"),
    ];

    #[test]
    fn a_close_feeds_its_families_through_the_cached_series() {
        let m = Metrics::new();
        assert!(
            !m.encode().contains("reason=\"idle_timeout\""),
            "no series before a close"
        );
        for _ in 0..2 {
            let s = m.closed(Side::Downstream, CloseReason::IdleTimeout);
            s.closes.inc();
            s.lifetime.observe(1.5);
            s.requests.as_ref().expect("downstream").observe(3.0);
        }
        let up = m.closed(Side::Upstream, CloseReason::PoolFull);
        up.closes.inc();
        assert!(
            up.requests.is_none(),
            "requests per connection are downstream only"
        );
        let text = m.encode();
        for line in [
            "linger_connection_closes_total{side=\"downstream\",reason=\"idle_timeout\"} 2",
            "linger_connection_lifetime_seconds_count{side=\"downstream\",reason=\"idle_timeout\"} 2",
            "linger_requests_per_connection_sum{side=\"downstream\",reason=\"idle_timeout\"} 6.0",
            "linger_connection_closes_total{side=\"upstream\",reason=\"pool_full\"} 1",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
        assert!(
            !text.contains("linger_requests_per_connection_count{side=\"upstream\""),
            "{text}"
        );
    }

    #[test]
    fn every_family_is_listed_before_any_label_set_exists() {
        let text = Metrics::new().encode();
        for (name, kind) in FAMILIES {
            assert!(
                text.contains(&format!("\n# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("linger_build_info{{version=\"{version}\"}} 1\n")),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_config_s_listeners_clusters_and_every_race_start_at_zero() {
        let config = crate::config::File::simple("127.0.0.1:0", &["127.0.0.1:1".into()])
            .validate("test")
            .unwrap();
        let text = Metrics::for_config(&config).encode();
        for sample in [
            "linger_downstream_connections_total{listener=\"main\"} 0",
            "linger_downstream_connections_open{listener=\"main\"} 0",
            "linger_upstream_connects_total{cluster=\"default\"} 0",
            "linger_upstream_connect_errors_total{cluster=\"default\"} 0",
            "linger_upstream_connections_open{cluster=\"default\"} 0",
            "linger_upstream_pool_idle{cluster=\"default\"} 0",
            "linger_upstream_requests_total{cluster=\"default\",reused=\"true\"} 0",
            "linger_upstream_requests_total{cluster=\"default\",reused=\"false\"} 0",
        ] {
            assert!(text.contains(&format!("{sample}\n")), "{sample}:\n{text}");
        }
        for (race, what) in RACES {
            let sample = format!("linger_races_total{{race=\"{race}\",what=\"{what}\"}} 0\n");
            assert!(text.contains(&sample), "{sample}{text}");
        }
    }

    /// The `(race, what)` pairs of every `.race(...)` call under `src/`: each argument list's
    /// `R<n>` literals (one, or one per branch of an `if`) with its one other literal.
    fn race_calls_in_source() -> Vec<(String, String)> {
        let mut files = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut pairs = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("observe/metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices(".race(") {
                let args = &text[at + ".race(".len()..];
                let mut depth = 1;
                let end = args
                    .find(|c| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .unwrap();
                let literals: Vec<&str> = args[..end].split('"').skip(1).step_by(2).collect();
                let (races, whats): (Vec<&str>, Vec<&str>) = literals.iter().partition(|l| {
                    l.strip_prefix('R')
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                });
                assert!(
                    whats.len() == 1 && !races.is_empty(),
                    "{}: cannot read the race call {:?}",
                    path.display(),
                    &args[..end]
                );
                pairs.extend(races.iter().map(|r| (r.to_string(), whats[0].to_string())));
            }
        }
        pairs
    }

    #[test]
    fn the_race_list_is_the_race_calls_in_the_source() {
        let mut calls = race_calls_in_source();
        calls.sort();
        calls.dedup();
        let mut listed: Vec<(String, String)> = RACES
            .iter()
            .map(|(r, w)| (r.to_string(), w.to_string()))
            .collect();
        listed.sort();
        assert_eq!(
            calls, listed,
            "RACES must list every race(...) call, and no other"
        );
    }
}
