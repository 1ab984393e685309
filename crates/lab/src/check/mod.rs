//! `linger check`: walks the chain of hops (the load balancer in front, linger's downstream
//! side, linger's pool, each upstream) and names every pair whose idle timeouts let a
//! connection-lifecycle race happen.
//!
//! The rule behind most of it: on every keep-alive connection, the client side must close
//! an idle connection before the server side does. Otherwise the server's FIN and the
//! client's next request cross on the wire and the request is lost (R1 between linger and
//! its upstreams, R2 between a load balancer and linger).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use linger_proxy::config::{Config, ConfigDuration};

pub mod learned;
pub use learned::LearnedFacts;

/// How far below an upstream's idle close, measured by `linger probe` or written as
/// `upstream_idle_timeout`, linger's pool `idle_timeout` must stay (R1). The pool checks a
/// connection's deadline when it takes it, so the margin only has to cover the request in
/// flight, the server's timer starting a little before linger's, and a stalled process;
/// the server's own timer granularity is already in the measured close. A `Keep-Alive:
/// timeout=N` hint is different: it is whole seconds, and linger subtracts the cluster's
/// `keep_alive_margin` (at least 1 s) from it. docs/config.md (`idle_timeout`) says why
/// 500 ms; `linger probe` recommends with it and `linger check` judges with it.
pub const IDLE_CLOSE_MARGIN: Duration = Duration::from_millis(500);

/// How much a measured idle close may fall short of the server's timer: the probe's clock
/// starts when it has read the response, and a server may start its timer a moment
/// earlier (a close measured at 1.998 s is a 2 s timer).
const CLOSE_TOLERANCE: Duration = Duration::from_millis(25);

/// The smallest `response_timeout` the R7 fix proposes.
const MIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The idle close linger plans with: `close` plus `CLOSE_TOLERANCE`, rounded down to
/// 100 ms, so that a recommended value stays readable and on the safe side.
pub fn planned_close(close: Duration) -> Duration {
    floor_100ms(close + CLOSE_TOLERANCE)
}

/// The longest pool `idle_timeout` that stays `IDLE_CLOSE_MARGIN` below an upstream's idle
/// `close`; `None` when the close leaves no room for the margin (do not pool).
pub fn longest_safe_idle(close: Duration) -> Option<Duration> {
    planned_close(close)
        .checked_sub(IDLE_CLOSE_MARGIN)
        .filter(|d| !d.is_zero())
}

/// Headroom recommended above the front's idle timeout for linger's downstream one.
const FRONT_HEADROOM: Duration = Duration::from_secs(15);

/// What is known of one upstream endpoint's own keep-alive behaviour.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFacts {
    /// The idle close it really applies.
    pub idle_close: Option<Duration>,
    /// Its `Keep-Alive: timeout` hint, if it sends one.
    pub hint: Option<Duration>,
    /// Requests it serves on one connection before closing it.
    pub max_requests: Option<u64>,
    /// Whether it says `Connection: close` on the last of those.
    pub announces_last: bool,
    /// Where these facts come from ("measured by --probe", "cluster.upstream_idle_timeout").
    pub source: String,
}

impl UpstreamFacts {
    /// What a probe measured.
    pub fn from_probe(r: &crate::probe::Report) -> Self {
        let limit = &r.requests_per_connection;
        let (max_requests, announces_last) = match limit.outcome {
            crate::probe::LimitOutcome::Limit => (limit.limit, limit.announced.unwrap_or(false)),
            _ => (None, false),
        };
        Self {
            idle_close: r.idle_close.shortest(),
            hint: r
                .keep_alive_hint
                .as_ref()
                .and_then(|h| h.hint.timeout_s)
                .map(Duration::from_secs),
            max_requests,
            announces_last,
            source: "measured by --probe".into(),
        }
    }
}

