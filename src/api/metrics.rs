//! Prometheus metrics: requests by route and status, latency, runs by status, tokens.
//!
//! Each [`Metrics`] records into its own `metrics` recorder (never the process-wide one, so
//! servers sharing a process keep apart) and renders it with `metrics-exporter-prometheus`,
//! which escapes label values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_facade::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const REQUESTS: &str = "ares_http_requests_total";
const LATENCY: &str = "ares_http_request_duration_seconds";
const RUNS: &str = "ares_runs_total";
const TOKENS: &str = "ares_tokens_total";
const TOOL_CALLS: &str = "ares_tool_calls_total";
const WEBHOOK_ATTEMPTS: &str = "ares_webhook_attempts_total";
const RATE_LIMITED: &str = "ares_rate_limited_total";

/// Latency samples wait in the recorder until they are folded into the histogram's buckets,
/// which rendering does; folding every this many requests too bounds that memory when nothing
/// scrapes `/metrics`.
const FOLD_EVERY: u64 = 1024;

/// The HTTP layer's metrics, recorded in a Prometheus recorder of this server's own.
pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Requests recorded, to fold latency samples every [`FOLD_EVERY`].
    requests: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        metrics_facade::with_local_recorder(&recorder, || {
            describe_counter!(REQUESTS, "HTTP requests by route, method and status.");
            describe_histogram!(LATENCY, "Time to the response head, by route.");
            describe_counter!(RUNS, "Agent runs by final status.");
            describe_counter!(TOKENS, "Model tokens used by runs and chats.");
            describe_counter!(
                TOOL_CALLS,
                "Tool calls made for models, by tool and outcome."
            );
            describe_counter!(
                WEBHOOK_ATTEMPTS,
                "Webhook delivery attempts by outcome: delivered, retried (to be sent again), failed (for good)."
            );
            describe_counter!(
                RATE_LIMITED,
                "Requests refused because their API key exceeded its rate limit."
            );
            // Exposed from the start, at 0.
            counter!(TOKENS).increment(0);
            counter!(RATE_LIMITED).increment(0);
        });
        Metrics {
            recorder,
            requests: AtomicU64::new(0),
        }
    }
}

