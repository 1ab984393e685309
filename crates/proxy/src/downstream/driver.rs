//! linger's own HTTP/1.1 server side: one task per client connection reads each request
//! head (`linger_h1::locate_head`, then one parse under the gate's rules), hands the request to
//! the request path in the same task, writes the response as its body arrives, and watches
//! the client and the drain meanwhile. The lifecycle machine (`lifecycle::connection`)
//! holds the timers and the close reason; this loop does what it answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use linger_h1::{check_parsed, locate_head, Framing, HeadError, Located};

use super::deadlines::Armed;
use super::inbound::{ReqBody, Shared};
use super::service::DsService;
use super::{DsConn, ListenerCtx, Opened};
use crate::body::DownBody;
use crate::config::HalfClosePolicy;
use crate::forward::write_field;
use crate::io::transport::{self, write_all};
use crate::io::{clock, IoStats, Transport};
use crate::lifecycle::connection::{Action, Drain};
use crate::lifecycle::upstream::{connection_has, has_token};
use crate::observe::journal::Kind;
use crate::upstream::conn::HEAD_READ;
use crate::upstream::exchange::{write_last_chunk, ReasonPhrase};
use crate::upstream::UpstreamConn;

/// What ended a connection's loop.
#[derive(Debug)]
pub enum Ending {
    /// The client closed, or linger closes: after a response that said so, or at a timer
    /// of the idle connection (the lifecycle machine names the reason).
    Closed,
    /// The head did not complete in time: 408.
    HeaderTimeout,
    /// The drain deadline passed with the connection still open.
    Cut,
    /// A head linger refuses: 400 or 431.
    BadHead(HeadError),
    /// The client left while a request was in flight (R5, R7).
    ClientGone,
    /// The connection became a tunnel, which has ended.
    Tunneled,
}

/// What the response writer needs to know of the request.
#[derive(Debug, Clone, Copy)]
struct Asked {
    head: bool,
    http10: bool,
    /// The client takes trailers (`TE: trailers`).
    trailers: bool,
}

/// What wakes the connection besides its socket: the drain (its worker's state, read
/// again whenever the registry wakes the connection's task after a change) and the
/// deadline armed with its worker's [`Deadlines`](super::deadlines::Deadlines).
struct DrainWatch<'a> {
    o: &'a Opened,
    seen: Drain,
    armed: Armed,
}

impl Drop for DrainWatch<'_> {
    fn drop(&mut self) {
        let o = self.o;
        self.armed.disarm(&o.svc.worker.deadlines, o.svc.conn.id());
    }
}

impl<'a> DrainWatch<'a> {
    /// The drain's new state, if it changed since last seen.
    fn poll_changed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Drain> {
        // Registered before the state is read: a change after the read wakes it.
        self.o.svc.conn.entry.set_waker(cx.waker());
        let now = *self.o.svc.worker.drain.borrow();
        if now == self.seen {
            return Poll::Pending;
        }
        self.seen = now;
        Poll::Ready(now)
    }

    /// Resolves with the drain's new state.
    fn changed(&mut self) -> impl Future<Output = Drain> + use<'_, 'a> {
        std::future::poll_fn(move |cx| self.poll_changed(cx))
    }
}

/// Serves requests on one connection until it ends.
/// (Its frame, which every idle connection keeps, holds the one pointer and the drain's
/// last state: the rest is reached through the pointer where it is used.)
pub(super) async fn run(o: &Opened) -> Ending {
    let mut drain = DrainWatch {
        o,
        seen: *o.svc.worker.drain.borrow(),
        armed: Armed::default(),
    };
    if drain.seen != Drain::Running {
        match o
            .svc
            .conn
            .lifecycle(|lc| lc.drain(drain.seen, clock::now()))
        {
            Action::Cut => return Ending::Cut,
            Action::Close(_) => return Ending::Closed,
            _ => {}
        }
    }
    loop {
        let found = match next_head(o, &mut drain).await {
            Ok(h) => h,
            Err(e) => return e,
        };
        // The request and the response are handed on by plain functions: values moved
        // into a boxed future must not stay in this loop's frame, which every idle
        // connection keeps (nor do references kept across an await: each costs the
        // frame a pointer, so the connection is reached through `o` where it is used).
        let Begun { handling, asked } = match begin(&o.svc, found, &o.shared) {
            Ok(r) => r,
            Err(e) => return Ending::BadHead(e),
        };
        let resp = match wait_response(
            handling,
            &o.svc.conn,
            &o.shared,
            &o.svc.listener,
            &mut drain,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return e,
        };
        let (written, upgrade) = respond(
            resp,
            asked,
            &o.svc.conn,
            &o.shared,
            &o.svc.listener,
            &mut drain,
        );
        if let Err(e) = written.await {
            return e;
        }
        if upgrade {
            // The upstream connection goes straight into the boxed tunnel: held across
            // the await, it would take its size in this frame.
            let tunneled = o
                .svc
                .conn
                .take_tunnel()
                .map(|up| Box::pin(tunnel(&o.shared, up)));
            if let Some(t) = tunneled {
                t.await;
                return Ending::Tunneled;
            }
        }
        if o.svc.conn.lifecycle(|lc| lc.close_reason()).is_some() {
            return Ending::Closed;
        }
    }
}

