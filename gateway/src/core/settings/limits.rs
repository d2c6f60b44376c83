//! The `[limits]` section of `palisade.toml`: rate and concurrency limits (global, per team; per
//! agent in `[[agents]] limits` or through the admin API), the fair share of plugin instances
//! an agent may hold, and per-agent caps on MCP sessions and `GET /mcp` event streams.
//!
//! ```toml
//! [limits]
//! rpm = 6000                    # requests per minute, all agents together
//! tpm = 2000000                 # tokens per minute (input estimated, real usage charged)
//! concurrent = 500              # calls in flight at once
//! instances_per_agent = 100     # plugin instances one agent may hold (default: half the pool)
//! mcp_sessions_per_agent = 64   # live MCP sessions per agent (default 64)
//! mcp_streams_per_agent = 4     # open `GET /mcp` event streams per agent (default 4)
//! mcp_session_idle_secs = 3600  # a session unused this long no longer counts (default 1 h)
//!
//! [limits.teams.support]
//! rpm = 600
//! concurrent = 20
//!
//! [[agents]]
//! id = "support-bot"
//! limits = { rpm = 60, tpm = 100000, concurrent = 4 }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Rate and concurrency limits of one scope; unset: no limit of that kind.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLimitSet {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
    #[serde(default)]
    pub teams: BTreeMap<String, RawLimitSet>,
    pub instances_per_agent: Option<u32>,
    pub mcp_sessions_per_agent: Option<u32>,
    pub mcp_streams_per_agent: Option<u32>,
    pub mcp_session_idle_secs: Option<u64>,
}

/// Limits of one scope (agent, team or global).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LimitSet {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
}

impl LimitSet {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrent.is_none()
    }
}

/// The resolved `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    pub global: LimitSet,
    pub teams: BTreeMap<String, LimitSet>,
    /// Plugin instances one agent may hold at once.
    pub instances_per_agent: u32,
    pub mcp_sessions_per_agent: u32,
    pub mcp_streams_per_agent: u32,
    pub mcp_session_idle: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            global: LimitSet::default(),
            teams: BTreeMap::new(),
            instances_per_agent: 500,
            mcp_sessions_per_agent: 64,
            mcp_streams_per_agent: 4,
            mcp_session_idle: Duration::from_secs(3600),
        }
    }
}

impl LimitSettings {
    /// Whether any rate or concurrency limit is configured in the file (agents set through
    /// the API may still carry their own).
    pub fn any_configured(&self) -> bool {
        !self.global.is_empty() || self.teams.values().any(|t| !t.is_empty())
    }
}

/// Check one scope's limits: each at least 1 (a limit of 0 would refuse everything; remove
/// the key for no limit).
pub fn check_set(what: &str, s: RawLimitSet) -> Result<LimitSet, String> {
    for (name, v) in [("rpm", s.rpm), ("tpm", s.tpm), ("concurrent", s.concurrent)] {
        if v == Some(0) {
            return Err(format!(
                "{what}.{name} must be at least 1 (leave it out for no limit)"
            ));
        }
        if v.is_some_and(|v| v > 1 << 40) {
            return Err(format!("{what}.{name} is larger than 2^40"));
        }
    }
    Ok(LimitSet {
        rpm: s.rpm,
        tpm: s.tpm,
        concurrent: s.concurrent,
    })
}

/// Resolve `[limits]`; `max_instances` is `[plugin_host] max_instances` (the default share is
/// half of it, so one agent can never hold the whole pool).
pub fn resolve(raw: RawLimits, max_instances: u32) -> Result<LimitSettings, String> {
    let global = check_set(
        "limits",
        RawLimitSet {
            rpm: raw.rpm,
            tpm: raw.tpm,
            concurrent: raw.concurrent,
        },
    )?;
    let mut teams = BTreeMap::new();
    for (team, set) in raw.teams {
        teams.insert(
            team.clone(),
            check_set(&format!("limits.teams.{team}"), set)?,
        );
    }
    let instances_per_agent = match raw.instances_per_agent {
        None => (max_instances / 2).max(1),
        Some(0) => return Err("limits.instances_per_agent must be at least 1".into()),
        Some(n) if n > max_instances => {
            return Err(format!(
                "limits.instances_per_agent ({n}) is above plugin_host.max_instances \
                 ({max_instances})"
            ));
        }
        Some(n) => n,
    };
    let positive = |name: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(format!("limits.{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let idle = raw.mcp_session_idle_secs.unwrap_or(3600);
    if idle == 0 || idle > 7 * 24 * 3600 {
        return Err("limits.mcp_session_idle_secs must be from 1 to 604800".into());
    }
    Ok(LimitSettings {
        global,
        teams,
        instances_per_agent,
        mcp_sessions_per_agent: positive("mcp_sessions_per_agent", raw.mcp_sessions_per_agent, 64)?,
        mcp_streams_per_agent: positive("mcp_streams_per_agent", raw.mcp_streams_per_agent, 4)?,
        mcp_session_idle: Duration::from_secs(idle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_and_oversized_shares_are_refused_with_the_key_named() {
        let raw = |s: &str| toml::from_str::<RawLimits>(s).unwrap();
        let e = resolve(raw("rpm = 0"), 100).unwrap_err();
        assert!(e.contains("limits.rpm"), "{e}");
        let e = resolve(raw("[teams.a]\nconcurrent = 0"), 100).unwrap_err();
        assert!(e.contains("limits.teams.a.concurrent"), "{e}");
        let e = resolve(raw("instances_per_agent = 101"), 100).unwrap_err();
        assert!(e.contains("max_instances"), "{e}");
        assert!(toml::from_str::<RawLimits>("rmp = 1").is_err());
        let ok = resolve(raw("rpm = 60\n[teams.a]\ntpm = 5"), 100).unwrap();
        assert_eq!(ok.global.rpm, Some(60));
        assert_eq!(ok.teams["a"].tpm, Some(5));
        assert_eq!(ok.instances_per_agent, 50);
        assert_eq!(ok.mcp_sessions_per_agent, 64);
    }
}
