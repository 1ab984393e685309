//! linger's race lab: peers that make connection-lifecycle races happen on purpose, and
//! the scenarios that run them against no proxy, linger and other proxies.

pub mod check;
pub mod demo;
pub mod inproc;
pub mod netns;
pub mod peers;
pub mod probe;
