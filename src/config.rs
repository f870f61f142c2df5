//! Settings, layered: the compiled-in `config/default.toml`, then an optional
//! `--config FILE`, then environment variables (`AMQP_URL`, `REDIS_URL`, and
//! `RW_<SECTION>__<KEY>` for everything else).

mod secret;
mod tls;
mod validate;

pub use secret::SecretUrl;
pub use tls::{TlsFileError, TlsFiles, TlsPaths};
pub use validate::Problem;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config FILE` names no file.
    #[error("config file {} does not exist", .0.display())]
    MissingFile(std::path::PathBuf),
    /// A file or variable cannot be read as settings (syntax, type).
    #[error(transparent)]
    Unreadable(Box<figment::Error>),
    /// Values out of their allowed range.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// The defaults, exactly as shipped in `config/default.toml`.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// All settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// RabbitMQ.
    pub amqp: AmqpSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// Processing.
    pub worker: WorkerSettings,
    /// Logging.
    pub log: LogSettings,
    /// Health and metrics endpoint.
    pub http: HttpSettings,
}

/// The operations endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    /// Serve `/healthz`, `/readyz` and `/metrics`.
    pub enabled: bool,
    /// Address to bind.
    pub bind: String,
    /// Port (0 picks a free one, logged at start).
    pub port: u16,
}

/// Broker connection and topology names.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    /// Broker URL (`AMQP_URL`).
    pub url: SecretUrl,
    /// CA certificates (PEM) to trust for `amqps://`, besides the system's.
    #[serde(default, deserialize_with = "path_or_empty")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[serde(default, deserialize_with = "path_or_empty")]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, deserialize_with = "path_or_empty")]
    pub tls_key_file: Option<PathBuf>,
    /// Unacked deliveries per worker.
    pub prefetch: u16,
    /// Exchange producers publish commands to.
    pub commands_exchange: String,
    /// Quorum queue the workers consume.
    pub commands_queue: String,
    /// Deliveries before a message is dead-lettered.
    pub delivery_limit: u32,
    /// Dead-letter exchange.
    pub dead_letter_exchange: String,
    /// Dead-letter queue.
    pub dead_letter_queue: String,
    /// Exchange outcome events are published to.
    pub events_exchange: String,
    /// The events exchange's alternate exchange: events no binding takes.
    pub unrouted_exchange: String,
    /// The queue that keeps unrouted events.
    pub unrouted_queue: String,
    /// How long the unrouted queue keeps an event.
    pub unrouted_retention_secs: u64,
    /// The events exchange gets its alternate exchange from a broker
    /// policy, not from its declaration (an exchange declared by v1).
    pub alternate_exchange_by_policy: bool,
    /// Partitioned mode: P > 0 routes commands by resource to P queues with
    /// a single active consumer each.
    pub partitions: u16,
    /// The consistent-hash exchange of partitioned mode.
    pub partition_exchange: String,
    /// Publisher-confirm timeout.
    pub confirm_timeout_ms: u64,
    /// Publish events on a second connection instead of the consuming one.
    pub separate_publisher_connection: bool,
}

/// Redis connection and key layout.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RedisSettings {
    /// Redis URL (`REDIS_URL`).
    pub url: SecretUrl,
    /// CA certificates (PEM) to trust for `rediss://`, instead of the
    /// system's.
    #[serde(default, deserialize_with = "path_or_empty")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[serde(default, deserialize_with = "path_or_empty")]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, deserialize_with = "path_or_empty")]
    pub tls_key_file: Option<PathBuf>,
    /// Whether `url` names the seed nodes of a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Replicas that must have a commit before its events go out (`WAIT`);
    /// unset: 1 on a Redis Cluster, 0 on a single Redis.
    #[serde(default)]
    pub wait_replicas: Option<u32>,
    /// How long a commit waits for its replicas.
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Transaction connections (per master, on a Redis Cluster).
    pub pool_size: usize,
    /// Idempotency record lifetime.
    pub idempotency_retention_secs: u64,
}

/// Retry and shutdown behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkerSettings {
    /// WATCH/MULTI attempts before a batch's commands are requeued.
    pub max_commit_attempts: u32,
    /// First conflict backoff.
    pub retry_base_ms: u64,
    /// Largest conflict backoff.
    pub retry_max_ms: u64,
    /// First backoff while a server is unreachable.
    pub reconnect_base_ms: u64,
    /// Largest backoff while a server is unreachable.
    pub reconnect_max_ms: u64,
    /// Commit all waiting commands of a resource in one transaction.
    pub group_commit: bool,
    /// Most commands in one transaction.
    pub max_batch: usize,
    /// Transactions of grouped batches running at once, per Redis master.
    pub committers: usize,
    /// Drain time on shutdown.
    pub shutdown_grace_secs: u64,
    /// How often to look for holds that have run out.
    pub sweep_interval_ms: u64,
    /// Most due holds taken from each due-index shard per sweep.
    pub sweep_batch: usize,
    /// Threads that run a worker's tasks (`run`, and the bench's null
    /// worker): 1 runs them all on one thread, 0 one per core.
    pub threads: usize,
}

/// Log filter and format.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    /// `tracing` filter directive.
    pub level: String,
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON unless stderr (where logs go) is a terminal.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

