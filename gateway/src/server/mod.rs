//! Ingress: the HTTP server and the routing of endpoints. Every response, whatever its path,
//! carries `palisade-request-id`; unknown paths and methods get errors in OpenAI's shape.
//!
//! Every request runs as its own task, detached from the connection ([`detached`]): when the
//! agent hangs up, hyper drops only the waiting side, and the call goes on to its end, so a
//! tool call under way is recorded with what it did and a completion is settled from the
//! provider's usage (the call's finish records it as 499 `client_closed`). The tasks are the
//! gateway's [`crate::core::drain::Drain`]'s, so a graceful shutdown waits for them.
//!
//! The shell around the endpoints (connection cap, timeouts, TLS, HTTP/2) is in [`conn`];
//! `/metrics` is open on loopback and guarded beyond it (`[server] metrics_token` or
//! `metrics_listen`; see docs/deploy.md).

pub mod conn;
pub mod mcp;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use self::conn::{Endpoints, Shell};
use crate::core::settings::server::{DEFAULT_MAX_CONNECTIONS, MetricsAccess};

use crate::admin;
use crate::app::Gateway;
use crate::call;
use crate::core::drain::ClientGone;
use crate::core::error::CallError;
use crate::wire::GatewayBody;
use crate::wire::errors::{json_response, openai_error};

/// Serve until the gateway starts draining (or the task is dropped). Connections already open
/// go on being served while the drain lasts. The listener's shell (timeouts, connection cap,
/// TLS) comes from `[server]` as the gateway started; a reload may renew the certificate.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    serve_endpoints(listener, gw, Endpoints::Gateway).await;
}

/// Serve `/metrics` alone (`[server] metrics_listen`), without TLS.
pub async fn serve_metrics(listener: TcpListener, gw: Arc<Gateway>) {
    serve_endpoints(listener, gw, Endpoints::MetricsOnly).await;
}

async fn serve_endpoints(listener: TcpListener, gw: Arc<Gateway>, endpoints: Endpoints) {
    let rt = gw.policy.current();
    let settings = rt.settings.server.clone();
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let metrics_open = match (&settings.metrics, endpoints) {
        (_, Endpoints::MetricsOnly) | (MetricsAccess::Open, _) => true,
        (MetricsAccess::LoopbackOnly, _) => loopback,
        (MetricsAccess::Token(_) | MetricsAccess::OwnListener, _) => false,
    };
    let shell = Arc::new(Shell::new(&settings, endpoints, metrics_open));
    let cap = settings
        .max_connections
        .unwrap_or_else(default_max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    // TLS is on or off for the listener's life; a reload may only renew the certificate.
    let with_tls = endpoints == Endpoints::Gateway && rt.tls.is_some();
    let mut tls = rt.tls.clone().filter(|_| with_tls);
    drop(rt);
    let draining = gw.drain.clone();
    let stop = draining.draining_signal();
    tokio::pin!(stop);
    loop {
        // At the cap, stop accepting: new clients wait in the kernel's backlog (no descriptor
        // of ours) until a connection ends.
        let permit = tokio::select! {
            biased;
            () = &mut stop => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if with_tls && let Some(renewed) = gw.policy.current().tls.clone() {
            tls = Some(renewed);
        }
        tokio::spawn(conn::serve(
            gw.clone(),
            shell.clone(),
            stream,
            tls.clone(),
            permit,
        ));
    }
}

/// The default connection cap: half the open-files limit (the other half is for upstream
/// connections, the database and plugins), at most [`DEFAULT_MAX_CONNECTIONS`].
fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(limit / 2)
        .unwrap_or(usize::MAX)
        .clamp(64, DEFAULT_MAX_CONNECTIONS)
}

/// Raise this process's soft open-files limit to its hard limit (as Go's runtime does): the
/// connection cap's default is derived from it. Returns the limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("cannot raise the open-files limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Bind and serve on `addr`; returns the bound address (port 0 picks one). The backlog is
/// deep, so clients waiting while the connection cap is reached queue in the kernel.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Run the request as a task of its own and wait for its answer; if this future is dropped
/// first (the agent hung up), the task goes on and its call is recorded as `client_closed`.
/// A shutdown that cuts calls ends the task's call with `gateway_draining`.
async fn detached(
    gw: Arc<Gateway>,
    mut req: Request<Incoming>,
    (endpoints, metrics_open): (Endpoints, bool),
) -> Response<GatewayBody> {
    let gone = ClientGone::default();
    req.extensions_mut().insert(gone.clone());
    let watch = gone.watch();
    let drain = gw.drain.clone();
    let task = drain.spawn(async move {
        let cut = gw.drain.cut_signal();
        let route = async {
            match endpoints {
                Endpoints::Gateway => route(&gw, req, metrics_open).await,
                Endpoints::MetricsOnly => metrics_only(&gw, &req),
            }
        };
        tokio::select! {
            biased;
            r = route => r,
            () = cut => openai_error(&CallError::ShuttingDown, ""),
        }
    });
    let mut resp = match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("a request's task failed: {e}");
            openai_error(&CallError::Internal("the request's task failed".into()), "")
        }
    };
    watch.answered();
    if drain.is_draining() {
        // Tell keep-alive clients to reconnect (to another replica).
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The metrics listener: `GET /metrics`, nothing else.
fn metrics_only(gw: &Gateway, req: &Request<Incoming>) -> Response<GatewayBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => metrics(gw),
        (_, "/metrics") => openai_error(
            &CallError::MethodNotAllowed {
                method: req.method().to_string(),
                path: "/metrics".into(),
            },
            "",
        ),
        (_, path) => openai_error(
            &CallError::NotFound {
                message: format!("no endpoint at {path}: this listener serves /metrics only"),
            },
            "",
        ),
    }
}