/// One more sample to expose: name, type (`counter` or `gauge`), help, value.
pub type Sample = (&'static str, &'static str, &'static str, u64);

/// A route's label: the path with ids replaced by their parameter names, so labels stay few.
pub fn route_label(path: &str) -> String {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let label = match segments.as_slice() {
        ["", "v1", "agents", _] => "/v1/agents/{name}".to_string(),
        ["", "v1", "agents", _, tail] => format!("/v1/agents/{{name}}/{tail}"),
        ["", "v1", "api-keys", _] => "/v1/api-keys/{id}".to_string(),
        ["", "v1", "runs", _] => "/v1/runs/{id}".to_string(),
        ["", "v1", "runs", _, tail] => format!("/v1/runs/{{id}}/{tail}"),
        ["", "v1", "webhooks", _] => "/v1/webhooks/{id}".to_string(),
        ["", "v1", "webhooks", _, "deliveries"] => "/v1/webhooks/{id}/deliveries".to_string(),
        ["", "v1", "webhooks", _, "deliveries", _, "retry"] => {
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry".to_string()
        }
        ["", "admin", "v1", "tenants", _] => "/admin/v1/tenants/{slug}".to_string(),
        ["", "admin", "v1", "tenants", _, "api-keys"] => {
            "/admin/v1/tenants/{slug}/api-keys".to_string()
        }
        ["", "docs", ..] => "/docs".to_string(),
        _ => path.to_string(),
    };
    const KNOWN: &[&str] = &[
        "/v1/agents",
        "/v1/agents/{name}",
        "/v1/agents/{name}/run",
        "/v1/agents/{name}/runs",
        "/v1/chat",
        "/v1/chat/stream",
        "/v1/usage",
        "/v1/api-keys",
        "/v1/api-keys/{id}",
        "/v1/runs/{id}",
        "/v1/runs/{id}/cancel",
        "/v1/runs/{id}/events",
        "/v1/webhooks",
        "/v1/webhooks/{id}",
        "/v1/webhooks/{id}/deliveries",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
        "/admin/v1/tenants",
        "/admin/v1/tenants/{slug}",
        "/admin/v1/tenants/{slug}/api-keys",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/openapi.yaml",
        "/docs",
    ];
    if KNOWN.contains(&label.as_str()) {
        label
    } else {
        "other".to_string()
    }
}

fn method_label(m: &poem::http::Method) -> &'static str {
    match *m {
        poem::http::Method::GET => "GET",
        poem::http::Method::POST => "POST",
        poem::http::Method::PUT => "PUT",
        poem::http::Method::PATCH => "PATCH",
        poem::http::Method::DELETE => "DELETE",
        poem::http::Method::HEAD => "HEAD",
        poem::http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Runs `record` with this server's recorder as the one the `metrics` macros use.
    fn with<T>(&self, record: impl FnOnce() -> T) -> T {
        metrics_facade::with_local_recorder(&self.recorder, record)
    }

    pub fn record_request(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        self.with(|| {
            let status = status.to_string();
            counter!(REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
                .increment(1);
            metrics_facade::histogram!(LATENCY, "route" => route).record(seconds);
        });
        if self.requests.fetch_add(1, Ordering::Relaxed) % FOLD_EVERY == FOLD_EVERY - 1 {
            self.recorder.handle().run_upkeep();
        }
    }

    pub fn record_run(&self, status: &str, tokens: u64) {
        self.with(|| counter!(RUNS, "status" => status.to_string()).increment(1));
        self.record_tokens(tokens);
    }

    pub fn record_tokens(&self, tokens: u64) {
        self.with(|| counter!(TOKENS).increment(tokens));
    }

    /// Counts a request refused by its key's rate limit.
    pub fn rate_limited(&self) {
        self.with(|| counter!(RATE_LIMITED).increment(1));
    }

    /// The Prometheus text exposition, with the engine's tool-call counts (by built-in tool,
    /// every other name a model asked for counted as `unknown`), webhook attempts by outcome,
    /// and `extra` samples.
    pub fn render(
        &self,
        tool_calls: &[((&'static str, &'static str), u64)],
        webhook_attempts: &[(&'static str, u64)],
        extra: &[Sample],
    ) -> String {
        self.with(|| {
            for &((tool, outcome), n) in tool_calls {
                counter!(TOOL_CALLS, "tool" => tool, "outcome" => outcome).absolute(n);
            }
            for &(outcome, n) in webhook_attempts {
                counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).absolute(n);
            }
            for &(name, kind, help, value) in extra {
                if kind == "gauge" {
                    describe_gauge!(name, help);
                    gauge!(name).set(value as f64);
                } else {
                    describe_counter!(name, help);
                    counter!(name).absolute(value);
                }
            }
        });
        self.recorder.handle().render()
    }
}

/// Middleware recording every request in [`Metrics`].
pub struct Track(pub std::sync::Arc<Metrics>);

impl<E: Endpoint> Middleware<E> for Track {
    type Output = TrackEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        TrackEndpoint(ep, self.0.clone())
    }
}

pub struct TrackEndpoint<E>(E, std::sync::Arc<Metrics>);

impl<E: Endpoint> Endpoint for TrackEndpoint<E> {
    type Output = Response;
    async fn call(&self, req: Request) -> Result<Response> {
        let route = route_label(req.uri().path());
        let method = method_label(req.method());
        let start = Instant::now();
        let resp = self.0.call(req).await.map(IntoResponse::into_response);
        let status = match &resp {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.status().as_u16(),
        };
        self.1
            .record_request(route, method, status, start.elapsed().as_secs_f64());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_collapse_ids() {
        assert_eq!(
            route_label("/v1/agents/risk-analyzer/run"),
            "/v1/agents/{name}/run"
        );
        assert_eq!(route_label("/v1/api-keys/0190"), "/v1/api-keys/{id}");
        assert_eq!(route_label("/v1/agents"), "/v1/agents");
        assert_eq!(route_label("/random/thing"), "other");
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record_request("/v1/usage".into(), "GET", 200, 0.002);
        m.record_run("completed", 10);
        m.rate_limited();
        let text = m.render(
            &[(("calculator", "ok"), 2)],
            &[("delivered", 3)],
            &[
                (
                    "ares_database_up",
                    "gauge",
                    "Whether the database answers.",
                    1,
                ),
                ("ares_history_purged_total", "counter", "Purged.", 7),
            ],
        );
        assert!(text.contains("# TYPE ares_database_up gauge\nares_database_up 1\n"));
        assert!(text.contains(
            "# HELP ares_history_purged_total Purged.\n# TYPE ares_history_purged_total counter\nares_history_purged_total 7\n"
        ));
        assert!(text.contains("ares_rate_limited_total 1\n"));
        assert!(text.contains(
            "ares_http_requests_total{route=\"/v1/usage\",method=\"GET\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "ares_http_request_duration_seconds_bucket{route=\"/v1/usage\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains(
            "ares_http_request_duration_seconds_bucket{route=\"/v1/usage\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "ares_http_request_duration_seconds_bucket{route=\"/v1/usage\",le=\"+Inf\"} 1\n\
             ares_http_request_duration_seconds_sum{route=\"/v1/usage\"} 0.002\n\
             ares_http_request_duration_seconds_count{route=\"/v1/usage\"} 1\n"
        ));
        assert!(text.contains("ares_runs_total{status=\"completed\"} 1"));
        assert!(text.contains("ares_tokens_total 10"));
        assert!(text.contains("ares_tool_calls_total{tool=\"calculator\",outcome=\"ok\"} 2"));
    }

    #[test]
    fn every_metric_keeps_its_help_type_and_buckets() {
        let m = Metrics::default();
        m.record_request("/v1/usage".into(), "GET", 200, 0.002);
        m.record_run("completed", 10);
        let text = m.render(&[(("calculator", "ok"), 1)], &[], &[]);
        for (name, kind, help) in [
            (
                REQUESTS,
                "counter",
                "HTTP requests by route, method and status.",
            ),
            (LATENCY, "histogram", "Time to the response head, by route."),
            (RUNS, "counter", "Agent runs by final status."),
            (TOKENS, "counter", "Model tokens used by runs and chats."),
            (
                TOOL_CALLS,
                "counter",
                "Tool calls made for models, by tool and outcome.",
            ),
            (
                RATE_LIMITED,
                "counter",
                "Requests refused because their API key exceeded its rate limit.",
            ),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")),
                "{name}:\n{text}"
            );
        }
        let bounds: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix(
                    "ares_http_request_duration_seconds_bucket{route=\"/v1/usage\",le=\"",
                )
            })
            .filter_map(|l| l.split('"').next()?.parse().ok())
            .filter(|bound: &f64| bound.is_finite())
            .collect();
        assert_eq!(bounds, BUCKETS);
        assert!(text.contains("ares_rate_limited_total 0\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.record_request("/a\"b\\c\nd".into(), "GET", 200, 0.1);
        m.record_run("odd\"\n", 0);
        let text = m.render(&[], &[], &[]);
        assert!(
            text.contains(
                "ares_http_requests_total{route=\"/a\\\"b\\\\c\\nd\",method=\"GET\",status=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("ares_runs_total{status=\"odd\\\"\\n\"} 1\n"),
            "{text}"
        );
        // Every line is still a comment or a sample: nothing spilled onto a line of its own.
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            assert!(line.starts_with("ares_"), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn tool_calls_render_by_tool_and_outcome() {
        let m = Metrics::default();
        let calls = [(("calculator", "ok"), 2), (("unknown", "error"), 4)];
        let text = m.render(&calls, &[], &[]);
        for line in [
            "ares_tool_calls_total{tool=\"calculator\",outcome=\"ok\"} 2",
            "ares_tool_calls_total{tool=\"unknown\",outcome=\"error\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn each_server_has_its_own_recorder() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.record_tokens(5);
        assert!(a.render(&[], &[], &[]).contains("ares_tokens_total 5\n"));
        assert!(b.render(&[], &[], &[]).contains("ares_tokens_total 0\n"));
    }

    #[test]
    fn folding_samples_between_renders_loses_none() {
        let m = Metrics::default();
        let n = FOLD_EVERY * 2 + 3;
        for _ in 0..n {
            m.record_request("/v1/usage".into(), "GET", 200, 0.002);
        }
        let text = m.render(&[], &[], &[]);
        assert!(
            text.contains(&format!(
                "ares_http_request_duration_seconds_count{{route=\"/v1/usage\"}} {n}\n"
            )),
            "{text}"
        );
    }
}
