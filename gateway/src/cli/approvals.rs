//! `palisade approvals list|show|approve|reject|release` and `palisade approvals groups`: deciding
//! held calls from a terminal, through the admin API.

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::ApiClient;
use super::{ApiArgs, CliError};

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Requests, newest first: id, state, votes, agent, target, rule, time left.
    List {
        /// pending, approved, rejected, expired or all.
        #[arg(long, default_value = "pending")]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One request in full: the exact arguments, agent, rule, votes, countdown.
    Show { id: String },
    /// Approve a request (you must be in its group and not own the agent).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a request; final, and the agent is told the reason.
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Release an approved call's execution claim that a dead gateway process left running
    /// (claimed over ten minutes ago), so it can run once more (admin only).
    Release {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Show a user's approver groups, or replace them with `--group` (repeat; admin only).
    Groups {
        user_id: String,
        /// A group (repeat); with none given, the groups are shown.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Remove the user from every group.
        #[arg(long, conflicts_with = "groups")]
        clear: bool,
    },
}

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

/// One line per request.
fn line(a: &Value) -> String {
    let s = |p: &str| {
        a.pointer(p)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    format!(
        "{:<22} {:<9} {:>2}/{:<2} {:<18} {:<28} {:<14} {:>6}s",
        s("/id"),
        s("/state"),
        s("/status/approvals"),
        s("/approvals_needed"),
        s("/agent_id"),
        s("/target"),
        s("/rule"),
        s("/status/expires_in_secs")
    )
}

pub async fn run(args: &ApiArgs, cmd: ApprovalsCommand) -> Result<(), CliError> {
    let api = ApiClient::new(args)?;
    match cmd {
        ApprovalsCommand::List { status, limit } => {
            let v = api
                .json(
                    "GET",
                    &format!("/admin/api/approvals?status={}&limit={limit}", enc(&status)),
                    None,
                )
                .await?;
            println!(
                "{:<22} {:<9} {:>5} {:<18} {:<28} {:<14} {:>7}",
                "ID", "STATE", "VOTES", "AGENT", "TARGET", "RULE", "LEFT"
            );
            for a in v.as_array().into_iter().flatten() {
                println!("{}", line(a));
            }
        }
        ApprovalsCommand::Show { id } => print(
            &api.json("GET", &format!("/admin/api/approvals/{}", enc(&id)), None)
                .await?,
        ),
        ApprovalsCommand::Approve { id, reason } => {
            let body = json!({"decision": "approve", "reason": reason});
            let v = api
                .json(
                    "POST",
                    &format!("/admin/api/approvals/{}/decisions", enc(&id)),
                    Some(&body),
                )
                .await?;
            println!("{}", line(&v));
        }
        ApprovalsCommand::Reject { id, reason } => {
            let body = json!({"decision": "reject", "reason": reason});
            let v = api
                .json(
                    "POST",
                    &format!("/admin/api/approvals/{}/decisions", enc(&id)),
                    Some(&body),
                )
                .await?;
            println!("{}", line(&v));
        }
        ApprovalsCommand::Release { id, reason } => {
            let body = json!({ "reason": reason });
            let v = api
                .json(
                    "POST",
                    &format!("/admin/api/approvals/{}/release", enc(&id)),
                    Some(&body),
                )
                .await?;
            println!("{}", line(&v));
        }
        ApprovalsCommand::Groups {
            user_id,
            groups,
            clear,
        } => {
            let path = format!("/admin/api/users/{}/groups", enc(&user_id));
            let v = if groups.is_empty() && !clear {
                api.json("GET", &path, None).await?
            } else {
                api.json("PUT", &path, Some(&json!({"groups": groups})))
                    .await?
            };
            print(&v);
        }
    }
    Ok(())
}
