//! Every way a call can fail, as one type, and its one map to a response: [`CallError::spec`]
//! decides, in one exhaustive match, the HTTP status, the stable `code`, the OpenAI and
//! Anthropic `error.type`, the JSON-RPC code, whether a retry may help, and the log level. The
//! renderers (`wire::errors` for OpenAI and Anthropic, `mcp::jsonrpc` for MCP) only format an
//! [`ErrorSpec`]; `docs/errors.md` is the table as operators and agent authors read it.

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

/// The level an error of a call is logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// JSON-RPC error codes the MCP face answers with. Here rather than in `mcp::jsonrpc` so the
/// map from error to response needs nothing above this module; `mcp::jsonrpc` re-exports them.
pub mod rpc {
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Palisade's own codes, outside the reserved range: the agent key was refused.
    pub const UNAUTHORIZED: i64 = -31001;
    /// The gateway cannot serve the call (audit log down, chain token refused, ...).
    pub const REFUSED: i64 = -31002;
}

// OpenAI `error.type` values.
const INVALID: &str = "invalid_request_error";
const PERMISSION: &str = "permission_error";
const RATE_LIMIT: &str = "rate_limit_error";
const SERVER: &str = "server_error";
const UPSTREAM: &str = "upstream_error";

/// How one error is answered, in every ingress format, and logged.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorSpec<'a> {
    pub status: u16,
    /// The stable machine-readable code (`budget_exceeded`, `upstream_timeout`, ...).
    pub code: &'a str,
    pub source: Source,
    /// OpenAI's `error.type`.
    pub openai_type: &'static str,
    /// Anthropic's `error.type` (by status, as Anthropic's API assigns them).
    pub anthropic_type: &'static str,
    /// The JSON-RPC `error.code` on `/mcp`.
    pub jsonrpc_code: i64,
    /// Whether the same call may succeed if retried (sent as `x-should-retry`, which the
    /// official OpenAI and Anthropic SDKs obey instead of guessing from the status).
    pub retryable: bool,
    pub log_level: LogLevel,
    /// The plugin that decided or failed, if one did.
    pub plugin: Option<&'a str>,
    /// A held call's approval, for agents that wait on it.
    pub approval: Option<serde_json::Value>,
    /// Seconds after which the same call may be admitted (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl<'a> ErrorSpec<'a> {
    /// A row with the defaults of its source: not retryable, logged at debug (the agent's
    /// doing), info (a policy decision) or warn (the upstream's or our failure).
    fn row(
        status: u16,
        code: &'a str,
        source: Source,
        openai_type: &'static str,
        jsonrpc_code: i64,
    ) -> Self {
        ErrorSpec {
            status,
            code,
            source,
            openai_type,
            anthropic_type: anthropic_type(status),
            jsonrpc_code,
            retryable: false,
            log_level: match source {
                Source::Downstream => LogLevel::Debug,
                Source::Plugin => LogLevel::Info,
                Source::Upstream | Source::Internal => LogLevel::Warn,
            },
            plugin: None,
            approval: None,
            retry_after: None,
        }
    }

    fn retryable(mut self, yes: bool) -> Self {
        self.retryable = yes;
        self
    }

    fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    fn plugin(mut self, plugin: &'a str) -> Self {
        self.plugin = Some(plugin);
        self
    }

    fn approval(mut self, approval: serde_json::Value) -> Self {
        self.approval = Some(approval);
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// Which of the gateway's own limits refused a call (`crate::limits`, `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    /// Calls in flight.
    Concurrent,
    /// Live MCP sessions of one agent.
    McpSessions,
    /// Open `GET /mcp` event streams of one agent.
    McpStreams,
    /// Plugin instances: an agent's fair share of the pool, or the whole pool
    /// (`crate::plugins::shares`). Fails the call closed, whatever the plugin's `on_error`.
    PluginInstances,
}

impl Limit {
    /// The stable error code naming the limit.
    pub fn code(self) -> &'static str {
        match self {
            Limit::Rpm => "rate_limit_rpm",
            Limit::Tpm => "rate_limit_tpm",
            Limit::Concurrent => "concurrency_limit",
            Limit::McpSessions => "mcp_session_limit",
            Limit::McpStreams => "mcp_stream_limit",
            Limit::PluginInstances => "plugin_instance_limit",
        }
    }

    /// The metric label and the audit note's name of the limit.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Rpm => "rpm",
            Limit::Tpm => "tpm",
            Limit::Concurrent => "concurrent",
            Limit::McpSessions => "mcp_sessions",
            Limit::McpStreams => "mcp_streams",
            Limit::PluginInstances => "plugin_instances",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::Rpm => "requests per minute",
            Limit::Tpm => "tokens per minute",
            Limit::Concurrent => "calls in flight",
            Limit::McpSessions => "live MCP sessions",
            Limit::McpStreams => "open GET /mcp event streams",
            Limit::PluginInstances => "plugin instances in use",
        }
    }
}

