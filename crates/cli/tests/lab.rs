//! Every lab scenario, with small counts, against no proxy and the real linger binary:
//! the race must show with no proxy (or the scenario proves nothing), and linger must keep
//! the promise of docs/races.md. Also `linger lab` itself: list, errors, the four-target
//! table and its JSON, and the seed replay.
//!
//! R6 needs network namespaces (root, `ip`, `nft`); without them it says why and passes,
//! unless `LINGER_REQUIRE_NETNS=1`. The four-target run needs nginx and HAProxy when
//! `LINGER_REQUIRE_NGINX=1` and `LINGER_REQUIRE_HAPROXY=1` (set by `.ci/run`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use linger_lab::netns::NetLab;
use linger_lab::report;
use linger_lab::runner::{self, Options, Record, Requests, Status};
use linger_lab::scenarios;
use linger_lab::targets::TargetKind;

const SEED: u64 = 11;

fn linger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_linger"))
}

/// Runs scenario `id` against direct and linger; returns their records.
async fn direct_and_linger(id: &str) -> (Record, Record) {
    let opts = Options {
        scenarios: vec![scenarios::find(id).expect("scenario exists")],
        targets: vec![TargetKind::Direct, TargetKind::Linger],
        requests: Requests::Quick,
        seed: SEED,
        linger_bin: linger_bin(),
        capture: None,
    };
    let report = tokio::time::timeout(Duration::from_secs(120), runner::run(&opts, &|_| {}))
        .await
        .expect("the run must end");
    let mut records = report.records.into_iter();
    let (direct, linger) = (records.next().unwrap(), records.next().unwrap());
    for r in [&direct, &linger] {
        assert_eq!(
            r.status,
            Status::Ran,
            "{id} on {}: {:?}",
            r.target,
            r.status
        );
        assert!(r.measured.sent > 0, "{id} on {}: nothing sent", r.target);
        eprintln!("{id} {}: {}", r.target, serde_json::to_string(r).unwrap());
    }
    (direct, linger)
}

/// The race shows with no proxy, and linger loses nothing (the report's own judgement),
/// and never delivers a request twice.
fn race_shows_and_linger_keeps_the_promise(direct: &Record, linger: &Record) {
    assert!(
        report::lost(direct),
        "{}: the race did not show with no proxy: {direct:#?}",
        direct.scenario
    );
    assert!(
        !report::lost(linger),
        "{}: linger lost: {linger:#?}",
        linger.scenario
    );
    assert_eq!(linger.duplicates, 0, "{}", linger.scenario);
}

