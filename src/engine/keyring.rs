//! Keys verified in memory: a live key read once from the database is kept, with its tenant
//! and the tenant's tokens of the period, so a request is authenticated without a database
//! round trip. Every instance keeps its memory in step with revocations and tenant changes made
//! anywhere by reading the database's change feed every [`SYNC_EVERY`]; the memory is trusted
//! only while that feed was read within [`MAX_LAG`], otherwise each request reads the database
//! (never a stale key).
//!
//! Why it holds: a revocation commits at T; every read of the feed that starts after T sees it
//! (reads start where the last successful one began, minus [`OVERLAP`] for commits that took
//! their stamp before and landed after). A request at t is served from memory only if a read
//! began after t − [`MAX_LAG`], so a key revoked at T is refused everywhere from
//! T + [`MAX_LAG`] + one read at the latest. A key read from the database while a change was
//! being applied is not kept ([`KeyRing::epoch`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio::time::Instant;

use crate::store::{KeyAuth, KeyChanges, Tenant};

/// How often an instance reads the change feed.
pub const SYNC_EVERY: Duration = Duration::from_millis(20);
/// How old the last successful read of the change feed may be for memory to be trusted.
pub const MAX_LAG: Duration = Duration::from_millis(75);
/// How far before the last read each read starts: a transaction takes its stamp before it
/// commits, so a change may land behind a read that already passed its stamp.
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// How long a tenant's tokens of the period read from the database stand (this instance adds
/// its own chats and runs to them at once; other instances' show within this).
pub const USAGE_FRESH: Duration = Duration::from_secs(1);
/// Most keys held; past it, memory starts again empty.
const MAX_KEYS: usize = 100_000;
/// Most change sets one read takes; a read that reaches it forgets everything.
pub const FEED_LIMIT: u32 = 1000;
/// A gap between successful reads after which memory starts again empty (the feed keeps an
/// hour of changes).
const RESYNC_AFTER: Duration = Duration::from_secs(60);

/// The keys, tenants and tokens held in memory, and the state of their sync.
#[derive(Default)]
pub(super) struct KeyRing {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Live keys by the hash of their secret.
    keys: HashMap<String, Held>,
    /// The hash of each key held, by key id.
    hashes: HashMap<String, String>,
    tenants: HashMap<String, HeldTenant>,
    /// Counts forgettings: a key read before one is not kept.
    epoch: u64,
    /// When the last successful read of the change feed began.
    synced: Option<Instant>,
    /// Where the next read starts (the database's time of the last one, minus [`OVERLAP`]).
    since: Option<DateTime<Utc>>,
    /// Change sets already applied, with when, while reads may return them again.
    applied: VecDeque<(u64, Instant)>,
    applied_set: HashSet<u64>,
}

struct Held {
    key_id: String,
    tenant: String,
    expires_at: Option<DateTime<Utc>>,
}

struct HeldTenant {
    tenant: Tenant,
    /// Settled tokens of the period starting on `start`, as read at `read` plus this
    /// instance's own since.
    usage: Option<(NaiveDate, u64, Instant)>,
}

impl KeyRing {
    /// The key and tenant of a secret's hash, from memory: only while the change feed is read
    /// on time, the key not expired at `now` and its tenant's tokens of the period starting on
    /// `period` fresh. `None` means "ask the database".
    pub(super) fn lookup(
        &self,
        hash: &str,
        period: NaiveDate,
        now: DateTime<Utc>,
    ) -> Option<(KeyAuth, Tenant)> {
        let state = self.state.lock().expect("the key ring's lock");
        if state.synced.is_none_or(|at| at.elapsed() > MAX_LAG) {
            return None;
        }
        let key = state.keys.get(hash)?;
        if key.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let held = state.tenants.get(&key.tenant)?;
        let (start, tokens, read) = held.usage?;
        if start != period || read.elapsed() > USAGE_FRESH {
            return None;
        }
        let mut tenant = held.tenant.clone();
        tenant.period_tokens = Some(tokens);
        Some((
            KeyAuth {
                key_id: key.key_id.clone(),
                tenant: key.tenant.clone(),
                expires_at: key.expires_at,
            },
            tenant,
        ))
    }

