//! `linger check`: mismatched idle timeouts along the chain are named with their race and
//! make the exit status non-zero; a correct chain passes with 0.

use std::path::PathBuf;
use std::process::Command;

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("linger-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn check(name: &str, text: &str, extra: &[&str]) -> (i32, String) {
    let path = write_config(name, text);
    let out = Command::new(env!("CARGO_BIN_EXE_linger"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run linger check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().expect("exit code"), text)
}

const UPSTREAM_5S_POOL_60S: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[[cluster]]
name = "app"
endpoints = ["127.0.0.1:3000"]
idle_timeout = "60s"
upstream_idle_timeout = "5s"
"#;

#[test]
fn pool_outliving_the_upstream_is_flagged_r1() {
    let (code, out) = check("r1.toml", UPSTREAM_5S_POOL_60S, &["--front-idle", "60s"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("RACE R1  cluster \"app\" pool -> upstream 127.0.0.1:3000"),
        "{out}"
    );
    // 5 s less the 500 ms margin.
    assert!(out.contains("idle_timeout = \"4500ms\""), "the fix: {out}");
    assert!(!out.contains("RACE R2"), "{out}");
}

#[test]
fn downstream_idle_below_the_front_is_flagged_r2() {
    let cfg = r#"
[[listener]]
name = "public"
address = "127.0.0.1:8080"
idle_timeout = "30s"

[[cluster]]
name = "app"
endpoints = ["127.0.0.1:3000"]
upstream_idle_timeout = "5s"
"#;
    let (code, out) = check("r2.toml", cfg, &["--front-idle", "60s"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("RACE R2  load balancer in front -> listener \"public\""),
        "{out}"
    );
    assert!(out.contains("idle_timeout = \"75s\""), "the fix: {out}");
    assert!(!out.contains("RACE R1"), "{out}");
}

#[test]
fn a_correct_chain_passes() {
    let cfg = r#"
[[listener]]
address = "127.0.0.1:8080"

[[cluster]]
name = "app"
endpoints = ["127.0.0.1:3000"]
upstream_idle_timeout = "5s"
"#;
    let (code, out) = check("ok.toml", cfg, &["--front-idle", "60s"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 race(s) possible"), "{out}");
}

#[test]
fn a_response_timeout_beyond_the_front_is_flagged_r7() {
    let cfg = r#"
[[listener]]
address = "127.0.0.1:8080"

[[cluster]]
name = "slow"
endpoints = ["127.0.0.1:3000"]
response_timeout = "90s"
upstream_idle_timeout = "5s"
"#;
    let (code, out) = check("r7.toml", cfg, &["--front-idle", "60s"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("RACE R7"), "{out}");
    assert!(out.contains("response_timeout = \"55s\""), "{out}");
}

#[test]
fn an_invalid_config_exits_2_naming_the_key() {
    let (code, out) = check(
        "bad.toml",
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nupstream_idle_timeout = \"0s\"\n",
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cluster[0].upstream_idle_timeout"), "{out}");
}

#[test]
fn print_config_shows_every_default() {
    let (code, out) = check("print.toml", UPSTREAM_5S_POOL_60S, &["--print-config"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("keep_alive_margin = \"1s\""), "{out}");
}

/// The README's example config, as a newcomer pastes it, is valid and routes a request
/// for any host (not only api.example.com) somewhere.
#[test]
fn the_readme_example_config_is_valid_and_routes_every_host() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("With one (`linger.toml`):\n\n```toml\n")
        .expect("the README has its config example");
    let body = &readme[start..];
    let body = &body[body.find("```toml\n").unwrap() + 8..];
    let toml = &body[..body.find("```").unwrap()];
    let (code, out) = check("readme.toml", toml, &["--front-idle", "60s"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        toml.lines()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "[[route]]" && w[1].starts_with("cluster =")),
        "a route without a host condition catches every other host:\n{toml}"
    );
}
