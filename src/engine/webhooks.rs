//! Signed webhooks: a tenant's endpoints, and the sending of every run's end to them, at least
//! once, signed as the Standard Webhooks specification says, across restarts and instances.
//!
//! Deliveries are written in the transaction that settles the run (the outbox, in
//! `store::ledger`). Each instance leases the deliveries that are due, sends them with a bound
//! on attempts in flight per endpoint, and records the outcome: delivered, or retried later
//! with exponential backoff and jitter until `webhooks.max_attempts`, then failed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::error::{EngineError, Result, invalid};
use super::{Engine, Listing};
use crate::store::{Attempt, Delivery, RunRecord, Tenant, Webhook};

/// The events an endpoint can subscribe to.
pub const EVENTS: &[&str] = &["run.completed", "run.failed", "run.cancelled"];
/// Endpoints whose due deliveries one poll takes, at most (each up to its free slots).
const ENDPOINTS_PER_POLL: u64 = 64;
/// How often an instance looks for due deliveries (sooner when it settled a run).
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Longest description of an endpoint.
const MAX_DESCRIPTION: usize = 500;
/// Longest endpoint URL.
const MAX_URL: usize = 2048;
/// Most of an endpoint's answer kept as a delivery's `last_error`.
const MAX_ERROR: usize = 200;

/// How a run record is written as an event's `data` (the API's run record; set by the HTTP
/// layer, which owns the wire format).
pub type RunEncoder = Arc<dyn Fn(&RunRecord) -> serde_json::Value + Send + Sync>;

/// The state of this instance's sending.
pub(crate) struct Sender {
    /// Attempts in flight per endpoint.
    per_endpoint: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Woken when a run settled here, so that its event goes out at once.
    pub(crate) wake: tokio::sync::Notify,
    encoder: Mutex<Option<RunEncoder>>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender {
            per_endpoint: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            encoder: Mutex::new(None),
        }
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The `webhook-signature` of a message (Standard Webhooks): `v1,` and the base64 of the
/// HMAC-SHA256, keyed with the secret's base64-decoded bytes, of `id.timestamp.body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any size");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Whether an address is one a tenant must not reach: private, loopback, link-local, shared
/// (carrier-grade NAT), multicast, reserved or unspecified.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // IPv4-mapped and -compatible addresses, and the NAT64 prefix 64:ff9b::/96,
                // reach the IPv4 address they carry.
                || v6.to_ipv4().is_some_and(|v4| is_private(IpAddr::V4(v4)))
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && {
                    let o = v6.octets();
                    is_private(IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])))
                })
        }
    }
}

/// Checks that `url` is an `http(s)` URL whose host resolves to public addresses only
/// (unless `allow_private`). Resolved here, at registration, and again at every delivery.
pub async fn check_destination(url: &str, allow_private: bool) -> std::result::Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "may not carry a user name or password: a receiver checks the signature instead".into(),
        );
    }
    let host = parsed
        .host_str()
        .ok_or("has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("does not resolve: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err("does not resolve".into());
    }
    if let Some(ip) = addrs.into_iter().find(|ip| is_private(*ip)) {
        return Err(format!(
            "resolves to {ip}, a private, loopback or link-local address, which endpoints may not be"
        ));
    }
    Ok(())
}

/// A resolver for deliveries that never connects to a private address (unless allowed): the
/// name is resolved again for the connection itself, so a host that changed its answer since
/// the check is refused too.
struct PublicOnly {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{} has no public address", name.as_str()).into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// What a tenant asks for when registering an endpoint.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
}

impl Engine {
    /// Writes runs as events' `data` with `encoder` (the HTTP layer's run record).
    pub fn with_run_encoder(self, encoder: RunEncoder) -> Engine {
        *self
            .webhooks
            .encoder
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(encoder);
        self
    }

