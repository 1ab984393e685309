//! `linger explain` on the lab's own captures: each scenario runs against no proxy, linger,
//! nginx and HAProxy with tcpdump recording (`linger lab run --capture`), and every race
//! that lost requests in the lab's table must be named, with its R number, in that run's
//! capture; linger's clean runs (and every other clean run) must show no finding of a lost
//! request. The R1 run behind nginx is the two-hop case: the idle-close race on the
//! nginx → origin hop, with the origin's measured 2 s idle close and the fix.
//!
//! tcpdump needs root: without it (or without tcpdump) the test says so and passes, unless
//! `LINGER_REQUIRE_TCPDUMP=1` (set by `.ci/run`). nginx, HAProxy and network namespaces are
//! required as in tests/lab.rs (`LINGER_REQUIRE_NGINX`, `LINGER_REQUIRE_HAPROXY`,
//! `LINGER_REQUIRE_NETNS`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use linger_explain::Options;
use linger_lab::runner::{self, Captured, Requests, Status};
use linger_lab::scenarios;
use linger_lab::targets::TargetKind;

/// The scenarios whose races `linger explain` names from the wire (R1b is a second kind of
/// R1). R8 loses nothing anywhere, and a drain (R10) looks on the wire like the idle close
/// it causes. R6 runs in network namespaces (captured in the clients' one); without them
/// its records say why.
const SCENARIOS: [&str; 10] = ["R1", "R1b", "R2", "R3", "R4", "R5", "R6", "R7", "R9", "R11"];

fn require(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

fn linger() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linger"))
}

/// Why captures cannot be made here, if they cannot.
fn cannot_capture() -> Option<String> {
    if let Some(why) = linger_lab::capture::unavailable() {
        return Some(why);
    }
    if !rustix::process::geteuid().is_root() {
        return Some("tcpdump needs root to capture".into());
    }
    None
}

