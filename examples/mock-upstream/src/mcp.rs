//! A fake MCP server at `POST /mcp` (Streamable HTTP, no sessions) and on stdio
//! (`mock-upstream --mcp-stdio`) with what a support desk might expose: tools
//! `crm_query {table, q}`, `hr_salary {employee}`, `send_email {to, subject, body}` and
//! `enable_refunds {}`, which adds the tool `issue_refund {order}` and announces it with
//! `notifications/tools/list_changed` (over HTTP the answer is then an event stream carrying
//! the notification before the response); prompts `reply_template {tone}` and
//! `salary_letter {employee}`; resources `desk://policies/refunds`, `desk://hr/salaries` and
//! the template `desk://tickets/{id}`. Sends are counted in the [`MockState`] so the demo and
//! tests can check how many emails really went out. Nothing here talks to anything.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::MockState;

/// The protocol version the mock answers with when the client asks for one it does not know.
pub const VERSION: &str = "2025-11-25";

/// What the server sends back for one message.
pub struct Reply {
    pub status: StatusCode,
    /// Notifications first, then the response; empty for a notification.
    pub messages: Vec<Value>,
}

impl Reply {
    /// As HTTP: one JSON message, or an event stream when there is more than one.
    pub fn http_body(&self) -> Option<(&'static str, Bytes)> {
        match self.messages.as_slice() {
            [] => None,
            [one] => Some(("application/json", Bytes::from(one.to_string()))),
            many => {
                let text: String = many
                    .iter()
                    .map(|m| format!("event: message\ndata: {m}\n\n"))
                    .collect();
                Some(("text/event-stream", Bytes::from(text)))
            }
        }
    }
}

/// Answers one JSON-RPC message.
pub fn answer(body: &[u8], state: &MockState) -> Reply {
    let msg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let err = rpc_error(&Value::Null, -32700, &format!("parse error: {e}"));
            return Reply {
                status: StatusCode::BAD_REQUEST,
                messages: vec![err],
            };
        }
    };
    let Some(id) = msg.get("id").cloned() else {
        return Reply {
            status: StatusCode::ACCEPTED,
            messages: Vec::new(),
        };
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let mut messages = Vec::new();
    let result = match msg.get("method").and_then(Value::as_str).unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(VERSION),
            "capabilities": {"tools": {"listChanged": true}, "prompts": {}, "resources": {},
                             "completions": {}},
            "serverInfo": {"name": "mock-upstream", "version": env!("CARGO_PKG_VERSION")},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools(state.refunds_enabled())}),
        "tools/call" => {
            let (result, changed) = call(&params, state);
            if changed {
                messages
                    .push(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
            }
            result
        }
        "prompts/list" => json!({"prompts": prompts()}),
        "prompts/get" => match prompt(&params) {
            Ok(r) => r,
            Err(m) => return error_reply(&id, -32602, &m),
        },
        "completion/complete" => complete(&params),
        "resources/list" => json!({"resources": resources()}),
        "resources/templates/list" => json!({"resourceTemplates": [{
            "uriTemplate": "desk://tickets/{id}",
            "name": "ticket",
            "description": "A support ticket by number",
            "mimeType": "text/plain",
        }]}),
        "resources/read" => match read(&params) {
            Some(r) => r,
            None => return error_reply(&id, -32002, "Resource not found"),
        },
        other => return error_reply(&id, -32601, &format!("method not found: {other}")),
    };
    messages.push(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    Reply {
        status: StatusCode::OK,
        messages,
    }
}

fn error_reply(id: &Value, code: i64, message: &str) -> Reply {
    Reply {
        status: StatusCode::OK,
        messages: vec![rpc_error(id, code, message)],
    }
}

/// Suggestions for `reply_template`'s `tone` and the ticket template's `id`.
fn complete(params: &Value) -> Value {
    let prefix = params
        .pointer("/argument/value")
        .and_then(Value::as_str)
        .unwrap_or("");
    let choices: &[&str] = match (
        params.pointer("/ref/name").and_then(Value::as_str),
        params.pointer("/ref/uri").and_then(Value::as_str),
        params.pointer("/argument/name").and_then(Value::as_str),
    ) {
        (Some("reply_template"), _, Some("tone")) => &["formal", "friendly"],
        (_, Some("desk://tickets/{id}"), Some("id")) => &["1042", "1043"],
        _ => &[],
    };
    let values: Vec<&str> = choices
        .iter()
        .copied()
        .filter(|c| c.starts_with(prefix))
        .collect();
    json!({"completion": {"values": values, "total": values.len(), "hasMore": false}})
}

fn prompts() -> Value {
    json!([
        {"name": "reply_template", "description": "Draft a reply to a customer",
         "arguments": [{"name": "tone", "description": "friendly or formal", "required": true}]},
        {"name": "salary_letter", "description": "A salary statement for an employee (HR only)",
         "arguments": [{"name": "employee", "required": true}]},
    ])
}

