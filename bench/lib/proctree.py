"""Process-tree sampling from /proc: CPU time (utime+stime) and RSS.

A "tree" is a root PID plus all of its descendants (e.g. an nginx master and
its workers). Threads are covered automatically: /proc/PID/stat and
/proc/PID/status report per-process totals over all threads.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str | None:
    try:
        with open(path, "r") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _stat_fields(pid: int) -> List[str] | None:
    s = _read(f"/proc/{pid}/stat")
    if s is None:
        return None
    # comm may contain spaces/parens: split after the last ')'.
    rest = s[s.rfind(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def children_map() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is None:
            continue
        ppid = int(f[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree_pids(roots: Iterable[int]) -> List[int]:
    """Roots plus all descendants that currently exist."""
    kids = children_map()
    out: List[int] = []
    stack = [r for r in roots if os.path.exists(f"/proc/{r}")]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def cpu_ticks(pid: int) -> int | None:
    f = _stat_fields(pid)
    if f is None:
        return None
    # fields 14 (utime) and 15 (stime) -> indexes 11, 12 in `rest`
    return int(f[11]) + int(f[12])


def cpu_snapshot(roots: Iterable[int]) -> Dict[int, int]:
    snap = {}
    for p in tree_pids(roots):
        t = cpu_ticks(p)
        if t is not None:
            snap[p] = t
    return snap


def cpu_seconds_between(before: Dict[int, int], after: Dict[int, int]) -> float:
    """CPU seconds consumed between two snapshots (new processes count fully)."""
    ticks = 0
    for p, t in after.items():
        ticks += t - before.get(p, 0)
    return ticks / CLK_TCK


def rss_kib(pid: int) -> int:
    s = _read(f"/proc/{pid}/status")
    if s is None:
        return 0
    for line in s.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # kernel threads / zombies


def tree_rss_kib(roots: Iterable[int]) -> int:
    return sum(rss_kib(p) for p in tree_pids(roots))


def tree_fd_count(roots: Iterable[int]) -> int:
    n = 0
    for p in tree_pids(roots):
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except (FileNotFoundError, PermissionError):
            pass
    return n


def tree_threads(roots: Iterable[int]) -> int:
    n = 0
    for p in tree_pids(roots):
        s = _read(f"/proc/{p}/status")
        if s:
            for line in s.splitlines():
                if line.startswith("Threads:"):
                    n += int(line.split()[1])
    return n