/// The input of a check.
#[derive(Debug)]
pub struct Chain<'a> {
    pub config: &'a Config,
    /// The idle timeout of the load balancer in front, given by the user.
    pub front_idle: Option<Duration>,
    /// Measured facts per endpoint (from `--probe`); they win over the config's.
    pub measured: Vec<(SocketAddr, UpstreamFacts)>,
    /// What a running linger learned of the endpoints (from `--admin URL`), and the URL.
    pub learned: Option<(String, Vec<LearnedFacts>)>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A race can happen: a request can be lost or answered by the wrong hop.
    Race,
    /// Not a race by itself, but a failure will be found late or a number is unknown.
    Warning,
    /// The pair is in the right order.
    Ok,
}

/// One pair of hops, judged.
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    /// `R1`, `R2`, ... from docs/races.md, or "" for a general remark.
    pub race: &'static str,
    /// The pair, e.g. `cluster "app" pool -> upstream 10.0.0.5:8080`.
    pub pair: String,
    /// One sentence: what happens.
    pub explanation: String,
    /// The change that fixes it (config key and value), if any.
    pub fix: Option<String>,
}

/// One hop of the chain, for the printed picture.
#[derive(Debug, Clone)]
pub struct Hop {
    pub name: String,
    pub idle: Option<Duration>,
    pub source: String,
}

/// The result of a check.
#[derive(Debug, Clone)]
pub struct Report {
    pub hops: Vec<Hop>,
    pub findings: Vec<Finding>,
}

// === impl Report ===

impl Report {
    /// Findings that are races.
    pub fn races(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Race)
    }

    pub fn render(&self) -> String {
        let mut out = String::from("chain, outside in (idle timeouts):\n");
        for h in &self.hops {
            let idle = h.idle.map_or_else(|| "unknown".to_owned(), show);
            let _ = writeln!(out, "  {:<38} {:>10}   {}", h.name, idle, h.source);
        }
        out.push('\n');
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Race => format!("RACE {}", f.race),
                Severity::Warning if f.race.is_empty() => "WARN".to_owned(),
                Severity::Warning => format!("WARN {}", f.race),
                Severity::Ok => "ok".to_owned(),
            };
            let _ = writeln!(out, "{tag:<8} {}", f.pair);
            let _ = writeln!(out, "         {}", f.explanation);
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "         fix: {fix}");
            }
        }
        let races = self.races().count();
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count();
        let _ = writeln!(out, "\n{races} race(s) possible, {warnings} warning(s).");
        out
    }
}

/// Rounds down to a tenth of a second: a recommended value stays readable and on the safe
/// side of a measurement.
fn floor_100ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// The `idle_timeout` to set for an idle limit a running linger learned: rounded down to
/// a tenth of a second, and no lower than the 50 ms linger itself learns down to.
pub(crate) fn learned_idle_timeout(learned: Duration) -> Duration {
    floor_100ms(learned).max(Duration::from_millis(50))
}

fn show(d: Duration) -> String {
    ConfigDuration(d).to_string()
}

/// Judges every pair of the chain.
pub fn check(chain: &Chain<'_>) -> Report {
    let cfg = chain.config;
    let mut hops = Vec::new();
    let mut findings = Vec::new();

    hops.push(Hop {
        name: "load balancer in front".into(),
        idle: chain.front_idle,
        source: if chain.front_idle.is_some() {
            "--front-idle".into()
        } else {
            "not given (--front-idle)".into()
        },
    });
    for l in &cfg.listeners {
        hops.push(Hop {
            name: format!("listener \"{}\" (downstream)", l.name),
            idle: Some(l.idle_timeout),
            source: format!("[[listener]] {}: idle_timeout", l.name),
        });
        front_pair(chain, l, &mut findings);
        tcp_warning(
            format!("listener \"{}\"", l.name),
            &l.tcp,
            "a client that vanishes",
            &mut findings,
        );
    }
    for c in &cfg.clusters {
        hops.push(Hop {
            name: format!("cluster \"{}\" pool", c.name),
            idle: Some(c.idle_timeout),
            source: format!("[[cluster]] {}: idle_timeout", c.name),
        });
        if let Some(front) = chain.front_idle {
            response_pair(front, c, &mut findings);
        }
        for ep in &c.endpoints {
            let facts = chain
                .measured
                .iter()
                .find(|(a, _)| a == ep)
                .map(|(_, f)| f.clone())
                .or_else(|| {
                    c.upstream_idle_timeout.map(|d| UpstreamFacts {
                        idle_close: Some(d),
                        source: format!("[[cluster]] {}: upstream_idle_timeout", c.name),
                        ..Default::default()
                    })
                });
            hops.push(Hop {
                name: format!("  upstream {ep}"),
                idle: facts.as_ref().and_then(|f| f.idle_close),
                source: facts
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), |f| f.source.clone()),
            });
            pool_pair(c, *ep, facts.as_ref(), &mut findings);
            if let Some((url, learned)) = &chain.learned {
                learned_pair(c, *ep, url, learned, &mut hops, &mut findings);
            }
        }
        tcp_warning(
            format!("cluster \"{}\"", c.name),
            &c.tcp,
            "an upstream path that drops packets",
            &mut findings,
        );
    }
    Report { hops, findings }
}

