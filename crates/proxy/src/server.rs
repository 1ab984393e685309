//! Wiring: one [`Server`] per process, one worker per thread. Each worker has its own
//! upstream pools (no cross-thread locking on the request path) and accepts on its own
//! duplicate of every listening socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Config;
use crate::downstream::{self, ConnCounter, Drain, ListenerCtx, WorkerCtx};
use crate::observe::metrics::Name;
use crate::observe::{AccessLog, Metrics, Registry};
use crate::upstream::learn::{Book, Learned};
use crate::upstream::Cluster;

/// How often each worker sweeps its pools for expired idle connections (the learning
/// reads the upstream's idle closes to within one sweep).
const REAP_INTERVAL: Duration = crate::upstream::learn::SWEEP;

/// How many tasks a worker runs before it looks for new readiness (tokio's
/// `event_interval`; its default is 61). A worker under load finds a connection ready and
/// runs its task, which reads, and queues its writes for the turn's run
/// (`io/outbox.rs`): the longer the turn, the fewer `epoll_wait`s per request and the
/// longer the runs of writes, so the fewer wakeups of the peers. HAProxy's counterpart,
/// `tune.runqueue-depth`, defaults to 200. Measured at 1 worker, small GETs over 64
/// connections, alternating 6 s rounds: 92,062 req/s on average over 5 rounds against
/// 89,687 with tokio's 61, and a lower p99 (median 1.30 ms against 1.41). A task's poll
/// takes a few µs, so a full turn of 200 keeps the timers within about a millisecond, far
/// finer than the connection timeouts.
const TASKS_PER_TURN: u32 = 200;

/// The process-wide state.
#[derive(Debug)]
pub struct Server {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    pub conns: Arc<ConnCounter>,
    /// Every open connection and the last closed ones, with their journals.
    pub registry: Arc<Registry>,
    /// What linger learned of each endpoint, by cluster and endpoint, shared by the workers.
    pub learned: Book,
    listeners: Vec<Arc<ListenerCtx>>,
    /// Every running worker, for handing accepted connections to the least busy.
    workers: Arc<downstream::spread::Workers>,
    drain_tx: watch::Sender<Drain>,
    ready_tx: watch::Sender<bool>,
}

// === impl Server ===

impl Server {
    pub fn new(config: Config, access_log: AccessLog) -> Arc<Self> {
        let metrics = Arc::new(Metrics::for_config(&config));
        let listeners = config
            .listeners
            .iter()
            .map(|l| Arc::new(ListenerCtx::new(l, &config.routes, &metrics)))
            .collect();
        let registry = Arc::new(Registry::new(config.closed_connections));
        let learned = config
            .clusters
            .iter()
            .map(|c| {
                let cluster = Name::new(c.name.clone());
                c.endpoints
                    .iter()
                    .map(|a| {
                        Arc::new(Learned::new(
                            cluster.clone(),
                            Name::new(a.to_string()),
                            c.idle_timeout,
                            c.learn_from_closes,
                            &metrics,
                        ))
                    })
                    .collect()
            })
            .collect();
        let (drain_tx, _) = watch::channel(Drain::Running);
        let (ready_tx, _) = watch::channel(true);
        let workers = Arc::new(downstream::spread::Workers::new(config.workers));
        Arc::new(Self {
            config: Arc::new(config),
            metrics,
            access_log,
            conns: Arc::new(ConnCounter::default()),
            registry,
            learned,
            listeners,
            workers,
            drain_tx,
            ready_tx,
        })
    }