fn metrics(gw: &Gateway) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(
        gw.metrics.render(&gw.breakers().gauges()),
    ));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// `GET /metrics` on the main listener, as `[server]` allows it.
fn guarded_metrics(
    gw: &Gateway,
    parts: &http::request::Parts,
    open: bool,
) -> Result<Response<GatewayBody>, CallError> {
    let access = gw.policy.current().settings.server.metrics.clone();
    // On loopback, a request a proxy forwarded (nginx on the same host) came from beyond it.
    let proxied = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| parts.headers.contains_key(*h));
    if open && !(proxied && matches!(access, MetricsAccess::LoopbackOnly)) {
        return Ok(metrics(gw));
    }
    match &access {
        MetricsAccess::Token(token) => {
            let given = crate::call::request::agent_key(&parts.headers).unwrap_or("");
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(metrics(gw))
            } else {
                Err(CallError::Unauthorized(
                    "/metrics needs `Authorization: Bearer <[server] metrics_token>`",
                ))
            }
        }
        MetricsAccess::OwnListener => Err(CallError::NotFound {
            message: "/metrics is served on [server] metrics_listen".into(),
        }),
        MetricsAccess::LoopbackOnly | MetricsAccess::Open => Err(CallError::Unauthorized(
            "/metrics is closed beyond loopback: set [server] metrics_token or metrics_listen",
        )),
    }
}

/// Compare secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest;
    // Hashing first makes the comparison length-independent too.
    let (a, b) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn route(
    gw: &Arc<Gateway>,
    req: Request<Incoming>,
    metrics_open: bool,
) -> Response<GatewayBody> {
    let request_id: Arc<str> = Arc::from(call::new_id("req"));
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let mut resp = match (&parts.method, path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => {
            call::chat_completions(gw, request_id.clone(), parts, body).await
        }
        (&Method::POST, "/v1/messages") => {
            call::messages(gw, request_id.clone(), parts, body).await
        }
        (&Method::GET, "/v1/models") => match call::models(gw, parts).await {
            Ok(r) => r,
            Err(e) => openai_error(&e, &request_id),
        },
        (&Method::GET, "/metrics") => match guarded_metrics(gw, &parts, metrics_open) {
            Ok(r) => r,
            Err(e) => openai_error(&e, &request_id),
        },
        (_, "/mcp") => crate::server::mcp::handle(gw, request_id.clone(), parts, body).await,
        (&Method::GET, "/health") if gw.drain.is_draining() => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
        }
        (&Method::GET, "/health") => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
        (_, p) if p == "/console" || p.starts_with("/console/") => {
            crate::console::route(gw, &parts, body).await
        }
        (_, p) if p == "/admin/status" || p.starts_with("/admin/api/") => {
            match admin::route(gw, &parts, body).await {
                Some(Ok(r)) => r,
                Some(Err(e)) => openai_error(&e, &request_id),
                None => openai_error(
                    &CallError::NotFound {
                        message: format!("no endpoint at {path}"),
                    },
                    &request_id,
                ),
            }
        }
        (_, "/v1/chat/completions" | "/v1/messages" | "/v1/models" | "/health" | "/metrics") => {
            let e = CallError::MethodNotAllowed {
                method: parts.method.to_string(),
                path,
            };
            openai_error(&e, &request_id)
        }
        _ => {
            let e = CallError::NotFound {
                message: format!("no endpoint at {path}"),
            };
            openai_error(&e, &request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("palisade-request-id", v);
    }
    resp
}