/// R1 and R9 as live traffic showed them: what a running linger learned of `ep`.
fn learned_pair(
    c: &linger_proxy::config::ClusterConfig,
    ep: SocketAddr,
    url: &str,
    learned: &[LearnedFacts],
    hops: &mut Vec<Hop>,
    findings: &mut Vec<Finding>,
) {
    let pair = format!(
        "cluster \"{}\" pool -> upstream {ep} (live traffic)",
        c.name
    );
    let endpoint = ep.to_string();
    let Some(f) = learned
        .iter()
        .find(|f| f.cluster == c.name && f.endpoint == endpoint)
    else {
        findings.push(Finding {
            severity: Severity::Warning,
            race: "",
            pair,
            explanation: format!(
                "The linger at {url} has no such endpoint in cluster \"{}\": it runs \
                 another config, or was not restarted since this one changed.",
                c.name
            ),
            fix: None,
        });
        return;
    };
    let limit = Duration::from_secs_f64(f.idle_limit_s);
    let cause = f.last_change.as_ref().map_or("", |l| l.cause.as_str());
    hops.push(Hop {
        name: format!("  upstream {ep}, learned"),
        idle: Some(limit),
        source: format!("--admin {url} {cause}"),
    });
    if f.closes_after_response {
        findings.push(Finding {
            severity: Severity::Warning,
            race: "R9",
            pair: pair.clone(),
            explanation: "The endpoint closes right after its responses without saying \
                          `Connection: close`: linger sends requests that may not be retried \
                          to fresh connections, at the cost of a connect each."
                .to_owned(),
            fix: Some(
                "at the origin: send `Connection: close` on a response after which it closes"
                    .to_owned(),
            ),
        });
    }
    match f.learned_s.map(Duration::from_secs_f64) {
        Some(learned) if learned < c.idle_timeout => {
            let evidence = f
                .last_change
                .as_ref()
                .map_or(String::new(), |l| format!(" ({})", l.evidence));
            findings.push(Finding {
                severity: Severity::Race,
                race: "R1",
                pair,
                explanation: format!(
                    "Traffic proved the endpoint drops connections idle for less than the \
                     pool's idle_timeout {}: linger learned {}{evidence}. It applies that \
                     now, but starts from {} again on every restart, and each time a request \
                     that may not be retried can be lost before it learns.",
                    show(c.idle_timeout),
                    show(learned),
                    show(c.idle_timeout),
                ),
                fix: Some(format!(
                    "[[cluster]] name = \"{}\": idle_timeout = \"{}\"",
                    c.name,
                    show(learned_idle_timeout(learned))
                )),
            });
        }
        _ => findings.push(Finding {
            severity: Severity::Ok,
            race: "R1",
            pair,
            explanation: format!(
                "Traffic has shown nothing shorter than the pool's idle limit ({}).",
                show(limit)
            ),
            fix: None,
        }),
    }
}