    /// Registers an endpoint of the tenant; answers it and its signing secret, which exists
    /// only in this answer and in the database.
    #[tracing::instrument(skip(self, tenant, new), fields(tenant = %tenant.slug))]
    pub async fn create_webhook(
        &self,
        tenant: &Tenant,
        new: NewWebhook,
    ) -> Result<(Webhook, String)> {
        if new.url.len() > MAX_URL {
            return Err(invalid(
                "url",
                format!("is longer than {MAX_URL} characters"),
            ));
        }
        check_destination(&new.url, self.settings.webhooks.allow_private_addresses)
            .await
            .map_err(|e| invalid("url", e))?;
        let events = check_events(new.events)?;
        if new
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
        {
            return Err(invalid(
                "description",
                format!("is longer than {MAX_DESCRIPTION} characters"),
            ));
        }
        let hook = Webhook {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.slug.clone(),
            url: new.url,
            events,
            description: new.description,
            created_at: self.clock.now(),
        };
        let secret = new_secret();
        let max = self.settings.limits.max_webhooks_per_tenant;
        if !self.store.create_webhook(&hook, &secret, max).await? {
            return Err(EngineError::WebhookLimit(max));
        }
        tracing::info!(webhook = %hook.id, "webhook endpoint registered");
        Ok((hook, secret))
    }

    /// The tenant's endpoints, oldest first.
    pub async fn list_webhooks(&self, tenant: &Tenant) -> Result<Vec<Webhook>> {
        Ok(self.store.webhooks(&tenant.slug).await?)
    }

    /// Removes the tenant's endpoint `id` and its deliveries.
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn delete_webhook(&self, tenant: &Tenant, id: &str) -> Result<()> {
        if self.store.delete_webhook(&tenant.slug, id).await? {
            Ok(())
        } else {
            Err(EngineError::WebhookNotFound(id.to_string()))
        }
    }

