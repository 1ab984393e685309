//! The `linger` binary: `serve`, `check`, `probe`, `explain`, `lab`, `demo`.
//!
//! `serve` is kept thin: load and validate the config, bind, spawn one worker per thread,
//! wait for a signal, drain with a deadline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod explain;
mod lab;

/// jemalloc: every request allocates a few blocks of several KiB (the request path's
/// future among them), which glibc's malloc serves from its slower bins (16 % of linger's
/// instructions per request went to malloc and free); jemalloc's size classes serve them
/// from per-thread caches and pack small per-connection blocks without headers. Its
/// options are compiled in: a background thread (this crate's `background_threads`
/// feature of `tikv-jemallocator`) returns pages unused for about a second
/// (`dirty_decay_ms:1000`, `.cargo/config.toml`), even while linger is idle; see "Fixed
/// values" in docs/config.md.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use linger_proxy::config::{AccessLogTarget, Config, File};
use linger_proxy::AccessLog;
use linger_proxy::Server;

#[derive(Parser, Debug)]
#[command(
    name = "linger",
    version,
    about = "An HTTP/1.1 reverse proxy that loses no request to a connection-lifecycle race",
    long_about = "An HTTP/1.1 reverse proxy that loses no request to a connection-lifecycle race, \
                  and explains every connection close.\n\n\
                  Start with `linger demo` to see the idle-close race it exists to end."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy, from a config file or from --listen/--upstream.
    Serve(ServeArgs),
    /// Validate a config file and walk its chain of hops (load balancer in front, linger's
    /// downstream side, its pool, each upstream): name every pair whose idle timeouts let a
    /// request be lost, and the fix. Exit status 1 when a race is possible.
    Check(CheckArgs),
    /// A short run of the race lab, with no setup: misbehaving origins, the same traffic
    /// straight to them and through linger; print who lost requests.
    Demo(lab::DemoArgs),
    /// The race lab: reproduce each race of docs/lab.md against no proxy, linger, nginx
    /// and HAProxy, side by side (list, run, setup).
    Lab(lab::LabArgs),
    /// Measure how a live HTTP/1.1 server closes connections (idle close, Keep-Alive hint,
    /// requests per connection, half-close, HTTP/1.0) and recommend `[[cluster]]` settings.
    /// Progress goes to stderr, the report to stdout.
    Probe(ProbeArgs),
    /// Read a packet capture (pcap or pcapng, e.g. `tcpdump -w`) and name the
    /// connection-lifecycle races in it (R1 to R12 of docs/races.md), with packet numbers,
    /// times and the fix. Exit status 0 when no request was lost, 1 when one was, 2 when
    /// the capture cannot be read.
    Explain(explain::ExplainArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML config file (see docs/config.md). Conflicts with --listen/--upstream.
    #[arg(long, short, value_name = "FILE", conflicts_with_all = ["listen", "upstream"])]
    config: Option<PathBuf>,
    /// Address to accept downstream connections on, HOST:PORT (without --config).
    #[arg(long, value_name = "HOST:PORT", requires = "upstream")]
    listen: Option<String>,
    /// Upstream endpoints, HOST:PORT, comma-separated (without --config).
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        requires = "listen"
    )]
    upstream: Vec<String>,
    /// Worker threads (overrides the config; 0 = one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Access log: "stdout", "off" or a file path (overrides the config).
    #[arg(long, value_name = "TARGET")]
    access_log: Option<String>,
    /// Admin listener HOST:PORT, or "off" (overrides the config; default 127.0.0.1:9901).
    #[arg(long, value_name = "HOST:PORT|off")]
    admin: Option<String>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// TOML config file to validate.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Idle timeout of the load balancer in front of linger ("60s" for AWS ALB/ELB).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    front_idle: Option<Duration>,
    /// Measure each upstream endpoint with `linger probe` (idle close, Keep-Alive hint,
    /// requests per connection) instead of trusting `upstream_idle_timeout`.
    #[arg(long)]
    probe: bool,
    /// With --probe: give up waiting for an endpoint's idle close after this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_max_wait)]
    probe_max_wait: Duration,
    /// Read what a running linger learned of its endpoints from its admin listener
    /// (http://HOST:PORT, e.g. http://127.0.0.1:9901) and flag the configured timeouts that
    /// live traffic proved wrong.
    #[arg(long, value_name = "URL", conflicts_with = "print_config")]
    admin: Option<String>,
    /// Print the effective config, every default written out, instead of the chain.
    #[arg(long, conflicts_with = "probe")]
    print_config: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    linger_proxy::config::ConfigDuration::parse(s).map(|d| d.0)
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// The server to probe: http://HOST[:PORT][/PATH] (https is not supported).
    #[arg(value_name = "URL")]
    url: String,
    /// Idle connections measured in parallel.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    connections: u64,
    /// Give up waiting for an idle close after this long ("90s", "1500ms", "2m").
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "120s",
        value_parser = parse_max_wait
    )]
    max_wait: Duration,
    /// Stop counting requests per connection after this many.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_requests: u64,
    /// Also send a POST that declares a 1 MiB body and sends part of it (does the server
    /// answer early, and does it then close with FIN or RST?), and a request just after
    /// the measured idle close. The POST goes to URL: use a path where it is harmless.
    #[arg(long)]
    intrusive: bool,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also read what a running linger learned of this server from its admin listener
    /// (http://HOST:PORT, e.g. http://127.0.0.1:9901): a learned idle limit shorter than
    /// the recommended idle_timeout replaces it.
    #[arg(long, value_name = "ADMIN_URL")]
    admin: Option<String>,
}

