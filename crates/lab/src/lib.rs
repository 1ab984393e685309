//! linger's race lab: peers that make connection-lifecycle races happen on purpose, the
//! scenarios that run them (one per race), and the targets they run against: no proxy,
//! linger, nginx and HAProxy. Also the probe and the chain check.

pub mod capture;
pub mod check;
pub mod corpus;
pub mod demo;
pub mod inproc;
pub mod netns;
pub mod peers;
pub mod probe;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod schedule;
pub mod targets;
