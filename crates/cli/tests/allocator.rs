//! The allocator's compiled-in options (`.cargo/config.toml` and the `background_threads`
//! feature of `tikv-jemallocator`), read back from jemalloc's own statistics, which it
//! prints on stderr at exit when asked to in the environment.

use std::process::Command;

#[test]
fn freed_pages_go_back_to_the_system_within_a_second_even_when_idle() {
    let out = Command::new(env!("CARGO_BIN_EXE_linger"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("linger --version runs");
    assert!(out.status.success(), "{out:?}");
    let stats = String::from_utf8_lossy(&out.stderr);
    let opt = |name: &str| {
        stats
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("opt.{name}: ")))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    assert_eq!(
        opt("background_thread").as_deref(),
        Some("true"),
        "jemalloc's statistics:\n{stats}"
    );
    assert_eq!(
        opt("dirty_decay_ms").as_deref(),
        Some("1000"),
        "jemalloc's statistics:\n{stats}"
    );
}