fn prompt(params: &Value) -> Result<Value, String> {
    let arg = |k: &str| {
        params
            .pointer(&format!("/arguments/{k}"))
            .and_then(Value::as_str)
    };
    let text = match params.get("name").and_then(Value::as_str).unwrap_or("") {
        "reply_template" => format!(
            "Write a {} reply to the customer's last message. Thank them first.",
            arg("tone").unwrap_or("friendly")
        ),
        "salary_letter" => format!(
            "Write a letter stating that {} earns 123,456 USD a year.",
            arg("employee").unwrap_or("the employee")
        ),
        other => return Err(format!("Unknown prompt: {other}")),
    };
    Ok(json!({"description": "from the support desk",
              "messages": [{"role": "user", "content": {"type": "text", "text": text}}]}))
}

fn resources() -> Value {
    json!([
        {"uri": "desk://policies/refunds", "name": "refund-policy",
         "description": "The refund policy", "mimeType": "text/plain"},
        {"uri": "desk://hr/salaries", "name": "salaries",
         "description": "Every employee's salary (HR only)", "mimeType": "text/csv"},
    ])
}

/// Like a naive file server, the desk resolves `.`/`..` segments (also percent-encoded), so
/// a gateway must not let a URI climb out of what its policy allows.
fn normalize(uri: &str) -> String {
    let decoded = uri
        .replace("%2E", ".")
        .replace("%2e", ".")
        .replace("%2F", "/")
        .replace("%2f", "/");
    let Some(path) = decoded.strip_prefix("desk://") else {
        return decoded;
    };
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("desk://{}", parts.join("/"))
}

fn read(params: &Value) -> Option<Value> {
    let asked = params.get("uri").and_then(Value::as_str)?;
    let normalized = normalize(asked);
    let uri = normalized.as_str();
    let text = match uri {
        "desk://policies/refunds" => "Refunds are granted within 30 days of delivery.".to_string(),
        "desk://hr/salaries" => "employee,salary\nMarcus Webb,123456\nAda Byron,118000".to_string(),
        _ => {
            let n = uri.strip_prefix("desk://tickets/")?;
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            format!("Ticket #{n}: printer on fire. Contact: jane.doe@example.com")
        }
    };
    Some(json!({"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}))
}

fn tools(refunds: bool) -> Value {
    let string = json!({"type": "string"});
    let mut list = json!([
        {
            "name": "crm_query",
            "description": "Query a CRM table (customers, orders, tickets) for rows matching q",
            "inputSchema": {"type": "object", "properties": {"table": string, "q": string},
                            "required": ["table", "q"]},
        },
        {
            "name": "hr_salary",
            "description": "An employee's salary (HR only)",
            "inputSchema": {"type": "object", "properties": {"employee": string},
                            "required": ["employee"]},
        },
        {
            "name": "send_email",
            "description": "Send an email",
            "inputSchema": {"type": "object",
                            "properties": {"to": string, "subject": string, "body": string},
                            "required": ["to", "subject", "body"]},
        },
        {
            "name": "enable_refunds",
            "description": "Turn on the refund desk (adds the tool issue_refund)",
            "inputSchema": {"type": "object", "properties": {}},
        },
    ]);
    if refunds && let Value::Array(l) = &mut list {
        l.push(json!({
            "name": "issue_refund",
            "description": "Refund an order",
            "inputSchema": {"type": "object", "properties": {"order": string},
                            "required": ["order"]},
        }));
    }
    list
}

/// A tool result, and whether the tool list changed.
fn call(params: &Value, state: &MockState) -> (Value, bool) {
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    let arg = |k: &str| {
        args.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let text = match params.get("name").and_then(Value::as_str).unwrap_or("") {
        "crm_query" => format!(
            "2 rows in {} matching '{}': #1042 Ada Lovelace, #1043 Alan Turing",
            arg("table"),
            arg("q")
        ),
        "hr_salary" => format!("{}: 123,456 USD a year", arg("employee")),
        "send_email" => {
            let n = state.record_email();
            format!("sent to {} (email #{n} from this server)", arg("to"))
        }
        "enable_refunds" => {
            let changed = !state.enable_refunds();
            let text = json!({"content": [{"type": "text", "text": "refund desk enabled"}],
                              "isError": false});
            return (text, changed);
        }
        "issue_refund" if state.refunds_enabled() => format!("order {} refunded", arg("order")),
        other => {
            return (
                json!({"isError": true,
                       "content": [{"type": "text", "text": format!("unknown tool {other}")}]}),
                false,
            );
        }
    };
    (
        json!({"content": [{"type": "text", "text": text}], "isError": false}),
        false,
    )
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Serve the desk over stdio (newline-delimited JSON-RPC) until stdin closes.
pub fn serve_stdio(state: &MockState) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        for m in answer(line.as_bytes(), state).messages {
            writeln!(out, "{m}")?;
        }
        out.flush()?;
    }
    Ok(())
}
