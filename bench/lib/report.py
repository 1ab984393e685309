#!/usr/bin/env python3
"""Aggregate bench results: print tables and write the JSON report."""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys


def load_jsonl(path):
    out = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def cmd_out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def first_line(s):
    return s.splitlines()[0].strip() if s else s


def machine_info(linger_bin, repo):
    info = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            info["cpu_model"] = m.group(1) if m else None
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s+(\d+)", f.read(), re.M)
            info["mem_total_mib"] = int(m.group(1)) // 1024 if m else None
    except OSError:
        pass
    try:
        with open("/etc/debian_version") as f:
            info["debian_version"] = f.read().strip()
    except OSError:
        pass
    info["versions"] = {
        "nginx": first_line(cmd_out(["nginx", "-v"])),
        "haproxy": first_line(cmd_out(["haproxy", "-v"])),
        "wrk": first_line(cmd_out(["wrk", "-v"])),
    }
    if linger_bin:
        info["versions"]["linger"] = first_line(cmd_out([linger_bin, "--version"]))
        info["linger_bin"] = linger_bin
    if repo:
        rev = cmd_out(["git", "-C", repo, "rev-parse", "HEAD"])
        if not re.fullmatch(r"[0-9a-f]{40}", rev):
            rev = "none (no commits yet)"
        dirty = cmd_out(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
        info["linger_git_rev"] = rev
        info["linger_git_dirty"] = bool(dirty.strip())
    return info


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec, width):
    if x is None:
        return f"{'-':>{width}}"
    return f"{x:>{width}{spec}}"


def summarise(runs, targets, workloads=()):
    """Medians per (workload, threads, target); records without a workload are `small`
    (reports written before there were workloads)."""
    groups = {}
    for r in runs:
        groups.setdefault((r.get("workload", "small"), r["threads"], r["target"]), []).append(r)
    order = {t: i for i, t in enumerate(targets)}
    worder = {w: i for i, w in enumerate(workloads)}
    summary = []
    for (wl, thr, tgt) in sorted(groups, key=lambda k: (worder.get(k[0], 99), k[0], k[1], order.get(k[2], 99), k[2])):
        rs = groups[(wl, thr, tgt)]
        good = [r for r in rs if "error" not in r]
        rps = [r["rps"] for r in good]
        s = {
            "workload": wl,
            "target": tgt,
            "threads": thr,
            "rounds": len(rs),
            "rounds_ok": len(good),
            "rps_median": med(rps),
            "rps_min": min(rps) if rps else None,
            "rps_max": max(rps) if rps else None,
            "p50_ms_median": med([r["latency_ms"].get("p50") for r in good]),
            "p90_ms_median": med([r["latency_ms"].get("p90") for r in good]),
            "p99_ms_median": med([r["latency_ms"].get("p99") for r in good]),
            "cpu_cores_median": med([r.get("cpu_cores") for r in good]),
            "rss_peak_mib_max": (max(r["rss_peak_kib"] for r in good) / 1024) if good else None,
            "origin_cpu_cores_median": med([r.get("origin_cpu_cores") for r in good]),
            "wrk_cpu_cores_median": med([r.get("wrk_cpu_cores") for r in good]),
            "other_cpu_cores_max": max((r.get("other_cpu_cores", 0) for r in good), default=None),
            "error_total": sum(r.get("error_total", 0) for r in good),
            "failed_rounds": [r.get("error") for r in rs if "error" in r],
        }
        if s["rps_median"] and s["rps_min"] is not None:
            s["rps_spread_pct"] = 100.0 * (s["rps_max"] - s["rps_min"]) / s["rps_median"]
        summary.append(s)
    for s in summary:
        d = find(summary, s["workload"], s["threads"], "direct")
        if d and d["rps_median"] and s["rps_median"]:
            s["rps_rel_direct"] = s["rps_median"] / d["rps_median"]
    return summary


def find(summary, workload, threads, target):
    return next((x for x in summary if (x["workload"], x["threads"], x["target"]) == (workload, threads, target)),
                None)


def ratio(a, b):
    return a / b if a is not None and b else None


RATIO_KEYS = (("rps", "rps_median"), ("p50", "p50_ms_median"), ("p99", "p99_ms_median"))