impl Settings {
    /// Loads the layered settings and checks every value.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::MissingFile(file.to_path_buf()));
            }
            figment = figment.merge(Toml::file(file));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("RW_").split("__"))
            .merge(Env::raw().only(&["AMQP_URL"]).map(|_| "amqp.url".into()))
            .merge(Env::raw().only(&["REDIS_URL"]).map(|_| "redis.url".into()))
            .extract()
            .map_err(|e| ConfigError::Unreadable(Box::new(e)))?;
        let problems = validate::problems(&settings);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// These settings with every broker name and the Redis key prefix put
    /// under `prefix`, so that runs side by side on the same servers (tests,
    /// benchmarks) never meet.
    pub fn under_prefix(mut self, prefix: &str) -> Settings {
        let a = &mut self.amqp;
        for name in [
            &mut a.commands_exchange,
            &mut a.commands_queue,
            &mut a.dead_letter_exchange,
            &mut a.dead_letter_queue,
            &mut a.events_exchange,
            &mut a.unrouted_exchange,
            &mut a.unrouted_queue,
            &mut a.partition_exchange,
        ] {
            *name = format!("{prefix}.{name}");
        }
        self.redis.key_prefix = format!("{prefix}:");
        self
    }

    /// The environment that gives a child process exactly these settings:
    /// `AMQP_URL`, `REDIS_URL` (passwords included) and
    /// `RW_<SECTION>__<KEY>` for every other key.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AMQP_URL".to_string(), self.amqp.url.expose().to_string()),
            ("REDIS_URL".to_string(), self.redis.url.expose().to_string()),
        ];
        let tree = serde_json::to_value(self).expect("settings serialise");
        for (section, keys) in tree.as_object().into_iter().flatten() {
            for (key, value) in keys.as_object().into_iter().flatten() {
                let value = match value {
                    _ if key == "url" => continue,
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => continue,
                    other => other.to_string(),
                };
                env.push((
                    format!("RW_{}__{}", section.to_uppercase(), key.to_uppercase()),
                    value,
                ));
            }
        }
        env
    }

    /// The shipped defaults, ignoring the environment.
    pub fn defaults() -> Settings {
        Figment::from(Toml::string(DEFAULTS))
            .extract()
            .expect("config/default.toml is valid")
    }
}

/// A path setting: an empty value is no path.
fn path_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let path = Option::<PathBuf>::deserialize(d)?;
    Ok(path.filter(|p| !p.as_os_str().is_empty()))
}

impl RedisSettings {
    /// The TLS files for `rediss://`.
    pub fn tls(&self) -> TlsPaths<'_> {
        TlsPaths {
            section: "redis",
            ca: self.tls_ca_file.as_deref(),
            cert: self.tls_cert_file.as_deref(),
            key: self.tls_key_file.as_deref(),
        }
    }
}

impl RedisSettings {
    /// Replicas each commit waits for: [`Self::wait_replicas`], or its
    /// default for the kind of Redis.
    pub fn replicas_to_wait(&self) -> u32 {
        self.wait_replicas.unwrap_or(u32::from(self.cluster))
    }

    /// [`Self::wait_timeout_ms`] as a duration.
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_timeout_ms)
    }
}

fn default_wait_timeout_ms() -> u64 {
    2000
}

impl AmqpSettings {
    /// The TLS files for `amqps://`.
    pub fn tls(&self) -> TlsPaths<'_> {
        TlsPaths {
            section: "amqp",
            ca: self.tls_ca_file.as_deref(),
            cert: self.tls_cert_file.as_deref(),
            key: self.tls_key_file.as_deref(),
        }
    }

    /// [`Self::confirm_timeout_ms`] as a duration.
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::defaults();
        assert_eq!(s.amqp.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.redis.url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(s.amqp.commands_queue, "reservations.commands");
        assert_eq!(s.amqp.dead_letter_queue, "reservations.commands.dead");
        assert_eq!(s.redis.idempotency_retention_secs, 7 * 24 * 3600);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error
    fn file_then_environment_override_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("extra.toml", "[amqp]\nprefetch = 7\ndelivery_limit = 5\n")?;
            jail.set_env("AMQP_URL", "amqp://other/%2f");
            jail.set_env("REDIS_URL", "redis://127.0.0.1:6379/3");
            jail.set_env("RW_AMQP__DELIVERY_LIMIT", "9");
            let s = Settings::load(Some(Path::new("extra.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.amqp.prefetch, 7);
            assert_eq!(s.amqp.delivery_limit, 9);
            assert_eq!(s.amqp.url.expose(), "amqp://other/%2f");
            assert_eq!(s.redis.url.expose(), "redis://127.0.0.1:6379/3");
            Ok(())
        });
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../README.md");
        let defaults: toml::Table = toml::from_str(DEFAULTS).unwrap();
        for (section, keys) in &defaults {
            for key in keys.as_table().unwrap().keys() {
                let env = format!("RW_{}__{}", section.to_uppercase(), key.to_uppercase());
                assert!(
                    readme.contains(&format!("`{section}.{key}`")),
                    "README.md's configuration reference lacks {section}.{key} ({env})"
                );
            }
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error
    fn to_env_round_trips_through_the_environment() {
        Jail::expect_with(|jail| {
            let mut s = Settings::defaults().under_prefix("t-1");
            s.amqp.url = SecretUrl::new("amqp://u:secret@h:1/v");
            s.amqp.prefetch = 3;
            s.worker.group_commit = false;
            s.log.format = LogFormat::Json;
            for (key, value) in s.to_env() {
                jail.set_env(key, value);
            }
            let back = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&s).unwrap()
            );
            assert_eq!(back.amqp.url.expose(), "amqp://u:secret@h:1/v");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Settings::load(Some(Path::new("/nonexistent/rw.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
