//! `pii`: find personal data and secrets in what agents send to models and in what comes back,
//! and redact, mask, refuse or just log them, streamed answers included.
//!
//! Config (every key optional):
//! ```toml
//! [[plugins]]
//! name = "pii"
//! path = "pii.wasm"
//! [plugins.config]
//! restore = false        # put real values back in the model's answer (agent sees, provider never)
//! request = true         # scan what goes upstream (chat messages, tool arguments)
//! response = true        # scan full answers, tool results and streamed text
//! high_entropy = true    # count long random-looking tokens as secrets
//! deny_status = 400      # HTTP status of a `deny`
//! [plugins.config.kinds] # per kind: "redact" (default), "mask", "deny", "log" or "off"
//! email = "redact"
//! phone = "mask"
//! card = "deny"
//! ssn = "redact"
//! iban = "redact"
//! ip = "log"
//! secret = "deny"
//! ```
//!
//! * `redact` replaces a value by a typed placeholder, `[EMAIL_1]`, `[CARD_2]`, ...; the same
//!   value gets the same placeholder for the whole call (request and answer alike).
//! * `mask` keeps the last four characters: `****1111` (e-mail: `j***@example.com`).
//! * `deny` refuses the call with `deny_status` and code `pii_detected`; the message names the
//!   kind, never the value. In a stream, which cannot be refused half-way, it redacts instead.
//! * `log` leaves the text alone and only annotates the audit (`pii.email = "2"`).
//!
//! With `restore = true`, placeholders this call handed out are replaced by their real values in
//! the model's answer (`on-response`, and `on-text` for streams).
//!
//! Streams: a value may be split across deltas (`"4111 1111"`, `" 1111 1111"`). `on-text` keeps
//! a tail of the text in the call's instance and only sends what no later delta can turn into a
//! match: the trailing word and at least [`HOLD`] bytes stay behind until more text arrives or
//! the stream ends (`last`). The tail is bounded by [`MAX_CARRY`].
//!
//! Detection is in [`detect`]: hand-written scanners, no regex, so a fresh instance costs nothing
//! to set up.

pub mod detect;

use std::collections::BTreeMap;

use detect::{Detectors, KINDS, Kind, Match};
use palisade_plugin_sdk::Level;
use palisade_plugin_sdk::prelude::*;
use serde::Deserialize;
use serde_json::Value;

/// Bytes of streamed text held back at least, so a value split across deltas is still whole
/// when it is scanned.
pub const HOLD: usize = 64;
/// The most streamed text held back; past it the tail is scanned and sent as it is.
pub const MAX_CARRY: usize = 16 * 1024;

/// What to do with a detected value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Typed placeholder, `[EMAIL_1]`.
    Redact,
    /// Keep the last four characters.
    Mask,
    /// Refuse the call.
    Deny,
    /// Annotate only.
    Log,
    /// Do not detect this kind.
    Off,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    restore: bool,
    #[serde(default = "yes")]
    request: bool,
    #[serde(default = "yes")]
    response: bool,
    #[serde(default = "yes")]
    high_entropy: bool,
    #[serde(default = "deny_status")]
    deny_status: u16,
    #[serde(default)]
    kinds: BTreeMap<String, Action>,
}

fn yes() -> bool {
    true
}
fn deny_status() -> u16 {
    400
}

/// The plugin: its config and what this call has seen so far. The plugin declares itself
/// stateless, so one value may serve several calls one after the other: every hook first calls
/// [`Pii::begin`], which forgets the previous call's values when a new call starts.
pub struct Pii {
    actions: [Action; 7],
    detectors: Detectors,
    restore: bool,
    request: bool,
    response: bool,
    deny_status: u16,
    /// (kind, real value, placeholder), in order of first sight.
    vault: Vec<(Kind, String, String)>,
    /// Count per kind of placeholders handed out (for numbering).
    numbers: [u32; 7],
    /// Streamed text not sent yet.
    carry: String,
    /// Detections per kind in this call, for annotations and the log.
    seen: [u32; 7],
    /// The request id of the call `vault`, `numbers`, `carry` and `seen` belong to.
    call: String,
}

/// The first kind whose action is `deny`, found in some text.
struct Denied(Kind);

