//! Ingress: the HTTP server and the routing of endpoints. Every response, whatever its path,
//! carries `palisade-request-id`; unknown paths and methods get errors in OpenAI's shape.
//!
//! Every request runs as its own task, detached from the connection ([`detached`]): when the
//! agent hangs up, hyper drops only the waiting side, and the call goes on to its end, so a
//! tool call under way is recorded with what it did and a completion is settled from the
//! provider's usage (the call's finish records it as 499 `client_closed`). The tasks are the
//! gateway's [`crate::core::drain::Drain`]'s, so a graceful shutdown waits for them.

pub mod mcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::admin;
use crate::app::Gateway;
use crate::call;
use crate::core::drain::ClientGone;
use crate::core::error::CallError;
use crate::wire::GatewayBody;
use crate::wire::errors::{json_response, openai_error};

/// Serve until the gateway starts draining (or the task is dropped). Connections already open
/// go on being served while the drain lasts.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    let draining = gw.drain.clone();
    let stop = draining.draining_signal();
    tokio::pin!(stop);
    loop {
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
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(detached(gw, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// Bind and serve on `addr`; returns the bound address (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Run the request as a task of its own and wait for its answer; if this future is dropped
/// first (the agent hung up), the task goes on and its call is recorded as `client_closed`.
/// A shutdown that cuts calls ends the task's call with `gateway_draining`.
async fn detached(gw: Arc<Gateway>, mut req: Request<Incoming>) -> Response<GatewayBody> {
    let gone = ClientGone::default();
    req.extensions_mut().insert(gone.clone());
    let watch = gone.watch();
    let drain = gw.drain.clone();
    let task = drain.spawn(async move {
        let cut = gw.drain.cut_signal();
        tokio::select! {
            biased;
            r = route(&gw, req) => r,
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

async fn route(gw: &Arc<Gateway>, req: Request<Incoming>) -> Response<GatewayBody> {
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
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(GatewayBody::full(
                gw.metrics.render(&gw.breakers().gauges()),
            ));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (_, "/mcp") => crate::server::mcp::handle(gw, request_id.clone(), parts, body).await,
        (&Method::GET, "/health") if gw.drain.is_draining() => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
        }
        (&Method::GET, "/health") => json_response(StatusCode::OK, r#"{"status":"ok"}"#),
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