    /// Binds every configured listener (for the binary; tests pass their own sockets).
    pub fn bind_all(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.config
            .listeners
            .iter()
            .map(|l| {
                crate::io::socket::bind(l.address).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("listener {:?} cannot bind {}: {e}", l.name, l.address),
                    )
                })
            })
            .collect()
    }

    /// Runs one worker on the current tokio runtime until the drain has stopped accepting
    /// and this worker's connections are gone. `sockets` are in listener order.
    pub async fn run_worker(self: Arc<Self>, sockets: Vec<std::net::TcpListener>) {
        let clusters: Vec<Arc<Cluster>> = self
            .config
            .clusters
            .iter()
            .zip(&self.learned)
            .map(|(c, learned)| {
                Arc::new(Cluster::new(
                    c,
                    self.metrics.clone(),
                    self.registry.clone(),
                    learned,
                ))
            })
            .collect();
        // Each worker's connections watch the drain on the worker's own channel: a watch
        // registers every waiting connection under the channel's lock, and one channel for
        // all workers made the workers' threads take turns at it on every request.
        let (worker_drain_tx, worker_drain) = watch::channel(*self.drain_tx.borrow());
        let mut global = self.drain_tx.subscribe();
        // Lives on while the worker's connections finish (the drain deadline reaches them
        // through it), and ends with the server's channel.
        let registry = self.registry.clone();
        tokio::spawn(async move {
            while global.changed().await.is_ok() {
                worker_drain_tx.send_replace(*global.borrow_and_update());
                registry.wake_downstream();
            }
        });
        let deadlines = Arc::new(downstream::deadlines::Deadlines::new(self.registry.clone()));
        // Lives on, as the drain's forwarder does, while the worker's connections finish:
        // their drain grace and timeouts still wake through it.
        tokio::spawn(deadlines.clone().run());
        // The worker's sender of the small writes queued in a turn (`io::outbox`), for as
        // long as this runtime runs.
        tokio::spawn(crate::io::outbox::sender());
        let (me, worker) = self.workers.register(|me| {
            Arc::new(WorkerCtx {
                metrics: self.metrics.clone(),
                access_log: self.access_log.clone(),
                clusters: clusters.clone(),
                drain: worker_drain,
                conns: self.conns.clone(),
                registry: self.registry.clone(),
                deadlines,
                share: downstream::spread::Share::new(&self.metrics, me),
            })
        });
        // This thread is the worker's: its connections' polls read its CPU clock.
        crate::io::cpu_time::install(
            self.metrics
                .worker_cpu
                .get_or_create_owned(&crate::observe::metrics::WorkerLabels { worker: me }),
            crate::io::clock::now_ns(),
        );
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for c in &clusters {
                    c.reap();
                }
            }
        });
        let mut accepts = Vec::new();
        for (ctx, sock) in self.listeners.iter().zip(sockets) {
            // Set once here, the options reach every accepted socket (checked on the first).
            if let Err(e) = crate::io::socket::apply_listener(&sock, &ctx.cfg.tcp) {
                tracing::debug!(error = %e, "listener socket options; set per connection");
                ctx.set_inherits(false);
            }
            sock.set_nonblocking(true)
                .expect("listening socket must go non-blocking");
            let sock =
                crate::io::socket::Listening::new(sock).expect("listening socket must register");
            accepts.push(tokio::spawn(downstream::accept_loop(
                worker.clone(),
                ctx.clone(),
                sock,
                self.workers.clone(),
                me,
            )));
        }
        for a in accepts {
            let _ = a.await;
        }
        reaper.abort();
    }

    /// The CPU each worker thread pins itself to, in worker order (`[runtime] pin_workers`,
    /// `io/cpu.rs`), or `None` for no pinning. Call it before any thread is pinned.
    pub fn worker_cpus(&self) -> Option<Vec<usize>> {
        let allowed = match crate::io::cpu::allowed() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the CPUs linger may use; workers not pinned");
                return None;
            }
        };
        crate::io::cpu::plan(self.config.pin_workers, self.config.workers, &allowed)
    }

    /// The runtime a worker's thread runs [`Server::run_worker`] on: single-threaded, so
    /// that a connection's task and what its thread holds (the clock reading of a poll,
    /// the read scratch buffer, the CPU clock's ticks) stay together. `linger serve`'s
    /// workers and the in-process linger of the tests (`linger_lab::inproc`) both run on it.
    pub fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .event_interval(TASKS_PER_TURN)
            .enable_all()
            .build()
    }

    /// Pins the calling worker thread to `cpu` (one of [`Server::worker_cpus`]).
    pub fn pin_worker_thread(cpu: usize) -> std::io::Result<()> {
        crate::io::cpu::pin_this_thread(cpu)
    }

    /// Readiness for `/ready`: false from the first drain signal on.
    pub fn ready(&self) -> bool {
        *self.ready_tx.borrow()
    }

    /// Marks the server not ready (load balancers stop sending) without closing anything.
    pub fn set_unready(&self) {
        self.ready_tx.send_replace(false);
    }

    /// Starts the drain: stop accepting, `Connection: close` on further responses, close
    /// idle connections gracefully.
    pub fn start_drain(&self) {
        self.set_unready();
        self.drain_tx.send_replace(Drain::Draining);
    }

    pub fn is_draining(&self) -> bool {
        *self.drain_tx.borrow() != Drain::Running
    }

    /// The drain deadline passed: every connection still open closes now, each with its
    /// close reason and its request's access-log line.
    pub fn cut(&self) {
        self.drain_tx.send_replace(Drain::Cut);
    }

    /// Waits until every downstream connection has closed, or `deadline` passes. Returns the
    /// number still open.
    pub async fn wait_drained(&self, deadline: Duration) -> u64 {
        let _ = tokio::time::timeout(deadline, self.conns.wait_zero()).await;
        self.conns.open()
    }
}