    /// A page of the deliveries of the tenant's endpoint `id`, newest first.
    pub async fn webhook_deliveries(
        &self,
        tenant: &Tenant,
        id: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Listing<Delivery>> {
        self.tenant_webhook(tenant, id).await?;
        let (items, total) = self.store.deliveries(id, offset, limit).await?;
        Ok(Listing { items, total })
    }

    /// Sends delivery `delivery_id` of the tenant's endpoint `id` again, now (the same event,
    /// the same `webhook-id`).
    #[tracing::instrument(skip(self, tenant), fields(tenant = %tenant.slug))]
    pub async fn retry_delivery(&self, tenant: &Tenant, id: &str, delivery_id: &str) -> Result<()> {
        self.tenant_webhook(tenant, id).await?;
        if !self
            .store
            .retry_delivery(id, delivery_id, self.clock.now())
            .await?
        {
            return Err(EngineError::DeliveryNotFound(delivery_id.to_string()));
        }
        self.webhooks.wake.notify_one();
        Ok(())
    }

    async fn tenant_webhook(&self, tenant: &Tenant, id: &str) -> Result<Webhook> {
        self.store
            .webhook(&tenant.slug, id)
            .await?
            .map(|(hook, _)| hook)
            .ok_or_else(|| EngineError::WebhookNotFound(id.to_string()))
    }

    /// Sends due deliveries until the process stops: leases a batch, sends each (at most
    /// `webhooks.per_endpoint` at a time to one endpoint), records the outcomes.
    pub(super) async fn send_webhooks(self: Arc<Self>) {
        let client = match reqwest::Client::builder()
            .timeout(self.settings.webhooks.timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PublicOnly {
                allow_private: self.settings.webhooks.allow_private_addresses,
            }))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client for webhooks; none will be sent");
                return;
            }
        };
        let mut last_age_check: Option<tokio::time::Instant> = None;
        let mut streak =
            super::background::FailureStreak::new("looking for due webhook deliveries");
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = self.webhooks.wake.notified() => {}
            }
            if last_age_check.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                last_age_check = Some(tokio::time::Instant::now());
                self.measure_oldest_pending().await;
            }
            match self.send_due(&client).await {
                Ok(()) => streak.succeeded(),
                Err(e) => streak.failed(&e),
            }
        }
    }

    /// Leases the due deliveries whose endpoint can take one more attempt now, and sends them:
    /// a leased delivery never waits, so its lease always outlasts its attempt.
    async fn send_due(self: &Arc<Self>, client: &reqwest::Client) -> crate::store::Result<()> {
        let now = self.clock.now();
        let busy = self.busy_endpoints();
        let per_endpoint = self.settings.webhooks.per_endpoint as u64;
        let due = self
            .store
            .due_deliveries(now, &busy, ENDPOINTS_PER_POLL, per_endpoint)
            .await?;
        let mut permits = HashMap::new();
        for (id, webhook_id) in due {
            if let Ok(permit) = self.endpoint_gate(&webhook_id).try_acquire_owned() {
                permits.insert(id, permit);
            }
        }
        let ids: Vec<String> = permits.keys().cloned().collect();
        let leased = self.store.lease_deliveries(&ids, now, self.lease()).await?;
        for (delivery, url, secret) in leased {
            let Some(permit) = permits.remove(&delivery.id) else {
                continue;
            };
            let (engine, client) = (Arc::clone(self), client.clone());
            let span = tracing::info_span!("webhook_delivery", delivery = %delivery.id, webhook = %delivery.webhook_id);
            tokio::spawn(
                async move {
                    engine.deliver(&client, delivery, &url, &secret).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Ok(())
    }

    /// How long a lease holds a delivery for its instance: three attempts' time, so that it
    /// outlasts the attempt (and a wait for the endpoint's gate), and runs out soon after the
    /// instance is gone.
    fn lease(&self) -> Duration {
        self.settings
            .webhooks
            .timeout
            .0
            .saturating_mul(3)
            .max(Duration::from_secs(1))
    }

    /// The endpoints with every attempt slot taken; the gates of idle endpoints are dropped
    /// (a new one is made when needed), so that the map holds only endpoints in use.
    fn busy_endpoints(&self) -> Vec<String> {
        let mut gates = self
            .webhooks
            .per_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A permit holds its gate: a gate held only here has every slot free.
        gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        gates
            .iter()
            .filter(|(_, gate)| gate.available_permits() == 0)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn endpoint_gate(&self, webhook_id: &str) -> Arc<Semaphore> {
        let mut gates = self
            .webhooks
            .per_endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            gates
                .entry(webhook_id.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.webhooks.per_endpoint))),
        )
    }

    async fn measure_oldest_pending(&self) {
        match self.store.oldest_pending_delivery().await {
            Ok(oldest) => {
                let age = oldest.map_or(0, |at| {
                    u64::try_from((self.clock.now() - at).num_seconds()).unwrap_or(0)
                });
                self.telemetry.webhooks.set_oldest_pending(age);
            }
            Err(e) => tracing::debug!(error = %e, "measuring the webhook backlog failed"),
        }
    }

    /// One attempt at a leased delivery, and its outcome recorded.
    async fn deliver(&self, client: &reqwest::Client, delivery: Delivery, url: &str, secret: &str) {
        let attempt = match self.attempt(client, &delivery, url, secret).await {
            Ok(status) => Attempt::Delivered { status },
            Err((status, error)) => {
                let attempts = delivery.attempts + 1;
                let retry_at = (attempts < u64::from(self.settings.webhooks.max_attempts))
                    .then(|| self.clock.now() + self.pause_after(attempts));
                Attempt::Failed {
                    status,
                    error,
                    retry_at,
                }
            }
        };
        self.telemetry.webhooks.count(&attempt);
        match &attempt {
            Attempt::Delivered { status } => {
                tracing::info!(status, event = %delivery.event_id, "webhook delivered")
            }
            Attempt::Failed {
                error, retry_at, ..
            } => {
                tracing::warn!(event = %delivery.event_id, %error, retry_at = ?retry_at, "webhook attempt failed")
            }
        }
        if let Err(e) = self.store.record_attempt(&delivery.id, &attempt).await {
            // The lease runs out and the delivery is sent again: at least once.
            tracing::warn!(error = %e, "recording a webhook attempt failed");
        }
    }

    /// Sends the event once: its status when 2xx, else the status (if any) and why.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        delivery: &Delivery,
        url: &str,
        secret: &str,
    ) -> std::result::Result<u16, (Option<u16>, String)> {
        check_destination(url, self.settings.webhooks.allow_private_addresses)
            .await
            .map_err(|e| (None, format!("the endpoint's URL {e}")))?;
        let run = self
            .store
            .run_by_id(&delivery.tenant, &delivery.run_id)
            .await
            .map_err(|e| (None, format!("reading the run failed: {e}")))?
            .ok_or_else(|| (None, "the run no longer exists".to_string()))?;
        let data = {
            let encoder = self
                .webhooks
                .encoder
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match encoder {
                Some(encode) => encode(&run),
                None => serde_json::to_value(&run).unwrap_or_default(),
            }
        };
        let now = self.clock.now();
        let body = serde_json::json!({
            "type": delivery.event_type,
            "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string();
        let timestamp = now.timestamp();
        let signature = sign(secret, &delivery.event_id, timestamp, &body);
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("ares/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &delivery.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => Ok(resp.status().as_u16()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                Err((Some(status), format!("the endpoint answered {status}")))
            }
            Err(e) if e.is_timeout() => Err((
                None,
                format!(
                    "no answer within {} ms",
                    self.settings.webhooks.timeout.0.as_millis()
                ),
            )),
            Err(e) => {
                let mut why = format!("could not be reached: {}", e.without_url());
                why.truncate(MAX_ERROR);
                Err((None, why))
            }
        }
    }

    /// The pause after a delivery's `attempts`th failure: `first_retry` doubled each time,
    /// capped at `max_retry`, with up to a quarter of jitter either way.
    fn pause_after(&self, attempts: u64) -> chrono::TimeDelta {
        let w = &self.settings.webhooks;
        let base = w
            .first_retry
            .0
            .saturating_mul(1u32 << (attempts.saturating_sub(1).min(20) as u32))
            .min(w.max_retry.0);
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        chrono::TimeDelta::from_std(base.mul_f64(jitter)).unwrap_or(chrono::TimeDelta::hours(1))
    }
}

