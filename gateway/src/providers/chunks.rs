//! A provider's streamed answer as canonical OpenAI chunks: bytes in, SSE events through the
//! dialect's [`StreamDecoder`], `chat.completion.chunk` values out.
//!
//! [`ChunkStream::prime`] reads ahead until the first real content (text, a tool call, or a
//! proper end), holding lifecycle frames back. Until then nothing has gone to the agent, so a
//! failure (error event, empty body, malformed SSE, no first token in time) can still fail
//! over; after it, [`ChunkStream::next`] replays the held chunks and goes on, failing the
//! stream if the provider stays silent longer than its idle timeout.

use std::collections::VecDeque;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::dialect::StreamDecoder;
use super::sse::SseReader;
use crate::core::error::CallError;

pub struct ChunkStream {
    body: Incoming,
    sse: SseReader,
    decoder: Box<dyn StreamDecoder>,
    pending: VecDeque<Value>,
    provider: String,
    ended: bool,
    idle: Duration,
}

/// What the stream gives next.
#[derive(Debug)]
pub enum Next {
    Chunk(Value),
    /// The provider ended the stream properly.
    Done,
    /// Cut, malformed, or an error event: the answer is incomplete.
    Failed(CallError),
}

impl ChunkStream {
    /// `idle`: the longest wait for the next bytes once the stream is primed.
    pub fn new(
        body: Incoming,
        decoder: Box<dyn StreamDecoder>,
        provider: String,
        idle: Duration,
    ) -> ChunkStream {
        ChunkStream {
            body,
            sse: SseReader::default(),
            decoder,
            pending: VecDeque::new(),
            provider,
            ended: false,
            idle,
        }
    }

    fn failed(&self, message: impl Into<String>) -> CallError {
        CallError::UpstreamUnavailable {
            provider: self.provider.clone(),
            message: message.into(),
        }
    }

    /// Read ahead until real content or a proper end arrives, within `first_token`.
    pub async fn prime(&mut self, first_token: Duration) -> Result<(), CallError> {
        let provider = self.provider.clone();
        match tokio::time::timeout(first_token, self.prime_inner()).await {
            Err(_) => Err(CallError::UpstreamTimeout {
                provider,
                after: first_token,
            }),
            Ok(r) => r,
        }
    }

    async fn prime_inner(&mut self) -> Result<(), CallError> {
        loop {
            if self.pending.iter().any(is_content) || self.decoder.finished() {
                return Ok(());
            }
            self.read_more().await?;
        }
    }

    /// Read one body frame into `pending`; errors on a cut, malformed or error-carrying stream.
    async fn read_more(&mut self) -> Result<(), CallError> {
        let frame = match self.body.frame().await {
            None if self.sse.has_partial() => return Err(self.failed("stream ended mid-event")),
            None => return Err(self.failed("stream ended before its end event")),
            Some(Err(e)) => return Err(self.failed(format!("stream broke: {e}"))),
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        let events = self
            .sse
            .push(&data)
            .map_err(|e| self.failed(e.to_string()))?;
        for data in events {
            if self.decoder.finished() {
                break;
            }
            let chunks = self
                .decoder
                .event(&data)
                .map_err(|e| self.failed(e.to_string()))?;
            for chunk in chunks {
                if let Some(err) = chunk.get("error") {
                    let message = err
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("error event")
                        .to_string();
                    return Err(CallError::UpstreamStatus {
                        provider: self.provider.clone(),
                        status: 502,
                        message,
                    });
                }
                self.pending.push_back(chunk);
            }
        }
        Ok(())
    }

    /// The next chunk, held ones first.
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Next::Chunk(c);
            }
            if self.ended {
                return Next::Done;
            }
            if self.decoder.finished() {
                self.ended = true;
                return Next::Done;
            }
            match tokio::time::timeout(self.idle, self.read_more()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Next::Failed(e),
                Err(_) => {
                    return Next::Failed(CallError::UpstreamTimeout {
                        provider: self.provider.clone(),
                        after: self.idle,
                    });
                }
            }
        }
    }
}

/// Whether a chunk carries something the agent would see as the answer: text, a tool call, a
/// refusal, or a finish reason.
fn is_content(chunk: &Value) -> bool {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return false;
    };
    choices.iter().any(|c| {
        let d = c.get("delta");
        let text = |k: &str| {
            d.and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        text("content")
            || text("refusal")
            || d.and_then(|d| d.get("tool_calls"))
                .is_some_and(|t| !t.is_null())
            || c.get("finish_reason").is_some_and(|f| !f.is_null())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn role_only_frames_are_not_content() {
        assert!(!is_content(
            &json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})
        ));
        assert!(!is_content(
            &json!({"choices":[],"usage":{"prompt_tokens":1}})
        ));
        assert!(is_content(
            &json!({"choices":[{"index":0,"delta":{"content":"Hi"}}]})
        ));
        assert!(is_content(
            &json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]})
        ));
        assert!(is_content(
            &json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        ));
    }
}
