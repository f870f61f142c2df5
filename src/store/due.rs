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

impl Store {
    /// Redis's clock, in ms since the Unix epoch: the one clock every
    /// replica judges holds by.
    pub async fn time(&self) -> Result<Millis, StoreError> {
        let mut conn = self.router.side(&self.keys.due_index(0)).await?;
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Redis's clock at the master of each resource, in ms: on a cluster
    /// every master has its own, and a hold is due when its own master says
    /// so. `None` on a single Redis, whose one clock [`Store::time`] read.
    pub async fn clocks(
        &self,
        resources: &[ResourceId],
    ) -> Result<Option<Vec<Millis>>, StoreError> {
        if !self.keys.is_cluster() {
            return Ok(None);
        }
        let keys: Vec<String> = resources.iter().map(|r| self.keys.state(r)).collect();
        let times: Vec<(u64, u64)> = self.each(&keys, |_, _| redis::cmd("TIME")).await?;
        Ok(Some(
            times
                .into_iter()
                .map(|(secs, micros)| secs * 1000 + micros / 1000)
                .collect(),
        ))
    }

    /// The entries of shard `shard` due at `now`, earliest first, at
    /// most `limit`.
    pub async fn due_in(
        &self,
        shard: usize,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let key = self.keys.due_index(shard);
        let (members,): (Vec<String>,) = self
            .router
            .follow(
                &key,
                redis::pipe()
                    .cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            )
            .await?;
        members
            .into_iter()
            .map(|member| {
                let (resource, hold, expires_at): (ResourceId, CommandId, Millis) =
                    serde_json::from_str(&member).map_err(|e| corrupt(&key, e))?;
                Ok(DueEntry {
                    resource,
                    hold,
                    expires_at,
                    shard,
                    member,
                })
            })
            .collect()
    }

    /// The `expire` event recorded for each entry's hold, where there is
    /// one: `None` for a hold that was confirmed or cancelled in time, or
    /// never taken. One round trip.
    pub async fn expiries(
        &self,
        entries: &[DueEntry],
    ) -> Result<Vec<Option<OutgoingEvent>>, StoreError> {
        let keys: Vec<String> = entries
            .iter()
            .map(|e| self.keys.expiry(&e.resource, &e.hold))
            .collect();
        let found: Vec<Option<String>> = self
            .each(&keys, |_, key| {
                let mut get = redis::cmd("GET");
                get.arg(key);
                get
            })
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
        let shards: Vec<String> = by_shard.keys().map(|s| self.keys.due_index(*s)).collect();
        let members: Vec<&Vec<&str>> = by_shard.values().collect();
        let _: Vec<redis::Value> = self
            .each(&shards, |i, key| {
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(key).arg(members[i]);
                zrem
            })
            .await?;
        Ok(())
    }

    /// How many entries the index holds: live holds, and those whose
    /// expiry is not yet published.
    pub async fn due_index_len(&self) -> Result<u64, StoreError> {
        let shards: Vec<String> = (0..DUE_SHARDS).map(|s| self.keys.due_index(s)).collect();
        let sizes: Vec<u64> = self
            .each(&shards, |_, key| {
                let mut zcard = redis::cmd("ZCARD");
                zcard.arg(key);
                zcard
            })
            .await?;
        Ok(sizes.iter().sum())
    }
}
