"""The app behind uvicorn (ASGI, `app:asgi`) and gunicorn (WSGI, `app:wsgi`): "ok" to
every request, with a Content-Length, so the connection stays open after it."""

BODY = b"ok\n"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"3")]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def wsgi(environ, start_response):
    start_response("200 OK", [(k.decode(), v.decode()) for k, v in HEADERS])
    return [BODY]
