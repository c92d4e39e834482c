//! The server's connections: accepted from a listener, served with HTTP/1 and HTTP/2 through
//! hyper, each bounded in time so that slow or silent clients cannot hold the server.
//!
//! - A request's headers must arrive within `limits.header_timeout` of the connection being
//!   ready for them (hyper's header read timeout, which poem does not set): a client sending
//!   its headers a byte at a time is disconnected, and so is a keep-alive connection that
//!   sends no next request.
//! - A connection with no request in flight and no byte read or written for
//!   `limits.idle_timeout` is closed (HTTP/2 connections have no header timeout).
//! - On shutdown, the listener closes, connections finish their requests (HTTP/1 keep-alive
//!   and HTTP/2 are told to stop), and after `grace` whatever remains is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// How long connections are given to go quiet.
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub grace: Duration,
}

/// Serves `ep` on `listener` until `shutdown` resolves, then waits up to `grace` for the
/// connections to finish their requests.
pub async fn serve<E>(
    listener: TcpListener,
    ep: E,
    shutdown: impl Future<Output = ()> + Send,
    timeouts: Timeouts,
) -> std::io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    let ep = Arc::new(ep);
    let local = LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: Arc::clone(&activity),
        });
        let service = {
            let (ep, local, activity) = (Arc::clone(&ep), local.clone(), Arc::clone(&activity));
            let remote = RemoteAddr(poem::Addr::SocketAddr(remote));
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let (ep, local, remote) = (Arc::clone(&ep), local.clone(), remote.clone());
                let in_flight = InFlight::start(Arc::clone(&activity));
                async move {
                    let req = (req, local, remote, poem::http::uri::Scheme::HTTP).into();
                    let resp: hyper::Response<BoxBody<Bytes, std::io::Error>> =
                        ep.get_response(req).await.into();
                    Ok::<_, Infallible>(resp.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        let idle = timeouts.idle;
        tokio::spawn(async move {
            tokio::select! {
                served = connection => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = activity.idle_for(idle) => {
                    tracing::debug!("closing a connection idle for {} s", idle.as_secs());
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(timeouts.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s of grace; closing them",
            timeouts.grace.as_secs()
        );
    }
    Ok(())
}

/// When a connection last read or wrote a byte, and how many of its requests are in flight.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once the connection has had no request in flight and no byte read or written
    /// for `limit`.
    async fn idle_for(&self, limit: Duration) {
        let limit_ms = limit.as_millis() as u64;
        loop {
            let quiet = self
                .start
                .elapsed()
                .as_millis()
                .saturating_sub(u128::from(self.last.load(Ordering::Relaxed)))
                as u64;
            if quiet >= limit_ms && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = limit_ms.saturating_sub(quiet).max(limit_ms / 4).max(10);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// One request in flight, from its head to the end (or drop) of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct Tracked {
    body: BoxBody<Bytes, std::io::Error>,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket that notes every byte read or written.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
