#!/usr/bin/env python3
"""Check on the wire that a proxy does the work run.sh asks of every proxy.

  equal_work.py --port P --check-log FILE [--max-requests 1000] [--post-bytes 16384]

1. Headers and bodies: sends `POST /_check` with a body of --post-bytes bytes, then
   `GET /_check`, each on a connection of its own, through the proxy on 127.0.0.1:P.
   The origin logs every /_check request it receives as one JSON line to --check-log
   (bench/lib/proc.sh, launch_origin): the X-Forwarded-* and Via headers it got, its
   Content-Length and $request_length (head + body bytes read from the proxy).
2. Requests per connection: sends `GET /` requests one after another on one connection,
   until the proxy closes it (at most --max-requests + 1), and records which response
   first carried `Connection: close` and after how many responses the proxy closed.

Prints one JSON object; exit status 0 if the proxy added X-Forwarded-For with the
client's address, forwarded the whole body, and announced and made the close after
exactly --max-requests responses; 1 otherwise.
"""
import argparse
import asyncio
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http1 import read_response  # noqa: E402

HOST = "127.0.0.1"


async def one_request(port: int, request: bytes, timeout: float) -> int:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(request)
        await writer.drain()
        status, _ = await asyncio.wait_for(read_response(reader), timeout)
        return status
    finally:
        writer.close()


def find_logged(path: str, uri: str, timeout: float) -> dict | None:
    """The origin's log line for `uri` (nginx writes it once the request is done)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                for line in f:
                    rec = json.loads(line)
                    if rec.get("request_uri") == uri:
                        return rec
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


async def requests_per_connection(port: int, limit: int, timeout: float) -> dict:
    """GET / until the proxy closes the connection, at most limit + 1 requests."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    res = {"responses": 0, "close_announced_at": None, "closed_by_proxy": False, "statuses": {}}
    try:
        for i in range(1, limit + 2):
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: equal_work\r\n\r\n")
                await writer.drain()
                status, headers = await asyncio.wait_for(read_response(reader), timeout)
            except (asyncio.IncompleteReadError, ConnectionError):
                res["closed_by_proxy"] = True
                break
            res["responses"] = i
            res["statuses"][str(status)] = res["statuses"].get(str(status), 0) + 1
            if res["close_announced_at"] is None and "close" in headers.get("connection", ""):
                res["close_announced_at"] = i
                # the proxy must close now: the next read sees EOF
                try:
                    extra = await asyncio.wait_for(reader.read(1), timeout)
                    res["closed_by_proxy"] = extra == b""
                except (asyncio.TimeoutError, ConnectionError):
                    pass
                break
    finally:
        writer.close()
    return res


async def run(a) -> dict:
    tag = uuid.uuid4().hex[:12]
    body = b"x" * a.post_bytes
    post_uri = f"/_check?post-{tag}"
    get_uri = f"/_check?get-{tag}"
    out: dict = {"port": a.port}
    post_status = await one_request(a.port, (
        f"POST {post_uri} HTTP/1.1\r\nHost: bench\r\nUser-Agent: equal_work\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body,
        a.timeout)
    get_status = await one_request(a.port, f"GET {get_uri} HTTP/1.1\r\nHost: bench\r\n"
                                   "User-Agent: equal_work\r\n\r\n".encode(), a.timeout)
    post = find_logged(a.check_log, post_uri, a.timeout)
    get = find_logged(a.check_log, get_uri, a.timeout)
    out["post"] = {"status": post_status, "bytes_sent": len(body), "origin_saw": post}
    out["get"] = {"status": get_status, "origin_saw": get}
    ok = post_status == 200 and get_status == 200 and post is not None and get is not None
    if post is not None and get is not None:
        # The origin's request_length counts head and body. The POST's head is the GET's
        # plus Content-Length and Content-Type (63 bytes) and a letter more in the method and
        # in the tag, so the difference is the body plus 65 bytes if the whole body arrived.
        diff = post["request_length"] - get["request_length"]
        out["post"]["request_length_minus_get"] = diff
        out["x_forwarded_for"] = get["x_forwarded_for"]
        out["body_forwarded"] = post["content_length"] == str(len(body)) and diff >= len(body) + 65
        ok = ok and out["body_forwarded"] and get["x_forwarded_for"].split(",")[-1].strip() == HOST
    if a.max_requests > 0:
        rpc = await requests_per_connection(a.port, a.max_requests, a.timeout)
        out["requests_per_connection"] = rpc
        ok = ok and rpc["responses"] == a.max_requests and rpc["close_announced_at"] == a.max_requests \
            and rpc["closed_by_proxy"]
    out["ok"] = ok
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--check-log", required=True, help="the origin's /_check log (JSON lines)")
    ap.add_argument("--max-requests", type=int, default=1000,
                    help="requests per client connection the proxy should allow (0: do not check)")
    ap.add_argument("--post-bytes", type=int, default=16384)
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    try:
        res = asyncio.run(run(a))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        res = {"port": a.port, "ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
