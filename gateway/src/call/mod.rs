//! The life of a call, its steps in order in one place. Both ingress formats feed it (OpenAI
//! and Anthropic, see [`format`]; MCP with its issue).
//!
//! 1. **Policy snapshot**: the whole call runs on the runtime (config, agents, chain) current
//!    when it arrived, even if a reload swaps in another meanwhile.
//! 2. **Identity**: the agent's key, before reading the body, so unknown callers cost nothing;
//!    then the delegation chain (`crate::chain`): the `palisade-chain` token verified and
//!    extended with the authenticated caller (or a new run), returned on every answer.
//! 3. **Body**: bounded read, then JSON checked enough for plugins to rely on its shape.
//! 4. **Plugin chain, request side**: may deny, hold, rewrite or route.
//! 5. **Upstream**: the (possibly rewritten) request, with the provider's key.
//! 6. **Plugin chain, response side**: `on-response` for full answers, `on-text` per delta.
//! 7. **Complete**: usage, costed from the `[prices]` table, reaches `on-complete`; unsettled
//!    reservations are released.
//! 8. **Audit**: one event, whatever happened.

pub mod estimate;
pub mod format;
pub mod held;
pub mod life;
pub mod replay;
pub mod request;
pub mod spend_guard;
pub mod stream;

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::Gateway;
use crate::chain::{self, ChainError};
use crate::core::clock::now_ms;
use crate::core::drain::ClientGone;
use crate::core::error::CallError;
use crate::core::settings::{Durability, Price, StreamOverrun};
use crate::plugins::bindings::Usage;
use crate::plugins::{CallSession, Runtime};
use crate::providers::{failover, routes};
use crate::wire::GatewayBody;
use crate::wire::errors::json_response;
use format::Ingress;
pub use life::{CallLife, Draft, Ending};

pub use crate::core::ids::new_id;

fn empty_usage() -> Usage {
    life::no_usage()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    gw: &Arc<Gateway>,
    request_id: Arc<str>,
    parts: Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    llm_call(gw, request_id, parts, body, Ingress::OpenAi).await
}

/// `POST /v1/messages`: the same call, read and answered in Anthropic's format.
pub async fn messages(
    gw: &Arc<Gateway>,
    request_id: Arc<str>,
    parts: Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    llm_call(gw, request_id, parts, body, Ingress::Anthropic).await
}

async fn llm_call(
    gw: &Arc<Gateway>,
    request_id: Arc<str>,
    parts: Parts,
    body: Incoming,
    ingress: Ingress,
) -> Response<GatewayBody> {
    // Step 1: one policy snapshot for the whole call.
    let rt = gw.policy.current();
    let gone = parts
        .extensions
        .get::<ClientGone>()
        .cloned()
        .unwrap_or_default();
    // From here the call's end is guarded: it is audited and settled once, whatever happens.
    let mut life = Some(CallLife::begin(
        gw,
        &rt,
        request_id.clone(),
        "llm-call",
        gone,
    ));
    let mut token: Option<String> = None;
    let result = chat_inner(
        gw,
        &rt,
        &request_id,
        parts,
        body,
        &mut life,
        &mut token,
        ingress,
    )
    .await;
    let (mut resp, end, error) = match result {
        // The streaming task owns the call's life from here.
        Ok(Reply::Streaming(mut resp)) => {
            add_chain(&mut resp, token.as_deref());
            return resp;
        }
        Ok(Reply::Done(resp, usage)) => {
            let end = Ending::ok(resp.status().as_u16(), usage);
            (resp, end, None)
        }
        Err(e @ CallError::Unauthorized(_)) => {
            // A refused key is counted by the registry, not audited: nothing ran, and a row per
            // request would let anyone grow the audit log.
            if let Some(life) = life {
                life.dismiss();
            }
            return ingress.error(&e, &request_id);
        }
        Err(e) => {
            let resp = ingress.error(&e, &request_id);
            let mut end = Ending::failed(&e, empty_usage());
            end.status = resp.status().as_u16();
            (resp, end, Some(e))
        }
    };
    add_chain(&mut resp, token.as_deref());
    if let Some(e) = &error {
        e.log(&request_id);
    }
    let Some(life) = life else { return resp };
    match life.finish(end).await {
        // In sync mode an answer whose event could not be committed is not sent.
        Err(e) if gw.audit.settings().durability == Durability::Sync => {
            ingress.error(&e, &request_id)
        }
        _ => resp,
    }
}

enum Reply {
    Done(Response<GatewayBody>, Usage),
    Streaming(Response<GatewayBody>),
}

