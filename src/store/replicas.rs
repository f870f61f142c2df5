//! Who consumes which partition: replicas announce themselves in a sorted
//! set with an expiry (their heartbeat), and each partition has a lease
//! that one replica holds while it consumes it. Single keys, one Lua script
//! each, by Redis's clock.

use super::{Store, StoreError};

/// Announces `me` as live for `ttl_ms` more, forgets replicas whose time
/// ran out, and returns the live ones, sorted.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Takes the lease if free, or extends it if `me` holds it: 1; else 0.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Gives the lease back if `me` holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl Store {
    /// `me`'s heartbeat: live for `ttl_ms` more. Returns every live
    /// replica's name, sorted.
    pub async fn heartbeat(&self, me: &str, ttl_ms: u64) -> Result<Vec<String>, StoreError> {
        let key = self.keys.replicas();
        let mut conn = self.router.side(&key).await?;
        let mut live: Vec<String> = redis::Script::new(HEARTBEAT)
            .key(&key)
            .arg(me)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        // By name: the set's own order is by expiry, which changes.
        live.sort_unstable();
        Ok(live)
    }

    /// `me` leaves at once, rather than when its heartbeat runs out.
    pub async fn leave(&self, me: &str) -> Result<(), StoreError> {
        let key = self.keys.replicas();
        let mut conn = self.router.side(&key).await?;
        redis::cmd("ZREM")
            .arg(&key)
            .arg(me)
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Takes partition `p`'s lease for `ttl_ms`, or extends it: `true` if
    /// `me` holds it now.
    pub async fn claim_partition(
        &self,
        p: usize,
        me: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = self.keys.partition_lease(p);
        let mut conn = self.router.side(&key).await?;
        let held: i64 = redis::Script::new(CLAIM)
            .key(&key)
            .arg(me)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    /// Gives partition `p`'s lease back, if `me` holds it.
    pub async fn release_partition(&self, p: usize, me: &str) -> Result<(), StoreError> {
        let key = self.keys.partition_lease(p);
        let mut conn = self.router.side(&key).await?;
        let _: i64 = redis::Script::new(RELEASE)
            .key(&key)
            .arg(me)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
