//! Key names, under a configurable prefix.
//!
//! Every key of resource `R` is `<prefix>{<tag of R>}:<suffix>`, where the
//! tag is `R` with `%`, `{` and `}` percent-encoded (`%25`, `%7B`, `%7D`).
//! So the tag never contains a brace: it is exactly the Redis Cluster hash
//! tag, never empty, and no resource id can name or share another's keys
//! (`victim}:cmd:x` is the tag `victim%7D:cmd:x`, a resource of its own).
//! The encoding is injective, and readable for the ids people use. The
//! setup marker's tag, `%setup`, is one no encoding produces (a `%` is
//! always followed by two hex digits).

use crate::domain::{BudgetId, CommandId, CustomerId, DueHold, ResourceId};
use std::borrow::Cow;

/// Shards of the due-time index: the holds of a rush spread over them, and
/// one sweep reads them all in one round trip.
pub const DUE_SHARDS: usize = 16;

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The keys of every resource, under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// On a Redis Cluster, every slot has a setup marker of its own, so a
    /// transaction can read the marker of its own slot under its WATCH.
    cluster: bool,
}

impl Keys {
    /// Keys under `prefix`, for a single Redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: false,
        }
    }

    /// Keys under `prefix`, for a Redis Cluster when `cluster`.
    pub fn for_cluster(prefix: impl Into<String>, cluster: bool) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster,
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, r: &ResourceId, suffix: &str) -> String {
        self.key_of(r, &[suffix])
    }

    /// `<prefix>{<tag>}:<parts>`, allocated once at its final size: a
    /// transaction makes a few keys per command.
    fn key_of(&self, r: &ResourceId, parts: &[&str]) -> String {
        let tag = tag(r);
        let length = parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + 3 + length);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(&tag);
        key.push_str("}:");
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// The scalar state.
    pub fn state(&self, r: &ResourceId) -> String {
        self.key(r, "state")
    }

    /// Seats per customer.
    pub fn holdings(&self, r: &ResourceId) -> String {
        self.key(r, "holdings")
    }

    /// Accepted reservations.
    pub fn reservations(&self, r: &ResourceId) -> String {
        self.key(r, "reservations")
    }

    /// The event history stream.
    pub fn history(&self, r: &ResourceId) -> String {
        self.key(r, "history")
    }

    /// The commands accepted, kept for good (hash: command id ->
    /// `version:body hash`).
    pub fn applied(&self, r: &ResourceId) -> String {
        self.key(r, "applied")
    }

    /// The marker that only `setup` writes: while it exists, the store
    /// holds the data workers decided on. Every transaction reads it under
    /// its WATCH. On a Redis Cluster it is the marker of the resource's
    /// slot: a master that lost its data has lost its slots' markers.
    pub fn marker(&self, r: &ResourceId) -> String {
        if self.cluster {
            self.slot_marker(slot(&self.state(r)))
        } else {
            self.marker_of_any()
        }
    }

    /// The setup marker a budget's transactions read under their WATCH.
    pub fn budget_marker(&self, b: &BudgetId) -> String {
        if self.cluster {
            self.slot_marker(slot(&self.budget(b)))
        } else {
            self.marker_of_any()
        }
    }

    /// The marker, where one key serves every resource (a single Redis).
    pub fn marker_of_any(&self) -> String {
        format!("{}{{%setup}}:initialised", self.prefix)
    }

    /// Whether the keys are laid out for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The setup marker of hash slot `slot` (a Redis Cluster).
    pub fn slot_marker(&self, slot: u16) -> String {
        format!("{}{{{}}}:initialised", self.prefix, slot_tag(slot))
    }

    /// The readiness probe's key in hash slot `slot` (a Redis Cluster).
    pub fn slot_probe(&self, slot: u16) -> String {
        format!("{}{{{}}}:probe", self.prefix, slot_tag(slot))
    }

    /// The index shard a resource's holds go to.
    pub fn due_shard(&self, r: &ResourceId) -> usize {
        let hash = r.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % DUE_SHARDS as u64) as usize
    }

    /// A key the readiness probe writes to, to learn whether Redis takes
    /// writes.
    pub fn probe(&self) -> String {
        format!("{}{{%setup}}:probe", self.prefix)
    }

    /// The resource's live holds by when they run out (sorted set: score =
    /// `expires_at` in ms, member = the hold, see `store::hold_member`).
    pub fn holds(&self, r: &ResourceId) -> String {
        self.key(r, "holds")
    }

    /// A hold's expiry: its `expire` event, kept for good.
    pub fn expiry(&self, r: &ResourceId, hold: &CommandId) -> String {
        self.key_of(r, &["expiry:", hold.as_str()])
    }

    /// Shard `n` of the due-time index of every resource's holds, which the
    /// workers sweep (sorted set: score = `expires_at`, member =
    /// `[resource, hold, expires_at]`).
    pub fn due_index(&self, n: usize) -> String {
        format!("{}{{%due-{n}}}:holds", self.prefix)
    }

    /// The live replicas (sorted set: score = when the heartbeat runs out,
    /// member = the replica's name).
    pub fn replicas(&self) -> String {
        format!("{}{{%replicas}}:live", self.prefix)
    }

    /// The lease of partition `p`: the name of the replica consuming it.
    pub fn partition_lease(&self, p: usize) -> String {
        format!("{}{{%replicas}}:partition-{p}", self.prefix)
    }

    /// The member of the due-time index that stands for `hold` of `r`.
    /// It names the hold's `expires_at`, so an entry left by a transaction
    /// that lost its race never shadows the one its retry wrote.
    pub fn due_member(&self, r: &ResourceId, hold: &DueHold) -> String {
        serde_json::json!([r, hold.id, hold.expires_at]).to_string()
    }

    /// One command's idempotency record.
    pub fn record(&self, r: &ResourceId, c: &CommandId) -> String {
        self.key_of(r, &["cmd:", c.as_str()])
    }

    /// A key of budget `b`: under the hash tag `%budget:<encoded id>`,
    /// which no resource's tag can be (a resource's `%` is always followed
    /// by two hex digits).
    fn budget_key(&self, b: &BudgetId, suffix: &str) -> String {
        format!("{}{{%budget:{}}}:{suffix}", self.prefix, encode(b.as_str()))
    }

    /// A budget's cap and version (string, JSON).
    pub fn budget(&self, b: &BudgetId) -> String {
        self.budget_key(b, "state")
    }

    /// A budget's `define_budget` events (stream).
    pub fn budget_history(&self, b: &BudgetId) -> String {
        self.budget_key(b, "history")
    }

    /// The `define_budget` commands a budget accepted, kept for good
    /// (hash: command id -> `version:body hash`).
    pub fn budget_applied(&self, b: &BudgetId) -> String {
        self.budget_key(b, "applied")
    }

    /// A `define_budget` command's idempotency record.
    pub fn budget_record(&self, b: &BudgetId, c: &CommandId) -> String {
        self.budget_key(b, &format!("cmd:{c}"))
    }

    /// One customer's spending on a budget (hash: `spent` -> the total
    /// counted against the cap, `e:[resource, command]` -> that take's
    /// entry).
    pub fn spending(&self, b: &BudgetId, customer: &CustomerId) -> String {
        self.budget_key(b, &format!("spend:{customer}"))
    }

    /// The pattern of every budget's state key, for SCAN.
    pub fn budgets_pattern(&self) -> String {
        format!("{}{{%budget:*}}:state", glob_escape(&self.prefix))
    }

    /// The pattern of every spending key of budget `b`, for SCAN.
    pub fn spending_pattern(&self, b: &BudgetId) -> String {
        glob_escape(&self.budget_key(b, "spend:")) + "*"
    }

    /// The pattern of every resource's state key, for SCAN (budget and
    /// index keys do not match: their tags start with `%` and a letter).
    pub fn states_pattern(&self) -> String {
        format!("{}{{*}}:state", glob_escape(&self.prefix))
    }

    /// The resource a state key belongs to, when it is one.
    pub fn resource_of_state(&self, key: &str) -> Option<ResourceId> {
        let tag = key
            .strip_prefix(&self.prefix)?
            .strip_prefix('{')?
            .strip_suffix("}:state")?;
        if tag.starts_with("%budget:") || tag.starts_with("%setup") || tag.starts_with("%due-") {
            return None;
        }
        ResourceId::try_from(decode(tag)?).ok()
    }

    /// The budget a budget state key belongs to.
    pub fn budget_of_state(&self, key: &str) -> Option<BudgetId> {
        let tag = key
            .strip_prefix(&self.prefix)?
            .strip_prefix("{%budget:")?
            .strip_suffix("}:state")?;
        BudgetId::try_from(decode(tag)?).ok()
    }

    /// The customer a spending key of budget `b` belongs to.
    pub fn customer_of_spending(&self, b: &BudgetId, key: &str) -> Option<CustomerId> {
        let customer = key.strip_prefix(&self.budget_key(b, "spend:"))?;
        CustomerId::try_from(customer).ok()
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag,
/// or of the whole key when it has none, modulo [`SLOTS`].
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key.find('{').and_then(|open| {
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &bytes[open + 1..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// A hash tag whose slot is `slot`: `%s<n>` for the first `n` that lands
/// there. No resource's tag can be one (a resource's `%` is always followed
/// by two hex digits). The table is built once, in a few milliseconds.
fn slot_tag(wanted: u16) -> String {
    static TABLE: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = vec![u32::MAX; usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n = 0u32;
        while missing > 0 {
            let s = usize::from(slot(&format!("{{%s{n}}}")));
            if table[s] == u32::MAX {
                table[s] = n;
                missing -= 1;
            }
            n += 1;
        }
        table
    });
    format!("%s{}", table[usize::from(wanted % SLOTS)])
}

/// `s` with the characters SCAN's MATCH treats specially escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The inverse of [`encode`]; `None` if `tag` is not an encoding.
fn decode(tag: &str) -> Option<String> {
    let mut out = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let c = match rest.get(i..i + 3)? {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        };
        out.push(c);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// A resource's hash tag: its id with `%`, `{` and `}` percent-encoded.
pub fn tag(r: &ResourceId) -> Cow<'_, str> {
    encode(r.as_str())
}

/// An id with `%`, `{` and `}` percent-encoded.
fn encode(id: &str) -> Cow<'_, str> {
    if !id.contains(['%', '{', '}']) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> ResourceId {
        ResourceId::try_from(s).unwrap()
    }

    /// The hash tag Redis Cluster takes from `key`: what lies between the
    /// first `{` and the next `}`, if not empty.
    fn cluster_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }

    #[test]
    fn plain_ids_stay_readable() {
        let keys = Keys::new("rw:");
        assert_eq!(keys.state(&rid("concert-42")), "rw:{concert-42}:state");
    }

    #[test]
    fn no_id_can_name_another_resources_keys() {
        let keys = Keys::new("rw:");
        let victim = rid("victim");
        let attacker = rid("victim}:cmd:x");
        let theirs = [
            keys.state(&victim),
            keys.holdings(&victim),
            keys.record(&victim, &CommandId::try_from("x").unwrap()),
        ];
        for key in [
            keys.state(&attacker),
            keys.holdings(&attacker),
            keys.reservations(&attacker),
            keys.history(&attacker),
            keys.applied(&attacker),
            keys.record(&attacker, &CommandId::try_from("x").unwrap()),
        ] {
            assert!(!theirs.contains(&key), "{key}");
            assert_eq!(cluster_tag(&key), Some("victim%7D:cmd:x"), "{key}");
        }
    }

    #[test]
    fn every_key_of_a_resource_has_exactly_its_tag() {
        let keys = Keys::new("p:");
        for id in ["}", "{", "}x{", "{}", "a{b}c", "%7D", "%", "é{"] {
            let r = rid(id);
            for key in [keys.state(&r), keys.history(&r), keys.applied(&r)] {
                let t = cluster_tag(&key).unwrap_or_else(|| panic!("{key} has a tag"));
                assert_eq!(t, tag(&r), "{key}");
                assert!(!t.contains(['{', '}']));
            }
        }
    }

    #[test]
    fn the_encoding_is_injective_and_never_the_markers_tag() {
        let ids = ["%", "%25", "{", "%7B", "}", "%7D", "%%", "%setup", "setup"];
        let tags: std::collections::HashSet<_> =
            ids.iter().map(|i| tag(&rid(i)).into_owned()).collect();
        assert_eq!(tags.len(), ids.len(), "{tags:?}");
        assert!(!tags.contains("%setup"));
        assert_eq!(
            cluster_tag(&Keys::new("p:").marker_of_any()),
            Some("%setup")
        );
    }

    #[test]
    fn slots_are_redis_clusters() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag hashes the whole key; the tag ends at the first `}`.
        assert_ne!(slot("foo{}{bar}"), slot("foo{}{bar}x"));
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
    }

    #[test]
    fn every_slot_has_a_marker_and_a_resource_reads_its_own_slots() {
        let keys = Keys::for_cluster("p:", true);
        for s in [0, 1, 5460, 5461, 10922, 16383] {
            assert_eq!(slot(&keys.slot_marker(s)), s);
            assert_eq!(slot(&keys.slot_probe(s)), s);
        }
        for id in ["concert-42", "a{b}c", "%"] {
            let r = rid(id);
            assert_eq!(slot(&keys.marker(&r)), slot(&keys.state(&r)), "{id}");
            assert!(keys.resource_of_state(&keys.marker(&r)).is_none());
        }
        let b = BudgetId::try_from("wallet").unwrap();
        assert_eq!(slot(&keys.budget_marker(&b)), slot(&keys.budget(&b)));
        let single = Keys::new("p:");
        assert_eq!(single.marker(&rid("x")), single.marker_of_any());
    }
}