fn parse_max_wait(s: &str) -> Result<Duration, String> {
    let d = linger_proxy::config::ConfigDuration::parse(s)?.0;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        Command::Demo(args) => lab::demo(args),
        Command::Lab(args) => lab::lab(args),
        Command::Probe(args) => probe(args),
        Command::Explain(args) => explain::explain(args),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LINGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn load(args: &ServeArgs) -> Result<Config, String> {
    let (mut file, source) =
        match (&args.config, &args.listen) {
            (Some(path), _) => (
                File::load(path).map_err(|e| e.to_string())?,
                path.display().to_string(),
            ),
            (None, Some(listen)) => (
                File::simple(listen, &args.upstream),
                "command line".to_string(),
            ),
            (None, None) => return Err(
                "linger serve needs --config FILE, or --listen HOST:PORT and --upstream HOST:PORT"
                    .into(),
            ),
        };
    if let Some(w) = args.workers {
        file.runtime.workers = w;
    }
    if let Some(a) = &args.access_log {
        file.runtime.access_log = a.clone();
    }
    if let Some(a) = &args.admin {
        if a == "off" {
            file.admin.enabled = false;
        } else {
            file.admin.enabled = true;
            file.admin.address = a.clone();
        }
    }
    file.validate(&source).map_err(|e| e.to_string())
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let access_log = match AccessLog::open(&config.access_log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = config.workers.max(1);
    let admin_addr = config.admin;
    let drain_delay = config.drain_delay;
    let drain_timeout = config.drain_timeout;
    let log_target = config.access_log.clone();
    let server = Server::new(config, access_log);
    let sockets = match server.bind_all() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The admin listener is bound before anything is served, so that a port in use stops
    // linger at once, with what to change.
    let admin_socket = match admin_addr.map(std::net::TcpListener::bind).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: the admin listener cannot bind {}: {e}\n\
                 (another linger may be using it: set [admin] address = \"HOST:PORT\" in the \
                 config, or pass --admin HOST:PORT, or --admin off)",
                admin_addr.map(|a| a.to_string()).unwrap_or_default()
            );
            return ExitCode::from(2);
        }
    };
    for (l, s) in server.config.listeners.iter().zip(&sockets) {
        let addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listener = %l.name, %addr, workers, "listening");
    }
    if log_target == AccessLogTarget::Stdout {
        tracing::info!("access log: one JSON line per request on stdout");
    }

    // One current-thread runtime per worker, each accepting on its own copy of the sockets.
    let cpus = server.worker_cpus();
    if let Some(c) = &cpus {
        tracing::info!(cpus = ?c, "workers pinned to CPUs (runtime.pin_workers)");
    }
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let cpu = cpus.as_ref().map(|c| c[i]);
        let copies: Vec<std::net::TcpListener> =
            match sockets.iter().map(|s| s.try_clone()).collect() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: cannot duplicate listening sockets: {e}");
                    return ExitCode::from(2);
                }
            };
        let server = server.clone();
        let t = std::thread::Builder::new()
            .name(format!("linger-worker-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = Server::pin_worker_thread(cpu) {
                        tracing::warn!(worker = i, cpu, error = %e, "worker not pinned");
                    }
                }
                let rt = Server::worker_runtime().expect("a worker runtime must start");
                rt.block_on(async move {
                    server.clone().run_worker(copies).await;
                    // Keep this runtime alive while its connections finish.
                    server.conns.wait_zero().await;
                });
            })
            .expect("a worker thread must start");
        threads.push(t);
    }
    drop(sockets);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the control runtime must start");
    let access_log = server.access_log.clone();
    let code = rt.block_on(async move {
        if let Some(sock) = admin_socket {
            let a = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let sock = sock
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(sock));
            match sock {
                Ok(sock) => {
                    tracing::info!(addr = %a, "admin listening (/metrics, /ready, /live)");
                    tokio::spawn(linger_proxy::admin::serve(server.clone(), sock));
                }
                Err(e) => {
                    eprintln!("error: the admin listener {a}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let signal = wait_for_signal().await;
        tracing::info!(signal, ?drain_delay, ?drain_timeout, "draining");
        server.set_unready();
        if !drain_delay.is_zero() {
            tokio::time::sleep(drain_delay).await;
        }
        server.start_drain();
        let left = server.wait_drained(drain_timeout).await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline passed; closing the rest"
            );
            // Each connection logs its close and its request's line as it goes.
            server.cut();
            let still = server.wait_drained(Duration::from_secs(2)).await;
            if still > 0 {
                tracing::warn!(connections = still, "connections still open at exit");
            }
        } else {
            tracing::info!("drained");
        }
        ExitCode::SUCCESS
    });
    if !access_log.flush(Duration::from_secs(5)) {
        eprintln!("warning: the access log could not be flushed within 5 s");
    }
    code
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler must install");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler must install");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler must install");
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => {
                // Conventionally "reload the configuration"; until linger can, it must not
                // be the signal's default action, which kills the process mid-request.
                tracing::warn!(
                    "SIGHUP received: configuration reload is not supported yet; \
                     still serving with the configuration loaded at start"
                );
            }
        }
    }
}

