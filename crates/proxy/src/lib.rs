//! linger's production proxy: an HTTP/1.1 reverse proxy that owns every connection's
//! lifecycle on both sides.
//!
//! * `downstream/`: the client side (hyper server `conn`), its timers and its close.
//! * `upstream/`: clusters, our own per-endpoint pool, the connector (hyper client `conn`).
//! * `lifecycle/`: sans-io decisions (reuse, keep-alive, close) that the two sides drive.
//! * `io/`: the socket wrapper through which every socket passes, and socket options.
//! * `observe/`: termination codes, metrics, the access log.
//!
//! # Cancel safety
//!
//! When the downstream closes while linger waits for an upstream response, hyper drops the
//! request future; dropping it aborts the upstream connection (the origin sees its socket
//! close) and logs `downstream.waiting.closed`. Dropping a response body before its end
//! does the same with `downstream.response_body.closed`.

pub mod admin;
mod body;
pub mod config;
mod downstream;
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
