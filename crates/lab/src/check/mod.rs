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

/// How far below the server's idle close a client's own idle timeout should stay: one
/// second covers a request in flight and timer granularity on both sides (the same margin
/// linger applies to `Keep-Alive: timeout` hints).
const MARGIN: Duration = Duration::from_secs(1);

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
    let target = front.saturating_sub(Duration::from_secs(5)).max(MARGIN);
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
        // A truthful hint that linger learns caps reuse on its own.
        let hint_protects = c.learn_keep_alive
            && facts
                .hint
                .is_some_and(|h| h <= idle && h > Duration::from_secs(1));
        if c.idle_timeout + MARGIN > idle && !hint_protects {
            let fix = if idle > MARGIN {
                format!(
                    "[[cluster]] name = \"{}\": idle_timeout = \"{}\" (at least {} below the upstream's {})",
                    c.name,
                    show(floor_100ms(idle - MARGIN)),
                    show(MARGIN),
                    show(idle)
                )
            } else {
                format!(
                    "[[cluster]] name = \"{}\": max_idle_per_endpoint = 0 (the upstream closes \
                     within {}: too soon to reuse safely)",
                    c.name,
                    show(idle)
                )
            };
            findings.push(Finding {
                severity: Severity::Race,
                race: "R1",
                pair: pair.clone(),
                explanation: format!(
                    "linger reuses pooled connections idle up to {} but the upstream closes them \
                     after {} ({}): a request sent as the upstream's FIN is in flight fails, and \
                     a non-idempotent one cannot be retried.",
                    show(c.idle_timeout),
                    show(idle),
                    facts.source
                ),
                fix: Some(fix),
            });
        } else {
            findings.push(Finding {
                severity: Severity::Ok,
                race: "R1",
                pair: pair.clone(),
                explanation: if hint_protects {
                    format!(
                        "The upstream announces Keep-Alive: timeout={}s and linger learns it \
                         (reuse stops {} earlier).",
                        facts.hint.unwrap_or_default().as_secs(),
                        show(c.keep_alive_margin)
                    )
                } else {
                    format!(
                        "linger ({}) stops reusing before the upstream closes ({}).",
                        show(c.idle_timeout),
                        show(idle)
                    )
                },
                fix: None,
            });
        }
        if let Some(h) = facts.hint.filter(|&h| h > idle) {
            findings.push(Finding {
                severity: if c.learn_keep_alive && c.idle_timeout + MARGIN > idle {
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
                fix: Some(format!(
                    "fix the upstream's hint, or keep [[cluster]] name = \"{}\": idle_timeout at \
                     or below \"{}\"",
                    c.name,
                    show(idle.saturating_sub(MARGIN))
                )),
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
        assert!(
            r.render().contains("idle_timeout = \"500ms\""),
            "{}",
            r.render()
        );
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
}