fn max_ms(r: &Record) -> f64 {
    let t = r.measured.timing.as_ref().expect("a timed scenario");
    assert_eq!(t.missed, 0, "{}: {t:?}", r.scenario);
    t.max_ms().expect("samples")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_upstream_idle_close() {
    let (direct, linger) = direct_and_linger("R1").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert_eq!(linger.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1b_upstream_late_reset() {
    let (direct, linger) = direct_and_linger("R1b").await;
    assert!(direct.failures > 3, "{direct:#?}");
    // The one request linger can lose is the first POST to meet the reset, before any
    // failed reuse taught it the endpoint's limit.
    assert!(linger.failures <= 1, "{linger:#?}");
    assert_eq!(linger.duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_downstream_idle_close() {
    let (direct, linger) = direct_and_linger("R2").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert_eq!(linger.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_unannounced_close() {
    let (direct, linger) = direct_and_linger("R3").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert_eq!(linger.failures, 0);
    // The client crossed linger's own limit of 1,000 requests per connection: linger
    // closed, announced it, and the client went on without a loss.
    assert!(linger.measured.sent > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_early_response() {
    let (direct, linger) = direct_and_linger("R4").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert!(direct.measured.reset > 0, "{direct:#?}");
    assert_eq!(
        linger.measured.ok, linger.measured.sent,
        "every 413 arrives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_half_close_streaming() {
    let (direct, linger) = direct_and_linger("R5").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert!(direct.measured.streams_open.unwrap() > 0);
    assert_eq!(linger.measured.streams_open, Some(0));
    assert!(max_ms(&linger) < 1000.0, "{linger:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r6_silent_drop() {
    if let Some(why) = NetLab::unavailable() {
        assert!(
            std::env::var("LINGER_REQUIRE_NETNS").as_deref() != Ok("1"),
            "LINGER_REQUIRE_NETNS=1 but network namespaces are unavailable: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let (direct, linger) = direct_and_linger("R6").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert!(direct.measured.timeout > 0, "{direct:#?}");
    assert_eq!(linger.failures, 0);
    // The user timeout (3 s here) plus the retry, within 2 s more.
    assert!(max_ms(&linger) < 5000.0, "{linger:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r7_client_leaves_waiting() {
    let (direct, linger) = direct_and_linger("R7").await;
    // Every client gave up on its slow request: the condition of the race.
    assert_eq!(direct.measured.timeout, direct.measured.sent, "{direct:#?}");
    assert!(!report::lost(&linger), "{linger:#?}");
    assert!(max_ms(&linger) < 1000.0, "{linger:#?}");
    assert_eq!(linger.measured.after_leave_bytes, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_close_delimited() {
    // A cost only a proxy adds: with no proxy there is nothing to show; the run is the
    // reference.
    let (direct, linger) = direct_and_linger("R8").await;
    assert!(!report::lost(&direct), "{direct:#?}");
    assert!(!report::lost(&linger), "{linger:#?}");
    // linger_time is 5 s: a delayed close would show as seconds.
    assert!(max_ms(&linger) < 1000.0, "{linger:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_close_after_response() {
    let (direct, linger) = direct_and_linger("R9").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert_eq!(linger.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r10_drain() {
    let (direct, linger) = direct_and_linger("R10").await;
    race_shows_and_linger_keeps_the_promise(&direct, &linger);
    assert_eq!(linger.failures, 0);
    assert!(
        linger.measured.not_sent.unwrap() > 0,
        "the drain happened while clients were still sending: {linger:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r11_upstream_dies_mid_body() {
    let (direct, linger) = direct_and_linger("R11").await;
    // With no proxy the client sees every cut: the failures are visible.
    assert_eq!(
        direct.measured.truncated, direct.measured.sent,
        "{direct:#?}"
    );
    assert_eq!(direct.measured.looked_complete, Some(0));
    // Through linger too: no cut response looks complete.
    assert_eq!(linger.measured.looked_complete, Some(0), "{linger:#?}");
    assert_eq!(
        linger.measured.truncated, linger.measured.sent,
        "{linger:#?}"
    );
    assert!(!report::lost(&linger));
}

fn lab(args: &[&str]) -> std::process::Output {
    Command::new(linger_bin())
        .arg("lab")
        .args(args)
        .output()
        .expect("linger lab runs")
}

#[test]
fn lab_list_explains_every_scenario() {
    let out = lab(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sc in scenarios::all() {
        assert!(text.contains(sc.id) && text.contains(sc.name), "{}", sc.id);
    }
    assert_eq!(
        text.matches("How: ").count(),
        scenarios::all().len(),
        "{text}"
    );
    assert!(text.contains("(network namespaces: root, ip, nft)"));
}

#[test]
fn lab_run_refuses_unknown_scenarios_and_targets() {
    let out = lab(&["run", "R99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario \"R99\""));
    let out = lab(&["run", "R8", "--target", "linger,envoy"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target \"envoy\""));
}

fn json_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["records"].as_array().unwrap().clone()
}

#[test]
fn the_same_seed_replays_the_same_schedule() {
    let dir = std::env::temp_dir().join(format!("linger-lab-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |seed: &str, file: &str| {
        let path = dir.join(file);
        let out = lab(&[
            "run",
            "R10",
            "--target",
            "direct",
            "--requests",
            "16",
            "--seed",
            seed,
            "--json",
            path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let records = json_records(&path);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["seed"].as_u64(), Some(seed.parse().unwrap()));
        records[0]["schedule"].as_str().unwrap().to_owned()
    };
    let a = run("5", "a.json");
    let b = run("5", "b.json");
    let c = run("6", "c.json");
    assert_eq!(a, b, "the same seed, the same schedule");
    assert_ne!(a, c, "another seed, another schedule");
    // And the run followed it: its fingerprint is the library's for that seed.
    let sc = scenarios::find("R10").unwrap();
    assert_eq!(a, sc.schedule(5, 16).fingerprint());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn four_targets_print_the_table_and_one_json_record_each() {
    let require = |var: &str| std::env::var(var).as_deref() == Ok("1");
    let dir = std::env::temp_dir().join(format!("linger-lab-all-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lab.json");
    let out = lab(&[
        "run",
        "--target",
        "direct,linger,nginx,haproxy",
        "--requests",
        "4",
        "--json",
        path.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for sc in scenarios::all() {
        assert!(text.contains(&format!("{} {}", sc.id, sc.name)), "{text}");
    }
    for t in ["direct", "linger", "nginx", "haproxy"] {
        assert!(text.contains(t), "{text}");
    }
    assert!(text.contains("Who lost requests"), "{text}");
    let records = json_records(&path);
    assert_eq!(
        records.len(),
        scenarios::all().len() * 4,
        "one record per scenario and target"
    );
    for sc in scenarios::all() {
        for t in ["direct", "linger", "nginx", "haproxy"] {
            let r = records
                .iter()
                .find(|r| r["scenario"] == sc.id && r["target"] == t)
                .unwrap_or_else(|| panic!("no record for {} on {t}", sc.id));
            let state = r["status"]["state"].as_str().unwrap();
            let required = match t {
                "nginx" => require("LINGER_REQUIRE_NGINX"),
                "haproxy" => require("LINGER_REQUIRE_HAPROXY"),
                _ => true,
            } && (!sc.netns || require("LINGER_REQUIRE_NETNS"));
            if required {
                assert_eq!(state, "ran", "{} on {t}: {r}", sc.id);
            } else {
                assert_ne!(state, "failed", "{} on {t}: {r}", sc.id);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docs_describe_every_scenario_with_its_promise() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/lab.md");
    let doc = std::fs::read_to_string(path).expect("docs/lab.md");
    for sc in scenarios::all() {
        assert!(
            doc.contains(&format!("### {} `{}`: {}", sc.id, sc.name, sc.title)),
            "docs/lab.md has no section for {}",
            sc.id
        );
        let promise: String = sc.promise.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            doc.contains(&promise),
            "docs/lab.md: {}'s promise differs",
            sc.id
        );
    }
}

#[test]
fn conformance_runs_the_rows_through_each_target_and_writes_the_comparison() {
    let require = |var: &str| std::env::var(var).as_deref() == Ok("1");
    let dir = std::env::temp_dir().join(format!("linger-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("conformance.md");
    // linger's own rows only: the whole corpus is `linger lab conformance` without --source.
    let out = lab(&[
        "conformance",
        "--target",
        "linger,nginx,haproxy",
        "--source",
        "linger",
        "--write",
        path.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = linger_lab::corpus::rows()
        .into_iter()
        .filter(|r| r.source == "linger")
        .count();
    assert!(
        text.contains(&format!("{rows} rows, {rows} pass, 0 fail")),
        "linger must pass every row: {text}"
    );
    let md = std::fs::read_to_string(&path).expect("the comparison is written");
    assert!(
        md.contains("| source | tier | rows | linger 0.1.0 |"),
        "{md}"
    );
    for (name, var) in [
        ("nginx", "LINGER_REQUIRE_NGINX"),
        ("HAProxy", "LINGER_REQUIRE_HAPROXY"),
    ] {
        if require(var) {
            assert!(
                md.contains(&format!(" {name} 1.")) || md.contains(&format!(" {name} 2.")),
                "{name} missing: {md}"
            );
        } else if !md.contains(name) {
            eprintln!("WARNING: {name} is not installed; its column was not checked");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn conformance_names_an_unknown_source() {
    let out = lab(&["conformance", "--target", "linger", "--source", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rows from \"nope\""));
}
