//! A fake MCP server at `POST /mcp` (Streamable HTTP, JSON answers, no sessions) with a few
//! tools a support desk might expose: `crm_query {table, q}`, `hr_salary {employee}` and
//! `send_email {to, subject, body}`. Sends are counted in the [`MockState`] so the demo and
//! tests can check how many emails really went out. Nothing here talks to anything.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::MockState;

/// The protocol version the mock answers with when the client asks for one it does not know.
pub const VERSION: &str = "2025-11-25";

/// Answers one JSON-RPC message; `None` for a notification (the caller answers 202).
pub fn answer(body: &[u8], state: &MockState) -> (StatusCode, Option<Bytes>) {
    let msg: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let err = rpc_error(&Value::Null, -32700, &format!("parse error: {e}"));
            return (StatusCode::BAD_REQUEST, Some(err));
        }
    };
    let Some(id) = msg.get("id").cloned() else {
        return (StatusCode::ACCEPTED, None);
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match msg.get("method").and_then(Value::as_str).unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(VERSION),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "mock-upstream", "version": env!("CARGO_PKG_VERSION")},
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => call(&params, state),
        other => {
            let err = rpc_error(&id, -32601, &format!("method not found: {other}"));
            return (StatusCode::OK, Some(err));
        }
    };
    let out = json!({"jsonrpc": "2.0", "id": id, "result": result});
    (StatusCode::OK, Some(Bytes::from(out.to_string())))
}

fn tools() -> Value {
    let string = json!({"type": "string"});
    json!([
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
    ])
}

fn call(params: &Value, state: &MockState) -> Value {
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
        other => {
            return json!({"isError": true,
                          "content": [{"type": "text", "text": format!("unknown tool {other}")}]});
        }
    };
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Bytes {
    let out = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    Bytes::from(out.to_string())
}
