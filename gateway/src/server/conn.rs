//! One client connection, from accept to close: the shell around the endpoints.
//!
//! Each connection holds one permit of the listener's connection cap for as long as it is
//! open, so the gateway's sockets stay bounded whatever clients do. Then, in order:
//!
//! 1. **Writes that stall** ([`WriteDeadline`], under TLS so handshake and records count): a
//!    write blocked longer than `write_timeout` (the client stopped reading) fails, and the
//!    connection ends; a stream being relayed to it then ends as `client_closed`.
//! 2. **TLS**, when configured: the handshake must finish within `header_timeout`; ALPN picks
//!    HTTP/2 or HTTP/1.1.
//! 3. **HTTP/1.1 or HTTP/2** (hyper-util's auto builder: ALPN, or the HTTP/2 preface in
//!    cleartext). HTTP/1.1 headers must arrive within `header_timeout` (hyper's own timer,
//!    which also bounds how long a keep-alive connection waits for its next request).
//! 4. **Deadlines this driver keeps** for both versions: a first request within
//!    `header_timeout` of the accept, and no request in flight for `idle_timeout` ends the
//!    connection gracefully. A response body counts as in flight until it is sent or dropped.
//! 5. **Responses that stop moving**: a body with data ready that hyper has not taken for
//!    `write_timeout` (an HTTP/2 client that keeps its flow-control window shut never blocks a
//!    socket write, and answers pings, so neither 1. nor keep-alive notices it) ends the whole
//!    connection; its calls end as `client_closed`. A body waiting for its upstream is not
//!    stalled: only data the client does not take counts ([`Owed`]).
//! 6. **Drain**: when the gateway starts draining, the connection is shut down gracefully
//!    (HTTP/2 GOAWAY; HTTP/1.1 closes after the response in flight), so keep-alive clients
//!    move to another replica instead of sending calls that the drain would cut.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, Sleep};

use crate::app::Gateway;
use crate::core::settings::server::ServerSettings;
use crate::wire::GatewayBody;

/// What the endpoints of a listener are: the gateway's, or `/metrics` alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Endpoints {
    Gateway,
    MetricsOnly,
}

/// The per-listener settings every connection is served with.
pub struct Shell {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub endpoints: Endpoints,
    /// `/metrics` is open to anyone on this listener without a token (the default on
    /// loopback).
    pub metrics_open: bool,
    builder: auto::Builder<TokioExecutor>,
}

