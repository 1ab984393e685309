//! The corpus against a lab target (the linger binary, nginx, HAProxy, or no proxy): the
//! target is started in front of a recording origin and every row is sent through it,
//! one after another.

use std::path::PathBuf;
use std::time::Duration;

use super::{judge, run_row, RecordingOrigin, Row, Verdict};
use crate::targets::{self, Place, Spec, StartError, TargetKind, Tuning};

/// How long a client waits for a byte before it decides the proxy has nothing more to say.
pub const QUIET: Duration = Duration::from_millis(300);

/// Runs `rows` through `kind`; `progress` hears about every 50 rows.
pub async fn run_target(
    kind: TargetKind,
    linger_bin: PathBuf,
    rows: &[Row],
    progress: &dyn Fn(&str),
) -> Result<Vec<(Row, Verdict)>, StartError> {
    let origin = RecordingOrigin::start()
        .await
        .map_err(|e| StartError::Failed(format!("origin: {e}")))?;
    let spec = Spec {
        kind,
        upstream: origin.addr,
        tuning: Tuning::NONE,
        place: Place::loopback(),
        linger_bin,
    };
    let mut running = targets::start(&spec).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if i % 50 == 0 {
            progress(&format!("{kind}: row {} of {}", i + 1, rows.len()));
        }
        let verdict = match run_row(running.addr, &origin, row, QUIET).await {
            Ok(obs) => judge(row, &obs),
            Err(e) => {
                running.stop().await;
                return Err(StartError::Failed(format!(
                    "{kind} stopped accepting at {}: {e}",
                    row.label()
                )));
            }
        };
        out.push((row.clone(), verdict));
    }
    running.stop().await;
    Ok(out)
}
