"""Binds a listening socket on 127.0.0.1, a port the kernel picks, prints the port on
stdout, then replaces itself (same PID) with the command given, where `{fd}` in an
argument becomes the socket's file descriptor: `gunicorn --bind fd://{fd}`,
`uvicorn --fd {fd}`. The server never binds anything itself, so no port can be taken in
between, and the port is known before the server has started."""

import os
import socket
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
# Accepted connections inherit TCP_NODELAY from the listener. gunicorn sets it on a socket
# it is handed; uvicorn takes an --fd socket for a Unix socket and would leave Nagle on, so
# its two writes per response (head, then body) would wait for a delayed ACK: 40 ms each.
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
sock.set_inheritable(True)
print(sock.getsockname()[1], flush=True)
argv = [a.replace("{fd}", str(sock.fileno())) for a in sys.argv[1:]]
os.execvp(argv[0], argv)
