#!/usr/bin/env python3
"""Run one wrk measurement against a target while sampling the target's
process tree (CPU via utime+stime deltas, RSS every 0.5 s), then append one
JSON record to --out and print a one-line summary.
"""
import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proctree  # noqa: E402

TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def to_ms(value: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", value.strip())
    if not m:
        raise ValueError(f"cannot parse wrk time {value!r}")
    return round(float(m.group(1)) * TIME_UNITS_MS[m.group(2)], 6)


def to_bytes(value: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([KMGT]?B)", value.strip())
    if not m:
        raise ValueError(f"cannot parse wrk size {value!r}")
    return float(m.group(1)) * SIZE_UNITS[m.group(2)]


def proc_stat_ticks() -> dict:
    """Machine-wide CPU ticks from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"task": user + nice + system + steal, "irq": irq + softirq,
            "busy": user + nice + system + steal + irq + softirq}


def tcp_mem_kib() -> int:
    """KiB the kernel holds in TCP socket buffers, machine-wide (/proc/net/sockstat's
    "TCP: ... mem N", in pages): what a process's RSS leaves out, such as the queue of
    unsent bytes that a slow reader's connection holds."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rusage_s(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def parse_wrk(out: str) -> dict:
    r: dict = {"latency_ms": {}}
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.M)
    if not m:
        raise ValueError("wrk output has no Requests/sec line")
    r["rps"] = float(m.group(1))
    m = re.search(r"^Transfer/sec:\s+(\S+)", out, re.M)
    if m:
        r["transfer_bytes_per_sec"] = to_bytes(m.group(1))
    m = re.search(r"^\s+(\d+) requests in ([0-9.]+\w+), (\S+) read", out, re.M)
    if m:
        r["requests"] = int(m.group(1))
        r["wrk_duration_s"] = to_ms(m.group(2)) / 1e3
        r["bytes_read"] = to_bytes(m.group(3))
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        r["latency_ms"]["avg"] = to_ms(m.group(1))
        r["latency_ms"]["stdev"] = to_ms(m.group(2))
        r["latency_ms"]["max"] = to_ms(m.group(3))
    # wrk pads a value in seconds ("1.33s ") with a trailing space, not one in ms or us
    dist = re.search(r"Latency Distribution\n((?:[ \t]+\d+%[ \t]+\S+[ \t]*\n)+)", out)
    if not dist:
        raise ValueError("wrk output has no Latency Distribution (was --latency passed?)")
    for pct, val in re.findall(r"(\d+)%\s+(\S+)", dist.group(1)):
        r["latency_ms"][f"p{pct}"] = to_ms(val)
    errs = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs = dict(zip(errs, map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs["non_2xx_3xx"] = int(m.group(1)) if m else 0
    r["errors"] = errs
    r["error_total"] = sum(errs.values())
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--workload", default="small", help="workload name, recorded as is")
    ap.add_argument("--threads", type=int, required=True, help="proxy worker/thread count")
    ap.add_argument("--round", type=int, default=0)
    ap.add_argument("--url", required=True)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--wrk-arg", action="append", default=[],
                    help="extra wrk argument, e.g. --wrk-arg=-s --wrk-arg=post.lua (repeatable)")
    ap.add_argument("--pid", type=int, action="append", required=True,
                    help="root PID of the target's process tree (repeatable)")
    ap.add_argument("--origin-pid", type=int)
    ap.add_argument("--out", help="append the JSON record to this file")
    ap.add_argument("--raw-dir", help="save raw wrk output here")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()

    cmd = ["wrk", f"-t{a.wrk_threads}", f"-c{a.conns}", f"-d{a.duration}", "--latency", *a.wrk_arg, a.url]
    origin = [a.origin_pid] if a.origin_pid else []

    rss_peak = 0
    origin_rss_peak = 0
    tcp_mem_peak = tcp_mem_kib()
    samples = 0
    cpu0 = proctree.cpu_snapshot(a.pid)
    ocpu0 = proctree.cpu_snapshot(origin) if origin else {}
    rss_start = proctree.tree_rss_kib(a.pid)
    st0 = proc_stat_ticks()
    ch0 = rusage_s(resource.RUSAGE_CHILDREN)
    self0 = rusage_s(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            rss_peak = max(rss_peak, proctree.tree_rss_kib(a.pid))
            tcp_mem_peak = max(tcp_mem_peak, tcp_mem_kib())
            if origin:
                origin_rss_peak = max(origin_rss_peak, proctree.tree_rss_kib(origin))
            samples += 1
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    wall = time.monotonic() - t0
    cpu1 = proctree.cpu_snapshot(a.pid)
    ocpu1 = proctree.cpu_snapshot(origin) if origin else {}
    st1 = proc_stat_ticks()
    wrk_cpu = rusage_s(resource.RUSAGE_CHILDREN) - ch0
    self_cpu = rusage_s(resource.RUSAGE_SELF) - self0
    rss_peak = max(rss_peak, proctree.tree_rss_kib(a.pid))
    out = proc.stdout.read() if proc.stdout else ""
    if a.raw_dir:
        os.makedirs(a.raw_dir, exist_ok=True)
        with open(os.path.join(a.raw_dir, f"wrk-{a.workload}-{a.target}-t{a.threads}-r{a.round}.txt"), "w") as f:
            f.write(out)

    rec = {
        "workload": a.workload,
        "target": a.target,
        "threads": a.threads,
        "round": a.round,
        "url": a.url,
        "wrk_cmd": shlex.join(cmd),
        "wall_s": round(wall, 3),
        "cpu_s": round(proctree.cpu_seconds_between(cpu0, cpu1), 3),
        "rss_start_kib": rss_start,
        "rss_peak_kib": rss_peak,
        "rss_samples": samples,
        "tcp_mem_peak_kib": tcp_mem_peak,
        "processes": len(cpu1),
    }
    rec["cpu_cores"] = round(rec["cpu_s"] / wall, 3) if wall > 0 else None
    ocpu = proctree.cpu_seconds_between(ocpu0, ocpu1) if origin else 0.0
    if origin:
        rec["origin_cpu_cores"] = round(ocpu / wall, 3) if wall > 0 else None
        rec["origin_rss_peak_kib"] = origin_rss_peak
    if wall > 0:
        tck = proctree.CLK_TCK
        rec["wrk_cpu_cores"] = round(wrk_cpu / wall, 3)
        rec["machine_busy_cores"] = round((st1["busy"] - st0["busy"]) / tck / wall, 3)
        rec["irq_softirq_cores"] = round((st1["irq"] - st0["irq"]) / tck / wall, 3)
        # CPU used by processes other than target, origin, wrk and this
        # sampler (e.g. a compiler running next to the benchmark).
        known = rec["cpu_s"] + ocpu + wrk_cpu + self_cpu
        rec["other_cpu_cores"] = round(max(0.0, (st1["task"] - st0["task"]) / tck - known) / wall, 3)
    if proc.returncode != 0:
        rec["error"] = f"wrk exited {proc.returncode}: {out.strip()[-500:]}"
    else:
        try:
            rec.update(parse_wrk(out))
        except ValueError as e:
            rec["error"] = f"{e}; wrk output: {out.strip()[-500:]}"

    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
    if not a.quiet:
        if "error" in rec:
            print(f"    {a.workload:<9} {a.target:<8} T={a.threads} round {a.round}: ERROR {rec['error']}",
                  flush=True)
        else:
            lat = rec["latency_ms"]
            extra = f"  errors={rec['error_total']}" if rec["error_total"] else ""
            if rec.get("other_cpu_cores", 0) >= 0.05:
                extra += f"  (other processes: {rec['other_cpu_cores']:.2f} cores)"
            print(f"    {a.workload:<9} {a.target:<8} T={a.threads} round {a.round}: {rec['rps']:>10.0f} req/s  "
                  f"p50 {lat.get('p50', float('nan')):.3f} ms  p99 {lat.get('p99', float('nan')):.3f} ms  "
                  f"cpu {rec['cpu_cores']:.2f} cores  rss {rss_peak / 1024:.1f} MiB{extra}", flush=True)
    return 0 if "error" not in rec else 1


if __name__ == "__main__":
    sys.exit(main())