    /// Counts changes forgotten so far; read it before reading a key from the database and
    /// hand it to [`KeyRing::remember`].
    pub(super) fn epoch(&self) -> u64 {
        self.state.lock().expect("the key ring's lock").epoch
    }

    /// Keeps a key read from the database (with its tenant and the tenant's tokens of the
    /// period starting on `period`), unless something was forgotten since `epoch` or the change
    /// feed was never read.
    pub(super) fn remember(
        &self,
        hash: &str,
        auth: &KeyAuth,
        tenant: &Tenant,
        period: NaiveDate,
        epoch: u64,
    ) {
        let mut state = self.state.lock().expect("the key ring's lock");
        if state.epoch != epoch || state.synced.is_none() {
            return;
        }
        if state.keys.len() >= MAX_KEYS && !state.keys.contains_key(hash) {
            state.keys.clear();
            state.hashes.clear();
            state.tenants.clear();
        }
        state.keys.insert(
            hash.to_string(),
            Held {
                key_id: auth.key_id.clone(),
                tenant: auth.tenant.clone(),
                expires_at: auth.expires_at,
            },
        );
        state.hashes.insert(auth.key_id.clone(), hash.to_string());
        let read = tenant.period_tokens.unwrap_or(0);
        let held = state
            .tenants
            .entry(tenant.slug.clone())
            .or_insert_with(|| HeldTenant {
                tenant: tenant.clone(),
                usage: None,
            });
        held.tenant = Tenant {
            period_tokens: None,
            ..tenant.clone()
        };
        // Tokens only grow within a period: a read that began before this instance added its
        // own does not take them back.
        let tokens = match held.usage {
            Some((start, mine, _)) if start == period => read.max(mine),
            _ => read,
        };
        held.usage = Some((period, tokens, Instant::now()));
    }

    /// Adds tokens this instance settled for `tenant` in the period starting on `period`.
    pub(super) fn spent(&self, tenant: &str, period: NaiveDate, tokens: u64) {
        let mut state = self.state.lock().expect("the key ring's lock");
        if let Some(held) = state.tenants.get_mut(tenant)
            && let Some((start, total, _)) = &mut held.usage
            && *start == period
        {
            *total = total.saturating_add(tokens);
        }
    }

    /// Forgets the key `key_id` (revoked).
    pub(super) fn forget_key(&self, key_id: &str) {
        self.state
            .lock()
            .expect("the key ring's lock")
            .forget_key(key_id);
    }

    /// Forgets the tenant `slug` and its keys (its settings changed).
    pub(super) fn forget_tenant(&self, slug: &str) {
        self.state
            .lock()
            .expect("the key ring's lock")
            .forget_tenant(slug);
    }

    /// Where the next read of the change feed starts (`None`: the first read, which only
    /// takes the database's time).
    pub(super) fn since(&self) -> Option<DateTime<Utc>> {
        self.state.lock().expect("the key ring's lock").since
    }

    /// Applies a successful read of the change feed that began at `began`: every change set
    /// not applied before, once.
    pub(super) fn apply(&self, changes: &KeyChanges, began: Instant) {
        let mut state = self.state.lock().expect("the key ring's lock");
        if state
            .synced
            .is_some_and(|at| began.saturating_duration_since(at) > RESYNC_AFTER)
        {
            state.forget_all();
        }
        for set in &changes.sets {
            if !state.applied_set.insert(set.versionstamp) {
                continue;
            }
            state.applied.push_back((set.versionstamp, began));
            if set.unknown {
                state.forget_all();
            }
            for key in &set.keys {
                state.forget_key(key);
            }
            for tenant in &set.tenants {
                state.forget_tenant(tenant);
            }
        }
        if changes.truncated {
            state.forget_all();
        }
        // A change set is read again for OVERLAP after the read that found it, and no longer.
        let keep = OVERLAP.to_std().unwrap_or_default() * 3;
        while let Some(&(stamp, at)) = state.applied.front() {
            if began.saturating_duration_since(at) <= keep {
                break;
            }
            state.applied.pop_front();
            state.applied_set.remove(&stamp);
        }
        state.since = Some(changes.at - OVERLAP);
        state.synced = Some(state.synced.map_or(began, |at| at.max(began)));
    }
}

