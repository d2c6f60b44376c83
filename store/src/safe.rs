//! Strings that both backends store: the one place agent-supplied text is made safe for a column.
//!
//! PostgreSQL refuses the NUL character (U+0000) in `TEXT` (`invalid byte sequence for encoding
//! "UTF8": 0x00`) and in `JSONB` (the escape `\u0000`), and a refused row used to block the
//! audit writer. Agents choose many strings that reach columns (model and tool names, request
//! bodies, run ids, ledger scopes built from them, tool arguments held for approval), so every
//! write of such a string passes through [`text`] (or [`json`] for a JSON value) first.
//!
//! The choice: each NUL becomes U+FFFD, the Unicode replacement character, which says "a
//! character that could not be represented was here" and is valid in every encoding either
//! backend uses. Every other character, control characters included, is kept as it is: both
//! backends store them, and an auditor should see what the agent sent. SQLite would store NUL,
//! but the two backends then keep the same bytes, so an audit log moves between them intact.
//!
//! Sanitising happens before hashing, so an audit row's hash is over the stored text and
//! `palisade audit verify` still holds.

use std::borrow::Cow;

use serde_json::Value;

use crate::NewAuditEvent;

/// What a NUL becomes.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `s` with every NUL replaced by [`NUL_REPLACEMENT`]; borrowed when there is none (the usual
/// case costs one scan).
pub fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', &NUL_REPLACEMENT.to_string()))
    } else {
        Cow::Borrowed(s)
    }
}

/// [`text`], in place.
pub fn text_mut(s: &mut String) {
    if let Cow::Owned(clean) = text(s) {
        *s = clean;
    }
}

/// [`text_mut`] on an optional string.
pub fn opt_mut(s: &mut Option<String>) {
    if let Some(s) = s {
        text_mut(s);
    }
}

/// [`text`] applied to every string and every object key of `v`, recursively, in place.
pub fn json_mut(v: &mut Value) {
    match v {
        Value::String(s) => text_mut(s),
        Value::Array(items) => items.iter_mut().for_each(json_mut),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                // Keys cannot change in place: rebuild the map, in its order.
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    json_mut(&mut v);
                    map.insert(text(&k).into_owned(), v);
                }
            } else {
                map.values_mut().for_each(json_mut);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// [`json_mut`] on a copy.
pub fn json(v: &Value) -> Value {
    let mut v = v.clone();
    json_mut(&mut v);
    v
}

/// Make every agent-supplied string of an audit event safe, in place: the one boundary the
/// audit log's rows pass. The destructuring names every field, so a new field cannot be
/// forgotten here without the compiler saying so.
pub fn audit_event(e: &mut NewAuditEvent) {
    let NewAuditEvent {
        time_ms: _,
        request_id,
        run_id,
        chain,
        agent,
        owner,
        team,
        kind,
        target,
        provider,
        decided_by,
        verdicts,
        policy_version,
        input_tokens: _,
        output_tokens: _,
        cost_micro_usd: _,
        latency_us: _,
        status: _,
        error_code,
        truncated: _,
        body,
    } = e;
    for s in [request_id, run_id, kind, target, policy_version] {
        text_mut(s);
    }
    chain.iter_mut().for_each(text_mut);
    for s in [agent, owner, team, provider, decided_by, error_code, body] {
        opt_mut(s);
    }
    json_mut(verdicts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_becomes_replacement_and_nothing_else_changes() {
        assert!(matches!(text("plain\n\t\u{1b}"), Cow::Borrowed(_)));
        assert_eq!(text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        let mut v = json!({"k\u{0}": ["x\u{0}", {"n": 1, "s\u{0}t": "\u{0}"}], "ok": true});
        json_mut(&mut v);
        assert_eq!(
            v,
            json!({"k\u{FFFD}": ["x\u{FFFD}", {"n": 1, "s\u{FFFD}t": "\u{FFFD}"}], "ok": true})
        );
        assert!(!v.to_string().contains("\\u0000"));
    }
}
