//! The request gate over arbitrary client bytes, read in pieces of arbitrary size.
//!
//! Properties: it never panics; its verdict and the bytes it hands on do not depend on
//! where reads split the stream; and a stream it accepts is handed on whole, changed only
//! where a request line's `HTTP/1.2`-`HTTP/1.9` became `HTTP/1.1`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linger_h1::{FramingGuard, FramingViolation};

/// Feeds `input` in pieces of `step` bytes; returns what the reader is handed.
fn handed_on(input: &[u8], step: usize) -> Result<Vec<u8>, FramingViolation> {
    let mut gate = FramingGuard::new(1024);
    let mut out = Vec::with_capacity(input.len());
    let mut copy = input.to_vec();
    for piece in copy.chunks_mut(step) {
        let fed = gate.feed(piece)?;
        assert!(fed.hold <= piece.len(), "holds more than it was given");
        if let Some(earlier) = fed.release {
            out.extend_from_slice(&earlier);
        }
        out.extend_from_slice(&piece[..piece.len() - fed.hold]);
    }
    out.extend_from_slice(&gate.take_held());
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 32) + 1;
    let whole = handed_on(input, input.len().max(1));
    let pieces = handed_on(input, step);
    assert_eq!(whole, pieces, "read boundaries changed the outcome (step {step})");
    if let Ok(out) = whole {
        assert_eq!(out.len(), input.len(), "bytes lost or added");
        for (sent, handed) in input.iter().zip(&out) {
            assert!(
                sent == handed || (*handed == b'1' && (b'2'..=b'9').contains(sent)),
                "a byte other than a minor version changed"
            );
        }
    }
});
