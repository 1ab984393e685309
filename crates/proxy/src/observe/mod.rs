//! Observability: termination codes, metrics and their exposition formats, the access log,
//! and the connection registry with each connection's journal.

pub mod access_log;
pub mod connections;
pub mod exposition;
pub mod journal;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod process;
pub mod termination;

pub use self::access_log::{AccessLog, AccessRecord, RetryEntry};
pub use self::connections::{ConnEntry, Registry, Side};
pub use self::journal::{ConnState, Journal};
pub use self::metrics::Metrics;
pub use self::termination::{CloseReason, Termination};
