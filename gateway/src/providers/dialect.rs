//! Provider wire formats. The gateway's canonical call is an OpenAI chat completion: a dialect
//! translates it into its provider's request, and the provider's answer (full or streamed) back
//! into OpenAI shapes, so every step after the upstream sees one format only.
//!
//! This file dispatches; each provider's mapping lives in its own module (`anthropic`,
//! `gemini`), with shared pieces in `translate`.
//!
//! What a provider cannot express is a [`TranslateError::Unsupported`] (a 400 naming it), never
//! a silent drop. Keys go in headers built here and nowhere else.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub use crate::core::settings::providers::Dialect;

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The request uses something the provider cannot express.
    #[error("{provider} cannot express {what}")]
    Unsupported {
        provider: &'static str,
        what: String,
    },
    /// The canonical request itself is not usable (missing messages, wrong types).
    #[error("{0}")]
    BadRequest(String),
    /// The provider's answer is not what its API documents.
    #[error("malformed answer from {provider}: {message}")]
    Malformed {
        provider: &'static str,
        message: String,
    },
}

/// A provider request ready to send.
#[derive(Debug)]
pub struct Outgoing {
    /// Path and query appended to the provider's base URL, e.g. `/v1/chat/completions`.
    pub path: String,
    pub body: Bytes,
    /// Headers the dialect needs besides the key (e.g. `anthropic-version`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Turns a provider's streamed events into OpenAI `chat.completion.chunk` objects.
pub trait StreamDecoder: Send {
    /// One SSE event's `data` payload, in order; returns the OpenAI chunks it stands for (none
    /// for lifecycle events that carry nothing an OpenAI client would see). The OpenAI `[DONE]`
    /// sentinel is never returned: [`StreamDecoder::finished`] says the stream ended properly.
    fn event(&mut self, data: &str) -> Result<Vec<Value>, TranslateError>;
    /// True once the provider signalled a proper end (`[DONE]`, `message_stop`, ...).
    fn finished(&self) -> bool;
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }

    /// The provider request for a canonical (OpenAI chat) request, addressed to `model` (the
    /// provider's own model name). `canonical["stream"]` says whether to stream; streams ask the
    /// provider for usage.
    pub fn encode_request(
        self,
        canonical: &Map<String, Value>,
        model: &str,
    ) -> Result<Outgoing, TranslateError> {
        match self {
            Dialect::OpenAi => {
                let mut body = canonical.clone();
                body.insert("model".into(), Value::String(model.to_string()));
                if body.get("stream").and_then(Value::as_bool) == Some(true) {
                    body.insert(
                        "stream_options".into(),
                        serde_json::json!({"include_usage": true}),
                    );
                }
                Ok(Outgoing {
                    path: "/v1/chat/completions".into(),
                    body: Bytes::from(Value::Object(body).to_string()),
                    headers: Vec::new(),
                })
            }
            Dialect::Anthropic => Ok(Outgoing {
                path: "/v1/messages".into(),
                body: Bytes::from(super::anthropic::encode(canonical, model)?.to_string()),
                headers: vec![(
                    HeaderName::from_static("anthropic-version"),
                    HeaderValue::from_static(super::anthropic::VERSION),
                )],
            }),
            Dialect::Gemini => {
                let stream = canonical.get("stream").and_then(Value::as_bool) == Some(true);
                Ok(Outgoing {
                    path: super::gemini::path(model, stream),
                    body: Bytes::from(super::gemini::encode(canonical)?.to_string()),
                    headers: Vec::new(),
                })
            }
        }
    }

    /// The header carrying the provider key.
    pub fn auth_header(self, key: &str) -> Option<(HeaderName, HeaderValue)> {
        let (name, value) = match self {
            Dialect::OpenAi => (http::header::AUTHORIZATION, format!("Bearer {key}")),
            Dialect::Anthropic => (HeaderName::from_static("x-api-key"), key.to_string()),
            Dialect::Gemini => (HeaderName::from_static("x-goog-api-key"), key.to_string()),
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }

    /// A full provider answer as an OpenAI `chat.completion` object.
    pub fn decode_response(self, body: &[u8], model: &str) -> Result<Value, TranslateError> {
        match self {
            Dialect::OpenAi => {
                serde_json::from_slice(body).map_err(|e| TranslateError::Malformed {
                    provider: self.name(),
                    message: e.to_string(),
                })
            }
            Dialect::Anthropic => super::anthropic::decode(body),
            Dialect::Gemini => super::gemini::decode(body, model),
        }
    }

    /// A decoder for one streamed answer.
    pub fn stream_decoder(self, model: &str) -> Box<dyn StreamDecoder> {
        match self {
            Dialect::OpenAi => Box::new(OpenAiStream { done: false }),
            Dialect::Anthropic => Box::new(super::anthropic::Stream::new(model)),
            Dialect::Gemini => Box::new(super::gemini::Stream::new(model)),
        }
    }

    /// The human message in a provider's error body, where it has one.
    pub fn error_message(self, body: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(body).ok()?;
        match self {
            Dialect::OpenAi => v
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string),
            Dialect::Anthropic => super::anthropic::error_message(&v),
            Dialect::Gemini => super::gemini::error_message(&v),
        }
    }
}

/// OpenAI streams are already canonical: parse each chunk, note `[DONE]`.
struct OpenAiStream {
    done: bool,
}

impl StreamDecoder for OpenAiStream {
    fn event(&mut self, data: &str) -> Result<Vec<Value>, TranslateError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        let v = serde_json::from_str(data).map_err(|e| TranslateError::Malformed {
            provider: "openai",
            message: format!("bad stream chunk: {e}"),
        })?;
        Ok(vec![v])
    }

    fn finished(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_request_names_the_target_model_and_asks_for_stream_usage() {
        let req: Map<String, Value> =
            serde_json::from_str(r#"{"model":"smart","stream":true,"messages":[]}"#).unwrap();
        let out = Dialect::OpenAi.encode_request(&req, "gpt-4o").unwrap();
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["model"], "gpt-4o");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(out.path, "/v1/chat/completions");
    }

    #[test]
    fn openai_stream_ends_on_done() {
        let mut d = Dialect::OpenAi.stream_decoder("m");
        assert_eq!(d.event(r#"{"choices":[]}"#).unwrap().len(), 1);
        assert!(!d.finished());
        assert!(d.event("[DONE]").unwrap().is_empty());
        assert!(d.finished());
        assert!(d.event("{not json").is_err());
    }
}
