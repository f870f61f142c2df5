//! Why Redis could not do what was asked.

use deadpool_redis::PoolError;

/// Any error, boxed: the cause of a failure, kept for logs.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why Redis could not do what was asked. None of these is a business "no":
/// the commands concerned stay unacked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached, or the connection broke; the outcome of an
    /// EXEC in flight is unknown, so the next attempt re-reads the records.
    #[error("redis is unavailable")]
    Unavailable(#[source] Cause),
    /// Redis answered with an error.
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

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
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

/// `key` holds something unreadable.
pub fn corrupt(key: &str, source: impl Into<Cause>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        source: source.into(),
    }
}