/// The request a found head describes, on its way through the request path, whose future
/// lives on the heap while it runs.
fn begin(
    svc: &DsService,
    found: Located,
    shared: &Arc<Shared>,
) -> Result<Begun<impl Future<Output = Response<DownBody>>>, HeadError> {
    let (req, asked) = request(found, shared, svc.listener.cfg.max_headers)?;
    Ok(Begun {
        handling: Box::pin(svc.clone().handle(req)),
        asked,
    })
}

/// A request on its way: the request path's future, and what the client asked of the
/// response's form.
struct Begun<F> {
    handling: Pin<Box<F>>,
    asked: Asked,
}

/// The response's writing, on the heap while it runs as the request path is; and whether
/// it switches protocols.
fn respond<'a, 'b>(
    resp: Response<DownBody>,
    asked: Asked,
    conn: &'a DsConn,
    shared: &'a Arc<Shared>,
    listener: &'a ListenerCtx,
    drain: &'a mut DrainWatch<'b>,
) -> (
    Pin<Box<impl Future<Output = Result<(), Ending>> + use<'a, 'b>>>,
    bool,
) {
    let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    (
        Box::pin(write_response(resp, asked, conn, shared, listener, drain)),
        upgrade,
    )
}

/// Waits for the next complete request head, with the connection's timers and the drain.
/// (Every idle connection keeps this future: it holds one pointer to the connection and
/// reaches everything through it.)
async fn next_head(o: &Opened, drain: &mut DrainWatch<'_>) -> Result<Located, Ending> {
    loop {
        {
            let mut ib = o.shared.inbound.lock().expect("inbound lock");
            if ib.buf.is_empty() {
                ib.release_if_empty();
            } else {
                o.svc.conn.lifecycle(|lc| lc.head_started(clock::now()));
                match locate_head(&mut ib.buf, o.svc.listener.cfg.max_header_bytes) {
                    Ok(Some(h)) => return Ok(h),
                    Ok(None) => {}
                    Err(e) => return Err(Ending::BadHead(e)),
                }
            }
        }
        match wait_idle(o, drain).await {
            Woke::Read(r) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return Err(Ending::Closed);
                }
                o.svc
                    .conn
                    .stats()
                    .journal()
                    .set_state(crate::observe::ConnState::Reading);
            }
            Woke::Timer => {
                let conn = &o.svc.conn;
                match conn.lifecycle(|lc| lc.on_timer(clock::now())) {
                    Action::Close(reason) => {
                        conn.stats()
                            .journal()
                            .record_with(Kind::Closing, reason.as_str());
                        return Err(Ending::Closed);
                    }
                    Action::AnswerTimeout => return Err(Ending::HeaderTimeout),
                    Action::Cut => return Err(Ending::Cut),
                    Action::Wait => {}
                }
            }
            Woke::Drain(d) => {
                let conn = &o.svc.conn;
                match conn.lifecycle(|lc| lc.drain(d, clock::now())) {
                    Action::Cut => return Err(Ending::Cut),
                    Action::Close(reason) => {
                        conn.stats()
                            .journal()
                            .record_with(Kind::Closing, reason.as_str());
                        return Err(Ending::Closed);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What ended a wait for the client's next bytes.
enum Woke {
    Read(std::io::Result<usize>),
    Timer,
    Drain(Drain),
}

/// Waits for the client's next bytes, the connection's deadline or a change of the
/// drain, whichever comes first (bytes first when several are ready: a request that
/// arrived as the idle deadline passed is served). Written out by hand: `select!` kept
/// each branch's future and its own bookkeeping in the frame every idle connection holds.
/// The deadline is the lifecycle machine's, asked on every wake; the worker's deadline
/// task wakes the connection for it (no timer in this frame).
fn wait_idle<'a, 'b>(
    o: &'a Opened,
    drain: &'a mut DrainWatch<'b>,
) -> impl Future<Output = Woke> + use<'a, 'b> {
    std::future::poll_fn(move |cx| {
        let shared = &o.shared;
        let read = {
            let mut ib = shared.inbound.lock().expect("inbound lock");
            shared
                .stream
                .poll_fill(cx, &mut ib.buf, &shared.stats, HEAD_READ)
        };
        if let Poll::Ready(r) = read {
            return Poll::Ready(Woke::Read(r));
        }
        if let Poll::Ready(d) = drain.poll_changed(cx) {
            return Poll::Ready(Woke::Drain(d));
        }
        match o.svc.conn.lifecycle(|lc| lc.deadline()) {
            Some(d) if drain.armed.due(&o.svc.worker.deadlines, o.svc.conn.id(), d) => {
                Poll::Ready(Woke::Timer)
            }
            _ => Poll::Pending,
        }
    })
}

/// The request a found head describes, with its body reading from the connection. The
/// head is parsed once, here: the gate's rules run on this parse (`check_parsed`).
fn request(
    found: Located,
    shared: &Arc<Shared>,
    max_headers: usize,
) -> Result<(Request<ReqBody>, Asked), HeadError> {
    let mut ib = shared.inbound.lock().expect("inbound lock");
    let head = ib.buf.split_to(found.end).freeze();
    // Nothing read past the head: the buffer goes now, not after the response.
    ib.release_if_empty();
    let head = head.slice(found.start..);
    // Uninitialised slots: a head's parse costs no zeroing of the field table.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut spill = Vec::new();
    let fields: &mut [std::mem::MaybeUninit<httparse::Header<'_>>] = if max_headers <= slots.len() {
        &mut slots[..max_headers]
    } else {
        spill.resize_with(max_headers, std::mem::MaybeUninit::uninit);
        &mut spill
    };
    let mut parsed = httparse::Request::new(&mut []);
    match parsed.parse_with_uninit_headers(&head, fields) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        _ => return Err(HeadError::Malformed),
    }
    let checked = check_parsed(&parsed).map_err(HeadError::Violation)?;
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed)?;
    // The target and the values are slices of the head, not copies.
    let uri = Uri::from_maybe_shared(head.slice_ref(parsed.path.unwrap_or("").as_bytes()))
        .map_err(|_| HeadError::Malformed)?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for the fields linger may put in the map on the way upstream (Connection and
    // Upgrade, X-Forwarded-Host, a merged X-Forwarded-For or Via): no rehash.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 4);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Malformed)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| HeadError::Malformed)?;
        headers.append(name, value);
    }
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let framing = if checked.switches && method == Method::CONNECT {
        Framing::Empty
    } else {
        checked.framing
    };
    ib.start_body(framing, expect_continue);
    drop(ib);
    let asked = Asked {
        head: method == Method::HEAD,
        http10: version == Version::HTTP_10,
        trailers: has_token(&headers, header::TE, "trailers"),
    };
    let mut req = Request::new(ReqBody::new(shared.clone(), framing));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok((req, asked))
}

/// Waits for the request path's response, watching the client (R7) and the drain.
fn wait_response<'a, 'b, F>(
    fut: Pin<Box<F>>,
    conn: &'a DsConn,
    shared: &'a Arc<Shared>,
    listener: &'a ListenerCtx,
    drain: &'a mut DrainWatch<'b>,
) -> impl Future<Output = Result<Response<DownBody>, Ending>> + use<'a, 'b, F>
where
    F: Future<Output = Response<DownBody>>,
{
    // Written out by hand, as `wait_idle`: this frame is part of every connection's task.
    let watch = listener.cfg.half_close == HalfClosePolicy::Abort;
    let max = listener.cfg.max_header_bytes;
    let mut fut = Some(fut);
    // A client socket that has not joined the event loop yet (its request was there when
    // it was accepted) is watched only once the wait has lasted a moment: an answer that
    // comes sooner costs it no registration (see `io::transport::Tcp`).
    let mut watch_from = None;
    std::future::poll_fn(move |cx| loop {
        let Some(f) = fut.as_mut() else {
            return Poll::Pending;
        };
        if let Poll::Ready(resp) = f.as_mut().poll(cx) {
            if watch_from.is_some() {
                drain.armed.disarm(&drain.o.svc.worker.deadlines, conn.id());
            }
            return Poll::Ready(Ok(resp));
        }
        let watching = watch
            && (shared.stream.registered() || {
                let from = *watch_from.get_or_insert_with(client_watch_from);
                drain
                    .armed
                    .due(&drain.o.svc.worker.deadlines, conn.id(), from)
            });
        if watching && poll_client_gone(cx, shared, max).is_ready() {
            // Dropping the request path's future cancels the upstream exchange and logs
            // the request (`downstream.waiting.closed`).
            fut = None;
            return Poll::Ready(Err(Ending::ClientGone));
        }
        let Poll::Ready(d) = drain.poll_changed(cx) else {
            return Poll::Pending;
        };
        if conn.lifecycle(|lc| lc.drain(d, clock::now())) == Action::Cut {
            conn.cut.store(true, Ordering::Relaxed);
            fut = None;
            return Poll::Ready(Err(Ending::Cut));
        }
        // The drain moved on: the request path sees it on its next poll.
    })
}

/// How long a wait for the response lasts before a client socket outside the event loop
/// joins it to be watched (R7): a client that left is noticed this much later. The
/// moment is rounded up to a multiple of it, so that the waits of one worker share few
/// deadlines.
const CLIENT_WATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

fn client_watch_from() -> tokio::time::Instant {
    let step = CLIENT_WATCH_DELAY.as_nanos() as u64;
    let at = clock::now_ns() + step;
    clock::at_ns(at.div_ceil(step) * step)
}

/// Resolves when the client closes or resets the connection while no body of its is
/// being read; bytes it sends meanwhile (a pipelined request) are kept for later, up to
/// a head's size.
async fn client_gone(shared: &Arc<Shared>, listener: &ListenerCtx) {
    let max = listener.cfg.max_header_bytes;
    std::future::poll_fn(|cx| poll_client_gone(cx, shared, max)).await
}

/// [`client_gone`] as a poll, for loops written out by hand.
fn poll_client_gone(cx: &mut std::task::Context<'_>, shared: &Arc<Shared>, max: usize) -> Poll<()> {
    let mut ib = shared.inbound.lock().expect("inbound lock");
    loop {
        if ib.body_pending() || ib.buf.len() > max {
            // The body's reader sees the close; or enough is read ahead.
            return Poll::Pending;
        }
        match shared
            .stream
            .poll_fill(cx, &mut ib.buf, &shared.stats, HEAD_READ)
        {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
        }
    }
}

/// The largest piece of a response body that is copied next to its head (or its chunk's
/// size line) rather than written from where it is.
const COALESCE: usize = 2048;

/// Writes a response head and its body as the body arrives.
async fn write_response(
    resp: Response<DownBody>,
    asked: Asked,
    conn: &DsConn,
    shared: &Arc<Shared>,
    listener: &ListenerCtx,
    drain: &mut DrainWatch<'_>,
) -> Result<(), Ending> {
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status.as_u16();
    let bodiless = asked.head || (100..200).contains(&status) || status == 204 || status == 304;
    let chunked = frame_response(&mut parts.headers, &body, asked, bodiless);
    if chunked.is_none() && !bodiless {
        // Delimited by the close (an HTTP/1.0 client): the connection ends after it.
        conn.set_close_reason(crate::observe::CloseReason::RequestedClose);
    }
    let mut out = Vec::with_capacity(256);
    write_head(
        &mut out,
        &parts,
        asked.http10,
        &body.added,
        listener.keep_alive_value.as_ref(),
    );
    // Written: the fields go now, while they are in the cache, rather than after the body
    // (with many connections they are not by then), and this future does not keep them.
    drop(parts);
    let watch = listener.cfg.half_close == HalfClosePolicy::Abort;
    let in_run = conn.lifecycle(|lc| lc.close_reason()).is_none();
    let mut trailers: Option<HeaderMap> = None;
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            () = client_gone(shared, listener), if watch => {
                drop(body);
                return Err(Ending::ClientGone);
            }
            d = drain.changed() => {
                if conn.lifecycle(|lc| lc.drain(d, clock::now())) == Action::Cut {
                    conn.cut.store(true, Ordering::Relaxed);
                    drop(body);
                    return Err(Ending::Cut);
                }
                continue;
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => {
                // The upstream failed mid-body (R11): what came is sent, then the connection
                // closes without the body's end, so the client sees it cut short.
                let _ = write_parts(shared, &[&out]).await;
                return Err(Ending::Closed);
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !bodiless => d,
                Ok(_) => continue,
                Err(f) => {
                    trailers = f.into_trailers().ok();
                    continue;
                }
            },
        };
        let chunk = chunked == Some(true) && !data.is_empty();
        if write_piece(shared, &mut out, &data, chunk, in_run)
            .await
            .map(|waited| waited.map(|w| body.client_took(w)))
            .is_err()
        {
            drop(body);
            return Err(Ending::ClientGone);
        }
        out.clear();
    }
    if chunked == Some(true) {
        write_last_chunk(&mut out, trailers.filter(|_| asked.trailers).as_ref());
    }
    // A bodiless response, or a chunked body's end.
    if !out.is_empty() && write_answer(shared, &mut out, in_run).await.is_err() {
        return Err(Ending::ClientGone);
    }
    Ok(())
}

/// Writes what `out` holds (the head, the first time), then a piece of the body, framed
/// as a chunk if `chunk`: one vectored write, no copy of the data, or, for a small piece,
/// one plain send of `out` with the piece joined to it (whose copy here costs less than
/// the kernel's vectored write). For a large piece, whether the client made linger wait
/// (`Some(true)`); a small one is not looked at (`None`).
async fn write_piece(
    shared: &Arc<Shared>,
    out: &mut Vec<u8>,
    data: &[u8],
    chunk: bool,
    in_run: bool,
) -> std::io::Result<Option<bool>> {
    if chunk {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    }
    let crlf: &[u8] = if chunk { b"\r\n" } else { b"" };
    if data.len() <= COALESCE {
        out.extend_from_slice(data);
        out.extend_from_slice(crlf);
        return write_answer(shared, out, in_run).await.map(|()| None);
    }
    write_parts_noting_wait(shared, &[out, data, crlf])
        .await
        .map(Some)
}

/// Sets the response's framing fields: its `Content-Length` when the length is known,
/// chunked otherwise (an HTTP/1.0 client gets a body that ends at the close). Returns
/// `Some(chunked)` for a delimited body, `None` for one that ends at the close.
fn frame_response(
    headers: &mut HeaderMap,
    body: &DownBody,
    asked: Asked,
    bodiless: bool,
) -> Option<bool> {
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, http_date());
    }
    if asked.http10 && !connection_has(headers, "close") {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    if bodiless || headers.contains_key(header::CONTENT_LENGTH) {
        return Some(false);
    }
    if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Some(false);
    }
    if asked.http10 {
        headers.remove(header::CONNECTION);
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        return None;
    }
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Some(true)
}