impl Pii {
    /// Start (or go on with) `call`: a value reused for another call drops the previous call's
    /// real values, numbering, held-back stream text and counts, so nothing leaks between calls.
    fn begin(&mut self, call: &Call) {
        if self.call != call.request_id {
            self.call.clone_from(&call.request_id);
            self.vault.clear();
            self.numbers = [0; 7];
            self.carry.clear();
            self.seen = [0; 7];
        }
    }

    fn action(&self, k: Kind) -> Action {
        self.actions[k as usize]
    }

    /// The placeholder of `value`, handing out a new one on first sight.
    fn placeholder(&mut self, kind: Kind, value: &str) -> String {
        if let Some((_, _, p)) = self.vault.iter().find(|(k, v, _)| *k == kind && v == value) {
            return p.clone();
        }
        self.numbers[kind as usize] += 1;
        let p = format!("[{}_{}]", kind.tag(), self.numbers[kind as usize]);
        self.vault.push((kind, value.to_string(), p.clone()));
        p
    }

    /// Apply the actions to `text`. `deny_ok`: a `deny` kind refuses (else it is redacted).
    /// Returns the new text, or `None` if nothing changed.
    fn process(
        &mut self,
        text: &str,
        deny_ok: bool,
        restore: bool,
    ) -> Result<Option<String>, Denied> {
        let matches = detect::scan(text, &self.detectors);
        let has_placeholder = restore && !self.vault.is_empty() && text.contains('[');
        if matches.is_empty() && !has_placeholder {
            return Ok(None);
        }
        if deny_ok && let Some(m) = matches.iter().find(|m| self.action(m.kind) == Action::Deny) {
            for m in &matches {
                self.seen[m.kind as usize] += 1;
            }
            return Err(Denied(m.kind));
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut at = 0;
        let mut changed = false;
        for m in &matches {
            self.seen[m.kind as usize] += 1;
            let value = &text[m.start..m.end];
            let replacement = match self.action(m.kind) {
                Action::Log | Action::Off => None,
                Action::Mask => Some(mask(m.kind, value)),
                Action::Redact | Action::Deny => Some(self.placeholder(m.kind, value)),
            };
            if let Some(r) = replacement {
                self.restore_into(&mut out, &text[at..m.start], restore, &mut changed);
                out.push_str(&r);
                at = m.end;
                changed = true;
            }
        }
        self.restore_into(&mut out, &text[at..], restore, &mut changed);
        Ok(changed.then_some(out))
    }

    /// Push `seg` to `out`, with this call's placeholders replaced by their values if `restore`.
    fn restore_into(&self, out: &mut String, seg: &str, restore: bool, changed: &mut bool) {
        if !restore || self.vault.is_empty() || !seg.contains('[') {
            out.push_str(seg);
            return;
        }
        let mut rest = seg;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            match self
                .vault
                .iter()
                .find(|(_, _, p)| tail.starts_with(p.as_str()))
            {
                Some((_, v, p)) => {
                    out.push_str(v);
                    rest = &tail[p.len()..];
                    *changed = true;
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
    }

    /// Whether answers need a pass: scanned, or placeholders to restore.
    fn works_on_answers(&self) -> bool {
        self.response || (self.restore && !self.vault.is_empty())
    }

    fn annotate(&self, mut o: Outcome) -> Outcome {
        for k in KINDS {
            let n = self.seen[k as usize];
            if n > 0 {
                o = o.note(
                    &format!("pii.{}", k.name()),
                    format!("{n} ({})", action_name(self.action(k))),
                );
            }
        }
        o
    }

    fn deny(&self, kind: Kind, where_: &str) -> Outcome {
        let msg = format!(
            "{where_} contains {} ({}); the `pii` policy does not allow sending it. Remove it and try again.",
            kind.human(),
            kind.name()
        );
        self.annotate(Outcome::deny(self.deny_status, "pii_detected", msg))
    }

    /// Rewrite every string of a JSON value in place. Returns whether any changed.
    fn walk(&mut self, v: &mut Value, restore: bool) -> Result<bool, Denied> {
        match v {
            Value::String(s) => match self.process(s, true, restore)? {
                Some(n) => {
                    *s = n;
                    Ok(true)
                }
                None => Ok(false),
            },
            Value::Array(a) => {
                let mut any = false;
                for x in a {
                    any |= self.walk(x, restore)?;
                }
                Ok(any)
            }
            Value::Object(o) => {
                let mut any = false;
                for (_, x) in o.iter_mut() {
                    any |= self.walk(x, restore)?;
                }
                Ok(any)
            }
            _ => Ok(false),
        }
    }

    /// A message's content: a string, or parts whose `text` fields are scanned.
    fn content(&mut self, c: &mut Value, restore: bool) -> Result<bool, Denied> {
        match c {
            Value::String(_) => self.walk(c, restore),
            Value::Array(parts) => {
                let mut any = false;
                for p in parts {
                    if let Some(t) = p.get_mut("text") {
                        any |= self.walk(t, restore)?;
                    }
                }
                Ok(any)
            }
            _ => Ok(false),
        }
    }

    fn request(&mut self, call: &Call) -> Result<Option<String>, Denied> {
        match call.kind {
            CallKind::LlmCall => {
                // A plain `Value` keeps every field (as `ChatRequest` would) and parses faster
                // than a struct with flattened extras.
                let Ok(mut chat) = serde_json::from_str::<Value>(&call.body) else {
                    return Ok(None);
                };
                let mut any = false;
                if let Some(Value::Array(messages)) = chat.get_mut("messages") {
                    for m in messages {
                        if let Some(c) = m.get_mut("content") {
                            any |= self.content(c, false)?;
                        }
                    }
                }
                Ok(any.then(|| chat.to_string()))
            }
            CallKind::ToolCall => {
                let Ok(mut v) = serde_json::from_str::<Value>(&call.body) else {
                    return Ok(None);
                };
                Ok(self.walk(&mut v, false)?.then(|| v.to_string()))
            }
            CallKind::ToolList => Ok(None),
        }
    }

    fn response(&mut self, call: &Call, body: &str) -> Result<Option<String>, Denied> {
        let Ok(mut v) = serde_json::from_str::<Value>(body) else {
            return Ok(None);
        };
        let restore = self.restore;
        let any = match (call.kind, v.get_mut("choices")) {
            (CallKind::LlmCall, Some(Value::Array(choices))) => {
                let mut any = false;
                for ch in choices {
                    if let Some(c) = ch.pointer_mut("/message/content") {
                        any |= self.content(c, restore)?;
                    }
                }
                any
            }
            // Tool results (and anything else): every string.
            _ => self.walk(&mut v, restore)?,
        };
        Ok(any.then(|| v.to_string()))
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Redact => "redact",
        Action::Mask => "mask",
        Action::Deny => "deny",
        Action::Log => "log",
        Action::Off => "off",
    }
}

/// `****1111`; e-mail `j***@example.com`; secrets keep nothing but a short prefix.
pub fn mask(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Email => {
            let (local, domain) = value.split_once('@').unwrap_or((value, ""));
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}")
        }
        Kind::Secret => {
            let head: String = value.chars().take(4).collect();
            format!("{head}****")
        }
        _ => {
            let keep: Vec<char> = value.chars().filter(char::is_ascii_alphanumeric).collect();
            let tail: String = keep[keep.len().saturating_sub(4)..].iter().collect();
            format!("****{tail}")
        }
    }
}

/// Where the sendable part of the carried text ends: everything before is safe to scan and
/// send; the trailing word and the last [`HOLD`] bytes stay, unless `last`.
fn safe_cut(text: &str, matches: &[Match]) -> usize {
    // Cut after the last whitespace at least HOLD bytes from the end, so no word is split and
    // every value that may span spaces (phone, card, IBAN: all shorter than HOLD) is whole.
    let mut limit = text.len().saturating_sub(HOLD);
    while !text.is_char_boundary(limit) {
        limit -= 1;
    }
    let mut cut = text[..limit]
        .rfind(|c: char| c.is_whitespace())
        .map_or(0, |i| i + 1);
    // Never cut inside a match, nor send one that ends where the text ends (it may grow).
    for m in matches {
        if m.start < cut && (cut < m.end || m.end == text.len()) {
            cut = m.start;
        }
    }
    cut
}

impl Plugin for Pii {
    const HOOKS: Hooks = Hooks::ON_REQUEST
        .union(Hooks::ON_RESPONSE)
        .union(Hooks::ON_TEXT);