fn limit_message(limit: &Limit, scope: &str, max: &u64, retry_after: &u64) -> String {
    format!(
        "limit of {max} {} reached for {scope}; retry in {retry_after} s",
        limit.what()
    )
}

/// Anthropic's `error.type` for a status, as its API documents them; the SDKs pick their
/// exception class by status, so this is for humans and for clients that switch on the type.
fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 409 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
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
    /// Every instance slot stayed busy: the gateway is at capacity, not the plugin at fault,
    /// so a plugin configured `on_error = "allow"` is not skipped for it (the call is refused).
    Busy(String),
}

impl PluginFault {
    /// The stable code agents and the audit see.
    pub fn code(&self) -> &'static str {
        match self {
            PluginFault::Trap(_) => "plugin_trap",
            PluginFault::Timeout(_) => "plugin_timeout",
            PluginFault::Memory(_) => "plugin_memory_exceeded",
            PluginFault::Init(_) => "plugin_init_failed",
            PluginFault::Unavailable(_) | PluginFault::Busy(_) => "plugin_unavailable",
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
            PluginFault::Busy(m) => write!(f, "no instance free: {m}"),
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
    /// The request body did not all arrive within `[server] body_timeout_ms`.
    #[error("the request body did not arrive within {} ms", .after.as_millis())]
    RequestTimeout { after: Duration },
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
        hold: Box<crate::core::domain::Hold>,
    },
    /// A held call may not go on: its approval is pending, rejected or expired.
    #[error(transparent)]
    Approval(Box<crate::core::domain::Refusal>),
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
    Chain(#[from] crate::core::domain::ChainError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The agent closed the connection before the call ended. Never reaches the agent (there
    /// is no one to read it); it is what the audit and the metrics record for such a call.
    #[error("the client closed the connection before the call ended")]
    ClientClosed,
    /// A graceful shutdown cut the call (a stream past the drain deadline).
    #[error("the gateway is shutting down and cut this call; retry it")]
    ShuttingDown,
    /// One of the gateway's own rate, concurrency or session limits refused the call.
    #[error("{}", limit_message(.limit, .scope, .max, .retry_after))]
    Limited {
        limit: Limit,
        /// Whose limit: `agent support-bot`, `team support`, `all agents`.
        scope: String,
        max: u64,
        /// Seconds until it may be admitted (the minute's end; 1 for calls in flight).
        retry_after: u64,
    },
}

impl CallError {
    /// How this error is answered and logged: the one exhaustive map from error to response.
    /// No arm is a wildcard, so a new variant does not compile until its row is decided here
    /// (and in `docs/errors.md`, which the table test in `error_table` keeps honest).
    pub fn spec(&self) -> ErrorSpec<'_> {
        use Source::{Downstream, Internal, Plugin, Upstream};
        let row = ErrorSpec::row;
        match self {
            CallError::BadRequest { code, .. } => {
                row(400, code, Downstream, INVALID, rpc::INVALID_REQUEST)
            }
            CallError::PayloadTooLarge { .. } => row(
                413,
                "body_too_large",
                Downstream,
                INVALID,
                rpc::INVALID_REQUEST,
            ),
            // A slow network may do better on a retry.
            CallError::RequestTimeout { .. } => row(
                408,
                "request_timeout",
                Downstream,
                INVALID,
                rpc::INVALID_REQUEST,
            )
            .retryable(true),
            CallError::Unauthorized(_) => row(
                401,
                "invalid_api_key",
                Downstream,
                "authentication_error",
                rpc::UNAUTHORIZED,
            ),
            CallError::NotFound { .. } => row(404, "not_found", Downstream, INVALID, rpc::REFUSED),
            CallError::MethodNotAllowed { .. } => {
                row(405, "method_not_allowed", Downstream, INVALID, rpc::REFUSED)
            }
            CallError::Forbidden(_) => row(403, "forbidden", Downstream, PERMISSION, rpc::REFUSED),
            CallError::Conflict(_) => row(409, "conflict", Downstream, INVALID, rpc::REFUSED),
            CallError::Chain(e) => row(400, e.code(), Downstream, INVALID, rpc::REFUSED),
            CallError::Denied {
                plugin,
                status,
                code,
                ..
            } => {
                // The plugin picks the status; one outside the error range is a plugin bug,
                // answered as the plain refusal it meant.
                let status = match *status {
                    400..=599 => *status,
                    _ => 403,
                };
                let openai = match status {
                    429 => RATE_LIMIT,
                    500..=599 => SERVER,
                    _ => PERMISSION,
                };
                row(status, code, Plugin, openai, rpc::REFUSED)
                    .plugin(plugin)
                    // A limit that may lift (a ledger that cannot be reached) is worth retrying;
                    // a budget spent or a model refused is not, whatever the status says.
                    .retryable(status == 503)
            }
            CallError::ApprovalRequired { plugin, .. } => {
                row(403, "approval_required", Plugin, PERMISSION, rpc::REFUSED).plugin(plugin)
            }
            CallError::Approval(r) => row(403, r.status.code(), Plugin, PERMISSION, rpc::REFUSED)
                .plugin(&r.plugin)
                .approval(r.status.to_json()),
            CallError::PluginFailed { plugin, fault } => {
                row(500, fault.code(), Plugin, SERVER, rpc::INTERNAL_ERROR)
                    .plugin(plugin)
                    // A deadline or a full pool may pass; a trap, a memory cap or a failing
                    // `init` will happen again on the same input.
                    .retryable(matches!(
                        fault,
                        PluginFault::Timeout(_)
                            | PluginFault::Unavailable(_)
                            | PluginFault::Busy(_)
                    ))
            }
            CallError::UpstreamStatus { status, .. } => match *status {
                // The agent's request was bad for the provider: say so with the same status.
                s @ (400..=428 | 430..=499) => {
                    row(s, "upstream_error", Upstream, UPSTREAM, rpc::REFUSED)
                }
                429 => {
                    row(429, "upstream_error", Upstream, RATE_LIMIT, rpc::REFUSED).retryable(true)
                }
                _ => row(502, "upstream_error", Upstream, UPSTREAM, rpc::REFUSED).retryable(true),
            },
            CallError::UpstreamUnavailable { .. } => row(
                502,
                "upstream_unavailable",
                Upstream,
                UPSTREAM,
                rpc::REFUSED,
            )
            .retryable(true),
            CallError::UpstreamTimeout { .. } => {
                row(504, "upstream_timeout", Upstream, UPSTREAM, rpc::REFUSED).retryable(true)
            }
            CallError::AuditUnavailable => {
                row(503, "audit_unavailable", Internal, SERVER, rpc::REFUSED)
                    .retryable(true)
                    .log_level(LogLevel::Error)
            }
            CallError::Internal(_) => {
                row(500, "internal_error", Internal, SERVER, rpc::INTERNAL_ERROR)
                    .log_level(LogLevel::Error)
            }
            // Nobody reads this answer; the row exists for the audit and the metrics.
            CallError::ClientClosed => row(499, "client_closed", Downstream, INVALID, rpc::REFUSED)
                .log_level(LogLevel::Info),
            // Another replica (or this one after its restart) will serve the same call.
            CallError::ShuttingDown => row(503, "gateway_draining", Internal, SERVER, rpc::REFUSED)
                .retryable(true)
                .log_level(LogLevel::Info),
            // Worth retrying after `Retry-After`: the window turns, calls in flight end.
            CallError::Limited {
                limit, retry_after, ..
            } => row(429, limit.code(), Downstream, RATE_LIMIT, rpc::REFUSED)
                .retryable(true)
                .retry_after(*retry_after)
                .log_level(LogLevel::Info),
        }
    }

    /// Who caused it.
    pub fn source_kind(&self) -> Source {
        self.spec().source
    }

    /// The HTTP status the agent gets.
    pub fn status(&self) -> u16 {
        self.spec().status
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &str {
        self.spec().code
    }

    /// The plugin that decided or failed, if any.
    pub fn plugin(&self) -> Option<&str> {
        self.spec().plugin
    }

    /// Log the error of one call at its level.
    pub fn log(&self, request_id: &str) {
        let code = self.code();
        match self.spec().log_level {
            LogLevel::Debug => tracing::debug!(request_id, code, "{self}"),
            LogLevel::Info => tracing::info!(request_id, code, "{self}"),
            LogLevel::Warn => tracing::warn!(request_id, code, "{self}"),
            LogLevel::Error => tracing::error!(request_id, code, "{self}"),
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
