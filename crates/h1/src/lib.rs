//! linger's HTTP/1.1 wire rules, on `httparse`, with no IO and no async: the request gate
//! ([`gate::FramingGuard`]) that every byte from a client passes before a request is
//! parsed for forwarding. It depends on nothing but `httparse`, so that it can be fuzzed
//! on its own (`fuzz/`).

pub mod gate;

pub use gate::{Fed, FramingGuard, FramingViolation};
