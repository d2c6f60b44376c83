//! The OpenAI chat request, parsed on demand: the fields policy usually reads, with everything
//! else kept in `extra` so a rewrite does not drop fields the plugin does not know.

use serde::{Deserialize, Serialize};

/// An OpenAI chat completions request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChatRequest {
    /// The model alias the agent asked for.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Output token cap, if the agent set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Whether the answer is streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Every other field, untouched.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One message of a chat request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or a list of content parts.
    #[serde(default)]
    pub content: serde_json::Value,
    /// Every other field, untouched.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ChatMessage {
    /// The message's text: the string content, or its text parts joined by newlines.
    pub fn text(&self) -> String {
        match &self.content {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }

    /// Replace the message's text, keeping its role and other fields.
    pub fn set_text(&mut self, text: impl Into<String>) {
        self.content = serde_json::Value::String(text.into());
    }
}

impl ChatRequest {
    /// Serialize back to canonical JSON, e.g. for [`crate::Outcome::rewrite`].
    pub fn to_json(&self) -> String {
        // Serializing plain JSON values into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