impl Shell {
    pub fn new(s: &ServerSettings, endpoints: Endpoints, metrics_open: bool) -> Shell {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(s.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            // A peer that stops answering pings is gone: its streams end as client_closed.
            .keep_alive_interval(Some(s.idle_timeout.min(Duration::from_secs(30))))
            .keep_alive_timeout(s.write_timeout)
            .max_concurrent_streams(256);
        Shell {
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            write_timeout: s.write_timeout,
            endpoints,
            metrics_open,
            builder,
        }
    }
}

/// Both transports behind one type.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serve one accepted connection until it closes; `_permit` is its place under the cap.
pub async fn serve(
    gw: Arc<Gateway>,
    shell: Arc<Shell>,
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    _permit: OwnedSemaphorePermit,
) {
    let accepted = Instant::now();
    let _open = gw.metrics.connection_opened();
    let _ = tcp.set_nodelay(true);
    let io = WriteDeadline::new(tcp, shell.write_timeout);
    let io: Box<dyn Io> = match tls {
        None => Box::new(io),
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(shell.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let activity = Activity::new();
    let seen = activity.clone();
    let endpoints = (shell.endpoints, shell.metrics_open);
    let drain = gw.drain.clone();
    let svc = service_fn(move |req| {
        let gw = gw.clone();
        let busy = seen.begin();
        async move {
            let resp = super::detached(gw, req, endpoints).await;
            Ok::<_, std::convert::Infallible>(resp.map(|body| busy.track(body)))
        }
    });
    let conn = shell.builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let draining = drain.draining_signal();
    tokio::pin!(draining);
    let mut changes = activity.subscribe();
    let mut closing = false;
    loop {
        let idle = activity.deadline(accepted, shell.header_timeout, shell.idle_timeout);
        // While requests are in flight, look at their bodies once per write timeout.
        let at = match idle {
            Some(at) if !closing => at,
            _ => Instant::now() + shell.write_timeout,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = changes.changed() => {}
            () = &mut draining, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = tokio::time::sleep_until(at) => {
                if activity.stalled(shell.write_timeout) {
                    tracing::debug!(
                        "a response was not taken for {} ms (the client stopped reading); closing",
                        shell.write_timeout.as_millis()
                    );
                    return;
                }
                if idle.is_none() || closing {
                    continue;
                }
                if !activity.seen_request() {
                    // Not even one request's headers in time: close without ceremony.
                    tracing::debug!("no request within the header timeout; closing");
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Requests in flight on one connection, and when it last went quiet.
#[derive(Clone)]
struct Activity {
    inner: Arc<ActivityInner>,
}

struct ActivityInner {
    in_flight: AtomicUsize,
    /// The response bodies in flight, each with when it last had data hyper did not take.
    bodies: Mutex<Vec<Weak<Owed>>>,
    /// Bumped on every start and end, with the instant the connection last became idle
    /// (`None` before the first request).
    changed: watch::Sender<Option<Instant>>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            inner: Arc::new(ActivityInner {
                in_flight: AtomicUsize::new(0),
                bodies: Mutex::new(Vec::new()),
                changed: watch::Sender::new(None),
            }),
        }
    }

    fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.inner.changed.subscribe()
    }

    fn seen_request(&self) -> bool {
        self.inner.changed.borrow().is_some()
    }

    /// A request started; the guard ends it when its response is sent or dropped.
    fn begin(&self) -> Busy {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        self.inner.changed.send_replace(Some(Instant::now()));
        Busy(self.inner.clone())
    }

    /// Whether a response body in flight has had data the client did not take for `limit`.
    fn stalled(&self, limit: Duration) -> bool {
        let now = Instant::now();
        let mut bodies = self.inner.bodies.lock().unwrap_or_else(|p| p.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        bodies
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|o| o.since())
            .any(|since| now.saturating_duration_since(since) >= limit)
    }

    /// When the connection should be closed if nothing changes: `None` while a request is in
    /// flight.
    fn deadline(&self, accepted: Instant, header: Duration, idle: Duration) -> Option<Instant> {
        if self.inner.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match *self.inner.changed.borrow() {
            None => Some(accepted + header),
            Some(quiet_since) => Some(quiet_since + idle),
        }
    }
}

struct Busy(Arc<ActivityInner>);

impl Busy {
    /// The response's body, watched until it is sent or dropped.
    fn track(self, body: GatewayBody) -> Tracked {
        let owed = Arc::new(Owed::default());
        // Hyper owes the first poll from now.
        owed.mark();
        self.0
            .bodies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&owed));
        Tracked {
            body,
            owed,
            _busy: self,
        }
    }
}

/// When a body last had data for hyper that hyper did not take: set when the body hands out a
/// frame (until hyper polls again) and when a body waiting for data is woken (its data is
/// ready); cleared whenever hyper polls it. Nanoseconds since [`base`], plus one (0: nothing
/// owed).
#[derive(Default)]
struct Owed(AtomicU64);

/// The instant [`Owed`] counts from.
fn base() -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl Owed {
    fn mark(&self) {
        let nanos = Instant::now().saturating_duration_since(base()).as_nanos();
        let t = u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1;
        let _ = self
            .0
            .compare_exchange(0, t, Ordering::AcqRel, Ordering::Acquire);
    }

    fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn since(&self) -> Option<Instant> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            t => Some(base() + Duration::from_nanos(t - 1)),
        }
    }
}

/// Hyper's waker, marking the body's data as owed when the body wakes it.
struct MarkOnWake {
    owed: Arc<Owed>,
    waker: Waker,
}

impl Wake for MarkOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.owed.mark();
        self.waker.wake_by_ref();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.send_replace(Some(Instant::now()));
    }
}

/// A response body that keeps its request counted as in flight until it is done.
pub struct Tracked {
    body: GatewayBody,
    owed: Arc<Owed>,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.owed.clear();
        let waker = Waker::from(Arc::new(MarkOnWake {
            owed: self.owed.clone(),
            waker: cx.waker().clone(),
        }));
        let polled = Pin::new(&mut self.body).poll_frame(&mut Context::from_waker(&waker));
        if let Poll::Ready(Some(_)) = &polled {
            // Hyper owes the next poll.
            self.owed.mark();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket whose writes fail with `TimedOut` once one stays blocked past `timeout`.
pub struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        WriteDeadline {
            io,
            timeout,
            blocked: None,
        }
    }

    /// After a pending write: arm the deadline (once) and fail if it passed.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<R>> {
        let timeout = self.timeout;
        let sleep = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for {} ms",
                self.timeout.as_millis()
            ),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Pending => self.pending(cx),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_its_deadline_fails() {
        let (a, _b) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(a, Duration::from_millis(300));
        w.write_all(&[0; 16]).await.unwrap();
        let started = Instant::now();
        let e = w.write_all(&[0; 16]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_requests() {
        let a = Activity::new();
        let t0 = Instant::now();
        let (h, i) = (Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(
            a.deadline(t0, h, i),
            Some(t0 + h),
            "first request by the header time"
        );
        let busy = a.begin();
        assert_eq!(a.deadline(t0, h, i), None, "never while busy");
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(busy);
        assert_eq!(a.deadline(t0, h, i), Some(Instant::now() + i));
        assert!(a.seen_request());
    }
}