#[allow(clippy::too_many_arguments)]
async fn chat_inner(
    gw: &Arc<Gateway>,
    rt: &Arc<Runtime>,
    request_id: &Arc<str>,
    parts: Parts,
    body: Incoming,
    life_slot: &mut Option<CallLife>,
    token_slot: &mut Option<String>,
    ingress: Ingress,
) -> Result<Reply, CallError> {
    let life = life_slot
        .as_mut()
        .ok_or_else(|| CallError::Internal("a call without its life".into()))?;
    let CallLife {
        draft,
        session: session_slot,
        call: call_slot,
        spend,
        limits,
        ..
    } = life;
    // Step 2: identity, before the body is read.
    let key = request::agent_key(&parts.headers).ok_or_else(|| gw.registry.missing_key())?;
    let (agent, _) = gw.registry.authenticate(key).await?;
    // No call runs unaudited: refuse while the audit log cannot be written.
    gw.audit.admit()?;
    draft.event.agent = Some(agent.id.clone());
    draft.event.owner = Some(agent.owner.clone());
    draft.event.team = Some(agent.team.clone());

    // Step 2b: the delegation chain, extended with the authenticated caller.
    let run = delegation(gw, rt, &parts.headers, &agent.id)?;
    *token_slot = Some(gw.chain_keys(rt).sign(&run));
    draft.event.run_id = run.run_id.clone();
    draft.event.chain = run.agents.clone();

    // Step 3: the body.
    let bytes = request::read_body(
        &parts.headers,
        body,
        rt.settings.max_body_bytes,
        rt.settings.server.body_timeout,
    )
    .await?;
    let bytes = ingress.canonical(bytes)?;
    let chat = request::parse_chat(&bytes)?;
    draft.event.target = chat.model.clone();
    draft.event.input_tokens = i64::from(chat.input_tokens);
    let body_text = String::from_utf8(bytes.to_vec())
        .map_err(|_| CallError::bad_request("invalid_json", "request body is not UTF-8"))?;
    // The route's targets; the worst case is costed at the dearest of them.
    let mut plan = routes::plan(&rt.settings, &chat.model);
    let price = routes::dearest_price(
        &rt.settings,
        &plan,
        u64::from(chat.input_tokens),
        u64::from(chat.max_output_tokens),
    );
    // Step 3b: the rate and concurrency limits, before any plugin instance or budget is
    // taken; the admission is settled where the call's life ends.
    *limits = admit(
        gw,
        rt,
        &agent,
        Some(u64::from(chat.input_tokens)),
        draft,
        session_slot,
    )
    .await?;
    let mut llm = request::llm_call(request_id, &run.run_id, &agent, &chat, body_text);
    llm.chain = run.agents;
    if chat.stream
        && let Some(n) = rt.settings.host.stream_reserve_output_tokens
    {
        // Reserve for an estimate up front; the spend guard grows the holds as the stream runs.
        llm.max_output_tokens = llm.max_output_tokens.min(n);
    }
    llm.max_cost = price.map_or(0, |p| {
        p.cost(
            u64::from(chat.input_tokens),
            0,
            u64::from(llm.max_output_tokens),
        )
    });
    let call = call_slot.insert(llm);

    // Step 4: the plugin chain, request side.
    let session = session_slot.insert(rt.chain.session(request_id.clone()));
    session.set_agent(&agent.id);
    // A hold waits for its approval (`held`); once approved, this call holds the one claim to
    // run it, and the chain goes on after the holding plugin.
    let mut claim = None;
    let decision = match session.on_request(call).await {
        Err(CallError::ApprovalRequired { plugin, hold }) => {
            // Waiting for humans holds no plugin instance the call no longer needs.
            session.park();
            let replay_as = (ingress, chat.stream);
            match held::admit(gw, rt, call, &plugin, &hold, replay_as).await? {
                held::Held::Proceed(c) => claim = Some(c),
                held::Held::Replay(resp) => return Ok(Reply::Done(resp, empty_usage())),
            }
            session.resume_after_hold(call).await?
        }
        other => other?,
    };
    if gw.audit.settings().store_bodies {
        // After the chain, so what is kept is what its redaction left.
        draft.event.body = Some(call.body.clone());
    }
    if let Some(route) = &decision.route {
        // The last plugin `route` verdict replaces the configured order.
        plan = routes::overridden(&rt.settings, &plan, route)?;
        tracing::debug!(
            request_id = &**request_id,
            ?route,
            "route chosen by a plugin"
        );
    }
    let json = if decision.rewritten {
        match request::parse_chat(call.body.as_bytes()) {
            Ok(c) => c.json,
            Err(e) => {
                return Err(CallError::Internal(format!(
                    "a plugin rewrote the body into an invalid request: {e}"
                )));
            }
        }
    } else {
        chat.json
    };
    // Step 5: upstream, failing over along the plan. Each dialect asks streams for usage, so
    // spend can be settled; the relay strips it where the agent did not ask for it.
    let up = gw.upstreams(rt);
    let ctx = failover::Ctx {
        set: &up.providers,
        breakers: &up.breakers,
        metrics: &gw.metrics,
    };
    // From here the provider may bill the call, answered or not.
    spend.reached_upstream = true;
    spend.price = price;
    let served = failover::run(&ctx, &plan, &json, chat.stream).await;
    let served = match served {
        Ok(s) => {
            note_failovers(session, &s.attempts);
            draft.upstream_time = s.upstream_time;
            s
        }
        Err(f) => {
            note_failovers(session, &f.attempts);
            draft.upstream_time = f.upstream_time;
            return Err(f.error);
        }
    };
    let target = served.target.to_string();
    draft.event.provider = Some(target.clone());
    // Actual usage is costed at the price of the target that served.
    let price = rt
        .settings
        .price(&served.target.provider, &served.target.model)
        .copied();
    spend.price = price;

    let answer = match served.answer {
        failover::Answer::Stream(chunks) => chunks,
        failover::Answer::Full(v) => {
            // Step 6: response side for a full answer.
            let answer = v.to_string();
            let mut usage = usage_from_value(&v, &served.target.provider);
            if !estimate::has_usage(&v) {
                // Missing usage is never zero: the input estimate plus the answer's output.
                usage.input_tokens = chat.input_tokens;
                let out = estimate::tokens_of(estimate::answer_chars(&v));
                usage.output_tokens = u32::try_from(out).unwrap_or(u32::MAX);
                note_estimated_usage(session);
            }
            usage.served_by = target.clone();
            usage.cost = cost_of(price.as_ref(), &usage);
            let answer = session.on_response(call, answer).await?;
            if let Some(c) = claim {
                held::record(gw, c, StatusCode::OK, &answer).await;
            }
            let mut r = ingress.answer(answer)?;
            add_provider(&mut r, &target);
            return Ok(Reply::Done(r, usage));
        }
    };
    {
        let guard = (rt.settings.host.stream_overrun == StreamOverrun::Cut).then(|| {
            spend_guard::SpendGuard::new(session.holds().clone(), price, chat.input_tokens)
        });
        let life = life_slot
            .take()
            .ok_or_else(|| CallError::Internal("a call without its life".into()))?;
        let relay = stream::Relay {
            life,
            wants_usage: chat.wants_usage,
            out: stream::Out {
                egress: ingress.egress(),
                // A claimed stream is kept, as the agent got it, for identical calls to replay.
                record: claim.map(|c| (c, replay::Assembler::default())),
            },
            price,
            guard,
            served_by: target.clone(),
        };
        let body = stream::start(gw.clone(), relay, answer);
        let mut r = Response::new(body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        add_provider(&mut r, &target);
        Ok(Reply::Streaming(r))
    }
}

/// Admit a call of `agent` under the rate and concurrency limits (`crate::limits`); a refusal
/// is noted for the audit (which limit, whose) in `draft` and the call's session.
pub async fn admit(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    agent: &crate::registry::Agent,
    tokens: Option<u64>,
    draft: &mut Draft,
    session: &mut Option<CallSession>,
) -> Result<Option<crate::limits::Admitted>, CallError> {
    let limits = &rt.settings.limits;
    match crate::limits::admit(&gw.services.ledger, limits, &gw.metrics, agent, tokens).await {
        Ok(admitted) => Ok(admitted),
        Err(e) => {
            if let Some(note) = crate::limits::note(&e) {
                let rid: Arc<str> = Arc::from(draft.event.request_id.as_str());
                session
                    .get_or_insert_with(|| rt.chain.session(rid))
                    .notes
                    .push(note);
            }
            draft.event.decided_by = Some("palisade.limits".into());
            Err(e)
        }
    }
}

/// Targets that failed before the one that served, as a note in the call's audit event.
fn note_failovers(session: &mut CallSession, attempts: &[failover::Attempt]) {
    if attempts.is_empty() {
        return;
    }
    session.notes.push(crate::plugins::chain::PluginNote {
        plugin: Arc::from("palisade.failover"),
        hook: "upstream",
        verdict: "failover".into(),
        annotations: attempts
            .iter()
            .map(|a| (a.target.clone(), a.outcome.clone()))
            .collect(),
        error: None,
    });
}

/// The provider sent no usage, so the call is charged from the gateway's estimate; the audit
/// event says so.
pub fn note_estimated_usage(session: &mut CallSession) {
    session.notes.push(crate::plugins::chain::PluginNote {
        plugin: Arc::from("palisade.usage"),
        hook: "complete",
        verdict: "estimated".into(),
        annotations: vec![("usage".into(), "estimated".into())],
        error: None,
    });
}

/// The run this call belongs to: the verified `palisade-chain` token extended with `agent`, or
/// a new run; refused where the token is bad, or missing for an agent that requires one.
pub fn delegation(
    gw: &Gateway,
    rt: &Runtime,
    headers: &http::HeaderMap,
    agent: &str,
) -> Result<chain::Chain, CallError> {
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    match headers.get(chain::HEADER) {
        Some(v) => {
            let token = v
                .to_str()
                .map_err(|_| ChainError::Invalid("not a text header"))?;
            Ok(gw.chain_keys(rt).verify(token, now)?.extend(agent, now))
        }
        None if rt.settings.requires_chain(agent) => Err(ChainError::Required {
            agent: agent.to_string(),
        }
        .into()),
        None => Ok(chain::Chain::start(new_id("run"), agent, now)),
    }
}

/// Cost in micro-USD of what a call used, at `price` (0 where no price is known).
pub fn cost_of(price: Option<&Price>, usage: &Usage) -> u64 {
    price.map_or(0, |p| {
        p.cost(
            u64::from(usage.input_tokens),
            u64::from(usage.cached_tokens),
            u64::from(usage.output_tokens),
        )
    })
}

fn add_chain(r: &mut Response<GatewayBody>, token: Option<&str>) {
    if let Some(v) = token.and_then(|t| HeaderValue::from_str(t).ok()) {
        r.headers_mut().insert(chain::HEADER, v);
    }
}

fn add_provider(r: &mut Response<GatewayBody>, provider: &str) {
    if let Ok(v) = HeaderValue::from_str(provider) {
        r.headers_mut().insert("palisade-provider", v);
    }
}

/// Usage from an OpenAI response or usage chunk.
pub fn usage_of(json: &str, provider: &str) -> Usage {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    usage_from_value(&v, provider)
}

pub fn usage_from_value(v: &serde_json::Value, provider: &str) -> Usage {
    let n = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_u64())
            .map(|x| x.min(u64::from(u32::MAX)) as u32)
            .unwrap_or(0)
    };
    let model = v.get("model").and_then(|m| m.as_str()).unwrap_or_default();
    Usage {
        input_tokens: n("/usage/prompt_tokens"),
        output_tokens: n("/usage/completion_tokens"),
        cached_tokens: n("/usage/prompt_tokens_details/cached_tokens"),
        cost: 0,
        served_by: format!("{provider}/{model}"),
    }
}

