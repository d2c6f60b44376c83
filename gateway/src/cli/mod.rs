//! The command line. `serve` runs the gateway and `demo` shows it at work; `init` writes a
//! starter config and creates the first admin; `agents`, `users` and `audit` are clients of the
//! admin API (`--url`, `--token`), so nothing the CLI does is out of reach of the API.

pub mod admin;
pub mod approvals;
pub mod check;
pub mod client;
pub mod init;
pub mod plugin;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "palisade", version, about = "A policy gateway for AI agents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin API is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The gateway's address.
    #[arg(
        long,
        env = "PALISADE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// A user token (admin, approver or auditor).
    #[arg(long, env = "PALISADE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` gateway (beside the Mozilla
    /// roots built in), e.g. the private CA that issued the gateway's certificate.
    #[arg(long, env = "PALISADE_CA_FILE", global = true)]
    pub ca_file: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "palisade.toml", env = "PALISADE_CONFIG")]
        config: PathBuf,
        /// Override `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override `upstream.base_url`.
        #[arg(long)]
        upstream_url: Option<String>,
        /// Override `database` (a PostgreSQL URL with its password belongs in the environment,
        /// e.g. from a Kubernetes Secret, rather than in the config file).
        #[arg(long, env = "PALISADE_DATABASE_URL", hide_env_values = true)]
        database: Option<String>,
    },
    /// Load a config and compile its plugins into the cache, then exit: 0 when `serve` would
    /// start with it. The store is not opened.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "palisade.toml", env = "PALISADE_CONFIG")]
        config: PathBuf,
    },
    /// Start the mock upstream and the gateway on the example config and watch the policy work.
    Demo {
        /// The config to demo.
        #[arg(long, default_value = "examples/palisade.toml")]
        config: PathBuf,
        /// Where the gateway listens during the demo.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Keep serving after the scenes, until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Write a starter config (if there is none) and create the first admin; prints its token.
    Init {
        #[arg(long, short, default_value = "palisade.toml")]
        config: PathBuf,
        /// The first admin's user name.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// The agent registry.
    Agents {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: admin::AgentsCommand,
    },
    /// Users of the admin side and their tokens.
    Users {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: admin::UsersCommand,
    },
    /// Spend by scope for a window, or one delegation run's tree (`--run`).
    Spend {
        #[command(flatten)]
        api: ApiArgs,
        /// hour, day, month or total.
        #[arg(long, default_value = "day")]
        window: String,
        /// Scope prefix: `agent:`, `team:support`, `run:`... (all when empty).
        #[arg(long, default_value = "")]
        scope: String,
        /// Show this run's delegation tree instead: who called whom, calls and cost per node.
        #[arg(long)]
        run: Option<String>,
    },
    /// Held calls waiting for humans: list, show, approve, reject; approver groups.
    Approvals {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// For plugin authors: scaffold, check and test a plugin without a running gateway.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// The audit log: export and verify.
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: admin::AuditCommand,
    },
}

/// What a CLI command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no token: pass --token or set PALISADE_TOKEN (a user token from `palisade init`)")]
    NoToken,
    #[error("cannot reach the gateway at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the gateway answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] palisade_store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::core::settings::ConfigError),
    /// The audit log failed verification (reported already).
    #[error("the audit log failed verification")]
    VerifyFailed,
}