def paired(runs, workload, threads, other):
    """linger's round against the other target's round of the same number: the two ran
    within seconds of each other, so a change in the machine's speed between rounds (which
    on a shared machine can exceed the difference between the proxies) moves both. Per
    workload and thread count: the median of the per-round req/s and p99 ratios, and in
    how many rounds linger served at least as many req/s."""
    by = {}
    for r in runs:
        if "error" in r or (r.get("workload", "small"), r["threads"]) != (workload, threads):
            continue
        by.setdefault(r.get("round"), {})[r["target"]] = r
    rps, p99 = [], []
    for pair in by.values():
        a, b = pair.get("linger"), pair.get(other)
        if not a or not b:
            continue
        rps.append(ratio(a["rps"], b.get("rps")))
        p99.append(ratio(a["latency_ms"].get("p99"), b["latency_ms"].get("p99")))
    rps = [x for x in rps if x is not None]
    if not rps:
        return {}
    return {
        f"rps_vs_{other}_paired_median": med(rps),
        f"p99_vs_{other}_paired_median": med(p99),
        f"rounds_ahead_of_{other}": sum(x >= 1 for x in rps),
        "paired_rounds": len(rps),
    }


def ratios(summary, runs=()):
    """linger / HAProxy and linger / nginx per workload and thread count: req/s (above 1:
    linger serves more), p50 and p99 latency (above 1: linger is slower), from the medians
    over rounds; and against HAProxy, the same from rounds paired (see `paired`)."""
    out = []
    for s in summary:
        if s["target"] != "linger":
            continue
        r = {"workload": s["workload"], "threads": s["threads"]}
        for other in ("haproxy", "nginx"):
            o = find(summary, s["workload"], s["threads"], other)
            for name, key in RATIO_KEYS:
                r[f"{name}_vs_{other}"] = ratio(s[key], o[key]) if o else None
        r.update(paired(runs, s["workload"], s["threads"], "haproxy"))
        out.append(r)
    return out


def derive_idle(idle):
    """Per-connection figures of the idle test. For nginx, the preallocation probe (the same
    nginx with few worker_connections) gives the RSS of one preallocated connection slot:
    (RSS before with the configured slots − RSS before with the probe's) / slot difference.
    A held connection occupies one slot, so per_conn_with_prealloc_kib = per_conn_kib + that."""
    for i in idle:
        r = i.get("result") or {}
        i["per_conn_kib"] = r.get("kib_per_conn")
        probe = i.get("prealloc_probe")
        pr = (probe or {}).get("result") or {}
        if probe and pr.get("rss_before_kib") is not None and r.get("rss_before_kib") is not None:
            slots = probe["configured_slots"] - probe["slots"]
            per_slot = (r["rss_before_kib"] - pr["rss_before_kib"]) / slots if slots > 0 else None
            i["prealloc_kib"] = r["rss_before_kib"] - pr["rss_before_kib"]
            i["per_slot_prealloc_kib"] = round(per_slot, 3) if per_slot is not None else None
            if per_slot is not None and i["per_conn_kib"] is not None:
                i["per_conn_with_prealloc_kib"] = round(i["per_conn_kib"] + per_slot, 3)
    return idle


def x(v):
    return f"{v:.2f}x" if v is not None else "-"


def table_head(title, hdr):
    """Print a table's title (one or more lines), its header line and a rule under it."""
    print()
    print(title)
    print(hdr)
    print("-" * len(hdr))


