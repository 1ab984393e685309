//! `linger lab` (list, run, setup) and `linger demo`, a short lab run.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use clap::{Args, Subcommand};
use linger_lab::corpus;
use linger_lab::report;
use linger_lab::runner::{self, Options, Report, Requests, Status};
use linger_lab::scenarios::{self, Scenario};
use linger_lab::targets::{StartError, TargetKind};

#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// List the scenarios: one per race, what happens and why it matters.
    List,
    /// Run scenarios against targets and print who lost requests.
    Run(RunArgs),
    /// Send every row of the conformance corpus (public HTTP/1.1 parsing and smuggling
    /// cases, `crates/lab/corpus/`) through each target to a recording origin, and print
    /// per source and tier how many rows each handled as the row expects.
    Conformance(ConformanceArgs),
    /// Install the other targets (nginx, HAProxy), the tools R6 needs (iproute2,
    /// nftables) and tcpdump (for --capture) from Debian's packages. Needs root.
    Setup,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Scenarios to run, by id (R1) or name (upstream-idle-close); all when none is given.
    #[arg(value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// Targets, comma-separated: direct (no proxy), linger, nginx, haproxy. A target that
    /// is not installed is reported as such.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "direct,linger,nginx,haproxy"
    )]
    target: Vec<String>,
    /// Requests per scenario and target (each scenario has its own default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    requests: Option<u64>,
    /// Seed for every random choice (gaps, methods, sizes, when faults strike); the same
    /// seed replays the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON (one record per scenario and target) to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Record each run's loopback traffic with tcpdump into DIR, one file per scenario and
    /// target (R1-nginx.pcap), for `linger explain`. Needs tcpdump (`linger lab setup`)
    /// and root.
    #[arg(long, value_name = "DIR")]
    capture: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ConformanceArgs {
    /// Targets, comma-separated: linger, nginx, haproxy (direct, no proxy, works too).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "linger,nginx,haproxy"
    )]
    target: Vec<String>,
    /// Only the rows of these sources (comma-separated, as the rows name them:
    /// aws/http-desync-guardian, nodejs/llhttp, uNetworking/h1spec,
    /// narfindustries/http-garden, linger).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    source: Vec<String>,
    /// Also write the comparison as Markdown (the project keeps it as
    /// docs/conformance.md).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Seed for the clients' gaps and choices (the same seed replays the same schedule).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn lab(args: LabArgs) -> ExitCode {
    match args.command {
        LabCommand::List => {
            print!("{}", list());
            ExitCode::SUCCESS
        }
        LabCommand::Run(args) => run(args),
        LabCommand::Conformance(args) => conformance(args),
        LabCommand::Setup => setup(),
    }
}

/// The text of `linger lab list`.
fn list() -> String {
    let mut out = String::new();
    for sc in scenarios::all() {
        out.push_str(&format!(
            "{:<4} {:<24} {}{}\n",
            sc.id,
            sc.name,
            sc.title,
            if sc.netns {
                " (network namespaces: root, ip, nft)"
            } else {
                ""
            }
        ));
        out.push_str(&wrap(sc.about, "     ", 92));
        out.push_str(&wrap(&format!("How: {}", sc.how), "     ", 92));
        out.push_str(&wrap(&format!("linger: {}", sc.promise), "     ", 92));
        out.push('\n');
    }
    out
}

