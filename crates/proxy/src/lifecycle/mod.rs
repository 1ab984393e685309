//! Sans-io lifecycle decisions: plain values in, decisions out. No sockets, no tasks, no
//! clock reads (`now` is an argument). The async code in `downstream/` and `upstream/`
//! drives these. `docs/lifecycle.md` draws both sides' states and explains each rule.

pub mod connection;
pub mod downstream;
#[cfg(test)]
mod races;
pub mod upstream;