/// R2: the load balancer in front must close idle connections before linger does.
fn front_pair(
    chain: &Chain<'_>,
    l: &linger_proxy::config::ListenerConfig,
    findings: &mut Vec<Finding>,
) {
    let pair = format!("load balancer in front -> listener \"{}\"", l.name);
    let Some(front) = chain.front_idle else {
        findings.push(Finding {
            severity: Severity::Warning,
            race: "R2",
            pair,
            explanation: format!(
                "The front's idle timeout is unknown; linger's is {}. Pass --front-idle \
                 (AWS ALB/ELB default to 60s, nginx keepalive_timeout to 75s) to check the pair.",
                show(l.idle_timeout)
            ),
            fix: None,
        });
        return;
    };
    if l.idle_timeout <= front {
        findings.push(Finding {
            severity: Severity::Race,
            race: "R2",
            pair,
            explanation: format!(
                "linger closes idle connections after {} while the load balancer keeps them \
                 {}: a request the load balancer sends on a connection linger is closing is \
                 lost, and the client gets a 502 from the load balancer.",
                show(l.idle_timeout),
                show(front)
            ),
            fix: Some(format!(
                "[[listener]] name = \"{}\": idle_timeout = \"{}\" (above the front's {})",
                l.name,
                show(front + FRONT_HEADROOM),
                show(front)
            )),
        });
    } else {
        findings.push(Finding {
            severity: Severity::Ok,
            race: "R2",
            pair,
            explanation: format!(
                "The load balancer ({}) closes idle connections before linger ({}).",
                show(front),
                show(l.idle_timeout)
            ),
            fix: None,
        });
    }
}

/// R7: a response slower than the front's idle timeout is cut by the front before linger
/// answers it; the client gets the front's anonymous 504 and the upstream work goes on.
fn response_pair(
    front: Duration,
    c: &linger_proxy::config::ClusterConfig,
    findings: &mut Vec<Finding>,
) {
    if c.response_timeout < front {
        return;
    }
    let target = front
        .saturating_sub(Duration::from_secs(5))
        .max(MIN_RESPONSE_TIMEOUT);
    findings.push(Finding {
        severity: Severity::Race,
        race: "R7",
        pair: format!("load balancer in front -> cluster \"{}\" response", c.name),
        explanation: format!(
            "linger waits up to {} for a response head but the load balancer gives up after \
             {} idle: the client gets the load balancer's 504 instead of linger's explained \
             one, and the front closes a connection linger is about to answer on.",
            show(c.response_timeout),
            show(front)
        ),
        fix: Some(format!(
            "[[cluster]] name = \"{}\": response_timeout = \"{}\" (below the front's {})",
            c.name,
            show(target),
            show(front)
        )),
    });
}

/// How long linger's pool reuses an idle connection to an upstream that announces `hint`:
/// `idle_timeout`, capped at `N − keep_alive_margin` by a learned `Keep-Alive: timeout=N`,
/// zero when the hint stops reuse (the proxy's rule, docs/config.md).
fn reuse_idle(c: &linger_proxy::config::ClusterConfig, hint: Option<Duration>) -> Duration {
    match hint.filter(|_| c.learn_keep_alive) {
        Some(n) if n <= Duration::from_secs(1) => Duration::ZERO,
        Some(n) => c.idle_timeout.min(n.saturating_sub(c.keep_alive_margin)),
        None => c.idle_timeout,
    }
}

