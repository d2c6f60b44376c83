//! The web console at `/console`: server-rendered HTML (maud templates compiled into the
//! binary), SVG charts drawn by the server, one stylesheet, no JavaScript, no CDN: it works
//! offline and needs no Node toolchain.
//!
//! It is a face on the admin API, not a second one: sign-in takes the same user tokens
//! ([`session`]), roles are checked with [`crate::admin::auth`], and every change calls the
//! same action function the API endpoint calls (e.g. [`crate::admin::agents::create_agent`],
//! [`crate::admin::approvals::decide_as`]), so it is checked, stored and audited alike, with the
//! person who made it.
//!
//! Rules every page keeps:
//! - a page shows only what the signed-in roles may see (the navigation and the buttons come
//!   from the same role lists the actions check, and the actions check again);
//! - every change is a POST carrying the session's CSRF token, compared in constant time; a
//!   POST without it is refused with 403 before anything runs;
//! - every value reaches the HTML through maud, which escapes it (agent names, tool arguments
//!   and audit targets are user input);
//! - responses carry a strict Content-Security-Policy (no script, styles from `/console/static`
//!   only), `frame-ancestors 'none'` and `Cache-Control: no-store`.

mod agents;
mod approvals;
mod audit;
mod charts;
mod layout;
mod overview;
mod policy;
pub mod session;
mod spend;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use maud::Markup;

use self::session::Session;
use crate::app::Gateway;
use crate::core::error::CallError;
use crate::wire::GatewayBody;

/// Largest form body the console reads.
const MAX_FORM: usize = 64 * 1024;

/// A decoded form or query string (the last value of a repeated key wins).
pub type Form = HashMap<String, String>;

/// Why a console request failed; rendered as an HTML page with the status.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// What the admin action refused (its status and message are the API's).
    #[error(transparent)]
    Call(#[from] CallError),
    #[error(
        "this form's CSRF token is missing or belongs to another session: reload the page and try again"
    )]
    Csrf,
    #[error("{0}")]
    Form(String),
    #[error("no console page at {0}")]
    NotFound(String),
}

impl ConsoleError {
    pub fn status(&self) -> u16 {
        match self {
            ConsoleError::Call(e) => e.status(),
            ConsoleError::Csrf => 403,
            ConsoleError::Form(_) => 400,
            ConsoleError::NotFound(_) => 404,
        }
    }
}

type Page = Result<Response<GatewayBody>, ConsoleError>;

/// Route a request under `/console`.
pub async fn route(gw: &Arc<Gateway>, parts: &Parts, body: Incoming) -> Response<GatewayBody> {
    let path = parts.uri.path();
    let rest = path.strip_prefix("/console").unwrap_or("");
    // Agent ids may hold any printable character; links percent-encode them, so decode here.
    let decoded: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let m = &parts.method;
    match (m, segs.as_slice()) {
        (&Method::GET, ["static", "console.css"]) => {
            return with_headers(Response::new(GatewayBody::full(layout::CSS)), "text/css");
        }
        (&Method::GET, ["login"]) => return session_pages::login_form(gw, parts),
        (&Method::POST, ["login"]) => return session_pages::login(gw, parts, body).await,
        _ => {}
    }
    let Some(s) = session::current(gw, &parts.headers).await else {
        if m == Method::GET {
            return redirect("/console/login");
        }
        // A POST without a live session: nothing to check its CSRF token against.
        return error_response(None, &ConsoleError::Csrf);
    };
    let form = if m == Method::POST {
        match read_form(body).await {
            Ok(f) => {
                let given = f.get("csrf").map(String::as_str).unwrap_or("");
                if !session::constant_time_eq(given, &s.csrf) {
                    tracing::warn!(
                        "console: POST {path} by {} without its CSRF token",
                        s.user.name
                    );
                    return error_response(Some(&s), &ConsoleError::Csrf);
                }
                f
            }
            Err(e) => return error_response(Some(&s), &e),
        }
    } else {
        crate::admin::query::parse(parts.uri.query())
    };
    let done = match (m, segs.as_slice()) {
        (&Method::POST, ["logout"]) => Ok(session_pages::logout(gw, parts)),
        (&Method::GET, []) => overview::show(gw, &s).await,
        (&Method::GET, ["agents"]) => agents::list(gw, &s).await,
        (&Method::POST, ["agents"]) => agents::create(gw, &s, &form).await,
        (&Method::GET, ["agents", id]) => agents::show(gw, &s, id).await,
        (&Method::POST, ["agents", id, "suspend"]) => agents::set_status(gw, &s, id, false).await,
        (&Method::POST, ["agents", id, "activate"]) => agents::set_status(gw, &s, id, true).await,
        (&Method::POST, ["agents", id, "keys", key, "rotate"]) => {
            agents::rotate(gw, &s, id, key).await
        }
        (&Method::POST, ["agents", id, "keys", key, "revoke"]) => {
            agents::revoke(gw, &s, id, key).await
        }
        (&Method::GET, ["approvals"]) => approvals::inbox(gw, &s).await,
        (&Method::GET, ["approvals", id]) => approvals::show(gw, &s, id).await,
        (&Method::POST, ["approvals", id, "decide"]) => approvals::decide(gw, &s, id, &form).await,
        (&Method::GET, ["audit"]) => audit::search(gw, &s, &form).await,
        (&Method::GET, ["audit", "export.csv"]) => audit::export(gw, &s, &form).await,
        (&Method::POST, ["audit", "verify"]) => audit::verify(gw, &s).await,
        (&Method::GET, ["audit", seq]) => audit::event(gw, &s, seq).await,
        (&Method::GET, ["spend"]) => spend::page_of(gw, &s, &form).await,
        // The spend page's "open a run" form; a blank id goes back there (its path would
        // come back here).
        (&Method::GET, ["spend", "runs"]) => Ok(match field(&form, "run") {
            "" => redirect("/console/spend"),
            run => redirect(&format!("/console/spend/runs/{}", agents::urlencode(run))),
        }),
        (&Method::GET, ["spend", "runs", run]) => spend::run(gw, &s, run).await,
        (&Method::GET, ["policy"]) => policy::page_of(gw, &s).await,
        _ => Err(ConsoleError::NotFound(path.to_string())),
    };
    match done {
        Ok(r) => r,
        Err(e) => error_response(Some(&s), &e),
    }
}