/// Exit status: 0 when the chain has no race, 1 when one is possible, 2 when the config is
/// invalid.
fn check(args: CheckArgs) -> ExitCode {
    let source = args.config.display().to_string();
    let (file, config) = match File::load(&args.config).and_then(|f| {
        let c = f.validate(&source)?;
        Ok((f, c))
    }) {
        Ok(fc) => fc,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        println!("# {source}: valid. Effective configuration, every default written out:\n");
        print!("{}", file.to_toml());
        return ExitCode::SUCCESS;
    }
    let measured = if args.probe {
        match probe_endpoints(&config, args.probe_max_wait) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        Vec::new()
    };
    let learned = match &args.admin {
        Some(url) => match linger_lab::check::learned::fetch(url, Duration::from_secs(5)) {
            Ok(l) => Some((url.clone(), l)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let chain = linger_lab::check::Chain {
        config: &config,
        front_idle: args.front_idle,
        measured,
        learned,
    };
    let report = linger_lab::check::check(&chain);
    println!("# {source}: valid.\n");
    print!("{}", report.render());
    if report.races().next().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Probes every endpoint of every cluster, one after the other (progress on stderr).
fn probe_endpoints(
    config: &Config,
    max_wait: Duration,
) -> Result<Vec<(std::net::SocketAddr, linger_lab::check::UpstreamFacts)>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the probe runtime: {e}"))?;
    let opts = linger_lab::probe::ProbeOptions {
        max_wait,
        ..Default::default()
    };
    let progress = linger_lab::probe::StderrProgress::new();
    let mut out = Vec::new();
    for c in &config.clusters {
        for ep in &c.endpoints {
            if out.iter().any(|(a, _)| a == ep) {
                continue;
            }
            let url = format!("http://{ep}/");
            eprintln!("probing {url} (cluster {:?})", c.name);
            let report = rt
                .block_on(linger_lab::probe::run(&url, &opts, &progress))
                .map_err(|e| format!("probing cluster {:?}: {e}", c.name))?;
            out.push((*ep, linger_lab::check::UpstreamFacts::from_probe(&report)));
        }
    }
    Ok(out)
}

/// Runs the probe. Exit status 2 when the URL or an option is bad, or the server cannot
/// be reached or does not speak HTTP/1.x; whatever the server does after that is a finding
/// in the report, not a failure.
fn probe(args: ProbeArgs) -> ExitCode {
    use linger_lab::probe::{ProbeOptions, Progress, StderrProgress};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the probe runtime must start");
    let opts = ProbeOptions {
        connections: args.connections as usize,
        max_wait: args.max_wait,
        max_requests: args.max_requests,
        intrusive: args.intrusive,
    };
    let progress = StderrProgress::new();
    let learned = match &args.admin {
        Some(url) => match linger_lab::check::learned::fetch(url, Duration::from_secs(5)) {
            Ok(l) => Some((url.as_str(), l)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    match rt.block_on(linger_lab::probe::run(&args.url, &opts, &progress)) {
        Ok(mut report) => {
            if let Some((url, facts)) = &learned {
                if !report.learned_by_linger(url, facts) {
                    eprintln!(
                        "note: the linger at {url} has no endpoint {}; nothing learned to add",
                        report.address
                    );
                }
            }
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            progress.done();
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
