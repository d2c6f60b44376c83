//! The ingress format of a call (OpenAI chat completions or Anthropic messages): how its body
//! becomes the canonical OpenAI request, and how answers, stream events and errors are written
//! back in the caller's own format. Everything between sees the canonical format only.

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::Value;

use crate::core::error::CallError;
use crate::wire::GatewayBody;
use crate::wire::anthropic::{self, StreamEncoder};
use crate::wire::errors::{anthropic_error, json_response, openai_error, openai_error_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

impl Ingress {
    /// The request body as the canonical OpenAI chat request.
    pub fn canonical(self, body: Bytes) -> Result<Bytes, CallError> {
        match self {
            Ingress::OpenAi => Ok(body),
            Ingress::Anthropic => anthropic::to_canonical(&body),
        }
    }

    /// A full canonical answer, as the caller's format.
    pub fn answer(self, answer: String) -> Result<Response<GatewayBody>, CallError> {
        let body = match self {
            Ingress::OpenAi => answer,
            Ingress::Anthropic => anthropic::message(&answer)?,
        };
        Ok(json_response(StatusCode::OK, body))
    }

    /// An error response in the caller's format.
    pub fn error(self, e: &CallError, request_id: &str) -> Response<GatewayBody> {
        match self {
            Ingress::OpenAi => openai_error(e, request_id),
            Ingress::Anthropic => anthropic_error(e, request_id),
        }
    }

    /// The writer of a streamed answer.
    pub fn egress(self) -> Egress {
        match self {
            Ingress::OpenAi => Egress::OpenAi,
            Ingress::Anthropic => Egress::Anthropic(Box::default()),
        }
    }
}

/// Writes canonical stream chunks as the caller's SSE events.
pub enum Egress {
    OpenAi,
    Anthropic(Box<StreamEncoder>),
}

impl Egress {
    pub fn chunk(&mut self, chunk: &Value) -> Vec<Bytes> {
        match self {
            Egress::OpenAi => vec![Bytes::from(format!("data: {chunk}\n\n"))],
            Egress::Anthropic(enc) => enc.chunk(chunk),
        }
    }

    /// The events that end a complete stream.
    pub fn done(&mut self) -> Vec<Bytes> {
        match self {
            Egress::OpenAi => vec![Bytes::from_static(b"data: [DONE]\n\n")],
            Egress::Anthropic(enc) => enc.done(),
        }
    }

    /// The error event that ends a failed stream.
    pub fn error(&self, e: &CallError, request_id: &str) -> Bytes {
        match self {
            Egress::OpenAi => {
                Bytes::from(format!("data: {}\n\n", openai_error_json(e, request_id)))
            }
            Egress::Anthropic(_) => StreamEncoder::error(e, request_id),
        }
    }
}
