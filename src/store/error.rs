//! Why Redis could not do what was asked.

use deadpool_redis::PoolError;

/// Any error, boxed: the cause of a failure, kept for logs.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why Redis could not do what was asked. None of these is a business "no":
/// the commands concerned stay unacked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A failure that passes by itself: Redis unreachable, the connection
    /// broken (the outcome of an EXEC in flight is then unknown, so the next
    /// attempt re-reads the records), or an error reply a server gives while
    /// it loads, fails over, is out of memory or refuses the credentials.
    #[error("redis is unavailable")]
    Unavailable(#[source] Cause),
    /// The store has lost its data, or was never set up: the marker only
    /// `setup` writes is missing. Nothing may be decided against it until
    /// Redis is restored or `setup` accepts the empty store.
    #[error(
        "the store is not initialised: its marker {key} is missing (Redis lost its data, or \
         `reservation-worker setup` never ran); restore Redis, or run setup to accept an empty store"
    )]
    Uninitialised {
        /// The marker key.
        key: String,
    },
    /// Redis answered with an error that will not pass by itself.
    #[error("redis refused the request")]
    Failed(#[source] redis::RedisError),
    /// A key holds data this worker cannot read.
    #[error("cannot read {key}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        #[source]
        source: Cause,
    },
}

impl StoreError {
    /// Whether waiting can cure it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Uninitialised { .. }
        )
    }
}

/// Error replies a server gives while a condition that passes lasts: loading
/// a dump, a failover or resharding in progress, out of memory (and the
/// EXECABORT that causes), a failed background save, a busy script, refused
/// credentials or permissions that an operator is fixing.
const TRANSIENT_CODES: [&str; 13] = [
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "OOM",
    "MISCONF",
    "BUSY",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
];

/// Whether a Redis error can pass by itself. An EXECABORT or a pipeline
/// error is judged by the errors inside it.
fn is_transient(e: &redis::RedisError) -> bool {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::AuthenticationFailed
    {
        return true;
    }
    let inner: Vec<String> = e
        .clone()
        .into_server_errors()
        .map(|items| items.iter().map(|(_, s)| s.code().to_owned()).collect())
        .unwrap_or_default();
    if inner.is_empty() {
        e.code().is_some_and(|code| TRANSIENT_CODES.contains(&code))
    } else {
        inner
            .iter()
            .all(|code| TRANSIENT_CODES.contains(&code.as_str()))
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if is_transient(&e) {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Failed(e)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(Box::new(other)),
        }
    }
}

/// A reply as `T`, or the key it came from is unreadable.
pub fn parse<T: redis::FromRedisValue>(value: redis::Value, key: &str) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|e| corrupt(key, e))
}

/// `key` holds something unreadable.
pub fn corrupt(key: &str, source: impl Into<Cause>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: &str) -> redis::RedisError {
        redis::make_extension_error(code.to_owned(), Some("detail".into()))
    }

    #[test]
    fn error_replies_that_pass_by_themselves_are_transient() {
        for code in TRANSIENT_CODES {
            assert!(StoreError::from(reply(code)).is_transient(), "{code}");
        }
    }

    #[test]
    fn other_error_replies_are_not() {
        for code in ["ERR", "WRONGTYPE", "NOSCRIPT", "CROSSSLOT"] {
            assert!(!StoreError::from(reply(code)).is_transient(), "{code}");
        }
    }

    #[test]
    fn lost_connections_and_missing_markers_are_transient() {
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(StoreError::from(io).is_transient());
        let lost = StoreError::Uninitialised { key: "m".into() };
        assert!(lost.is_transient());
        assert!(lost.to_string().contains("run setup"), "{lost}");
    }
}
