//! The workers as the kernel and the metrics see them: each pinned to its CPU
//! (`[runtime] pin_workers`), the connections spread evenly over them however the
//! accepts fall, and each one's CPU time counted.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use linger_lab::peers::{KeepAliveClient, Origin, OriginConfig, Outcome};

/// A CPU list as `/proc/*/status` writes it ("0-3,6").
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// `Cpus_allowed_list` of a `/proc/.../status` file.
fn allowed_cpus(status_path: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(status_path).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line");
    parse_cpu_list(line)
}

/// Each `linger-worker-N` thread of `pid` with the CPUs it may run on, by N.
fn worker_cpus_now(pid: u32) -> Vec<(usize, Vec<usize>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(n) = comm.trim().strip_prefix("linger-worker-") {
            let status = dir.join("status");
            out.push((n.parse().unwrap(), allowed_cpus(status.to_str().unwrap())));
        }
    }
    out.sort();
    out
}

/// The workers of `pid` and their CPUs, once they are `want` (each worker pins itself
/// as its thread starts, after linger logs its addresses), or as they are after 10 s.
fn worker_cpus(pid: u32, want: &[(usize, Vec<usize>)]) -> Vec<(usize, Vec<usize>)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = worker_cpus_now(pid);
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts linger with `runtime` as its `[runtime]` table, in front of `origin`, with the
/// admin listener on; returns it with its proxy and admin addresses.
fn spawn(origin: &Origin, runtime: &str, name: &str) -> (support::Running, String, String) {
    let dir = std::env::temp_dir().join(format!("linger-workers-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("linger.toml");
    std::fs::write(
        &conf,
        format!(
            "[admin]\naddress = \"127.0.0.1:0\"\n\n[runtime]\naccess_log = \"off\"\n{runtime}\n\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n\n[[cluster]]\nname = \"origin\"\n\
             endpoints = [\"{}\"]\n",
            origin.addr
        ),
    )
    .unwrap();
    let (child, rx) = support::spawn_serve(&["--config", conf.to_str().unwrap()]);
    let (proxy, admin) = support::addresses(&rx, true);
    (
        support::Running(child),
        proxy,
        admin.expect("the admin address"),
    )
}

/// The value of `name` in an exposition, if present.
fn sample<T: std::str::FromStr>(exposition: &str, name: &str) -> Option<T> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(admin: &str) -> String {
    let mut c = KeepAliveClient::new(admin.parse().unwrap());
    match c
        .request("GET", "/metrics", &[], b"", Duration::from_secs(10))
        .await
    {
        Outcome::Ok(200) => String::from_utf8_lossy(&c.last.unwrap().body).into_owned(),
        other => panic!("GET /metrics: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_pinned_and_connections_spread_evenly_over_them() {
    let origin = Origin::start(OriginConfig::default()).await.unwrap();
    let (child, proxy, admin) = spawn(&origin, "workers = 2\npin_workers = \"on\"", "on");
    let allowed = allowed_cpus("/proc/self/status");
    let want = vec![(0, vec![allowed[0]]), (1, vec![allowed[1 % allowed.len()]])];
    assert_eq!(
        worker_cpus(child.0.id(), &want),
        want,
        "worker i runs on allowed CPU i (of {allowed:?})"
    );

    // A worker takes connections handed to it once it has started (its series appears
    // then): connections accepted before that stay where they were accepted. So both
    // must have started before the burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(&admin).await;
        if (0..2).all(|w| m.contains(&format!("linger_worker_connections_open{{worker=\"{w}\"}}")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workers never both started:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 20 connections at once, each kept open after its answer: however the two workers'
    // accepts fall, each ends up holding about half.
    let addr: std::net::SocketAddr = proxy.parse().unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        set.spawn(async move {
            let mut c = KeepAliveClient::new(addr);
            let a = c
                .request("GET", "/", &[], b"", Duration::from_secs(10))
                .await;
            (c, a)
        });
    }
    let mut clients = Vec::new();
    while let Some(done) = set.join_next().await {
        let (c, a) = done.unwrap();
        assert!(matches!(a, Outcome::Ok(200)), "{a:?}");
        clients.push(c);
    }
    let m = scrape(&admin).await;
    let held = [
        sample::<i64>(&m, "linger_worker_connections_open{worker=\"0\"}").unwrap_or(0),
        sample::<i64>(&m, "linger_worker_connections_open{worker=\"1\"}").unwrap_or(0),
    ];
    assert_eq!(held[0] + held[1], 20, "{held:?}\n{m}");
    assert!(held[0].abs_diff(held[1]) <= 3, "uneven: {held:?}");
    // Each worker served connections, and counted the CPU time it took.
    for w in 0..2 {
        let name = format!("linger_worker_cpu_seconds_total{{worker=\"{w}\"}}");
        let cpu = sample::<f64>(&m, &name).unwrap_or_else(|| panic!("no {name}:\n{m}"));
        assert!(cpu > 0.0, "{name} {cpu}");
    }
    drop(clients);
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_workers_off_leaves_the_workers_to_the_kernel() {
    let origin = Origin::start(OriginConfig::default()).await.unwrap();
    let (child, _, _) = spawn(&origin, "workers = 2\npin_workers = \"off\"", "off");
    let allowed = allowed_cpus("/proc/self/status");
    let want = vec![(0, allowed.clone()), (1, allowed)];
    assert_eq!(worker_cpus(child.0.id(), &want), want);
}