fn wrap(text: &str, indent: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The `--target` list without repeats, and this binary (the `linger` target); on an
/// error, says it and gives exit status 2.
fn targets_and_binary(names: &[String]) -> Result<(Vec<TargetKind>, PathBuf), ExitCode> {
    let mut targets = Vec::new();
    for t in names {
        match TargetKind::parse(t) {
            Ok(k) if !targets.contains(&k) => targets.push(k),
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: --target: {e}");
                return Err(ExitCode::from(2));
            }
        }
    }
    match linger_bin() {
        Ok(b) => Ok((targets, b)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn linger_bin() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the linger binary: {e}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the lab runtime must start")
}

fn progress(line: &str) {
    eprintln!("lab: {line}");
}

fn run(args: RunArgs) -> ExitCode {
    let mut picked: Vec<&'static Scenario> = Vec::new();
    for name in &args.scenarios {
        match scenarios::find(name) {
            Some(sc) if !picked.iter().any(|p| p.id == sc.id) => picked.push(sc),
            Some(_) => {}
            None => {
                eprintln!(
                    "error: unknown scenario {name:?}; `linger lab list` shows them (R1 ... R11)"
                );
                return ExitCode::from(2);
            }
        }
    }
    if picked.is_empty() {
        picked = scenarios::all().to_vec();
    }
    let (targets, linger_bin) = match targets_and_binary(&args.target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let opts = Options {
        scenarios: picked,
        targets,
        requests: args
            .requests
            .map_or(Requests::Default, |n| Requests::Exactly(n as usize)),
        seed: args.seed,
        linger_bin,
        capture: args.capture.clone(),
    };
    if let Some(dir) = &args.capture {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
        if let Some(why) = linger_lab::capture::unavailable() {
            eprintln!("error: --capture: {why}");
            return ExitCode::from(2);
        }
    }
    println!(
        "linger lab: {} scenario(s) x {} target(s), seed {}\n",
        opts.scenarios.len(),
        opts.targets.len(),
        opts.seed
    );
    let report = runtime().block_on(runner::run(&opts, &progress));
    print!("{}", report::render(&report));
    if args.capture.is_some() {
        println!("\nCaptures (linger explain FILE):");
        for r in &report.records {
            match &r.capture {
                Some(runner::Captured::File(p)) => println!("  {}", p.display()),
                Some(runner::Captured::Skipped(why)) => {
                    println!("  {} {}: {why}", r.scenario, r.target.name())
                }
                None => {}
            }
        }
    }
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report::to_json(&report)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("lab: JSON report in {}", path.display());
    }
    exit_status(&report)
}

/// `linger lab conformance`: exits 1 when linger misses a row or a target that is
/// installed fails to run; what the other proxies miss is a finding, not a failure.
fn conformance(args: ConformanceArgs) -> ExitCode {
    let (targets, linger_bin) = match targets_and_binary(&args.target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut rows = corpus::rows();
    if !args.source.is_empty() {
        for s in &args.source {
            if !rows.iter().any(|r| &r.source == s) {
                eprintln!("error: --source: no rows from {s:?}");
                return ExitCode::from(2);
            }
        }
        rows.retain(|r| args.source.contains(&r.source));
    }
    println!(
        "linger lab conformance: {} rows x {} target(s)\n",
        rows.len(),
        targets.len()
    );
    let rt = runtime();
    let mut results = Vec::new();
    let mut failed = false;
    for kind in targets {
        let name = target_version(kind);
        match rt.block_on(corpus::run_target(
            kind,
            linger_bin.clone(),
            &rows,
            &progress,
        )) {
            Ok(r) => {
                println!("== {name}");
                print!("{}", corpus::summary(&r));
                println!();
                if kind == TargetKind::Linger && r.iter().any(|(_, v)| !v.pass) {
                    for (row, v) in r.iter().filter(|(_, v)| !v.pass) {
                        eprintln!(
                            "linger misses {}: {}",
                            row.label(),
                            v.why.as_deref().unwrap_or("")
                        );
                    }
                    failed = true;
                }
                results.push((name, r));
            }
            Err(StartError::NotInstalled(why)) => println!("== {name}: not installed: {why}\n"),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed = true;
            }
        }
    }
    if let Some(path) = &args.write {
        let sources = if args.source.is_empty() {
            String::new()
        } else {
            format!(" --source {}", args.source.join(","))
        };
        let command = format!(
            "linger lab conformance --target {}{sources} --write {}",
            args.target.join(","),
            path.display()
        );
        let md = corpus::markdown(&results, &command, &today());
        if let Err(e) = std::fs::write(path, md) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("lab: the comparison is in {}", path.display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `nginx 1.22.1`, `HAProxy 2.6.12`, `linger 0.1.0`: what each target reports of itself.
fn target_version(kind: TargetKind) -> String {
    let probe = |prog: &str, arg: &str, prefix: &str| -> Option<String> {
        let out = Command::new(prog)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let at = text.find(prefix)? + prefix.len();
        let version: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        (!version.is_empty()).then_some(version)
    };
    match kind {
        TargetKind::Linger => format!("linger {}", env!("CARGO_PKG_VERSION")),
        TargetKind::Nginx => {
            probe("nginx", "-v", "nginx/").map_or_else(|| "nginx".into(), |v| format!("nginx {v}"))
        }
        TargetKind::Haproxy => probe("haproxy", "-v", "version ")
            .map_or_else(|| "HAProxy".into(), |v| format!("HAProxy {v}")),
        TargetKind::Direct => "direct (no proxy)".into(),
    }
}

/// Now, as an HTTP date (`Fri, 04 Dec 2026 19:10:00 GMT`).
fn today() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// 1 when a run failed (the lab could not do its job), else 0: losses are findings.
fn exit_status(report: &Report) -> ExitCode {
    let failed: Vec<String> = report
        .records
        .iter()
        .filter_map(|r| match &r.status {
            Status::Failed(why) => Some(format!("{} on {}: {why}", r.scenario, r.target)),
            _ => None,
        })
        .collect();
    for f in &failed {
        eprintln!("error: {f}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The setup script, the same file CI runs.
const SETUP_SCRIPT: &str = include_str!("../../../scripts/lab-setup.sh");

fn setup() -> ExitCode {
    let status = Command::new("bash")
        .arg("-c")
        .arg(SETUP_SCRIPT)
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: cannot run bash: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn demo(args: DemoArgs) -> ExitCode {
    let linger_bin = match linger_bin() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = linger_lab::demo::options(linger_bin, args.seed);
    println!(
        "linger demo: a short run of the race lab (`linger lab run` runs all {} races\n\
         against nginx and HAProxy too). Each scenario sends the same seeded traffic\n\
         straight to a misbehaving origin, and through linger. Seed {}.\n",
        scenarios::all().len(),
        args.seed
    );
    for sc in &opts.scenarios {
        println!("{} {}", sc.id, sc.title);
        print!("{}", wrap(sc.how, "    ", 88));
    }
    println!();
    let report = runtime().block_on(runner::run(&opts, &progress));
    print!("{}", report::render(&report));
    let lost = |t: TargetKind| -> u64 {
        report
            .records
            .iter()
            .filter(|r| r.target == t)
            .map(|r| r.failures)
            .sum()
    };
    let sent = |t: TargetKind| -> u64 {
        report
            .records
            .iter()
            .filter(|r| r.target == t)
            .map(|r| r.measured.sent)
            .sum()
    };
    println!(
        "\ndirect lost {} of {} requests; linger lost {} of {}.",
        lost(TargetKind::Direct),
        sent(TargetKind::Direct),
        lost(TargetKind::Linger),
        sent(TargetKind::Linger)
    );
    let broken = report
        .records
        .iter()
        .any(|r| r.target == TargetKind::Linger && report::lost(r));
    if broken {
        ExitCode::FAILURE
    } else {
        exit_status(&report)
    }
}
