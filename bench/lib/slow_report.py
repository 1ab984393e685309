#!/usr/bin/env python3
"""bench/slow.sh helpers: per-run metadata and the final report.

  slow_report.py set FILE KEY VALUE
        set KEY in the JSON object stored in FILE; VALUE is taken as JSON when
        it parses as JSON, else as a string.

  slow_report.py report --work DIR --p1 LIST --p2 LIST --errors FILE
                        --config JSON --json OUT [--repo DIR] [--linger-bin BIN]
        read every run directory DIR/p1-TARGET and DIR/p2-TARGET (meta.json,
        baseline.jsonl / attack.jsonl from measure_wrk.py, slowhttptest's
        sx.csv and sx.log, conns.json from slow_conns.py, strace.txt), write
        the JSON report and print Markdown tables. Exit 1 if there are
        problems (from --errors or found here), else 0.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report as base_report  # noqa: E402  (run.sh's report: machine_info)

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def load_first_jsonl(path):
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    return json.loads(line)
    except (OSError, ValueError):
        pass
    return None


def cmd_cpu(a):
    """CPU seconds (utime+stime+cutime+cstime) of the given PIDs, summed; gone PIDs count 0."""
    ticks = 0
    for pid in a.pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in rest[11:15])
        except (OSError, IndexError, ValueError):
            pass
    print(f"{ticks / os.sysconf('SC_CLK_TCK'):.2f}")
    return 0


def cmd_set(a):
    obj = load_json(a.file, {}) or {}
    try:
        val = json.loads(a.value)
    except ValueError:
        val = a.value
    obj[a.key] = val
    tmp = a.file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, a.file)
    return 0


# ------------------------------------------------------------ parsing ------

def parse_sx(run_dir, meta, wrk_round=2):
    """slowhttptest's CSV (one row per second) and the end of its log."""
    res = {"cmd": meta.get("slowhttptest_cmd")}
    rows = []
    try:
        with open(os.path.join(run_dir, "sx.csv")) as f:
            header = f.readline()
            for line in f:
                parts = line.strip().split(",")
                if len(parts) < 5:
                    continue
                try:
                    sec, closed, pending, connected, avail = (int(x) for x in parts[:5])
                except ValueError:
                    continue
                rows.append({"s": sec, "closed": closed, "pending": pending,
                             "connected": connected, "service_available": avail > 0})
        res["csv_header"] = header.strip()
    except OSError:
        res["error"] = "no sx.csv (slowhttptest did not write its statistics)"
    res["rows"] = rows
    if rows:
        res["connected_max"] = max(r["connected"] for r in rows)
        res["closed_max"] = max(r["closed"] for r in rows)
        res["last"] = rows[-1]
        res["service_unavailable_seconds"] = sum(1 for r in rows if not r["service_available"])
    sx0 = meta.get("sx_start")
    ws, we = meta.get(f"wrk_r{wrk_round}_start"), meta.get(f"wrk_r{wrk_round}_end")
    if rows and sx0 and ws and we:
        lo, hi = ws - sx0, we - sx0
        win = [r for r in rows if lo - 0.5 <= r["s"] <= hi + 0.5]
        res["wrk_window_s"] = [round(lo, 1), round(hi, 1)]
        if win:
            res["connected_during_wrk_min"] = min(r["connected"] for r in win)
            res["connected_during_wrk_max"] = max(r["connected"] for r in win)
            res["closed_during_wrk_max"] = max(r["closed"] for r in win)
            res["service_available_during_wrk"] = all(r["service_available"] for r in win)
    try:
        with open(os.path.join(run_dir, "sx.log"), errors="replace") as f:
            log = ANSI.sub("", f.read())
        m = re.findall(r"Exit status:\s*(.+)", log)
        if m:
            res["exit_status"] = m[-1].strip()
        m = re.findall(r"Test ended on (\d+)\w* second", log)
        if m:
            res["ended_on_second"] = int(m[-1])
        errs = re.findall(r"^error:\s+(\d+)", log, re.M)
        if errs:
            res["error_last_status"] = int(errs[-1])
    except OSError:
        pass
    return res


