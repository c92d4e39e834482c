//! API keys: secrets made from the OS CSPRNG, stored only as SHA-256, looked up by that hash.

use chrono::{DateTime, Utc};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Result, Store, StoreError};

/// The public face of a secret.
pub const SECRET_PREFIX: &str = "ares_";
/// Characters of a secret after `ares_`: 43 base62 characters carry over 256 bits.
pub const SECRET_LEN: usize = 43;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new secret: `ares_` and 43 base62 characters from the operating system's CSPRNG.
pub fn generate_secret() -> String {
    let mut out = String::with_capacity(SECRET_PREFIX.len() + SECRET_LEN);
    out.push_str(SECRET_PREFIX);
    let mut buf = [0u8; 64];
    while out.len() < SECRET_PREFIX.len() + SECRET_LEN {
        rand::rngs::OsRng
            .try_fill_bytes(&mut buf)
            .expect("the OS random number generator works");
        // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == SECRET_PREFIX.len() + SECRET_LEN {
                break;
            }
            out.push(BASE62[(*b % 62) as usize] as char);
        }
    }
    out
}

/// The stored form of a secret: lowercase hex SHA-256 (computed on every request: one
/// allocation).
pub fn hash_secret(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// `ares_` and the first four characters after it, shown in key listings.
pub fn key_prefix(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX.len() + 4).collect()
}

/// A key as listed (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    #[serde(rename = "key_id")]
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just created: its record and the only copy of its secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

/// Who a valid secret authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAuth {
    pub key_id: String,
    pub tenant: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The change feed's position at `at` by the database's clock. SurrealDB stamps a commit with
/// its hybrid logical clock: milliseconds since the epoch shifted left 16 bits, a counter in
/// the low bits (`SINCE` a date-time reads nothing in SurrealDB 3.3, so the stamp is computed).
/// A backend whose stamps carry the milliseconds higher up only makes reads start earlier.
fn versionstamp_at(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp_millis()).unwrap_or(0) << 16
}

/// Changes read from the database's change feed ([`Store::key_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanges {
    /// The database's time when they were read.
    pub at: DateTime<Utc>,
    pub sets: Vec<ChangeSet>,
    /// The read stopped at its limit: more changes may follow.
    pub truncated: bool,
}

/// The changes one transaction made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The change feed's stamp of the transaction: the same transaction read twice has the same.
    pub versionstamp: u64,
    /// Keys whose credential changed (created or revoked).
    pub keys: Vec<String>,
    /// Tenants whose row changed.
    pub tenants: Vec<String>,
    /// A change that names neither (a record deleted): whatever was read from these tables may
    /// be stale.
    pub unknown: bool,
}

impl ChangeSet {
    /// A change set as `SHOW CHANGES` answers it: `{versionstamp, changes: [{update: record} |
    /// {delete: {id}} | {define_table: ...}]}`.
    fn read(set: &serde_json::Value) -> ChangeSet {
        let mut out = ChangeSet {
            versionstamp: set["versionstamp"].as_u64().unwrap_or_default(),
            ..ChangeSet::default()
        };
        for change in set["changes"].as_array().into_iter().flatten() {
            let (record, deleted) = match (change.get("update"), change.get("delete")) {
                (Some(r), _) => (r, false),
                (None, Some(r)) => (r, true),
                _ => continue,
            };
            let table = record["id"].as_str().and_then(|id| id.split(':').next());
            match (table, deleted) {
                (Some("credential"), false) => match record["key_id"].as_str() {
                    Some(id) => out.keys.push(id.to_string()),
                    None => out.unknown = true,
                },
                (Some("tenant"), false) => match record["slug"].as_str() {
                    Some(slug) => out.tenants.push(slug.to_string()),
                    None => out.unknown = true,
                },
                (Some("credential" | "tenant") | None, _) => out.unknown = true,
                (Some(_), _) => {}
            }
        }
        out
    }
}

pub(super) const FIELDS: &str =
    "key_id, tenant, name, prefix, created_at, expires_at, last_used, revoked_at";