/// An empty directory for captures, or `None` (the test is skipped) when they cannot be
/// made here.
fn capture_dir(name: &str) -> Option<PathBuf> {
    if let Some(why) = cannot_capture() {
        assert!(
            !require("LINGER_REQUIRE_TCPDUMP"),
            "LINGER_REQUIRE_TCPDUMP=1 but captures cannot be made: {why}"
        );
        eprintln!("SKIPPED: {why} (set LINGER_REQUIRE_TCPDUMP=1 to fail instead)");
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_every_race_the_lab_lost_requests_to() {
    let Some(dir) = capture_dir("explain-lab-captures") else {
        return;
    };
    let opts = runner::Options {
        scenarios: SCENARIOS
            .iter()
            .map(|id| scenarios::find(id).expect("scenario exists"))
            .collect(),
        targets: vec![
            TargetKind::Direct,
            TargetKind::Linger,
            TargetKind::Nginx,
            TargetKind::Haproxy,
        ],
        requests: Requests::Quick,
        seed: 1,
        linger_bin: PathBuf::from(env!("CARGO_BIN_EXE_linger")),
        capture: Some(dir.clone()),
    };
    let report = tokio::time::timeout(Duration::from_secs(300), runner::run(&opts, &|_| {}))
        .await
        .expect("the lab run must end");
    let mut named = 0;
    for r in &report.records {
        let what = format!("{} on {}", r.scenario, r.target.name());
        let sc = scenarios::find(r.scenario).unwrap();
        let required = match r.target {
            TargetKind::Nginx => require("LINGER_REQUIRE_NGINX"),
            TargetKind::Haproxy => require("LINGER_REQUIRE_HAPROXY"),
            _ => true,
        } && (!sc.netns || require("LINGER_REQUIRE_NETNS"));
        if r.status != Status::Ran {
            assert!(!required, "{what} did not run: {:?}", r.status);
            eprintln!("{what}: not run ({:?})", r.status);
            continue;
        }
        let path = match &r.capture {
            Some(Captured::File(p)) => p.clone(),
            other => panic!("{what}: no capture: {other:?}"),
        };
        let explained = linger_explain::explain_file(&path, &Options::default(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let lost_in_lab = r.measured.lost(sc.loss, r.duplicates);
        let text = explained.render();
        // The race's number: R1b is R1.
        let race = r
            .scenario
            .trim_end_matches(|c: char| c.is_ascii_lowercase());
        if lost_in_lab {
            assert!(
                explained.lost().any(|f| f.races().any(|id| id == race)),
                "{what} lost requests in the lab, and its capture must name {race} as a loss:\n{text}"
            );
            named += 1;
        }
        if !lost_in_lab {
            // linger's clean runs, and every other target's.
            assert_eq!(
                explained.lost().count(),
                0,
                "{what}: a clean run shows a lost request:\n{text}"
            );
        }
    }
    assert!(named > 0, "no run lost a request: the lab proved nothing");
    // The command line on one of them: the report, and exit status 1 for a loss.
    let direct = dir.join("R1-direct.pcap");
    let out = linger().arg("explain").arg(&direct).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("R1/R2 idle close vs reuse"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// client -> nginx -> origin that closes idle connections at 2 s (nginx's upstream
/// keep-alive is 60 s): R1 on the nginx -> origin hop, with the measured 2 s and the fix.
/// R1's full count, so that nginx reuses connections in the origin's close window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hop_capture_names_r1_on_the_hop_behind_nginx() {
    let Some(dir) = capture_dir("explain-two-hop") else {
        return;
    };
    let opts = runner::Options {
        scenarios: vec![scenarios::find("R1").unwrap()],
        targets: vec![TargetKind::Nginx],
        requests: Requests::Default,
        seed: 1,
        linger_bin: PathBuf::from(env!("CARGO_BIN_EXE_linger")),
        capture: Some(dir.clone()),
    };
    let report = tokio::time::timeout(Duration::from_secs(120), runner::run(&opts, &|_| {}))
        .await
        .expect("the lab run must end");
    let r = &report.records[0];
    if r.status != Status::Ran {
        assert!(
            !require("LINGER_REQUIRE_NGINX"),
            "nginx did not run: {:?}",
            r.status
        );
        eprintln!("SKIPPED: nginx did not run: {:?}", r.status);
        return;
    }
    let Some(Captured::File(path)) = &r.capture else {
        panic!("no capture: {:?}", r.capture);
    };
    let out = linger()
        .arg("explain")
        .arg(path)
        .arg("--json")
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let text = serde_json::to_string_pretty(&json).unwrap();
    let behind = json["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| !h["client_is_proxy_of"].is_null())
        .unwrap_or_else(|| panic!("the nginx -> origin hop: {text}"));
    let origin = behind["server"].as_str().unwrap();
    let f = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["race"] == "R1" && f["server"] == origin)
        .unwrap_or_else(|| panic!("no R1 on the nginx -> origin hop: {text}"));
    let measured = f["peer_idle_close"].as_f64().unwrap();
    assert!(
        (1.95..2.3).contains(&measured),
        "measured {measured}: {text}"
    );
    assert!(f["fix"].as_str().unwrap().contains("below 2."), "{text}");
    assert_eq!(behind["wrong_way"], true, "{text}");
    // Exit status 1 exactly when a request was lost (nginx answers some with 502).
    let lost = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["lost"] == true);
    assert_eq!(out.status.code(), Some(if lost { 1 } else { 0 }), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../explain/tests/fixtures")
        .join(name)
}

#[test]
fn the_exit_status_says_whether_a_request_was_lost() {
    let run = |args: &[&std::ffi::OsStr]| {
        let out = linger().arg("explain").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let r1 = fixture("r1-idle-close-two-hops.pcap");
    let (code, text, _) = run(&[r1.as_os_str()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("R1 idle close vs reuse"), "{text}");
    assert!(text.contains("below 5.000 s"), "{text}");
    // Only the front hop: the race behind the proxy is not in what is read.
    let (code, text, _) = run(&[r1.as_os_str(), "--port".as_ref(), "8080".as_ref()]);
    assert_eq!(code, Some(0), "{text}");
    // A visible cut and ambiguous framing are findings that lost nothing.
    for name in [
        "r11-reset-mid-body.pcap",
        "r12-cl-and-te.pcap",
        "clean.pcap",
    ] {
        let (code, text, _) = run(&[fixture(name).as_os_str()]);
        assert_eq!(code, Some(0), "{name}: {text}");
    }
    let (code, text, _) = run(&[
        fixture("r4-early-response.pcapng").as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["findings"][0]["race"], "R4", "{text}");
    // Every connection is counted, and listed (none past the report's cap).
    assert_eq!(json["connections_seen"], 1, "{text}");
    assert_eq!(
        json["connections"].as_array().map(Vec::len),
        Some(1),
        "{text}"
    );
    assert_eq!(json["connections_left_out"], 0, "{text}");
    assert_eq!(json["most_held"], 1, "{text}");
    // A capture cut short: status 2 and the offset.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explain-cut");
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.pcap");
    let whole = std::fs::read(&r1).unwrap();
    std::fs::write(&cut, &whole[..whole.len() - 5]).unwrap();
    let (code, text, err) = run(&[cut.as_os_str()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.is_empty(), "{text}");
    assert!(
        err.contains("at byte offset") && err.contains("truncated"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