def conns_in_window(conns, meta, wrk_round=2):
    """Max of the ss samples taken while wrk ran (sampler started with slowhttptest)."""
    if not conns or not conns.get("samples"):
        return {}
    sx0 = meta.get("sx_start")
    ws, we = meta.get(f"wrk_r{wrk_round}_start"), meta.get(f"wrk_r{wrk_round}_end")
    if not (sx0 and ws and we):
        return {}
    lo, hi = ws - sx0, we - sx0
    win = [s for s in conns["samples"] if lo <= s["t"] <= hi and s["clients"] is not None]
    if not win:
        return {}
    return {"clients_during_wrk_max": max(s["clients"] for s in win),
            "clients_during_wrk_min": min(s["clients"] for s in win),
            "origin_during_wrk_max": max(s["origin"] for s in win)}


STRACE_ROW = re.compile(r"^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(?:(\d+)\s+)?(\S+)\s*$")


def parse_strace(path):
    try:
        with open(path) as f:
            raw = f.read()
    except OSError:
        return None
    rows, total = [], None
    for line in raw.splitlines():
        m = STRACE_ROW.match(line)
        if not m:
            continue
        row = {"pct_time": float(m.group(1)), "seconds": float(m.group(2)),
               "usecs_per_call": int(m.group(3)), "calls": int(m.group(4)),
               "errors": int(m.group(5) or 0), "syscall": m.group(6)}
        if row["syscall"] == "total":
            total = row
        else:
            rows.append(row)
    rows.sort(key=lambda r: -r["calls"])
    return {"syscalls": rows, "total": total, "raw": raw}


def wrk_summary(rec, meta=None):
    """The figures of one measure_wrk.py record. During an attack, slowhttptest and
    the ss sampler are not among the processes measure_wrk.py knows, so their CPU
    (measured by slow.sh around the wrk run) is taken out of other_cpu_cores."""
    if not rec:
        return None
    lat = rec.get("latency_ms", {})
    other = rec.get("other_cpu_cores")
    helpers = None
    wall = rec.get("wall_s")
    if meta and rec.get("round") is not None and wall:
        h = meta.get(f"helpers_cpu_s_r{rec['round']}")
        if h is not None:
            helpers = round(h / wall, 3)
            if other is not None:
                other = round(max(0.0, other - helpers), 3)
    return {
        "rps": rec.get("rps"), "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
        "cpu_cores": rec.get("cpu_cores"), "origin_cpu_cores": rec.get("origin_cpu_cores"),
        "rss_peak_kib": rec.get("rss_peak_kib"), "tcp_mem_peak_kib": rec.get("tcp_mem_peak_kib"),
        "errors": rec.get("errors"),
        "error_total": rec.get("error_total"), "error": rec.get("error"),
        "other_cpu_cores": other, "attack_tools_cpu_cores": helpers,
        "wrk_cpu_cores": rec.get("wrk_cpu_cores"), "wrk_cmd": rec.get("wrk_cmd"),
    }


def linger_bin_age(linger_bin, repo, machine):
    """Record the binary's build time; warn when commits came after it, since
    the git revision in `machine` is the tree's, not necessarily the binary's."""
    if not linger_bin or not repo:
        return None
    try:
        mtime = int(os.stat(linger_bin).st_mtime)
    except OSError:
        return None
    machine["linger_bin_mtime_utc"] = datetime.datetime.fromtimestamp(
        mtime, datetime.timezone.utc).isoformat(timespec="seconds")
    newer = base_report.cmd_out(["git", "-C", repo, "log", "--format=%h %s", f"--since=@{mtime + 1}"])
    if not newer or "fatal" in newer or "unavailable" in newer:
        return None
    newer = [line for line in newer.splitlines() if line.strip()]
    built_from = base_report.cmd_out(["git", "-C", repo, "log", "-1", "--format=%h %s", f"--until=@{mtime}"])
    machine["linger_bin_commits_after_build"] = newer
    machine["linger_bin_probably_built_from"] = built_from
    return (f"the linger binary ({linger_bin}, modified {machine['linger_bin_mtime_utc']}) is older than "
            f"{len(newer)} commit(s) of the tree (the oldest: {newer[-1]}); it was probably built from "
            f"{built_from or 'an older commit'}, so linger_git_rev does not describe it")


