//! Request ids: taken from the client's `X-Request-Id` (when sane) or made, echoed on every
//! response, and carried by every log line written while the request is served (one span
//! entered for the whole request; tasks it starts take the span with them).

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const HEADER: &str = "x-request-id";

/// The id of the request this task is answering ("" outside a request).
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// A client's id is kept when it is short and printable, so it cannot inject into logs.
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Runs the request inside a scope and a span that know its id, and sets the response header.
pub async fn scope<E: Endpoint>(next: &E, req: Request) -> Result<Response> {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let header = id.clone();
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = REQUEST_ID
        .scope(id, async move {
            next.call(req).await.map(IntoResponse::into_response)
        })
        .instrument(span)
        .await?;
    if let Ok(v) = header.parse() {
        resp.headers_mut().insert(HEADER, v);
    }
    Ok(resp)
}

/// The middleware form of [`scope`].
pub struct RequestId;

impl<E: Endpoint> Middleware<E> for RequestId {
    type Output = RequestIdEndpoint<E>;
    fn transform(&self, ep: E) -> Self::Output {
        RequestIdEndpoint(ep)
    }
}

pub struct RequestIdEndpoint<E>(E);

impl<E: Endpoint> Endpoint for RequestIdEndpoint<E> {
    type Output = Response;
    async fn call(&self, req: Request) -> Result<Response> {
        scope(&self.0, req).await
    }
}
