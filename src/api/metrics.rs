//! Prometheus metrics: requests by route and status, latency, runs by status, tokens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    runs: Mutex<BTreeMap<String, u64>>,
    tokens: AtomicU64,
    rate_limited: AtomicU64,
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
        ["", "admin", "v1", "tenants", _] => "/admin/v1/tenants/{slug}".to_string(),
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
        "/admin/v1/tenants",
        "/admin/v1/tenants/{slug}",
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
    pub fn record_request(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((route.clone(), method, status))
            .or_default() += 1;
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = latency.entry(route).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    pub fn record_run(&self, status: &str, tokens: u64) {
        *self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status.to_string())
            .or_default() += 1;
        self.record_tokens(tokens);
    }

    pub fn record_tokens(&self, tokens: u64) {
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts a request refused by its key's rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the engine's tool-call counts and `extra` samples.
    pub fn render(&self, tool_calls: &[((String, &'static str), u64)], extra: &[Sample]) -> String {
        let mut out = String::new();
        let rate_limited: Sample = (
            "ares_rate_limited_total",
            "counter",
            "Requests refused because their API key exceeded its rate limit.",
            self.rate_limited.load(Ordering::Relaxed),
        );
        for (name, kind, help, value) in extra.iter().chain([&rate_limited]) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out.push_str(
            "# HELP ares_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE ares_http_requests_total counter\n");
        for ((route, method, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "ares_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP ares_http_request_duration_seconds Time to the response head, by route.\n",
        );
        out.push_str("# TYPE ares_http_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (bound, n) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "ares_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "ares_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "ares_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "ares_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP ares_runs_total Agent runs by final status.\n");
        out.push_str("# TYPE ares_runs_total counter\n");
        for (status, n) in self.runs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "ares_runs_total{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP ares_tokens_total Model tokens used by runs and chats.\n");
        out.push_str("# TYPE ares_tokens_total counter\n");
        let _ = writeln!(
            out,
            "ares_tokens_total {}",
            self.tokens.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP ares_tool_calls_total Tool calls made for models, by tool and outcome.\n",
        );
        out.push_str("# TYPE ares_tool_calls_total counter\n");
        for ((tool, outcome), n) in tool_calls {
            let _ = writeln!(
                out,
                "ares_tool_calls_total{{tool=\"{tool}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out
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
            &[(("calculator".to_string(), "ok"), 2)],
            &[(
                "ares_database_up",
                "gauge",
                "Whether the database answers.",
                1,
            )],
        );
        assert!(text.contains("# TYPE ares_database_up gauge\nares_database_up 1\n"));
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
        assert!(text.contains("ares_runs_total{status=\"completed\"} 1"));
        assert!(text.contains("ares_tokens_total 10"));
        assert!(text.contains("ares_tool_calls_total{tool=\"calculator\",outcome=\"ok\"} 2"));
    }
}