/// The statements that store a new key, `$id` of `$tenant` named `$name` with the secret's
/// `$hash` and `$prefix`, expiring at `$expires` (or never), and its credential.
pub(super) const CREATE_KEY: &str = "CREATE type::record('credential', $hash) SET key_id = $id RETURN NONE; \
    CREATE type::record('api_key', $id) SET key_id = $id, tenant = $tenant, name = $name, hash = $hash, \
    prefix = $prefix, created_at = time::now(), expires_at = <option<datetime>>($expires ?? NONE) RETURN NONE;";

/// What asking for a new key came to.
#[derive(Debug)]
pub enum KeyCreation {
    Created(NewKey),
    /// The tenant holds as many live keys as it may.
    LimitReached,
    NoTenant,
}

impl Store {
    /// Creates a key for `tenant`, expiring at `expires_at` when given, unless the tenant does
    /// not exist or already holds `max_live` keys that are neither revoked nor expired at `now`.
    #[tracing::instrument(skip(self))]
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
        max_live: u64,
        now: DateTime<Utc>,
    ) -> Result<KeyCreation> {
        let secret = generate_secret();
        let id = uuid::Uuid::now_v7().to_string();
        let sql = format!(
            "BEGIN; \
             LET $known = record::exists(type::record('tenant', $tenant)); \
             LET $live = IF $known {{ array::len((SELECT VALUE key_id FROM api_key WHERE tenant = $tenant \
               AND revoked_at = NONE AND (expires_at = NONE OR expires_at > <datetime>$now))) }} ELSE {{ 0 }}; \
             LET $ok = $known AND $live < $max; \
             IF $ok {{ \
               UPDATE type::record('tenant', $tenant) SET keys_changed_at = time::now() RETURN NONE; \
               {CREATE_KEY} \
             }}; \
             RETURN {{ known: $known, key: IF $ok {{ type::record('api_key', $id).{{ {FIELDS} }} }} ELSE {{ NONE }} }}; \
             COMMIT;"
        );
        let vars = json!({
            "id": id, "tenant": tenant, "name": name, "hash": hash_secret(&secret),
            "prefix": key_prefix(&secret), "expires": expires_at, "max": max_live, "now": now,
        });
        let out = self.run_retrying(&sql, vars).await?;
        let answer = out
            .into_iter()
            .rev()
            .find_map(|rows| rows.into_iter().next())
            .unwrap_or_default();
        if answer["known"] != true {
            return Ok(KeyCreation::NoTenant);
        }
        if answer["key"].is_null() {
            return Ok(KeyCreation::LimitReached);
        }
        let key: ApiKey = serde_json::from_value(answer["key"].clone())
            .map_err(|e| StoreError::Internal(anyhow::anyhow!("decoding a key: {e}")))?;
        Ok(KeyCreation::Created(NewKey { key, secret }))
    }

    /// The key and tenant a secret authenticates, when the key exists, is not revoked and has
    /// not expired: one statement of direct fetches by record id (the credential named by the
    /// secret's hash, its key, the key's tenant and the tenant's settled tokens of the period
    /// starting on `period_start`), so it costs the same however many keys there are.
    pub async fn authenticate(
        &self,
        secret: &str,
        period_start: chrono::NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<(KeyAuth, super::Tenant)>> {
        self.authenticate_hash(&hash_secret(secret), period_start, now)
            .await
    }

    /// [`Store::authenticate`] of the secret whose hash ([`hash_secret`]) is `hash`.
    pub async fn authenticate_hash(
        &self,
        hash: &str,
        period_start: chrono::NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<(KeyAuth, super::Tenant)>> {
        let sql = format!(
            "RETURN type::record('api_key', type::record('credential', $hash).key_id).{{key_id, revoked_at, expires_at, \
             tenant: type::record('tenant', tenant).{{slug, name, quota_runs, quota_tokens, rate_limit, created_at}}, \
             period_tokens: {}}}",
            super::usage::period_tokens("string::concat(tenant, '|', $start)")
        );
        let vars = json!({"hash": hash, "start": period_start.to_string()});
        let rows: Vec<serde_json::Value> = self.rows(&sql, vars, 0).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let Some(key_id) = row["key_id"].as_str().map(String::from) else {
            return Ok(None);
        };
        if !row["revoked_at"].is_null() {
            return Ok(None);
        }
        let mut expires_at = None;
        if let Some(expires) = row["expires_at"].as_str() {
            match DateTime::parse_from_rfc3339(expires) {
                Ok(at) if at > now => expires_at = Some(at.to_utc()),
                _ => return Ok(None),
            }
        }
        // A key whose tenant is gone authenticates nobody.
        let Ok(mut tenant) = serde_json::from_value::<super::Tenant>(row["tenant"].clone()) else {
            return Ok(None);
        };
        tenant.period_tokens = row["period_tokens"].as_u64();
        Ok(Some((
            KeyAuth {
                key_id,
                tenant: tenant.slug.clone(),
                expires_at,
            },
            tenant,
        )))
    }

    /// The tenant's keys that are not revoked, oldest first.
    #[tracing::instrument(skip(self))]
    pub async fn keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let sql = format!(
            "SELECT {FIELDS} FROM api_key WHERE tenant = $tenant AND revoked_at = NONE ORDER BY key_id"
        );
        self.rows(&sql, json!({"tenant": tenant}), 0).await
    }

    /// Revokes the tenant's key `id`; false when the tenant has no such live key. The key's
    /// credential is marked in the same transaction: its change feed tells every instance.
    #[tracing::instrument(skip(self))]
    pub async fn revoke_key(&self, tenant: &str, id: &str) -> Result<bool> {
        let sql = "BEGIN; \
                   LET $at = time::now(); \
                   LET $hash = (UPDATE type::record('api_key', $id) SET revoked_at = $at \
                     WHERE tenant = $tenant AND revoked_at = NONE RETURN VALUE hash)[0]; \
                   IF $hash != NONE { UPDATE type::record('credential', $hash) SET revoked_at = $at RETURN NONE; }; \
                   RETURN $hash != NONE; \
                   COMMIT;";
        let out = self
            .run_retrying(sql, json!({"id": id, "tenant": tenant}))
            .await?;
        Ok(super::records::last_bool(&out))
    }

    /// What changed since `since` (by the database's clock) in the tables that keys verified in
    /// memory depend on: keys revoked (their credentials) and tenants changed, from the
    /// database's change feed, with the database's time of the read. At most `limit` changes
    /// are read; `truncated` says when more may follow.
    pub async fn key_changes(
        &self,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<KeyChanges> {
        // `SHOW CHANGES` takes its start as a literal, not a variable: a number this process
        // computes, never input.
        let sql = match since {
            Some(at) => format!(
                "RETURN time::now(); SHOW CHANGES FOR DATABASE SINCE {} LIMIT {limit};",
                versionstamp_at(at)
            ),
            None => "RETURN time::now();".to_string(),
        };
        let mut out = self.run(&sql, json!({})).await?.into_iter();
        let at = out
            .next()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v).ok())
            .ok_or_else(|| {
                StoreError::Internal(anyhow::anyhow!("the database did not tell its time"))
            })?;
        let sets: Vec<serde_json::Value> = out.next().unwrap_or_default();
        let truncated = sets.len() >= limit as usize;
        let sets = sets.iter().map(ChangeSet::read).collect();
        Ok(KeyChanges {
            at,
            sets,
            truncated,
        })
    }

    /// Records when keys were last used (a batch, written by the usage flusher).
    pub async fn touch_keys(&self, used: &[(String, DateTime<Utc>)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let sql = "FOR $u IN $used { UPDATE type::record('api_key', $u.id) SET last_used = <datetime>$u.at \
                   WHERE last_used = NONE OR last_used < <datetime>$u.at; };";
        let used: Vec<_> = used
            .iter()
            .map(|(id, at)| json!({"id": id, "at": at}))
            .collect();
        self.run(sql, json!({"used": used})).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::super::testing::store;
    use super::*;

    #[test]
    fn secrets_are_long_base62_and_distinct() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_PREFIX.len() + SECRET_LEN);
        assert!(a.starts_with("ares_"));
        assert!(a[5..].bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_eq!(key_prefix(&a), a[..9]);
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn the_change_feed_names_revoked_keys_and_changed_tenants() {
        let store = store().await;
        let (_, key) = store
            .create_tenant("acme", "Acme", 10, 100, None, "first")
            .await
            .unwrap()
            .unwrap();
        let start = store.key_changes(None, 100).await.unwrap();
        assert!(start.sets.is_empty());
        let since = Some(start.at - chrono::TimeDelta::seconds(1));
        assert!(store.revoke_key("acme", &key.key.id).await.unwrap());
        let changes = store.key_changes(since, 100).await.unwrap();
        assert!(changes.at >= start.at);
        assert!(!changes.truncated);
        // The revocation, last (the tenant's creation with its key came before), stamped by
        // the clock `at` is read by: the feed's position is computed from it.
        let revocation = changes.sets.last().expect("the revocation");
        assert_eq!(
            revocation.keys,
            std::slice::from_ref(&key.key.id),
            "{changes:?}"
        );
        assert!(
            revocation.versionstamp >= versionstamp_at(start.at)
                && revocation.versionstamp <= versionstamp_at(changes.at) + 0xFFFF,
            "{changes:?}"
        );
        store
            .update_tenant(
                "acme",
                &super::super::TenantPatch {
                    quota_runs: Some(3),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let again = store.key_changes(since, 100).await.unwrap();
        assert_eq!(again.sets.last().unwrap().tenants, ["acme"], "{again:?}");
        // Each transaction is one set, with its own stamp, read again the same.
        assert_eq!(again.sets[..changes.sets.len()], changes.sets[..]);
        assert!(again.sets.iter().all(|s| !s.unknown), "{again:?}");
        // A read from after them finds none (positions are to the millisecond).
        let after = again.at + chrono::TimeDelta::milliseconds(1);
        let later = store.key_changes(Some(after), 100).await.unwrap();
        assert_eq!(later.sets, []);
        // A read that reaches its limit says so.
        assert!(store.key_changes(since, 1).await.unwrap().truncated);
    }

    #[tokio::test]
    async fn keys_made_before_credentials_existed_still_authenticate() {
        let store = store().await;
        let (_, key) = store
            .create_tenant("acme", "Acme", 10, 100, None, "old")
            .await
            .unwrap()
            .unwrap();
        let today = Utc::now().date_naive();
        assert!(
            store
                .authenticate(&key.secret, today, Utc::now())
                .await
                .unwrap()
                .is_some()
        );
        // A database from before migration 3: keys without credentials.
        store
            .run(
                "DELETE credential; DELETE migration WHERE version = 3;",
                json!({}),
            )
            .await
            .unwrap();
        assert!(
            store
                .authenticate(&key.secret, today, Utc::now())
                .await
                .unwrap()
                .is_none()
        );
        let report = store.check(1).await.unwrap();
        let found: Vec<_> = report.violations.iter().map(|v| v.invariant).collect();
        assert_eq!(found, ["key_credentials"], "{:?}", report.violations);
        super::super::migrations::apply(&store).await.unwrap();
        assert_eq!(store.check(1).await.unwrap().violations, []);
        let (auth, tenant) = store
            .authenticate(&key.secret, today, Utc::now())
            .await
            .unwrap()
            .expect("the migration wrote the key's credential");
        assert_eq!((auth.key_id, tenant.slug), (key.key.id, "acme".to_string()));
        // Unknown secrets stay unknown.
        assert!(
            store
                .authenticate("ares_unknown", today, Utc::now())
                .await
                .unwrap()
                .is_none()
        );
    }
}