def print_throughput(summary, cfg):
    wls = {w["name"]: w for w in cfg.get("workloads", [])}
    for wl in dict.fromkeys(s["workload"] for s in summary):
        rows = [s for s in summary if s["workload"] == wl]
        w = wls.get(wl, {})
        extra = shlex.join(w.get("wrk_args", []))
        table_head(f"Workload {wl}: {w.get('what', 'GET /')}\n"
                   f"  wrk -t{cfg.get('wrk_threads')} -c{w.get('conns', cfg.get('wrk_conns'))} "
                   f"-d{cfg.get('duration')} --latency{' ' + extra if extra else ''} {w.get('path', '/')}; "
                   f"{cfg.get('rounds')} interleaved round(s); medians over rounds (peak RSS: max over rounds)",
                   f"{'target':<8} {'thr':>3} {'req/s':>10} {'vs direct':>9} {'spread':>7} {'p50 ms':>8} "
                   f"{'p99 ms':>8} {'cpu cores':>9} {'peak RSS MiB':>12} {'errors':>7} {'other cpu':>9}")
        for s in rows:
            rel = f"{100 * s['rps_rel_direct']:.0f}%" if s.get("rps_rel_direct") else "-"
            spread = f"{s['rps_spread_pct']:.1f}%" if s.get("rps_spread_pct") is not None else "-"
            err = s["error_total"] + len(s["failed_rounds"])
            print(f"{s['target']:<8} {s['threads']:>3} {fmt(s['rps_median'], '.0f', 10)} {rel:>9} {spread:>7} "
                  f"{fmt(s['p50_ms_median'], '.3f', 8)} {fmt(s['p99_ms_median'], '.3f', 8)} "
                  f"{fmt(s['cpu_cores_median'], '.2f', 9)} {fmt(s['rss_peak_mib_max'], '.1f', 12)} {err:>7} "
                  f"{fmt(s.get('other_cpu_cores_max'), '.2f', 9)}")
    print("(thr = proxy workers/threads; 'direct' is wrk -> origin nginx with 1 worker, its CPU/RSS are "
          "the origin's; errors = socket errors + non-2xx responses + failed rounds; other cpu = max over "
          "rounds of CPU used by processes outside the benchmark)")


def print_ratios(rs):
    table_head("linger relative to HAProxy and nginx (req/s above 1: linger serves more; p50/p99 above 1: "
               "linger is slower)",
               f"{'workload':<10} {'thr':>3} {'req/s /hap':>10} {'p50 /hap':>8} {'p99 /hap':>8} "
               f"{'req/s /ngx':>10} {'p50 /ngx':>8} {'p99 /ngx':>8}")
    for r in rs:
        print(f"{r['workload']:<10} {r['threads']:>3} {x(r['rps_vs_haproxy']):>10} {x(r['p50_vs_haproxy']):>8} "
              f"{x(r['p99_vs_haproxy']):>8} {x(r['rps_vs_nginx']):>10} {x(r['p50_vs_nginx']):>8} "
              f"{x(r['p99_vs_nginx']):>8}")
    pairs = [r for r in rs if r.get("paired_rounds", 0) > 1]
    if pairs:
        table_head("linger relative to HAProxy, round by round (each round's linger run against the HAProxy "
                   "run of the same round; medians of the per-round ratios)",
                   f"{'workload':<10} {'thr':>3} {'req/s /hap':>10} {'p99 /hap':>8} {'rounds ahead':>12}")
        for r in pairs:
            print(f"{r['workload']:<10} {r['threads']:>3} {x(r['rps_vs_haproxy_paired_median']):>10} "
                  f"{x(r['p99_vs_haproxy_paired_median']):>8} "
                  f"{str(r['rounds_ahead_of_haproxy']) + ' of ' + str(r['paired_rounds']):>12}")


def print_checks(checks):
    sent = next((c["result"]["post"]["bytes_sent"] for c in checks if (c.get("result") or {}).get("post")), "?")
    table_head("Equal-work checks (on the wire, before the measurements): what the origin received through "
               f"each proxy (X-Forwarded-For of a GET; bytes of head and body of a POST with a {sent}-byte body), "
               "and after which response the proxy announced Connection: close and closed a client connection",
               f"{'target':<8} {'thr':>3} {'X-Forwarded-For':>15} {'POST read by origin':>19} "
               f"{'close announced':>15} {'closed after':>12} {'ok':>3}")
    for c in checks:
        r = c.get("result") or {}
        if r.get("error") or not r:
            print(f"{c['target']:<8} {c['threads']:>3} FAILED: {r.get('error', 'no result')}")
            continue
        post = r.get("post", {})
        saw = post.get("origin_saw") or {}
        body = f"{saw.get('request_length')} B" if saw else "-"
        rpc = r.get("requests_per_connection") or {}
        closed = f"{rpc.get('responses')} resp" if rpc.get("closed_by_proxy") else "not closed"
        announced = rpc.get("close_announced_at")
        print(f"{c['target']:<8} {c['threads']:>3} {r.get('x_forwarded_for') or '-':>15} {body:>19} "
              f"{'resp ' + str(announced) if announced else 'never':>15} {closed:>12} "
              f"{'yes' if r.get('ok') else 'NO':>3}")