/// R1 and R9: linger's pool must stop reusing a connection before the upstream closes it.
fn pool_pair(
    c: &linger_proxy::config::ClusterConfig,
    ep: SocketAddr,
    facts: Option<&UpstreamFacts>,
    findings: &mut Vec<Finding>,
) {
    let pair = format!("cluster \"{}\" pool -> upstream {ep}", c.name);
    let pooled = c.max_idle_per_endpoint > 0;
    let Some(facts) = facts else {
        if pooled {
            findings.push(Finding {
                severity: Severity::Warning,
                race: "R1",
                pair,
                explanation: format!(
                    "The upstream's idle close is unknown; linger reuses connections idle up to \
                     {}. Set upstream_idle_timeout in the cluster, or run with --probe.",
                    show(c.idle_timeout)
                ),
                fix: None,
            });
        }
        return;
    };
    if let Some(idle) = facts.idle_close.filter(|_| pooled) {
        let reuse = reuse_idle(c, facts.hint);
        let safe = longest_safe_idle(idle);
        let race = !reuse.is_zero() && safe.is_none_or(|s| reuse > s);
        let margin = show(IDLE_CLOSE_MARGIN);
        let fix = match safe {
            Some(s) => format!(
                "[[cluster]] name = \"{}\": idle_timeout = \"{}\" (at least {margin} below the \
                 upstream's {})",
                c.name,
                show(s),
                show(idle)
            ),
            None => format!(
                "[[cluster]] name = \"{}\": max_idle_per_endpoint = 0 (the upstream closes \
                 within {}: no room for the {margin} margin)",
                c.name,
                show(idle)
            ),
        };
        let hint = facts.hint.unwrap_or_default().as_secs();
        let (severity, explanation) = if race {
            (
                Severity::Race,
                format!(
                    "linger reuses pooled connections idle up to {} but the upstream closes them \
                     after {} ({}), less than {margin} later: a request sent as the upstream's \
                     FIN is in flight fails, and a non-idempotent one cannot be retried.",
                    show(reuse),
                    show(idle),
                    facts.source
                ),
            )
        } else if reuse.is_zero() {
            (
                Severity::Ok,
                format!(
                    "The upstream announces Keep-Alive: timeout={hint}s and linger learns it: it \
                     does not reuse connections to it."
                ),
            )
        } else if reuse < c.idle_timeout {
            (
                Severity::Ok,
                format!(
                    "The upstream announces Keep-Alive: timeout={hint}s and linger learns it: \
                     reuse stops at {} ({} before the hint), at least {margin} before the \
                     upstream closes ({}).",
                    show(reuse),
                    show(c.keep_alive_margin),
                    show(idle)
                ),
            )
        } else {
            (
                Severity::Ok,
                format!(
                    "linger ({}) stops reusing at least {margin} before the upstream closes ({}).",
                    show(c.idle_timeout),
                    show(idle)
                ),
            )
        };
        findings.push(Finding {
            severity,
            race: "R1",
            pair: pair.clone(),
            explanation,
            fix: race.then(|| fix.clone()),
        });
        if let Some(h) = facts.hint.filter(|&h| h > planned_close(idle)) {
            findings.push(Finding {
                severity: if c.learn_keep_alive && race {
                    Severity::Race
                } else {
                    Severity::Warning
                },
                race: "R1",
                pair: pair.clone(),
                explanation: format!(
                    "The upstream announces Keep-Alive: timeout={}s but really closes after {}: \
                     clients that trust the hint reuse dead connections.",
                    h.as_secs(),
                    show(idle)
                ),
                fix: Some(format!("fix the upstream's hint, or {fix}")),
            });
        }
    }
    if let Some(max) = facts
        .max_requests
        .filter(|_| !facts.announces_last && pooled)
    {
        let ours = c.max_requests_per_connection;
        if ours.is_none_or(|o| o > max) {
            findings.push(Finding {
                severity: Severity::Race,
                race: "R9",
                pair,
                explanation: format!(
                    "The upstream closes a connection after {max} requests without saying \
                     Connection: close; linger would send request {} on a closing connection.",
                    max + 1
                ),
                fix: Some(format!(
                    "[[cluster]] name = \"{}\": max_requests_per_connection = {max}",
                    c.name
                )),
            });
        }
    }
}

