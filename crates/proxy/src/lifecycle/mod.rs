//! Sans-io lifecycle decisions: plain values in, decisions out. No sockets, no tasks, no
//! clock reads (`now` is an argument). The async code in `downstream/` and `upstream/`
//! drives these. See `LIFECYCLE.md` beside this file for the state diagrams.

pub mod downstream;
pub mod upstream;
