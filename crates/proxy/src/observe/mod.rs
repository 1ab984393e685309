//! Observability: termination codes, metrics and the access log.

pub mod access_log;
pub mod metrics;
pub mod termination;

pub use self::access_log::{AccessLog, AccessRecord, RetryEntry};
pub use self::metrics::Metrics;
pub use self::termination::{CloseReason, Termination};
