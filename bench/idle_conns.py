#!/usr/bin/env python3
"""Idle keep-alive connection memory test.

Opens N downstream keep-alive connections to a proxy; each sends one GET and
reads the full response, then stays open and idle. While they are held, the
RSS of the proxy's process tree (root PID plus descendants, summed) is
compared with the RSS before the connections were opened, giving KiB per idle
connection. Connections the server closes during the hold are counted
(a proxy that drops idle connections makes the per-connection number
meaningless, so check `closed_by_peer`).

Prints one JSON object on stdout (progress on stderr).

Example:
  python3 bench/idle_conns.py --port 8080 --pid 1234 --conns 10000
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import proctree  # noqa: E402
from http1 import read_response  # noqa: E402


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle_conns\r\n\r\n"


async def open_one(host: str, port: int, timeout: float):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(REQUEST)
        await writer.drain()
        status, _ = await asyncio.wait_for(read_response(reader), timeout)
    except BaseException:
        writer.close()
        raise
    return reader, writer, status


def rss_samples(pids, n=3, gap=0.1) -> list[int]:
    out = []
    for i in range(n):
        if i:
            time.sleep(gap)
        out.append(proctree.tree_rss_kib(pids))
    return out


async def run(a) -> dict:
    def log(msg):
        if not a.quiet:
            print(msg, file=sys.stderr, flush=True)

    soft, hard = raise_nofile()
    result = {"host": a.host, "port": a.port, "conns_requested": a.conns,
              "batch": a.batch, "hold_s": a.hold, "client_nofile": soft}
    if soft < a.conns + 100:
        log(f"warning: RLIMIT_NOFILE {soft} < conns+100; expect connect errors")
    pids = a.pid or []

    # Warm-up: a few requests on short-lived connections so lazy init,
    # upstream connection setup etc. are not charged to the idle connections.
    for _ in range(a.warmup):
        r, w, _ = await open_one(a.host, a.port, a.timeout)
        w.close()
        await w.wait_closed()
    await asyncio.sleep(a.settle)
    if pids:
        before = rss_samples(pids)
        result["rss_before_kib"] = min(before)
        result["fds_before"] = proctree.tree_fd_count(pids)
        log(f"  before: rss {result['rss_before_kib']} KiB, fds {result['fds_before']}")

    conns = []
    errors: dict[str, int] = {}
    statuses: dict[str, int] = {}
    rss_peak = 0
    t0 = time.monotonic()
    remaining = a.conns
    while remaining > 0:
        n = min(a.batch, remaining)
        remaining -= n
        res = await asyncio.gather(*(open_one(a.host, a.port, a.timeout) for _ in range(n)),
                                   return_exceptions=True)
        for x in res:
            if isinstance(x, BaseException):
                k = type(x).__name__ + (f"({x.errno})" if getattr(x, "errno", None) else "")
                errors[k] = errors.get(k, 0) + 1
            else:
                conns.append(x)
                statuses[str(x[2])] = statuses.get(str(x[2]), 0) + 1
        if pids:
            rss_peak = max(rss_peak, proctree.tree_rss_kib(pids))
    open_s = time.monotonic() - t0
    log(f"  opened {len(conns)}/{a.conns} in {open_s:.1f}s, errors {errors or 0}, statuses {statuses}")

    # Hold idle, sampling.
    t_hold = time.monotonic()
    while time.monotonic() - t_hold < a.hold:
        if pids:
            rss_peak = max(rss_peak, proctree.tree_rss_kib(pids))
        await asyncio.sleep(0.5)
    closed = sum(1 for r, w, _ in conns if r.at_eof() or w.is_closing())
    if pids:
        after = rss_samples(pids)
        result["rss_after_kib"] = max(after)
        result["rss_peak_kib"] = max(rss_peak, result["rss_after_kib"])
        result["fds_after"] = proctree.tree_fd_count(pids)
        log(f"  after:  rss {result['rss_after_kib']} KiB, fds {result['fds_after']}")

    result.update({
        "conns_open": len(conns),
        "open_s": round(open_s, 3),
        "errors": errors,
        "statuses": statuses,
        "closed_by_peer": closed,
    })
    held = len(conns) - closed
    if pids and held > 0:
        delta = result["rss_after_kib"] - result["rss_before_kib"]
        result["rss_delta_kib"] = delta
        result["kib_per_conn"] = round(delta / held, 3)

    for r, w, _ in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w, _ in conns), return_exceptions=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, action="append",
                    help="root PID of the server's process tree to measure (repeatable)")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=250, help="connections opened concurrently")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds to hold connections idle")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up requests before the baseline")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before the baseline")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-connection connect/response timeout")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    res = asyncio.run(run(a))
    print(json.dumps(res))
    ok = res["conns_open"] == a.conns and res["closed_by_peer"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
