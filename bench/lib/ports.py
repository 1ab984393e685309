#!/usr/bin/env python3
"""Port helpers for run.sh.

  ports.py free N                      print N distinct free loopback ports
  ports.py wait PORT [--pid P] [--timeout S] [--http]
                                       wait until 127.0.0.1:PORT accepts (and,
                                       with --http, answers a GET with any
                                       HTTP status line); fail early if process
                                       P exits.
"""
import argparse
import os
import socket
import sys
import time


def free_ports(n: int) -> list[int]:
    # Hold all sockets open at once so the kernel hands out distinct ports.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


def try_once(port: int, http: bool) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            if not http:
                return True
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = s.recv(64)
            return data.startswith(b"HTTP/1.")
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("free")
    f.add_argument("n", type=int, nargs="?", default=1)
    w = sub.add_parser("wait")
    w.add_argument("port", type=int)
    w.add_argument("--pid", type=int)
    w.add_argument("--timeout", type=float, default=20.0)
    w.add_argument("--http", action="store_true")
    a = ap.parse_args()
    if a.cmd == "free":
        print(" ".join(str(p) for p in free_ports(a.n)))
        return 0
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        if a.pid is not None and not pid_alive(a.pid):
            print(f"process {a.pid} exited before port {a.port} was ready", file=sys.stderr)
            return 2
        if try_once(a.port, a.http):
            return 0
        time.sleep(0.1)
    print(f"timed out after {a.timeout}s waiting for 127.0.0.1:{a.port}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