    fn init(config: Config) -> Result<Self, String> {
        let raw: RawConfig =
            serde_json::from_value(config).map_err(|e| format!("pii config: {e}"))?;
        let mut actions = [Action::Redact; 7];
        let mut detectors = Detectors::default();
        detectors.high_entropy = raw.high_entropy;
        for (name, a) in &raw.kinds {
            let k = Kind::from_name(name).ok_or_else(|| {
                format!(
                    "pii config: unknown kind '{name}'; known: email, phone, card, ssn, iban, ip, secret"
                )
            })?;
            actions[k as usize] = *a;
            detectors.set(k, *a != Action::Off);
        }
        if !(400..=599).contains(&raw.deny_status) {
            return Err(format!(
                "pii config: deny_status must be 400-599, got {}",
                raw.deny_status
            ));
        }
        // Per-call state is keyed by request id (see `begin`), so instances may be reused.
        host::declare_stateless();
        // A listing carries no text of the agent's to scan.
        host::declare_kinds(&[CallKind::LlmCall, CallKind::ToolCall]);
        Ok(Pii {
            actions,
            detectors,
            restore: raw.restore,
            request: raw.request,
            response: raw.response,
            deny_status: raw.deny_status,
            vault: Vec::new(),
            numbers: [0; 7],
            carry: String::new(),
            seen: [0; 7],
            call: String::new(),
        })
    }

