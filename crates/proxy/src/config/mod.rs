//! Configuration: TOML on disk (`File*` types, every default filled in by serde) and the
//! validated runtime form (`*Config` types holding resolved addresses and `Duration`s).
//!
//! The pipeline is `parse` → `File` (unknown keys are errors) → `File::validate` → `Config`.
//! Nothing here binds a port. Every default is a named constant next to its field; the
//! reasons for each are in `docs/config.md` and `docs/lifecycle.md`.

mod duration;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::io::cpu::PinWorkers;

pub use self::duration::ConfigDuration;

// ===== defaults =====

/// Admin listener: loopback only, so metrics and journals are never exposed by accident.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
/// Closed connections whose journals the admin listener keeps: a few minutes of history on
/// a quiet proxy, a few KiB each at most (32 journal events of 48 bytes plus their text).
pub const DEFAULT_CLOSED_CONNECTIONS: usize = 256;
/// Downstream idle timeout: above the 60 s of AWS ELB/ALB and equal to nginx's 75 s, so the
/// load balancer in front closes first (R2).
pub const DEFAULT_DOWNSTREAM_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(75);
/// Time allowed for a request head once its first byte arrived (answered with 408).
pub const DEFAULT_HEADER_READ_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(10);
/// nginx's `keepalive_requests` default.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: u64 = 1000;
/// nginx's `keepalive_time` default.
pub const DEFAULT_MAX_CONNECTION_AGE: ConfigDuration = ConfigDuration::from_secs(3600);
/// Limit on the bytes of one request head; larger heads get 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Limit on the number of header fields in one request head; more get 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Request bodies with a `Content-Length` up to this are read whole before an upstream is
/// chosen, so that a slow client never holds an upstream connection (per route).
pub const DEFAULT_REQUEST_BUFFER_BYTES: usize = 64 * 1024;
/// The longest wait for the next bytes of a request body linger is buffering: 408 after.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
/// How long a closing connection keeps reading (and discarding) after linger's FIN (R4).
pub const DEFAULT_LINGER_TIME: ConfigDuration = ConfigDuration::from_secs(5);
/// How long a response may be held back waiting for the request body (policy `hold`, R4).
pub const DEFAULT_EARLY_RESPONSE_HOLD: ConfigDuration = ConfigDuration::from_secs(5);
/// TCP keepalive: first probe after 15 s idle, then every 5 s, 3 probes: a dead peer is
/// found in about 30 s instead of the kernel's 2 h 11 min (R6).
pub const DEFAULT_TCP_KEEPALIVE_IDLE: ConfigDuration = ConfigDuration::from_secs(15);
pub const DEFAULT_TCP_KEEPALIVE_INTERVAL: ConfigDuration = ConfigDuration::from_secs(5);
pub const DEFAULT_TCP_KEEPALIVE_COUNT: u32 = 3;
/// `TCP_USER_TIMEOUT`: unacknowledged data for this long kills the connection instead of the
/// ~15 min of `tcp_retries2` (R6).
pub const DEFAULT_TCP_USER_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
/// The most unsent bytes the kernel queues on a connection (`TCP_NOTSENT_LOWAT`): one
/// upstream read of a response body. See `notsent_lowat_bytes` in `docs/config.md`.
pub const DEFAULT_NOTSENT_LOWAT: u32 = 64 * 1024;
/// The smallest `TCP_NOTSENT_LOWAT` accepted: below it a large write takes many calls.
pub const MIN_NOTSENT_LOWAT: u32 = 16 * 1024;
/// Upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(2);
/// Per-try wait for the upstream response head (504 when it runs out).
pub const DEFAULT_RESPONSE_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);
/// Upstream pool idle timeout: below the shortest idle close of common origins
/// (gunicorn 2 s, uvicorn and Node 5 s), so linger closes pooled connections first (R1).
pub const DEFAULT_POOL_IDLE_TIMEOUT: ConfigDuration = ConfigDuration::from_millis(1500);
/// Idle pooled connections kept per endpoint and worker: enough that 1,000 busy client
/// connections do not make linger reconnect (at 128, 1,000 clients cost 0.67 connects per
/// request). Idle ones are closed after the pool's idle timeout anyway.
pub const DEFAULT_POOL_MAX_IDLE: usize = 1024;
/// Safety margin subtracted from an upstream's `Keep-Alive: timeout=N` hint (R1).
pub const DEFAULT_KEEP_ALIVE_HINT_MARGIN: ConfigDuration = ConfigDuration::from_secs(1);
/// Retries after the first try.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Largest request body kept in memory so an idempotent request can be replayed.
pub const DEFAULT_RETRY_BUFFER_BYTES: usize = 64 * 1024;
pub const DEFAULT_RETRY_BACKOFF_BASE: ConfigDuration = ConfigDuration::from_millis(25);
pub const DEFAULT_RETRY_BACKOFF_MAX: ConfigDuration = ConfigDuration::from_millis(250);
/// Retries may add at most this share of the recent requests (Envoy's and linkerd's 20 %).
pub const DEFAULT_RETRY_BUDGET_RATIO: f64 = 0.2;
/// ... plus this many retries per second whatever the traffic.
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SEC: u32 = 10;
/// Drain: how long in-flight requests may take after SIGTERM before they are cut.
pub const DEFAULT_DRAIN_TIMEOUT: ConfigDuration = ConfigDuration::from_secs(30);

