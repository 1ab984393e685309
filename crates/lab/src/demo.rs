//! `linger demo`: a short run of the lab with no setup: the scenarios whose races lose
//! requests outright, with small counts, straight to the origin and through linger.

use std::path::PathBuf;

use crate::runner::{Options, Requests};
use crate::scenarios;
use crate::targets::TargetKind;

/// The demo's scenarios: upstream idle close, unannounced close, early response, close
/// after each response, a deploy (drain).
pub const SCENARIOS: [&str; 5] = ["R1", "R3", "R4", "R9", "R10"];

/// The demo's run: those scenarios, `direct` and `linger`, each scenario's small count.
pub fn options(linger_bin: PathBuf, seed: u64) -> Options {
    Options {
        scenarios: SCENARIOS
            .iter()
            .map(|id| scenarios::find(id).expect("demo scenarios exist"))
            .collect(),
        targets: vec![TargetKind::Direct, TargetKind::Linger],
        requests: Requests::Quick,
        seed,
        linger_bin,
        capture: None,
    }
}
