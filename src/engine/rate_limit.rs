//! Request rate limits: a token bucket per API key and one per tenant (all its keys together),
//! kept in this instance's memory.
//!
//! A bucket holds up to a minute's allowance and refills continuously, so a key may burst up
//! to its per-minute limit and then send at the limit's pace. Instances do not share buckets:
//! behind a load balancer spreading a key over N instances the key gets up to N times its limit.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;

/// Buckets beyond this many trigger a sweep of the idle ones (full again, so forgetting them
/// changes nothing).
const SWEEP_ABOVE: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
    /// Its size: a minute's allowance.
    capacity: f64,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from `key`'s bucket of `per_minute` (0: unlimited). `Err` carries the
    /// whole seconds until a request will be accepted again.
    pub fn take(&self, key: &str, per_minute: u64, now: DateTime<Utc>) -> Result<(), u64> {
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = per_minute as f64;
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + seconds_between(b.at, now) * b.capacity / 60.0 < b.capacity
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            at: now,
            capacity,
        });
        // A limit changed since the bucket was made takes effect now.
        bucket.capacity = capacity;
        let elapsed = seconds_between(bucket.at, now);
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// Seconds from `a` to `b`; 0 when the clock went back.
fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn bursts_up_to_the_limit_then_refills_at_its_pace() {
        let limiter = RateLimiter::default();
        let t0 = Utc::now();
        for _ in 0..60 {
            assert_eq!(limiter.take("k", 60, t0), Ok(()));
        }
        assert_eq!(limiter.take("k", 60, t0), Err(1));
        // Another key has its own bucket.
        assert_eq!(limiter.take("other", 60, t0), Ok(()));
        // 60 per minute is one per second.
        assert_eq!(
            limiter.take("k", 60, t0 + Duration::milliseconds(500)),
            Err(1)
        );
        assert_eq!(
            limiter.take("k", 60, t0 + Duration::milliseconds(1000)),
            Ok(())
        );
        assert_eq!(
            limiter.take("k", 60, t0 + Duration::milliseconds(1000)),
            Err(1)
        );
        // A slow limit waits longer.
        for _ in 0..2 {
            assert_eq!(limiter.take("slow", 2, t0), Ok(()));
        }
        assert_eq!(limiter.take("slow", 2, t0), Err(30));
    }

    #[test]
    fn zero_is_no_limit() {
        let limiter = RateLimiter::default();
        let t0 = Utc::now();
        for _ in 0..10_000 {
            assert_eq!(limiter.take("k", 0, t0), Ok(()));
        }
    }
}
