#!/usr/bin/env python3
"""Count ESTABLISHED loopback TCP connections with `ss`, for bench/slow.sh.

  slow_conns.py count PORT [--side dport|sport]
        print how many established connections have that destination port
        (dport: counted on the connecting side, e.g. the proxy's sockets to the
        origin) or source port (sport: counted on the accepting side, e.g. the
        proxy's sockets to its clients). One side only, so each connection
        counts once.

  slow_conns.py sample --origin-port O --proxy-port P --seconds N [--interval S] --out FILE
        every S seconds (default 1) for N seconds count the connections to the
        origin (dport = O, the proxy's side) and the proxy's client
        connections (sport = P, the proxy's side); write a JSON object with
        every sample and the max and last values. Stops early on SIGTERM or
        SIGINT and still writes FILE.

  slow_conns.py wait-drop PORT [--side sport] [--max N] [--timeout S]
        wait until at most N (default 0) connections are left; print a JSON
        object (seconds waited, count left, whether it dropped); exit 1 on
        timeout.

  slow_conns.py wait-rise PORT --min N [--side sport] [--timeout S]
        wait until at least N connections are established; print a JSON
        object (seconds waited, count, whether it got there); exit 1 on
        timeout.
"""
import argparse
import json
import signal
import subprocess
import sys
import time


def count(port: int, side: str) -> int:
    """Established TCP connections whose `side` (dport/sport) is `port`."""
    p = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( {side} = :{port} )"],
        capture_output=True, text=True, timeout=10,
    )
    if p.returncode != 0:
        raise RuntimeError(f"ss failed ({p.returncode}): {p.stderr.strip()}")
    return sum(1 for line in p.stdout.splitlines() if line.strip())


class Stop(Exception):
    pass


def _stop(signum, frame):
    raise Stop()


def sample(a) -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    samples = []
    t0 = time.monotonic()
    err = None
    try:
        k = 1
        while True:
            # Sample at t0 + k*interval: "every second for N seconds".
            wake = t0 + k * a.interval
            if wake > t0 + a.seconds + 1e-6:
                break
            delay = wake - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = round(time.monotonic() - t0, 2)
            try:
                samples.append({"t": t, "origin": count(a.origin_port, "dport"),
                                "clients": count(a.proxy_port, "sport")})
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                err = str(e)
                samples.append({"t": t, "origin": None, "clients": None})
            k += 1
    except Stop:
        pass
    o = [s["origin"] for s in samples if s["origin"] is not None]
    c = [s["clients"] for s in samples if s["clients"] is not None]
    res = {
        "origin_port": a.origin_port, "proxy_port": a.proxy_port,
        "interval_s": a.interval, "seconds": a.seconds,
        "origin_cmd": f'ss -Htn state established "( dport = :{a.origin_port} )" | wc -l',
        "clients_cmd": f'ss -Htn state established "( sport = :{a.proxy_port} )" | wc -l',
        "n": len(samples),
        "origin_max": max(o) if o else None,
        "origin_last": o[-1] if o else None,
        "clients_max": max(c) if c else None,
        "clients_last": c[-1] if c else None,
        "samples": samples,
    }
    if err:
        res["error"] = err
    with open(a.out, "w") as f:
        json.dump(res, f)
    return 0


def wait_drop(a) -> int:
    t0 = time.monotonic()
    n = count(a.port, a.side)
    while n > a.max and time.monotonic() - t0 < a.timeout:
        time.sleep(0.25)
        n = count(a.port, a.side)
    ok = n <= a.max
    print(json.dumps({"port": a.port, "side": a.side, "left": n, "dropped": ok,
                      "waited_s": round(time.monotonic() - t0, 2)}))
    return 0 if ok else 1


def wait_rise(a) -> int:
    t0 = time.monotonic()
    n = count(a.port, a.side)
    while n < a.min and time.monotonic() - t0 < a.timeout:
        time.sleep(0.25)
        n = count(a.port, a.side)
    ok = n >= a.min
    print(json.dumps({"port": a.port, "side": a.side, "count": n, "min": a.min, "reached": ok,
                      "waited_s": round(time.monotonic() - t0, 2)}))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count")
    c.add_argument("port", type=int)
    c.add_argument("--side", choices=["dport", "sport"], default="dport")
    s = sub.add_parser("sample")
    s.add_argument("--origin-port", type=int, required=True)
    s.add_argument("--proxy-port", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--interval", type=float, default=1.0)
    s.add_argument("--out", required=True)
    w = sub.add_parser("wait-drop")
    w.add_argument("port", type=int)
    w.add_argument("--side", choices=["dport", "sport"], default="sport")
    w.add_argument("--max", type=int, default=0)
    w.add_argument("--timeout", type=float, default=30.0)
    r = sub.add_parser("wait-rise")
    r.add_argument("port", type=int)
    r.add_argument("--side", choices=["dport", "sport"], default="sport")
    r.add_argument("--min", type=int, required=True)
    r.add_argument("--timeout", type=float, default=10.0)
    a = ap.parse_args()
    if a.cmd == "count":
        print(count(a.port, a.side))
        return 0
    if a.cmd == "sample":
        return sample(a)
    if a.cmd == "wait-rise":
        return wait_rise(a)
    return wait_drop(a)


if __name__ == "__main__":
    sys.exit(main())
