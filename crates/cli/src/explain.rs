//! `linger explain CAPTURE`: reads a packet capture and names the connection-lifecycle
//! races in it, with the evidence and the fix.
//!
//! Exit status: 0 when no finding lost a request, 1 when one did (or, R5 and R7, work went
//! on for a client that had left), 2 when the capture cannot be read.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use linger_explain::{explain_file, Options, Progress};

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// A pcap or pcapng file (tcpdump -w, Wireshark): Ethernet, Linux cooked (tcpdump -i
    /// any), loopback, VLAN; IPv4 and IPv6.
    #[arg(value_name = "CAPTURE")]
    capture: PathBuf,
    /// Only connections from or to this port (repeat for more).
    #[arg(long = "port", value_name = "P")]
    ports: Vec<u16>,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Only packets at or after T seconds from the capture's first packet ("12.5", "1500ms").
    #[arg(long, value_name = "T", value_parser = parse_offset)]
    since: Option<f64>,
    /// Only packets at or before T seconds from the capture's first packet.
    #[arg(long, value_name = "T", value_parser = parse_offset)]
    until: Option<f64>,
}

fn parse_offset(s: &str) -> Result<f64, String> {
    if let Ok(v) = s.parse::<f64>() {
        if v.is_finite() && v >= 0.0 {
            return Ok(v);
        }
        return Err("must be a number of seconds, 0 or more".into());
    }
    linger_proxy::config::ConfigDuration::parse(s).map(|d| d.0.as_secs_f64())
}

pub fn explain(args: ExplainArgs) -> ExitCode {
    let opts = Options {
        ports: args.ports,
        since: args.since,
        until: args.until,
        ..Options::default()
    };
    let tty = std::io::stderr().is_terminal();
    let mut shown = false;
    let mut progress = |p: Progress| {
        shown = true;
        let line = format!(
            "explain: read {} MiB, {} packets, {} connections",
            p.bytes >> 20,
            p.packets,
            p.connections
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    };
    let result = explain_file(&args.capture, &opts, &mut progress);
    if shown && tty {
        eprintln!();
    }
    match result {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
            if report.lost().next().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.capture.display());
            ExitCode::from(2)
        }
    }
}