// ===== errors =====

/// A configuration error: the file, the key and what was expected.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
    /// The file's other errors, after this first one: a file's errors are reported at once.
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    /// Every error: this one, then the others.
    pub fn all(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(self.more.iter())
    }
}

impl fmt::Display for ConfigError {
    /// One error per line; the lines after the first start with `error: ` as the first
    /// does where linger prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.all().enumerate() {
            if i > 0 {
                f.write_str("\nerror: ")?;
            }
            if e.key.is_empty() {
                write!(f, "{}: {}", e.file, e.message)?;
            } else {
                write!(f, "{}: {}: {}", e.file, e.key, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ===== file form =====

/// The whole config file, every default filled in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub admin: FileAdmin,
    #[serde(default)]
    pub runtime: FileRuntime,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<FileListener>,
    #[serde(default, rename = "route")]
    pub routes: Vec<FileRoute>,
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<FileCluster>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Closed connections whose journals are kept for `/connections`.
    #[serde(default = "default_closed_connections")]
    pub closed_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    /// Worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// Pin each worker to a CPU: `"auto"` (when there is one worker per allowed CPU),
    /// `"on"` or `"off"`.
    #[serde(default)]
    pub pin_workers: PinWorkers,
    /// `"stdout"`, `"off"`, or a file path.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
    /// After SIGTERM, keep serving (and accepting) this long so load balancers notice.
    #[serde(default)]
    pub drain_delay: ConfigDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTcp {
    #[serde(default = "yes")]
    pub keepalive: bool,
    #[serde(default = "default_ka_idle")]
    pub keepalive_idle: ConfigDuration,
    #[serde(default = "default_ka_interval")]
    pub keepalive_interval: ConfigDuration,
    #[serde(default = "default_ka_count")]
    pub keepalive_count: u32,
    /// `"0s"` leaves the kernel default.
    #[serde(default = "default_user_timeout")]
    pub user_timeout: ConfigDuration,
    #[serde(default = "yes")]
    pub nodelay: bool,
    /// `false`: the first ACK of a connection waits for data to ride on.
    #[serde(default)]
    pub quickack: bool,
    /// `TCP_NOTSENT_LOWAT`; 0 leaves the kernel default (no limit).
    #[serde(default = "default_notsent_lowat")]
    pub notsent_lowat_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedFor {
    Append,
    Replace,
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaders {
    #[serde(default = "default_xff")]
    pub x_forwarded_for: ForwardedFor,
    #[serde(default = "yes")]
    pub x_forwarded_proto: bool,
    #[serde(default = "yes")]
    pub x_forwarded_host: bool,
    #[serde(default = "yes")]
    pub via: bool,
    #[serde(default = "yes")]
    pub preserve_host: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyResponsePolicy {
    /// Send the early response with `Connection: close`, then close gracefully.
    Close,
    /// Hold the response until the request body is forwarded (bounded by `early_response_hold`).
    Hold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HalfClosePolicy {
    /// A downstream FIN means the client is gone: cancel the upstream request (R5, R7).
    Abort,
    /// Keep serving a client that half-closed (RFC 9112 §9.6).
    Allow,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    #[serde(default)]
    pub name: String,
    pub address: String,
    #[serde(default = "default_ds_idle")]
    pub idle_timeout: ConfigDuration,
    #[serde(default = "yes")]
    pub announce_keep_alive: bool,
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: ConfigDuration,
    #[serde(default = "default_max_requests")]
    pub max_requests_per_connection: u64,
    #[serde(default = "default_max_age")]
    pub max_connection_age: ConfigDuration,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    #[serde(default = "default_linger_time")]
    pub linger_time: ConfigDuration,
    #[serde(default = "default_early_response")]
    pub early_response: EarlyResponsePolicy,
    #[serde(default = "default_early_response_hold")]
    pub early_response_hold: ConfigDuration,
    #[serde(default = "default_half_close")]
    pub half_close: HalfClosePolicy,
    #[serde(default)]
    pub tcp: FileTcp,
    #[serde(default)]
    pub headers: FileHeaders,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Listener name; empty matches every listener.
    #[serde(default)]
    pub listener: String,
    /// Exact host, `*.suffix`, or empty for any host.
    #[serde(default)]
    pub host: String,
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub cluster: String,
    /// Bodies with a `Content-Length` up to this are read whole before an upstream is
    /// chosen; 0 streams every body.
    #[serde(default = "default_request_buffer_bytes")]
    pub request_buffer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "default_retry_buffer")]
    pub buffer_bytes: usize,
    #[serde(default = "default_backoff_base")]
    pub backoff_base: ConfigDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: ConfigDuration,
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    #[serde(default = "default_budget_min")]
    pub budget_min_per_sec: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub name: String,
    pub endpoints: Vec<String>,
    #[serde(default = "default_balance")]
    pub balance: Balance,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    #[serde(default = "default_response_timeout")]
    pub response_timeout: ConfigDuration,
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: ConfigDuration,
    #[serde(default = "default_pool_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// 0 means no limit.
    #[serde(default)]
    pub max_requests_per_connection: u64,
    #[serde(default = "yes")]
    pub learn_keep_alive: bool,
    #[serde(default = "yes")]
    pub learn_from_closes: bool,
    #[serde(default = "default_hint_margin")]
    pub keep_alive_margin: ConfigDuration,
    /// The idle close the endpoints themselves apply, when known (nginx `keepalive_timeout`,
    /// Node `server.keepAliveTimeout`, ...). Only `linger check` reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_idle_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub retry: FileRetry,
    #[serde(default)]
    pub tcp: FileTcp,
}

fn yes() -> bool {
    true
}
fn default_closed_connections() -> usize {
    DEFAULT_CLOSED_CONNECTIONS
}
fn default_admin_address() -> String {
    DEFAULT_ADMIN_ADDRESS.to_string()
}
fn default_access_log() -> String {
    "stdout".to_string()
}
fn default_drain_timeout() -> ConfigDuration {
    DEFAULT_DRAIN_TIMEOUT
}
fn default_ka_idle() -> ConfigDuration {
    DEFAULT_TCP_KEEPALIVE_IDLE
}
fn default_ka_interval() -> ConfigDuration {
    DEFAULT_TCP_KEEPALIVE_INTERVAL
}
fn default_ka_count() -> u32 {
    DEFAULT_TCP_KEEPALIVE_COUNT
}
fn default_user_timeout() -> ConfigDuration {
    DEFAULT_TCP_USER_TIMEOUT
}
fn default_notsent_lowat() -> u32 {
    DEFAULT_NOTSENT_LOWAT
}
fn default_xff() -> ForwardedFor {
    ForwardedFor::Append
}
fn default_ds_idle() -> ConfigDuration {
    DEFAULT_DOWNSTREAM_IDLE_TIMEOUT
}
fn default_header_read_timeout() -> ConfigDuration {
    DEFAULT_HEADER_READ_TIMEOUT
}
fn default_request_body_timeout() -> ConfigDuration {
    DEFAULT_REQUEST_BODY_TIMEOUT
}
fn default_request_buffer_bytes() -> usize {
    DEFAULT_REQUEST_BUFFER_BYTES
}
fn default_max_requests() -> u64 {
    DEFAULT_MAX_REQUESTS_PER_CONNECTION
}
fn default_max_age() -> ConfigDuration {
    DEFAULT_MAX_CONNECTION_AGE
}
fn default_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_max_headers() -> usize {
    DEFAULT_MAX_HEADERS
}
fn default_linger_time() -> ConfigDuration {
    DEFAULT_LINGER_TIME
}
fn default_early_response() -> EarlyResponsePolicy {
    EarlyResponsePolicy::Close
}
fn default_early_response_hold() -> ConfigDuration {
    DEFAULT_EARLY_RESPONSE_HOLD
}
fn default_half_close() -> HalfClosePolicy {
    HalfClosePolicy::Abort
}
fn default_path_prefix() -> String {
    "/".to_string()
}
fn default_balance() -> Balance {
    Balance::RoundRobin
}
fn default_connect_timeout() -> ConfigDuration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_response_timeout() -> ConfigDuration {
    DEFAULT_RESPONSE_TIMEOUT
}
fn default_pool_idle() -> ConfigDuration {
    DEFAULT_POOL_IDLE_TIMEOUT
}
fn default_pool_max_idle() -> usize {
    DEFAULT_POOL_MAX_IDLE
}
fn default_hint_margin() -> ConfigDuration {
    DEFAULT_KEEP_ALIVE_HINT_MARGIN
}
fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}
fn default_retry_buffer() -> usize {
    DEFAULT_RETRY_BUFFER_BYTES
}
fn default_backoff_base() -> ConfigDuration {
    DEFAULT_RETRY_BACKOFF_BASE
}
fn default_backoff_max() -> ConfigDuration {
    DEFAULT_RETRY_BACKOFF_MAX
}
fn default_budget_ratio() -> f64 {
    DEFAULT_RETRY_BUDGET_RATIO
}
fn default_budget_min() -> u32 {
    DEFAULT_RETRY_BUDGET_MIN_PER_SEC
}

macro_rules! default_from_serde {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                // Every field carries a serde default, so an empty table is the default.
                toml::from_str("").expect("an empty table must deserialize with defaults")
            }
        }
    )*};
}
default_from_serde!(FileAdmin, FileRuntime, FileTcp, FileHeaders, FileRetry);

