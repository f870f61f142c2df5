//! Building and running a worker replica: what `reservation-worker run`,
//! the integration tests and the benchmark's replicas all start, so the
//! binary that ships is the one that is tested.

use crate::broker;
use crate::config::Settings;
use crate::health::Health;
use crate::store::Store;
use crate::worker::Worker;
use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker replica, built and ready to run.
pub struct Application {
    worker: Worker,
    health: Health,
    http: Option<(SocketAddr, JoinHandle<()>)>,
    /// Stops the HTTP endpoint once the worker has drained.
    stop_http: CancellationToken,
}

impl Application {
    /// Builds a replica named `name` (its broker connection name and Redis
    /// client name): the Redis pool, and the HTTP endpoint when
    /// `http.enabled`, bound now so that a port clash fails here and says
    /// which port. Connections to the servers are made by [`Self::run_until`].
    pub async fn build(settings: Settings, name: impl Into<String>) -> anyhow::Result<Application> {
        let name = name.into();
        let store = Store::named(&settings.redis, Some(&name))
            .with_context(|| format!("configuring the Redis client for {}", settings.redis.url))?;
        let http_settings = settings.http.clone();
        let worker = Worker::new(settings, store, name);
        let health = worker.health();
        let stop_http = CancellationToken::new();
        let http = if http_settings.enabled {
            let addr: SocketAddr = format!("{}:{}", http_settings.bind, http_settings.port)
                .parse()
                .context("http.bind / http.port")?;
            let served = crate::http::serve(addr, health.clone(), recorder()?, stop_http.clone())
                .await
                .with_context(|| {
                    format!("binding the HTTP endpoint to {addr} (set http.port / RW_HTTP__PORT)")
                })?;
            tracing::info!(bound = %served.0, "serving /healthz, /readyz and /metrics");
            Some(served)
        } else {
            None
        };
        Ok(Application {
            worker,
            health,
            http,
            stop_http,
        })
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(addr, _)| *addr)
    }

    /// Whether the replica is ready (as `/readyz` reports it).
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// Runs until `shutdown` is cancelled, then drains in-flight commands
    /// and stops the endpoint.
    pub async fn run_until(self, shutdown: CancellationToken) {
        self.worker.run(shutdown).await;
        self.stop_http.cancel();
        if let Some((_, server)) = self.http {
            let _ = server.await;
        }
    }
}

/// The runtime a replica runs on, with `threads` threads for its tasks
/// (`worker.threads`): 1 runs every task on the thread that starts it, 0
/// one thread per core.
///
/// One thread is the default because a delivery's steps (consume, decide,
/// publish, settle) are short tasks that wake one another: on several
/// threads most wake-ups cross threads, and a parked thread is woken
/// through the kernel each time. The AMQP client reads and writes its
/// socket on a thread of its own either way.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

/// The process-wide Prometheus recorder: installed by the first replica
/// built in this process, shared by the later ones.
fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = &*installed {
        return Ok(handle.clone());
    }
    let handle = crate::metrics::install()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// What `setup` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetUp {
    /// `true`: Redis had no setup marker (a new store, or one that lost its
    /// data) and now has one: workers decide against what it holds.
    pub store_initialised: bool,
}

/// What `reservation-worker setup` does: declares the contract's topology
/// on the broker (idempotent), and marks the Redis store as the one workers
/// decide on. Only `setup` writes that marker: when Redis loses its data,
/// the marker goes with it and workers decide nothing until Redis is
/// restored or `setup` runs again, accepting the empty store.
pub async fn setup(settings: &Settings) -> anyhow::Result<SetUp> {
    let a = &settings.amqp;
    let connection = broker::connect(a, "reservation-setup").await?;
    let channel = connection.create_channel().await?;
    let declared = broker::declare_topology(&channel, a).await;
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
    let _ = connection.close(200, "done".into()).await;
    declared?;
    let store = Store::new(&settings.redis)?;
    let store_initialised = store
        .initialise()
        .await
        .with_context(|| format!("marking the store at {}", settings.redis.url))?;
    Ok(SetUp { store_initialised })
}

#[cfg(test)]
mod tests {
    use super::runtime;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_thread_runs_every_task_on_the_thread_that_starts_the_runtime() {
        let rt = runtime(1).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let here = std::thread::current().id();
        let ran_on = rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|_| tokio::spawn(async { std::thread::current().id() }))
                .collect();
            let mut ids = Vec::new();
            for task in tasks {
                ids.push(task.await.unwrap());
            }
            ids
        });
        assert!(ran_on.iter().all(|id| *id == here), "{ran_on:?}");
    }

    #[test]
    fn more_threads_or_one_per_core_run_on_a_pool() {
        let rt = runtime(3).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        let cores = std::thread::available_parallelism().unwrap().get();
        let rt = runtime(0).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), cores);
    }
}
