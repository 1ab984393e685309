#!/usr/bin/env python3
"""Writes every corpus row's bytes (crates/lab/corpus/*.toml) as a seed of the request_gate
fuzz target, into fuzz/corpus/request_gate/. The first byte of a seed picks the read size."""
import pathlib, re, sys, tomllib

root = pathlib.Path(__file__).resolve().parent.parent
out = root / "fuzz" / "corpus" / "request_gate"
out.mkdir(parents=True, exist_ok=True)

def unescape(s: str) -> bytes:
    b = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            b += c.encode()
            i += 1
            continue
        n = s[i + 1]
        if n == "x":
            b.append(int(s[i + 2 : i + 4], 16))
            i += 4
        else:
            b += {"r": b"\r", "n": b"\n", "t": b"\t", "\\": b"\\"}[n]
            i += 2
    return bytes(b)

count = 0
for f in sorted((root / "crates" / "lab" / "corpus").glob("*.toml")):
    for i, row in enumerate(tomllib.loads(f.read_text())["row"]):
        data = unescape(row["send"]) + b"x" * row.get("fill", 0)
        for step in (0, 6):
            (out / f"{f.stem}-{i:03}-{step}").write_bytes(bytes([step]) + data[:8 * 1024])
            count += 1
print(f"{count} seeds in {out}", file=sys.stderr)