// ===== runtime form =====

#[derive(Debug, Clone)]
pub struct Config {
    pub source: String,
    pub admin: Option<SocketAddr>,
    /// Closed connections whose journals are kept.
    pub closed_connections: usize,
    pub workers: usize,
    pub pin_workers: PinWorkers,
    pub access_log: AccessLogTarget,
    pub drain_timeout: Duration,
    pub drain_delay: Duration,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub clusters: Vec<ClusterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub keepalive: Option<TcpKeepalive>,
    pub user_timeout: Option<Duration>,
    pub nodelay: bool,
    /// Leave the kernel's quick ACKs on (`TCP_QUICKACK`); off by default, so the ACK of a
    /// request (or of a connect) rides on the data that answers it.
    pub quickack: bool,
    /// The most unsent bytes the kernel queues before a write waits (`TCP_NOTSENT_LOWAT`);
    /// `None` leaves the kernel's default.
    pub notsent_lowat: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub x_forwarded_for: ForwardedFor,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    pub via: bool,
    pub preserve_host: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub idle_timeout: Duration,
    pub announce_keep_alive: bool,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_requests_per_connection: Option<u64>,
    pub max_connection_age: Option<Duration>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub linger_time: Duration,
    pub early_response: EarlyResponsePolicy,
    pub early_response_hold: Duration,
    pub half_close: HalfClosePolicy,
    pub tcp: TcpConfig,
    pub headers: HeadersConfig,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub listener: Option<String>,
    pub host: HostMatch,
    pub path_prefix: String,
    /// Index into `Config::clusters`.
    pub cluster: usize,
    /// Bodies with a `Content-Length` up to this are read whole before an upstream is
    /// chosen; 0 streams every body.
    pub request_buffer_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub buffer_bytes: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget_ratio: f64,
    pub budget_min_per_sec: u32,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub max_requests_per_connection: Option<u64>,
    pub learn_keep_alive: bool,
    /// Learn each endpoint's idle close and close-after-response habit from its own
    /// connections (`upstream::learn`).
    pub learn_from_closes: bool,
    pub keep_alive_margin: Duration,
    /// What the endpoints' own idle close is said to be (for `linger check`).
    pub upstream_idle_timeout: Option<Duration>,
    pub retry: RetryConfig,
    pub tcp: TcpConfig,
}