# ------------------------------------------------------------- report ------

def fmt(v, spec):
    if v is None:
        return "—"
    return format(v, spec)


def rng(lo, hi):
    if lo is None or hi is None:
        return "—"
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def cmd_report(a):
    cfg = json.loads(a.config)
    problems = []
    if os.path.exists(a.errors):
        with open(a.errors) as f:
            problems = [json.loads(line) for line in f if line.strip()]
    conns_target = cfg.get("slowhttptest_conns", 1000)
    notes = []

    def find(tgt, ph, msg):
        problems.append({"target": tgt, "phase": ph, "message": msg, "found_by": "report"})

    phase1 = {}
    for t in [x for x in a.p1.split(",") if x]:
        d = os.path.join(a.work, f"p1-{t}")
        meta = load_json(os.path.join(d, "meta.json"), {}) or {}
        r = {"meta": meta}
        if meta.get("error"):
            r["error"] = meta["error"]
            phase1[t] = r
            continue
        r["baseline"] = wrk_summary(load_first_jsonl(os.path.join(d, "baseline.jsonl")), meta)
        r["attack"] = wrk_summary(load_first_jsonl(os.path.join(d, "attack.jsonl")), meta)
        r["baseline_raw"] = load_first_jsonl(os.path.join(d, "baseline.jsonl"))
        r["attack_raw"] = load_first_jsonl(os.path.join(d, "attack.jsonl"))
        r["slowhttptest"] = parse_sx(d, meta)
        conns = load_json(os.path.join(d, "conns.json"))
        r["conns"] = conns
        r["conns_during_wrk"] = conns_in_window(conns, meta)
        st = parse_strace(os.path.join(d, "strace.txt"))
        if st is not None:
            st["cmd"] = meta.get("strace_cmd")
            r["strace"] = st
        phase1[t] = r
        for k in ("baseline", "attack"):
            w = r[k]
            if w is None:
                find(t, "phase1", f"no {k} wrk result")
            elif w.get("error"):
                find(t, "phase1", f"{k} wrk: {w['error'][:200]}")
            elif w.get("error_total"):
                find(t, "phase1", f"{k} wrk reported errors: {w['errors']}")
        sx = r["slowhttptest"]
        cm = sx.get("connected_max")
        if cm is None:
            find(t, "phase1", "slowhttptest reported no connection counts")
        elif cm < 0.9 * conns_target:
            find(t, "phase1", f"slowhttptest held at most {cm} of {conns_target} connections")
        ramp = meta.get("ramp") or {}
        if ramp and not ramp.get("reached"):
            notes.append(f"phase 1 {t}: the proxy held {ramp.get('count')} client connections, not "
                         f"{conns_target}, when wrk started ({cfg.get('ramp_max_s')} s after slowhttptest)")
        if sx0 := meta.get("sx_start"):
            if meta.get("wrk_r2_start"):
                r["wrk_started_after_s"] = round(meta["wrk_r2_start"] - sx0, 1)
        cw = sx.get("connected_during_wrk_min")
        if cw is not None and cm is not None and cw < 0.9 * conns_target <= cm:
            notes.append(f"phase 1 {t}: slowhttptest's connected count fell to {cw} during the wrk run")
        if sx.get("service_available_during_wrk") is False:
            notes.append(f"phase 1 {t}: slowhttptest's probe found the service unavailable during the wrk run")

    phase2 = {}
    for t in [x for x in a.p2.split(",") if x]:
        d = os.path.join(a.work, f"p2-{t}")
        meta = load_json(os.path.join(d, "meta.json"), {}) or {}
        r = {"meta": meta}
        if meta.get("error"):
            r["error"] = meta["error"]
            phase2[t] = r
            continue
        r["attack"] = wrk_summary(load_first_jsonl(os.path.join(d, "attack.jsonl")), meta)
        r["attack_raw"] = load_first_jsonl(os.path.join(d, "attack.jsonl"))
        r["slowhttptest"] = parse_sx(d, meta)
        conns = load_json(os.path.join(d, "conns.json"))
        r["conns"] = conns
        if conns:
            r["origin_conns_max"] = conns.get("origin_max")
            r["origin_conns_last"] = conns.get("origin_last")
            r["client_conns_max"] = conns.get("clients_max")
            r["client_conns_last"] = conns.get("clients_last")
            if conns.get("error"):
                find(t, "phase2", f"ss sampling: {conns['error']}")
        else:
            find(t, "phase2", "no connection samples (conns.json missing)")
        r["origin_conns_before"] = meta.get("origin_conns_before")
        phase2[t] = r
        w = r["attack"]
        if w is None:
            find(t, "phase2", "no wrk result")
        elif w.get("error"):
            find(t, "phase2", f"wrk: {w['error'][:200]}")
        elif w.get("error_total"):
            find(t, "phase2", f"wrk reported errors: {w['errors']}")
        cm = r["slowhttptest"].get("connected_max")
        if cm is None:
            find(t, "phase2", "slowhttptest reported no connection counts")
        elif cm < 0.9 * conns_target:
            find(t, "phase2", f"slowhttptest held at most {cm} of {conns_target} connections")

    for ph, runs in (("phase 1", phase1), ("phase 2", phase2)):
        for t, r in runs.items():
            for k in ("baseline", "attack"):
                oc = (r.get(k) or {}).get("other_cpu_cores")
                if oc is not None and oc >= 0.15:
                    notes.append(f"WARNING {ph} {t} {k}: processes outside the benchmark used {oc:.2f} cores "
                                 f"during the wrk run; that row is noise")

    machine = base_report.machine_info(a.linger_bin, a.repo)
    sx_ver = base_report.cmd_out(["slowhttptest", "-h"])
    m = re.search(r"version\s+(\S+)", sx_ver)
    machine["versions"]["slowhttptest"] = m.group(1) if m else None
    machine["versions"]["strace"] = base_report.first_line(base_report.cmd_out(["strace", "-V"]))
    stale = linger_bin_age(a.linger_bin, a.repo, machine)
    if stale:
        notes.append(stale)

    out = {
        "machine": machine,
        "config": cfg,
        "commands": {
            "wrk": cfg.get("wrk_cmd"),
            "slow_read": cfg.get("slow_read_cmd"),
            "slow_body": cfg.get("slow_body_cmd"),
            "strace": "strace -c -f -p LINGER_PID -o DIR/strace.txt  (for %s s after the wrk run under attack, then SIGINT)"
                      % cfg.get("strace_s"),
            "origin_conns": 'ss -Htn state established "( dport = :ORIGIN_PORT )" | wc -l  (every second)',
        },
        "phase1": phase1,
        "phase2": phase2,
        "notes": notes,
        "problems": problems,
    }
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    # ------------------------------------------------------- markdown -----
    p = print
    p()
    p(f"<!-- wrk (baseline and under attack): {cfg.get('wrk_cmd')} -->")
    p(f"<!-- phase 1 attack: {cfg.get('slow_read_cmd')} ; wrk starts {cfg.get('ramp_s')} s after it, or later (up to {cfg.get('ramp_max_s')} s) until the proxy holds every slow connection -->")
    p(f"<!-- phase 2 attack: {cfg.get('slow_body_cmd')} ; origin connections counted every 1 s for "
      f"{cfg.get('sample_s')} s with: ss -Htn state established \"( dport = :ORIGIN_PORT )\"; "
      f"wrk starts {cfg.get('p2_wrk_at_s')} s after it -->")
    p(f"<!-- {machine.get('date_utc')}, {machine.get('nproc')} cores, linger {machine.get('linger_git_rev', '')[:12]}"
      f"{' (dirty)' if machine.get('linger_git_dirty') else ''}; run took {cfg.get('elapsed_s')} s -->")
    if phase1:
        p()
        p(f"Phase 1: slow readers ({conns_target} × GET /1m read slowly); legitimate client: the wrk above on /small")
        p()
        p("| target | base req/s | base p50 ms | base p99 ms | attack req/s | attack p50 ms | attack p99 ms "
          "| proxy CPU cores | proxy RSS MiB | kernel TCP buffers MiB | slow conns (sx) | clients (ss) "
          "| origin conns (ss) | wrk errors |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t, r in phase1.items():
            if r.get("error"):
                p(f"| {t} | {r['error']} |" + " |" * 13)
                continue
            b, at = r.get("baseline") or {}, r.get("attack") or {}
            sx, cw = r["slowhttptest"], r.get("conns_during_wrk", {})
            errs = (b.get("error_total") or 0) + (at.get("error_total") or 0)
            if b.get("error") or at.get("error"):
                errs = "failed"
            rss = at.get("rss_peak_kib")
            kmem = at.get("tcp_mem_peak_kib")
            p(f"| {t} | {fmt(b.get('rps'), '.0f')} | {fmt(b.get('p50_ms'), '.3f')} | {fmt(b.get('p99_ms'), '.3f')} "
              f"| {fmt(at.get('rps'), '.0f')} | {fmt(at.get('p50_ms'), '.3f')} | {fmt(at.get('p99_ms'), '.3f')} "
              f"| {fmt(at.get('cpu_cores'), '.2f')} | {fmt(rss / 1024 if rss else None, '.1f')} "
              f"| {fmt(kmem / 1024 if kmem else None, '.1f')} "
              f"| {rng(sx.get('connected_during_wrk_min'), sx.get('connected_during_wrk_max'))} "
              f"| {rng(cw.get('clients_during_wrk_min'), cw.get('clients_during_wrk_max'))} "
              f"| {fmt(cw.get('origin_during_wrk_max'), 'd')} | {errs} |")
        for t, r in phase1.items():
            st = r.get("strace")
            if st and st.get("syscalls"):
                top = ", ".join(f"{s['syscall']} {s['calls']}" + (f" ({s['errors']} err)" if s["errors"] else "")
                                for s in st["syscalls"][:8])
                tot = st.get("total") or {}
                p()
                p(f"strace -c -f on {t} under attack, {cfg.get('strace_s')} s: {tot.get('calls', '?')} syscalls; "
                  f"most called: {top}")
    if phase2:
        p()
        p(f"Phase 2: slow bodies ({conns_target} × POST {cfg.get('body_path')}, Content-Length 8192, body trickled)")
        p()
        p("| target | origin conns max | origin conns last | clients (ss) max | slow conns (sx) max "
          "| attack req/s | attack p99 ms | proxy CPU cores | wrk errors |")
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t, r in phase2.items():
            if r.get("error"):
                p(f"| {t} | {r['error']} |" + " |" * 8)
                continue
            at = r.get("attack") or {}
            errs = "failed" if at.get("error") else (at.get("error_total") or 0)
            p(f"| {t} | {fmt(r.get('origin_conns_max'), 'd')} | {fmt(r.get('origin_conns_last'), 'd')} "
              f"| {fmt(r.get('client_conns_max'), 'd')} | {fmt(r['slowhttptest'].get('connected_max'), 'd')} "
              f"| {fmt(at.get('rps'), '.0f')} | {fmt(at.get('p99_ms'), '.3f')} | {fmt(at.get('cpu_cores'), '.2f')} | {errs} |")
    if notes:
        p()
        p("Notes:")
        for n in notes:
            p(f"- {n}")
    if problems:
        p()
        p("Problems:")
        for e in problems:
            p(f"- [{e['target']}/{e['phase']}] {e['message']}")
    p()
    p(f"JSON: {a.json}")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("set")
    s.add_argument("file")
    s.add_argument("key")
    s.add_argument("value")
    c = sub.add_parser("cpu")
    c.add_argument("pids", type=int, nargs="+")
    r = sub.add_parser("report")
    r.add_argument("--work", required=True)
    r.add_argument("--p1", default="")
    r.add_argument("--p2", default="")
    r.add_argument("--errors", required=True)
    r.add_argument("--config", required=True)
    r.add_argument("--json", required=True)
    r.add_argument("--repo")
    r.add_argument("--linger-bin")
    a = ap.parse_args()
    if a.cmd == "cpu":
        return cmd_cpu(a)
    return cmd_set(a) if a.cmd == "set" else cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
