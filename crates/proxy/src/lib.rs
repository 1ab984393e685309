//! linger's production proxy: an HTTP/1.1 reverse proxy that owns every connection's
//! lifecycle on both sides.
//!
//! * `downstream/`: the client side: one task per connection reads heads (linger-h1),
//!   runs the request path and writes responses; its timers and its close.
//! * `upstream/`: clusters, our own per-endpoint pool of bare sockets, the connector, and
//!   linger's own HTTP/1.1 client exchange, driven in the request's task.
//! * `lifecycle/`: sans-io decisions (reuse, keep-alive, close) that the two sides drive.
//! * `io/`: the downstream socket wrapper, the worker's run of small writes (`outbox`),
//!   the lingering close, and socket options.
//! * `error.rs`: typed errors of a try (side, kind, retry class).
//! * `observe/`: termination codes, metrics, the access log.
//!
//! # Cancel safety
//!
//! When the downstream closes while linger waits for an upstream response, the driver drops
//! the request future; the upstream connection it holds is dropped with it (the origin sees
//! its socket close, counted as `aborted`) and the request is logged as
//! `downstream.waiting.closed`. Dropping a response body before its end does the same with
//! `downstream.response_body.closed`.

pub mod admin;
mod body;
pub mod config;
mod downstream;
mod error;
mod forward;
mod io;
mod lifecycle;
mod observe;
mod retry;
pub mod server;
mod upstream;

pub use crate::config::{Config, File as ConfigFile};
pub use crate::observe::AccessLog;
pub use crate::server::Server;
pub use crate::upstream::learn::LearnedView;
