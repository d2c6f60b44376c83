//! Palisade's side of the MCP servers behind `/mcp`: its clients of each configured server
//! (`upstream` over Streamable HTTP, `stdio` for processes it starts), the merged `catalog`
//! (tools and prompts as `server__name`, resources as `server+uri`), the servers' list-change
//! notifications (`changes`), sealed agent sessions (`session`) and JSON-RPC shapes
//! (`jsonrpc`). The agent-facing endpoint that uses them is `crate::server::mcp`.

pub mod catalog;
pub mod changes;
pub mod jsonrpc;
pub mod session;
pub mod stdio;
pub mod upstream;

pub use crate::core::settings::mcp as settings;
pub use catalog::Hub;

/// The handshake protocol versions Palisade speaks, newest first.
pub const HANDSHAKE_VERSIONS: [&str; 2] = ["2025-11-25", "2025-06-18"];
/// The stateless revision.
pub const MODERN_VERSION: &str = "2026-07-28";