impl State {
    fn forget_key(&mut self, key_id: &str) {
        self.epoch += 1;
        if let Some(hash) = self.hashes.remove(key_id) {
            self.keys.remove(&hash);
        }
    }

    fn forget_tenant(&mut self, slug: &str) {
        self.epoch += 1;
        if self.tenants.remove(slug).is_some() {
            let hashes = &mut self.hashes;
            self.keys.retain(|_, key| {
                let keep = key.tenant != slug;
                if !keep {
                    hashes.remove(&key.key_id);
                }
                keep
            });
        }
    }

    fn forget_all(&mut self) {
        self.epoch += 1;
        self.keys.clear();
        self.hashes.clear();
        self.tenants.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChangeSet;

    fn tenant(slug: &str, tokens: Option<u64>) -> Tenant {
        Tenant {
            slug: slug.into(),
            name: slug.into(),
            quota_runs: 10,
            quota_tokens: 100,
            rate_limit: None,
            created_at: Utc::now(),
            period_tokens: tokens,
        }
    }

    fn auth(key: &str, tenant: &str) -> KeyAuth {
        KeyAuth {
            key_id: key.into(),
            tenant: tenant.into(),
            expires_at: None,
        }
    }

    fn read(at: DateTime<Utc>, sets: Vec<ChangeSet>) -> KeyChanges {
        KeyChanges {
            at,
            sets,
            truncated: false,
        }
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
    }

    /// A ring that read the feed once, holding key `k1` of `acme` with 5 tokens used.
    fn synced_ring() -> KeyRing {
        let ring = KeyRing::default();
        ring.apply(&read(Utc::now(), vec![]), Instant::now());
        let epoch = ring.epoch();
        remember_acme(&ring, 5, epoch);
        ring
    }

    #[test]
    fn nothing_is_kept_before_the_feed_was_read() {
        let ring = KeyRing::default();
        ring.remember("h1", &auth("k1", "acme"), &tenant("acme", None), day(), 0);
        ring.apply(&read(Utc::now(), vec![]), Instant::now());
        assert!(ring.lookup("h1", day(), Utc::now()).is_none());
    }

    #[test]
    fn a_key_remembered_is_found_with_its_tenant_and_tokens() {
        let ring = synced_ring();
        let (held, found) = ring.lookup("h1", day(), Utc::now()).expect("held");
        assert_eq!((held.key_id.as_str(), found.slug.as_str()), ("k1", "acme"));
        assert_eq!(found.period_tokens, Some(5));
        ring.spent("acme", day(), 7);
        let (_, found) = ring.lookup("h1", day(), Utc::now()).unwrap();
        assert_eq!(found.period_tokens, Some(12));
        // Another period's tokens are not these.
        assert!(
            ring.lookup("h1", day().succ_opt().unwrap(), Utc::now())
                .is_none()
        );
        // A read from the database that began before the 7 were added does not take them back.
        let epoch = ring.epoch();
        remember_acme(&ring, 5, epoch);
        assert_eq!(
            ring.lookup("h1", day(), Utc::now())
                .unwrap()
                .1
                .period_tokens,
            Some(12)
        );
    }

    /// Key `k1` of tenant `acme` with `tokens` used, read from the database when the epoch
    /// was `epoch`.
    fn remember_acme(ring: &KeyRing, tokens: u64, epoch: u64) {
        ring.remember(
            "h1",
            &auth("k1", "acme"),
            &tenant("acme", Some(tokens)),
            day(),
            epoch,
        );
    }

    /// Key `k2` of tenant `beta`, read from the database when the epoch was `epoch`.
    fn remember_beta(ring: &KeyRing, epoch: u64) {
        ring.remember(
            "h2",
            &auth("k2", "beta"),
            &tenant("beta", None),
            day(),
            epoch,
        );
    }

    #[test]
    fn memory_is_not_trusted_once_the_feed_is_late() {
        let ring = synced_ring();
        assert!(ring.lookup("h1", day(), Utc::now()).is_some());
        std::thread::sleep(MAX_LAG + Duration::from_millis(10));
        assert!(ring.lookup("h1", day(), Utc::now()).is_none());
        ring.apply(&read(Utc::now(), vec![]), Instant::now());
        assert!(ring.lookup("h1", day(), Utc::now()).is_some());
    }

    #[test]
    fn expired_keys_are_asked_of_the_database() {
        let ring = KeyRing::default();
        ring.apply(&read(Utc::now(), vec![]), Instant::now());
        let soon = Utc::now() + chrono::TimeDelta::seconds(10);
        let epoch = ring.epoch();
        let expiring = KeyAuth {
            expires_at: Some(soon),
            ..auth("k1", "acme")
        };
        ring.remember("h1", &expiring, &tenant("acme", None), day(), epoch);
        assert!(ring.lookup("h1", day(), Utc::now()).is_some());
        assert!(ring.lookup("h1", day(), soon).is_none());
    }

    #[test]
    fn changes_forget_their_keys_and_tenants_once() {
        let ring = synced_ring();
        let epoch = ring.epoch();
        remember_beta(&ring, epoch);
        let revoked = ChangeSet {
            versionstamp: 7,
            keys: vec!["k1".into()],
            ..ChangeSet::default()
        };
        ring.apply(&read(Utc::now(), vec![revoked.clone()]), Instant::now());
        assert!(ring.lookup("h1", day(), Utc::now()).is_none());
        assert!(ring.lookup("h2", day(), Utc::now()).is_some());
        // Read again (the overlap), the same change set is not applied again.
        let epoch = ring.epoch();
        remember_acme(&ring, 0, epoch);
        ring.apply(&read(Utc::now(), vec![revoked]), Instant::now());
        assert_eq!(ring.epoch(), epoch);
        let changed = ChangeSet {
            versionstamp: 8,
            tenants: vec!["beta".into()],
            ..ChangeSet::default()
        };
        ring.apply(&read(Utc::now(), vec![changed]), Instant::now());
        assert!(ring.lookup("h2", day(), Utc::now()).is_none());
        assert!(ring.lookup("h1", day(), Utc::now()).is_some());
        let unknown = ChangeSet {
            versionstamp: 9,
            unknown: true,
            ..ChangeSet::default()
        };
        ring.apply(&read(Utc::now(), vec![unknown]), Instant::now());
        assert!(ring.lookup("h1", day(), Utc::now()).is_none());
    }

    #[test]
    fn a_key_read_while_something_was_forgotten_is_not_kept() {
        let ring = synced_ring();
        let epoch = ring.epoch();
        ring.forget_key("k9");
        remember_beta(&ring, epoch);
        assert!(ring.lookup("h2", day(), Utc::now()).is_none());
    }

    #[test]
    fn a_truncated_read_forgets_everything_and_reads_start_before_the_last() {
        let ring = synced_ring();
        let at = Utc::now();
        ring.apply(
            &KeyChanges {
                at,
                sets: vec![],
                truncated: true,
            },
            Instant::now(),
        );
        assert!(ring.lookup("h1", day(), Utc::now()).is_none());
        assert_eq!(ring.since(), Some(at - OVERLAP));
    }
}