    fn on_request(&mut self, call: &Call) -> Outcome {
        self.begin(call);
        self.seen = [0; 7];
        if !self.request {
            return Outcome::allow();
        }
        let what = match call.kind {
            CallKind::ToolCall => "the tool call's arguments",
            _ => "the request",
        };
        match self.request(call) {
            Ok(Some(body)) => self.annotate(Outcome::rewrite(body)),
            Ok(None) => self.annotate(Outcome::allow()),
            Err(Denied(k)) => self.deny(k, what),
        }
    }

    fn on_response(&mut self, call: &Call, body: &str) -> Outcome {
        self.begin(call);
        self.seen = [0; 7];
        if !self.works_on_answers() {
            return Outcome::allow();
        }
        if !self.response {
            // Restore only: placeholders back, no new detections.
            let saved = self.detectors;
            self.detectors = Detectors::none();
            let r = self.response(call, body);
            self.detectors = saved;
            return match r {
                Ok(Some(b)) => Outcome::rewrite(b),
                _ => Outcome::allow(),
            };
        }
        match self.response(call, body) {
            Ok(Some(b)) => self.annotate(Outcome::rewrite(b)),
            Ok(None) => self.annotate(Outcome::allow()),
            Err(Denied(k)) => self.deny(k, "the answer"),
        }
    }

    fn on_text(&mut self, call: &Call, delta: &str, last: bool) -> String {
        self.begin(call);
        if !self.works_on_answers() {
            return delta.to_string();
        }
        let saved = self.detectors;
        if !self.response {
            self.detectors = Detectors::none();
        }
        self.carry.push_str(delta);
        let text = std::mem::take(&mut self.carry);
        let cut = if last || text.len() > MAX_CARRY {
            text.len()
        } else {
            let matches = detect::scan(&text, &self.detectors);
            safe_cut(&text, &matches)
        };
        let (send, keep) = text.split_at(cut);
        self.carry = keep.to_string();
        let before: u32 = self.seen.iter().sum();
        let restore = self.restore;
        let out = match self.process(send, false, restore) {
            Ok(Some(s)) => s,
            _ => send.to_string(),
        };
        self.detectors = saved;
        if self.seen.iter().sum::<u32>() > before {
            let kinds: Vec<&str> = KINDS
                .iter()
                .filter(|k| self.seen[**k as usize] > 0)
                .map(|k| k.name())
                .collect();
            host::log(
                Level::Info,
                &format!("pii: found in streamed answer: {}", kinds.join(", ")),
            );
        }
        out
    }
}

export_plugin!(Pii);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::{CallBuilder, Harness};
    use serde_json::json;

    const CARD: &str = "4111 1111 1111 1111";

    fn chat(text: &str) -> Call {
        CallBuilder::llm("gpt-4o-mini")
            .body(
                json!({"model": "gpt-4o-mini", "temperature": 0.2,
                       "messages": [{"role": "user", "content": text}]})
                .to_string(),
            )
            .build()
    }

