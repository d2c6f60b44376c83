//! Every way a call can fail, as one type. Where an error comes from (the agent, a plugin, the
//! upstream, ourselves) decides its HTTP status, its log level and its stable `code`; the
//! translation into each ingress format's error shape lives in `server::respond`.

use std::time::Duration;

/// Which side caused an error: drives the status family and the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The agent sent something wrong (4xx, logged at debug).
    Downstream,
    /// A policy plugin decided or failed.
    Plugin,
    /// The provider failed.
    Upstream,
    /// A bug or resource problem of the gateway.
    Internal,
}

/// How a plugin failed, for its stable error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginFault {
    /// The guest trapped (panic, unreachable, bad memory access).
    Trap(String),
    /// A hook ran past its deadline.
    Timeout(Duration),
    /// The instance tried to grow its memory past its cap.
    Memory(usize),
    /// `init` returned an error when the call instantiated the plugin.
    Init(String),
    /// No instance could be made (pool exhausted, instantiation error).
    Unavailable(String),
}

impl PluginFault {
    /// The stable code agents and the audit see.
    pub fn code(&self) -> &'static str {
        match self {
            PluginFault::Trap(_) => "plugin_trap",
            PluginFault::Timeout(_) => "plugin_timeout",
            PluginFault::Memory(_) => "plugin_memory_exceeded",
            PluginFault::Init(_) => "plugin_init_failed",
            PluginFault::Unavailable(_) => "plugin_unavailable",
        }
    }
}

impl std::fmt::Display for PluginFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginFault::Trap(m) => write!(f, "trapped: {m}"),
            PluginFault::Timeout(d) => write!(f, "ran past its deadline of {} ms", d.as_millis()),
            PluginFault::Memory(cap) => {
                write!(
                    f,
                    "tried to use more than its memory cap of {} MiB",
                    cap >> 20
                )
            }
            PluginFault::Init(m) => write!(f, "init failed: {m}"),
            PluginFault::Unavailable(m) => write!(f, "could not be instantiated: {m}"),
        }
    }
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{message}")]
    NotFound { message: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A plugin refused the call.
    #[error("{message}")]
    Denied {
        plugin: String,
        status: u16,
        code: String,
        message: String,
    },
    /// A plugin asked for human approval; the call path hands the hold to
    /// `crate::approvals::Gate`, so agents see [`CallError::Approval`] instead.
    #[error("approval required by plugin '{plugin}' (rule '{}'): {}", .hold.rule, .hold.summary)]
    ApprovalRequired {
        plugin: String,
        hold: Box<crate::plugins::bindings::Hold>,
    },
    /// A held call may not go on: its approval is pending, rejected or expired.
    #[error(transparent)]
    Approval(Box<crate::approvals::Refusal>),
    /// A plugin failed and is configured to fail closed.
    #[error("policy plugin '{plugin}' {fault}; the call was refused (fail-closed)")]
    PluginFailed { plugin: String, fault: PluginFault },
    #[error("upstream {provider} answered {status}: {message}")]
    UpstreamStatus {
        provider: String,
        status: u16,
        message: String,
    },
    #[error("upstream {provider} could not be reached: {message}")]
    UpstreamUnavailable { provider: String, message: String },
    #[error("upstream {provider} did not answer within {} ms", .after.as_millis())]
    UpstreamTimeout { provider: String, after: Duration },
    #[error("the audit log cannot be written; calls are refused until it can")]
    AuditUnavailable,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// The `palisade-chain` token was refused, or is required and missing.
    #[error(transparent)]
    Chain(#[from] crate::chain::ChainError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The agent hung up before its answer (never sent; recorded in the audit).
    #[error("the client closed the connection before the answer")]
    ClientClosed,
    /// A graceful shutdown ended the call after its drain time.
    #[error("the gateway is shutting down; retry on another replica")]
    ShuttingDown,
}

impl CallError {
    /// Who caused it.
    pub fn source_kind(&self) -> Source {
        match self {
            CallError::BadRequest { .. }
            | CallError::PayloadTooLarge { .. }
            | CallError::Unauthorized(_)
            | CallError::NotFound { .. }
            | CallError::MethodNotAllowed { .. }
            | CallError::Forbidden(_)
            | CallError::Chain(_)
            | CallError::Conflict(_) => Source::Downstream,
            CallError::Denied { .. }
            | CallError::ApprovalRequired { .. }
            | CallError::Approval(_)
            | CallError::PluginFailed { .. } => Source::Plugin,
            CallError::UpstreamStatus { .. }
            | CallError::UpstreamUnavailable { .. }
            | CallError::UpstreamTimeout { .. } => Source::Upstream,
            CallError::ClientClosed => Source::Downstream,
            CallError::Internal(_) | CallError::AuditUnavailable | CallError::ShuttingDown => {
                Source::Internal
            }
        }
    }

    /// The HTTP status the agent gets.
    pub fn status(&self) -> u16 {
        match self {
            CallError::BadRequest { .. } => 400,
            CallError::PayloadTooLarge { .. } => 413,
            CallError::Unauthorized(_) => 401,
            CallError::NotFound { .. } => 404,
            CallError::MethodNotAllowed { .. } => 405,
            CallError::Denied { status, .. } => match *status {
                400..=599 => *status,
                _ => 403,
            },
            CallError::ApprovalRequired { .. } | CallError::Approval(_) => 403,
            CallError::PluginFailed { .. } => 500,
            CallError::UpstreamStatus { status, .. } => match *status {
                // The agent's request was bad for the provider: say so with the same status.
                400..=428 | 430..=499 => *status,
                429 => 429,
                _ => 502,
            },
            CallError::UpstreamUnavailable { .. } => 502,
            CallError::UpstreamTimeout { .. } => 504,
            CallError::AuditUnavailable => 503,
            CallError::Forbidden(_) => 403,
            CallError::Conflict(_) => 409,
            CallError::Chain(_) => 400,
            CallError::Internal(_) => 500,
            CallError::ClientClosed => 499,
            CallError::ShuttingDown => 503,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            CallError::BadRequest { code, .. } => code,
            CallError::PayloadTooLarge { .. } => "body_too_large",
            CallError::Unauthorized(_) => "invalid_api_key",
            CallError::NotFound { .. } => "not_found",
            CallError::MethodNotAllowed { .. } => "method_not_allowed",
            CallError::Denied { code, .. } => code,
            CallError::ApprovalRequired { .. } => "approval_required",
            CallError::Approval(r) => r.status.code(),
            CallError::PluginFailed { fault, .. } => fault.code(),
            CallError::UpstreamStatus { .. } => "upstream_error",
            CallError::UpstreamUnavailable { .. } => "upstream_unavailable",
            CallError::UpstreamTimeout { .. } => "upstream_timeout",
            CallError::AuditUnavailable => "audit_unavailable",
            CallError::Forbidden(_) => "forbidden",
            CallError::Conflict(_) => "conflict",
            CallError::Chain(e) => e.code(),
            CallError::Internal(_) => "internal_error",
            CallError::ClientClosed => "client_closed",
            CallError::ShuttingDown => "gateway_draining",
        }
    }

    /// The plugin that decided or failed, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            CallError::Denied { plugin, .. }
            | CallError::ApprovalRequired { plugin, .. }
            | CallError::PluginFailed { plugin, .. } => Some(plugin),
            CallError::Approval(r) => Some(&r.plugin),
            _ => None,
        }
    }

    /// Shorthand for a 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        CallError::BadRequest {
            code,
            message: message.into(),
        }
    }
}
