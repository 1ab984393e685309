//! linger's HTTP/1.1 wire rules, on `httparse`, with no IO and no async: the request gate
//! ([`gate::FramingGuard`]) that every byte from a client passes before a request is
//! parsed for forwarding, and body framing ([`body::BodyDecoder`]: Content-Length, chunked
//! with extensions and trailers under limits, close-delimited). It depends on nothing but
//! `httparse`, so that it can be fuzzed on its own (`fuzz/`).

pub mod body;
pub mod gate;
pub mod response;

pub use body::{BodyDecoder, BodyError, Framing};
pub use gate::{
    check_head, check_parsed, find_head, locate_head, Checked, Fed, FoundHead, FramingGuard,
    FramingViolation, HeadError, Located,
};
pub use response::{response_framing, ResponseFraming, ResponseFramingError};
