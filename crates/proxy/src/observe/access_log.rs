//! The access log: one JSON line per request, written by a dedicated thread so the request
//! path never blocks on stdout or a disk.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::AccessLogTarget;

/// One retry decision, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct RetryEntry {
    /// Which try failed (1 = the first).
    pub attempt: u32,
    /// Why the try failed (`reused_connection_reset`, `unsent`, `connect_failed`...).
    pub reason: &'static str,
    /// `retried`, or why it was refused.
    pub decision: &'static str,
}

/// The fields of one access-log line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccessRecord {
    pub ts: f64,
    pub listener: Arc<String>,
    pub downstream_conn: u64,
    pub request_index: u64,
    pub client: String,
    pub method: String,
    pub path: String,
    pub version: &'static str,
    pub host: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream_connect_ms: Option<f64>,
    pub upstream_first_byte_ms: Option<f64>,
    pub cluster: Option<Arc<String>>,
    pub endpoint: Option<String>,
    pub upstream_conn: Option<u64>,
    pub upstream_reused: Option<bool>,
    pub upstream_conn_requests: Option<u64>,
    pub upstream_conn_age_ms: Option<f64>,
    pub upstream_conn_closed: Option<&'static str>,
    pub retries: Vec<RetryEntry>,
    pub downstream_close: Option<&'static str>,
    pub termination: &'static str,
    pub detail: Option<String>,
}

/// Where access-log lines go.
/// What the writer thread is sent.
#[derive(Debug)]
pub enum Message {
    Line(String),
    /// Flush, then say so.
    Flush(mpsc::Sender<()>),
}

#[derive(Debug, Clone)]
pub enum AccessLog {
    Off,
    Writer(mpsc::Sender<Message>),
    /// Kept in memory; tests read it.
    Memory(Arc<Mutex<Vec<String>>>),
}

// === impl AccessLog ===

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> io::Result<Self> {
        match target {
            AccessLogTarget::Off => Ok(Self::Off),
            AccessLogTarget::Stdout => Ok(Self::spawn_writer(Box::new(io::stdout()))),
            AccessLogTarget::File(p) => {
                let f = open_append(p)?;
                Ok(Self::spawn_writer(Box::new(f)))
            }
        }
    }

    pub fn memory() -> (Self, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        (Self::Memory(lines.clone()), lines)
    }

    fn spawn_writer(out: Box<dyn Write + Send>) -> Self {
        let (tx, rx) = mpsc::channel::<Message>();
        std::thread::Builder::new()
            .name("linger-access-log".into())
            .spawn(move || {
                let mut w = BufWriter::with_capacity(64 * 1024, out);
                let write = |w: &mut BufWriter<_>, m: Message| match m {
                    Message::Line(line) => {
                        let _ = w.write_all(line.as_bytes());
                        let _ = w.write_all(b"\n");
                    }
                    Message::Flush(done) => {
                        let _ = w.flush();
                        let _ = done.send(());
                    }
                };
                while let Ok(m) = rx.recv() {
                    write(&mut w, m);
                    while let Ok(m) = rx.try_recv() {
                        write(&mut w, m);
                    }
                    let _ = w.flush();
                }
                let _ = w.flush();
            })
            .expect("spawning the access-log thread must succeed");
        Self::Writer(tx)
    }

    /// Waits (at most `limit`) until every record written before this call is out of the
    /// writer's buffer: at exit, so that no line is lost.
    pub fn flush(&self, limit: std::time::Duration) -> bool {
        match self {
            Self::Writer(tx) => {
                let (done_tx, done_rx) = mpsc::channel();
                tx.send(Message::Flush(done_tx)).is_ok() && done_rx.recv_timeout(limit).is_ok()
            }
            Self::Off | Self::Memory(_) => true,
        }
    }

    pub fn enabled(&self) -> bool {
        !matches!(self, Self::Off)
    }

    pub fn write(&self, record: &AccessRecord) {
        match self {
            Self::Off => {}
            Self::Writer(tx) => {
                if let Ok(line) = serde_json::to_string(record) {
                    // The writer thread ends only with the process.
                    let _ = tx.send(Message::Line(line));
                }
            }
            Self::Memory(lines) => {
                if let Ok(line) = serde_json::to_string(record) {
                    lines.lock().expect("access log lock").push(line);
                }
            }
        }
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", p.display())))
}

/// Seconds since the Unix epoch, for log timestamps.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