/// The `Date` field's value, made once a second per thread.
fn http_date() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, Option<HeaderValue>)> =
            const { std::cell::RefCell::new((0, None)) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_none() {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .expect("an HTTP date is a valid header value");
            *c = (secs, Some(v));
        }
        c.1.clone().expect("set above")
    })
}

/// The status line (in the client's version: an HTTP/1.0 client is answered in 1.0) and
/// the fields.
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    http10: bool,
    added: &crate::forward::ResponseAdded,
    keep_alive: Option<&HeaderValue>,
) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    let reason = parts
        .extensions
        .get::<ReasonPhrase>()
        .map(|r| &r.0[..])
        .or_else(|| parts.status.canonical_reason().map(str::as_bytes))
        .unwrap_or(b"");
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // The fields linger adds go last.
    added.write(out, keep_alive);
    out.extend_from_slice(b"\r\n");
}

/// Writes a response's bytes that fit one write: with the other small writes of the
/// worker's turn (`io::outbox`) while the connection goes on; at once when it ends with
/// this response, whose close follows straight after and whose client (a new connection
/// per request) waits on its round trip rather than on the worker's CPU.
async fn write_answer(
    shared: &Arc<Shared>,
    out: &mut Vec<u8>,
    in_run: bool,
) -> std::io::Result<()> {
    if in_run {
        crate::io::outbox::write_client(shared, out).await
    } else {
        write_parts(shared, &[out]).await
    }
}