def print_idle(idle):
    table_head("Idle keep-alive connections (1 worker/thread): RSS of the proxy's process tree",
               f"{'target':<8} {'held':>6} {'closed':>6} {'errors':>6} {'RSS before MiB':>14} "
               f"{'RSS after MiB':>13} {'KiB/conn':>9} {'+prealloc':>9} {'fds after':>9}")
    for i in idle:
        r = i.get("result") or {}
        if not r:
            print(f"{i['target']:<8} FAILED: {i.get('error', '?')}")
            continue
        held = r.get("conns_open", 0) - r.get("closed_by_peer", 0)
        nerr = sum(r.get("errors", {}).values())
        b = r.get("rss_before_kib")
        a = r.get("rss_after_kib")
        print(f"{i['target']:<8} {held:>6} {r.get('closed_by_peer', 0):>6} {nerr:>6} "
              f"{fmt(b / 1024 if b is not None else None, '.1f', 14)} "
              f"{fmt(a / 1024 if a is not None else None, '.1f', 13)} "
              f"{fmt(i.get('per_conn_kib'), '.2f', 9)} {fmt(i.get('per_conn_with_prealloc_kib'), '.2f', 9)} "
              f"{fmt(r.get('fds_after'), 'd', 9)}")
    for i in idle:
        if i.get("per_slot_prealloc_kib") is not None:
            p = i["prealloc_probe"]
            print(f"(+prealloc, {i['target']}: KiB/conn plus the {i['per_slot_prealloc_kib']:.3f} KiB that one of its "
                  f"{p['configured_slots']} preallocated connection slots costs: RSS before with "
                  f"worker_connections {p['configured_slots']} minus with {p['slots']}, "
                  f"{i['prealloc_kib'] / 1024:.1f} MiB, over the difference in slots)")


def print_tables(summary, idle, errors, cfg, rs=(), checks=()):
    if checks:
        print_checks(checks)
    if summary:
        print_throughput(summary, cfg)
        busy = max((s.get("other_cpu_cores_max") or 0) for s in summary)
        if busy >= 0.15:
            print(f"WARNING: other processes used up to {busy:.2f} cores during the measurements; "
                  f"the machine was not quiet, treat these numbers as noise and rerun.")
    if rs:
        print_ratios(rs)
    if idle:
        print_idle(idle)
    if errors:
        print()
        print("Problems:")
        for e in errors:
            print(f"  [{e.get('target')}/{e.get('phase')}] {e.get('message')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs")
    ap.add_argument("--idle")
    ap.add_argument("--checks")
    ap.add_argument("--errors")
    ap.add_argument("--config", help="JSON with the run configuration")
    ap.add_argument("--linger-bin")
    ap.add_argument("--repo")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    cfg = json.loads(a.config) if a.config else {}
    runs = load_jsonl(a.runs)
    idle = derive_idle(load_jsonl(a.idle))
    checks = load_jsonl(a.checks)
    errors = load_jsonl(a.errors)
    summary = summarise(runs, cfg.get("targets", []), [w["name"] for w in cfg.get("workloads", [])])
    rs = ratios(summary, runs)
    report = {
        "machine": machine_info(a.linger_bin, a.repo),
        "config": cfg,
        "summary": summary,
        "ratios": rs,
        "checks": checks,
        "idle": idle,
        "runs": runs,
        "problems": errors,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print_tables(summary, idle, errors, cfg, rs, checks)
    print()
    m = report["machine"]
    print(f"machine: {m['nproc']} cpus, kernel {m['kernel']}; {m['versions'].get('nginx')}; "
          f"{m['versions'].get('haproxy')}; {m['versions'].get('wrk')}")
    if "linger_git_rev" in m:
        print(f"linger: {m['versions'].get('linger', '-')} rev {m['linger_git_rev']}"
              f"{' (dirty)' if m.get('linger_git_dirty') else ''}")
    if cfg.get("pin"):
        print("pinned (--pin): each proxy alone on its cpus, the origin and wrk on the others; "
              "req/s measures the proxy's own cost per request")
    print(f"JSON written to {a.json}")


if __name__ == "__main__":
    sys.exit(main())
