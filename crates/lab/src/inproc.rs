//! linger started inside the current process, on the current tokio runtime, in front of
//! given upstreams: for the demo and the tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use linger_proxy::config::File;
use linger_proxy::AccessLog;
use linger_proxy::Server;
use tokio::task::JoinHandle;

/// A running in-process linger; dropping it stops its worker.
#[derive(Debug)]
pub struct InProcess {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub access_log: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl InProcess ===

impl InProcess {
    /// Starts linger on 127.0.0.1:0 with the defaults of `linger serve --upstream`, after
    /// `tweak` edits the config file form.
    pub fn start(upstreams: &[SocketAddr], tweak: impl FnOnce(&mut File)) -> std::io::Result<Self> {
        let ups: Vec<String> = upstreams.iter().map(|a| a.to_string()).collect();
        let mut file = File::simple("127.0.0.1:0", &ups);
        file.admin.enabled = false;
        tweak(&mut file);
        let config = file
            .validate("in-process")
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = std::net::TcpListener::bind(config.listeners[0].address)?;
        let addr = listener.local_addr()?;
        let (log, lines) = AccessLog::memory();
        let server = Server::new(config, log);
        let task = tokio::spawn(server.clone().run_worker(vec![listener]));
        Ok(Self {
            addr,
            server,
            access_log: lines,
            task,
        })
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.access_log.lock().expect("access log lock").clone()
    }
}