/// Writes all of `parts`, in order, to the client: vectored, without copying them.
async fn write_parts(shared: &Shared, parts: &[&[u8]]) -> std::io::Result<()> {
    transport::write_parts(&shared.stream, &shared.stats, parts).await
}

/// Writes all of `parts` as [`write_parts`] does; `Ok(true)` if it had to wait for the
/// client to take them.
async fn write_parts_noting_wait(shared: &Shared, parts: &[&[u8]]) -> std::io::Result<bool> {
    let mut waited = false;
    let mut write = std::pin::pin!(write_parts(shared, parts));
    std::future::poll_fn(|cx| {
        let polled = write.as_mut().poll(cx);
        waited |= polled.is_pending();
        polled
    })
    .await?;
    Ok(waited)
}

/// After a `101`: bytes go both ways between the client and the upstream until both
/// sides are done; bytes already read on either side go first.
async fn tunnel(shared: &Shared, mut up: UpstreamConn) {
    let early_up = std::mem::take(&mut up.buf);
    let early_down = {
        let mut ib = shared.inbound.lock().expect("inbound lock");
        std::mem::take(&mut ib.buf)
    };
    let up_stats = up.stats.clone();
    let upstream: &dyn Transport = up.stream();
    let down = End {
        stream: &shared.stream,
        stats: &shared.stats,
    };
    let upstream = End {
        stream: upstream,
        stats: &up_stats,
    };
    let a = pump(down, upstream, early_down);
    let b = pump(upstream, down, early_up);
    let _ = tokio::join!(a, b);
}

