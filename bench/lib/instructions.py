#!/usr/bin/env python3
"""bench/instructions.sh's records and report.

record: one JSON line for one target and workload, from callgrind's count and wrk's
request count, with the target's costliest functions (self cost, per request) read from
the dump by callgrind_annotate.

report: the JSON report (machine, linger's revision, the records, linger's ratio to
HAProxy per workload) and a table on stdout.
"""

import argparse
import json
import re
import subprocess
import sys

from report import load_jsonl, machine_info

# "  1,234,567 (12.34%)  file:function [object]" as callgrind_annotate prints self costs.
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")


def function_name(rest):
    """The function of a "file:function [object]" entry (the file is where the inlined
    code came from, so one function can appear under several files)."""
    rest = re.sub(r"\s+\[[^\]]*\]$", "", rest.strip())
    # The file part ends at the first ':' that follows a path-like prefix.
    m = re.match(r"^(?:\S*?\.(?:rs|c|h|S|cc|cpp)|\?\?\?):(.*)$", rest)
    return (m.group(1) if m else rest).strip()


def top_functions(path, requests, n):
    if n <= 0:
        return []
    try:
        p = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
            capture_output=True, text=True, timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return [{"error": f"callgrind_annotate: {e}"}]
    totals = {}
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line or "=>" in line or "events annotated" in line:
            continue
        ir = int(m.group(1).replace(",", ""))
        name = function_name(m.group(2))
        totals[name] = totals.get(name, 0) + ir
    best = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return [{"function": k, "per_request": round(v / requests, 1)} for k, v in best]


def cmd_record(a):
    rec = {
        "target": a.target,
        "workload": a.workload,
        "requests": a.requests,
        "instructions": a.instructions,
        "per_request": round(a.instructions / a.requests, 1),
        "seconds": a.seconds,
        "conns": a.conns,
        "top": top_functions(a.callgrind, a.requests, a.top),
    }
    print(json.dumps(rec))


def cmd_report(a):
    results = load_jsonl(a.results)
    problems = load_jsonl(a.problems)
    by = {(r["workload"], r["target"]): r for r in results}
    ratios = {}
    for w in sorted({r["workload"] for r in results}):
        l, h = by.get((w, "linger")), by.get((w, "haproxy"))
        if l and h:
            ratios[w] = round(l["per_request"] / h["per_request"], 3)
    report = {
        "machine": machine_info(a.linger_bin, a.repo),
        "method": "valgrind --tool=callgrind, user-space instructions of the proxy only, "
                  "counted over a fixed time of wrk load after a warm-up, one worker",
        "results": results,
        "linger_over_haproxy": ratios,
        "problems": problems,
    }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"{'workload':<9} {'target':<8} {'requests':>9} {'instr/request':>14}")
    for r in results:
        print(f"{r['workload']:<9} {r['target']:<8} {r['requests']:>9} {r['per_request']:>14,.0f}")
    for w, x in ratios.items():
        print(f"{w}: linger / HAProxy = {x:.2f}x the instructions per request")
    for p in problems:
        print(f"!! [{p['target']}/{p['phase']}] {p['message']}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--target", required=True)
    r.add_argument("--workload", required=True)
    r.add_argument("--requests", type=int, required=True)
    r.add_argument("--instructions", type=int, required=True)
    r.add_argument("--seconds", type=int, required=True)
    r.add_argument("--conns", type=int, required=True)
    r.add_argument("--callgrind", required=True)
    r.add_argument("--top", type=int, default=12)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--problems", required=True)
    p.add_argument("--repo")
    p.add_argument("--linger-bin")
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "record":
        cmd_record(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
