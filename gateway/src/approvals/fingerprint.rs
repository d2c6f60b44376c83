//! What binds an approval to its exact operation: canonical JSON of the arguments (object keys
//! sorted, no insignificant whitespace) and a SHA-256 over agent, kind, target and those bytes.
//! Any change to any of them is another operation and needs its own approval.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Canonical JSON text of `body`: keys sorted at every level. Text that is not JSON is kept as
/// a JSON string, so it is still bound byte for byte.
pub fn canonical_arguments(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            let mut out = String::with_capacity(body.len());
            write_canonical(&v, &mut out);
            out
        }
        Err(_) => Value::String(body.to_string()).to_string(),
    }
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The operation's fingerprint: each part length-prefixed, so no two different operations
/// share the hashed bytes.
pub fn fingerprint(agent: &str, kind: &str, target: &str, canonical_args: &str) -> String {
    let mut h = Sha256::new();
    for part in [agent, kind, target, canonical_args] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_and_spacing_do_not_matter() {
        let a = canonical_arguments(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#);
        let b = canonical_arguments(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(a, b);
        assert_eq!(a, r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
    }

    #[test]
    fn every_part_counts() {
        let f = fingerprint("a", "tool-call", "t", "{}");
        assert_ne!(f, fingerprint("b", "tool-call", "t", "{}"));
        assert_ne!(f, fingerprint("a", "llm-call", "t", "{}"));
        assert_ne!(f, fingerprint("a", "tool-call", "u", "{}"));
        assert_ne!(f, fingerprint("a", "tool-call", "t", r#"{"x":1}"#));
        // Length prefixes: moving a boundary changes the hash.
        assert_ne!(
            fingerprint("ab", "c", "", ""),
            fingerprint("a", "bc", "", "")
        );
        assert_eq!(canonical_arguments("not json"), r#""not json""#);
    }
}
