//! `palisade agents`, `palisade users`, `palisade audit`: the admin API from a terminal.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::ApiClient;
use super::{ApiArgs, CliError};

#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    /// Every agent: id, owner, team, status.
    List,
    /// One agent with its keys.
    Show { id: String },
    /// Register an agent; prints its first key once.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        owner: String,
        #[arg(long, default_value = "")]
        team: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        purpose: String,
        /// A model it may use (repeat).
        #[arg(long = "model")]
        models: Vec<String>,
        /// A tool it may use (repeat).
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// A label `key=value` (repeat).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Refuse the agent's calls from now on.
    Suspend { id: String },
    /// Let a suspended agent call again.
    Activate { id: String },
    /// The inventory for auditors: every agent, owner, team, purpose, status, models, tools,
    /// budgets, created and last-seen times.
    Export {
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// An agent's API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List an agent's keys (prefixes only; secrets are never stored).
    List { agent: String },
    /// Add a key; prints it once.
    Create { agent: String },
    /// Replace a key with a new one; the old one stops working after `--grace-secs`.
    Rotate {
        agent: String,
        key: String,
        #[arg(long, default_value_t = 0)]
        grace_secs: u64,
    },
    /// Revoke a key at once.
    Revoke { agent: String, key: String },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Every user and their roles.
    List,
    /// Create a user (roles: admin, approver, auditor); prints their first token once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        email: String,
        /// A role (repeat).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Create another token for a user; prints it once.
    Token { user_id: String },
    /// A user's tokens (ids and prefixes, never secrets).
    Tokens { user_id: String },
    /// Revoke one of a user's tokens now (their console sessions end with it).
    RevokeToken { user_id: String, token_id: String },
    /// Replace a user's roles.
    Roles {
        user_id: String,
        /// A role (repeat); none leaves the user without access.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Disable a user: no token of theirs authenticates until `enable`.
    Disable { user_id: String },
    /// Enable a disabled user again.
    Enable { user_id: String },
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum AuditCommand {
    /// Stream events as CSV or JSONL. Times are RFC 3339 or dates; `--to 2026-03-15` includes
    /// all of March 15.
    Export {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        status: Option<u16>,
        #[arg(long)]
        run_id: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the hash chain; exits non-zero at the first changed or missing row.
    Verify,
}

/// Percent-encode a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn download(api: &ApiClient, path: &str, out: Option<PathBuf>) -> Result<(), CliError> {
    match out {
        Some(p) => {
            let mut f = tokio::fs::File::create(&p).await?;
            let n = api.download(path, &mut f).await?;
            eprintln!("wrote {n} bytes to {}", p.display());
        }
        None => match api.download(path, &mut tokio::io::stdout()).await {
            // `palisade audit export | head`: the reader has what it wanted.
            Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => {
                other?;
            }
        },
    }
    Ok(())
}

pub async fn agents(args: &ApiArgs, cmd: AgentsCommand) -> Result<(), CliError> {
    let api = ApiClient::new(args)?;
    match cmd {
        AgentsCommand::List => {
            let v = api.json("GET", "/admin/api/agents", None).await?;
            println!(
                "{:<24} {:<28} {:<14} {:<10} SOURCE",
                "ID", "OWNER", "TEAM", "STATUS"
            );
            for a in v.as_array().into_iter().flatten() {
                let f = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                println!(
                    "{:<24} {:<28} {:<14} {:<10} {}",
                    f("id"),
                    f("owner"),
                    f("team"),
                    f("status"),
                    f("source")
                );
            }
        }
        AgentsCommand::Show { id } => print(
            &api.json("GET", &format!("/admin/api/agents/{}", enc(&id)), None)
                .await?,
        ),
        AgentsCommand::Create {
            id,
            owner,
            team,
            name,
            description,
            purpose,
            models,
            tools,
            labels,
        } => {
            let mut l = serde_json::Map::new();
            for kv in labels {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| CliError::Invalid(format!("label {kv:?} is not key=value")))?;
                l.insert(k.to_string(), json!(v));
            }
            let body = json!({
                "id": id, "owner": owner, "team": team, "name": name, "description": description,
                "purpose": purpose, "models": models, "tools": tools, "labels": l,
            });
            let v = api.json("POST", "/admin/api/agents", Some(&body)).await?;
            print(&v);
            eprintln!("The key above is shown once; store it now.");
        }
        AgentsCommand::Suspend { id } => print(
            &api.json(
                "POST",
                &format!("/admin/api/agents/{}/suspend", enc(&id)),
                None,
            )
            .await?,
        ),
        AgentsCommand::Activate { id } => print(
            &api.json(
                "POST",
                &format!("/admin/api/agents/{}/activate", enc(&id)),
                None,
            )
            .await?,
        ),
        AgentsCommand::Export { format, out } => {
            download(
                &api,
                &format!("/admin/api/agents/export?format={}", enc(&format)),
                out,
            )
            .await?
        }
        AgentsCommand::Keys { command } => match command {
            KeysCommand::List { agent } => {
                let v = api
                    .json("GET", &format!("/admin/api/agents/{}", enc(&agent)), None)
                    .await?;
                print(&v["keys"]);
            }
            KeysCommand::Create { agent } => {
                print(
                    &api.json(
                        "POST",
                        &format!("/admin/api/agents/{}/keys", enc(&agent)),
                        None,
                    )
                    .await?,
                );
                eprintln!("The key above is shown once; store it now.");
            }
            KeysCommand::Rotate {
                agent,
                key,
                grace_secs,
            } => {
                let path = format!(
                    "/admin/api/agents/{}/keys/{}/rotate?grace_secs={grace_secs}",
                    enc(&agent),
                    enc(&key)
                );
                print(&api.json("POST", &path, None).await?);
                eprintln!("The key above is shown once; store it now.");
            }
            KeysCommand::Revoke { agent, key } => {
                let path = format!("/admin/api/agents/{}/keys/{}", enc(&agent), enc(&key));
                print(&api.json("DELETE", &path, None).await?)
            }
        },
    }
    Ok(())
}

pub async fn users(args: &ApiArgs, cmd: UsersCommand) -> Result<(), CliError> {
    let api = ApiClient::new(args)?;
    match cmd {
        UsersCommand::List => print(&api.json("GET", "/admin/api/users", None).await?),
        UsersCommand::Create { name, email, roles } => {
            let body = json!({"name": name, "email": email, "roles": roles});
            print(&api.json("POST", "/admin/api/users", Some(&body)).await?);
            eprintln!("The token above is shown once; store it now.");
        }
        UsersCommand::Token { user_id } => print(
            &api.json(
                "POST",
                &format!("/admin/api/users/{}/tokens", enc(&user_id)),
                None,
            )
            .await?,
        ),
        UsersCommand::Tokens { user_id } => {
            let path = format!("/admin/api/users/{}/tokens", enc(&user_id));
            print(&api.json("GET", &path, None).await?);
        }
        UsersCommand::RevokeToken { user_id, token_id } => {
            let path = format!(
                "/admin/api/users/{}/tokens/{}",
                enc(&user_id),
                enc(&token_id)
            );
            print(&api.json("DELETE", &path, None).await?);
        }
        UsersCommand::Roles { user_id, roles } => {
            let path = format!("/admin/api/users/{}/roles", enc(&user_id));
            print(
                &api.json("PUT", &path, Some(&json!({"roles": roles})))
                    .await?,
            );
        }
        UsersCommand::Disable { user_id } => {
            let path = format!("/admin/api/users/{}/disable", enc(&user_id));
            print(&api.json("POST", &path, None).await?);
        }
        UsersCommand::Enable { user_id } => {
            let path = format!("/admin/api/users/{}/enable", enc(&user_id));
            print(&api.json("POST", &path, None).await?);
        }
    }
    Ok(())
}

pub async fn audit(args: &ApiArgs, cmd: AuditCommand) -> Result<(), CliError> {
    let api = ApiClient::new(args)?;
    match cmd {
        AuditCommand::Export {
            agent,
            team,
            owner,
            kind,
            target,
            status,
            run_id,
            from,
            to,
            format,
            out,
        } => {
            let mut q = vec![format!("format={}", enc(&format))];
            let pairs = [
                ("agent", agent),
                ("team", team),
                ("owner", owner),
                ("kind", kind),
                ("target", target),
                ("status", status.map(|s| s.to_string())),
                ("run_id", run_id),
                ("from", from),
                ("to", to),
            ];
            for (k, v) in pairs {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            download(
                &api,
                &format!("/admin/api/audit/export?{}", q.join("&")),
                out,
            )
            .await?;
        }
        AuditCommand::Verify => {
            let v = api.json("GET", "/admin/api/audit/verify", None).await?;
            if v["ok"] == json!(true) {
                println!(
                    "audit log intact: {} rows, last seq {}, last hash {}",
                    v["rows"], v["last_seq"], v["last_hash"]
                );
            } else {
                println!(
                    "AUDIT LOG BROKEN at seq {}: {} ({} rows checked before it)",
                    v["first_bad"]["seq"], v["first_bad"]["reason"], v["rows"]
                );
                return Err(CliError::VerifyFailed);
            }
        }
    }
    Ok(())
}

fn print_node(node: &Value, depth: usize) {
    println!(
        "{}{}  calls {}  denied {}  ${:.6}",
        "  ".repeat(depth),
        node["agent"].as_str().unwrap_or("?"),
        node["calls"],
        node["denied"],
        node["cost_micro_usd"].as_f64().unwrap_or(0.0) / 1e6
    );
    for c in node["children"].as_array().into_iter().flatten() {
        print_node(c, depth + 1);
    }
}

/// `palisade spend`.
pub async fn spend(
    args: &ApiArgs,
    window: &str,
    scope: &str,
    run: Option<&str>,
) -> Result<(), CliError> {
    let api = ApiClient::new(args)?;
    if let Some(run) = run {
        let v = api
            .json("GET", &format!("/admin/api/spend/runs/{}", enc(run)), None)
            .await?;
        println!(
            "run {}: {} calls, ${:.6}",
            run,
            v["calls"],
            v["cost_micro_usd"].as_f64().unwrap_or(0.0) / 1e6
        );
        for n in v["tree"].as_array().into_iter().flatten() {
            print_node(n, 1);
        }
        return Ok(());
    }
    let v = api
        .json(
            "GET",
            &format!(
                "/admin/api/spend?window={}&scope={}",
                enc(window),
                enc(scope)
            ),
            None,
        )
        .await?;
    println!(
        "{:<40} {:<10} {:>14} {:>14}",
        "SCOPE", "UNIT", "SPENT", "RESERVED"
    );
    for c in v["counters"].as_array().into_iter().flatten() {
        println!(
            "{:<40} {:<10} {:>14} {:>14}",
            c["scope"].as_str().unwrap_or(""),
            c["unit"].as_str().unwrap_or(""),
            c["spent"],
            c["reserved"]
        );
    }
    Ok(())
}
