//! The life of an MCP request, following the steps of an LLM call (`crate::call`): identity
//! (done by the transport) and delegation chain, the plugin chain (`filter-tools` for the
//! listings, `on-request` / `on-response` / `on-complete` for `tools/call`, `prompts/get` and
//! `resources/read`), the upstream server (with the chain token, never the agent's key), and
//! one audit event per listing and per use: agent, chain, server, item, argument hash,
//! verdicts, latency, `isError`.
//!
//! Prompts and resources are policed like tools, under the names plugins see in `call.target`
//! and in `filter-tools`: a tool is `server__tool`, a prompt `prompt:server__prompt`, a
//! resource (or resource template) `resource:server+uri` ([`Item::policy_name`]).
//!
//! Refusals: a tool the agent may not see, or that does not exist, is JSON-RPC -32602
//! `Unknown tool` (hidden tools are indistinguishable from missing ones; a prompt likewise, a
//! resource -32002 `Resource not found`); forbidden tool arguments and other denials of a tool
//! are a tool result with `isError: true` and the plugin's message, so the model can correct
//! its call (for a prompt or resource, a JSON-RPC error with the message); a `hold` goes to
//! the approvals gate ([`gated`]): the call waits
//! (bounded by `[approvals] wait_secs`) for the humans, then runs once holding the approval's
//! execution claim, gets the stored result of the identical call that already ran, or is
//! answered with a tool result (`isError: true`) saying where the approval stands, its state in
//! `_meta["palisade/approval"]`.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub use super::held::APPROVAL_META;
use super::held::{Gated, gated, record, refusal, with_approval};
use super::uris::expose_uris;
use crate::app::Gateway;
use crate::call::life::no_usage;
use crate::call::request::{MAX_NAME_LEN, MAX_URI_LEN, check_name};
use crate::call::{CallLife, Draft, Ending};
use crate::core::error::CallError;
use crate::mcp::catalog::Hub;
use crate::mcp::changes::Listing;
use crate::mcp::jsonrpc::{self, error, result, tool_error};
use crate::mcp::upstream::UpstreamError;
use crate::plugins::bindings::{Agent as WitAgent, Call, CallKind, Tool};
use crate::plugins::{CallSession, Runtime};
use crate::registry::Agent;

/// Everything a request needs.
pub struct Ctx<'a> {
    pub gw: &'a Arc<Gateway>,
    pub rt: &'a Arc<Runtime>,
    pub hub: &'a Arc<Hub>,
    pub agent: &'a Arc<Agent>,
    pub request_id: &'a Arc<str>,
    /// Key of the upstream sessions held for this agent session.
    pub session: &'a str,
    pub headers: &'a HeaderMap,
    /// Whether the agent hung up (the call goes on; its audit says so).
    pub gone: crate::core::drain::ClientGone,
    /// The stateless 2026-07-28 revision: results carry `resultType`.
    pub modern: bool,
}

/// Answer one request; also returns the extended chain token for the `palisade-chain` header.
pub async fn dispatch(
    ctx: &Ctx<'_>,
    method: &str,
    id: &Value,
    params: Value,
) -> (Value, Option<String>) {
    let (mut reply, token) = answer(ctx, method, id, params).await;
    if ctx.modern
        && let Some(Value::Object(r)) = reply.get_mut("result")
    {
        r.entry("resultType").or_insert(json!("complete"));
    }
    (reply, token)
}

/// What a use request reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Tool,
    Prompt,
    Resource,
}

impl Item {
    pub fn of_method(method: &str) -> Option<Item> {
        match method {
            "tools/call" => Some(Item::Tool),
            "prompts/get" => Some(Item::Prompt),
            "resources/read" => Some(Item::Resource),
            _ => None,
        }
    }

