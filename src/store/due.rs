//! The due-time index: every live hold of every resource, by when it runs
//! out, so that the workers can find the holds that are due without looking
//! at the others.
//!
//! It is [`DUE_SHARDS`] sorted sets (score = `expires_at` in ms, member =
//! `[resource, hold, expires_at]`), a resource's holds all in one shard. A
//! hold enters it just before the transaction that takes it commits, so a
//! committed hold is always there; an entry whose transaction lost its race
//! costs the sweep one look. An entry leaves it only after the hold's
//! `expire` event is published (or the hold turned out not to need one), so
//! a worker dying mid-sweep loses nothing: the next sweep finds it again.

use super::error::corrupt;
use super::keys::DUE_SHARDS;
use super::{Store, StoreError};
use crate::domain::{CommandId, Millis, ResourceId};
use crate::message::OutgoingEvent;
use std::collections::BTreeMap;

/// One entry of the due-time index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// The hold's resource.
    pub resource: ResourceId,
    /// The hold.
    pub hold: CommandId,
    /// When it runs out.
    pub expires_at: Millis,
    /// The shard it is in.
    shard: usize,
    /// The member, as stored.
    member: String,
}

/// What one look at the index found.
#[derive(Debug, Clone, Default)]
pub struct DueSweep {
    /// Redis's time when it looked.
    pub now: Millis,
    /// Entries due by then, grouped by resource, earliest first within each.
    pub by_resource: BTreeMap<ResourceId, Vec<DueEntry>>,
    /// Whether some shard had more due entries than were read.
    pub more: bool,
}

impl Store {
    /// Redis's clock, in ms since the Unix epoch: the one clock every
    /// replica judges holds by.
    pub async fn time(&self) -> Result<Millis, StoreError> {
        let mut conn = self.pool.get().await?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut *conn).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// The entries due now, at most `limit` per shard.
    pub async fn due(&self, limit: usize) -> Result<DueSweep, StoreError> {
        let now = self.time().await?;
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for shard in 0..DUE_SHARDS {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.keys.due_index(shard))
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let shards: Vec<Vec<String>> = pipe.query_async(&mut *conn).await?;
        let mut sweep = DueSweep {
            now,
            ..DueSweep::default()
        };
        for (shard, members) in shards.into_iter().enumerate() {
            sweep.more |= members.len() >= limit;
            for member in members {
                let (resource, hold, expires_at): (ResourceId, CommandId, Millis) =
                    serde_json::from_str(&member)
                        .map_err(|e| corrupt(&self.keys.due_index(shard), e))?;
                sweep
                    .by_resource
                    .entry(resource.clone())
                    .or_default()
                    .push(DueEntry {
                        resource,
                        hold,
                        expires_at,
                        shard,
                        member,
                    });
            }
        }
        Ok(sweep)
    }

    /// The `expire` events recorded for `holds` of `resource`, where there
    /// is one: `None` for a hold that was confirmed or cancelled in time,
    /// or never taken.
    pub async fn expiries(
        &self,
        resource: &ResourceId,
        holds: &[&CommandId],
    ) -> Result<Vec<Option<OutgoingEvent>>, StoreError> {
        let keys: Vec<String> = holds
            .iter()
            .map(|h| self.keys.expiry(resource, h))
            .collect();
        let mut conn = self.pool.get().await?;
        let found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut *conn)
            .await?;
        keys.iter()
            .zip(found)
            .map(|(key, json)| {
                json.map(|json| serde_json::from_str(&json).map_err(|e| corrupt(key, e)))
                    .transpose()
            })
            .collect()
    }

    /// Takes entries out of the index: their holds need no more work.
    pub async fn forget_due(&self, entries: &[DueEntry]) -> Result<(), StoreError> {
        let mut by_shard: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for e in entries {
            by_shard.entry(e.shard).or_default().push(&e.member);
        }
        let mut pipe = redis::pipe();
        for (shard, members) in by_shard {
            pipe.cmd("ZREM")
                .arg(self.keys.due_index(shard))
                .arg(members)
                .ignore();
        }
        let mut conn = self.pool.get().await?;
        pipe.query_async::<()>(&mut *conn).await?;
        Ok(())
    }

    /// How many entries the index holds: live holds, and those whose
    /// expiry is not yet published.
    pub async fn due_index_len(&self) -> Result<u64, StoreError> {
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for shard in 0..DUE_SHARDS {
            pipe.zcard(self.keys.due_index(shard));
        }
        let sizes: Vec<u64> = pipe.query_async(&mut *conn).await?;
        Ok(sizes.iter().sum())
    }
}
