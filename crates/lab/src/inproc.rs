//! linger started inside the current process in front of given upstreams, for the tests:
//! its worker runs as `linger serve`'s do, on a thread of its own with the
//! worker runtime ([`Server::worker_runtime`]), so that what a worker's thread holds works
//! as it does in the binary.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use linger_proxy::config::File;
use linger_proxy::AccessLog;
use linger_proxy::Server;

/// A running in-process linger; dropping it stops its worker and waits for its thread.
#[derive(Debug)]
pub struct InProcess {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub access_log: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = server.clone();
        let thread = std::thread::Builder::new()
            .name("linger-worker-0".into())
            .spawn(move || {
                let rt = Server::worker_runtime().expect("a worker runtime must start");
                rt.block_on(async move {
                    let work = async {
                        worker.clone().run_worker(vec![listener]).await;
                        // As the binary: the runtime lives on while connections finish.
                        worker.conns.wait_zero().await;
                        std::future::pending::<()>().await;
                    };
                    tokio::select! {
                        () = work => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            addr,
            server,
            access_log: lines,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.access_log.lock().expect("access log lock").clone()
    }
}