/// `GET /v1/models`, for authenticated agents: what a `model` may name through Palisade. The
/// route aliases (`owned_by: "palisade"`), then the default provider's own list (plain model
/// names go there). Without aliases the provider's failure is the answer; with them, the
/// aliases alone are.
pub async fn models(gw: &Gateway, parts: Parts) -> Result<Response<GatewayBody>, CallError> {
    let rt = gw.policy.current();
    let key = request::agent_key(&parts.headers).ok_or_else(|| gw.registry.missing_key())?;
    gw.registry.authenticate(key).await?;
    let mut data: Vec<serde_json::Value> = rt
        .settings
        .routes
        .keys()
        .map(|alias| json!({"id": alias, "object": "model", "created": 0, "owned_by": "palisade"}))
        .collect();
    let providers = gw.providers(&rt);
    let listed = match providers.get(&rt.settings.upstream.name) {
        Some(p) => p.models().await,
        None => None,
    };
    match listed {
        Some(Ok(body)) => {
            let theirs = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("data").and_then(|d| d.as_array()).cloned())
                .unwrap_or_default();
            let aliases = data.len();
            for m in theirs {
                let id = m.get("id").and_then(|i| i.as_str()).unwrap_or_default();
                if !id.is_empty() && !data[..aliases].iter().any(|a| a["id"] == id) {
                    data.push(m);
                }
            }
        }
        Some(Err(e)) if data.is_empty() => return Err(e),
        Some(Err(e)) => tracing::warn!("GET /v1/models lists the aliases only: {e}"),
        None => {}
    }
    let body = json!({"object": "list", "data": data}).to_string();
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}
