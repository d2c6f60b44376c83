//! Per-request fault injection: read from `x-mock-*` request headers, or from `[mock:key=value]`
//! directives inside the last user message (so faults can be chosen through a gateway that does not
//! forward headers). A header wins over a directive for the same fault. Directives are stripped
//! from the text the mock echoes back.

use std::borrow::Cow;
use std::time::Duration;

use hyper::HeaderMap;

/// The faults chosen for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Answer with this status (400..=599) and an OpenAI error body.
    pub status: Option<u16>,
    /// Wait this long before answering (before the first byte).
    pub latency: Option<Duration>,
    /// Streams: send this many content chunks, then drop the connection.
    /// Non-streams: drop the connection without a response.
    pub drop_after: Option<u32>,
    /// Streams: wait this long between chunks.
    pub chunk_delay: Option<Duration>,
    /// OpenAI face: answer without usage (no `usage` in a completion, no usage chunk in a
    /// stream even if asked), as some OpenAI-compatible providers do.
    pub no_usage: bool,
}

impl Faults {
    /// Reads `x-mock-status`, `x-mock-latency-ms`, `x-mock-drop-after`,
    /// `x-mock-chunk-delay-ms` and `x-mock-no-usage`. An unparsable value is an error (message for a 400).
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, String> {
        let mut faults = Faults::default();
        for (name, key) in [
            ("x-mock-status", Key::Status),
            ("x-mock-latency-ms", Key::Latency),
            ("x-mock-drop-after", Key::DropAfter),
            ("x-mock-chunk-delay-ms", Key::ChunkDelay),
            ("x-mock-no-usage", Key::NoUsage),
        ] {
            if let Some(value) = headers.get(name) {
                let value = value
                    .to_str()
                    .map_err(|_| format!("header {name} is not valid text"))?;
                faults
                    .set(key, value.trim())
                    .map_err(|e| format!("header {name}: {e}"))?;
            }
        }
        Ok(faults)
    }

    /// Takes every fault this one lacks from `other`.
    pub fn or(self, other: Faults) -> Faults {
        Faults {
            status: self.status.or(other.status),
            latency: self.latency.or(other.latency),
            drop_after: self.drop_after.or(other.drop_after),
            chunk_delay: self.chunk_delay.or(other.chunk_delay),
            no_usage: self.no_usage || other.no_usage,
        }
    }

    fn set(&mut self, key: Key, value: &str) -> Result<(), String> {
        match key {
            Key::Status => {
                let status: u16 = parse(value)?;
                if !(400..=599).contains(&status) {
                    return Err(format!("status must be 400-599, got {status}"));
                }
                self.status = Some(status);
            }
            Key::Latency => self.latency = Some(Duration::from_millis(parse(value)?)),
            Key::DropAfter => self.drop_after = Some(parse(value)?),
            Key::ChunkDelay => self.chunk_delay = Some(Duration::from_millis(parse(value)?)),
            Key::NoUsage => {
                self.no_usage = match value {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    other => return Err(format!("no_usage must be 1 or 0, got {other:?}")),
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Key {
    Status,
    Latency,
    DropAfter,
    ChunkDelay,
    NoUsage,
}

fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("invalid value {value:?}"))
}

const OPEN: &str = "[mock:";

/// Finds the `[mock:key=value]` directives in `text`, returns the faults they ask for and the text
/// without them (a directive takes one following whitespace character with it; the result is
/// trimmed). Text without directives is returned borrowed.
pub fn directives(text: &str) -> Result<(Faults, Cow<'_, str>), String> {
    if !text.contains(OPEN) {
        return Ok((Faults::default(), Cow::Borrowed(text)));
    }
    let mut faults = Faults::default();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(']') else {
            break;
        };
        let inner = &after[..end];
        let (key, value) = inner
            .split_once('=')
            .ok_or_else(|| format!("directive [mock:{inner}] needs key=value"))?;
        let key = match key.trim() {
            "status" => Key::Status,
            "latency" | "latency_ms" => Key::Latency,
            "drop_after" => Key::DropAfter,
            "chunk_delay" | "chunk_delay_ms" => Key::ChunkDelay,
            "no_usage" => Key::NoUsage,
            other => {
                return Err(format!(
                    "unknown directive [mock:{other}=...]; known: status, latency, drop_after, chunk_delay, no_usage"
                ));
            }
        };
        faults
            .set(key, value.trim())
            .map_err(|e| format!("directive [mock:{inner}]: {e}"))?;
        out.push_str(&rest[..start]);
        rest = &after[end + 1..];
        if let Some(c) = rest.chars().next().filter(|c| c.is_whitespace()) {
            rest = &rest[c.len_utf8()..];
        }
    }
    out.push_str(rest);
    let trimmed = out.trim();
    if trimmed.len() != out.len() {
        out = trimmed.to_owned();
    }
    Ok((faults, Cow::Owned(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_directive_borrows() {
        let (f, t) = directives("hello there").unwrap();
        assert_eq!(f, Faults::default());
        assert!(matches!(t, Cow::Borrowed("hello there")));
    }

    #[test]
    fn strips_and_parses() {
        let (f, t) =
            directives("[mock:status=503] hi [mock:latency=20] there [mock:drop_after=3]").unwrap();
        assert_eq!(t, "hi there");
        assert_eq!(f.status, Some(503));
        assert_eq!(f.latency, Some(Duration::from_millis(20)));
        assert_eq!(f.drop_after, Some(3));
        assert_eq!(f.chunk_delay, None);
    }

    #[test]
    fn bad_directives_are_errors() {
        assert!(directives("[mock:status=abc]").is_err());
        assert!(directives("[mock:status=200]").is_err());
        assert!(directives("[mock:nope=1]").is_err());
        assert!(directives("[mock:status]").is_err());
        assert!(directives("[mock:no_usage=yes]").is_err());
    }

    #[test]
    fn no_usage_directive() {
        let (f, t) = directives("[mock:no_usage=1] hi").unwrap();
        assert!(f.no_usage);
        assert_eq!(t, "hi");
        assert!(!directives("[mock:no_usage=0] hi").unwrap().0.no_usage);
    }

    #[test]
    fn unterminated_directive_is_text() {
        let (f, t) = directives("look [mock:status=503").unwrap();
        assert_eq!(f, Faults::default());
        assert_eq!(t, "look [mock:status=503");
    }

    #[test]
    fn header_wins() {
        let mut h = HeaderMap::new();
        h.insert("x-mock-status", "429".parse().unwrap());
        let from_headers = Faults::from_headers(&h).unwrap();
        let (from_text, _) = directives("[mock:status=503] [mock:latency=5]").unwrap();
        let f = from_headers.or(from_text);
        assert_eq!(f.status, Some(429));
        assert_eq!(f.latency, Some(Duration::from_millis(5)));
    }
}
