//! Resource URIs in results as the agent must ask for them (`server+uri`).

use serde_json::{Value, json};

use super::call::Item;
use crate::mcp::catalog::Hub;

/// Resource URIs in a result as the agent must ask for them (`server+uri`): a read's contents,
/// and resource links and embedded resources in tool results and prompt messages.
pub(super) fn expose_uris(v: &mut Value, item: Item, hub: &Hub, server: usize) {
    let fix = |u: Option<&mut Value>| {
        if let Some(u) = u
            && let Some(s) = u.as_str()
        {
            *u = json!(hub.exposed_uri(server, s));
        }
    };
    let fix_block = |c: &mut Value| match c.get("type").and_then(Value::as_str) {
        Some("resource_link") => fix(c.get_mut("uri")),
        Some("resource") => fix(c.get_mut("resource").and_then(|r| r.get_mut("uri"))),
        _ => {}
    };
    match item {
        Item::Resource => {
            for c in v
                .get_mut("contents")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                fix(c.get_mut("uri"));
            }
        }
        Item::Tool => {
            for c in v
                .get_mut("content")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                fix_block(c);
            }
        }
        Item::Prompt => {
            for m in v
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(c) = m.get_mut("content") {
                    fix_block(c);
                }
            }
        }
    }
}