    fn method(self) -> &'static str {
        match self {
            Item::Tool => "tools/call",
            Item::Prompt => "prompts/get",
            Item::Resource => "resources/read",
        }
    }

    /// The parameter that names it.
    fn param(self) -> &'static str {
        match self {
            Item::Tool | Item::Prompt => "name",
            Item::Resource => "uri",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Item::Tool => "tool",
            Item::Prompt => "prompt",
            Item::Resource => "resource",
        }
    }

    /// The name plugins see for an exposed name of a listing: tools as they are, prompts
    /// `prompt:`, resources and resource templates `resource:` before it.
    pub fn policy_name(l: Listing, exposed: &str) -> String {
        match l {
            Listing::Tools => exposed.to_string(),
            Listing::Prompts => format!("prompt:{exposed}"),
            Listing::Resources | Listing::Templates => format!("resource:{exposed}"),
        }
    }

    fn listing(self) -> Listing {
        match self {
            Item::Tool => Listing::Tools,
            Item::Prompt => Listing::Prompts,
            Item::Resource => Listing::Resources,
        }
    }

    /// The protocol error for a name that is hidden or does not exist.
    fn unknown(self, id: &Value, name: &str, modern: bool) -> Value {
        match self {
            Item::Tool => error(
                id,
                jsonrpc::INVALID_PARAMS,
                format!("Unknown tool: {name}"),
                None,
            ),
            Item::Prompt => error(
                id,
                jsonrpc::INVALID_PARAMS,
                format!("Unknown prompt: {name}"),
                None,
            ),
            // 2026-07-28 folds "resource not found" into -32602.
            Item::Resource if modern => error(
                id,
                jsonrpc::INVALID_PARAMS,
                format!("Resource not found: {name}"),
                Some(json!({"uri": name})),
            ),
            Item::Resource => error(
                id,
                jsonrpc::RESOURCE_NOT_FOUND,
                "Resource not found",
                Some(json!({"uri": name})),
            ),
        }
    }
}

async fn answer(ctx: &Ctx<'_>, method: &str, id: &Value, params: Value) -> (Value, Option<String>) {
    let listing = Listing::of_method(method);
    let item = Item::of_method(method);
    if method == "ping" {
        return (result(id, json!({})), None);
    }
    let completion = method == "completion/complete";
    if listing.is_none() && item.is_none() && !completion {
        return (
            error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                format!("Method not found: {method}"),
                None,
            ),
            None,
        );
    }
    // Completions are policed like listings: they reveal, never run.
    let lists = listing.is_some() || completion;
    // From here the call's end is guarded: audited once, whatever happens.
    let mut life = begin(ctx, method, lists);
    let run = match crate::call::delegation(ctx.gw, ctx.rt, ctx.headers, &ctx.agent.id)
        .and_then(|run| ctx.gw.audit.admit().map(|_| run))
    {
        Ok(run) => run,
        Err(e) => {
            let (_, msg) = jsonrpc::call_error(id, &e);
            let _ = life.finish(Ending::failed(&e, no_usage())).await;
            return (msg, None);
        }
    };
    let token = ctx.gw.chain_keys(ctx.rt).sign(&run);
    life.draft.event.run_id = run.run_id.clone();
    life.draft.event.chain = run.agents.clone();
    // A use counts against the rate and concurrency limits (no tokens); a refusal is
    // answered 429 with `Retry-After` (`jsonrpc::reply`).
    if !lists && let Err(e) = life.admit(ctx.rt, ctx.agent, None).await {
        let (_, msg) = jsonrpc::call_error(id, &e);
        let _ = life.finish(Ending::failed(&e, no_usage())).await;
        return (msg, Some(token));
    }
    let call = wit_call(ctx, &run, lists);
    let mut out = Out::default();
    let draft = &mut life.draft;
    let reply = match (listing, item) {
        (Some(l), _) => list(ctx, id, call, l, &mut out).await,
        (None, Some(item)) => use_item(ctx, id, params, call, &token, draft, &mut out, item).await,
        (None, None) => complete_ref(ctx, id, params, call, &token, draft, &mut out).await,
    };
    // The one finish: on-complete for uses, then the audit event (MCP answers are HTTP 200;
    // the outcome is in the code).
    life.session = out.session;
    life.call = out.call;
    let code = out.code.or_else(|| {
        out.facts
            .is_none()
            .then(|| "internal_error: the MCP request ended unrecorded".into())
    });
    if let Some(f) = &out.facts {
        life.draft.event.provider = f.server.clone();
        life.facts = Some(f.to_json());
    }
    let plugin = code.as_ref().and_then(|_| life.decider());
    let end = Ending {
        status: 200,
        code,
        plugin,
        usage: no_usage(),
        truncated: false,
    };
    let _ = life.finish(end).await;
    (reply, Some(token))
}

/// 2026-07-28 results say they are complete and, being per agent, private.
fn mark(v: &mut Value, list: bool) {
    if let Value::Object(m) = v {
        m.insert("resultType".into(), json!("complete"));
        if list {
            m.insert("ttlMs".into(), json!(0));
            m.insert("cacheScope".into(), json!("private"));
        }
    }
}