// === impl File ===

impl File {
    /// Reads and parses a config file; the error names the file, the key and what was expected.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
            more: Vec::new(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: source.to_string(),
            key: String::new(),
            message: one_line(&e.to_string()),
            more: Vec::new(),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut message = one_line(inner.message());
            // `[listener]` instead of `[[listener]]`: one table where a list of them goes.
            if message.starts_with("invalid type: map, expected a sequence")
                && ["listener", "cluster", "route"].contains(&key.as_str())
            {
                message = format!(
                    "[{key}] is a single table; {key}s are a list of tables (expected \
                     [[{key}]], with two brackets, once per {key})"
                );
            }
            ConfigError {
                file: source.to_string(),
                key: if key == "." { String::new() } else { key },
                message,
                more: Vec::new(),
            }
        })
    }

    /// The file with every default written out, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a validated config must serialize")
    }

    /// Checks every value and resolves addresses; `source` names the file in errors.
    pub fn validate(&self, source: &str) -> Result<Config, ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: source.to_string(),
            key,
            message,
            more: Vec::new(),
        };
        // Every error of the file is collected; a value in error is replaced by a stand-in
        // so that the checks after it still run.
        let mut errs: Vec<ConfigError> = Vec::new();
        let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));

        let admin = if self.admin.enabled {
            match parse_addr(&self.admin.address) {
                Ok(a) => Some(a),
                Err(m) => {
                    errs.push(err("admin.address".into(), m));
                    None
                }
            }
        } else {
            None
        };

        let access_log = match self.runtime.access_log.as_str() {
            "stdout" | "-" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            "" => {
                errs.push(err(
                    "runtime.access_log".into(),
                    "is empty (expected \"stdout\", \"off\" or a file path)".into(),
                ));
                AccessLogTarget::Off
            }
            path => AccessLogTarget::File(PathBuf::from(path)),
        };

        if self.listeners.is_empty() {
            errs.push(err(
                "listener".into(),
                "no listener is configured (expected at least one [[listener]] with an address)"
                    .into(),
            ));
        }
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.iter().enumerate() {
            let k = |field: &str| format!("listener[{i}].{field}");
            let address = parse_addr(&l.address).unwrap_or_else(|m| {
                errs.push(err(k("address"), m));
                nowhere
            });
            for (key, d) in [
                ("idle_timeout", l.idle_timeout),
                ("header_read_timeout", l.header_read_timeout),
                ("request_body_timeout", l.request_body_timeout),
            ] {
                if let Err(m) = positive(d, "") {
                    errs.push(err(k(key), m));
                }
            }
            if l.max_header_bytes < 8192 {
                errs.push(err(
                    k("max_header_bytes"),
                    format!(
                        "{} is too small (expected at least 8192)",
                        l.max_header_bytes
                    ),
                ));
            }
            if l.max_headers == 0 || l.max_headers > 10_000 {
                errs.push(err(
                    k("max_headers"),
                    format!("{} is out of range (expected 1 to 10000)", l.max_headers),
                ));
            }
            if let Err((f, m)) = check_tcp(&l.tcp) {
                errs.push(err(k(&format!("tcp.{f}")), m));
            }
            let name = if l.name.is_empty() {
                format!("listener{i}")
            } else {
                l.name.clone()
            };
            if listeners.iter().any(|o: &ListenerConfig| o.name == name) {
                errs.push(err(k("name"), format!("{name:?} is used by two listeners")));
            }
            listeners.push(ListenerConfig {
                name,
                address,
                idle_timeout: l.idle_timeout.0,
                announce_keep_alive: l.announce_keep_alive,
                header_read_timeout: l.header_read_timeout.0,
                request_body_timeout: l.request_body_timeout.0,
                max_requests_per_connection: nonzero(l.max_requests_per_connection),
                max_connection_age: nonzero_duration(l.max_connection_age),
                max_header_bytes: l.max_header_bytes,
                max_headers: l.max_headers,
                linger_time: l.linger_time.0,
                early_response: l.early_response,
                early_response_hold: l.early_response_hold.0,
                half_close: l.half_close,
                tcp: tcp_config(&l.tcp),
                headers: HeadersConfig {
                    x_forwarded_for: l.headers.x_forwarded_for,
                    x_forwarded_proto: l.headers.x_forwarded_proto,
                    x_forwarded_host: l.headers.x_forwarded_host,
                    via: l.headers.via,
                    preserve_host: l.headers.preserve_host,
                },
            });
        }

        if self.clusters.is_empty() {
            errs.push(err(
                "cluster".into(),
                "no cluster is configured (expected at least one [[cluster]] with endpoints)"
                    .into(),
            ));
        }
        let mut clusters: Vec<ClusterConfig> = Vec::with_capacity(self.clusters.len());
        for (i, c) in self.clusters.iter().enumerate() {
            let k = |field: &str| format!("cluster[{i}].{field}");
            if c.name.is_empty() {
                errs.push(err(k("name"), "is empty (expected a cluster name)".into()));
            }
            if clusters.iter().any(|o| o.name == c.name) {
                errs.push(err(
                    k("name"),
                    format!("{:?} is used by two clusters", c.name),
                ));
            }
            if c.endpoints.is_empty() {
                errs.push(err(
                    k("endpoints"),
                    "is empty (expected at least one \"HOST:PORT\")".into(),
                ));
            }
            let mut endpoints = Vec::with_capacity(c.endpoints.len());
            for (j, e) in c.endpoints.iter().enumerate() {
                match parse_addr(e) {
                    Ok(a) => endpoints.push(a),
                    Err(m) => errs.push(err(format!("cluster[{i}].endpoints[{j}]"), m)),
                }
            }
            for (key, d) in [
                ("connect_timeout", c.connect_timeout),
                ("response_timeout", c.response_timeout),
            ] {
                if let Err(m) = positive(d, "") {
                    errs.push(err(k(key), m));
                }
            }
            if !(0.0..=10.0).contains(&c.retry.budget_ratio) {
                errs.push(err(
                    k("retry.budget_ratio"),
                    format!(
                        "{} is out of range (expected 0.0 to 10.0)",
                        c.retry.budget_ratio
                    ),
                ));
            }
            if c.keep_alive_margin.0 < Duration::from_secs(1) {
                errs.push(err(
                    k("keep_alive_margin"),
                    format!(
                        "{} is below 1s (expected at least \"1s\")",
                        c.keep_alive_margin
                    ),
                ));
            }
            if c.upstream_idle_timeout.is_some_and(|d| d.0.is_zero()) {
                errs.push(err(
                    k("upstream_idle_timeout"),
                    "\"0s\" is not an idle close (expected a duration above 0, or no key when \
                     unknown)"
                        .into(),
                ));
            }
            if let Err((f, m)) = check_tcp(&c.tcp) {
                errs.push(err(k(&format!("tcp.{f}")), m));
            }
            if c.retry.backoff_base > c.retry.backoff_max {
                errs.push(err(
                    k("retry.backoff_base"),
                    format!(
                        "{} is longer than retry.backoff_max {} (expected base <= max)",
                        c.retry.backoff_base, c.retry.backoff_max
                    ),
                ));
            }
            clusters.push(ClusterConfig {
                name: c.name.clone(),
                endpoints,
                balance: c.balance,
                connect_timeout: c.connect_timeout.0,
                response_timeout: c.response_timeout.0,
                idle_timeout: c.idle_timeout.0,
                max_idle_per_endpoint: c.max_idle_per_endpoint,
                max_requests_per_connection: nonzero(c.max_requests_per_connection),
                learn_keep_alive: c.learn_keep_alive,
                learn_from_closes: c.learn_from_closes,
                keep_alive_margin: c.keep_alive_margin.0,
                upstream_idle_timeout: c.upstream_idle_timeout.map(|d| d.0),
                retry: RetryConfig {
                    max_retries: c.retry.max_retries,
                    buffer_bytes: c.retry.buffer_bytes,
                    backoff_base: c.retry.backoff_base.0,
                    backoff_max: c.retry.backoff_max.0,
                    budget_ratio: c.retry.budget_ratio,
                    budget_min_per_sec: c.retry.budget_min_per_sec,
                },
                tcp: tcp_config(&c.tcp),
            });
        }

        let mut routes = Vec::with_capacity(self.routes.len().max(1));
        if self.routes.is_empty() {
            if clusters.len() > 1 {
                errs.push(err(
                    "route".into(),
                    "no route is configured and there are several clusters (expected [[route]] entries naming a cluster)".into(),
                ));
            }
            routes.push(RouteConfig {
                listener: None,
                host: HostMatch::Any,
                path_prefix: "/".into(),
                cluster: 0,
                request_buffer_bytes: DEFAULT_REQUEST_BUFFER_BYTES,
            });
        }
        for (i, r) in self.routes.iter().enumerate() {
            let k = |field: &str| format!("route[{i}].{field}");
            let cluster = clusters.iter().position(|c| c.name == r.cluster);
            if cluster.is_none() {
                let names: Vec<_> = clusters.iter().map(|c| c.name.as_str()).collect();
                errs.push(err(
                    k("cluster"),
                    format!(
                        "{:?} is not a cluster (expected one of {names:?})",
                        r.cluster
                    ),
                ));
            }
            if !r.path_prefix.starts_with('/') {
                errs.push(err(
                    k("path_prefix"),
                    format!("{:?} does not start with '/'", r.path_prefix),
                ));
            }
            let listener = if r.listener.is_empty() {
                None
            } else if listeners.iter().any(|l| l.name == r.listener) {
                Some(r.listener.clone())
            } else {
                errs.push(err(
                    k("listener"),
                    format!("{:?} is not a listener name", r.listener),
                ));
                None
            };
            let host = match r.host.to_ascii_lowercase() {
                h if h.is_empty() || h == "*" => HostMatch::Any,
                h if h.starts_with("*.") => HostMatch::Suffix(h[1..].to_string()),
                h if h.contains('*') => {
                    errs.push(err(
                        k("host"),
                        format!("{:?} has a '*' that is not a leading \"*.\"", r.host),
                    ));
                    HostMatch::Any
                }
                h => HostMatch::Exact(h),
            };
            if let Some(cluster) = cluster {
                routes.push(RouteConfig {
                    listener,
                    host,
                    path_prefix: r.path_prefix.clone(),
                    cluster,
                    request_buffer_bytes: r.request_buffer_bytes,
                });
            }
        }
        if !errs.is_empty() {
            let mut first = errs.remove(0);
            first.more = errs;
            return Err(first);
        }

        let workers = if self.runtime.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.runtime.workers
        };

        Ok(Config {
            source: source.to_string(),
            admin,
            closed_connections: self.admin.closed_connections,
            workers,
            pin_workers: self.runtime.pin_workers,
            access_log,
            drain_timeout: self.runtime.drain_timeout.0,
            drain_delay: self.runtime.drain_delay.0,
            listeners,
            routes,
            clusters,
        })
    }

    /// The config behind `linger serve --listen A --upstream B[,C...]`.
    pub fn simple(listen: &str, upstreams: &[String]) -> Self {
        let mut file: File =
            toml::from_str("").expect("an empty config must deserialize with defaults");
        file.listeners.push(FileListener {
            name: "main".into(),
            ..toml::from_str(&format!("address = {listen:?}")).expect("listener defaults")
        });
        file.clusters.push(FileCluster {
            name: "default".into(),
            endpoints: upstreams.to_vec(),
            ..toml::from_str("name = \"default\"\nendpoints = []").expect("cluster defaults")
        });
        file
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        let host_port = rest.split('/').next().unwrap_or(rest);
        return Err(format!(
            "{s:?} is a URL (expected HOST:PORT, such as {host_port:?}: linger speaks plain \
             HTTP/1.1 to its endpoints, so no scheme such as {scheme:?} is written)"
        ));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{s:?} is not HOST:PORT"));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} does not resolve: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

fn positive(d: ConfigDuration, _key: &str) -> Result<(), String> {
    if d.0.is_zero() {
        Err("is 0 (expected a positive duration such as \"10s\")".into())
    } else {
        Ok(())
    }
}

fn nonzero(n: u64) -> Option<u64> {
    (n != 0).then_some(n)
}

fn nonzero_duration(d: ConfigDuration) -> Option<Duration> {
    (!d.0.is_zero()).then_some(d.0)
}

/// TCP keepalive settings the kernel accepts: whole seconds, at least 1.
fn check_tcp(t: &FileTcp) -> Result<(), (&'static str, String)> {
    let lowat = t.notsent_lowat_bytes;
    if lowat != 0 && lowat < MIN_NOTSENT_LOWAT {
        return Err((
            "notsent_lowat_bytes",
            format!("{lowat} is out of range (expected 0 or at least {MIN_NOTSENT_LOWAT})"),
        ));
    }
    if !t.keepalive {
        return Ok(());
    }
    for (field, d) in [
        ("keepalive_idle", t.keepalive_idle),
        ("keepalive_interval", t.keepalive_interval),
    ] {
        if d.0 < Duration::from_secs(1) || d.0.subsec_millis() != 0 {
            return Err((field, format!("{d} is not a whole number of seconds >= 1s (the kernel counts these in seconds)")));
        }
    }
    if t.keepalive_count == 0 {
        return Err((
            "keepalive_count",
            "0 is out of range (expected at least 1)".into(),
        ));
    }
    Ok(())
}

fn tcp_config(t: &FileTcp) -> TcpConfig {
    TcpConfig {
        keepalive: t.keepalive.then_some(TcpKeepalive {
            idle: t.keepalive_idle.0,
            interval: t.keepalive_interval.0,
            count: t.keepalive_count,
        }),
        user_timeout: nonzero_duration(t.user_timeout),
        nodelay: t.nodelay,
        quickack: t.quickack,
        notsent_lowat: (t.notsent_lowat_bytes != 0).then_some(t.notsent_lowat_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Config, ConfigError> {
        File::parse(text, "test.toml")?.validate("test.toml")
    }

    const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8080"
[[cluster]]
name = "app"
endpoints = ["127.0.0.1:3000"]
"#;

    #[test]
    fn minimal_config_gets_every_default() {
        let c = validate(MINIMAL).expect("minimal config must validate");
        assert_eq!(c.listeners[0].idle_timeout, Duration::from_secs(75));
        assert_eq!(c.clusters[0].idle_timeout, Duration::from_millis(1500));
        assert_eq!(c.routes.len(), 1, "a single cluster gets a catch-all route");
        assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    }

    #[test]
    fn effective_config_round_trips_with_defaults_written_out() {
        let f = File::parse(MINIMAL, "test.toml").unwrap();
        let text = f.to_toml();
        assert!(text.contains("idle_timeout = \"75s\""), "{text}");
        assert!(
            text.contains("max_requests_per_connection = 1000"),
            "{text}"
        );
        File::parse(&text, "effective")
            .unwrap()
            .validate("effective")
            .expect("printed config must validate");
    }

    #[test]
    fn listener_address_without_host_names_file_key_and_expectation() {
        let e = validate("[[listener]]\naddress = \"8080\"\n[[cluster]]\nname=\"a\"\nendpoints=[\"127.0.0.1:1\"]")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.toml: listener[0].address: \"8080\" is not HOST:PORT"
        );
    }

    /// The limit on unsent bytes is on by default on both sides; 0 turns it off, and a
    /// value small enough to split every write is refused with the field and the range.
    #[test]
    fn the_unsent_bytes_limit_defaults_on_and_refuses_tiny_values() {
        let c = validate(MINIMAL).unwrap();
        assert_eq!(
            c.listeners[0].tcp.notsent_lowat,
            Some(DEFAULT_NOTSENT_LOWAT)
        );
        assert_eq!(c.clusters[0].tcp.notsent_lowat, Some(DEFAULT_NOTSENT_LOWAT));
        let off = MINIMAL.replace(
            "[[cluster]]",
            "[listener.tcp]\nnotsent_lowat_bytes = 0\n[[cluster]]",
        );
        assert_eq!(validate(&off).unwrap().listeners[0].tcp.notsent_lowat, None);
        let tiny = MINIMAL.replace(
            "[[cluster]]",
            "[listener.tcp]\nnotsent_lowat_bytes = 1000\n[[cluster]]",
        );
        let e = validate(&tiny).unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.toml: listener[0].tcp.notsent_lowat_bytes: 1000 is out of range (expected 0 or at least 16384)"
        );
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = validate(&format!("{MINIMAL}\n[admin]\nbogus = 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(e.to_string().starts_with("test.toml: admin"), "{e}");
    }

    #[test]
    fn a_single_table_where_a_list_goes_says_to_write_two_brackets() {
        let e = validate("[listener]\naddress = \"127.0.0.1:1\"\n[[cluster]]\nname=\"a\"\nendpoints=[\"127.0.0.1:1\"]")
            .unwrap_err();
        assert_eq!(e.key, "listener", "{e}");
        assert!(e.message.contains("expected [[listener]]"), "{e}");
    }

    #[test]
    fn an_endpoint_written_as_a_url_says_so() {
        let e = validate("[[listener]]\naddress = \"127.0.0.1:1\"\n[[cluster]]\nname=\"a\"\nendpoints=[\"http://127.0.0.1:3000/\"]")
            .unwrap_err();
        assert_eq!(e.key, "cluster[0].endpoints[0]", "{e}");
        assert!(
            e.message
                .contains("is a URL (expected HOST:PORT, such as \"127.0.0.1:3000\""),
            "{e}"
        );
        assert!(!e.message.contains("resolve"), "{e}");
    }

    #[test]
    fn every_error_of_a_file_is_reported_at_once() {
        let e = validate(
            "[[listener]]\naddress = \"nope\"\nidle_timeout = \"0s\"\n[[cluster]]\nname=\"a\"\nendpoints=[\"http://127.0.0.1:1\"]\n[[route]]\ncluster = \"b\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.all().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listener[0].address",
                "listener[0].idle_timeout",
                "cluster[0].endpoints[0]",
                "route[0].cluster"
            ],
            "{e}"
        );
        assert_eq!(
            e.to_string().matches("\nerror: test.toml: ").count(),
            3,
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = validate(
            "[[listener]]\naddress = \"127.0.0.1:1\"\nidle_timeout = 75\n[[cluster]]\nname=\"a\"\nendpoints=[\"127.0.0.1:1\"]",
        )
        .unwrap_err();
        assert_eq!(e.key, "listener[0].idle_timeout", "{e}");
        assert!(e.message.contains("duration"), "{e}");
    }

    #[test]
    fn route_to_unknown_cluster_is_an_error() {
        let e = validate(&format!("{MINIMAL}\n[[route]]\ncluster = \"nope\"\n")).unwrap_err();
        assert_eq!(e.key, "route[0].cluster");
        assert!(e.message.contains("\"nope\" is not a cluster"), "{e}");
    }

    #[test]
    fn bad_duration_unit_is_explained() {
        let e = validate(
            "[[listener]]\naddress = \"127.0.0.1:1\"\nidle_timeout = \"75x\"\n[[cluster]]\nname=\"a\"\nendpoints=[\"127.0.0.1:1\"]",
        )
        .unwrap_err();
        assert_eq!(e.key, "listener[0].idle_timeout");
        assert!(e.message.contains("unknown unit"), "{e}");
    }

    #[test]
    fn missing_listener_and_cluster_are_errors() {
        assert_eq!(validate("").unwrap_err().key, "listener");
        assert_eq!(
            validate("[[listener]]\naddress = \"127.0.0.1:1\"")
                .unwrap_err()
                .key,
            "cluster"
        );
    }

    #[test]
    fn empty_endpoint_list_is_an_error() {
        let e = validate(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[cluster]]\nname=\"a\"\nendpoints=[]",
        )
        .unwrap_err();
        assert_eq!(e.key, "cluster[0].endpoints");
    }

    #[test]
    fn simple_config_validates() {
        let c = File::simple("127.0.0.1:0", &["127.0.0.1:1".into(), "127.0.0.1:2".into()])
            .validate("command line")
            .unwrap();
        assert_eq!(c.clusters[0].endpoints.len(), 2);
    }
}