/// Decode `%XX` in a path segment (`+` is a plus here); invalid escapes are kept.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Refuse unless the session's user holds one of `roles` (the same lists the API checks).
fn require(s: &Session, roles: &[palisade_store::Role]) -> Result<(), ConsoleError> {
    crate::admin::auth::allow(&s.user, roles).map_err(ConsoleError::from)
}

async fn read_form(body: Incoming) -> Result<Form, ConsoleError> {
    let bytes = http_body_util::Limited::new(body, MAX_FORM)
        .collect()
        .await
        .map_err(|_| ConsoleError::Form(format!("the form is larger than {MAX_FORM} bytes")))?
        .to_bytes();
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ConsoleError::Form("the form is not UTF-8".into()))?;
    Ok(crate::admin::query::parse(Some(text)))
}

/// A form field, trimmed; empty when missing.
fn field<'a>(f: &'a Form, name: &str) -> &'a str {
    f.get(name).map(|v| v.trim()).unwrap_or("")
}

/// Security headers every console answer carries, and its content type.
fn with_headers(mut r: Response<GatewayBody>, content_type: &'static str) -> Response<GatewayBody> {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// An HTML page with a status.
fn html(status: StatusCode, m: Markup) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(Bytes::from(m.into_string())));
    *r.status_mut() = status;
    with_headers(r, "text/html; charset=utf-8")
}

/// `303 See Other` to a console path (after a POST, or to the sign-in page).
fn redirect(to: &str) -> Response<GatewayBody> {
    let mut r = with_headers(Response::new(GatewayBody::full(Bytes::new())), "text/plain");
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn error_response(s: Option<&Session>, e: &ConsoleError) -> Response<GatewayBody> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = e.to_string();
    match s {
        Some(s) => html(status, layout::error_page(s, status.as_u16(), &message)),
        None => html(
            status,
            maud::html! { (maud::DOCTYPE) html { body { p #error { (message) } p { a href="/console/login" { "Sign in" } } } } },
        ),
    }
}

/// Sign-in and sign-out.
mod session_pages {
    use super::*;

    /// `GET /console/login`: the form, with a fresh pre-session CSRF cookie.
    pub fn login_form(gw: &Gateway, parts: &Parts) -> Response<GatewayBody> {
        let token = session::random_token();
        let mut r = html(StatusCode::OK, layout::login_page(&token, None));
        let secure = session::is_secure(gw, &parts.headers);
        if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
            session::LOGIN_COOKIE,
            &token,
            600,
            secure,
        )) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    }

    /// `POST /console/login` with `token` and `csrf`: a session for the token's user, if the
    /// token is live and its user holds a role.
    pub async fn login(gw: &Gateway, parts: &Parts, body: Incoming) -> Response<GatewayBody> {
        let form = match read_form(body).await {
            Ok(f) => f,
            Err(e) => return error_response(None, &e),
        };
        let expected = session::cookie(&parts.headers, session::LOGIN_COOKIE).unwrap_or_default();
        let given = field(&form, "csrf");
        if expected.is_empty() || !session::constant_time_eq(given, &expected) {
            return error_response(None, &ConsoleError::Csrf);
        }
        let token = field(&form, "token");
        let user = match gw.store.authenticate_user(token).await {
            Ok(u) => u.filter(|u| !u.roles.is_empty()),
            Err(e) => {
                let e =
                    ConsoleError::Call(CallError::Internal(format!("user store unavailable: {e}")));
                return error_response(None, &e);
            }
        };
        let Some(user) = user else {
            tracing::info!("console: sign-in refused: unknown or revoked token");
            return html(
                StatusCode::UNAUTHORIZED,
                layout::login_page(&expected, Some("Unknown or revoked token.")),
            );
        };
        // A session the browser still holds ends here: a new sign-in never shares a cookie
        // value with an earlier one (whoever else knew it, or another user's, is out).
        if let Some(old) = session::cookie(&parts.headers, session::COOKIE) {
            session::destroy(&old);
        }
        let (id, _) = session::create(gw, &user, token);
        gw.audit_admin(&user.name, "console.signed_in", &user.id, 200)
            .await;
        let secure = session::is_secure(gw, &parts.headers);
        let mut r = redirect("/console");
        for c in [
            session::set_cookie(session::COOKIE, &id, session::cookie_max_age(), secure),
            session::set_cookie(session::LOGIN_COOKIE, "", 0, secure),
        ] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        r
    }

    /// `POST /console/logout`: the session ends here, and its cookie in the browser.
    pub fn logout(gw: &Gateway, parts: &Parts) -> Response<GatewayBody> {
        if let Some(id) = session::cookie(&parts.headers, session::COOKIE) {
            session::destroy(&id);
        }
        let mut r = redirect("/console/login");
        let c = session::set_cookie(
            session::COOKIE,
            "",
            0,
            session::is_secure(gw, &parts.headers),
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_path_segments() {
        assert_eq!(percent_decode("a%2Fb%20c+d"), "a/b c+d");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(agents::urlencode("a/b c<"), "a%2Fb%20c%3C");
        assert_eq!(percent_decode(&agents::urlencode("ünï/x")), "ünï/x");
    }
}