fn begin(ctx: &Ctx<'_>, method: &str, listing: bool) -> CallLife {
    let kind = if listing { "tool-list" } else { "tool-call" };
    let mut life = CallLife::begin(
        ctx.gw,
        ctx.rt,
        ctx.request_id.clone(),
        kind,
        ctx.gone.clone(),
    );
    let e = &mut life.draft.event;
    e.target = method.into();
    e.agent = Some(ctx.agent.id.clone());
    e.owner = Some(ctx.agent.owner.clone());
    e.team = Some(ctx.agent.team.clone());
    life
}

fn wit_call(ctx: &Ctx<'_>, run: &crate::chain::Chain, listing: bool) -> Call {
    let a = ctx.agent;
    Call {
        request_id: ctx.request_id.to_string(),
        run_id: run.run_id.clone(),
        chain: run.agents.clone(),
        agent: WitAgent {
            id: a.id.clone(),
            name: a.name.clone(),
            owner: a.owner.clone(),
            team: a.team.clone(),
            labels: a.labels.clone(),
        },
        kind: if listing {
            CallKind::ToolList
        } else {
            CallKind::ToolCall
        },
        target: String::new(),
        body: String::new(),
        stream: false,
        input_tokens: 0,
        max_output_tokens: 0,
        max_cost: 0,
    }
}

/// What the audit keeps about an MCP call beside the plugins' verdicts.
struct Facts {
    method: &'static str,
    server: Option<String>,
    /// The tool or prompt name, or resource URI, the server knows.
    item: Option<(Item, String)>,
    arguments_sha256: Option<String>,
    is_error: Option<bool>,
    shown: Option<(Listing, usize, usize)>,
}

impl Facts {
    /// The MCP part of the audit event's verdicts.
    fn to_json(&self) -> Value {
        let mut mcp = json!({"gateway": "mcp", "method": self.method});
        if let Some(s) = &self.server {
            mcp["server"] = json!(s);
        }
        if let Some((item, t)) = &self.item {
            mcp[item.noun()] = json!(t);
        }
        if let Some(h) = &self.arguments_sha256 {
            mcp["arguments_sha256"] = json!(h);
        }
        if let Some(e) = self.is_error {
            mcp["is_error"] = json!(e);
        }
        if let Some((l, shown, total)) = self.shown {
            mcp[format!("{}_shown", l.key())] = json!(shown);
            mcp[format!("{}_total", l.key())] = json!(total);
        }
        mcp
    }
}

/// How an MCP request ended, handed back to [`answer`], which finishes the call's life once.
#[derive(Default)]
struct Out {
    /// The plugin session, where the chain ran.
    session: Option<CallSession>,
    /// The call, where `on-complete` is due (uses; listings have no completion).
    call: Option<Call>,
    facts: Option<Facts>,
    code: Option<String>,
}

impl Out {
    fn end(
        &mut self,
        session: Option<CallSession>,
        call: Option<Call>,
        facts: Facts,
        code: Option<String>,
    ) {
        self.session = session;
        self.call = call;
        self.facts = Some(facts);
        self.code = code;
    }
}

async fn list(ctx: &Ctx<'_>, id: &Value, call: Call, l: Listing, out: &mut Out) -> Value {
    let entries = ctx.hub.list(l).await;
    let items: Vec<Tool> = entries
        .iter()
        .map(|e| Tool {
            name: Item::policy_name(l, e.exposed(l)),
            description: e.json["description"]
                .as_str()
                .or_else(|| e.json["title"].as_str())
                .unwrap_or_default()
                .to_string(),
        })
        .collect();
    let total = items.len();
    let mut session = ctx.rt.chain.session_of(ctx.request_id, &ctx.agent.id);
    let facts = |shown| Facts {
        method: l.method(),
        server: None,
        item: None,
        arguments_sha256: None,
        is_error: None,
        shown: Some((l, shown, total)),
    };
    match session.filter_tools(&call, items).await {
        Ok(kept) => {
            let kept: std::collections::HashSet<String> =
                kept.into_iter().map(|t| t.name).collect();
            let shown: Vec<Value> = entries
                .iter()
                .filter(|e| kept.contains(&Item::policy_name(l, e.exposed(l))))
                .map(|e| e.json.clone())
                .collect();
            let n = shown.len();
            let mut r = json!({ l.key(): shown });
            mark(&mut r, ctx.modern);
            out.end(Some(session), None, facts(n), None);
            result(id, r)
        }
        Err(e) => {
            let code = e.code().to_string();
            out.end(Some(session), None, facts(0), Some(code));
            error(id, jsonrpc::INTERNAL_ERROR, e.to_string(), None)
        }
    }
}

