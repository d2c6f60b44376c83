//! Audit endpoints: a streamed export (a million rows never sit in memory) and verification of
//! the hash chain.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use palisade_store::{AuditFilter, ExportFormat};

use super::{auth, ok_json, query, store_error};
use crate::app::Gateway;
use crate::core::error::CallError;
use crate::wire::GatewayBody;

type Reply = Result<Response<GatewayBody>, CallError>;

const DAY_MS: i64 = 86_400_000;

/// A time bound from the query: RFC 3339, or a bare date. A bare date as the upper bound
/// includes that whole day (`--to 2026-03-15` means up to the end of March 15).
pub fn parse_bound(value: &str, upper: bool) -> Result<i64, CallError> {
    let ms = palisade_store::time::parse_rfc3339_ms(value)
        .map_err(|e| CallError::bad_request("invalid_request", e.to_string()))?;
    let bare_date = value.len() == 10 && !value.contains('T');
    Ok(if upper && bare_date { ms + DAY_MS } else { ms })
}

/// The filter an export request asks for.
pub fn filter_from_query(
    q: &std::collections::HashMap<String, String>,
) -> Result<AuditFilter, CallError> {
    let s = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let status =
        match s("status") {
            None => None,
            Some(v) => Some(v.parse::<i64>().map_err(|_| {
                CallError::bad_request("invalid_request", "status must be a number")
            })?),
        };
    Ok(AuditFilter {
        agent: s("agent"),
        team: s("team"),
        owner: s("owner"),
        kind: s("kind"),
        target: s("target"),
        status,
        run_id: s("run_id"),
        request_id: s("request_id"),
        from_ms: s("from").map(|v| parse_bound(&v, false)).transpose()?,
        to_ms: s("to").map(|v| parse_bound(&v, true)).transpose()?,
        ..Default::default()
    })
}

pub async fn export(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    let user = auth::require(gw, parts, auth::READ).await?;
    let q = query::parse(parts.uri.query());
    let format: ExportFormat = q
        .get("format")
        .map(String::as_str)
        .unwrap_or("csv")
        .parse()
        .map_err(store_error)?;
    let filter = filter_from_query(&q)?;
    let what = serde_json::to_string(&filter).unwrap_or_default();
    gw.audit_admin(&user.name, "audit.exported", &what, 200)
        .await;
    let (tx, body) = GatewayBody::channel(64);
    let mut rows = Box::pin(gw.store.audit_stream(filter));
    tokio::spawn(async move {
        if format == ExportFormat::Csv
            && tx
                .send(Bytes::from(palisade_store::export::audit_csv_header()))
                .await
                .is_err()
        {
            return;
        }
        while let Some(row) = rows.next().await {
            let line = match row {
                Ok(r) => palisade_store::export::audit_row(format, &r),
                Err(e) => {
                    // The status line is gone; end the body early so the client sees a short
                    // read, and log why.
                    tracing::error!("audit export stopped: {e}");
                    return;
                }
            };
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(r)
}

pub async fn verify(gw: &Arc<Gateway>, parts: &Parts) -> Reply {
    let user = auth::require(gw, parts, auth::READ).await?;
    let report = verify_as(gw, &user).await?;
    ok_json(StatusCode::OK, &report)
}

/// Check the hash chain, audited as `user`'s doing.
pub async fn verify_as(
    gw: &Gateway,
    user: &palisade_store::User,
) -> Result<palisade_store::VerifyReport, CallError> {
    let report = gw.store.verify_audit().await.map_err(store_error)?;
    gw.audit_admin(
        &user.name,
        "audit.verified",
        if report.ok { "ok" } else { "broken" },
        200,
    )
    .await;
    Ok(report)
}
