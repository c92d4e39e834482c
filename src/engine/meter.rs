//! Counts authenticated API calls and key use in memory and writes them in batches.
//!
//! A write per request would put the database on every request's path; instead counts are
//! flushed every second (and at shutdown), and reads add what is still pending here.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};

use crate::store::{Store, StoreError};

#[derive(Default)]
pub struct Meter {
    calls: Mutex<HashMap<(String, NaiveDate), u64>>,
    keys: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Held for writing while a flush moves counts to the database, and for reading while a
    /// usage read combines the database with what is pending: counts in the middle of a flush
    /// are in neither place, so a reader must see before or after a flush, never during.
    gate: tokio::sync::RwLock<()>,
}

impl Meter {
    /// Counts one authenticated request of `tenant` made with key `key_id`.
    pub fn count(&self, tenant: &str, key_id: &str, at: DateTime<Utc>) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((tenant.to_string(), at.date_naive()))
            .or_default() += 1;
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.to_string(), at);
    }

    /// Holds off flushes while the caller reads usage and then [`Meter::pending`].
    pub async fn reading(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Calls counted here and not yet written, for `tenant` on `date`.
    pub fn pending(&self, tenant: &str, date: NaiveDate) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), date))
            .copied()
            .unwrap_or(0)
    }

    /// Writes what was counted. On failure the counts are kept for the next attempt.
    pub async fn flush(&self, store: &Store) -> Result<(), StoreError> {
        let _writing = self.gate.write().await;
        let calls: Vec<(String, NaiveDate, u64)> =
            std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .map(|((t, d), n)| (t, d, n))
                .collect();
        if let Err(e) = store.add_api_calls(&calls).await {
            let mut pending = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            for (t, d, n) in calls {
                *pending.entry((t, d)).or_default() += n;
            }
            return Err(e);
        }
        let keys: Vec<(String, DateTime<Utc>)> =
            std::mem::take(&mut *self.keys.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        if let Err(e) = store.touch_keys(&keys).await {
            let mut pending = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            for (k, at) in keys {
                pending.entry(k).or_insert(at);
            }
            return Err(e);
        }
        Ok(())
    }
}