/// R6: without keepalive and a user timeout a dead path is found after hours or minutes.
fn tcp_warning(
    who: String,
    tcp: &linger_proxy::config::TcpConfig,
    what: &str,
    findings: &mut Vec<Finding>,
) {
    let mut missing = Vec::new();
    if tcp.keepalive.is_none() {
        missing.push("tcp.keepalive is off");
    }
    if tcp.user_timeout.is_none() {
        missing.push("tcp.user_timeout is 0 (kernel default, ~15 min)");
    }
    if missing.is_empty() {
        return;
    }
    findings.push(Finding {
        severity: Severity::Warning,
        race: "R6",
        pair: who,
        explanation: format!("{}: {what} is found late, if ever.", missing.join(" and ")),
        fix: Some("keep the defaults: keepalive on, user_timeout = \"30s\"".into()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use linger_proxy::config::File;

    fn config(cluster_extra: &str) -> Config {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[cluster]]\nname = \"app\"\n\
             endpoints = [\"127.0.0.1:3000\"]\n{cluster_extra}\n"
        );
        File::parse(&text, "t.toml")
            .unwrap()
            .validate("t.toml")
            .unwrap()
    }

    fn run(cfg: &Config, facts: UpstreamFacts) -> Report {
        check(&Chain {
            config: cfg,
            front_idle: Some(Duration::from_secs(60)),
            measured: vec![("127.0.0.1:3000".parse().unwrap(), facts)],
            learned: None,
        })
    }

    fn races(r: &Report) -> Vec<&'static str> {
        r.races().map(|f| f.race).collect()
    }

    #[test]
    fn a_truthful_learned_hint_protects_a_long_pool_idle() {
        let cfg = config("idle_timeout = \"60s\"");
        let facts = UpstreamFacts {
            idle_close: Some(Duration::from_secs(5)),
            hint: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert!(races(&run(&cfg, facts)).is_empty());
    }

    #[test]
    fn a_hint_longer_than_the_real_close_is_a_race_when_the_pool_trusts_it() {
        let cfg = config("idle_timeout = \"60s\"");
        let facts = UpstreamFacts {
            idle_close: Some(Duration::from_millis(1500)),
            hint: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let r = run(&cfg, facts);
        assert_eq!(races(&r), ["R1", "R1"], "{}", r.render());
        // 1.5 s less the 500 ms margin.
        assert!(
            r.render().contains("idle_timeout = \"1s\""),
            "{}",
            r.render()
        );
    }

    fn measured(close: Duration) -> UpstreamFacts {
        UpstreamFacts {
            idle_close: Some(close),
            source: "measured by --probe".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_default_pool_idle_is_no_race_with_a_server_that_closes_at_2_s() {
        // What the probe measures of gunicorn's gthread workers with --keep-alive 2, and of
        // nginx, uvicorn and Go set to 2 s: 2.000-2.003 s. The config sets no idle_timeout.
        let cfg = config("");
        assert_eq!(cfg.clusters[0].idle_timeout, Duration::from_millis(1500));
        for ms in [1998, 2000, 2003, 2099] {
            let r = run(&cfg, measured(Duration::from_millis(ms)));
            assert!(races(&r).is_empty(), "{ms} ms: {}", r.render());
        }
        // The same number written in the config instead of measured.
        let cfg = config("upstream_idle_timeout = \"2s\"");
        let r = check(&Chain {
            config: &cfg,
            front_idle: Some(Duration::from_secs(60)),
            measured: Vec::new(),
            learned: None,
        });
        assert!(races(&r).is_empty(), "{}", r.render());
        assert!(
            r.findings
                .iter()
                .any(|f| f.race == "R1" && f.severity == Severity::Ok),
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_pool_idle_closer_than_the_margin_to_the_close_is_a_race() {
        let close = Duration::from_millis(2003);
        for idle in ["1600ms", "1900ms", "2s", "5s"] {
            let r = run(
                &config(&format!("idle_timeout = \"{idle}\"")),
                measured(close),
            );
            assert_eq!(races(&r), ["R1"], "{idle}: {}", r.render());
            assert!(
                r.render().contains("idle_timeout = \"1500ms\""),
                "the fix is the close less the margin: {}",
                r.render()
            );
        }
        // Exactly the margin below the close is enough.
        let r = run(&config("idle_timeout = \"1500ms\""), measured(close));
        assert!(races(&r).is_empty(), "{}", r.render());
    }

    #[test]
    fn what_the_probe_recommends_check_accepts() {
        for ms in [600, 1000, 1499, 1500, 2003, 4990, 6004, 75_001] {
            let close = Duration::from_millis(ms);
            let safe = longest_safe_idle(close).expect("room for the margin");
            assert!(
                safe + IDLE_CLOSE_MARGIN <= close + CLOSE_TOLERANCE,
                "{ms} ms"
            );
            let cfg = config(&format!("idle_timeout = \"{}ms\"", safe.as_millis()));
            let r = run(&cfg, measured(close));
            assert!(races(&r).is_empty(), "{ms} ms: {}", r.render());
        }
    }

    #[test]
    fn a_close_without_room_for_the_margin_means_no_pooling() {
        let r = run(&config(""), measured(Duration::from_millis(550)));
        assert_eq!(races(&r), ["R1"], "{}", r.render());
        assert!(
            r.render().contains("max_idle_per_endpoint = 0"),
            "{}",
            r.render()
        );
        assert!(races(&run(
            &config("max_idle_per_endpoint = 0"),
            measured(Duration::from_millis(550))
        ))
        .is_empty());
    }

    #[test]
    fn a_measured_close_rounds_to_the_server_timer() {
        for (measured_ms, planned_ms) in [(1998, 2000), (4990, 5000), (2350, 2300), (1960, 1900)] {
            assert_eq!(
                planned_close(Duration::from_millis(measured_ms)),
                Duration::from_millis(planned_ms),
                "{measured_ms} ms"
            );
        }
    }

    #[test]
    fn an_unannounced_request_limit_is_r9() {
        let facts = UpstreamFacts {
            idle_close: Some(Duration::from_secs(5)),
            max_requests: Some(5),
            announces_last: false,
            ..Default::default()
        };
        let r = run(&config(""), facts.clone());
        assert_eq!(races(&r), ["R9"], "{}", r.render());
        // Capped at the upstream's limit: fixed.
        let r = run(&config("max_requests_per_connection = 5"), facts.clone());
        assert!(races(&r).is_empty(), "{}", r.render());
        // Announced: linger honours Connection: close anyway.
        let announced = UpstreamFacts {
            announces_last: true,
            ..facts
        };
        assert!(races(&run(&config(""), announced)).is_empty());
    }

    #[test]
    fn unknown_upstream_and_missing_tcp_options_are_warnings_not_races() {
        let cfg = config("tcp.keepalive = false");
        let r = check(&Chain {
            config: &cfg,
            front_idle: None,
            measured: Vec::new(),
            learned: None,
        });
        assert!(races(&r).is_empty(), "{}", r.render());
        let warned: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .map(|f| f.race)
            .collect();
        assert_eq!(warned, ["R2", "R1", "R6"], "{}", r.render());
    }

    fn learned(learned_s: Option<f64>, after_response: bool) -> LearnedFacts {
        LearnedFacts {
            cluster: "app".into(),
            endpoint: "127.0.0.1:3000".into(),
            idle_limit_s: learned_s.unwrap_or(1.5),
            idle_timeout_s: 1.5,
            hint_s: None,
            learned_s,
            learning: true,
            closes_after_response: after_response,
            changes: Default::default(),
            last_change: None,
        }
    }

    fn with_learned(cfg: &Config, facts: Vec<LearnedFacts>) -> Report {
        check(&Chain {
            config: cfg,
            front_idle: Some(Duration::from_secs(60)),
            measured: Vec::new(),
            learned: Some(("http://127.0.0.1:9901".into(), facts)),
        })
    }

    #[test]
    fn live_traffic_that_proved_the_idle_timeout_wrong_is_a_race() {
        let cfg = config("");
        let r = with_learned(&cfg, vec![learned(Some(0.065), false)]);
        let race = r
            .races()
            .find(|f| f.pair.contains("live traffic"))
            .unwrap_or_else(|| panic!("{}", r.render()));
        assert_eq!(race.race, "R1");
        assert!(
            race.fix
                .as_ref()
                .unwrap()
                .contains("idle_timeout = \"50ms\""),
            "{race:?}"
        );
        // Nothing learned: the pair is fine.
        let r = with_learned(&cfg, vec![learned(None, false)]);
        assert!(races(&r).is_empty(), "{}", r.render());
        // Closing right after responses is a warning with the origin's fix.
        let r = with_learned(&cfg, vec![learned(None, true)]);
        assert!(r
            .findings
            .iter()
            .any(|f| f.race == "R9" && f.severity == Severity::Warning));
        // An endpoint the running linger does not have is named.
        let mut other = learned(None, false);
        other.endpoint = "127.0.0.1:4000".into();
        let r = with_learned(&cfg, vec![other]);
        assert!(
            r.render().contains("has no such endpoint"),
            "{}",
            r.render()
        );
    }
}