/// `completion/complete`: argument suggestions for a prompt or a resource template, from its
/// server, if the agent may see it (the same decision as its listing); else the same error as
/// using it.
async fn complete_ref(
    ctx: &Ctx<'_>,
    id: &Value,
    mut params: Value,
    call: Call,
    token: &str,
    draft: &mut Draft,
    out: &mut Out,
) -> Value {
    let mut facts = Facts {
        method: "completion/complete",
        server: None,
        item: None,
        arguments_sha256: None,
        is_error: None,
        shown: None,
    };
    let r = &params["ref"];
    let (item, listing, field, name) = match r["type"].as_str() {
        Some("ref/prompt") => (Item::Prompt, Listing::Prompts, "name", r["name"].as_str()),
        Some("ref/resource") => (Item::Resource, Listing::Templates, "uri", r["uri"].as_str()),
        _ => (Item::Tool, Listing::Tools, "", None),
    };
    let Some(name) = name.map(str::to_string) else {
        out.end(None, None, facts, Some("invalid_params".into()));
        return error(
            id,
            jsonrpc::INVALID_PARAMS,
            "completion/complete needs `ref` of type ref/prompt (with `name`) or ref/resource \
             (with `uri`)",
            None,
        );
    };
    draft.event.target = name.clone();
    if let Err(e) = check_name(&format!("ref.{field}"), &name, max_len(item)) {
        out.end(None, None, facts, Some("invalid_params".into()));
        return error(id, jsonrpc::INVALID_PARAMS, e.to_string(), None);
    }
    let resolved = match item {
        Item::Resource => ctx.hub.resolve_resource(&name).await,
        _ => ctx
            .hub
            .resolve(Item::Prompt.listing(), &name)
            .await
            .map(|e| (e.server, e.original)),
    };
    let Some((server_index, original)) = resolved else {
        out.end(None, None, facts, Some("unknown_tool".into()));
        return item.unknown(id, &name, ctx.modern);
    };
    let server = ctx.hub.servers[server_index].clone();
    facts.server = Some(server.name().to_string());
    facts.item = Some((item, original.clone()));
    let shown = Tool {
        name: Item::policy_name(listing, &name),
        description: String::new(),
    };
    let mut session = ctx.rt.chain.session_of(ctx.request_id, &ctx.agent.id);
    let visible = match session.filter_tools(&call, vec![shown]).await {
        Ok(kept) => !kept.is_empty(),
        Err(e) => {
            let code = e.code().to_string();
            out.end(Some(session), None, facts, Some(code));
            return error(id, jsonrpc::INTERNAL_ERROR, e.to_string(), None);
        }
    };
    if !visible {
        out.end(Some(session), None, facts, Some("unknown_tool".into()));
        return item.unknown(id, &name, ctx.modern);
    }
    params["ref"][field] = json!(original);
    if let Value::Object(p) = &mut params {
        // The agent's protocol metadata is not the upstream session's.
        p.remove("_meta");
    }
    match server
        .request(ctx.session, "completion/complete", params, Some(token))
        .await
    {
        Ok(mut v) => {
            mark(&mut v, false);
            out.end(Some(session), None, facts, None);
            result(id, v)
        }
        Err(e) => {
            let (code, message, data) = match e {
                UpstreamError::Rpc {
                    code,
                    message,
                    data,
                } => (code, message, data),
                other => (jsonrpc::INTERNAL_ERROR, other.to_string(), None),
            };
            out.end(Some(session), None, facts, Some("upstream_error".into()));
            error(id, code, message, data)
        }
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `tools/call`, `prompts/get` and `resources/read`.
#[allow(clippy::too_many_arguments)]
async fn use_item(
    ctx: &Ctx<'_>,
    id: &Value,
    params: Value,
    mut call: Call,
    token: &str,
    draft: &mut Draft,
    out: &mut Out,
    item: Item,
) -> Value {
    let mut facts = Facts {
        method: item.method(),
        server: None,
        item: None,
        arguments_sha256: None,
        is_error: None,
        shown: None,
    };
    let Some(name) = params.get(item.param()).and_then(Value::as_str) else {
        out.end(None, None, facts, Some("invalid_params".into()));
        return error(
            id,
            jsonrpc::INVALID_PARAMS,
            format!("{} needs a string `{}`", item.method(), item.param()),
            None,
        );
    };
    draft.event.target = name.to_string();
    if let Err(e) = check_name(item.param(), name, max_len(item)) {
        out.end(None, None, facts, Some("invalid_params".into()));
        return error(id, jsonrpc::INVALID_PARAMS, e.to_string(), None);
    }
    let args = match (item, params.get("arguments")) {
        (Item::Resource, _) => json!({ "uri": name }),
        (_, None | Some(Value::Null)) => json!({}),
        (_, Some(a @ Value::Object(_))) => a.clone(),
        (_, Some(_)) => {
            out.end(None, None, facts, Some("invalid_params".into()));
            return error(
                id,
                jsonrpc::INVALID_PARAMS,
                format!("{} `arguments` must be an object", item.method()),
                None,
            );
        }
    };
    let args_text = args.to_string();
    facts.arguments_sha256 = Some(sha256_hex(&args_text));
    if ctx.gw.audit.settings().store_bodies {
        draft.event.body = Some(args_text.clone());
    }
    let resolved = match item {
        Item::Resource => ctx.hub.resolve_resource(name).await,
        _ => ctx
            .hub
            .resolve(item.listing(), name)
            .await
            .map(|e| (e.server, e.original)),
    };
    let Some((server_index, original)) = resolved else {
        out.end(None, None, facts, Some("unknown_tool".into()));
        return item.unknown(id, name, ctx.modern);
    };
    let server = ctx.hub.servers[server_index].clone();
    facts.server = Some(server.name().to_string());
    facts.item = Some((item, original.clone()));
    call.target = Item::policy_name(item.listing(), name);
    call.body = args_text;

    // A refusal in the shape the item has: tools answer with a tool result the model can act
    // on, prompts and resources with an error.
    let refused = |code: &str, tool_result: Value| match item {
        Item::Tool => result(id, tool_result),
        _ if code == "tool_arguments_denied" => {
            refusal(id, jsonrpc::INVALID_PARAMS, code, &tool_result)
        }
        _ => refusal(id, jsonrpc::REFUSED, code, &tool_result),
    };

    // The plugin chain, request side.
    let mut session = ctx.rt.chain.session_of(ctx.request_id, &ctx.agent.id);
    // A hold waits for its approval; once approved this call holds the one claim to run it,
    // and the chain goes on after the holding plugin.
    let mut claim = None;
    let decision = match session.on_request(&mut call).await {
        Err(CallError::ApprovalRequired { plugin, hold }) => {
            session.park();
            match gated(ctx, &call, &plugin, &hold).await {
                Ok(Gated::Proceed(c)) => {
                    claim = Some(c);
                    session.resume_after_hold(&mut call).await
                }
                Ok(Gated::Answer(mut v, code)) => {
                    let is_error = v.get("isError").and_then(Value::as_bool).unwrap_or(false);
                    facts.is_error = Some(is_error);
                    mark(&mut v, ctx.modern);

                    let reply = if is_error {
                        refused(code.as_deref().unwrap_or("approval_required"), v)
                    } else {
                        result(id, v)
                    };
                    out.end(Some(session), Some(call), facts, code);
                    return reply;
                }
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    let args = match decision {
        Ok(d) if d.rewritten => {
            let rewritten = serde_json::from_str::<Value>(&call.body).ok();
            let usable = match (item, rewritten) {
                // The plugins decided on this URI: another one would go unjudged.
                (Item::Resource, _) => None,
                (_, Some(v @ Value::Object(_))) => Some(v),
                _ => None,
            };
            match usable {
                Some(v) => v,
                None => {
                    let e = format!(
                        "a plugin rewrote the {} request into something that cannot be sent",
                        item.noun()
                    );
                    out.end(
                        Some(session),
                        Some(call),
                        facts,
                        Some("internal_error".into()),
                    );
                    return error(id, jsonrpc::INTERNAL_ERROR, e, None);
                }
            }
        }
        Ok(_) => args,
        Err(e) => {
            let code = e.code().to_string();
            let reply = match &e {
                CallError::Denied { code, .. } if code == "unknown_tool" => {
                    item.unknown(id, name, ctx.modern)
                }
                CallError::Denied { message, code, .. } => {
                    facts.is_error = Some(true);
                    refused(code, tool_error(message.clone()))
                }
                CallError::ApprovalRequired { plugin, hold } => {
                    // A second hold after an approval cleared the first: not supported.
                    facts.is_error = Some(true);
                    refused(
                        "approval_required",
                        tool_error(format!(
                            "Using '{name}' is held twice (rule '{}' of policy plugin \
                             '{plugin}': {}) after an approval cleared the first hold; one \
                             approval rule per call is supported",
                            hold.rule, hold.summary
                        )),
                    )
                }
                other => jsonrpc::call_error(id, other).1,
            };

            out.end(Some(session), Some(call), facts, Some(code));
            return reply;
        }
    };

    // A read under a listed template must also pass the template's own decision, so a
    // template hidden from the agent cannot be read through.
    if item == Item::Resource
        && let Some(t) = ctx.hub.template_for(server_index, &original).await
    {
        let mut as_listing = call.clone();
        as_listing.kind = CallKind::ToolList;
        let shown = Tool {
            name: Item::policy_name(Listing::Templates, t.exposed(Listing::Templates)),
            description: String::new(),
        };
        let visible = session
            .filter_tools(&as_listing, vec![shown])
            .await
            .is_ok_and(|kept| !kept.is_empty());
        if !visible {
            let code = "unknown_tool".to_string();

            out.end(Some(session), Some(call), facts, Some(code));
            return item.unknown(id, name, ctx.modern);
        }
    }

    // Upstream.
    let upstream_params = match item {
        Item::Resource => json!({ "uri": original }),
        _ => json!({"name": original, "arguments": args}),
    };
    let answer = server
        .request(ctx.session, item.method(), upstream_params, Some(token))
        .await;
    let upstream_result = match answer {
        Ok(r) => r,
        Err(e) => {
            let (reply, code) = match &e {
                UpstreamError::Rpc {
                    code,
                    message,
                    data,
                } => (
                    error(id, *code, message.clone(), data.clone()),
                    "upstream_error",
                ),
                UpstreamError::Timeout { .. } => (
                    error(id, jsonrpc::INTERNAL_ERROR, e.to_string(), None),
                    "upstream_timeout",
                ),
                _ => (
                    error(id, jsonrpc::INTERNAL_ERROR, e.to_string(), None),
                    "upstream_unavailable",
                ),
            };

            out.end(Some(session), Some(call), facts, Some(code.into()));
            return reply;
        }
    };

    // Response side: the result passes on-response (redaction, checks).
    let text = upstream_result.to_string();
    let reply = match session.on_response(&call, text).await {
        Ok(body) => match serde_json::from_str::<Value>(&body) {
            Ok(mut v @ Value::Object(_)) => {
                if item == Item::Tool {
                    facts.is_error =
                        Some(v.get("isError").and_then(Value::as_bool).unwrap_or(false));
                }
                if ctx.hub.settings.prefixed() {
                    expose_uris(&mut v, item, ctx.hub, server_index);
                }
                if let Some(c) = claim.take() {
                    let approval = c.status.to_json();
                    record(ctx, c, &v).await;
                    v = with_approval(v, approval);
                }
                mark(&mut v, ctx.modern);
                Ok(result(id, v))
            }
            _ => Err((
                "internal_error".to_string(),
                error(
                    id,
                    jsonrpc::INTERNAL_ERROR,
                    format!(
                        "a plugin rewrote the {} result into something that is not a JSON object",
                        item.noun()
                    ),
                    None,
                ),
            )),
        },
        Err(CallError::Denied { code, message, .. }) => {
            facts.is_error = Some(true);
            let r = refused(&code, tool_error(message));
            Err((code, r))
        }
        Err(e) => Err((e.code().to_string(), jsonrpc::call_error(id, &e).1)),
    };
    match reply {
        Ok(r) => {
            out.end(Some(session), Some(call), facts, None);
            r
        }
        Err((code, r)) => {
            out.end(Some(session), Some(call), facts, Some(code));
            r
        }
    }
}

/// The longest name an agent may use for `item` (a resource is named by its URI).
fn max_len(item: Item) -> usize {
    match item {
        Item::Tool | Item::Prompt => MAX_NAME_LEN,
        Item::Resource => MAX_URI_LEN,
    }
}
