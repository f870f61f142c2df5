//! Every setting checked at load, with an error that names the key and what
//! it may be.

use super::{Settings, TlsPaths};
use std::fmt;
use std::ops::RangeInclusive;

/// One setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `section.key`.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env = match self.key {
            "amqp.url" => "AMQP_URL".to_string(),
            "redis.url" => "REDIS_URL".to_string(),
            key => format!("RW_{}", key.to_uppercase().replacen('.', "__", 1)),
        };
        write!(f, "{} ({env}) {}", self.key, self.detail)
    }
}

/// Everything wrong with `s`, in key order.
pub fn problems(s: &Settings) -> Vec<Problem> {
    let mut p = Checks(Vec::new());
    let (a, r, w) = (&s.amqp, &s.redis, &s.worker);
    p.urls("amqp.url", &a.url, &["amqp", "amqps"]);
    p.range("amqp.prefetch", a.prefetch.into(), 1..=65_535);
    for (key, name) in [
        ("amqp.commands_exchange", &a.commands_exchange),
        ("amqp.commands_queue", &a.commands_queue),
        ("amqp.dead_letter_exchange", &a.dead_letter_exchange),
        ("amqp.dead_letter_queue", &a.dead_letter_queue),
        ("amqp.events_exchange", &a.events_exchange),
        ("amqp.unrouted_exchange", &a.unrouted_exchange),
        ("amqp.unrouted_queue", &a.unrouted_queue),
        ("amqp.partition_exchange", &a.partition_exchange),
    ] {
        p.name(key, name);
    }
    p.range(
        "amqp.delivery_limit",
        a.delivery_limit.into(),
        1..=1_000_000,
    );
    p.range(
        "amqp.unrouted_retention_secs",
        a.unrouted_retention_secs,
        1..=2_147_483,
    );
    p.range("amqp.partitions", a.partitions.into(), 0..=1024);
    p.range(
        "amqp.confirm_timeout_ms",
        a.confirm_timeout_ms,
        1..=3_600_000,
    );
    p.tls(&a.url, "amqps", a.tls());
    p.urls("redis.url", &r.url, &["redis", "rediss"]);
    p.tls(&r.url, "rediss", r.tls());
    let urls = r.url.split();
    if r.cluster {
        if urls
            .iter()
            .any(|u| database(u.expose()).is_some_and(|db| db != "0"))
        {
            p.fail(
                "redis.url",
                "names a database other than 0, which a Redis Cluster does not have \
                 (redis.cluster = true): give each test or tenant its own redis.key_prefix",
            );
        }
    } else if urls.len() > 1 {
        p.fail(
            "redis.url",
            "lists several URLs, which are the seed nodes of a Redis Cluster: \
             set redis.cluster = true (RW_REDIS__CLUSTER=true), or give one URL",
        );
    }
    p.range("redis.wait_timeout_ms", r.wait_timeout_ms, 1..=60_000);
    if r.key_prefix.contains(['{', '}']) {
        p.fail(
            "redis.key_prefix",
            "must not contain { or } (it precedes the hash tag)",
        );
    }
    p.range("redis.pool_size", r.pool_size as u64, 1..=1024);
    p.range(
        "redis.idempotency_retention_secs",
        r.idempotency_retention_secs,
        1..=315_360_000,
    );
    p.range(
        "worker.max_commit_attempts",
        w.max_commit_attempts.into(),
        1..=1_000_000,
    );
    p.range("worker.retry_base_ms", w.retry_base_ms, 1..=60_000);
    p.range(
        "worker.retry_max_ms",
        w.retry_max_ms,
        w.retry_base_ms..=600_000,
    );
    p.range("worker.reconnect_base_ms", w.reconnect_base_ms, 1..=60_000);
    p.range(
        "worker.reconnect_max_ms",
        w.reconnect_max_ms,
        w.reconnect_base_ms..=600_000,
    );
    p.range("worker.max_batch", w.max_batch as u64, 1..=10_000);
    p.range("worker.committers", w.committers as u64, 1..=1_000);
    p.range(
        "worker.shutdown_grace_secs",
        w.shutdown_grace_secs,
        0..=3600,
    );
    p.range("worker.sweep_interval_ms", w.sweep_interval_ms, 10..=1000);
    p.range("worker.sweep_batch", w.sweep_batch as u64, 1..=100_000);
    p.range("worker.threads", w.threads as u64, 0..=1024);
    if s.http.bind.parse::<std::net::IpAddr>().is_err() {
        p.fail(
            "http.bind",
            format!("must be an IP address, not {:?}", s.http.bind),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&s.log.level) {
        p.fail("log.level", format!("is not a tracing filter: {e}"));
    }
    p.0
}

/// The database a `redis://host:port/N` URL names, if it names one.
fn database(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let db = path.split(['?', '#']).next()?;
    (!db.is_empty()).then_some(db)
}

struct Checks(Vec<Problem>);

impl Checks {
    fn fail(&mut self, key: &'static str, detail: impl Into<String>) {
        self.0.push(Problem {
            key,
            detail: detail.into(),
        });
    }

    fn range(&mut self, key: &'static str, value: u64, allowed: RangeInclusive<u64>) {
        if !allowed.contains(&value) {
            self.fail(
                key,
                format!(
                    "is {value}; it must be from {} to {}",
                    allowed.start(),
                    allowed.end()
                ),
            );
        }
    }

    /// TLS files only for a TLS URL, a certificate with its key, and files
    /// that exist.
    fn tls(&mut self, urls: &super::SecretUrl, scheme: &str, paths: TlsPaths<'_>) {
        let [ca, cert, key] = paths.keys();
        let tls = urls
            .split()
            .iter()
            .all(|u| u.expose().starts_with(&format!("{scheme}://")));
        for (key, path) in [(ca, paths.ca), (cert, paths.cert), (key, paths.key)] {
            let Some(path) = path else { continue };
            if !tls {
                self.fail(
                    key,
                    format!(
                        "is set, but the URL is not {scheme}://: TLS files apply only to TLS URLs"
                    ),
                );
            } else if !path.is_file() {
                self.fail(
                    key,
                    format!("names {}, which is not a readable file", path.display()),
                );
            }
        }
        if paths.cert.is_some() != paths.key.is_some() {
            self.fail(
                cert,
                format!("and {key} go together: set both for mutual TLS, or neither"),
            );
        }
    }

    fn name(&mut self, key: &'static str, name: &str) {
        if name.is_empty() || name.len() > 255 {
            self.fail(key, "must be 1 to 255 bytes long");
        }
    }

    /// A URL, or a comma-separated list of them, with one of `schemes`.
    fn urls(&mut self, key: &'static str, urls: &super::SecretUrl, schemes: &[&str]) {
        for url in urls.split() {
            let scheme = url
                .expose()
                .split_once("://")
                .map(|(scheme, _)| scheme.trim());
            if !scheme.is_some_and(|s| schemes.contains(&s)) {
                self.fail(
                    key,
                    format!(
                        "must be {} URLs (comma-separated), not {:?}",
                        schemes.join(":// or ") + "://",
                        url.redacted()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_wrong(adjust: impl FnOnce(&mut Settings)) -> Vec<String> {
        let mut s = Settings::defaults();
        adjust(&mut s);
        problems(&s).into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(keys_wrong(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn each_invalid_setting_is_named_with_its_range() {
        type Adjust = Box<dyn FnOnce(&mut Settings)>;
        let cases: Vec<(Adjust, &str)> = vec![
            (
                Box::new(|s| s.amqp.prefetch = 0),
                "amqp.prefetch (RW_AMQP__PREFETCH) is 0; it must be from 1 to 65535",
            ),
            (
                Box::new(|s| s.amqp.delivery_limit = 0),
                "amqp.delivery_limit (RW_AMQP__DELIVERY_LIMIT) is 0",
            ),
            (
                Box::new(|s| s.amqp.unrouted_retention_secs = 0),
                "amqp.unrouted_retention_secs",
            ),
            (
                Box::new(|s| s.amqp.confirm_timeout_ms = 0),
                "amqp.confirm_timeout_ms",
            ),
            (Box::new(|s| s.amqp.partitions = 5000), "amqp.partitions"),
            (
                Box::new(|s| s.amqp.events_exchange.clear()),
                "amqp.events_exchange (RW_AMQP__EVENTS_EXCHANGE) must be 1 to 255 bytes long",
            ),
            (
                Box::new(|s| s.amqp.url = super::super::SecretUrl::new("http://u:pw@h/")),
                "amqp.url (AMQP_URL) must be amqp:// or amqps:// URLs",
            ),
            (
                Box::new(|s| s.redis.url = super::super::SecretUrl::new("tcp://h")),
                "redis.url (REDIS_URL) must be redis:// or rediss://",
            ),
            (
                Box::new(|s| s.redis.key_prefix = "a{b}".into()),
                "redis.key_prefix",
            ),
            (Box::new(|s| s.redis.pool_size = 0), "redis.pool_size"),
            (
                Box::new(|s| s.redis.url = super::super::SecretUrl::new("redis://a,redis://b")),
                "redis.url (REDIS_URL) lists several URLs, which are the seed nodes of a Redis Cluster: set redis.cluster = true",
            ),
            (
                Box::new(|s| {
                    s.redis.cluster = true;
                    s.redis.url = super::super::SecretUrl::new("redis://a:7000,redis://b:7001/3");
                }),
                "redis.url (REDIS_URL) names a database other than 0",
            ),
            (
                Box::new(|s| s.redis.wait_timeout_ms = 0),
                "redis.wait_timeout_ms (RW_REDIS__WAIT_TIMEOUT_MS) is 0",
            ),
            (
                Box::new(|s| s.redis.idempotency_retention_secs = 0),
                "redis.idempotency_retention_secs (RW_REDIS__IDEMPOTENCY_RETENTION_SECS) is 0; it must be from 1 to",
            ),
            (
                Box::new(|s| s.worker.max_commit_attempts = 0),
                "worker.max_commit_attempts",
            ),
            (
                Box::new(|s| s.worker.retry_base_ms = 0),
                "worker.retry_base_ms",
            ),
            (
                Box::new(|s| s.worker.retry_max_ms = 0),
                "worker.retry_max_ms (RW_WORKER__RETRY_MAX_MS) is 0; it must be from 1 to 600000",
            ),
            (
                Box::new(|s| s.worker.reconnect_base_ms = 0),
                "worker.reconnect_base_ms",
            ),
            (
                Box::new(|s| s.worker.reconnect_max_ms = 1),
                "worker.reconnect_max_ms (RW_WORKER__RECONNECT_MAX_MS) is 1; it must be from 100 to",
            ),
            (Box::new(|s| s.worker.max_batch = 0), "worker.max_batch"),
            (
                Box::new(|s| s.worker.shutdown_grace_secs = 7200),
                "worker.shutdown_grace_secs",
            ),
            (
                Box::new(|s| s.worker.sweep_interval_ms = 5000),
                "worker.sweep_interval_ms",
            ),
            (Box::new(|s| s.worker.sweep_batch = 0), "worker.sweep_batch"),
            (Box::new(|s| s.worker.threads = 1025), "worker.threads"),
            (
                Box::new(|s| s.http.bind = "localhost".into()),
                "http.bind (RW_HTTP__BIND) must be an IP address",
            ),
            (
                Box::new(|s| s.log.level = "info,[[".into()),
                "log.level (RW_LOG__LEVEL) is not a tracing filter",
            ),
        ];
        for (adjust, expected) in cases {
            let wrong = keys_wrong(adjust);
            assert_eq!(wrong.len(), 1, "{expected}: {wrong:?}");
            assert!(
                wrong[0].starts_with(expected),
                "{:?} should start with {expected:?}",
                wrong[0]
            );
        }
    }

    #[test]
    fn tls_files_need_a_tls_url_a_pair_and_a_file() {
        let this_file = std::path::PathBuf::from(file!());
        let file = std::env::current_dir().unwrap().join(this_file);
        let wrong = keys_wrong(|s| s.amqp.tls_ca_file = Some(file.clone()));
        assert_eq!(wrong.len(), 1);
        assert!(
            wrong[0].starts_with(
                "amqp.tls_ca_file (RW_AMQP__TLS_CA_FILE) is set, but the URL is not amqps://"
            ),
            "{wrong:?}"
        );
        let wrong = keys_wrong(|s| {
            s.redis.url = super::super::SecretUrl::new("rediss://h:6380/0");
            s.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
            s.redis.tls_cert_file = Some(file.clone());
        });
        assert_eq!(wrong.len(), 2, "{wrong:?}");
        assert!(
            wrong[0].contains("/nonexistent/ca.pem, which is not a readable file"),
            "{wrong:?}"
        );
        assert!(
            wrong[1].starts_with(
                "redis.tls_cert_file (RW_REDIS__TLS_CERT_FILE) and redis.tls_key_file go together"
            ),
            "{wrong:?}"
        );
        let fine = keys_wrong(|s| {
            s.redis.url = super::super::SecretUrl::new("rediss://h:6380/0");
            s.redis.tls_ca_file = Some(file.clone());
        });
        assert!(fine.is_empty(), "{fine:?}");
    }

    #[test]
    fn a_bad_url_in_a_list_is_reported_without_its_password() {
        let wrong = keys_wrong(|s| {
            s.amqp.url = super::super::SecretUrl::new("amqp://u:p@a/v,amqx://u:secret@b/v")
        });
        assert_eq!(wrong.len(), 1);
        assert!(!wrong[0].contains("secret"), "{}", wrong[0]);
    }
}