/// The events of a new endpoint: known ones, or `["*"]` for all.
fn check_events(events: Vec<String>) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(invalid(
            "events",
            format!(
                "must name at least one event: {}, or \"*\"",
                EVENTS.join(", ")
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        if e != "*" && !EVENTS.contains(&e.as_str()) {
            return Err(invalid(
                format!("events[{i}]"),
                format!(
                    "unknown event {e:?}; known: {}, or \"*\"",
                    EVENTS.join(", ")
                ),
            ));
        }
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signatures_are_those_of_the_specification() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "93.184.216.34",
            "64:ff9b::808:808",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn destinations_must_be_public_http_urls() {
        for (url, refused) in [
            ("http://127.0.0.1:9/hook", true),
            ("https://10.0.0.1/hook", true),
            ("http://[::1]/hook", true),
            ("http://localhost:9/hook", true),
            ("ftp://8.8.8.8/hook", true),
            ("not a url", true),
            ("https://user:password@8.8.8.8/hook", true),
            ("https://8.8.8.8/hook", false),
        ] {
            assert_eq!(
                check_destination(url, false).await.is_err(),
                refused,
                "{url}"
            );
        }
        assert!(
            check_destination("http://127.0.0.1:9/hook", true)
                .await
                .is_ok()
        );
    }

    #[test]
    fn events_are_known_ones_or_all() {
        assert_eq!(
            check_events(vec!["run.failed".into(), "run.failed".into()]).unwrap(),
            ["run.failed"]
        );
        assert!(check_events(vec![]).is_err());
        let e = check_events(vec!["run.completed".into(), "run.started".into()]).unwrap_err();
        assert!(e.to_string().starts_with("events[1]:"), "{e}");
    }
}