    fn rewritten(o: &Outcome) -> Value {
        match &o.verdict {
            Verdict::Rewrite(b) => serde_json::from_str(b).expect("rewrite is JSON"),
            other => panic!("expected rewrite, got {other:?}"),
        }
    }

    fn sent_text(o: &Outcome) -> String {
        rewritten(o)["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn answer(text: &str) -> String {
        json!({"id": "chatcmpl-1", "object": "chat.completion",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
        .to_string()
    }

    #[test]
    fn redact_uses_typed_consistent_placeholders_and_keeps_other_fields() {
        let mut h = Harness::<Pii>::new(json!({})).unwrap();
        let out = h.on_request(&chat(
            "mail a@example.com or b@example.com, again a@example.com; card 4111111111111111",
        ));
        let body = rewritten(&out);
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(
            body["messages"][0]["content"],
            "mail [EMAIL_1] or [EMAIL_2], again [EMAIL_1]; card [CARD_1]"
        );
        assert!(
            out.annotations
                .iter()
                .any(|(k, v)| k == "pii.email" && v == "3 (redact)"),
            "{:?}",
            out.annotations
        );
        assert!(!format!("{:?}", out.annotations).contains("example.com"));
    }

    #[test]
    fn mask_keeps_the_last_four() {
        let mut h =
            Harness::<Pii>::new(json!({"kinds": {"card": "mask", "email": "mask"}})).unwrap();
        let out = h.on_request(&chat(&format!("card {CARD}, mail jane@example.com")));
        assert_eq!(sent_text(&out), "card ****1111, mail j***@example.com");
    }

    #[test]
    fn deny_names_the_kind_never_the_value() {
        let mut h = Harness::<Pii>::new(json!({"kinds": {"ssn": "deny"}})).unwrap();
        let out = h.on_request(&chat("my ssn is 123-45-6789"));
        match out.verdict {
            Verdict::Deny(d) => {
                assert_eq!((d.status, d.code.as_str()), (400, "pii_detected"));
                assert!(
                    d.message.contains("social security number"),
                    "{}",
                    d.message
                );
                assert!(d.message.contains("(ssn)"), "{}", d.message);
                assert!(!d.message.contains("6789"), "{}", d.message);
            }
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn log_only_annotates() {
        let mut h = Harness::<Pii>::new(json!({"kinds": {"ip": "log"}})).unwrap();
        let out = h.on_request(&chat("server 10.1.2.3 is down"));
        assert!(matches!(out.verdict, Verdict::Allow));
        assert_eq!(
            out.annotations,
            vec![("pii.ip".to_string(), "1 (log)".to_string())]
        );
    }

    #[test]
    fn off_kinds_are_not_detected_and_bad_config_is_refused() {
        let mut h = Harness::<Pii>::new(json!({"kinds": {"email": "off"}})).unwrap();
        assert!(matches!(
            h.on_request(&chat("a@example.com")).verdict,
            Verdict::Allow
        ));
        assert!(Harness::<Pii>::new(json!({"kinds": {"emails": "redact"}})).is_err());
        assert!(Harness::<Pii>::new(json!({"kinds": {"email": "shred"}})).is_err());
        assert!(Harness::<Pii>::new(json!({"restroe": true})).is_err());
    }

    #[test]
    fn response_is_redacted_and_restore_puts_real_values_back() {
        let mut h = Harness::<Pii>::new(json!({"restore": true})).unwrap();
        let out = h.on_request(&chat("write to jane@example.com"));
        assert_eq!(sent_text(&out), "write to [EMAIL_1]");
        let c = chat("");
        let out = h.on_response(
            &c,
            &answer("Sent to [EMAIL_1]; also found ops@corp.io. [EMAIL_9]"),
        );
        let v = rewritten(&out);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Sent to jane@example.com; also found [EMAIL_2]. [EMAIL_9]"
        );
        assert_eq!(v["id"], "chatcmpl-1");
    }

    #[test]
    fn without_restore_placeholders_stay() {
        let mut h = Harness::<Pii>::new(json!({})).unwrap();
        h.on_request(&chat("write to jane@example.com"));
        let out = h.on_response(&chat(""), &answer("Sent to [EMAIL_1]"));
        assert!(matches!(out.verdict, Verdict::Allow));
    }

    #[test]
    fn response_deny_refuses_the_answer() {
        let mut h = Harness::<Pii>::new(json!({"kinds": {"secret": "deny"}})).unwrap();
        let out = h.on_response(&chat(""), &answer("your key is AKIAIOSFODNN7EXAMPLE ok"));
        match out.verdict {
            Verdict::Deny(d) => {
                assert!(d.message.contains("the answer"), "{}", d.message);
                assert!(!d.message.contains("AKIA"), "{}", d.message);
            }
            other => panic!("expected deny, got {other:?}"),
        }
    }

    #[test]
    fn card_split_across_deltas_is_redacted() {
        let mut h = Harness::<Pii>::new(json!({})).unwrap();
        let c = chat("");
        let deltas = [
            "Your card ",
            "4111 ",
            "1111 ",
            "1111 ",
            "1111",
            " is on file.",
        ];
        let out = h.stream(&c, &deltas);
        assert_eq!(out, "Your card [CARD_1] is on file.");
        // Every split point of a longer text gives the same answer.
        let text = format!(
            "Hello {CARD} and jane@example.com, token sk-ant-api03-abcdefghij0123456789 bye"
        );
        for cut in 1..text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let mut h = Harness::<Pii>::new(json!({})).unwrap();
            let out = h.stream(&c, &[&text[..cut], &text[cut..]]);
            assert_eq!(
                out, "Hello [CARD_1] and [EMAIL_1], token [SECRET_1] bye",
                "cut {cut}"
            );
        }
    }

    #[test]
    fn stream_with_multibyte_text_splits_safely() {
        let text =
            format!("Grüße 🙂 — Karte {CARD} für Jörg, ✉ jörg@example.com ende ") + &"é".repeat(40);
        let c = chat("");
        for cut in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let mut h = Harness::<Pii>::new(json!({})).unwrap();
            let out = h.stream(&c, &[&text[..cut], &text[cut..]]);
            assert!(
                out.contains("[CARD_1]") && !out.contains("4111"),
                "cut {cut}: {out}"
            );
            assert!(out.starts_with("Grüße 🙂 — Karte "), "{out}");
        }
    }

    #[test]
    fn stream_restore_handles_split_placeholders_and_mask() {
        let mut h =
            Harness::<Pii>::new(json!({"restore": true, "kinds": {"phone": "mask"}})).unwrap();
        h.on_request(&chat(&format!("card {CARD}")));
        let c = chat("");
        let out = h.stream(
            &c,
            &[
                "Card ",
                "[CA",
                "RD_1",
                "] ok, call +1 415 ",
                "555 0100",
                ".",
            ],
        );
        assert_eq!(out, format!("Card {CARD} ok, call ****0100."));
    }

    #[test]
    fn private_key_block_in_a_stream_is_held_until_it_ends() {
        let mut h = Harness::<Pii>::new(json!({})).unwrap();
        let c = chat("");
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n".repeat(6);
        let out = h.stream(
            &c,
            &[
                "key:\n-----BEGIN PRIVATE KEY-----\n",
                &body,
                "-----END PRIVATE KEY-----\n",
                "done",
            ],
        );
        assert_eq!(out, "key:\n[SECRET_1]\ndone");
    }

    #[test]
    fn tool_arguments_and_results_are_walked() {
        let mut h = Harness::<Pii>::new(json!({})).unwrap();
        let call = CallBuilder::tool(
            "crm__update",
            json!({"note": "iban DE89 3704 0044 0532 0130 00", "n": 3}),
        )
        .build();
        let out = h.on_request(&call);
        assert_eq!(rewritten(&out)["note"], "iban [IBAN_1]");
        let result = json!({"content": [{"type": "text", "text": "ssn 078-05-1120"}]}).to_string();
        let out = h.on_response(&call, &result);
        assert_eq!(rewritten(&out)["content"][0]["text"], "ssn [SSN_1]");
    }

    #[test]
    fn content_parts_are_scanned() {
        let mut h = Harness::<Pii>::new(json!({})).unwrap();
        let c = CallBuilder::llm("m")
            .body(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "ip 192.168.0.10"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})
                .to_string(),
            )
            .build();
        let v = rewritten(&h.on_request(&c));
        assert_eq!(v["messages"][0]["content"][0]["text"], "ip [IP_1]");
        assert_eq!(
            v["messages"][0]["content"][1]["image_url"]["url"],
            "https://x/y.png"
        );
    }
}
