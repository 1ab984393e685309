//! Child processes the lab starts (linger, nginx, HAProxy): each gets a scratch directory
//! for its config and logs, runs in the foreground, and is stopped by its PID, never by
//! name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A scratch directory under the system's temporary directory, removed on drop unless
/// kept: to show the logs of a target that failed, or for every target with
/// `LINGER_LAB_KEEP=1`.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new(label: &str) -> std::io::Result<Self> {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("linger-lab-{}-{n}-{label}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        // LINGER_LAB_KEEP=1 keeps every target's config and logs for a look afterwards.
        let keep = std::env::var_os("LINGER_LAB_KEEP").is_some_and(|v| v != "0");
        if keep {
            eprintln!("lab: {label}'s config and logs in {}", path.display());
        }
        Ok(Self { path, keep })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Keeps the directory after the run.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Builds the command for `program`, inside network namespace `netns` when given
/// (`ip netns exec` runs the program itself in place of `ip`, so the PID is the
/// program's).
pub fn command(program: &Path, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A started child process.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and reaps it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        let pid = Pid::from_raw(self.child.id() as i32)
            .ok_or_else(|| std::io::Error::other("child has no pid"))?;
        kill_process(pid, sig).map_err(std::io::Error::from)
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.exited()
    }

    /// SIGTERM, then SIGKILL for it and its own children if it has not exited in 5 s.
    pub async fn stop(&mut self) {
        if self.exited() {
            return;
        }
        let _ = self.signal(Signal::TERM);
        if self.wait_exit(Duration::from_secs(5)).await {
            return;
        }
        self.kill();
    }

    /// SIGKILL for it and its own children (nginx's workers would outlive their master).
    fn kill(&mut self) {
        let children = children_of(self.pid());
        let _ = self.signal(Signal::KILL);
        for pid in children {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A run that was cut short: do not leave the process behind.
        if !self.exited() {
            self.kill();
        }
    }
}

/// The PIDs of `pid`'s children (nginx's workers), from procfs.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The last lines of a log file, for an error message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Finds an executable: `name` on PATH, else in the system directories where Debian
/// installs daemons (not on a normal user's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
