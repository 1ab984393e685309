//! Peers written for the lab: origins and clients with chosen behaviours.

pub mod client;
pub mod origin;

pub use self::client::{KeepAliveClient, Outcome};
pub use self::origin::{CloseStyle, Origin, OriginConfig, OriginStats};