/// One side of a tunnel.
#[derive(Clone, Copy)]
struct End<'a> {
    stream: &'a dyn Transport,
    stats: &'a IoStats,
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
async fn pump(from: End<'_>, to: End<'_>, first: BytesMut) -> std::io::Result<()> {
    let mut buf = first;
    loop {
        if !buf.is_empty() {
            write_all(to.stream, to.stats, &buf).await?;
            buf.clear();
        }
        let read =
            std::future::poll_fn(|cx| from.stream.poll_fill(cx, &mut buf, from.stats, TUNNEL_READ));
        if read.await? == 0 {
            to.stream.send_fin(to.stats);
            return Ok(());
        }
    }
}

/// A tunnel's reads.
const TUNNEL_READ: usize = 16 * 1024;

/// The best the client can get of a refusal, within `limit`.
pub async fn write_best_effort(shared: &Shared, bytes: &[u8], limit: Duration) {
    let _ = tokio::time::timeout(limit, write_all(&shared.stream, &shared.stats, bytes)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::outbox::tests::{client, poll_once, read_exactly, start_sender};

    #[tokio::test]
    async fn a_closing_answer_is_written_at_once_and_a_kept_one_goes_with_the_run() {
        let sender = start_sender().await;
        let (c, mut peer) = client().await;

        // The connection closes after this one: written in the first poll, before the
        // sender runs again.
        let closing = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let mut out = closing.to_vec();
        let mut write = Box::pin(write_answer(&c, &mut out, false));
        let first = poll_once(&mut write).await;
        assert!(
            matches!(first, Poll::Ready(Ok(()))),
            "written at once: {first:?}"
        );
        drop(write);
        assert_eq!(read_exactly(&mut peer, closing.len()).await, closing);

        // The connection goes on: queued for the turn's run, and done once the sender
        // wrote it.
        let kept = b"HTTP/1.1 204 No Content\r\n\r\n";
        let mut out = kept.to_vec();
        let mut write = Box::pin(write_answer(&c, &mut out, true));
        assert!(
            poll_once(&mut write).await.is_pending(),
            "queued for the run"
        );
        tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the run wrote it in time")
            .unwrap();
        assert_eq!(read_exactly(&mut peer, kept.len()).await, kept);
        sender.abort();
    }
}
